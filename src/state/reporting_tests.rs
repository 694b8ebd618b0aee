//! What the hub hears: results persisted then reported, acks and refusals
//! that settle them, `task_recovering` after a reconnect, cancels, rate-limited
//! reports, progress and keep-alives, state reports.

use super::*;

#[test]
fn a_result_is_persisted_then_reported_then_settled_by_the_ack() {
    let mut h = Harness::new();
    h.working(3);
    transcript(
        &mut h,
        vec![(
            Step::Files(true, success()),
            &[
                "record result_received",
                "persist active working gen=3 report=complete",
                "record report_sent",
                "send task_complete",
            ],
        )],
    );
    assert_eq!(
        h.sent()[0],
        json!({"type":"task_complete","task_id":TASK,"generation":3,
               "result":{"status":"success","output":"done"},"protocol_version":1})
    );
    transcript(
        &mut h,
        vec![(ack("complete"), &["persist idle past=settled", "record report_settled", "remove files"])],
    );
    assert!(h.has(|e| matches!(e, Effect::RemoveTaskFiles { task_id } if task_id == TASK)));
    let queue = h.persisted().unwrap();
    assert_eq!(queue.past.map(|p| (p.task_id, p.generation)), Some((TASK.to_string(), 3)));
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn a_failure_result_is_reported_with_its_reason() {
    let mut h = Harness::new();
    h.working(3);
    transcript(
        &mut h,
        vec![(
            Step::Files(true, ReadResult::Parsed(json!({"status":"failure","reason":"tests fail"}))),
            &[
                "record task_failed_here",
                "persist active working gen=3 report=failed(tests fail)",
                "record report_sent",
                "send task_failed",
            ],
        )],
    );
    assert_eq!(h.sent()[0]["reason"], "tests fail");
    transcript(
        &mut h,
        vec![(ack("dead_letter"), &["persist idle past=settled", "record report_settled", "remove files"])],
    );
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn a_result_caught_mid_write_is_read_again_and_reported_once() {
    let mut h = Harness::new();
    h.working(3);
    transcript(
        &mut h,
        vec![(at(100, Step::Files(true, ReadResult::Unparseable { len: 10, error: "EOF".into() })), &[])],
    );
    let rescan = h.deadline_ms().unwrap();
    assert!(rescan > 100 && rescan <= 500, "{rescan}");
    transcript(
        &mut h,
        vec![
            (Step::Tick(rescan), &["read files"]),
            (
                Step::Files(true, success()),
                &[
                    "record result_received",
                    "persist active working gen=3 report=complete",
                    "record report_sent",
                    "send task_complete",
                ],
            ),
            // Reported once.
            (Step::Files(true, success()), &[]),
        ],
    );
}

#[test]
fn a_result_that_never_parses_fails_the_task() {
    let mut h = Harness::new();
    h.working(3);
    let unparseable = || Step::Files(true, ReadResult::Unparseable { len: 0, error: "EOF".into() });
    transcript(
        &mut h,
        vec![
            (at(100, unparseable()), &[]),
            (at(499, unparseable()), &[]),
            (
                at(500, unparseable()),
                &[
                    "record task_failed_here",
                    "persist active working gen=3 report=failed(result_parse_error)",
                    "record report_sent",
                    "send task_failed",
                ],
            ),
        ],
    );
    assert_eq!(h.sent()[0]["reason"], "result_parse_error");
}

#[test]
fn a_result_too_large_fails_the_task() {
    let mut h = Harness::new();
    h.working(3);
    transcript(
        &mut h,
        vec![(
            Step::Files(true, ReadResult::TooLarge { len: 1 << 30 }),
            &[
                "record task_failed_here",
                "persist active working gen=3 report=failed(result_too_large)",
                "record report_sent",
                "send task_failed",
            ],
        )],
    );
    assert_eq!(h.sent()[0]["reason"], "result_too_large");
}

#[test]
fn error_frames_answer_the_oldest_report_of_their_kind() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    transcript(
        &mut h,
        vec![
            // Pushed while busy: nothing is sent for it yet.
            (Step::Assign("task-ffffffffffffffff", 1), &["record task_refused"]),
            (
                Step::WakeDone(1, WakeStatus::Success),
                &["record wake_finished", "persist active waking_confirmation gen=3", "read files"],
            ),
            (
                Step::Files(true, success()),
                &[
                    "record confirmed",
                    "persist active working gen=3",
                    "record result_received",
                    "persist active working gen=3 report=complete",
                    "record report_sent",
                    "send task_complete",
                ],
            ),
            // The old hub's answer to task_rejected must not settle the
            // completion.
            (Step::Frame(json!({"type":"error","error":"unknown_message_type"})), &[]),
            (ack("accepted"), &[]),
            // A final refusal settles the report, and the task pushed while
            // busy on this connection is taken.
            (
                Step::Frame(json!({"type":"error","error":"task_complete_failed: stale_generation"})),
                &[
                    "persist idle past=settled",
                    "record report_settled",
                    "remove files",
                    "record task_accepted",
                    "persist active accepted gen=1 past=settled",
                    "send task_accepted",
                    "record wake_attempt",
                    "persist active waking gen=1 past=settled",
                    "start wake 1",
                    "read files",
                ],
            ),
        ],
    );
    assert_eq!(h.state.held_task_id(), Some("task-ffffffffffffffff"));
}

#[test]
fn a_passing_refusal_keeps_the_report_for_the_next_connection() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, success());
    transcript(
        &mut h,
        vec![
            (Step::Frame(json!({"type":"error","error":"task_complete_failed: database_busy"})), &[]),
            (Step::Disconnected(None, None), &["record disconnected"]),
        ],
    );
    h.tick(1_000);
    h.identify();
    transcript(
        &mut h,
        vec![(
            resume(3),
            &[
                "record task_continued",
                "persist active working gen=3 report=complete",
                "send task_accepted",
                "record report_sent",
                "send task_complete",
            ],
        )],
    );
}

