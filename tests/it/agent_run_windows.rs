//! Run mode on Windows (under Wine in CI): a `.cmd` agent that is the CLI,
//! and a `taskkill /F` of the sidecar mid-run: the agent works on (its job
//! object no longer ends it with the sidecar), and the next sidecar reports
//! its outcome once, never starting it again, also when the agent ended
//! while no sidecar ran (its gate recorded its exit status). The same for a
//! synchronous launch-mode script at work.

use std::fs;
use std::path::{Path, PathBuf};

use agentcom_sidecar::devhub::{DevHub, DevHubEvent};
use serde_json::{json, Value};

use crate::support::*;

const HELPER: &str = "--ignored --exact tasks::wake_helper_holds_its_file --quiet";
const WAIT_HELPER: &str = "--ignored --exact agent_run_windows::agent_waits_for_its_go_file --quiet";
/// Where [`agent_waits_for_its_go_file`] says it is at work, and the file it
/// waits for.
const WAITING_FILE_ENV: &str = "AGENTCOM_TEST_WAITING_FILE";
const GO_FILE_ENV: &str = "AGENTCOM_TEST_GO_FILE";

/// Not a test: the work of a `.cmd` agent below. Writes its waiting file,
/// then waits (up to a minute) for its go file, which the test writes once
/// no sidecar runs, or for its task's cancel marker (`<task_id>.cancel` in
/// the results directory), on which it stops.
#[test]
#[ignore = "not a test: the work of the Windows run-mode agent"]
fn agent_waits_for_its_go_file() {
    let (Some(waiting), Some(go)) = (std::env::var_os(WAITING_FILE_ENV), std::env::var_os(GO_FILE_ENV))
    else {
        return;
    };
    let cancel = match (std::env::var_os("AGENTCOM_RESULTS_DIR"), std::env::var("AGENTCOM_TASK_ID")) {
        (Some(dir), Ok(task_id)) => Path::new(&dir).join(format!("{task_id}.cancel")),
        _ => return,
    };
    fs::write(waiting, "").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let ticker = crossbeam_channel::tick(std::time::Duration::from_millis(20));
    while !Path::new(&go).exists() && !cancel.exists() && std::time::Instant::now() < deadline {
        let _ = ticker.recv();
    }
}

/// The files of [`agent_waits_for_its_go_file`] in `dir`, and the
/// environment that names them to it.
struct GoFiles {
    waiting: PathBuf,
    go: PathBuf,
    names: [String; 2],
}

impl GoFiles {
    fn in_dir(dir: &Path) -> GoFiles {
        let (waiting, go) = (dir.join("waiting"), dir.join("go"));
        let names = [waiting.display().to_string(), go.display().to_string()];
        GoFiles { waiting, go, names }
    }

    fn env(&self) -> [(&str, &str); 2] {
        [(WAITING_FILE_ENV, self.names[0].as_str()), (GO_FILE_ENV, self.names[1].as_str())]
    }
}

/// Starts a sidecar with `env`, pushes it a task and waits for its
/// `task_accepted`.
fn start_and_take_a_task(hub: &DevHub, dir: &Path, cfg: &Value, env: &[(&str, &str)]) -> (Sidecar, String) {
    let sidecar = Sidecar::start_with_env(dir, cfg, env);
    expect_identified(hub);
    let task_id = hub.push_task(AGENT, "d", json!({}));
    expect_received(hub, "task_accepted");
    (sidecar, task_id)
}

/// Waits for an agent to be at work: under Wine a run-mode agent is a chain
/// of processes (the gate's cmd, the agent's cmd, this test binary started
/// again as the helper), each slow to start on a loaded machine, so the
/// bound is longer than [`FAILSAFE`].
fn wait_for_the_agent(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + FAILSAFE * 4;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::park_timeout(std::time::Duration::from_millis(20));
    }
}

fn example_cli_agent(dir: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join("example-cli-agent.cmd");
    let copy = dir.join("example-cli-agent.cmd");
    fs::copy(script, &copy).unwrap();
    format!("\"{}\"", copy.display())
}

