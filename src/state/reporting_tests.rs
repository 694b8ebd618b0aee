//! Results, reports, acks and refusals.

use super::*;

#[test]
fn a_result_is_persisted_then_reported_then_settled_by_the_ack() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, success());
    assert_eq!(
        h.steps(),
        [
            "record result_received",
            "persist active working gen=3 report=complete",
            "record report_sent",
            "send task_complete"
        ]
    );
    let persist =
        h.fx.iter()
            .position(|e| matches!(e, Effect::Persist(q) if q.active.as_ref().unwrap().report.is_some()));
    let send = h.fx.iter().position(|e| matches!(e, Effect::Send { .. }));
    assert!(persist.unwrap() < send.unwrap());
    assert_eq!(
        h.sent()[0],
        json!({"type":"task_complete","task_id":TASK,"generation":3,
               "result":{"status":"success","output":"done"},"protocol_version":1})
    );
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"complete"}));
    assert_eq!(h.steps(), ["persist idle past=settled", "record report_settled", "remove files"]);
    assert!(h.has(|e| matches!(e, Effect::RemoveTaskFiles { task_id } if task_id == TASK)));
    let queue = h.persisted().unwrap();
    assert!(queue.active.is_none() && queue.recovering.is_none());
    assert_eq!(queue.past.map(|p| (p.task_id, p.generation)), Some((TASK.to_string(), 3)));
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn a_failure_result_is_reported_with_its_reason() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, ReadResult::Parsed(json!({"status":"failure","reason":"tests fail"})));
    assert_eq!(h.sent()[0]["type"], "task_failed");
    assert_eq!(h.sent()[0]["reason"], "tests fail");
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"dead_letter"}));
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn a_result_caught_mid_write_is_read_again_and_reported_once() {
    let mut h = Harness::new();
    h.working(3);
    h.at(100).files(true, ReadResult::Unparseable { len: 10, error: "EOF".into() });
    assert!(h.sent().is_empty());
    let rescan = h.deadline_ms().unwrap();
    assert!(rescan > 100 && rescan <= 500, "{rescan}");
    h.tick(rescan);
    assert!(h.has(|e| matches!(e, Effect::ReadTaskFiles { .. })));
    h.at(rescan).files(true, success());
    assert_eq!(h.sent_types(), ["task_complete"]);
    h.files(true, success());
    assert!(h.sent().is_empty(), "reported once");
}

#[test]
fn a_result_that_never_parses_fails_the_task() {
    let mut h = Harness::new();
    h.working(3);
    h.at(100).files(true, ReadResult::Unparseable { len: 0, error: "EOF".into() });
    h.at(499).files(true, ReadResult::Unparseable { len: 0, error: "EOF".into() });
    assert!(h.sent().is_empty());
    h.at(500).files(true, ReadResult::Unparseable { len: 0, error: "EOF".into() });
    assert_eq!(h.sent()[0]["reason"], "result_parse_error");
}

#[test]
fn a_result_too_large_fails_the_task() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, ReadResult::TooLarge { len: 1 << 30 });
    assert_eq!(h.sent()[0]["reason"], "result_too_large");
}

#[test]
fn error_frames_answer_the_oldest_report_of_their_kind() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    h.assign("task-ffffffffffffffff", 1); // pushed while busy: nothing is sent for it yet
    h.wake_done(1, WakeStatus::Success);
    h.files(true, success());
    assert_eq!(h.sent_types(), ["task_complete"]);
    // The old hub's answer to task_rejected must not settle the completion.
    h.frame(json!({"type":"error","error":"unknown_message_type"}));
    assert_eq!(h.state.held_task_id(), Some(TASK));
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"accepted"}));
    assert_eq!(h.state.held_task_id(), Some(TASK));
    h.frame(json!({"type":"error","error":"task_complete_failed: stale_generation"}));
    assert!(h.has(|e| matches!(e, Effect::Record { event: LifecycleEvent::ReportSettled, .. })));
    // Settled, and the task pushed while busy on this connection is taken.
    assert_eq!(h.state.held_task_id(), Some("task-ffffffffffffffff"), "a final refusal settles the report");
}

#[test]
fn a_passing_refusal_keeps_the_report_for_the_next_connection() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, success());
    h.frame(json!({"type":"error","error":"task_complete_failed: database_busy"}));
    assert_eq!(h.state.held_task_id(), Some(TASK));
    h.disconnect(None, None);
    h.tick(1_000);
    h.identify();
    h.frame(json!({"type":"task_continue","task_id":TASK,"generation":3}));
    assert_eq!(h.sent_types(), ["task_accepted", "task_complete"]);
}

