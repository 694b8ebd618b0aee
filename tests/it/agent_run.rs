//! The agent as it really runs (issue 17): a synchronous wake script and a
//! CLI in run mode, driven by the real binary against the dev hub. The
//! stand-ins are small sh scripts; each counts its starts in `starts`, so
//! "started once" is a line count, and each outcome frame the hub ever got
//! is counted after the sidecar has stopped.

use std::fs;
use std::path::Path;
use std::time::Duration;

use agentcom_sidecar::devhub::{DevHub, DevHubEvent, DevHubOptions, HubVersion};
use serde_json::{json, Value};

use crate::support::*;

/// Writes `agent.sh` (it logs its start, then runs `body`) and returns the
/// wake command that runs it. In the body, `$D` is the test's directory.
fn agent(dir: &Path, body: &str) -> String {
    let script = format!("D='{dir}'\necho \"$$\" >> \"$D/starts\"\n{body}\n", dir = dir.display());
    fs::write(dir.join("agent.sh"), script).unwrap();
    format!("sh '{}'", dir.join("agent.sh").display())
}

fn starts(dir: &Path) -> usize {
    fs::read_to_string(dir.join("starts")).unwrap_or_default().lines().count()
}

/// The pid of the agent's first start (its shell).
fn agent_pid(dir: &Path) -> u32 {
    wait_until("the agent to start", || {
        fs::read_to_string(dir.join("starts")).ok()?.lines().next()?.trim().parse().ok()
    })
}

fn alive(pid: u32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !(stat.is_empty() || stat.contains(") Z "))
}

fn wait_dead(pid: u32) {
    wait_until("the agent's process to be gone", || (!alive(pid)).then_some(()));
}

/// An agent that works until the test creates `go` (polling, as a stand-in
/// for minutes of work), then prints `output` on stdout.
fn working_until_go(output: &str) -> String {
    format!("while [ ! -e \"$D/go\" ]; do sleep 0.05; done\nprintf '%s' '{output}'")
}

struct Run {
    hub: DevHub,
    dir: tempfile::TempDir,
    cfg: Value,
    sidecar: Sidecar,
    task_id: String,
}

/// A dev hub that does not retry a failed task: it is not pushed (and woken)
/// again before the test has counted the starts.
fn no_retry_hub(version: HubVersion) -> DevHub {
    let options = DevHubOptions { max_retries: 0, ..DevHubOptions::for_version(AGENT, TOKEN, version) };
    DevHub::start(options).expect("dev hub starts")
}

fn run_mode(version: HubVersion, body: &str, tweak: impl FnOnce(&mut Value)) -> Run {
    let hub = no_retry_hub(version);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    cfg["wake_mode"] = json!("run");
    cfg["wake_command"] = json!(agent(dir.path(), body));
    cfg["cancel_grace_ms"] = json!(500);
    tweak(&mut cfg);
    let sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let task_id = hub.push_task(AGENT, "d", json!({}));
    Run { hub, dir, cfg, sidecar, task_id }
}

impl Run {
    /// Stops the sidecar as `stop` says and waits until it is gone.
    fn stop(&mut self, stop: Stop) {
        match stop {
            Stop::Term => self.sidecar.signal("TERM"),
            Stop::Kill9 => self.sidecar.kill9(),
            Stop::RestartSidecar => assert!(self.hub.restart_sidecar(AGENT, "update")),
        }
        if !matches!(stop, Stop::Kill9) {
            self.sidecar.wait_exit(FAILSAFE).expect("the sidecar stops");
        }
    }

