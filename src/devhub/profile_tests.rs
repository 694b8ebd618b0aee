//! Unit tests of the two hub profiles on the pure hub state, with injected
//! time: what cbf9c20 and 4718a58 each do to a sidecar.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::state::{AgentPhase, HubState, Reply};
use super::state_tests::{accept, identify, pushed, reply_frames, send, types, Conn, AGENT};
use super::{Bucket, DevHubOptions, HubLimits, HubVersion, TaskStatus};

fn hub(version: HubVersion, tune: impl FnOnce(&mut DevHubOptions)) -> HubState {
    let (events, _) = crossbeam_channel::unbounded();
    let mut options = DevHubOptions::for_version(AGENT, super::state_tests::TOKEN, version);
    options.accept_timeout = Duration::from_secs(10);
    tune(&mut options);
    HubState::new(&options, events)
}

/// The frames and the close of a reply, as short text.
fn replies_text(replies: Vec<Reply>) -> Vec<String> {
    replies
        .into_iter()
        .filter_map(|reply| match reply {
            Reply::Frame(frame) => Some(frame["type"].as_str().unwrap_or("?").to_string()),
            Reply::Close { code, reason } => Some(format!("close {code} {reason}")),
            Reply::Emit(_) => None,
        })
        .collect()
}

fn rejected(task_id: &str) -> Value {
    json!({"type": "task_rejected", "task_id": task_id, "reason": "busy"})
}

/// Identifies, pushes one task and returns it accepted (agent working).
fn working(state: &mut HubState, now: Instant) -> Conn {
    let (conn, _) = identify(state, now);
    state.create_task("task-1", AGENT, "d", json!({}));
    state.schedule(now, None);
    assert_eq!(pushed(&conn), ["task_assign gen=1"]);
    accept(state, &conn, "task-1", now);
    conn
}

#[test]
fn the_new_hub_refuses_frames_outside_its_schema_and_counts_them() {
    let mut state = hub(HubVersion::V4718a58, |_| {});
    let now = Instant::now();
    let conn = working(&mut state, now);
    let reply = send(&mut state, &conn, rejected("task-2"), now);
    assert_eq!(reply.len(), 1);
    assert_eq!(reply[0]["error"], "validation_failed");
    assert_eq!(reply[0]["message_type"], "task_rejected");
    assert_eq!(reply[0]["errors"][0]["error"], "unknown_message_type");
    assert!(reply[0]["errors"][0]["known_types"].as_array().is_some_and(|known| known.len() == 19));
    let long =
        json!({"type": "task_failed", "task_id": "task-1", "generation": 1, "reason": "x".repeat(3000)});
    let reply = send(&mut state, &conn, long, now);
    assert_eq!(
        (reply[0]["message_type"].as_str(), reply[0]["errors"][0]["field"].as_str()),
        (Some("task_failed"), Some("reason"))
    );
    assert_eq!(state.tasks["task-1"].status, TaskStatus::Assigned, "a refused report changes nothing");
    assert_eq!(state.violations_total[AGENT], 2);
    assert_eq!(state.agent_snapshot(AGENT, now).map(|agent| agent.violations), Some(2));
}

#[test]
fn the_old_hub_answers_what_it_does_not_know_with_unknown_message_type() {
    let mut state = hub(HubVersion::Cbf9c20, |_| {});
    let now = Instant::now();
    let conn = working(&mut state, now);
    for frame in [
        rejected("task-2"),
        json!({"type": "wake_result", "task_id": "task-1", "status": "success"}),
        json!({"type": "state_report", "task_id": "task-1", "generation": 1}),
    ] {
        assert_eq!(
            send(&mut state, &conn, frame, now),
            [json!({"type": "error", "error": "unknown_message_type"})]
        );
    }
    // No schema: a long reason is recorded as sent... by a crash (below).
    assert!(state.violations_total.is_empty());
}

