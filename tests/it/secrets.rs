//! The token is a secret: it never reaches stdout, stderr, the lifecycle
//! log, queue.json, `check` or `status` output, or a wake command's
//! environment; and a config file other users may read is warned about.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::support::*;

/// Runs `agentcom-sidecar <args> --config <path>` and returns stdout + stderr.
fn run_subcommand(args: &[&str], config_path: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_agentcom-sidecar"))
        .args(args)
        .arg("--config")
        .arg(config_path)
        .env_remove("SIDECAR_CONFIG")
        .output()
        .unwrap();
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[cfg(unix)]
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn the_token_never_leaves_the_config_file() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    // The agent records its whole environment, then does the task.
    cfg["wake_command"] = json!(if cfg!(windows) {
        r#"set>"!AGENTCOM_RESULTS_DIR!\wake-env.txt"& type nul>"!AGENTCOM_RESULTS_DIR!\!AGENTCOM_TASK_ID!.started"& echo {"status":"success","output":"done"}>"!AGENTCOM_RESULTS_DIR!\.!AGENTCOM_TASK_ID!.tmp"& move /y "!AGENTCOM_RESULTS_DIR!\.!AGENTCOM_TASK_ID!.tmp" "!AGENTCOM_RESULTS_DIR!\!AGENTCOM_TASK_ID!.json" >nul"#
    } else {
        r#"R="$AGENTCOM_RESULTS_DIR"; I="$AGENTCOM_TASK_ID"; env > "$R/wake-env.txt"; : > "$R/$I.started"
printf '{"status":"success","output":"done"}' > "$R/.$I.tmp"; mv "$R/.$I.tmp" "$R/$I.json""#
    });
    // Every debug line too.
    cfg["log_level"] = json!("trace");
    let sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let task_id = hub.push_task(AGENT, "d", json!({}));
    let complete = expect_received(&hub, "task_complete");
    assert_eq!(complete["task_id"], task_id.as_str());

    let env = fs::read_to_string(sidecar.results_dir().join("wake-env.txt")).unwrap();
    assert!(env.contains(&format!("AGENTCOM_TASK_ID={task_id}")), "the wake's environment: {env}");
    assert!(!env.contains(TOKEN), "the token is in the wake command's environment");

    let config_path = dir.path().join("config.json");
    for args in [&["check"][..], &["status"][..]] {
        let output = run_subcommand(args, &config_path);
        assert!(!output.trim().is_empty(), "{args:?} printed nothing");
        assert!(!output.contains(TOKEN), "the token leaked into {args:?}: {output}");
    }
    assert!(run_subcommand(&["check"], &config_path).contains("<redacted>"));

    // A refused identify is logged without the token.
    let wrong = tempfile::tempdir().unwrap();
    let mut wrong_cfg = config(wrong.path(), &hub.url());
    let wrong_token = "tok-WRONG-77e1b2";
    wrong_cfg["token"] = json!(wrong_token);
    let refused = Sidecar::start(wrong.path(), &wrong_cfg);
    refused.wait_output("invalid_token");
    assert!(!refused.output().contains(wrong_token) && !refused.lifecycle().contains(wrong_token));

    wait_until("an empty queue", || sidecar.queue()["active"].is_null().then_some(()));
    sidecar.assert_no_token_anywhere();
}

#[cfg(unix)]
#[test]
fn a_config_other_users_may_read_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    fs::write(&path, json!({"agent_id": "a", "token": TOKEN, "hub_url": "ws://127.0.0.1:9/ws"}).to_string())
        .unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660] {
        chmod(&path, mode);
        let output = run_subcommand(&["check"], &path);
        assert!(output.contains("other users may read it"), "mode {mode:o}: {output}");
        assert!(!output.contains(TOKEN));
    }
    for mode in [0o600, 0o400] {
        chmod(&path, mode);
        let output = run_subcommand(&["check"], &path);
        assert!(!output.contains("other users may read it"), "mode {mode:o}: {output}");
    }

    // The running sidecar warns at start, in its log.
    let hub = start_hub();
    let run_dir = tempfile::tempdir().unwrap();
    // Sidecar::start rewrites config.json in place, which keeps its mode.
    let run_config = run_dir.path().join("config.json");
    fs::write(&run_config, "{}").unwrap();
    chmod(&run_config, 0o644);
    let sidecar = Sidecar::start(run_dir.path(), &config(run_dir.path(), &hub.url()));
    expect_identified(&hub);
    sidecar.wait_output("other users may read it");
}