fn run_config(dir: &Path, hub_url: &str, wake_command: &str) -> Value {
    let mut cfg = config(dir, hub_url);
    cfg["wake_mode"] = json!("run");
    cfg["wake_command"] = json!(wake_command);
    cfg["cancel_grace_ms"] = json!(500);
    cfg
}

#[test]
fn run_mode_a_cmd_agents_json_object_is_the_output() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    let cfg = run_config(dir.path(), &hub.url(), &example_cli_agent(dir.path()));
    let sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let task_id = hub.push_task(AGENT, "d", json!({}));
    let complete = expect_received(&hub, "task_complete");
    assert_eq!(complete["result"]["output"]["type"], "result", "{}", sidecar.output());
    assert_eq!(complete["result"]["output"]["result"], format!("Done: task {task_id}"));
}

#[test]
fn run_mode_a_cmd_agent_that_fails_fails_the_task_with_its_stderr() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    let cfg = run_config(dir.path(), &hub.url(), &example_cli_agent(dir.path()));
    let sidecar = Sidecar::start_with_env(dir.path(), &cfg, &[("AGENTCOM_EXAMPLE_FAIL", "3")]);
    expect_identified(&hub);
    hub.push_task(AGENT, "d", json!({}));
    let failed = expect_received(&hub, "task_failed");
    let reason = failed["reason"].as_str().unwrap();
    assert!(reason.contains("status 3"), "{reason}\n{}", sidecar.output());
    assert!(reason.ends_with("the model is not reachable"), "{reason}");
}

/// Starts the next sidecar and waits for the task's one outcome, a
/// `task_complete`: then `taskkill`s it and checks that the hub got no
/// other outcome and that the agent (which logs each start to `starts`)
/// was started once.
fn one_outcome_after_a_restart(
    hub: &DevHub,
    dir: &Path,
    cfg: &Value,
    env: &[(&str, &str)],
    task_id: &str,
) -> Value {
    let mut sidecar = Sidecar::start_with_env(dir, cfg, env);
    let is_outcome = |e: &DevHubEvent| {
        matches!(e, DevHubEvent::Received { frame, .. }
            if (frame["type"] == "task_complete" || frame["type"] == "task_failed") && frame["task_id"] == task_id)
    };
    let DevHubEvent::Received { frame, .. } = expect_event(hub, "the task's outcome", is_outcome) else {
        unreachable!()
    };
    assert_eq!(frame["type"], "task_complete", "{frame}\n{}", sidecar.output());
    sidecar.taskkill();
    assert_eq!(hub.events().try_iter().filter(is_outcome).count(), 0, "one outcome");
    let started = fs::read_to_string(dir.join("starts")).unwrap();
    assert_eq!(started.lines().count(), 1, "started once: {started:?}");
    frame
}

/// Whether the helper still holds its file.
fn helper_alive(dir: &Path) -> bool {
    use std::os::windows::fs::OpenOptionsExt;
    fs::OpenOptions::new().write(true).share_mode(0).open(dir.join("grandchild.pid")).is_err()
}

#[test]
fn run_mode_the_agent_outlives_a_taskkill_of_the_sidecar_and_is_reported_once() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    // The agent logs its start, then works (the helper holds its file for a
    // ten seconds) and ends with exit 0; its stdout is the helper's.
    let agent = dir.path().join("agent.cmd");
    let starts = dir.path().join("starts");
    let helper = format!("\"{}\" {HELPER}", std::env::current_exe().unwrap().display());
    fs::write(&agent, format!("@echo off\r\necho start>>\"{}\"\r\n{helper}\r\n", starts.display())).unwrap();
    let cfg = run_config(dir.path(), &hub.url(), &format!("\"{}\"", agent.display()));
    let hold = dir.path().join("grandchild.pid").display().to_string();
    let env = [("AGENTCOM_TEST_HOLD_FILE", hold.as_str()), ("AGENTCOM_TEST_HOLD_SECS", "10")];
    let (mut sidecar, task_id) = start_and_take_a_task(&hub, dir.path(), &cfg, &env);
    wait_for_the_agent("the agent at work", || dir.path().join("grandchild.pid").exists());
    wait_until_recorded(dir.path());
    sidecar.taskkill();
    hub.drop_connection(AGENT);
    assert!(helper_alive(dir.path()), "the agent outlives the sidecar");
    one_outcome_after_a_restart(&hub, dir.path(), &cfg, &env, &task_id);
}

