//! Recovery after our own crash, and the newer hub frames.

use super::*;

#[test]
fn a_task_found_at_start_is_recovering_until_the_hub_answers() {
    let mut h = Harness::with(settings(), node_queue("working"));
    assert_eq!(
        h.steps(),
        [
            "record task_recovered_from_disk",
            "persist recovering working gen=3",
            "list results",
            "connect",
            "record connecting"
        ]
    );
    let queue = h.persisted().unwrap();
    assert!(queue.active.is_none());
    assert_eq!(queue.recovering.unwrap().task_id, TASK);
    assert!(h.has(|e| matches!(e, Effect::ListResults)), "results already on disk count");
    h.identify();
    assert_eq!(h.steps(), ["record identified", "record recovering_sent", "send task_recovering"]);
    assert_eq!(h.sent()[0]["type"], "task_recovering");
    assert_eq!(h.sent()[0]["task_id"], TASK);
    h.frame(json!({"type":"task_continue","task_id":TASK,"generation":4}));
    assert_eq!(
        h.steps(),
        ["record task_continued", "persist active working gen=4", "send task_accepted", "read files"]
    );
    let queue = h.persisted().unwrap();
    assert_eq!(queue.active.unwrap().generation, 4);
    assert!(h.wake_starts().is_empty(), "a working agent is not woken again");
    h.files(true, success());
    assert_eq!(h.sent()[0]["generation"], 4);
}

#[test]
fn a_task_never_woken_before_the_crash_is_woken_once_on_continue_and_re_push() {
    let mut h = Harness::with(settings(), node_queue("accepted"));
    h.identify();
    h.frame(json!({"type":"task_continue","task_id":TASK,"generation":4}));
    assert_eq!(h.wake_starts(), [1]);
    h.assign(TASK, 5);
    assert_eq!(h.sent_types(), ["task_accepted"]);
    assert!(h.wake_starts().is_empty(), "woken once");
}

#[test]
fn a_recovered_task_the_hub_reassigned_is_dropped() {
    let mut h = Harness::with(settings(), node_queue("working"));
    h.identify();
    h.frame(json!({"type":"task_reassign","task_id":TASK}));
    assert!(h.state.held_task_id().is_none());
    // Its files stay for a hand-back; queue.json remembers it.
    assert_eq!(h.steps(), ["persist idle past=taken_back", "record task_dropped"]);
}

// ----- newer hub frames ----------------------------------------------------

#[test]
fn a_cancelled_task_is_stopped_and_nothing_is_reported() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    h.frame(json!({"type":"task_cancelled","task_id":TASK,"timestamp":1}));
    assert_eq!(
        h.steps(),
        [
            "mark cancelled (task_cancelled)",
            "cancel wake",
            "persist idle past=settled",
            "record task_dropped",
        ]
    );
    assert!(h.has(|e| matches!(e, Effect::CancelWake { .. })));
    assert!(h.sent().is_empty());
    // Its files (the cancel marker) go once its agent has had its grace.
    h.tick(2_000);
    assert_eq!(h.steps(), ["discard files"]);
    h.wake_done(1, WakeStatus::Cancelled);
    assert!(h.sent().is_empty());
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn a_rate_limited_report_is_resent_after_the_delay() {
    let mut h = Harness::new();
    h.working(3);
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"accepted"}));
    h.at(100).files(true, success());
    h.frame(json!({"type":"rate_limited","retry_after_ms":250,"tier":"t"}));
    assert_eq!(h.deadline_ms(), Some(350));
    h.tick(349);
    assert!(h.sent().is_empty());
    h.tick(350);
    assert_eq!(h.sent_types(), ["task_complete"]);
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"complete"}));
    assert!(h.state.held_task_id().is_none(), "the resent report is settled by its ack");
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
#[test]
fn a_held_back_report_of_a_task_let_go_is_not_sent() {
    let mut h = Harness::new();
    h.working(3);
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"accepted"}));
    h.at(100).files(true, success());
    assert_eq!(h.sent_types(), ["task_complete"]);
    h.frame(json!({"type":"task_reassign","task_id":TASK}));
    h.frame(json!({"type":"rate_limited","retry_after_ms":250,"tier":"t"}));
    h.at(200).assign(TASK, 9);
    h.files(true, success());
    h.tick(350);
    let reports: Vec<Value> = h.sent().into_iter().filter(|f| f["type"] == "task_complete").collect();
    assert_eq!(reports.len(), 1, "{:?}", h.sent());
    assert_eq!(reports[0]["generation"], 9);
}

