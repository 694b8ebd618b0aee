//! End-to-end tests of the job object with real `cmd.exe` wake commands
//! (run under Wine in CI). The processes the wake commands start are this
//! test binary itself, running [`hang_helper`]: it writes its pid into the
//! results directory and waits. Tests wait on channels, on process handles
//! or for files with a deadline; they never sleep.

use std::fs;
use std::path::Path;
use std::process::Command;

use crossbeam_channel::unbounded;
use windows_sys::Win32::Foundation::{CloseHandle, WAIT_OBJECT_0};
use windows_sys::Win32::System::Threading::{
    OpenProcess, TerminateProcess, WaitForSingleObject, PROCESS_SYNCHRONIZE, PROCESS_TERMINATE,
};

use super::*;
use crate::wake::{end_leftover, Leftover, WakeIdentity};

const FAILSAFE: Duration = Duration::from_secs(20);
const HELPER: &str = "wake::executor::windows_tests::hang_helper";
/// Set by the job-holder test for the process it starts.
const HOLDER_DIR: &str = "AGENTCOM_TEST_JOB_HOLDER_DIR";

/// Not a test of its own: the process the tests' wake commands start. It
/// does something only inside a wake command (where `AGENTCOM_TASK_ID` is
/// set): writes `pid-<its pid>` into the results directory, then waits up
/// to a minute for an end that the tests bring about.
#[test]
#[ignore = "a helper process that the Windows wake tests start"]
fn hang_helper() {
    let (Some(dir), Some(_)) =
        (std::env::var_os("AGENTCOM_RESULTS_DIR"), std::env::var_os("AGENTCOM_TASK_ID"))
    else {
        return;
    };
    let pid = std::process::id();
    fs::write(Path::new(&dir).join(format!("pid-{pid}")), pid.to_string()).unwrap();
    let (_keep, never) = bounded::<()>(0);
    let _ = never.recv_timeout(Duration::from_secs(60));
}

/// Not a test of its own: a process that holds a wake executor running a
/// hanging command, then exits without any clean-up, as a crashing sidecar.
#[test]
#[ignore = "a helper process that the Windows wake tests start"]
fn job_holder_helper() {
    let Some(dir) = std::env::var_os(HOLDER_DIR) else { return };
    let fixture = Fixture::in_dir(Path::new(&dir));
    fixture.handle().run(fixture.request(&helper_command(), FAILSAFE));
    fixture.helper_pids(1);
    std::process::exit(0);
}

struct Fixture {
    dir: std::path::PathBuf,
    _temp: Option<tempfile::TempDir>,
    handle: Option<WakeHandle>,
    outcomes: Receiver<WakeOutcome>,
    started: Receiver<WakeStarted>,
}

impl Fixture {
    fn new() -> Fixture {
        let temp = tempfile::tempdir().unwrap();
        let mut fixture = Fixture::in_dir(temp.path());
        fixture._temp = Some(temp);
        fixture
    }

    fn in_dir(dir: &Path) -> Fixture {
        Fixture::in_dir_gated(dir, false)
    }

    /// `gated`: commands wait for their release (as the sidecar's do).
    fn in_dir_gated(dir: &Path, gated: bool) -> Fixture {
        let (tx, outcomes) = unbounded();
        let (started_tx, started) = unbounded();
        let handle = WakeHandle::start(
            Box::new(move |started| {
                let _ = started_tx.send(started);
            }),
            Box::new(move |outcome| {
                let _ = tx.send(outcome);
            }),
            gated,
        )
        .unwrap();
        Fixture { dir: dir.to_path_buf(), _temp: None, handle: Some(handle), outcomes, started }
    }

    fn handle(&self) -> &WakeHandle {
        self.handle.as_ref().unwrap()
    }