#[test]
fn run_mode_a_cancel_after_a_taskkill_ends_the_agent_the_last_sidecar_left() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("agent.cmd");
    let helper = format!("\"{}\" {HELPER}", std::env::current_exe().unwrap().display());
    fs::write(&agent, format!("@echo off\r\n{helper}\r\n")).unwrap();
    let cfg = run_config(dir.path(), &hub.url(), &format!("\"{}\"", agent.display()));
    let hold = dir.path().join("grandchild.pid").display().to_string();
    let env = [("AGENTCOM_TEST_HOLD_FILE", hold.as_str()), ("AGENTCOM_TEST_HOLD_SECS", "60")];
    let (mut sidecar, task_id) = start_and_take_a_task(&hub, dir.path(), &cfg, &env);
    wait_for_the_agent("the agent at work", || dir.path().join("grandchild.pid").exists());
    wait_until_recorded(dir.path());
    sidecar.taskkill();
    hub.drop_connection(AGENT);
    assert!(helper_alive(dir.path()), "the agent outlives the sidecar");
    let sidecar = Sidecar::start_with_env(dir.path(), &cfg, &env);
    expect_received(&hub, "task_recovering");
    wait_until("the next sidecar to hold the task", || {
        (sidecar.queue()["active"]["task_id"] == task_id.as_str()).then_some(())
    });
    assert!(hub.cancel_task(&task_id));
    wait_until("the agent ended by its job", || (!helper_alive(dir.path())).then_some(()));
}

#[test]
fn run_mode_an_agent_that_ends_while_no_sidecar_runs_is_reported_once_with_its_exit_status() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    // The agent logs its start, waits for the go file, prints its answer
    // and exits 0.
    let agent = dir.path().join("agent.cmd");
    let starts = dir.path().join("starts");
    let helper = format!("\"{}\" {WAIT_HELPER}", std::env::current_exe().unwrap().display());
    fs::write(
        &agent,
        format!(
            "@echo off\r\necho start>>\"{}\"\r\n{helper} >NUL\r\necho finished while no sidecar ran\r\nexit /b 0\r\n",
            starts.display()
        ),
    )
    .unwrap();
    let cfg = run_config(dir.path(), &hub.url(), &format!("\"{}\"", agent.display()));
    let files = GoFiles::in_dir(dir.path());
    let (waiting, go) = (&files.waiting, &files.go);
    let env = files.env();
    let (mut sidecar, task_id) = start_and_take_a_task(&hub, dir.path(), &cfg, &env);
    wait_for_the_agent("the agent at work", || waiting.exists());
    wait_until_recorded(dir.path());
    sidecar.taskkill();
    hub.drop_connection(AGENT);
    // The agent ends now, with no sidecar running: its gate records how.
    fs::write(go, "").unwrap();
    let exit_file = dir.path().join("results").join(".tasks").join(format!("{task_id}.exit"));
    let recorded = wait_until("the exit status recorded", || fs::read_to_string(&exit_file).ok());
    assert_eq!(recorded.trim(), "exit 0");
    let frame = one_outcome_after_a_restart(&hub, dir.path(), &cfg, &env, &task_id);
    let output = frame["result"]["output"].as_str().unwrap_or_default();
    assert_eq!(output.trim(), "finished while no sidecar ran", "{frame}");
}

