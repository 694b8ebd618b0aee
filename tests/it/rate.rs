//! Within the newest hub's rate budget (docs/protocol.md 7.2): the real
//! sidecar against the dev hub's 4718a58 profile, which meters every frame
//! as that hub does; agents that finish at once. A busy agent is paced,
//! never denied, and never locked out.

use std::collections::HashMap;
use std::time::Duration;

use agentcom_sidecar::devhub::{Bucket, DevHub, DevHubEvent, DevHubOptions};
use serde_json::{json, Value};

use crate::support::*;

/// With the hub's real limits (60 normal tokens, one a second) the test
/// takes about half a minute of real time: this bounds a broken build.
const BUDGET_FAILSAFE: Duration = Duration::from_secs(180);

/// An agent that confirms and writes its result at once (temp file, rename).
fn quick_agent() -> String {
    concat!(
        r#"d="$AGENTCOM_RESULTS_DIR"; t="$AGENTCOM_TASK_ID"; : > "$d/$t.started"; "#,
        r#"echo '{"status":"success","output":"done"}' > "$d/.$t.tmp" && mv "$d/.$t.tmp" "$d/$t.json""#
    )
    .to_string()
}

/// The 4718a58 profile with its limits divided by `scale` in time: `scale`
/// 1 is the real hub (normal: 60, one a second).
fn hub(scale: u32) -> DevHub {
    let mut options = DevHubOptions::new(AGENT, TOKEN);
    let limits = &mut options.limits;
    limits.light = Bucket { capacity: 120, refill_every: Duration::from_millis(500) / scale };
    limits.normal = Bucket { capacity: 60, refill_every: Duration::from_millis(1_000) / scale };
    limits.heavy = Bucket { capacity: 10, refill_every: Duration::from_millis(6_000) / scale };
    limits.rate_limited_for = Duration::from_secs(60) / scale;
    DevHub::start(options).expect("dev hub starts")
}

fn sidecar_config(dir: &std::path::Path, hub: &DevHub, scale: u32, features: bool) -> Value {
    let mut cfg = config(dir, &hub.url());
    cfg["wake_command"] = json!(quick_agent());
    cfg["rate_limit_window_ms"] = json!(60_000 / scale);
    if features {
        cfg["hub_features"] = json!(["wake_result", "state_report"]);
    }
    cfg
}

/// What the hub saw, per task and in all.
#[derive(Default, Debug)]
struct Seen {
    denials: usize,
    /// Task ids in the order their `task_complete` reached the hub.
    completes: Vec<String>,
    /// Task ids in the order the hub acknowledged their completion.
    settled: Vec<String>,
    frames: usize,
}

impl Seen {
    fn note(&mut self, event: &DevHubEvent) {
        match event {
            DevHubEvent::Received { frame, .. } => {
                check_sidecar_frame(frame);
                self.frames += 1;
                if frame["type"] == "task_complete" {
                    self.completes.push(frame["task_id"].as_str().unwrap_or_default().to_string());
                }
            }
            DevHubEvent::Sent { frame, .. } if frame["type"] == "rate_limited" => self.denials += 1,
            DevHubEvent::Sent { frame, .. }
                if frame["type"] == "task_ack" && frame["status"] == "complete" =>
            {
                self.settled.push(frame["task_id"].as_str().unwrap_or_default().to_string());
            }
            _ => {}
        }
    }

    /// Waits until `count` tasks are settled, noting every event.
    fn until_settled(&mut self, hub: &DevHub, count: usize) {
        if self.settled.len() >= count {
            return;
        }
        hub.wait_for(BUDGET_FAILSAFE, |event| {
            self.note(event);
            self.settled.len() >= count
        })
        .unwrap_or_else(|| panic!("only {} of {count} tasks completed: {self:?}", self.settled.len()));
    }
}

/// A sidecar identified to a metered dev hub, and what the hub has seen.
struct Run {
    seen: Seen,
    sidecar: Sidecar,
    hub: DevHub,
    _dir: tempfile::TempDir,
}

impl Run {
    fn start(scale: u32, features: bool) -> Run {
        let hub = hub(scale);
        let dir = tempfile::tempdir().unwrap();
        let sidecar = Sidecar::start(dir.path(), &sidecar_config(dir.path(), &hub, scale, features));
        let mut seen = Seen::default();
        hub.wait_for(FAILSAFE, |event| {
            seen.note(event);
            matches!(event, DevHubEvent::Identified { .. })
        })
        .expect("identified");
        Run { seen, sidecar, hub, _dir: dir }
    }

    /// Pushes `count` tasks one after another, each once the one before it
    /// is settled, and returns their ids.
    fn one_after_another(&mut self, label: &str, count: usize) -> Vec<String> {
        let before = self.seen.settled.len();
        (0..count)
            .map(|i| {
                let task_id = self.hub.push_task(AGENT, &format!("{label} {i}"), json!({}));
                self.seen.until_settled(&self.hub, before + i + 1);
                task_id
            })
            .collect()
    }