#[test]
fn after_a_reconnect_nothing_is_reported_before_the_hub_answers_recovering() {
    let mut h = Harness::new();
    h.working(3);
    h.disconnect(None, None);
    h.at(50).files(true, success()); // the result arrives while disconnected
    assert_eq!(h.steps(), ["record result_received", "persist active working gen=3 report=complete"]);
    assert!(h.sent().is_empty());
    assert!(h.persisted().unwrap().active.unwrap().report.is_some(), "persisted while offline");
    h.tick(1_000);
    h.identify();
    assert_eq!(h.sent_types(), ["task_recovering"]);
    assert_eq!(h.sent()[0]["last_status"], "working");
    h.frame(json!({"type":"task_continue","task_id":TASK,"generation":4}));
    // task_accepted moves the hub's agent state back to working (issue 9 #7).
    assert_eq!(h.sent()[0], json!({"type":"task_accepted","task_id":TASK,"protocol_version":1}));
    assert_eq!(h.sent()[1]["type"], "task_complete");
    assert_eq!(h.sent()[1]["generation"], 4);
}

#[test]
fn a_result_for_a_task_the_hub_took_back_is_withheld() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, success());
    h.disconnect(None, None); // before the ack: not settled
    h.tick(1_000);
    h.identify();
    assert_eq!(h.sent_types(), ["task_recovering"]);
    h.frame(json!({"type":"task_reassign","task_id":TASK}));
    assert!(h.sent().is_empty());
    assert!(h.has(|e| matches!(e, Effect::Record { event: LifecycleEvent::ResultWithheld, .. })));
    assert!(h.state.held_task_id().is_none());
    assert_eq!(h.steps(), ["record result_withheld", "persist idle past=taken_back", "record task_dropped"]);
}

#[test]
fn the_same_task_handed_back_after_a_reconnect_is_adopted_without_a_second_wake() {
    let mut h = Harness::new();
    h.working(3);
    h.disconnect(None, None);
    h.tick(1_000);
    h.identify();
    // The hub re-pushes before answering task_recovering.
    h.assign(TASK, 5);
    assert_eq!(h.steps(), ["record task_readopted", "persist active working gen=5", "send task_accepted"]);
    assert_eq!(h.sent_types(), ["task_accepted"]);
    assert!(h.wake_starts().is_empty());
    assert_eq!(h.persisted().unwrap().active.unwrap().generation, 5);
    h.files(true, success());
    assert!(h.sent().is_empty(), "still waiting for the answer to task_recovering");
    h.frame(json!({"type":"task_continue","task_id":TASK,"generation":5}));
    assert_eq!(
        h.steps(),
        [
            "record task_continued",
            "persist active working gen=5 report=complete",
            "send task_accepted",
            "record report_sent",
            "send task_complete"
        ]
    );
    assert_eq!(h.sent()[1]["type"], "task_complete");
    assert_eq!(h.sent()[1]["generation"], 5);
}

#[test]
fn a_report_superseded_by_a_newer_generation_is_resent_under_it() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, success());
    h.assign(TASK, 5); // the hub took it back and re-pushed it meanwhile
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"accepted"}));
    h.frame(json!({"type":"error","error":"task_complete_failed: stale_generation"}));
    assert_eq!(h.sent()[0]["type"], "task_complete");
    assert_eq!(h.sent()[0]["generation"], 5);
    assert_eq!(h.state.held_task_id(), Some(TASK));
}

#[test]
fn a_hub_closing_with_1011_after_task_failed_settles_the_report() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, ReadResult::Parsed(json!({"status":"failure","reason":"no"})));
    assert_eq!(h.sent_types(), ["task_failed"]);
    h.disconnect(Some(1011), Some("internal error"));
    assert!(h.state.held_task_id().is_none());
    assert!(h.has(|e| matches!(e, Effect::RemoveTaskFiles { .. })));
}

#[test]
fn a_long_failure_reason_is_cut_to_the_hubs_limit_and_kept_whole_in_the_log() {
    let mut h = Harness::new();
    h.working(3);
    let reason = "x".repeat(3_000);
    h.files(true, ReadResult::Parsed(json!({"status":"failure","reason":reason})));
    let failed = &h.sent()[0];
    assert_eq!(failed["reason"].as_str().unwrap().chars().count(), 2_000);
    assert_eq!(failed["reason"], failed["error"]);
    assert!(failed["reason"].as_str().unwrap().contains("lifecycle log"));
    let whole = h.fx.iter().find_map(|e| match e {
        Effect::Record { event: LifecycleEvent::TaskFailedHere, fields } => Some(fields["outcome"].clone()),
        _ => None,
    });
    assert_eq!(whole, Some(json!(reason)));
}