    fn request(&self, template: &str, timeout: Duration) -> WakeRequest {
        WakeRequest {
            task_id: "task-00000000000000ff".to_string(),
            generation: 3,
            attempt: 1,
            command_template: template.to_string(),
            description: "do the thing".to_string(),
            task_json: "{\"task_id\":\"task-00000000000000ff\"}".to_string(),
            task_file: self.dir.join("task.json"),
            results_dir: self.dir.clone(),
            work_dir: self.dir.clone(),
            timeout,
            mode: crate::wake::WakeMode::Launch,
            cancel_grace: Duration::from_secs(10),
            max_result_bytes: 1 << 20,
            output_check: Duration::from_millis(20),
        }
    }

    fn outcome(&self) -> WakeOutcome {
        self.outcomes.recv_timeout(FAILSAFE).expect("no wake outcome within the failsafe")
    }

    /// Waits until `count` helpers have written their pids; returns them.
    fn helper_pids(&self, count: usize) -> Vec<u32> {
        let deadline = Instant::now() + FAILSAFE;
        let ticker = crossbeam_channel::tick(Duration::from_millis(20));
        loop {
            let pids: Vec<u32> = fs::read_dir(&self.dir)
                .unwrap()
                .filter_map(|entry| entry.ok()?.file_name().to_str()?.strip_prefix("pid-")?.parse().ok())
                .collect();
            if pids.len() >= count {
                return pids;
            }
            assert!(Instant::now() < deadline, "only {} of {count} helpers started", pids.len());
            let _ = ticker.recv();
        }
    }
}

/// The helper, started by `cmd` as the wake command's foreground process.
fn helper_command() -> String {
    let exe = std::env::current_exe().unwrap();
    format!("\"{}\" {HELPER} --exact --ignored --test-threads=1", exe.display())
}

/// The helper started through a `cmd` that exits at once: its parent is
/// gone, so only the job links it to the wake command.
fn orphan_command() -> String {
    format!("cmd /c start \"\" /b {}", helper_command())
}

/// Whether `pid` has ended within `wait` (true if there is no such process).
fn ends_within(pid: u32, wait: Duration) -> bool {
    // SAFETY: OpenProcess has no memory-safety preconditions.
    let handle = unsafe { OpenProcess(PROCESS_SYNCHRONIZE, 0, pid) };
    if handle.is_null() {
        return true;
    }
    // SAFETY: the handle is open with SYNCHRONIZE and closed once, here.
    unsafe {
        let ended = WaitForSingleObject(handle, wait.as_millis() as u32) == WAIT_OBJECT_0;
        CloseHandle(handle);
        ended
    }
}

fn is_alive(pid: u32) -> bool {
    !ends_within(pid, Duration::ZERO)
}

/// Ends a helper a test left running on purpose (or by failing).
fn end(pid: u32) {
    // SAFETY: OpenProcess has no memory-safety preconditions; the handle is
    // closed once.
    unsafe {
        let handle = OpenProcess(PROCESS_TERMINATE, 0, pid);
        if !handle.is_null() {
            TerminateProcess(handle, 1);
            CloseHandle(handle);
        }
    }
}

#[test]
fn timeout_ends_the_whole_job_an_orphan_included() {
    let fixture = Fixture::new();
    let template = format!("{} & {}", orphan_command(), helper_command());
    fixture.handle().run(fixture.request(&template, Duration::from_secs(3)));
    let pids = fixture.helper_pids(2);
    let outcome = fixture.outcome();
    let gone: Vec<bool> = pids.iter().map(|&pid| ends_within(pid, FAILSAFE)).collect();
    pids.iter().for_each(|&pid| end(pid));
    assert_eq!(outcome.status, WakeStatus::TimedOut);
    assert_eq!(gone, [true, true], "helpers {pids:?} survived the timeout");
}

#[test]
fn cancel_ends_the_whole_job() {
    let fixture = Fixture::new();
    let template = format!("{} & {}", orphan_command(), helper_command());
    fixture.handle().run(fixture.request(&template, FAILSAFE));
    let pids = fixture.helper_pids(2);
    fixture.handle().cancel("task-00000000000000ff");
    let outcome = fixture.outcome();
    let gone: Vec<bool> = pids.iter().map(|&pid| ends_within(pid, FAILSAFE)).collect();
    pids.iter().for_each(|&pid| end(pid));
    assert_eq!(outcome.status, WakeStatus::Cancelled);
    assert_eq!(gone, [true, true], "helpers {pids:?} survived the cancel");
}