    /// Pushes `count` tasks at once and returns their ids.
    fn at_once(&mut self, label: &str, count: usize) -> Vec<String> {
        (0..count).map(|i| self.hub.push_task(AGENT, &format!("{label} {i}"), json!({}))).collect()
    }
}

/// 20 quick tasks one after another, then a burst of 10: all complete, in
/// order, each once, and the hub never denies a frame.
fn twenty_then_a_burst_of_ten(scale: u32, features: bool) -> Run {
    let mut run = Run::start(scale, features);
    let mut order = run.one_after_another("quick", 20);
    order.extend(run.at_once("burst", 10));
    run.seen.until_settled(&run.hub, 30);
    assert_eq!(run.seen.denials, 0, "the hub denied a frame: {}", run.sidecar.output());
    assert_eq!(run.seen.settled, order, "every task settled once, in order");
    assert_eq!(run.seen.completes, order, "every outcome sent once, in order");
    run
}

#[test]
fn twenty_quick_tasks_then_a_burst_of_ten_complete_within_the_hubs_real_budget() {
    let run = twenty_then_a_burst_of_ten(1, true);
    // The budget ran dry: the sidecar paced itself instead of being denied.
    assert!(run.seen.frames > 60, "{} frames did not need pacing", run.seen.frames);
    assert!(!run.sidecar.output().contains("hub rate-limited"), "{}", run.sidecar.output());
}

#[test]
fn a_hub_that_shows_it_rate_limits_only_by_its_task_assign_is_paced_too() {
    // No hub_features: the first push's extra keys say it is 4718a58. The
    // hub's limits run ten times faster here, and the sidecar's with them.
    let run = twenty_then_a_burst_of_ten(10, false);
    assert!(run.seen.frames > 60, "{} frames did not need pacing", run.seen.frames);
}

#[test]
fn a_hub_that_denies_anyway_while_outcomes_wait_gets_each_once_in_order() {
    let scale = 10;
    let mut run = Run::start(scale, true);
    // Spend the budget, so that outcomes wait for tokens...
    let mut order = run.one_after_another("spend", 25);
    // ...then the hub denies frames the sidecar could not know about: an
    // outcome and, in the same episode, an acceptance.
    run.hub.rate_limit_next("task_complete", 1_000 / u64::from(scale));
    run.hub.rate_limit_next("task_accepted", 1_000 / u64::from(scale));
    order.extend(run.at_once("denied", 6));
    run.seen.until_settled(&run.hub, order.len());
    assert_eq!(run.seen.denials, 2, "only the two asked for");
    assert_eq!(run.seen.settled, order, "every task settled once, in order");
    // One warning line when an episode starts and one with its counts when
    // it is over, never one per frame: both denials are in them.
    let output = run.sidecar.wait_output("hub rate limit episode over");
    let warned = |needle: &str| -> Vec<&str> {
        output.lines().filter(|l| l.contains("[WARN]") && l.contains(needle)).collect()
    };
    let started = warned("hub rate-limited a normal frame");
    let over = warned("hub rate limit episode over");
    assert!(!started.is_empty() && started.len() <= 2, "{output}");
    let denials: u32 =
        over.iter().filter_map(|l| l.split(": ").nth(1)?.split(' ').next()?.parse::<u32>().ok()).sum();
    let denials = if over.len() < started.len() { denials + 1 } else { denials };
    assert_eq!(denials, 2, "{over:?}");
}

#[test]
fn a_reconnect_while_frames_wait_for_tokens_loses_nothing_and_sends_nothing_twice() {
    let mut run = Run::start(10, true);
    let mut order = run.one_after_another("spend", 20);
    order.extend(run.at_once("burst", 10));
    // A few of the burst are through: now frames wait for tokens.
    run.seen.until_settled(&run.hub, 23);
    run.hub.drop_connection(AGENT);
    run.seen.until_settled(&run.hub, order.len());
    assert_eq!(run.seen.denials, 0, "{}", run.sidecar.output());
    assert_eq!(run.seen.settled, order, "every task settled once, in order");
    let seen = run.seen;
    // What waited for a token when the connection dropped was not sent
    // twice: only a report in flight at that moment (sent, its answer lost
    // with the connection) may reach the hub again, asked about first.
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for task_id in &seen.completes {
        *counts.entry(task_id).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.len() <= 1 && twice.iter().all(|(_, n)| **n == 2), "sent twice: {twice:?}");
}

#[test]
fn a_hundred_tasks_queued_at_once_complete_in_order_without_a_denial() {
    let mut run = Run::start(10, true);
    let order = run.at_once("queued", 100);
    run.seen.until_settled(&run.hub, 100);
    assert_eq!(run.seen.denials, 0, "{}", run.sidecar.output());
    assert_eq!(run.seen.settled, order);
}
