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

const FAILSAFE: Duration = Duration::from_secs(10);

struct Fixture {
    dir: tempfile::TempDir,
    handle: Option<WakeHandle>,
    outcomes: Receiver<WakeOutcome>,
    started: Receiver<WakeStarted>,
}

impl Fixture {
    fn new() -> Fixture {
        let (tx, outcomes) = unbounded();
        let (started_tx, started) = unbounded();
        let handle = WakeHandle::spawn_with_started(
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
fn hostile_text_never_runs_as_shell_code() {
    let fixture = Fixture::new();
    let d = fixture.dir().display().to_string();
    let description = format!(
        "$(touch {d}/pwned-subst) `touch {d}/pwned-backtick` \
         \"; touch {d}/pwned-dq; echo \" \\\" \\\"; touch {d}/pwned-bs; echo \\\" \
         '; touch {d}/pwned-sq; echo ' it's\n\
         touch {d}/pwned-newline\n\
         ${{IFS}}$HOME %PATH% !x! \\$(touch {d}/pwned-escaped) *"
    );
    let metadata = json!({
        "note": format!("$(touch {d}/pwned-meta) `touch {d}/pwned-meta-bt` \"; touch {d}/pwned-meta-dq; echo \""),
        "quote": format!("'; touch {d}/pwned-meta-sq; echo '"),
    });
    let task_id = format!("task-1$(touch {d}/pwned-id)");
    let task_json = serde_json::to_string(&json!({
        "task_id": task_id,
        "description": description,
        "metadata": metadata,
    }))
    .unwrap();
    // Every placeholder bare, in double quotes and in single quotes,
    // plus the Node example's shape and captures of what the child
    // received.
    let template = r#"
        out="$AGENTCOM_RESULTS_DIR"
        echo ${TASK_ID} ${TASK_JSON} ${TASK_DESCRIPTION} ${TASK_FILE} > /dev/null
        echo "${TASK_ID}" "${TASK_JSON}" "${TASK_DESCRIPTION}" "${TASK_FILE}" > /dev/null
        echo '${TASK_ID}' '${TASK_JSON}' '${TASK_DESCRIPTION}' '${TASK_FILE}' > "$out/single-quoted"
        echo --desc "${TASK_DESCRIPTION}" --message "Task: ${TASK_JSON}" > /dev/null
        printf '%s' "$AGENTCOM_TASK_DESCRIPTION" > "$out/desc.env"
        printf '%s' "${TASK_DESCRIPTION}" > "$out/desc.placeholder"
        printf '%s' "${TASK_JSON}" > "$out/json.placeholder"
        printf '%s' "${TASK_ID}" > "$out/id.placeholder"
        printf '%s' "$AGENTCOM_GENERATION" > "$out/generation"
        cat "${TASK_FILE}" > "$out/task-file.copy"
    "#;
    let mut request = fixture.request(template);
    request.task_id = task_id.clone();
    request.description = description.clone();
    request.task_json = task_json.clone();
    fixture.handle().run(request);
    let outcome = fixture.outcome();

    let pwned: Vec<String> = fs::read_dir(fixture.dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("pwned"))
        .collect();
    assert!(pwned.is_empty(), "hub text ran as shell code: {pwned:?}");
    assert_eq!(outcome.status, WakeStatus::Success, "{outcome:?}");

    let read = |name: &str| fs::read(fixture.dir().join(name)).unwrap();
    assert_eq!(read("desc.env"), description.as_bytes());
    assert_eq!(read("desc.placeholder"), description.as_bytes());
    assert_eq!(read("json.placeholder"), task_json.as_bytes());
    assert_eq!(read("id.placeholder"), task_id.as_bytes());
    assert_eq!(read("task-file.copy"), task_json.as_bytes());
    assert_eq!(read("generation"), b"3");
    assert_eq!(
        read("single-quoted"),
        b"${AGENTCOM_TASK_ID} ${AGENTCOM_TASK_JSON} ${AGENTCOM_TASK_DESCRIPTION} ${AGENTCOM_TASK_FILE}\n"
    );
}

#[test]
fn nul_in_description_does_not_stop_the_wake() {
    let fixture = Fixture::new();
    let mut request = fixture.request(r#"printf '%s' "${TASK_DESCRIPTION}" > "$AGENTCOM_RESULTS_DIR/desc""#);
    request.description = "a\0b".to_string();
    fixture.handle().run(request);
    assert_eq!(fixture.outcome().status, WakeStatus::Success);
    assert_eq!(fs::read_to_string(fixture.dir().join("desc")).unwrap(), "a\u{FFFD}b");
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
fn a_megabyte_description_still_wakes_with_bounded_values_and_the_whole_task_file() {
    let fixture = Fixture::new();
    let description = "é1234567".repeat(1 << 17);
    let task_json = serde_json::to_string(&json!({
        "task_id": "task-00000000000000ff",
        "description": description,
        "metadata": { "kept": "yes" },
    }))
    .unwrap();
    // /bin/echo is a program, not a builtin: both values expand into the
    // argument list of a real exec, next to the environment holding them.
    let mut request = fixture.request(
        r#"/bin/echo "${TASK_DESCRIPTION}" "${TASK_JSON}" > /dev/null &&
           printf '%s' "${TASK_DESCRIPTION}" > "$AGENTCOM_RESULTS_DIR/desc" &&
           printf '%s' "${TASK_JSON}" > "$AGENTCOM_RESULTS_DIR/json" &&
           printf '%s' "$AGENTCOM_TASK_TRUNCATED" > "$AGENTCOM_RESULTS_DIR/flag" &&
           cat "${TASK_FILE}" > "$AGENTCOM_RESULTS_DIR/task-file.copy""#,
    );
    request.description = description.clone();
    request.task_json = task_json.clone();
    fixture.handle().run(request);
    let outcome = fixture.outcome();
    assert_eq!(outcome.status, WakeStatus::Success, "{outcome:?}");

    let read = |name: &str| fs::read_to_string(fixture.dir().join(name)).unwrap();
    let desc = read("desc");
    assert!(desc.len() <= ENV_VALUE_LIMIT_BYTES, "{}", desc.len());
    assert!(desc.starts_with("é1234567é") && desc.ends_with(TRUNCATION_MARKER));
    let json: serde_json::Value = serde_json::from_str(&read("json")).expect("TASK_JSON is still JSON");
    assert!(read("json").len() <= ENV_VALUE_LIMIT_BYTES);
    assert_eq!(json["metadata"]["kept"], "yes");
    assert_eq!(read("flag"), "1");
    assert_eq!(read("task-file.copy"), task_json, "the task file holds the whole task");

    // A short task is not flagged.
    fixture
        .handle()
        .run(fixture.request(r#"printf '%s' "$AGENTCOM_TASK_TRUNCATED" > "$AGENTCOM_RESULTS_DIR/flag""#));
    assert_eq!(fixture.outcome().status, WakeStatus::Success);
    assert_eq!(read("flag"), "0");
}

#[test]
fn the_command_runs_in_its_work_dir_and_gets_absolute_paths() {
    let fixture = Fixture::new();
    let work_dir = fixture.dir().join("config-dir");
    fs::create_dir(&work_dir).unwrap();
    fs::write(
        work_dir.join("agent.sh"),
        "pwd -P > \"$AGENTCOM_RESULTS_DIR/pwd\"; printf '%s' \"$AGENTCOM_TASK_FILE\" > \"$AGENTCOM_RESULTS_DIR/task-file\"",
    )
    .unwrap();
    let mut request = fixture.request("sh agent.sh");
    request.work_dir = work_dir.clone();
    fixture.handle().run(request);
    let outcome = fixture.outcome();
    assert_eq!(outcome.status, WakeStatus::Success, "{outcome:?}");
    let pwd = fs::read_to_string(fixture.dir().join("pwd")).unwrap();
    assert_eq!(Path::new(pwd.trim()), work_dir.canonicalize().unwrap());

    // Relative paths are relative to the sidecar's directory, and the
    // command, running elsewhere, gets them absolute.
    let cwd = std::env::current_dir().unwrap();
    let relative_results = pathdiff(fixture.dir(), &cwd);
    let mut request = fixture.request("sh agent.sh");
    request.work_dir = work_dir.clone();
    request.results_dir = relative_results.clone();
    request.task_file = relative_results.join("task.json");
    fixture.handle().run(request);
    assert_eq!(fixture.outcome().status, WakeStatus::Success);
    let task_file = fs::read_to_string(fixture.dir().join("task-file")).unwrap();
    assert!(Path::new(&task_file).is_absolute(), "{task_file}");
    assert_eq!(
        Path::new(&task_file).canonicalize().unwrap(),
        fixture.dir().join("task.json").canonicalize().unwrap()
    );

    // A working directory that is gone is a clear start failure.
    let mut request = fixture.request("true");
    request.work_dir = fixture.dir().join("missing");
    fixture.handle().run(request);
    let outcome = fixture.outcome();
    assert!(
        matches!(&outcome.status, WakeStatus::SpawnFailed(text) if text.contains("is not a directory")),
        "{outcome:?}"
    );
}

/// `path` relative to `base` (both absolute), with `..` steps.
fn pathdiff(path: &Path, base: &Path) -> std::path::PathBuf {
    let path: Vec<_> = path.components().collect();
    let base: Vec<_> = base.components().collect();
    let common = path.iter().zip(&base).take_while(|(a, b)| a == b).count();
    let mut relative = std::path::PathBuf::new();
    for _ in common..base.len() {
        relative.push("..");
    }
    for component in &path[common..] {
        relative.push(component);
    }
    relative
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

#[test]
fn each_attempt_reports_its_identity_when_it_starts() {
    let fixture = Fixture::new();
    let mut request = fixture.request("echo $$ > \"$AGENTCOM_RESULTS_DIR/pid\"");
    request.attempt = 2;
    fixture.handle().run(request);
    let started = fixture.started.recv_timeout(FAILSAFE).expect("no start report");
    assert_eq!(fixture.outcome().status, WakeStatus::Success);
    let pid: u32 = fs::read_to_string(fixture.dir().join("pid")).unwrap().trim().parse().unwrap();
    assert_eq!((started.task_id.as_str(), started.attempt), ("task-00000000000000ff", 2));
    assert_eq!(started.identity.pid, pid);
    assert_eq!(started.identity.process_group, Some(pid));
    assert!(started.identity.start_time.is_some(), "{started:?}");
    // The core persists it as JSON.
    let json = serde_json::to_string(&started.identity).unwrap();
    assert_eq!(serde_json::from_str::<WakeIdentity>(&json).unwrap(), started.identity);
    // A command that cannot start reports no start.
    fixture.handle().run(fixture.request("echo a\0b"));
    assert!(matches!(fixture.outcome().status, WakeStatus::SpawnFailed(_)));
    assert!(fixture.started.try_recv().is_err());
}

#[test]
fn a_leftover_is_ended_with_its_group_only_when_its_start_time_matches() {
    let fixture = Fixture::new();
    let pids = fixture.pid_fifo("pid.fifo");
    fixture
        .handle()
        .run(fixture.request(r#"sleep 30 & echo $! > "$AGENTCOM_RESULTS_DIR/pid.fifo"; sleep 30; wait"#));
    let identity = fixture.started.recv_timeout(FAILSAFE).expect("no start report").identity;
    let grandchild = pids.recv_timeout(FAILSAFE).expect("no grandchild pid");

    // The same pid with another start time is another process: left alone.
    let reused = WakeIdentity { start_time: identity.start_time.map(|time| time + 1), ..identity.clone() };
    assert_eq!(end_leftover(&reused), Leftover::Gone);
    let unverifiable = WakeIdentity { start_time: None, ..identity.clone() };
    assert_eq!(end_leftover(&unverifiable), Leftover::Unverifiable);
    assert!(is_alive(identity.pid) && is_alive(grandchild), "a mismatched identity ended something");

    // The real one: the command and everything in its group end.
    assert_eq!(end_leftover(&identity), Leftover::Ended);
    assert_eq!(fixture.outcome().status, WakeStatus::Failed { exit_code: None });
    let gone = wait_until_gone(grandchild);
    kill_leftover_sleep(grandchild);
    assert!(gone, "grandchild {grandchild} survived end_leftover");
    assert_eq!(end_leftover(&identity), Leftover::Gone);
}