    /// The one outcome frame: waits for it, stops the sidecar, and checks
    /// the hub got no other outcome for the task and the agent started once.
    fn one_outcome(&mut self) -> Value {
        let task_id = self.task_id.clone();
        let outcome = expect_event(&self.hub, "the task's outcome", |e| is_outcome(e, &task_id));
        self.sidecar.signal("TERM");
        self.sidecar.wait_exit(FAILSAFE).expect("the sidecar stops");
        let more: Vec<DevHubEvent> =
            self.hub.events().try_iter().filter(|e| is_outcome(e, &task_id)).collect();
        assert!(more.is_empty(), "a second outcome: {more:?}\n{}", self.sidecar.output());
        assert_eq!(starts(self.dir.path()), 1, "started once\n{}", self.sidecar.output());
        match outcome {
            DevHubEvent::Received { frame, .. } => frame,
            other => panic!("{other:?}"),
        }
    }

    fn one_outcome_owned(mut self) -> Value {
        self.one_outcome()
    }

    fn restart(&mut self) {
        self.sidecar = Sidecar::start(self.dir.path(), &self.cfg);
    }
}

fn is_outcome(event: &DevHubEvent, task_id: &str) -> bool {
    matches!(event, DevHubEvent::Received { frame, .. }
        if (frame["type"] == "task_complete" || frame["type"] == "task_failed") && frame["task_id"] == task_id)
}

const NEWEST: HubVersion = HubVersion::V4718a58;

#[test]
fn a_synchronous_script_that_works_past_the_wake_timeout_is_started_once() {
    // The issue's script: confirms, works longer than wake_timeout_ms, then
    // writes its result and exits.
    let hub = no_retry_hub(NEWEST);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    cfg["wake_timeout_ms"] = json!(1_000);
    cfg["wake_retry_delays_ms"] = json!([300, 300]);
    cfg["wake_command"] = json!(agent(
        dir.path(),
        "touch \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.started\"\n\
         sleep 3\n\
         printf '{\"status\":\"success\",\"output\":\"done\"}' > \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.json.tmp\"\n\
         mv \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.json.tmp\" \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.json\""
    ));
    let sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let task_id = hub.push_task(AGENT, "d", json!({}));
    let mut run = Run { hub, dir, cfg, sidecar, task_id };
    let frame = run.one_outcome();
    assert_eq!(frame["type"], "task_complete");
    assert_eq!(frame["result"]["output"], "done");
}

/// An agent at work longer than the shell's bound on the wake executor
/// ((wake_timeout_ms + 5 s) x 2: 10 s with a 1 ms wake timeout, 12 s with
/// 1 s) is not taken for a hung executor: the sidecar stays up and relays
/// its outcome. The agent's seconds of work are the case itself, not a wait
/// of the test's.
fn an_agent_at_work_past_the_executors_bound(mode: &str, wake_timeout_ms: u64, body: &str) {
    let hub = no_retry_hub(NEWEST);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    cfg["wake_mode"] = json!(mode);
    cfg["wake_timeout_ms"] = json!(wake_timeout_ms);
    cfg["wake_command"] = json!(agent(dir.path(), body));
    let sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let task_id = hub.push_task(AGENT, "d", json!({}));
    let outcome = hub.wait_for(FAILSAFE * 3, |e| is_outcome(e, &task_id));
    let mut run = Run { hub, dir, cfg, sidecar, task_id };
    let Some(DevHubEvent::Received { frame, .. }) = outcome else {
        panic!(
            "no outcome (the sidecar exited: {:?})\n{}",
            run.sidecar.wait_exit(Duration::ZERO),
            run.sidecar.output()
        )
    };
    assert_eq!(frame["type"], "task_complete", "{frame}");
    assert_eq!(frame["result"]["output"], "done", "{frame}");
    assert!(!run.sidecar.output().contains("is hung"), "{}", run.sidecar.output());
    assert!(run.sidecar.wait_exit(Duration::ZERO).is_none(), "the sidecar still runs");
    run.sidecar.signal("TERM");
    run.sidecar.wait_exit(FAILSAFE).expect("the sidecar stops");
    assert_eq!(starts(run.dir.path()), 1, "started once\n{}", run.sidecar.output());
}

#[test]
fn a_run_mode_agent_at_work_past_the_executors_bound_is_not_taken_for_a_hung_executor() {
    an_agent_at_work_past_the_executors_bound("run", 1, "sleep 11\nprintf done");
}

