//! End-to-end tests with real `sh -c` wake commands. Each test waits
//! on channels with a generous failsafe and never sleeps; where a
//! test needs a grandchild's pid before acting, the wake command
//! sends it through a FIFO.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;

use crossbeam_channel::{tick, unbounded};
use serde_json::json;

use std::path::Path;

use super::*;
use crate::wake::{
    end_leftover, Leftover, WakeIdentity, ENV_VALUE_LIMIT_BYTES, TAIL_LIMIT_BYTES, TRUNCATION_MARKER,
};

mod environment;
mod gate;
mod leftover;

const FAILSAFE: Duration = Duration::from_secs(10);

/// `WakeHandle::spawn_with_started` or `WakeHandle::spawn_gated`.
type SpawnHandle =
    fn(Box<dyn Fn(WakeStarted) + Send>, Box<dyn Fn(WakeOutcome) + Send>) -> io::Result<WakeHandle>;

struct Fixture {
    dir: tempfile::TempDir,
    handle: Option<WakeHandle>,
    outcomes: Receiver<WakeOutcome>,
    started: Receiver<WakeStarted>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with(WakeHandle::spawn_with_started)
    }

    /// Each command waits at its gate for [`WakeHandle::release`].
    fn gated() -> Fixture {
        Fixture::with(WakeHandle::spawn_gated)
    }

    fn with(spawn: SpawnHandle) -> Fixture {
        let (tx, outcomes) = unbounded();
        let (started_tx, started) = unbounded();
        let handle = spawn(
            Box::new(move |started| {
                let _ = started_tx.send(started);
            }),
            Box::new(move |outcome| {
                let _ = tx.send(outcome);
            }),
        )
        .unwrap();
        Fixture { dir: tempfile::tempdir().unwrap(), handle: Some(handle), outcomes, started }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn handle(&self) -> &WakeHandle {
        self.handle.as_ref().unwrap()
    }

    fn request(&self, template: &str) -> WakeRequest {
        WakeRequest {
            task_id: "task-00000000000000ff".to_string(),
            generation: 3,
            attempt: 1,
            command_template: template.to_string(),
            description: "do the thing".to_string(),
            task_json: "{\"task_id\":\"task-00000000000000ff\"}".to_string(),
            task_file: self.dir().join("task.json"),
            results_dir: self.dir().to_path_buf(),
            work_dir: self.dir().to_path_buf(),
            timeout: FAILSAFE,
            mode: crate::wake::WakeMode::Launch,
            cancel_grace: FAILSAFE,
            max_result_bytes: 1 << 20,
            output_check: Duration::from_millis(20),
        }
    }

    fn run(&self, template: &str) -> WakeOutcome {
        self.handle().run(self.request(template));
        self.outcome()
    }

    fn outcome(&self) -> WakeOutcome {
        self.outcomes.recv_timeout(FAILSAFE).expect("no wake outcome within the failsafe")
    }

    /// Creates a FIFO in the tempdir and returns a channel that
    /// delivers the pid the wake command writes into it. Opening a
    /// FIFO blocks until both ends are open, so the reader runs on
    /// its own thread.
    fn pid_fifo(&self, name: &str) -> Receiver<u32> {
        let path = self.dir().join(name);
        let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: c_path is a valid NUL-terminated string.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let (tx, rx) = bounded(1);
        thread::spawn(move || {
            let text = fs::read_to_string(&path).unwrap();
            let _ = tx.send(text.trim().parse::<u32>().unwrap());
        });
        rx
    }
}

/// Whether the process exists and is not a zombie. The test
/// container's init may not reap orphans, so a killed grandchild can
/// linger as a zombie; that still counts as gone.
fn is_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Waits (bounded, on a ticker, never sleeping) for a process to go.
fn wait_until_gone(pid: u32) -> bool {
    let deadline = Instant::now() + FAILSAFE;
    let ticker = tick(Duration::from_millis(10));
    while Instant::now() < deadline {
        if !is_alive(pid) {
            return true;
        }
        let _ = ticker.recv();
    }
    !is_alive(pid)
}

