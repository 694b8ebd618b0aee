//! The wake command as the real binary runs it: where it runs, what a failed
//! one says on stdout, and a task too large for the environment.

use std::fs;

use serde_json::json;

use crate::support::*;

/// An agent script that confirms and writes its result at once; `output`
/// is shell text for the result's `output` string.
fn agent_script(output: &str) -> String {
    format!(
        "d=\"$AGENTCOM_RESULTS_DIR\"; t=\"$AGENTCOM_TASK_ID\"\n\
         : > \"$d/$t.started\"\n\
         printf '{{\"status\":\"success\",\"output\":\"%s\"}}' \"{output}\" > \"$d/.$t.tmp\"\n\
         mv \"$d/.$t.tmp\" \"$d/$t.json\"\n"
    )
}

#[test]
#[cfg_attr(
    windows,
    ignore = "skipped on Windows: the agent is a sh script (pwd, wc, /bin/echo), not ported to cmd"
)]
fn a_relative_wake_command_runs_in_the_config_directory() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    // The sidecar runs in the test's working directory (the crate root);
    // agent.sh exists only next to config.json.
    assert_ne!(std::env::current_dir().unwrap(), dir.path());
    fs::write(dir.path().join("agent.sh"), agent_script("$(basename \"$(pwd -P)\")")).unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    cfg["wake_command"] = json!("sh agent.sh");
    let sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let task_id = hub.push_task(AGENT, "d", json!({}));
    let complete = expect_received(&hub, "task_complete");
    assert_eq!(complete["task_id"], task_id.as_str(), "{}", sidecar.output());
    let config_dir = dir.path().canonicalize().unwrap();
    assert_eq!(complete["result"]["output"], config_dir.file_name().unwrap().to_str().unwrap());
}

#[test]
fn a_failed_wakes_warning_on_stdout_names_the_last_line_of_stderr() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    cfg["wake_command"] = json!(if cfg!(windows) {
        "echo noise 1>&2& echo agent: cannot reach the model server 1>&2& exit 3"
    } else {
        "echo noise >&2; echo 'agent: cannot reach the model server' >&2; exit 3"
    });
    cfg["wake_retry_delays_ms"] = json!([]);
    let sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    hub.push_task(AGENT, "d", json!({}));
    expect_received(&hub, "task_failed");
    // stdout only: pm2 shows it as the sidecar's output log.
    let warning = wait_until("a line on stdout with the stderr line", || {
        let stdout = fs::read_to_string(&sidecar.stdout).unwrap_or_default();
        stdout.lines().find(|line| line.contains("agent: cannot reach the model server")).map(str::to_string)
    });
    assert!(warning.contains("WARN") && warning.contains("exit code 3"), "{warning}");
}

#[test]
#[cfg_attr(
    windows,
    ignore = "skipped on Windows: the agent is a sh script (pwd, wc, /bin/echo), not ported to cmd"
)]
fn a_description_over_128_kib_still_wakes_the_agent() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    // The description reaches the command in the environment and on its
    // command line; the agent reports whether it was cut and the task
    // file's size.
    fs::write(
        dir.path().join("agent.sh"),
        agent_script("$AGENTCOM_TASK_TRUNCATED $(wc -c < \"$AGENTCOM_TASK_FILE\")"),
    )
    .unwrap();
    cfg["wake_command"] =
        json!("/bin/echo \"${TASK_DESCRIPTION}\" \"${TASK_JSON}\" > /dev/null && sh agent.sh");
    let sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let description = "x".repeat(1 << 20);
    let task_id = hub.push_task(AGENT, &description, json!({}));
    let complete = expect_received(&hub, "task_complete");
    assert_eq!(complete["task_id"], task_id.as_str(), "{}", sidecar.output());
    let output = complete["result"]["output"].as_str().unwrap();
    let (flag, task_file_bytes) = output.split_once(' ').unwrap();
    assert_eq!(flag, "1");
    assert!(task_file_bytes.trim().parse::<usize>().unwrap() > description.len(), "{output}");
}