#[test]
fn a_synchronous_script_at_work_past_the_executors_bound_is_not_taken_for_a_hung_executor() {
    // The wake timeout leaves the script time to confirm.
    an_agent_at_work_past_the_executors_bound(
        "launch",
        1_000,
        "touch \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.started\"\n\
         sleep 13\n\
         printf '{\"status\":\"success\",\"output\":\"done\"}' > \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.json.tmp\"\n\
         mv \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.json.tmp\" \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.json\"",
    );
}

#[test]
fn a_synchronous_script_that_fails_after_confirming_fails_the_task_once() {
    let hub = no_retry_hub(NEWEST);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    cfg["wake_command"] = json!(agent(
        dir.path(),
        "touch \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.started\"\necho 'fatal: out of tokens' >&2\nexit 5"
    ));
    let sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let task_id = hub.push_task(AGENT, "d", json!({}));
    let frame = Run { hub, dir, cfg, sidecar, task_id }.one_outcome_owned();
    assert_eq!(frame["type"], "task_failed");
    let reason = frame["reason"].as_str().unwrap();
    assert!(reason.contains("status 5") && reason.contains("fatal: out of tokens"), "{reason}");
}

#[test]
fn run_mode_plain_text_stdout_is_the_output_on_both_hubs() {
    for version in HubVersion::ALL {
        let frame =
            run_mode(version, "echo 'working...' >&2\necho 'the answer is 42'", |_| {}).one_outcome_owned();
        assert_eq!(frame["type"], "task_complete", "{version:?}");
        assert_eq!(frame["result"], json!({"status":"success","output":"the answer is 42"}), "{version:?}");
    }
}

#[test]
fn run_mode_a_json_object_on_stdout_stays_json() {
    let claude = r#"{"type":"result","subtype":"success","is_error":false,"result":"hi","num_turns":2,"total_cost_usd":0.01}"#;
    let frame = run_mode(NEWEST, &format!("printf '%s\\n' '{claude}'"), |_| {}).one_outcome_owned();
    let expected: Value = serde_json::from_str(claude).unwrap();
    assert_eq!(frame["result"]["output"], expected);
}

#[test]
fn run_mode_stdout_over_max_result_bytes_fails_with_result_too_large() {
    let frame = run_mode(NEWEST, "head -c 3000 /dev/zero | tr '\\0' x", |cfg| {
        cfg["max_result_bytes"] = json!(1_000);
    })
    .one_outcome_owned();
    assert_eq!(frame["type"], "task_failed");
    assert_eq!(frame["reason"], "result_too_large");
}

#[test]
fn run_mode_stdout_that_is_not_utf8_is_relayed_as_valid_json() {
    let frame = run_mode(NEWEST, "printf 'ok \\377\\376 end'", |_| {}).one_outcome_owned();
    assert_eq!(frame["result"]["output"], "ok \u{fffd}\u{fffd} end");
}

#[test]
fn run_mode_a_non_zero_exit_fails_the_task_with_the_status_and_stderr_on_both_hubs() {
    for version in HubVersion::ALL {
        let mut run =
            run_mode(version, "echo 'loading' >&2\necho 'Error: API key invalid' >&2\nexit 42", |_| {});
        let frame = run.one_outcome();
        assert_eq!(frame["type"], "task_failed", "{version:?}");
        let reason = frame["reason"].as_str().unwrap();
        assert!(reason.contains("exited with status 42"), "{reason}");
        assert!(reason.ends_with("last line of stderr: Error: API key invalid"), "{reason}");
    }
}

