//! Unit tests of the hub's state and its answers, with no socket: a
//! connection is an outbox channel, frames are handed to `handle_frame`, and
//! time is passed in.

use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use serde_json::{json, Value};

use super::state::{AgentPhase, HubState, Outgoing, Reply};
use super::{DevHubEvent, DevHubOptions, OutcomeKind, TaskStatus};

pub(super) const AGENT: &str = "a1";
pub(super) const TOKEN: &str = "t1";

pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) outbox: Receiver<Outgoing>,
}

pub(super) fn hub() -> (HubState, Receiver<DevHubEvent>) {
    let (events, events_rx) = crossbeam_channel::unbounded();
    let mut options = DevHubOptions::new(AGENT, TOKEN);
    options.accept_timeout = Duration::from_secs(10);
    (HubState::new(&options, events), events_rx)
}

/// Opens a connection and identifies it; returns it with the replies' frames.
pub(super) fn identify(state: &mut HubState, now: Instant) -> (Conn, Vec<Value>) {
    let (outbox_tx, outbox) = crossbeam_channel::unbounded();
    let id = state.register_conn(outbox_tx);
    let replies =
        state.handle_frame(id, &json!({"type": "identify", "agent_id": AGENT, "token": TOKEN}), now);
    (Conn { id, outbox }, reply_frames(replies))
}

pub(super) fn reply_frames(replies: Vec<Reply>) -> Vec<Value> {
    replies
        .into_iter()
        .filter_map(|reply| match reply {
            Reply::Frame(frame) => Some(frame),
            _ => None,
        })
        .collect()
}

/// The frames pushed to `conn` so far, as `type gen=N` words.
pub(super) fn pushed(conn: &Conn) -> Vec<String> {
    conn.outbox
        .try_iter()
        .map(|outgoing| match outgoing {
            Outgoing::Frame(frame) => match frame.get("generation") {
                Some(generation) => format!("{} gen={generation}", frame["type"].as_str().unwrap_or("?")),
                None => frame["type"].as_str().unwrap_or("?").to_string(),
            },
            Outgoing::Close { code, .. } => format!("close {code}"),
        })
        .collect()
}

pub(super) fn types(frames: &[Value]) -> Vec<&str> {
    frames.iter().map(|frame| frame["type"].as_str().unwrap_or("?")).collect()
}

pub(super) fn send(state: &mut HubState, conn: &Conn, frame: Value, now: Instant) -> Vec<Value> {
    reply_frames(state.handle_frame(conn.id, &frame, now))
}

pub(super) fn accept(state: &mut HubState, conn: &Conn, task_id: &str, now: Instant) {
    let ack = send(state, conn, json!({"type": "task_accepted", "task_id": task_id}), now);
    assert_eq!(ack, [json!({"type": "task_ack", "task_id": task_id, "status": "accepted"})]);
}

#[test]
fn identify_then_a_queued_task_is_pushed_at_generation_1() {
    let (mut state, _events) = hub();
    let now = Instant::now();
    let (conn, replies) = identify(&mut state, now);
    assert_eq!(types(&replies), ["identified"]);
    state.create_task("task-1", AGENT, "d", json!({}));
    state.schedule(now, None);
    assert_eq!(pushed(&conn), ["task_assign gen=1"]);
    assert_eq!(
        state.agents[AGENT].phase,
        AgentPhase::Assigned { accept_deadline: now + state.accept_timeout }
    );
    // Busy: a second task waits in the queue.
    state.create_task("task-2", AGENT, "d", json!({}));
    state.schedule(now, None);
    assert!(pushed(&conn).is_empty());
    assert_eq!(state.tasks["task-2"].status, TaskStatus::Queued);
}

#[test]
fn a_wrong_token_is_refused_and_the_socket_stays_open() {
    let (mut state, _events) = hub();
    let (outbox_tx, _outbox) = crossbeam_channel::unbounded();
    let conn = state.register_conn(outbox_tx);
    let frame = json!({"type": "identify", "agent_id": AGENT, "token": "nope"});
    let replies = reply_frames(state.handle_frame(conn, &frame, Instant::now()));
    assert_eq!(replies, [json!({"type": "error", "error": "invalid_token"})]);
    let ping = reply_frames(state.handle_frame(conn, &json!({"type": "ping"}), Instant::now()));
    assert_eq!(ping, [json!({"type": "error", "error": "not_identified"})]);
}