#[test]
fn after_a_reconnect_nothing_is_reported_before_the_hub_answers_recovering() {
    let mut h = Harness::new();
    h.working(3);
    h.disconnect(None, None);
    transcript(
        &mut h,
        vec![
            // The result arrives while disconnected: persisted, not sent.
            (
                at(50, Step::Files(true, success())),
                &["record result_received", "persist active working gen=3 report=complete"],
            ),
            (Step::Tick(1_000), &["connect", "record connecting"]),
            (Step::Connected, &["record connected", "send identify"]),
            (
                Step::Frame(json!({"type":"identified","agent_id":"a1"})),
                &["record identified", "record recovering_sent", "send task_recovering"],
            ),
        ],
    );
    assert_eq!(h.sent()[0]["last_status"], "working");
    transcript(
        &mut h,
        vec![(
            resume(4),
            &[
                "record task_continued",
                "persist active working gen=4 report=complete",
                "send task_accepted",
                "record report_sent",
                "send task_complete",
            ],
        )],
    );
    // task_accepted moves the hub's agent state back to working (issue 9 #7).
    assert_eq!(h.sent()[0], json!({"type":"task_accepted","task_id":TASK,"protocol_version":1}));
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
    transcript(
        &mut h,
        vec![(
            Step::Frame(json!({"type":"task_reassign","task_id":TASK})),
            &["record result_withheld", "persist idle past=taken_back", "record task_dropped"],
        )],
    );
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn the_same_task_handed_back_after_a_reconnect_is_adopted_without_a_second_wake() {
    let mut h = Harness::new();
    h.working(3);
    h.disconnect(None, None);
    h.tick(1_000);
    h.identify();
    transcript(
        &mut h,
        vec![
            // The hub re-pushes before answering task_recovering.
            (
                Step::Assign(TASK, 5),
                &["record task_readopted", "persist active working gen=5", "send task_accepted"],
            ),
            // Still waiting for the answer to task_recovering.
            (
                Step::Files(true, success()),
                &["record result_received", "persist active working gen=5 report=complete"],
            ),
            (
                resume(5),
                &[
                    "record task_continued",
                    "persist active working gen=5 report=complete",
                    "send task_accepted",
                    "record report_sent",
                    "send task_complete",
                ],
            ),
        ],
    );
    assert_eq!(h.sent()[1]["generation"], 5);
}

#[test]
fn a_report_superseded_by_a_newer_generation_is_resent_under_it() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, success());
    transcript(
        &mut h,
        vec![
            // The hub took it back and re-pushed it meanwhile.
            (
                Step::Assign(TASK, 5),
                &[
                    "record task_readopted",
                    "persist active working gen=5 report=complete",
                    "send task_accepted",
                ],
            ),
            (ack("accepted"), &[]),
            (
                Step::Frame(json!({"type":"error","error":"task_complete_failed: stale_generation"})),
                &["record report_sent", "send task_complete"],
            ),
        ],
    );
    assert_eq!(h.sent()[0]["generation"], 5);
    assert_eq!(h.state.held_task_id(), Some(TASK));
}