#[test]
fn ten_violations_in_a_window_close_with_1008_and_a_growing_cooldown() {
    let limits = HubLimits { violation_window: Duration::from_secs(60), ..HubLimits::default() };
    let mut state = hub(HubVersion::V4718a58, |options| options.limits = limits);
    let t0 = Instant::now();
    let (conn, _) = identify(&mut state, t0);
    for i in 1..10 {
        let replies = state.handle_frame(conn.id, &rejected("t"), t0 + Duration::from_secs(i));
        assert_eq!(replies_text(replies), ["error"], "violation {i}");
    }
    let tenth = state.handle_frame(conn.id, &rejected("t"), t0 + Duration::from_secs(10));
    assert_eq!(replies_text(tenth), ["close 1008 too many validation errors"]);
    state.disconnect(conn.id, t0 + Duration::from_secs(10));
    // identify during the cooldown: closed, not counted again.
    let closed_at = t0 + Duration::from_secs(10);
    let (outbox_tx, _outbox) = crossbeam_channel::unbounded();
    let retry = state.register_conn(outbox_tx);
    let identify_frame = json!({"type": "identify", "agent_id": AGENT, "token": super::state_tests::TOKEN});
    let refused = state.handle_frame(retry, &identify_frame, closed_at + Duration::from_millis(3500));
    assert_eq!(replies_text(refused), ["close 1008 cooldown active: retry in 27s"]);
    let accepted = state.handle_frame(retry, &identify_frame, closed_at + Duration::from_secs(30));
    assert_eq!(types(&reply_frames(accepted)), ["identified"]);
    // The second close costs 60 s; the count never decays.
    for i in 0..10 {
        state.handle_frame(retry, &rejected("t"), closed_at + Duration::from_secs(31 + i));
    }
    assert_eq!(state.backoffs[AGENT].closes, 2);
    let second_close = closed_at + Duration::from_secs(40);
    let (outbox_tx, _outbox) = crossbeam_channel::unbounded();
    let again = state.register_conn(outbox_tx);
    let refused = state.handle_frame(again, &identify_frame, second_close + Duration::from_millis(59_500));
    assert_eq!(replies_text(refused), ["close 1008 cooldown active: retry in 1s"]);
}

#[test]
fn the_new_hub_rate_limits_per_agent_and_skips_a_limited_agent() {
    let limits = HubLimits {
        normal: Bucket { capacity: 5, refill_every: Duration::from_secs(1) },
        rate_limited_for: Duration::from_secs(3),
        ..HubLimits::default()
    };
    let mut state = hub(HubVersion::V4718a58, |options| options.limits = limits);
    let t0 = Instant::now();
    let conn = working(&mut state, t0); // task_accepted took 1 of 5
    let progress = json!({"type": "task_progress", "task_id": "task-1", "progress": 1});
    let answers: Vec<Vec<String>> =
        (0..5).map(|_| replies_text(state.handle_frame(conn.id, &progress, t0))).collect();
    // 3, 2, 1 left: fine; 0 left is under 20 %: a warning; then denied, not handled.
    let warn = vec!["rate_limit_warning".to_string()];
    assert_eq!(answers, [vec![], vec![], vec![], warn, vec!["rate_limited".to_string()]]);
    assert_eq!(state.tasks["task-1"].progress.len(), 4);
    let complete = json!({"type": "task_complete", "task_id": "task-1", "generation": 1});
    let denied = send(&mut state, &conn, complete.clone(), t0);
    assert_eq!(denied, [json!({"type": "rate_limited", "retry_after_ms": 1000, "tier": "normal"})]);
    assert_eq!(state.tasks["task-1"].status, TaskStatus::Assigned, "a denied frame is dropped");
    // Pings have their own bucket.
    assert_eq!(types(&send(&mut state, &conn, json!({"type": "ping"}), t0)), ["pong"]);
    // A token later the report goes through, but the agent is skipped by the
    // scheduler until 3 s after the first denial.
    state.create_task("task-2", AGENT, "d", json!({}));
    let later = t0 + Duration::from_secs(1);
    assert_eq!(types(&send(&mut state, &conn, complete, later)), ["rate_limit_warning", "task_ack"]);
    assert!(pushed(&conn).is_empty(), "skipped while rate limited");
    assert_eq!(state.agent_snapshot(AGENT, later).map(|agent| agent.rate_limited), Some(true));
    state.sweep(t0 + Duration::from_secs(3));
    assert_eq!(pushed(&conn), ["task_assign gen=1"]);
    // The bucket belongs to the agent: a reconnect does not refill it (two
    // tokens came back at t0+2 s and t0+3 s, not five).
    let t3 = t0 + Duration::from_secs(3);
    state.disconnect(conn.id, t3);
    let (conn, _) = identify(&mut state, t3);
    pushed(&conn);
    let accepted = json!({"type": "task_accepted", "task_id": "task-2"});
    let answers: Vec<Vec<String>> =
        (0..3).map(|_| replies_text(state.handle_frame(conn.id, &accepted, t3))).collect();
    assert_eq!(answers, [vec!["task_ack"], vec!["rate_limit_warning", "task_ack"], vec!["rate_limited"]]);
}