/// A cancel mid-run: the agent learns it (here from the cancel marker: Wine
/// delivers no Ctrl-Break) and ends by itself within `cancel_grace_ms`; the
/// job is not ended under it, and the hub hears nothing more of the task.
#[test]
fn run_mode_a_cancel_mid_run_lets_the_agent_end_by_itself_within_the_grace() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    // After its work the agent notes that it ended by itself: a job ended
    // under it never gets there.
    let agent = dir.path().join("agent.cmd");
    let ended = dir.path().join("ended-by-itself");
    let helper = format!("\"{}\" {WAIT_HELPER}", std::env::current_exe().unwrap().display());
    fs::write(
        &agent,
        format!("@echo off\r\n{helper} >NUL\r\necho done>\"{}\"\r\nexit /b 0\r\n", ended.display()),
    )
    .unwrap();
    let mut cfg = run_config(dir.path(), &hub.url(), &format!("\"{}\"", agent.display()));
    // Long enough that only a stuck agent meets it (then the test fails).
    cfg["cancel_grace_ms"] = json!(60_000);
    let files = GoFiles::in_dir(dir.path());
    let waiting = &files.waiting;
    let env = files.env();
    let (sidecar, task_id) = start_and_take_a_task(&hub, dir.path(), &cfg, &env);
    wait_for_the_agent("the agent at work", || waiting.exists());
    assert!(hub.cancel_task(&task_id));
    wait_until("the agent to end by itself", || ended.exists().then_some(()));
    wait_until("the sidecar idle again", || sidecar.queue()["active"].is_null().then_some(()));
    let outcomes = hub.events().try_iter().filter(|e| matches!(e, DevHubEvent::Received { frame, .. }
        if (frame["type"] == "task_complete" || frame["type"] == "task_failed") && frame["task_id"] == task_id.as_str())).count();
    assert_eq!(outcomes, 0, "a cancelled task has no outcome\n{}", sidecar.output());
}

/// Launch mode, a synchronous script (it confirms, works and writes its
/// result in the wake command): once confirmed it is the agent at work, and
/// it outlives a `taskkill /F` of the sidecar as on Unix (its job no longer
/// ends it), writing to its output as it goes; the next sidecar reports its
/// result once and never starts it again.
#[test]
fn launch_mode_a_synchronous_script_outlives_a_taskkill_of_the_sidecar_and_is_reported_once() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("agent.cmd");
    let starts = dir.path().join("starts");
    let helper = format!("\"{}\" {WAIT_HELPER}", std::env::current_exe().unwrap().display());
    let task = "%AGENTCOM_RESULTS_DIR%\\%AGENTCOM_TASK_ID%";
    fs::write(
        &agent,
        format!(
            "@echo off\r\necho start>>\"{starts}\"\r\ntype nul>\"{task}.started\"\r\n{helper}\r\n\
             echo still writing to stdout after the sidecar went\r\n\
             echo {{\"status\":\"success\",\"output\":\"done while no sidecar ran\"}}>\"{task}.json.tmp\"\r\n\
             move /Y \"{task}.json.tmp\" \"{task}.json\" >NUL\r\nexit /b 0\r\n",
            starts = starts.display()
        ),
    )
    .unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    cfg["wake_command"] = json!(format!("\"{}\"", agent.display()));
    let files = GoFiles::in_dir(dir.path());
    let (waiting, go) = (&files.waiting, &files.go);
    let env = files.env();
    let (mut sidecar, task_id) = start_and_take_a_task(&hub, dir.path(), &cfg, &env);
    wait_for_the_agent("the agent at work", || waiting.exists());
    wait_until("the task confirmed", || (sidecar.queue()["active"]["status"] == "working").then_some(()));
    sidecar.taskkill();
    hub.drop_connection(AGENT);
    // The script finishes now, with no sidecar running.
    fs::write(go, "").unwrap();
    let result = dir.path().join("results").join(format!("{task_id}.json"));
    wait_until("the script's result, written after the sidecar went", || result.exists().then_some(()));
    let frame = one_outcome_after_a_restart(&hub, dir.path(), &cfg, &env, &task_id);
    assert_eq!(frame["result"]["output"], "done while no sidecar ran", "{frame}");
}