#[test]
fn a_hub_closing_with_1011_after_task_failed_settles_the_report() {
    let mut h = Harness::new();
    h.working(3);
    transcript(
        &mut h,
        vec![
            (
                Step::Files(true, ReadResult::Parsed(json!({"status":"failure","reason":"no"}))),
                &[
                    "record task_failed_here",
                    "persist active working gen=3 report=failed(no)",
                    "record report_sent",
                    "send task_failed",
                ],
            ),
            (
                Step::Disconnected(Some(1011), Some("internal error")),
                &[
                    "persist idle past=settled",
                    "record report_settled",
                    "remove files",
                    "record disconnected",
                ],
            ),
        ],
    );
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn a_long_failure_reason_is_cut_to_the_hubs_limit_and_kept_whole_in_the_log() {
    let mut h = Harness::new();
    h.working(3);
    let reason = "x".repeat(3_000);
    transcript(
        &mut h,
        vec![(
            Step::Files(true, ReadResult::Parsed(json!({"status":"failure","reason":reason}))),
            &[
                "record task_failed_here",
                &format!("persist active working gen=3 report=failed({reason})"),
                "record report_sent",
                "send task_failed",
            ],
        )],
    );
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
    let refused = json!({"type":"error","error":"validation_failed","message_type":"task_failed",
                         "errors":[{"field":"reason","error":"too_long","detail":"exceeds maximum length"}]});
    transcript(
        &mut h,
        vec![(
            Step::Frame(refused),
            &["record report_refused", "persist idle past=settled", "record report_settled", "remove files"],
        )],
    );
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn a_validation_failure_of_another_frame_does_not_settle_the_report() {
    let mut h = Harness::new();
    h.working(3);
    let invalid =
        json!({"type":"error","error":"validation_failed","message_type":"task_accepted","errors":[]});
    transcript(
        &mut h,
        vec![
            (
                Step::Files(true, success()),
                &[
                    "record result_received",
                    "persist active working gen=3 report=complete",
                    "record report_sent",
                    "send task_complete",
                ],
            ),
            (Step::Frame(invalid), &[]),
            (ack("complete"), &["persist idle past=settled", "record report_settled", "remove files"]),
        ],
    );
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn a_report_without_an_answer_is_asked_about_again_on_a_new_connection() {
    let mut h = Harness::new();
    h.working(3);
    transcript(
        &mut h,
        vec![
            (
                at(100, Step::Files(true, success())),
                &[
                    "record result_received",
                    "persist active working gen=3 report=complete",
                    "record report_sent",
                    "send task_complete",
                ],
            ),
            (Step::Deadline(Some(30_100)), &[]),
            (Step::Tick(30_099), &[]),
            (Step::Tick(30_100), &["close", "record disconnected"]),
            (Step::Tick(31_000), &["connect", "record connecting"]),
            (Step::Connected, &["record connected", "send identify"]),
            (
                Step::Frame(json!({"type":"identified","agent_id":"a1"})),
                &["record identified", "record recovering_sent", "send task_recovering"],
            ),
            (
                resume(3),
                &[
                    "record task_continued",
                    "persist active working gen=3 report=complete",
                    "send task_accepted",
                    "record report_sent",
                    "send task_complete",
                ],
            ),
        ],
    );
}

#[test]
fn a_keepalive_progress_goes_out_when_the_hub_heard_nothing_for_the_interval() {
    let mut h =
        Harness::with(Settings { keepalive_interval: Some(ms(5_000)), ..settings() }, QueueFile::default());
    h.identify();
    h.at(100).assign(TASK, 3);
    h.wake_done(1, WakeStatus::Success);
    h.files(true, ReadResult::Missing);
    transcript(
        &mut h,
        vec![
            (Step::Deadline(Some(5_100)), &[]),
            (Step::Tick(5_099), &[]),
            (Step::Tick(5_100), &["send task_progress"]),
        ],
    );
    assert_eq!(h.sent(), [json!({"type":"task_progress","task_id":TASK,"progress":0,"protocol_version":1})]);
    // A real update resets it; the keep-alive repeats its value.
    let update = Input::Files(TaskFiles {
        task_id: TASK.into(),
        started: true,
        result: ReadResult::Missing,
        progress: ReadResult::Parsed(json!({"progress": 40})),
    });
    transcript(&mut h, vec![(at(6_200, Step::Input(update)), &["send task_progress"])]);
    assert_eq!(h.sent()[0]["progress"], 40);
    transcript(&mut h, vec![(Step::Tick(11_199), &[]), (Step::Tick(11_200), &["send task_progress"])]);
    assert_eq!(h.sent()[0]["progress"], 40);
    // Not once the outcome is known.
    transcript(
        &mut h,
        vec![
            (
                Step::Files(true, success()),
                &[
                    "record result_received",
                    "persist active working gen=3 report=complete",
                    "record report_sent",
                    "send task_complete",
                ],
            ),
            (Step::Tick(30_000), &[]),
        ],
    );
}

#[test]
fn a_keepalive_shorter_than_the_progress_throttle_waits_for_it_instead_of_spinning() {
    let settings = Settings { keepalive_interval: Some(ms(100)), progress_interval: ms(1_000), ..settings() };
    let mut h = Harness::with(settings, QueueFile::default());
    h.identify();
    h.at(100).assign(TASK, 3);
    h.wake_done(1, WakeStatus::Success);
    h.files(true, ReadResult::Missing);
    transcript(
        &mut h,
        vec![
            // The first keep-alive.
            (Step::Tick(200), &["send task_progress"]),
            // The next may only go out once the throttle opens (1,200), not
            // at 300: a deadline that is due but cannot send would spin the
            // loop.
            (Step::Deadline(Some(1_200)), &[]),
            (Step::Tick(1_200), &["send task_progress"]),
        ],
    );
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

// ----- cancels, rate limits, progress, state reports ---------------------

#[test]
fn a_cancelled_task_is_stopped_and_nothing_is_reported() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    transcript(
        &mut h,
        vec![
            (
                Step::Frame(json!({"type":"task_cancelled","task_id":TASK,"timestamp":1})),
                &[
                    "mark cancelled (task_cancelled)",
                    "cancel wake",
                    "persist idle past=settled",
                    "record task_dropped",
                ],
            ),
            // Its files (the cancel marker) go once its agent has had its
            // grace.
            (Step::Tick(2_000), &["discard files"]),
            (Step::WakeDone(1, WakeStatus::Cancelled), &["record wake_finished"]),
        ],
    );
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn a_rate_limited_report_is_resent_after_the_delay() {
    let mut h = Harness::new();
    h.working(3);
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"accepted"}));
    transcript(
        &mut h,
        vec![
            (
                at(100, Step::Files(true, success())),
                &[
                    "record result_received",
                    "persist active working gen=3 report=complete",
                    "record report_sent",
                    "send task_complete",
                ],
            ),
            (Step::Frame(json!({"type":"rate_limited","retry_after_ms":250,"tier":"t"})), &[]),
            (Step::Deadline(Some(350)), &[]),
            (Step::Tick(349), &[]),
            (Step::Tick(350), &["send task_complete"]),
            // The resent report is settled by its ack.
            (ack("complete"), &["persist idle past=settled", "record report_settled", "remove files"]),
        ],
    );
}

/// Found by the state fuzzer: a report held back by `rate_limited` went out
/// under its old generation after the hub had handed the task back under a
/// newer one (the hub refuses such a report as stale). Held back, it is
/// withdrawn and goes out once, under the newest generation; the same for
/// `task_continue` with a newer generation.
#[test]
fn a_report_held_back_by_rate_limiting_goes_out_under_the_newest_generation() {
    for newer in [
        json!({"type":"task_assign","task_id":TASK,"description":"do it","metadata":{"k":1},
               "generation":9,"assigned_at":5}),
        json!({"type":"task_continue","task_id":TASK,"generation":9}),
    ] {
        let mut h = Harness::new();
        h.working(3);
        h.frame(json!({"type":"task_ack","task_id":TASK,"status":"accepted"}));
        h.at(100).files(true, success());
        h.frame(json!({"type":"rate_limited","retry_after_ms":250,"tier":"t"}));
        h.at(200).frame(newer.clone());
        assert!(h.sent().is_empty(), "{newer}: still held back");
        h.tick(350);
        let reports: Vec<Value> = h.sent().into_iter().filter(|f| f["type"] == "task_complete").collect();
        assert_eq!(reports.len(), 1, "{newer}: {:?}", h.sent());
        assert_eq!(reports[0]["generation"], 9, "{newer}");
        h.frame(json!({"type":"task_ack","task_id":TASK,"status":"complete"}));
        assert!(h.state.held_task_id().is_none(), "{newer}: settled by its ack");
    }
}

/// Found by the state fuzzer: the hub took the task back while its report
/// was in flight, then rate-limited that report; once the hub handed the
/// task back under a newer generation, the held-back report went out under
/// the old one. A let-go task's held-back report is dropped; handed back,
/// its result is read and reported under the new generation.
/// Found by the state fuzzer: the hub took the task back while its report
/// was in flight, then rate-limited that report; once the hub handed the
/// task back under a newer generation, the held-back report went out under
/// the old one. A let-go task's held-back report is dropped; handed back,
/// its result is read and reported under the new generation.
#[test]
fn a_held_back_report_of_a_task_let_go_is_not_sent() {
    let mut h = Harness::new();
    h.working(3);
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"accepted"}));
    transcript(
        &mut h,
        vec![
            (
                at(100, Step::Files(true, success())),
                &[
                    "record result_received",
                    "persist active working gen=3 report=complete",
                    "record report_sent",
                    "send task_complete",
                ],
            ),
            (
                Step::Frame(json!({"type":"task_reassign","task_id":TASK})),
                &["record result_withheld", "persist idle past=taken_back", "record task_dropped"],
            ),
            (Step::Frame(json!({"type":"rate_limited","retry_after_ms":250,"tier":"t"})), &[]),
            (
                at(200, Step::Assign(TASK, 9)),
                &["record task_accepted", "persist active accepted gen=9", "read files"],
            ),
            (
                Step::Files(true, success()),
                &[
                    "record confirmed",
                    "record result_received",
                    "persist active accepted gen=9 report=complete",
                    "record report_sent",
                ],
            ),
            (Step::Tick(350), &["send task_accepted", "send task_complete"]),
        ],
    );
    assert_eq!(h.sent()[1]["generation"], 9);
}