/// Kills a leftover `sleep` we started, if it is still there.
fn kill_leftover_sleep(pid: u32) {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if is_alive(pid) && cmdline.starts_with(b"sleep") {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

#[test]
fn exit_zero_is_success() {
    let fixture = Fixture::new();
    let outcome = fixture.run("echo woke");
    assert_eq!(outcome.status, WakeStatus::Success);
    assert_eq!(outcome.stdout_tail, "woke\n");
    assert_eq!(outcome.task_id, "task-00000000000000ff");
    assert_eq!(outcome.attempt, 1);
}

#[test]
fn non_zero_exit_is_failed_with_stderr_tail() {
    let fixture = Fixture::new();
    let outcome = fixture.run("echo oops >&2; exit 3");
    assert_eq!(outcome.status, WakeStatus::Failed { exit_code: Some(3) });
    assert_eq!(outcome.stderr_tail, "oops\n");
}

#[test]
fn missing_program_is_failed_127() {
    let fixture = Fixture::new();
    let outcome = fixture.run("agentcom-no-such-program-7f3a --wake");
    assert_eq!(outcome.status, WakeStatus::Failed { exit_code: Some(127) });
    assert!(outcome.stderr_tail.contains("agentcom-no-such-program-7f3a"), "{outcome:?}");
}

#[test]
fn killed_by_signal_is_failed_without_code() {
    let fixture = Fixture::new();
    let outcome = fixture.run("kill -9 $$");
    assert_eq!(outcome.status, WakeStatus::Failed { exit_code: None });
}

#[test]
fn unspawnable_command_is_spawn_failed() {
    let fixture = Fixture::new();
    // A NUL byte cannot be passed as an argument.
    let outcome = fixture.run("echo a\0b");
    assert!(matches!(&outcome.status, WakeStatus::SpawnFailed(text) if text.contains("nul")), "{outcome:?}");

    let mut request = fixture.request("true");
    request.task_file = fixture.dir().join("missing-dir/task.json");
    fixture.handle().run(request);
    let outcome = fixture.outcome();
    assert!(
        matches!(&outcome.status, WakeStatus::SpawnFailed(text) if text.starts_with("cannot write task file")),
        "{outcome:?}"
    );

    // The executor is still usable afterwards.
    assert_eq!(fixture.run("true").status, WakeStatus::Success);
}

#[test]
fn timeout_kills_the_whole_tree() {
    let fixture = Fixture::new();
    let pids = fixture.pid_fifo("pid.fifo");
    let mut request =
        fixture.request(r#"sleep 30 & echo $! > "$AGENTCOM_RESULTS_DIR/pid.fifo"; sleep 30; wait"#);
    // Long enough for sh to start its background child and report
    // its pid even on a loaded machine; short enough to keep the
    // test quick.
    request.timeout = Duration::from_millis(500);
    fixture.handle().run(request);
    let outcome = fixture.outcome();
    assert_eq!(outcome.status, WakeStatus::TimedOut);
    assert!(outcome.elapsed >= Duration::from_millis(500));
    let grandchild = pids.recv_timeout(FAILSAFE).expect("no grandchild pid");
    let gone = wait_until_gone(grandchild);
    kill_leftover_sleep(grandchild);
    assert!(gone, "grandchild {grandchild} survived the timeout");
}

#[test]
fn cancel_kills_the_whole_tree() {
    let fixture = Fixture::new();
    let pids = fixture.pid_fifo("pid.fifo");
    fixture
        .handle()
        .run(fixture.request(r#"sleep 30 & echo $! > "$AGENTCOM_RESULTS_DIR/pid.fifo"; sleep 30; wait"#));
    let grandchild = pids.recv_timeout(FAILSAFE).expect("no grandchild pid");
    // A cancel for another task leaves the attempt alone.
    fixture.handle().cancel("task-other");
    fixture.handle().cancel("task-00000000000000ff");
    let outcome = fixture.outcome();
    assert_eq!(outcome.status, WakeStatus::Cancelled);
    let gone = wait_until_gone(grandchild);
    kill_leftover_sleep(grandchild);
    assert!(gone, "grandchild {grandchild} survived the cancel");
}

#[test]
fn drop_kills_the_running_attempt() {
    let mut fixture = Fixture::new();
    let pids = fixture.pid_fifo("pid.fifo");
    fixture
        .handle()
        .run(fixture.request(r#"sleep 30 & echo $! > "$AGENTCOM_RESULTS_DIR/pid.fifo"; sleep 30; wait"#));
    let grandchild = pids.recv_timeout(FAILSAFE).expect("no grandchild pid");
    drop(fixture.handle.take());
    assert_eq!(fixture.outcome().status, WakeStatus::Cancelled);
    let gone = wait_until_gone(grandchild);
    kill_leftover_sleep(grandchild);
    assert!(gone, "grandchild {grandchild} survived dropping the handle");
}

/// `pm2 stop` signals the whole tree: the wake shell dies of SIGINT, and the
/// child it put in the background, started with SIGINT ignored, would
/// outlive it.
#[test]
fn a_command_ended_by_a_signal_takes_its_background_children_with_it() {
    let fixture = Fixture::new();
    let pids = fixture.pid_fifo("pid.fifo");
    fixture.handle().run(fixture.request(r#"sleep 30 & echo $! > "$AGENTCOM_RESULTS_DIR/pid.fifo"; wait"#));
    let started = fixture.started.recv_timeout(FAILSAFE).expect("no WakeStarted");
    let grandchild = pids.recv_timeout(FAILSAFE).expect("no grandchild pid");
    let group = started.identity.process_group.expect("a process group") as libc::pid_t;
    // SAFETY: killpg has no memory-safety preconditions.
    assert_eq!(unsafe { libc::killpg(group, libc::SIGINT) }, 0);
    let outcome = fixture.outcome();
    let gone = wait_until_gone(grandchild);
    kill_leftover_sleep(grandchild);
    assert_eq!(outcome.status, WakeStatus::Failed { exit_code: None });
    assert!(gone, "background child {grandchild} survived its wake command's SIGINT");
}

#[test]
fn background_agent_keeps_running_and_does_not_delay_success() {
    let fixture = Fixture::new();
    // The background sleep inherits stdout and stderr and keeps them
    // open for 30 s after the wake command exits.
    let outcome = fixture.run(r#"sleep 30 & echo $! > "$AGENTCOM_RESULTS_DIR/pid"; echo started"#);
    let agent: u32 = fs::read_to_string(fixture.dir().join("pid")).unwrap().trim().parse().unwrap();
    let alive_after_outcome = is_alive(agent);
    // Dropping the executor must not kill a finished attempt's tree.
    let mut fixture = fixture;
    drop(fixture.handle.take());
    let alive_after_drop = is_alive(agent);
    kill_leftover_sleep(agent);

    assert_eq!(outcome.status, WakeStatus::Success);
    assert_eq!(outcome.stdout_tail, "started\n");
    // Without the grace period this would take the full 30 s.
    assert!(outcome.elapsed < Duration::from_secs(3), "outcome took {:?}", outcome.elapsed);
    assert!(alive_after_outcome, "background agent was killed");
    assert!(alive_after_drop, "dropping the handle killed the agent");
}

#[test]
fn huge_output_does_not_deadlock_and_tail_is_bounded() {
    let fixture = Fixture::new();
    let outcome = fixture.run(
        "(yes stdout-line | head -c 3600000) & \
         (yes stderr-line | head -c 3600000 >&2) & \
         wait; printf END; printf END2 >&2",
    );
    assert_eq!(outcome.status, WakeStatus::Success);
    assert!(outcome.stdout_tail.len() <= TAIL_LIMIT_BYTES);
    assert!(outcome.stderr_tail.len() <= TAIL_LIMIT_BYTES);
    // 3600000 is a multiple of the 12-byte lines, so the markers
    // follow whole lines.
    assert!(outcome.stdout_tail.ends_with("stdout-line\nEND"));
    assert!(outcome.stderr_tail.ends_with("stderr-line\nEND2"));
}

/// Unix launch mode: the output goes to files under the results directory
/// (no pipe that breaks with the sidecar), and what the launcher left in
/// the background, writing on after it returned, is kept bounded.
#[test]
fn a_launchers_output_is_in_files_kept_bounded_after_it_returned() {
    let fixture = Fixture::new();
    let outcome = fixture.run(
        r#"(while [ ! -e "$AGENTCOM_RESULTS_DIR/go" ]; do sleep 0.01; done;
            head -c 3145728 /dev/zero; echo last) & echo launched; echo note >&2"#,
    );
    assert_eq!(outcome.status, WakeStatus::Success);
    assert_eq!((outcome.stdout_tail.as_str(), outcome.stderr_tail.as_str()), ("launched\n", "note\n"));
    let stdout = run::stdout_file(fixture.dir(), "task-00000000000000ff");
    assert_eq!(fs::read_to_string(&stdout).unwrap(), "launched\n");
    assert_eq!(
        fs::read_to_string(run::stderr_file(fixture.dir(), "task-00000000000000ff")).unwrap(),
        "note\n"
    );
    // Dropping the executor (the sidecar stops) leaves the bounder running.
    let mut fixture = fixture;
    drop(fixture.handle.take());
    fs::write(fixture.dir().join("go"), "").unwrap();
    let deadline = Instant::now() + FAILSAFE;
    let ticker = tick(Duration::from_millis(10));
    loop {
        let text = fs::read(&stdout).unwrap();
        if text.ends_with(b"last\n") && text.len() as u64 <= crate::wake::capture::LAUNCH_OUTPUT_LIMIT_BYTES {
            assert!(text.starts_with(b"[agentcom-sidecar: "), "cut behind a note");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the background writer's output was never cut: {} bytes",
            text.len()
        );
        let _ = ticker.recv();
    }
}

#[test]
fn an_overlapping_request_is_refused_not_queued() {
    let fixture = Fixture::new();
    // A cancel with nothing running produces no outcome.
    fixture.handle().cancel("task-idle");
    let mut running = fixture.request("sleep 30");
    running.task_id = "task-running".to_string();
    let mut overlapping = fixture.request(r#"touch "$AGENTCOM_RESULTS_DIR/overlapping-ran""#);
    overlapping.task_id = "task-overlapping".to_string();
    fixture.handle().run(running);
    fixture.handle().run(overlapping);

    let refused = fixture.outcome();
    assert_eq!(refused.task_id, "task-overlapping");
    assert!(
        matches!(&refused.status, WakeStatus::SpawnFailed(text) if text.contains("task-running is still running")),
        "{refused:?}"
    );
    // The running attempt was left alone: it is still there to cancel.
    fixture.handle().cancel("task-running");
    let cancelled = fixture.outcome();
    assert_eq!((cancelled.task_id.as_str(), &cancelled.status), ("task-running", &WakeStatus::Cancelled));
    // The executor is idle and usable again; nothing else is pending.
    assert_eq!(fixture.run("true").status, WakeStatus::Success);
    assert!(!fixture.dir().join("overlapping-ran").exists());
    assert!(fixture.outcomes.try_recv().is_err(), "an outcome too many");
}

#[test]
fn requests_run_one_after_another() {
    let fixture = Fixture::new();
    let mut first = fixture.request("echo one");
    first.attempt = 1;
    let mut second = fixture.request("echo two; exit 1");
    second.attempt = 2;
    fixture.handle().run(first);
    let first = fixture.outcome();
    fixture.handle().run(second);
    let second = fixture.outcome();
    assert_eq!((first.attempt, first.status), (1, WakeStatus::Success));
    assert_eq!((second.attempt, second.status), (2, WakeStatus::Failed { exit_code: Some(1) }));
    assert_eq!(second.stdout_tail, "two\n");
}

#[test]
fn stderr_last_line_is_the_last_non_blank_line_bounded() {
    let fixture = Fixture::new();
    let outcome = fixture.run("echo first >&2; echo '  the reason  ' >&2; echo >&2; exit 3");
    assert_eq!(outcome.stderr_last_line().as_deref(), Some("the reason"));
    let outcome = fixture.run("exit 3");
    assert_eq!(outcome.stderr_last_line(), None);
    let outcome = fixture.run("printf 'x%.0s' $(seq 1000) >&2; exit 3");
    let line = outcome.stderr_last_line().unwrap();
    assert_eq!(line, format!("{}...", "x".repeat(crate::wake::STDERR_LINE_LIMIT_CHARS)));
}