#[test]
fn run_mode_an_agent_that_never_exits_is_ended_at_the_task_timeout_sigterm_first() {
    let body = "trap 'echo term > \"$D/term\"; exit 143' TERM\nwhile :; do sleep 0.05; done";
    // The marker stays cancel_grace_ms after the task is settled.
    let mut run = run_mode(NEWEST, body, |cfg| {
        cfg["task_timeout_ms"] = json!(1_500);
        cfg["cancel_grace_ms"] = json!(10_000);
    });
    let pid = agent_pid(run.dir.path());
    let dir = run.dir.path().to_path_buf();
    let marker = run.sidecar.results_dir().join(format!("{}.cancel", run.task_id));
    let text = wait_until("the cancel marker", || fs::read_to_string(&marker).ok());
    assert_eq!(text, "task_timeout");
    let frame = run.one_outcome();
    assert_eq!(frame["reason"], "task_timeout");
    wait_dead(pid);
    assert!(dir.join("term").exists(), "it had its SIGTERM\n{}", run.sidecar.output());
}

#[test]
fn run_mode_an_agent_that_ignores_sigterm_is_killed_after_the_grace() {
    let run = run_mode(NEWEST, "trap '' TERM\nwhile :; do sleep 0.05; done", |cfg| {
        cfg["task_timeout_ms"] = json!(1_000);
    });
    let pid = agent_pid(run.dir.path());
    let task_id = run.task_id.clone();
    expect_event(&run.hub, "the task's outcome", |e| is_outcome(e, &task_id));
    wait_dead(pid);
    let warning = run.sidecar.wait_output("did not end within 500 ms of SIGTERM");
    assert!(warning.contains("killing it"), "{warning}");
}

#[test]
fn run_mode_a_cancel_mid_run_ends_the_agent_and_reports_nothing() {
    let body = "trap 'echo term > \"$D/term\"; exit 130' TERM\nwhile :; do sleep 0.05; done";
    let run = run_mode(NEWEST, body, |_| {});
    let pid = agent_pid(run.dir.path());
    expect_received(&run.hub, "task_accepted");
    assert!(run.hub.cancel_task(&run.task_id));
    wait_dead(pid);
    assert!(run.dir.path().join("term").exists(), "it had its SIGTERM\n{}", run.sidecar.output());
    wait_until("an empty queue", || run.sidecar.queue()["active"].is_null().then_some(()));
    let reported = run.hub.wait_for(Duration::from_millis(300), |e| is_outcome(e, &run.task_id));
    assert!(reported.is_none(), "nothing is reported for a cancelled task: {reported:?}");
    assert_eq!(starts(run.dir.path()), 1);
}

/// How the sidecar goes away mid-run.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Term,
    Kill9,
    RestartSidecar,
}

fn stop_mid_run(version: HubVersion, stop: Stop, finish_while_down: bool) {
    let mut run = run_mode(version, &working_until_go("output intact"), |_| {});
    let pid = agent_pid(run.dir.path());
    expect_received(&run.hub, "task_accepted");
    run.stop(stop);
    // The hub's side is closed too (a killed process's socket close is not
    // always seen at once).
    run.hub.drop_connection(AGENT);
    assert!(alive(pid), "{stop:?}: the agent outlives the sidecar\n{}", run.sidecar.output());
    let go = run.dir.path().join("go");
    if finish_while_down {
        fs::write(&go, "").unwrap();
        wait_dead(pid);
    }
    run.restart();
    if !finish_while_down {
        wait_until("the next sidecar to find the agent", || {
            run.sidecar.lifecycle().contains("\"found\":\"running\"").then_some(())
        });
        fs::write(&go, "").unwrap();
    }
    let frame = run.one_outcome();
    assert_eq!(frame["type"], "task_complete", "{stop:?}");
    assert_eq!(frame["result"]["output"], "output intact", "{stop:?}");
}

#[test]
fn run_mode_the_agent_outlives_a_sigterm_of_the_sidecar() {
    stop_mid_run(NEWEST, Stop::Term, false);
}

#[test]
fn run_mode_the_agent_outlives_a_kill_9_of_the_sidecar_on_both_hubs() {
    for version in HubVersion::ALL {
        stop_mid_run(version, Stop::Kill9, false);
    }
}