#[test]
fn the_old_hub_never_rate_limits() {
    let limits = HubLimits {
        normal: Bucket { capacity: 1, refill_every: Duration::from_secs(60) },
        ..HubLimits::default()
    };
    let mut state = hub(HubVersion::Cbf9c20, |options| options.limits = limits);
    let now = Instant::now();
    let conn = working(&mut state, now);
    for _ in 0..5 {
        assert_eq!(
            types(&send(&mut state, &conn, json!({"type": "task_accepted", "task_id": "task-1"}), now)),
            ["task_ack"]
        );
    }
}

#[test]
fn state_report_ack_continues_only_the_reported_generation_of_this_agent() {
    let mut state = hub(HubVersion::V4718a58, |_| {});
    let now = Instant::now();
    let conn = working(&mut state, now);
    let report = |generation: Value| json!({"type": "state_report", "task_id": "task-1", "generation": generation, "status": "working"});
    let action = |state: &mut HubState, frame: Value| send(state, &conn, frame, now)[0]["action"].clone();
    assert_eq!(action(&mut state, report(json!(1))), "continue");
    assert_eq!(action(&mut state, report(json!(3))), "abort");
    assert_eq!(
        action(&mut state, json!({"type": "state_report", "task_id": "task-1"})),
        "abort",
        "missing is 0"
    );
    assert_eq!(action(&mut state, json!({"type": "state_report", "task_id": "task-9"})), "abort");
    state.seed("task-1", 1, "someone-else");
    assert_eq!(action(&mut state, report(json!(1))), "abort", "another agent's");
    // wake_result gets no answer.
    assert!(send(
        &mut state,
        &conn,
        json!({"type": "wake_result", "task_id": "task-1", "status": "success"}),
        now
    )
    .is_empty());
}

#[test]
fn the_old_hub_crashes_on_task_failed_at_the_current_generation_only() {
    let mut state = hub(HubVersion::Cbf9c20, |_| {});
    let now = Instant::now();
    let conn = working(&mut state, now);
    let failed = |generation: u64| json!({"type": "task_failed", "task_id": "task-1", "generation": generation, "reason": "x".repeat(3000)});
    let stale = state.handle_frame(conn.id, &failed(9), now);
    assert_eq!(
        reply_frames(stale),
        [json!({"type": "error", "error": "task_fail_failed: stale_generation"})]
    );
    let crash = state.handle_frame(conn.id, &failed(1), now);
    assert_eq!(replies_text(crash), ["close 1011 internal error"]);
    state.disconnect(conn.id, now);
    let task = &state.tasks["task-1"];
    assert_eq!(
        (task.status, task.generation, task.n_failures),
        (TaskStatus::Queued, 2, 0),
        "nothing recorded"
    );
    let (conn, _) = identify(&mut state, now);
    assert_eq!(pushed(&conn), ["task_assign gen=3"]);
    // 4718a58 records the failure and retries.
    let mut new = hub(HubVersion::V4718a58, |_| {});
    let conn = working(&mut new, now);
    let short = json!({"type": "task_failed", "task_id": "task-1", "generation": 1, "reason": "no"});
    assert_eq!(send(&mut new, &conn, short, now)[0]["status"], "retried");
}

