//! Intake: a `task_assign` taken (persisted, acknowledged, woken),
//! refused, or resent for the task we hold.

use super::*;

#[test]
fn an_idle_sidecar_persists_then_accepts_then_wakes() {
    let mut h = Harness::new();
    h.identify();
    transcript(
        &mut h,
        vec![(
            Step::Assign(TASK, 3),
            &[
                "record task_accepted",
                "persist active accepted gen=3",
                "send task_accepted",
                "record wake_attempt",
                "persist active waking gen=3",
                "start wake 1",
                "read files",
            ],
        )],
    );
    assert_eq!(h.sent()[0], json!({"type":"task_accepted","task_id":TASK,"protocol_version":1}));
    assert_eq!(h.wake_starts(), [1]);
    let active = h.persisted().unwrap().active.unwrap();
    assert_eq!((active.generation, active.status.as_str(), active.wake_attempts), (3, "waking", 1));
}

#[test]
fn a_busy_sidecar_refuses_other_tasks_and_keeps_its_own() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 1);
    // No wake, no task_rejected (neither hub knows it).
    transcript(&mut h, vec![(Step::Assign("task-ffffffffffffffff", 1), &["record task_refused"])]);
    let Effect::Record { fields, .. } = &h.fx[0] else { unreachable!() };
    assert_eq!(fields["reason"], "busy");
    assert_eq!(h.state.held_task_id(), Some(TASK));
}

#[test]
fn the_same_assign_again_is_accepted_idempotently_without_a_second_wake() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    transcript(&mut h, vec![(Step::Assign(TASK, 3), &["send task_accepted"])]);
}

#[test]
fn without_a_wake_command_the_task_goes_straight_to_working() {
    let mut s = settings();
    s.has_wake_command = false;
    let mut h = Harness::with(s, QueueFile::default());
    h.identify();
    transcript(
        &mut h,
        vec![(
            Step::Assign(TASK, 1),
            &[
                "record task_accepted",
                "persist active accepted gen=1",
                "send task_accepted",
                "persist active working gen=1",
                "read files",
            ],
        )],
    );
}

#[test]
fn invalid_or_missing_task_ids_are_refused() {
    let long = "a".repeat(200);
    for id in [json!("../x"), json!(""), json!(long), json!("a/b"), json!(".."), json!(5), Value::Null] {
        let mut h = Harness::new();
        h.identify();
        h.frame(json!({"type":"task_assign","task_id":id,"generation":1}));
        // Refused without a frame: neither hub knows task_rejected.
        assert_eq!(h.steps(), ["record task_refused"], "{id}");
        assert!(h.state.held_task_id().is_none());
        assert!(h.persisted().is_none(), "nothing written for {id}");
        assert!(h.wake_starts().is_empty());
    }
}

#[test]
fn a_malformed_generation_is_refused_before_any_work() {
    for generation in [json!("7"), json!(18_446_744_073_709_551_616.0), json!(-1), json!(1.5), json!({"g":1})]
    {
        let mut h = Harness::new();
        h.identify();
        h.frame(json!({"type":"task_assign","task_id":TASK,"description":"d","generation":generation}));
        assert_eq!(h.steps(), ["record task_refused"], "{generation}");
        assert!(h.state.held_task_id().is_none(), "{generation}");
    }
    // 2^64 as the hub writes it (an integer literal one past u64::MAX).
    let mut h = Harness::new();
    h.identify();
    let conn_id = h.conn;
    h.input(Input::Event(Event::Hub(HubEvent::Frame {
        conn_id,
        text: format!(r#"{{"type":"task_assign","task_id":"{TASK}","generation":18446744073709551616}}"#),
    })));
    assert_eq!(h.steps(), ["record task_refused"]);
    // Missing (or null) stays generation 0, as both hubs default it.
    for frame in [
        json!({"type":"task_assign","task_id":TASK}),
        json!({"type":"task_assign","task_id":TASK,"generation":null}),
    ] {
        let mut h = Harness::new();
        h.identify();
        h.frame(frame);
        assert_eq!(h.persisted().unwrap().active.unwrap().generation, 0);
    }
}

#[test]
fn every_field_of_the_assignment_reaches_queue_json_and_the_agent() {
    let mut h = Harness::new();
    h.identify();
    h.frame(
        json!({"type":"task_assign","protocol_version":1,"task_id":TASK,"description":"d","metadata":{"k":1},
                   "generation":3,"assigned_at":5,"repo":"r","branch":null,"file_hints":[{"path":"a.rs"}],
                   "skip_verification":false,"max_verification_retries":2,"from_the_future":{"x":[1]}}),
    );
    let extra = json!({"repo":"r","branch":null,"file_hints":[{"path":"a.rs"}],"skip_verification":false,
                       "max_verification_retries":2,"from_the_future":{"x":[1]}});
    let record = h.persisted().unwrap().active.unwrap();
    assert_eq!(Value::Object(record.assignment.clone()), extra);
    let start =
        h.fx.iter()
            .find_map(|e| match e {
                Effect::StartWake(w) => Some(w.clone()),
                _ => None,
            })
            .unwrap();
    let mut expected = extra.as_object().unwrap().clone();
    for (k, v) in [
        ("task_id", json!(TASK)),
        ("description", json!("d")),
        ("metadata", json!({"k":1})),
        ("generation", json!(3)),
        ("assigned_at", json!(5)),
    ] {
        expected.insert(k.into(), v);
    }
    let task_json: Value = serde_json::from_str(&start.task_json).unwrap();
    assert_eq!(task_json, Value::Object(expected), "everything but type and protocol_version");
    // It survives a restart through queue.json.
    let mut h = Harness::with(settings(), h.persisted().unwrap());
    h.identify();
    h.frame(json!({"type":"task_continue","task_id":TASK,"generation":3}));
    let start = h.fx.iter().find_map(|e| match e {
        Effect::StartWake(w) => Some(w.clone()),
        _ => None,
    });
    let task_json: Value =
        serde_json::from_str(&start.expect("woken: it was never woken").task_json).unwrap();
    assert_eq!(task_json["file_hints"], json!([{"path":"a.rs"}]));
    assert_eq!(task_json["from_the_future"], json!({"x":[1]}));
}