#[test]
fn run_mode_the_agent_outlives_restart_sidecar() {
    stop_mid_run(NEWEST, Stop::RestartSidecar, false);
}

#[test]
fn run_mode_an_agent_that_ends_while_no_sidecar_runs_is_reported_by_the_next() {
    stop_mid_run(NEWEST, Stop::Kill9, true);
}

#[test]
fn run_mode_the_hub_dropping_the_socket_mid_run_does_not_start_the_agent_again() {
    for version in HubVersion::ALL {
        let mut run = run_mode(version, &working_until_go("after the drop"), |_| {});
        agent_pid(run.dir.path());
        expect_received(&run.hub, "task_accepted");
        run.hub.drop_connection(AGENT);
        expect_received(&run.hub, "task_recovering");
        fs::write(run.dir.path().join("go"), "").unwrap();
        let frame = run.one_outcome();
        assert_eq!(frame["result"]["output"], "after the drop", "{version:?}");
    }
}

#[test]
fn the_run_mode_demo_relays_the_example_cli_agents_json_object() {
    let mut out = Vec::new();
    agentcom_sidecar::demo::run_demo_in(&mut out, true).expect("the demo succeeds");
    let out = String::from_utf8(out).unwrap();
    let complete = out.lines().find(|l| l.contains("\"type\":\"task_complete\"")).expect("a task_complete");
    assert!(complete.contains("\"output\":{"), "stdout kept as a JSON object: {complete}");
    assert!(complete.contains("\"result\":\"Done: Say hello to the fleet\""), "{complete}");
}

#[test]
fn the_example_cli_agent_failing_fails_the_task_with_its_stderr() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/example-cli-agent.sh");
    let body = format!("sh '{}' --fail 3 \"$AGENTCOM_TASK_DESCRIPTION\"", script.display());
    let frame = run_mode(NEWEST, &body, |_| {}).one_outcome_owned();
    assert_eq!(frame["type"], "task_failed");
    let reason = frame["reason"].as_str().unwrap();
    assert!(reason.contains("status 3") && reason.ends_with("the model is not reachable"), "{reason}");
}

/// Issue 17's seeded soak find: the launcher returned 0, the sidecar was
/// killed before it handled that (the task still `waking` in queue.json),
/// and the restarted sidecar woke the agent a second time while the first
/// was about to confirm. The exit file the gate wrote says it succeeded: the
/// next sidecar waits for `.started` instead.
#[test]
fn a_launcher_that_exited_0_just_before_a_kill_is_not_started_again() {
    let hub = no_retry_hub(NEWEST);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    // Starts the agent in the background and returns; the agent confirms
    // and finishes once the test creates `go`.
    cfg["wake_command"] = json!(agent(
        dir.path(),
        "r=\"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID\"\n\
         (while [ ! -e \"$D/go\" ]; do sleep 0.05; done; : > \"$r.started\"; \
          printf '{\"status\":\"success\",\"output\":\"once\"}' > \"$r.json.tmp\"; mv \"$r.json.tmp\" \"$r.json\") \
          </dev/null >/dev/null 2>&1 &"
    ));
    let mut sidecar =
        Sidecar::start_with_env(dir.path(), &cfg, &[("AGENTCOM_FAILPOINT", "before_wake_outcome")]);
    expect_identified(&hub);
    let task_id = hub.push_task(AGENT, "d", json!({}));
    sidecar.wait_exit(FAILSAFE).expect("the sidecar dies at the failpoint");
    hub.drop_connection(AGENT);
    assert_eq!(sidecar.queue()["active"]["status"], "waking", "killed before it handled the launcher's exit");
    let mut run = Run { hub, dir, cfg, sidecar, task_id };
    run.restart();
    wait_until("the next start to wait for confirmation", || {
        (run.sidecar.queue()["active"]["status"] == "waking_confirmation").then_some(())
    });
    fs::write(run.dir.path().join("go"), "").unwrap();
    let frame = run.one_outcome();
    assert_eq!(frame["result"]["output"], "once");
}