#[test]
fn what_a_successful_wake_started_keeps_running() {
    let mut fixture = Fixture::new();
    fixture.handle().run(fixture.request(&orphan_command(), FAILSAFE));
    let outcome = fixture.outcome();
    let agent = fixture.helper_pids(1)[0];
    let alive_after_outcome = is_alive(agent);
    // Nor does dropping the executor end it.
    drop(fixture.handle.take());
    let alive_after_drop = is_alive(agent);
    end(agent);
    assert_eq!(outcome.status, WakeStatus::Success);
    assert!(alive_after_outcome, "the agent was ended with the wake");
    assert!(alive_after_drop, "dropping the handle ended the agent");
}

#[test]
fn a_dead_holder_takes_its_running_wake_command_with_it() {
    let temp = tempfile::tempdir().unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["wake::executor::windows_tests::job_holder_helper", "--exact", "--ignored"])
        .env(HOLDER_DIR, temp.path())
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    let fixture = Fixture::in_dir(temp.path());
    let pid = fixture.helper_pids(1)[0];
    let gone = ends_within(pid, FAILSAFE);
    end(pid);
    assert!(gone, "the wake command {pid} outlived the process holding its job");
}

#[test]
fn a_leftover_is_ended_only_when_its_creation_time_matches() {
    let fixture = Fixture::new();
    fixture.handle().run(fixture.request(&helper_command(), FAILSAFE));
    let identity = fixture.started.recv_timeout(FAILSAFE).expect("no start report").identity;
    // The command is cmd, the helper its child: both are ended, by the
    // command's job, found by its name.
    let helper = fixture.helper_pids(1)[0];
    assert!(identity.start_time.is_some() && identity.process_group.is_none(), "{identity:?}");

    let reused = WakeIdentity { start_time: identity.start_time.map(|time| time + 1), ..identity.clone() };
    assert_eq!(end_leftover(&reused), Leftover::Gone);
    assert!(is_alive(identity.pid), "a mismatched identity ended the command");
    let ended = end_leftover(&identity);
    let outcome = fixture.outcome();
    let again = end_leftover(&identity);
    let helper_gone = ends_within(helper, FAILSAFE);
    end(helper);
    assert!(helper_gone, "the command's child outlived the end of its job");
    assert_eq!(ended, Leftover::Ended);
    assert_eq!(outcome.status, WakeStatus::Failed { exit_code: Some(1) });
    assert_eq!(again, Leftover::Gone);
}

/// Set for [`wait_helper`]: how it treats Ctrl-Break (`exit` or `ignore`).
const ON_BREAK: &str = "AGENTCOM_TEST_ON_BREAK";
/// [`wait_helper`]'s exit code once released (or, with `exit`, broken).
const RELEASED_EXIT: u32 = 5;
const BROKEN_EXIT: u32 = 42;

