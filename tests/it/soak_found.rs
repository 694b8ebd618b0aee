//! Defects the chaos soak (tests/soak) found, each as a minimal test. They
//! failed on the sidecar the soak first ran against, and pass since their fixes.

use std::fs;
use std::time::Duration;

use agentcom_sidecar::devhub::{DevHub, DevHubEvent, DevHubOptions};
use serde_json::json;

use crate::support::*;

/// True while `pid` is a live (not zombie) process.
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

/// Kills a process group when the test ends, passed or not.
struct KillGroup(i32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        // SAFETY: a signal to a process group this test started.
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
}

/// Soak seed 101, lifecycle 7 (and 32 more in 900 lifecycles): the sidecar is
/// SIGKILLed while its wake command runs; the wake command (its own process
/// group) survives, and the restarted sidecar wakes the agent again while it
/// still runs: two wake commands at once, and an orphan.
#[test]
fn the_wake_command_of_a_killed_sidecar_is_gone_before_the_next_wake() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    let pids = dir.path().join("wake-pids.txt");
    // Each wake records its pid (= its process group) and hangs.
    cfg["wake_command"] = json!(format!("echo $$ >> '{}'; exec sleep 60", pids.display()));
    cfg["wake_timeout_ms"] = json!(60_000);
    let mut sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    hub.push_task(AGENT, "hang", json!({}));
    let first: i32 =
        wait_until("the first wake", || fs::read_to_string(&pids).ok()?.lines().next()?.trim().parse().ok());
    let _cleanup = KillGroup(first);
    // The sidecar records the command in queue.json as soon as it has
    // started (a kill before that is the one gap left: docs/protocol.md 9).
    wait_until_recorded(dir.path());
    sidecar.kill9();
    let _sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    wait_until("the killed sidecar's wake command to be gone", || (!alive(first)).then_some(()));
    let wakes = fs::read_to_string(&pids).unwrap_or_default();
    let _more: Vec<KillGroup> =
        wakes.lines().skip(1).filter_map(|l| l.trim().parse().ok()).map(KillGroup).collect();
}

/// Soak seed 202, lifecycle 56 (and seed 1, lifecycle 6; 14 lost tasks in 900
/// lifecycles): after a restart the sidecar sends `task_recovering` and, for
/// the re-push the hub sends on identify, `task_accepted`. The hub
/// rate-limits `task_recovering`; the sidecar pins the `rate_limited` on the
/// last frame it sent (`Link::on_rate_limited`, src/state/link.rs), resends
/// `task_accepted`, and waits for the answer to `task_recovering` forever: the
/// agent's result is never reported, and every later task is refused as busy.
#[test]
fn a_rate_limited_task_recovering_is_resent_and_the_result_reported() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    cfg["wake_command"] = json!(": > \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.started\"");
    let mut sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let task_id = hub.push_task(AGENT, "t", json!({}));
    expect_received(&hub, "task_accepted");
    let started = sidecar.results_dir().join(format!("{task_id}.started"));
    wait_until("the agent to confirm", || started.exists().then_some(()));
    sidecar.kill9();
    // The agent finishes while the sidecar is down.
    let result = sidecar.results_dir().join(format!("{task_id}.json"));
    fs::write(result, r#"{"status":"success","output":"done"}"#).unwrap();
    hub.rate_limit_next("task_recovering", 200);
    let _sidecar = Sidecar::start(dir.path(), &cfg);
    let complete = expect_received(&hub, "task_complete");
    assert_eq!(complete["task_id"], task_id.as_str());
}

/// Soak seed 101, lifecycle 66: the hub rate-limits `task_accepted`; before
/// its resend is due the wake fails for good and the sidecar reports
/// `task_failed`; then it resends the stale `task_accepted`. On 4718a58 that
/// moves the agent's state machine to `working` for a task nobody works on:
/// no more pushes until the stuck sweep (10-20 min).
#[test]
fn a_rate_limited_task_accepted_is_not_resent_after_its_task_settled() {
    let mut options = DevHubOptions::new(AGENT, TOKEN);
    // The first failure dead-letters the task: it never comes back.
    options.max_retries = 1;
    let hub = DevHub::start(options).expect("dev hub starts");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    cfg["wake_command"] = json!("exit 3");
    cfg["wake_retry_delays_ms"] = json!([20]);
    let _sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    hub.rate_limit_next("task_accepted", 1_500);
    hub.push_task(AGENT, "t", json!({}));
    expect_received(&hub, "task_failed");
    let late = hub.wait_for(
        Duration::from_secs(3),
        |event| matches!(event, DevHubEvent::Received { frame, .. } if frame["type"] == "task_accepted"),
    );
    assert!(late.is_none(), "task_accepted resent after the task was settled: {late:?}");
}
