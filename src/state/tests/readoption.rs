//! A task the hub takes back and hands back again: adopted without a second
//! wake, its files kept meanwhile; settled tasks' files never taken for new
//! work (issue 9 #1, issue 10 #2 and #3).

use super::*;

fn started_listing() -> Input {
    Input::Listing(Ok(vec![(TASK.to_string(), FileKind::Started)]))
}

/// Recovered after our crash with its agent confirmed, then taken back by
/// the hub's answer to task_recovering.
fn taken_back_after_a_crash() -> Harness {
    let mut h = Harness::with(settings(), node_queue("working"));
    h.input(started_listing());
    assert_eq!(h.steps(), ["read files"]);
    h.files(true, ReadResult::Missing);
    h.identify();
    h.frame(json!({"type":"task_reassign","task_id":TASK}));
    assert_eq!(h.steps(), ["record task_dropped", "persist idle past=taken_back"], "its files stay");
    h
}

#[test]
fn a_task_handed_back_after_our_crash_is_adopted_without_a_second_wake() {
    let mut h = taken_back_after_a_crash();
    h.at(100).assign(TASK, 5);
    assert_eq!(
        h.steps(),
        ["record task_accepted", "persist active accepted gen=5", "send task_accepted", "read files"],
        "its files are looked at before any wake"
    );
    h.files(true, ReadResult::Missing);
    assert_eq!(h.steps(), ["record confirmed", "persist active working gen=5"]);
    h.files(true, success());
    assert_eq!(h.sent()[0]["type"], "task_complete");
    assert_eq!(h.sent()[0]["generation"], 5);
    assert!(h.wake_starts().is_empty());
}

#[test]
fn a_result_written_while_the_task_was_taken_back_is_reported_at_the_new_generation() {
    let mut h = taken_back_after_a_crash();
    h.input(Input::Event(Event::Results(ResultsEvent::Changed(vec![format!("/r/{TASK}.json").into()]))));
    assert!(h.steps().is_empty(), "kept for a hand-back, neither read nor warned about");
    h.assign(TASK, 5);
    h.files(true, success());
    assert_eq!(h.sent_types(), ["task_complete"]);
    assert_eq!(h.sent()[0]["generation"], 5);
    assert!(h.wake_starts().is_empty());
}

#[test]
fn a_task_handed_back_whose_agent_never_confirmed_is_woken_once() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    assert_eq!(h.wake_starts(), [1]);
    h.wake_done(1, WakeStatus::Failed { exit_code: Some(1) });
    h.disconnect(None, None);
    h.tick(1_000);
    h.identify();
    h.frame(json!({"type":"task_reassign","task_id":TASK}));
    assert!(h.has(|e| matches!(e, Effect::CancelWake { .. })), "attempt 2 was running");
    h.assign(TASK, 5);
    assert!(h.wake_starts().is_empty(), "files first");
    h.files(false, ReadResult::Missing);
    assert!(h.wake_starts().is_empty(), "the cancelled attempt has not ended yet");
    h.wake_done(2, WakeStatus::Cancelled);
    assert_eq!(h.wake_starts(), [1], "one new wake");
}

#[test]
fn a_taken_back_task_not_handed_back_in_time_has_its_result_logged_and_removed() {
    let mut h = taken_back_after_a_crash();
    // readopt_window is 10 s in these settings.
    let due = h.deadline_ms().unwrap();
    assert!(due <= 10_000, "{due}");
    h.tick(10_000);
    assert!(
        h.steps().ends_with(&["persist idle".to_string(), "discard files".to_string()]),
        "{:?}",
        h.steps()
    );
    // A push of that id now is new work.
    h.assign(TASK, 7);
    assert_eq!(h.wake_starts(), [1]);
}

#[test]
fn a_task_adopted_without_a_wake_whose_agent_stays_silent_fails_in_bounded_time() {
    let mut h = taken_back_after_a_crash();
    h.at(1_000).assign(TASK, 5);
    h.files(true, ReadResult::Missing);
    // adopted_silence is 20 s: progress at 15 s starts it over.
    let progress = |h: &mut Harness, at: u64, value: u64| {
        h.at(at).input(Input::Files(TaskFiles {
            task_id: TASK.into(),
            started: true,
            result: ReadResult::Missing,
            progress: ReadResult::Parsed(json!({ "progress": value })),
        }));
    };
    progress(&mut h, 15_000, 10);
    h.tick(34_999);
    assert!(!h.sent_types().contains(&"task_failed".to_string()));
    progress(&mut h, 34_999, 10);
    h.tick(35_000);
    let failed = h.sent().into_iter().find(|f| f["type"] == "task_failed").expect("failed at 35 s");
    assert!(failed["reason"].as_str().unwrap().starts_with("adopted_task_silent"), "{failed}");
    assert!(h.wake_starts().is_empty());
}

#[test]
fn a_task_recovered_while_waking_whose_agent_had_confirmed_is_not_woken_again() {
    let mut h = Harness::with(settings(), node_queue("waking"));
    h.input(started_listing());
    h.files(true, ReadResult::Missing);
    h.identify();
    h.frame(json!({"type":"task_continue","task_id":TASK,"generation":3}));
    assert!(h.wake_starts().is_empty(), "{:?}", h.steps());
    assert_eq!(h.persisted().unwrap().active.unwrap().status.as_str(), "working");
    // Same when the hub hands it back instead of answering continue.
    let mut h = Harness::with(settings(), node_queue("accepted"));
    h.input(started_listing());
    h.files(true, ReadResult::Missing);
    h.identify();
    h.assign(TASK, 5);
    assert!(h.wake_starts().is_empty(), "{:?}", h.steps());
}

#[test]
fn after_a_settled_failure_the_same_task_is_new_work_and_its_old_files_never_count() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, ReadResult::Parsed(json!({"status":"failure","reason":"no"})));
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"retried"}));
    // Recorded as settled before its files go.
    assert_eq!(h.steps(), ["record report_settled", "persist idle past=settled", "remove files"]);
    // A late file of the settled run is discarded (logged), not left.
    h.input(Input::Event(Event::Results(ResultsEvent::Changed(vec![format!("/r/{TASK}.json").into()]))));
    assert_eq!(h.steps(), ["discard files"]);
    // The retry is new work: woken, not adopted.
    h.assign(TASK, 4);
    assert_eq!(h.wake_starts(), [1]);
}

#[test]
fn a_kill_between_settling_and_removing_the_files_is_finished_at_the_next_start() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, ReadResult::Parsed(json!({"status":"failure","reason":"no"})));
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"retried"}));
    let on_disk = h.persisted().unwrap();
    // Killed here: the next start removes the files and reports nothing.
    let mut h = Harness::with(settings(), on_disk);
    assert_eq!(h.steps(), ["remove files", "list results", "connect", "record connecting"]);
    h.identify();
    assert!(h.sent().is_empty(), "nothing is reported again");
    h.assign(TASK, 4);
    assert_eq!(h.wake_starts(), [1], "the retry is new work");
}