/// Not a test of its own: a run-mode agent stand-in. Writes `pid-<pid>`,
/// then waits (up to a minute) for a file `go` in the results directory and
/// exits [`RELEASED_EXIT`]. On Ctrl-Break it writes `break-<pid>`, then
/// exits [`BROKEN_EXIT`] (`exit`) or goes on waiting (`ignore`).
#[test]
#[ignore = "a helper process that the Windows wake tests start"]
fn wait_helper() {
    use windows_sys::Win32::System::Console::{SetConsoleCtrlHandler, CTRL_BREAK_EVENT};
    let (Some(dir), Some(_)) =
        (std::env::var_os("AGENTCOM_RESULTS_DIR"), std::env::var_os("AGENTCOM_TASK_ID"))
    else {
        return;
    };
    unsafe extern "system" fn on_break(event: u32) -> windows_sys::core::BOOL {
        if event != CTRL_BREAK_EVENT {
            return 0;
        }
        let dir = std::env::var_os("AGENTCOM_RESULTS_DIR").unwrap();
        let _ = fs::write(Path::new(&dir).join(format!("break-{}", std::process::id())), "");
        if std::env::var(ON_BREAK).as_deref() == Ok("exit") {
            std::process::exit(BROKEN_EXIT as i32);
        }
        1
    }
    // SAFETY: a valid handler function for the process's lifetime.
    unsafe { SetConsoleCtrlHandler(Some(on_break), 1) };
    let pid = std::process::id();
    fs::write(Path::new(&dir).join(format!("pid-{pid}")), pid.to_string()).unwrap();
    let go = Path::new(&dir).join("go");
    let deadline = Instant::now() + Duration::from_secs(60);
    let ticker = crossbeam_channel::tick(Duration::from_millis(20));
    while !go.exists() && Instant::now() < deadline {
        let _ = ticker.recv();
    }
    std::process::exit(RELEASED_EXIT as i32);
}

/// [`wait_helper`] as the command, told how to treat Ctrl-Break.
fn wait_command(on_break: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    let helper = "wake::executor::windows_tests::wait_helper --exact --ignored --test-threads=1";
    format!("set \"{ON_BREAK}={on_break}\" & \"{}\" {helper}", exe.display())
}

impl Fixture {
    /// A run-mode request for [`wait_helper`], with `grace` to end it.
    fn run_request(&self, on_break: &str, grace: Duration) -> WakeRequest {
        WakeRequest {
            mode: crate::wake::WakeMode::Run,
            cancel_grace: grace,
            ..self.request(&wait_command(on_break), FAILSAFE)
        }
    }

    fn wait_for_file(&self, name: &str) -> bool {
        let deadline = Instant::now() + FAILSAFE;
        let ticker = crossbeam_channel::tick(Duration::from_millis(20));
        while !self.dir.join(name).exists() {
            if Instant::now() >= deadline {
                return false;
            }
            let _ = ticker.recv();
        }
        true
    }
}

/// The exit code of a process that has ended (`None` while it runs).
struct ProcessWatch(windows_sys::Win32::Foundation::HANDLE);