/// A report in flight under generation 3 when the hub hands the task back
/// under 9, then rate-limited: it goes out again once, under 9.
/// A report in flight under generation 3 when the hub hands the task back
/// under 9, then rate-limited: it goes out again once, under 9.
#[test]
fn a_rate_limited_report_of_an_older_generation_is_resent_under_the_newest() {
    let mut h = Harness::new();
    h.working(3);
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"accepted"}));
    transcript(
        &mut h,
        vec![(
            at(100, Step::Files(true, success())),
            &[
                "record result_received",
                "persist active working gen=3 report=complete",
                "record report_sent",
                "send task_complete",
            ],
        )],
    );
    assert_eq!(h.sent()[0]["generation"], 3);
    transcript(
        &mut h,
        vec![
            (
                Step::Assign(TASK, 9),
                &[
                    "record task_readopted",
                    "persist active working gen=9 report=complete",
                    "send task_accepted",
                ],
            ),
            (
                Step::Frame(json!({"type":"rate_limited","retry_after_ms":250,"tier":"t"})),
                &["record report_sent"],
            ),
            (Step::Tick(350), &["send task_complete"]),
        ],
    );
    assert_eq!(h.sent()[0]["generation"], 9);
    transcript(
        &mut h,
        vec![(ack("complete"), &["persist idle past=settled", "record report_settled", "remove files"])],
    );
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn progress_is_relayed_at_most_once_per_interval() {
    let mut h = Harness::new();
    h.working(3);
    let progress = |at_ms: u64, value: u64| {
        let files = TaskFiles {
            task_id: TASK.into(),
            started: true,
            result: ReadResult::Missing,
            progress: ReadResult::Parsed(json!({"progress": value, "message": "m"})),
        };
        at(at_ms, Step::Input(Input::Files(files)))
    };
    transcript(&mut h, vec![(progress(0, 10), &["send task_progress"])]);
    assert_eq!(
        h.sent()[0],
        json!({"type":"task_progress","task_id":TASK,"progress":10,"message":"m","protocol_version":1})
    );
    transcript(
        &mut h,
        vec![
            // Throttled.
            (progress(100, 20), &[]),
            (progress(200, 30), &[]),
            (Step::Deadline(Some(1_000)), &[]),
            (Step::Tick(1_000), &["send task_progress"]),
        ],
    );
    assert_eq!(h.sent()[0]["progress"], 30, "the latest value goes out");
    // Unchanged values are not repeated.
    transcript(&mut h, vec![(progress(2_500, 30), &[])]);
}