/// A synchronous script at work on its confirmed task when the sidecar goes
/// away: left to finish (a launcher is still ended), found by the next start,
/// its result reported once, never started again.
/// `after_go` runs once the test lets the script finish, before it writes
/// its result.
fn synchronous_script_across_a_stop(stop: Stop, after_go: &str) {
    synchronous_script_across_a_stop_then(stop, after_go, |_| {});
}

/// `then` runs after the test has let the script finish, before the outcome.
fn synchronous_script_across_a_stop_then(stop: Stop, after_go: &str, then: impl FnOnce(&Run)) {
    let hub = no_retry_hub(NEWEST);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    cfg["wake_command"] = json!(agent(
        dir.path(),
        &format!(
            "r=\"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID\"\n: > \"$r.started\"\necho 'at work'; echo 'working' >&2\n\
             while [ ! -e \"$D/go\" ]; do sleep 0.05; done\n{after_go}\n\
             printf '{{\"status\":\"success\",\"output\":\"finished\"}}' > \"$r.json.tmp\"; mv \"$r.json.tmp\" \"$r.json\""
        )
    ));
    let sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let task_id = hub.push_task(AGENT, "d", json!({}));
    let mut run = Run { hub, dir, cfg, sidecar, task_id };
    let pid = agent_pid(run.dir.path());
    wait_until("the task working", || (run.sidecar.queue()["active"]["status"] == "working").then_some(()));
    run.stop(stop);
    run.hub.drop_connection(AGENT);
    assert!(alive(pid), "{stop:?}: the script at work outlives the sidecar\n{}", run.sidecar.output());
    run.restart();
    wait_until("the next sidecar to find the script", || {
        run.sidecar.lifecycle().contains("\"found\":\"running\"").then_some(())
    });
    fs::write(run.dir.path().join("go"), "").unwrap();
    then(&run);
    let frame = run.one_outcome();
    assert_eq!(frame["result"]["output"], "finished", "{stop:?}");
}

#[test]
fn a_synchronous_script_outlives_a_sigterm_of_the_sidecar() {
    synchronous_script_across_a_stop(Stop::Term, "");
}

#[test]
fn a_synchronous_script_outlives_a_kill_9_of_the_sidecar() {
    synchronous_script_across_a_stop(Stop::Kill9, "");
}

/// Its stdout and stderr are files under the results directory, not pipes
/// to the sidecar that is gone: writing to them after a kill -9 (or a
/// SIGTERM) and a restart neither kills it (SIGPIPE) nor fails (EPIPE, with
/// `set -e`).
/// What it writes after the restart is kept bounded by the sidecar that
/// found it (1 MiB, cut to its last 4 KiB behind a note).
#[test]
fn the_output_of_a_synchronous_script_found_after_a_kill_9_is_kept_bounded() {
    synchronous_script_across_a_stop_then(
        Stop::Kill9,
        "head -c 3145728 /dev/zero; echo last\nwhile [ ! -e \"$D/go2\" ]; do sleep 0.05; done",
        |run| {
            let stdout = run.dir.path().join("results/.tasks").join(format!("{}.stdout", run.task_id));
            wait_until("the script's stdout cut to its tail", || {
                let text = fs::read(&stdout).ok()?;
                (text.starts_with(b"[agentcom-sidecar: ") && text.ends_with(b"last\n") && text.len() < 8192)
                    .then_some(())
            });
            fs::write(run.dir.path().join("go2"), "").unwrap();
        },
    );
}

#[test]
fn a_synchronous_script_writes_to_stdout_and_stderr_after_a_kill_9_and_completes() {
    for stop in [Stop::Kill9, Stop::Term] {
        synchronous_script_across_a_stop(
            stop,
            "set -e\ni=0\nwhile [ $i -lt 100 ]; do echo \"out $i\"; echo \"err $i\" >&2; i=$((i + 1)); done",
        );
    }
}