/// A report in flight under generation 3 when the hub hands the task back
/// under 9, then rate-limited: it goes out again once, under 9.
#[test]
fn a_rate_limited_report_of_an_older_generation_is_resent_under_the_newest() {
    let mut h = Harness::new();
    h.working(3);
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"accepted"}));
    h.at(100).files(true, success());
    assert_eq!(h.sent()[0]["generation"], 3);
    h.frame(json!({"type":"task_assign","task_id":TASK,"description":"do it","metadata":{"k":1},
                   "generation":9,"assigned_at":5}));
    h.frame(json!({"type":"rate_limited","retry_after_ms":250,"tier":"t"}));
    h.tick(350);
    let reports: Vec<Value> = h.sent().into_iter().filter(|f| f["type"] == "task_complete").collect();
    assert_eq!(reports.len(), 1, "{:?}", h.sent());
    assert_eq!(reports[0]["generation"], 9);
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"complete"}));
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn restart_sidecar_persists_and_exits() {
    let mut h = Harness::new();
    h.working(3);
    h.frame(json!({"type":"restart_sidecar","reason":"update"}));
    assert_eq!(h.steps(), ["record shutdown", "persist active working gen=3", "close", "exit"]);
    assert!(h.persisted().unwrap().active.is_some());
    assert!(h.has(|e| matches!(e, Effect::Close { .. })));
    assert!(matches!(h.fx.last(), Some(Effect::Exit)));
    assert_eq!(h.state.next_deadline(), None);
}

#[test]
fn restart_sidecar_with_an_update_command_starts_it_and_stays() {
    let mut h = Harness::with(Settings { has_update_command: true, ..settings() }, QueueFile::default());
    h.working(3);
    h.frame(json!({"type":"restart_sidecar","reason":"update"}));
    assert_eq!(h.steps(), ["record update_started", "start update"]);
    assert!(h.state.next_deadline().is_some(), "still running: the heartbeat is due");

    // If the command cannot start, the hub's restart happens the old way.
    h.input(Input::UpdateFailed { error: "sh: not found".into() });
    assert_eq!(h.steps(), ["record shutdown", "persist active working gen=3", "close", "exit"]);
}

#[test]
fn shutdown_leaves_a_running_wake_to_the_executor_and_persists_it_for_the_next_start() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    h.input(Input::Event(Event::Shutdown));
    // The executor stops with the shell: a launcher is killed then, a
    // run-mode agent left running (wake::executor).
    assert!(!h.has(|e| matches!(e, Effect::CancelWake { .. })));
    assert_eq!(h.persisted().unwrap().active.unwrap().status.as_str(), "waking");
    assert!(matches!(h.fx.last(), Some(Effect::Exit)));
}

/// Found by the state fuzzer: after `Exit`, the files of a read still in
/// flight started a wake next to the cancelled one (whose outcome had not
/// come). After `Exit` the core does nothing.
#[test]
fn after_exit_no_input_starts_anything() {
    let mut h = Harness::new();
    h.identify();
    h.frame(json!({"type":"task_reassign","task_id":TASK}));
    h.assign(TASK, 3);
    h.frame(json!({"type":"task_reassign","task_id":TASK}));
    h.assign(TASK, 4);
    assert!(h.wake_starts().is_empty(), "files first: {:?}", h.steps());
    h.input(Input::Event(Event::Shutdown));
    assert!(matches!(h.fx.last(), Some(Effect::Exit)));
    for input in [
        Input::Files(TaskFiles {
            task_id: TASK.into(),
            started: false,
            result: ReadResult::Missing,
            progress: ReadResult::Missing,
        }),
        Input::Event(Event::Hub(HubEvent::Connected { conn_id: 9 })),
        Input::Tick,
    ] {
        let what = format!("{input:?}");
        assert!(h.input(input).is_empty(), "{what}: {:?}", h.steps());
    }
    assert_eq!(h.state.next_deadline(), None);
}

