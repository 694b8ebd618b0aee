//! Operations features of the binary: `status --json` (one JSON object with
//! the same facts as `status`, and the same exit codes) and the hub's
//! `restart_sidecar` with `update_command`.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

#[cfg(unix)]
use crate::support::wait_until;
use crate::support::{config, expect_identified, start_hub, Sidecar, AGENT, FAILSAFE};

fn status_json(dir: &Path) -> (i32, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_agentcom-sidecar"))
        .args(["status", "--json", "--config"])
        .arg(dir.join("config.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.lines().count(), 1, "one line: {output:?}");
    let value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    (output.status.code().unwrap_or(-1), value)
}

#[test]
fn status_json_idle_busy_and_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "ws://127.0.0.1:9/ws");
    fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();

    let (code, status) = status_json(dir.path());
    assert_eq!(code, 0, "{status}");
    assert_eq!(status["verdict"], "idle", "{status}");
    assert_eq!(status["idle"], true);
    assert_eq!(status["queue_state"], "missing");
    assert_eq!(status["active"], Value::Null);
    assert_eq!(Path::new(status["queue_file"].as_str().unwrap()), dir.path().join("queue.json"), "{status}");

    let queue = json!({"active":{"task_id":"task-1","description":"d","metadata":{},"status":"working",
        "assigned_at":1u64,"generation":2,"wake_attempts":1,"report":{"type":"failed","reason":"x"}},
        "recovering":null});
    fs::write(dir.path().join("queue.json"), queue.to_string()).unwrap();
    fs::write(
        dir.path().join("sidecar.log"),
        format!("{}\n", json!({"ts": 5u64, "event": "identified", "agent_id": "a"})),
    )
    .unwrap();
    let (code, status) = status_json(dir.path());
    assert_eq!(code, 1, "{status}");
    assert_eq!(status["verdict"], "busy");
    assert_eq!(status["queue_state"], "ok");
    assert_eq!(status["active"]["task_id"], "task-1");
    assert_eq!(status["active"]["generation"], 2);
    assert_eq!(status["active"]["status"], "working");
    assert_eq!(status["recovering"], Value::Null);
    assert_eq!(
        status["pending_reports"],
        json!([{"type": "task_failed", "task_id": "task-1", "generation": 2, "reason": "x"}])
    );
    assert_eq!(status["log_state"], "ok");
    assert_eq!(status["last_connection_event"]["event"], "identified");

    fs::write(dir.path().join("queue.json"), "{corrupt").unwrap();
    let (code, status) = status_json(dir.path());
    assert_eq!(code, 2, "{status}");
    assert_eq!(status["verdict"], "corrupt");
    assert_eq!(status["queue_state"], "corrupt");
    let text = Command::new(env!("CARGO_BIN_EXE_agentcom-sidecar"))
        .args(["status", "--config"])
        .arg(dir.path().join("config.json"))
        .output()
        .unwrap();
    assert_eq!(text.status.code(), Some(2), "{text:?}");
    assert!(String::from_utf8_lossy(&text.stdout).contains("verdict: corrupt"), "{text:?}");
    assert!(status["queue_error"].as_str().is_some_and(|e| !e.is_empty()), "{status}");
    assert_eq!(fs::read_to_string(dir.path().join("queue.json")).unwrap(), "{corrupt", "left alone");
}

#[test]
fn json_is_only_for_status() {
    let output =
        Command::new(env!("CARGO_BIN_EXE_agentcom-sidecar")).args(["check", "--json"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--json goes with status"), "{output:?}");
}

/// Unix only: on Windows `update_command` is not supported (the sidecar
/// exits, as the next test shows for a command that cannot start).
#[cfg(unix)]
#[test]
fn restart_sidecar_with_an_update_command_starts_it_detached_and_stays_connected() {
    use agentcom_sidecar::devhub::DevHubEvent;

    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("update-parent");
    let mut cfg = config(dir.path(), &hub.url());
    // The update reports its parent process, once, atomically.
    cfg["update_command"] = json!(format!(
        "echo \"update for $AGENTCOM_UPDATE_COMMAND_TEST\"; ps -o ppid= -p $$ > '{0}.tmp' && mv '{0}.tmp' '{0}'",
        report.display()
    ));
    let mut sidecar =
        Sidecar::start_with_env(dir.path(), &cfg, &[("AGENTCOM_UPDATE_COMMAND_TEST", "the test")]);
    expect_identified(&hub);
    assert!(hub.send_raw(AGENT, json!({"type": "restart_sidecar", "reason": "update"})));

    let parent = wait_until("the update command to run", || fs::read_to_string(&report).ok());
    assert_ne!(parent.trim(), sidecar.pid().to_string(), "the update runs outside the sidecar's tree");
    let log = wait_until("the update's output", || {
        fs::read_to_string(dir.path().join("update.log")).ok().filter(|log| log.ends_with('\n'))
    });
    assert_eq!(log, "update for the test\n");
    assert!(sidecar.lifecycle().contains("\"update_started\""), "{}", sidecar.lifecycle());

    // Still running and connected: a probe reaches it, and the hub has seen
    // no disconnection.
    assert!(sidecar.wait_exit(std::time::Duration::ZERO).is_none(), "the sidecar exited");
    assert!(hub.send_raw(AGENT, json!({"type": "agentcom_test_probe"})));
    let events: Vec<DevHubEvent> = hub.events().try_iter().collect();
    assert!(!events.iter().any(|e| matches!(e, DevHubEvent::Disconnected { .. })), "{events:?}");
}

#[test]
fn an_update_command_that_cannot_start_falls_back_to_exiting() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    cfg["update_command"] = json!("true");
    cfg["update_log"] = json!(dir.path().join("no such dir/update.log"));
    let mut sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    assert!(hub.send_raw(AGENT, json!({"type": "restart_sidecar", "reason": "update"})));
    let status = sidecar.wait_exit(FAILSAFE).expect("the sidecar exits");
    assert!(status.success(), "{status:?}");
    assert!(sidecar.output().contains("cannot start update_command"), "{}", sidecar.output());
}

/// `agentcom-sidecar <args>` with stdout a pipe whose reader has gone (as
/// under `| head -1` once head has read its line): no panic, the command's
/// own exit code.
fn run_with_reader_gone(args: &[&str], config: &Path) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_agentcom-sidecar"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{args:?}: {output:?}");
    assert!(!stderr.contains("stdout"), "{args:?}: {output:?}");
    output
}

#[test]
fn a_reader_gone_from_stdout_ends_a_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    fs::write(&path, config(dir.path(), "ws://127.0.0.1:9/ws").to_string()).unwrap();
    for args in [&["check"][..], &["status"], &["status", "--json"], &["--version"], &["--help"]] {
        let output = run_with_reader_gone(args, &path);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {output:?}");
    }
    fs::write(dir.path().join("queue.json"), "{corrupt").unwrap();
    let output = run_with_reader_gone(&["status"], &path);
    assert_eq!(output.status.code(), Some(2), "the verdict's exit code: {output:?}");
}