#[test]
fn a_dropped_socket_takes_the_task_back_and_a_new_identify_gets_it_two_generations_higher() {
    let (mut state, events) = hub();
    let now = Instant::now();
    let (conn, _) = identify(&mut state, now);
    state.create_task("task-1", AGENT, "d", json!({}));
    state.schedule(now, None);
    assert_eq!(pushed(&conn), ["task_assign gen=1"]);
    state.disconnect(conn.id, now);
    assert_eq!(state.tasks["task-1"].status, TaskStatus::Queued);
    assert!(events.try_iter().any(|event| event
        == DevHubEvent::TaskTakenBack {
            task_id: "task-1".to_string(),
            generation: 2,
            reason: "disconnect".to_string()
        }));
    let (conn, _) = identify(&mut state, now);
    assert_eq!(pushed(&conn), ["task_assign gen=3"]);
}

#[test]
fn a_missed_acceptance_window_takes_the_task_back_and_pushes_it_again() {
    let (mut state, _events) = hub();
    let now = Instant::now();
    let (conn, _) = identify(&mut state, now);
    state.create_task("task-1", AGENT, "d", json!({}));
    state.schedule(now, None);
    assert_eq!(pushed(&conn), ["task_assign gen=1"]);
    state.sweep(now + state.accept_timeout - Duration::from_millis(1));
    assert!(pushed(&conn).is_empty(), "the window is still open");
    state.sweep(now + state.accept_timeout);
    assert_eq!(pushed(&conn), ["task_assign gen=3"]);
    // Accepting the new generation ends the window for good.
    let ack = send(&mut state, &conn, json!({"type": "task_accepted", "task_id": "task-1"}), now);
    assert_eq!(ack, [json!({"type": "task_ack", "task_id": "task-1", "status": "accepted"})]);
    assert_eq!(state.agents[AGENT].phase, AgentPhase::Working);
    state.sweep(now + state.accept_timeout * 3);
    assert!(pushed(&conn).is_empty());
}

#[test]
fn failures_are_retried_then_dead_lettered_and_stale_reports_are_refused() {
    let (mut state, _events) = hub();
    let now = Instant::now();
    let (conn, _) = identify(&mut state, now);
    state.create_task("task-1", AGENT, "d", json!({}));
    state.schedule(now, None);
    let failed = |generation: u64| json!({"type": "task_failed", "task_id": "task-1", "generation": generation, "error": "boom"});
    let mut generation = 1;
    for round in 1..=state.max_retries {
        assert_eq!(pushed(&conn), [format!("task_assign gen={generation}")], "round {round}");
        accept(&mut state, &conn, "task-1", now);
        let stale = send(&mut state, &conn, failed(generation + 7), now);
        assert_eq!(stale, [json!({"type": "error", "error": "task_fail_failed: stale_generation"})]);
        let ack = send(&mut state, &conn, failed(generation), now);
        let status = if round == state.max_retries { "dead_letter" } else { "retried" };
        assert_eq!(ack, [json!({"type": "task_ack", "task_id": "task-1", "status": status})]);
        // Retried: one generation for the failure, one for the new assignment.
        generation += 2;
    }
    assert!(pushed(&conn).is_empty());
    let task = &state.tasks["task-1"];
    assert_eq!(task.status, TaskStatus::DeadLetter);
    let kinds: Vec<OutcomeKind> = task.outcomes.iter().map(|outcome| outcome.kind).collect();
    assert_eq!(kinds, [OutcomeKind::Retried, OutcomeKind::Retried, OutcomeKind::DeadLetter]);
    let gone = send(&mut state, &conn, failed(generation - 2), now);
    assert_eq!(gone, [json!({"type": "error", "error": "task_fail_failed: not_found"})]);
}