#[test]
fn progress_is_relayed_at_most_once_per_interval() {
    let mut h = Harness::new();
    h.working(3);
    let progress = |h: &mut Harness, at: u64, value: u64| {
        h.at(at).input(Input::Files(TaskFiles {
            task_id: TASK.into(),
            started: true,
            result: ReadResult::Missing,
            progress: ReadResult::Parsed(json!({"progress": value, "message": "m"})),
        }));
        h.sent()
    };
    assert_eq!(
        progress(&mut h, 0, 10)[0],
        json!({"type":"task_progress","task_id":TASK,"progress":10,"message":"m","protocol_version":1})
    );
    assert!(progress(&mut h, 100, 20).is_empty(), "throttled");
    assert!(progress(&mut h, 200, 30).is_empty());
    assert_eq!(h.deadline_ms(), Some(1_000));
    h.tick(1_000);
    assert_eq!(h.sent()[0]["progress"], 30, "the latest value goes out");
    assert!(progress(&mut h, 2_500, 30).is_empty(), "unchanged values are not repeated");
}

#[test]
fn wake_result_is_sent_only_when_the_hub_has_the_feature() {
    let mut s = settings();
    s.send_wake_result = true;
    let mut h = Harness::with(s, QueueFile::default());
    h.identify();
    h.assign(TASK, 3);
    h.wake_done(1, WakeStatus::Failed { exit_code: Some(2) });
    assert_eq!(
        h.sent()[0],
        json!({"type":"wake_result","task_id":TASK,"status":"failed","attempt":1,"error":"exit code 2","protocol_version":1})
    );
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    h.wake_done(1, WakeStatus::Failed { exit_code: Some(2) });
    assert!(h.sent().is_empty());
}

#[test]
fn retry_in_reasons_parse() {
    assert_eq!(parse_retry_in("retry in 30 s"), Some(Duration::from_secs(30)));
    assert_eq!(parse_retry_in("violations; retry in 2.5s"), Some(Duration::from_millis(2_500)));
    assert_eq!(parse_retry_in("bye"), None);
}

#[test]
fn a_task_whose_result_never_comes_fails_at_task_timeout() {
    let mut h = Harness::with(Settings { task_timeout: Some(ms(5_000)), ..settings() }, QueueFile::default());
    h.identify();
    h.at(100).assign(TASK, 3);
    h.wake_done(1, WakeStatus::Success);
    h.files(true, ReadResult::Missing);
    assert_eq!(h.deadline_ms(), Some(5_100));
    h.tick(5_099);
    assert!(h.sent().is_empty());
    h.tick(5_100);
    assert_eq!(h.sent()[0]["reason"], "task_timeout");
}

#[test]
fn a_task_timeout_kills_a_wake_still_running() {
    let mut h = Harness::with(Settings { task_timeout: Some(ms(1_000)), ..settings() }, QueueFile::default());
    h.identify();
    h.assign(TASK, 3);
    h.tick(1_000);
    assert!(h.has(|e| matches!(e, Effect::CancelWake { .. })));
    assert_eq!(h.sent()[0]["reason"], "task_timeout");
}

#[test]
fn a_rate_limited_ping_is_sent_again_later_not_taken_for_a_dead_hub() {
    let mut h = Harness::with(with_heartbeat(ms(1_000)), QueueFile::default());
    h.identify();
    h.tick(1_000);
    assert_eq!(h.sent_types(), ["ping"]);
    h.at(1_010).frame(json!({"type":"rate_limited","retry_after_ms":2_000,"tier":"light"}));
    h.tick(1_500);
    assert!(!h.has(|e| matches!(e, Effect::Close { .. })), "no pong is due for a dropped ping");
    assert_eq!(h.deadline_ms(), Some(3_010));
    h.tick(3_010);
    assert_eq!(h.sent_types(), ["ping"]);
}

#[test]
fn state_report_is_sent_with_the_feature_and_an_abort_drops_the_task() {
    let mut h = Harness::with(Settings { send_state_report: true, ..settings() }, node_queue("working"));
    h.identify();
    assert_eq!(h.sent_types(), ["task_recovering", "state_report"]);
    assert_eq!(h.sent()[1]["generation"], 3);
    h.frame(json!({"type":"state_report_ack","task_id":TASK,"action":"continue"}));
    assert_eq!(h.state.held_task_id(), Some(TASK));
    // The next connection's report is answered abort.
    h.disconnect(None, None);
    h.tick(1_000);
    h.identify();
    assert_eq!(h.sent_types(), ["task_recovering", "state_report"]);
    h.frame(json!({"type":"state_report_ack","task_id":TASK,"action":"abort"}));
    assert!(h.state.held_task_id().is_none());
    assert!(h.sent().is_empty(), "nothing is reported for an aborted task");
}