impl ProcessWatch {
    fn open(pid: u32) -> ProcessWatch {
        use windows_sys::Win32::System::Threading::PROCESS_QUERY_LIMITED_INFORMATION;
        // SAFETY: OpenProcess has no memory-safety preconditions.
        let handle = unsafe { OpenProcess(PROCESS_SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
        assert!(!handle.is_null(), "cannot open process {pid}");
        ProcessWatch(handle)
    }

    fn exit_code_within(&self, wait: Duration) -> Option<u32> {
        use windows_sys::Win32::System::Threading::GetExitCodeProcess;
        // SAFETY: the handle is open with SYNCHRONIZE.
        if unsafe { WaitForSingleObject(self.0, wait.as_millis() as u32) } != WAIT_OBJECT_0 {
            return None;
        }
        let mut code = 0;
        // SAFETY: the handle is open with QUERY_LIMITED_INFORMATION.
        (unsafe { GetExitCodeProcess(self.0, &mut code) } != 0).then_some(code)
    }
}

impl Drop for ProcessWatch {
    fn drop(&mut self) {
        // SAFETY: opened in `open`, closed once here.
        unsafe { CloseHandle(self.0) };
    }
}

/// A gated run-mode agent left running when its executor goes (the sidecar
/// stops) ends later by itself: its gate records its exit status, which no
/// sidecar saw, in its exit file.
#[test]
fn a_run_mode_agent_that_ends_after_its_executor_went_leaves_its_exit_status() {
    let temp = tempfile::tempdir().unwrap();
    let mut fixture = Fixture::in_dir_gated(temp.path(), true);
    fixture.handle().run(fixture.run_request("exit", Duration::from_secs(10)));
    let started = fixture.started.recv_timeout(FAILSAFE).expect("no start report");
    fixture.handle().release(&started.task_id, started.attempt);
    let agent = fixture.helper_pids(1)[0];
    let exit_file = run::exit_file(&fixture.dir, &started.task_id);
    // The sidecar stops: the agent is left running.
    drop(fixture.handle.take());
    let outcome = fixture.outcome();
    let recorded_before_release = exit_file.exists();
    fs::write(fixture.dir.join("go"), "").unwrap();
    let recorded = fixture.wait_for_file(&format!(".tasks/{}.exit", started.task_id));
    let ended = ends_within(agent, FAILSAFE);
    end(agent);
    assert_eq!(outcome.status, WakeStatus::LeftRunning);
    assert!(!recorded_before_release, "an exit status before the agent ended");
    assert!(ended && recorded, "no exit file after the agent ended");
    assert_eq!(run::read_exit_file(&exit_file), Some(run::RunExit::Code(RELEASED_EXIT as i32)));
}

/// Gives this test process a console if it has none (as a sidecar started
/// from a console, or by pm2, has one; a service has none), keeping its
/// standard handles: the wake commands inherit it, and Ctrl-Break goes
/// through it. (`AllocConsole` fails, access denied, where there is one.)
fn ensure_console() {
    use windows_sys::Win32::System::Console::{
        AllocConsole, GetStdHandle, SetStdHandle, STD_ERROR_HANDLE, STD_INPUT_HANDLE, STD_OUTPUT_HANDLE,
    };
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let streams = [STD_INPUT_HANDLE, STD_OUTPUT_HANDLE, STD_ERROR_HANDLE];
        // SAFETY: no preconditions; the handles are put back as they were.
        unsafe {
            let kept = streams.map(|stream| GetStdHandle(stream));
            if AllocConsole() != 0 {
                for (stream, handle) in streams.into_iter().zip(kept) {
                    SetStdHandle(stream, handle);
                }
            }
        }
    });
}

/// A cancel sends Ctrl-Break to the command's process group; an agent that
/// handles it ends by itself within the grace (its own exit code, not the
/// job's). Wine cannot deliver Ctrl-Break (`GenerateConsoleCtrlEvent`
/// fails there: its console server implements only Ctrl-C), so this runs
/// only on a real Windows, with `--ignored`.
#[test]
#[ignore = "Wine delivers no Ctrl-Break; run on a real Windows with --ignored"]
fn a_cancel_sends_ctrl_break_and_the_agent_ends_within_the_grace() {
    ensure_console();
    let fixture = Fixture::new();
    fixture.handle().run(fixture.run_request("exit", FAILSAFE));
    let agent = fixture.helper_pids(1)[0];
    let watch = ProcessWatch::open(agent);
    fixture.handle().cancel("task-00000000000000ff");
    let outcome = fixture.outcome();
    let code = watch.exit_code_within(FAILSAFE);
    end(agent);
    assert_eq!(outcome.status, WakeStatus::Cancelled);
    assert!(fixture.dir.join(format!("break-{agent}")).exists(), "the agent got no Ctrl-Break");
    assert_eq!(code, Some(BROKEN_EXIT), "the agent did not end by itself");
}

/// An agent that ignores Ctrl-Break (or, under Wine, never gets it) is
/// ended with its job after the grace.
#[test]
fn an_agent_that_ignores_ctrl_break_is_ended_after_the_grace() {
    ensure_console();
    let fixture = Fixture::new();
    fixture.handle().run(fixture.run_request("ignore", Duration::from_millis(300)));
    let agent = fixture.helper_pids(1)[0];
    let watch = ProcessWatch::open(agent);
    fixture.handle().cancel("task-00000000000000ff");
    let outcome = fixture.outcome();
    let code = watch.exit_code_within(FAILSAFE);
    end(agent);
    assert_eq!(outcome.status, WakeStatus::Cancelled);
    assert_eq!(code, Some(sys::ENDED_EXIT_CODE), "the agent was not ended by its job");
}
