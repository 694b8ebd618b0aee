//! `agentcom-sidecar status --json`, run as the binary: one JSON object with
//! the same facts as `status`, and the same exit codes.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::support::config;

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
    assert_eq!(code, 1, "{status}");
    assert_eq!(status["verdict"], "busy");
    assert_eq!(status["queue_state"], "corrupt");
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
