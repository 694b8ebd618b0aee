//! The gate of a gated command: nothing runs before the release, and a
//! gate whose sidecar is gone never opens.

use std::io::Write;
use std::process::Stdio;

use super::*;

/// What the operator's command saw once through the gate: its parent's pid
/// (the gate shell, which stays to record the exit status), `$0` and how
/// many bytes its stdin held.
const REPORT: &str = r#"printf '%s %s %s' "$PPID" "$0" "$(wc -c)" > "$AGENTCOM_RESULTS_DIR/ran""#;

#[test]
fn a_gated_command_runs_only_once_released_as_the_process_that_was_recorded() {
    let fixture = Fixture::gated();
    fixture.handle().run(fixture.request(REPORT));
    let started = fixture.started.recv_timeout(FAILSAFE).expect("no start report");
    fixture.handle().release("task-00000000000000ff", 1);
    assert_eq!(fixture.outcome().status, WakeStatus::Success);
    let ran = fs::read_to_string(fixture.dir().join("ran")).unwrap();
    // The recorded pid is the gate shell's, the command's parent and the
    // leader of its process group; stdin is empty again and $0 is what an
    // ungated `sh -c` gives. The gate recorded the exit status.
    assert_eq!(ran, format!("{} sh 0", started.identity.pid));
    let exit = crate::wake::run::exit_file(fixture.dir(), "task-00000000000000ff");
    assert_eq!(fs::read_to_string(exit).unwrap(), "exit 0\n");
    // A release after the end changes nothing.
    fixture.handle().release("task-00000000000000ff", 1);
    assert!(fixture.outcomes.try_recv().is_err());
}

#[test]
fn a_gated_command_never_released_never_runs() {
    let mut fixture = Fixture::gated();
    let mut request = fixture.request(REPORT);
    request.timeout = Duration::from_millis(200);
    fixture.handle().run(request);
    fixture.started.recv_timeout(FAILSAFE).expect("no start report");
    assert_eq!(fixture.outcome().status, WakeStatus::TimedOut);
    assert!(!fixture.dir().join("ran").exists());

    fixture.handle().run(fixture.request(REPORT));
    fixture.started.recv_timeout(FAILSAFE).expect("no start report");
    fixture.handle().cancel("task-00000000000000ff");
    assert_eq!(fixture.outcome().status, WakeStatus::Cancelled);
    assert!(!fixture.dir().join("ran").exists());

    fixture.handle().run(fixture.request(REPORT));
    fixture.started.recv_timeout(FAILSAFE).expect("no start report");
    drop(fixture.handle.take());
    assert_eq!(fixture.outcome().status, WakeStatus::Cancelled);
    assert!(!fixture.dir().join("ran").exists());
}

/// What a killed sidecar leaves: the gate's write end closed by its death.
/// The shell exits at once and the operator's command never runs.
#[test]
fn a_gate_whose_writer_is_gone_exits_without_running_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let rendered = format!("echo ran > '{}'", ran.display());
    let (mut command, gate) = sys::shell_command(&rendered, true, &dir.path().join("x.exit")).unwrap();
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    drop(command);
    drop(gate.expect("gated on Unix"));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(75));
    assert!(!ran.exists());

    // Opened, the same command runs.
    let (mut command, gate) = sys::shell_command(&rendered, true, &dir.path().join("x.exit")).unwrap();
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    drop(command);
    gate.unwrap().write_all(b"go\n").unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(fs::read_to_string(&ran).unwrap(), "ran\n");
}