#[test]
fn a_state_report_ack_applies_to_the_generation_it_answers() {
    let mut h = Harness::with(Settings { send_state_report: true, ..settings() }, node_queue("working"));
    h.identify();
    assert_eq!(h.sent()[1]["generation"], 3);
    // The hub hands the task back at generation 5 before it answers the
    // report of generation 3: the abort is about generation 3.
    h.assign(TASK, 5);
    h.frame(json!({"type":"state_report_ack","task_id":TASK,"action":"abort"}));
    assert_eq!(h.state.held_task_id(), Some(TASK), "a stale abort changes nothing");
    assert!(h.steps().is_empty(), "{:?}", h.steps());
    // An ack that answers no report we sent changes nothing either.
    h.frame(json!({"type":"state_report_ack","task_id":TASK,"action":"abort"}));
    assert_eq!(h.state.held_task_id(), Some(TASK));
    // The agent's result is reported under generation 5.
    h.frame(json!({"type":"task_continue","task_id":TASK,"generation":5}));
    h.files(true, success());
    assert_eq!(h.sent()[0]["type"], "task_complete");
    assert_eq!(h.sent()[0]["generation"], 5);
    // A report of the current generation answered abort drops it.
    let mut h = Harness::with(Settings { send_state_report: true, ..settings() }, node_queue("working"));
    h.identify();
    h.frame(json!({"type":"state_report_ack","task_id":TASK,"action":"abort"}));
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn without_the_feature_no_state_report_is_sent() {
    let mut h = Harness::with(settings(), node_queue("working"));
    h.identify();
    assert_eq!(h.sent_types(), ["task_recovering"]);
}

#[test]
fn accepted_wake_result_and_complete_denied_in_a_row_reach_the_hub_in_order_but_a_stale_wake_result() {
    let mut h = Harness::with(Settings { send_wake_result: true, ..settings() }, QueueFile::default());
    h.identify();
    h.assign(TASK, 3);
    h.files(true, ReadResult::Missing);
    h.wake_done(1, WakeStatus::Success);
    h.files(true, success());
    for _ in 0..3 {
        h.at(10).frame(json!({"type":"rate_limited","retry_after_ms":1000,"tier":"normal"}));
        assert!(h.sent().is_empty());
    }
    h.tick(1_009);
    assert!(h.sent().is_empty());
    h.tick(1_010);
    // The task has its outcome: its wake_result says nothing more and is
    // dropped (docs/protocol.md 7.2).
    assert_eq!(h.sent_types(), ["task_accepted", "task_complete"]);
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"accepted"}));
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"complete"}));
    assert!(h.state.held_task_id().is_none(), "settled");
}

#[test]
fn a_frame_type_the_hub_does_not_know_is_not_sent_again_on_that_connection() {
    // The older hub answers wake_result with unknown_message_type.
    let mut h = Harness::with(Settings { send_wake_result: true, ..settings() }, QueueFile::default());
    h.identify();
    h.assign(TASK, 3);
    h.wake_done(1, WakeStatus::Failed { exit_code: Some(1) });
    assert_eq!(h.sent_types(), ["wake_result"]);
    h.frame(json!({"type":"error","error":"unknown_message_type"}));
    h.tick(100);
    h.wake_done(2, WakeStatus::Failed { exit_code: Some(1) });
    assert!(h.sent().is_empty(), "not again on this connection");
    // A new connection may be another hub: it is tried again there.
    h.disconnect(None, None);
    h.tick(1_000);
    h.identify();
    h.frame(json!({"type":"task_continue","task_id":TASK,"generation":3}));
    h.tick(1_300);
    h.wake_done(3, WakeStatus::Failed { exit_code: Some(1) });
    assert_eq!(h.sent_types(), ["wake_result"]);

    // The newest hub names the type it does not know.
    let mut h = Harness::with(Settings { send_state_report: true, ..settings() }, node_queue("working"));
    h.identify();
    assert_eq!(h.sent_types(), ["task_recovering", "state_report"]);
    h.frame(json!({"type":"error","error":"validation_failed","message_type":"state_report",
                   "errors":[{"field":"type","error":"unknown_message_type"}]}));
    h.frame(json!({"type":"task_reassign","task_id":"task-other"}));
    assert_eq!(h.state.held_task_id(), Some(TASK), "the refusal settles nothing");
}