#[test]
fn a_report_the_hubs_schema_refuses_is_settled_not_left_waiting() {
    let mut h = Harness::new();
    h.working(3);
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"accepted"}));
    h.files(true, ReadResult::Parsed(json!({"status":"failure","reason":"no"})));
    assert_eq!(h.sent_types(), ["task_failed"]);
    h.frame(json!({"type":"error","error":"validation_failed","message_type":"task_failed",
                   "errors":[{"field":"reason","error":"too_long","detail":"exceeds maximum length"}]}));
    assert_eq!(
        h.steps(),
        ["record report_refused", "persist idle past=settled", "record report_settled", "remove files"]
    );
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn a_validation_failure_of_another_frame_does_not_settle_the_report() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, success());
    assert_eq!(h.sent_types(), ["task_complete"]);
    h.frame(json!({"type":"error","error":"validation_failed","message_type":"task_accepted","errors":[]}));
    assert_eq!(h.state.held_task_id(), Some(TASK));
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"complete"}));
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn a_report_without_an_answer_is_asked_about_again_on_a_new_connection() {
    let mut h = Harness::new();
    h.working(3);
    h.at(100).files(true, success());
    assert_eq!(h.sent_types(), ["task_complete"]);
    assert!(h.deadline_ms().unwrap() <= 30_100);
    h.tick(30_099);
    assert!(!h.has(|e| matches!(e, Effect::Close { .. })));
    h.tick(30_100);
    assert!(h.has(|e| matches!(e, Effect::Close { .. })), "{:?}", h.steps());
    h.tick(31_000);
    h.identify();
    assert_eq!(h.sent_types(), ["task_recovering"]);
    h.frame(json!({"type":"task_continue","task_id":TASK,"generation":3}));
    assert_eq!(h.sent_types(), ["task_accepted", "task_complete"]);
}

#[test]
fn a_keepalive_progress_goes_out_when_the_hub_heard_nothing_for_the_interval() {
    let mut h =
        Harness::with(Settings { keepalive_interval: Some(ms(5_000)), ..settings() }, QueueFile::default());
    h.identify();
    h.at(100).assign(TASK, 3);
    h.wake_done(1, WakeStatus::Success);
    h.files(true, ReadResult::Missing);
    assert_eq!(h.deadline_ms(), Some(5_100));
    h.tick(5_099);
    assert!(h.sent().is_empty());
    h.tick(5_100);
    assert_eq!(h.sent(), [json!({"type":"task_progress","task_id":TASK,"progress":0,"protocol_version":1})]);
    // A real update resets it; the keep-alive repeats its value.
    h.at(6_200).input(Input::Files(TaskFiles {
        task_id: TASK.into(),
        started: true,
        result: ReadResult::Missing,
        progress: ReadResult::Parsed(json!({"progress": 40})),
    }));
    assert_eq!(h.sent()[0]["progress"], 40);
    h.tick(11_199);
    assert!(h.sent().is_empty());
    h.tick(11_200);
    assert_eq!(h.sent()[0]["progress"], 40);
    // Not once the outcome is known.
    h.files(true, success());
    h.tick(30_000);
    assert!(!h.sent_types().contains(&"task_progress".to_string()));
}

#[test]
fn a_keepalive_shorter_than_the_progress_throttle_waits_for_it_instead_of_spinning() {
    let settings = Settings { keepalive_interval: Some(ms(100)), progress_interval: ms(1_000), ..settings() };
    let mut h = Harness::with(settings, QueueFile::default());
    h.identify();
    h.at(100).assign(TASK, 3);
    h.wake_done(1, WakeStatus::Success);
    h.files(true, ReadResult::Missing);
    h.tick(200);
    assert_eq!(h.sent_types(), ["task_progress"], "the first keep-alive");
    // The next may only go out once the throttle opens (1,200), not at 300:
    // a deadline that is due but cannot send would spin the loop.
    assert_eq!(h.deadline_ms(), Some(1_200));
    h.tick(1_200);
    assert_eq!(h.sent_types(), ["task_progress"]);
}

/// The lifecycle log is the witness of what queue.json holds: a settlement
/// (`report_settled`) or a let-go (`task_dropped`) is recorded after the
/// write that lets go of the task, never before, so a kill between the two
/// cannot leave a log claiming what the disk does not hold (the soak's
/// checker takes a `report_settled` as proof that the sidecar heard the
/// hub's answer: seed 777, `soak-777-82`).
#[test]
fn a_settlement_or_a_let_go_is_recorded_after_the_write_that_holds_it() {
    fn recorded_after_the_write(steps: &[String], witness: &str) {
        let persist = steps.iter().position(|s| s.starts_with("persist idle past="));
        let record = steps.iter().position(|s| s == witness);
        assert!(
            matches!((persist, record), (Some(p), Some(r)) if p < r),
            "{witness} is not recorded after the persist: {steps:?}"
        );
    }
    // Settled: a failure answered `retried`, a result answered `complete`.
    for (result, status) in
        [(json!({"status":"failure","reason":"no"}), "retried"), (json!({"status":"success"}), "complete")]
    {
        let mut h = Harness::new();
        h.working(3);
        h.files(true, ReadResult::Parsed(result));
        h.frame(json!({"type":"task_ack","task_id":TASK,"status":status}));
        recorded_after_the_write(&h.steps(), "record report_settled");
    }
    // Let go of: cancelled by the hub, taken back by it.
    for frame in [
        json!({"type":"task_cancelled","task_id":TASK,"timestamp":1}),
        json!({"type":"task_reassign","task_id":TASK}),
    ] {
        let mut h = Harness::new();
        h.working(3);
        h.frame(frame);
        recorded_after_the_write(&h.steps(), "record task_dropped");
    }
}