#[test]
fn the_second_push_race_leaves_a_task_assigned_behind_the_current_one() {
    let limits = HubLimits { stuck_after: Some(Duration::from_secs(5)), ..HubLimits::default() };
    let mut state = hub(HubVersion::Cbf9c20, |options| {
        options.second_push_races = 1;
        options.limits = limits;
    });
    let t0 = Instant::now();
    let (conn, _) = identify(&mut state, t0);
    for task_id in ["task-1", "task-2", "task-3"] {
        state.create_task(task_id, AGENT, "d", json!({}));
    }
    state.schedule(t0, None);
    assert_eq!(pushed(&conn), ["task_assign gen=1", "task_assign gen=1"], "one race only");
    assert_eq!(state.agents[AGENT].current_task.as_deref(), Some("task-1"));
    assert_eq!(state.tasks["task-2"].assigned_to.as_deref(), Some(AGENT));
    accept(&mut state, &conn, "task-1", t0);
    // A socket drop takes back the current task only.
    state.disconnect(conn.id, t0);
    assert_eq!(state.tasks["task-1"].status, TaskStatus::Queued);
    assert_eq!(state.tasks["task-2"].status, TaskStatus::Assigned);
    // The new state machine starts assigned with task-2, without a push.
    let (conn, _) = identify(&mut state, t0);
    assert!(pushed(&conn).is_empty());
    assert_eq!(state.agents[AGENT].current_task.as_deref(), Some("task-2"));
    // The stuck sweep takes task-2 back; the window closes later.
    state.sweep(t0 + Duration::from_secs(5));
    assert_eq!(state.tasks["task-2"].status, TaskStatus::Queued);
    assert_eq!(state.tasks["task-2"].generation, 2);
    state.sweep(t0 + Duration::from_secs(10));
    assert_eq!(pushed(&conn), ["task_assign gen=3"], "task-1 comes back first");
}

#[test]
fn task_assign_carries_each_versions_keys_and_any_extra() {
    for (version, keys) in [(HubVersion::Cbf9c20, 6), (HubVersion::V4718a58, 16)] {
        let mut state = hub(version, |_| {});
        let now = Instant::now();
        let (conn, _) = identify(&mut state, now);
        state.create_task("task-1", AGENT, "d", json!({"m": 1}));
        state.set_extra("task-1", json!({"future_field": [1, 2], "repo": "git@example:r.git"}));
        state.schedule(now, None);
        let frame = match conn.outbox.try_recv() {
            Ok(super::state::Outgoing::Frame(frame)) => frame,
            _ => panic!("a push"),
        };
        let object = frame.as_object().expect("an object");
        // `repo` is one of 4718a58's own keys: the extra value replaces it.
        let extra_keys = if version == HubVersion::V4718a58 { 1 } else { 2 };
        assert_eq!(object.len(), keys + extra_keys, "{version}: {frame}");
        assert_eq!(frame["future_field"], json!([1, 2]));
        assert_eq!(frame["repo"], "git@example:r.git");
        if version == HubVersion::V4718a58 {
            assert_eq!(frame["skip_verification"], false);
            assert_eq!(frame["max_verification_retries"], 0);
        }
    }
}

#[test]
fn a_cancel_deletes_the_task_and_idles_its_agent() {
    let mut state = hub(HubVersion::V4718a58, |_| {});
    let now = Instant::now();
    let conn = working(&mut state, now);
    assert!(state.cancel("task-1", now));
    let frames: Vec<String> = pushed(&conn);
    assert_eq!(frames, ["task_cancelled"]);
    assert_eq!(state.agents[AGENT].phase, AgentPhase::Idle);
    let complete = json!({"type": "task_complete", "task_id": "task-1", "generation": 1});
    assert_eq!(
        send(&mut state, &conn, complete, now),
        [json!({"type": "error", "error": "task_complete_failed: not_found"})]
    );
    assert!(!state.cancel("task-1", now));
}

#[test]
fn a_late_join_push_follows_the_answer_to_the_first_frame_after_identify() {
    let mut state = hub(HubVersion::V4718a58, |options| options.late_join_push = true);
    let now = Instant::now();
    let conn = working(&mut state, now);
    state.disconnect(conn.id, now);
    assert_eq!(state.tasks["task-1"].generation, 2);
    let (conn, _) = identify(&mut state, now);
    assert!(pushed(&conn).is_empty(), "no push right after identified");
    let recovering = json!({"type": "task_recovering", "task_id": "task-1"});
    let reply = send(&mut state, &conn, recovering, now);
    assert_eq!(reply, [json!({"type": "task_reassign", "task_id": "task-1"})]);
    assert_eq!(pushed(&conn), ["task_assign gen=3"], "then the re-push");
    // With nothing sent after identify, the push comes 100 ms later.
    state.disconnect(conn.id, now);
    let (conn, _) = identify(&mut state, now);
    state.sweep(now + Duration::from_millis(99));
    assert!(pushed(&conn).is_empty());
    state.sweep(now + Duration::from_millis(100));
    assert_eq!(pushed(&conn), ["task_assign gen=5"]);
}