#[test]
fn a_completion_frees_the_agent_for_the_next_task() {
    let (mut state, _events) = hub();
    let now = Instant::now();
    let (conn, _) = identify(&mut state, now);
    for task_id in ["task-1", "task-2"] {
        state.create_task(task_id, AGENT, "d", json!({}));
    }
    state.schedule(now, None);
    assert_eq!(pushed(&conn), ["task_assign gen=1"]);
    accept(&mut state, &conn, "task-1", now);
    let complete =
        json!({"type": "task_complete", "task_id": "task-1", "generation": 1, "result": {"ok": 1}});
    let ack = send(&mut state, &conn, complete.clone(), now);
    assert_eq!(ack, [json!({"type": "task_ack", "task_id": "task-1", "status": "complete"})]);
    assert_eq!(state.tasks["task-1"].outcomes[0].result, Some(json!({"ok": 1})));
    assert_eq!(pushed(&conn), ["task_assign gen=1"], "task-2 follows");
    let again = send(&mut state, &conn, complete, now);
    assert_eq!(again, [json!({"type": "error", "error": "task_complete_failed: invalid_state"})]);
}

#[test]
fn a_completion_without_task_accepted_leaves_the_agent_assigned_until_its_window_closes() {
    let (mut state, _events) = hub();
    let now = Instant::now();
    let (conn, _) = identify(&mut state, now);
    for task_id in ["task-1", "task-2"] {
        state.create_task(task_id, AGENT, "d", json!({}));
    }
    state.schedule(now, None);
    assert_eq!(pushed(&conn), ["task_assign gen=1"]);
    let complete = json!({"type": "task_complete", "task_id": "task-1", "generation": 1});
    assert_eq!(types(&send(&mut state, &conn, complete, now)), ["task_ack"]);
    // agent_fsm.ex: task_completed moves only a working machine to idle.
    assert!(matches!(state.agents[AGENT].phase, AgentPhase::Assigned { .. }));
    assert!(pushed(&conn).is_empty(), "no next task while assigned");
    state.sweep(now + state.accept_timeout);
    assert_eq!(state.tasks["task-1"].status, TaskStatus::Completed, "nothing to take back");
    assert_eq!(pushed(&conn), ["task_assign gen=1"], "task-2 once the window closed");
}

#[test]
fn task_recovering_answers_by_status_only() {
    let (mut state, _events) = hub();
    let now = Instant::now();
    state.repush_on_identify = false;
    let (conn, _) = identify(&mut state, now);
    state.create_task("task-1", AGENT, "d", json!({}));
    state.schedule(now, None);
    assert_eq!(pushed(&conn), ["task_assign gen=1"]);
    state.disconnect(conn.id, now);
    let (conn, _) = identify(&mut state, now);
    assert!(pushed(&conn).is_empty(), "repush_on_identify is off");
    // Taken back and queued: reassign; the hub does not hand it back here.
    let recovering = json!({"type": "task_recovering", "task_id": "task-1"});
    let reply = send(&mut state, &conn, recovering.clone(), now);
    assert_eq!(reply, [json!({"type": "task_reassign", "task_id": "task-1"})]);
    assert_eq!(state.tasks["task-1"].status, TaskStatus::Queued);
    // Assigned, even to another agent: continue at its generation.
    state.seed("task-1", 7, "someone-else");
    let reply = send(&mut state, &conn, recovering, now);
    assert_eq!(reply, [json!({"type": "task_continue", "task_id": "task-1", "generation": 7})]);
    let unknown = send(&mut state, &conn, json!({"type": "task_recovering", "task_id": "task-9"}), now);
    assert_eq!(unknown, [json!({"type": "task_reassign", "task_id": "task-9"})]);
}

#[test]
fn a_rate_limited_frame_is_answered_and_not_handled() {
    let (mut state, _events) = hub();
    let now = Instant::now();
    let (conn, _) = identify(&mut state, now);
    state.rate_limits.push(("ping".to_string(), 250));
    let limited = send(&mut state, &conn, json!({"type": "ping"}), now);
    assert_eq!(limited, [json!({"type": "rate_limited", "retry_after_ms": 250, "tier": "light"})]);
    assert_eq!(types(&send(&mut state, &conn, json!({"type": "ping"}), now)), ["pong"]);
}
