//! Taking tasks and waking the agent.

use super::*;

#[test]
fn an_idle_sidecar_persists_then_accepts_then_wakes() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    assert_eq!(
        h.steps(),
        [
            "record task_accepted",
            "persist active accepted gen=3",
            "send task_accepted",
            "record wake_attempt",
            "persist active waking gen=3",
            "start wake 1",
            "read files"
        ]
    );
    let persist = h.fx.iter().position(|e| matches!(e, Effect::Persist(q) if q.active.is_some())).unwrap();
    let accept =
        h.fx.iter()
            .position(|e| matches!(e, Effect::Send { text, .. } if text.contains("task_accepted")))
            .unwrap();
    assert!(persist < accept, "persisted before acknowledged");
    assert_eq!(h.sent()[0], json!({"type":"task_accepted","task_id":TASK,"protocol_version":1}));
    assert_eq!(h.wake_starts(), [1]);
    let active = h.persisted().unwrap().active.unwrap();
    assert_eq!((active.generation, active.status.as_str(), active.wake_attempts), (3, "waking", 1));
}

#[test]
fn invalid_or_missing_task_ids_are_refused() {
    let long = "a".repeat(200);
    for id in [json!("../x"), json!(""), json!(long), json!("a/b"), json!(".."), json!(5), Value::Null] {
        let mut h = Harness::new();
        h.identify();
        h.frame(json!({"type":"task_assign","task_id":id,"generation":1}));
        assert_eq!(h.sent_types(), ["task_rejected"], "{id}");
        assert!(h.state.held_task_id().is_none());
        assert!(h.persisted().is_none(), "nothing written for {id}");
        assert!(h.wake_starts().is_empty());
    }
}

#[test]
fn a_busy_sidecar_rejects_other_tasks_and_keeps_its_own() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 1);
    h.assign("task-ffffffffffffffff", 1);
    assert_eq!(h.steps(), ["record task_rejected", "send task_rejected"]);
    assert_eq!(h.sent()[0]["reason"], "busy");
    assert!(h.persisted().is_none());
    assert_eq!(h.state.held_task_id(), Some(TASK));
}

#[test]
fn the_same_assign_again_is_accepted_idempotently_without_a_second_wake() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    h.assign(TASK, 3);
    assert_eq!(h.steps(), ["send task_accepted"]);
    assert_eq!(h.sent_types(), ["task_accepted"]);
    assert!(h.wake_starts().is_empty());
    assert!(h.persisted().is_none());
}

// ----- waking --------------------------------------------------------------

#[test]
fn failed_wakes_retry_at_the_configured_delays_then_fail_the_task() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    let mut now = 0;
    for (attempt, delay) in [(1u32, 100u64), (2, 200), (3, 300)] {
        h.at(now).wake_done(attempt, WakeStatus::Failed { exit_code: Some(1) });
        assert_eq!(h.deadline_ms(), Some(now + delay));
        h.tick(now + delay - 1);
        assert!(h.wake_starts().is_empty());
        now += delay;
        h.tick(now);
        assert_eq!(h.wake_starts(), [attempt + 1]);
    }
    h.at(now).wake_done(4, WakeStatus::TimedOut);
    let failed = &h.sent()[0];
    assert_eq!(failed["type"], "task_failed");
    assert_eq!(failed["generation"], 3);
    assert!(failed["reason"].as_str().unwrap().contains("after 4 attempts"), "{failed}");
    assert_eq!(failed["reason"], failed["error"]);
}

#[test]
fn without_a_wake_command_the_task_goes_straight_to_working() {
    let mut s = settings();
    s.has_wake_command = false;
    let mut h = Harness::with(s, QueueFile::default());
    h.identify();
    h.assign(TASK, 1);
    assert!(h.wake_starts().is_empty());
    assert_eq!(h.persisted().unwrap().active.unwrap().status.as_str(), "working");
    assert!(h.has(|e| matches!(e, Effect::ReadTaskFiles { .. })));
}

#[test]
fn a_woken_agent_must_confirm_in_time() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    h.at(10).wake_done(1, WakeStatus::Success);
    assert_eq!(h.steps(), ["record wake_finished", "persist active waking_confirmation gen=3", "read files"]);
    assert_eq!(h.persisted().unwrap().active.unwrap().status.as_str(), "waking_confirmation");
    h.tick(1_009);
    assert!(h.sent().is_empty());
    h.tick(1_010);
    assert_eq!(h.sent()[0]["reason"], "confirmation_timeout");
}

#[test]
fn a_confirmation_moves_the_task_to_working() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    h.wake_done(1, WakeStatus::Success);
    h.files(true, ReadResult::Missing);
    assert_eq!(h.persisted().unwrap().active.unwrap().status.as_str(), "working");
    h.tick(5_000);
    assert!(!h.sent_types().contains(&"task_failed".to_string()));
}

#[test]
fn a_started_file_seen_before_the_wake_exits_counts() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    h.files(true, ReadResult::Missing);
    h.wake_done(1, WakeStatus::Success);
    assert_eq!(h.persisted().unwrap().active.unwrap().status.as_str(), "working");
}