#[test]
fn state_report_is_sent_with_the_feature_and_an_abort_drops_the_task() {
    let mut h = Harness::with(Settings { send_state_report: true, ..settings() }, node_queue("working"));
    h.identify();
    assert_eq!(h.sent_types(), ["task_recovering", "state_report"]);
    assert_eq!(h.sent()[1]["generation"], 3);
    let ack = |action: &str| Step::Frame(json!({"type":"state_report_ack","task_id":TASK,"action":action}));
    transcript(&mut h, vec![(ack("continue"), &[])]);
    assert_eq!(h.state.held_task_id(), Some(TASK));
    // The next connection's report is answered abort: nothing is reported
    // for an aborted task.
    h.disconnect(None, None);
    h.tick(1_000);
    h.identify();
    assert_eq!(h.sent_types(), ["task_recovering", "state_report"]);
    transcript(&mut h, vec![(ack("abort"), &["persist idle past=taken_back", "record task_dropped"])]);
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn a_state_report_ack_applies_to_the_generation_it_answers() {
    let mut h = Harness::with(Settings { send_state_report: true, ..settings() }, node_queue("working"));
    h.identify();
    assert_eq!(h.sent()[1]["generation"], 3);
    let abort = || Step::Frame(json!({"type":"state_report_ack","task_id":TASK,"action":"abort"}));
    transcript(
        &mut h,
        vec![
            // The hub hands the task back at generation 5 before it answers
            // the report of generation 3: the abort is about generation 3,
            // and changes nothing.
            (
                Step::Assign(TASK, 5),
                &[
                    "record task_readopted",
                    "persist active working gen=5",
                    "send task_accepted",
                    "read files",
                ],
            ),
            (abort(), &[]),
            // An ack that answers no report we sent changes nothing either.
            (abort(), &[]),
            // The agent's result is reported under generation 5.
            (resume(5), &["record task_continued", "persist active working gen=5", "send task_accepted"]),
            (
                Step::Files(true, success()),
                &[
                    "record confirmed",
                    "record result_received",
                    "persist active working gen=5 report=complete",
                    "record report_sent",
                    "send task_complete",
                ],
            ),
        ],
    );
    assert_eq!(h.sent()[0]["generation"], 5);
    // A report of the current generation answered abort drops it.
    let mut h = Harness::with(Settings { send_state_report: true, ..settings() }, node_queue("working"));
    h.identify();
    transcript(&mut h, vec![(abort(), &["persist idle past=taken_back", "record task_dropped"])]);
}

#[test]
fn without_the_feature_no_state_report_is_sent() {
    let mut h = Harness::with(settings(), node_queue("working"));
    transcript(
        &mut h,
        vec![
            (Step::Connected, &["record connected", "send identify"]),
            (
                Step::Frame(json!({"type":"identified","agent_id":"a1"})),
                &["record identified", "record recovering_sent", "send task_recovering"],
            ),
        ],
    );
}
