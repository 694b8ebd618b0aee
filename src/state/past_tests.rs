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
    assert_eq!(h.steps(), ["persist idle past=taken_back", "record task_dropped"], "its files stay");
    h
}

#[test]
fn a_task_handed_back_after_our_crash_is_adopted_without_a_second_wake() {
    let mut h = taken_back_after_a_crash();
    transcript(
        &mut h,
        vec![
            // Its files are looked at before any wake.
            (
                at(100, Step::Assign(TASK, 5)),
                &[
                    "record task_accepted",
                    "persist active accepted gen=5",
                    "send task_accepted",
                    "read files",
                ],
            ),
            (Step::Files(true, ReadResult::Missing), &["record confirmed", "persist active working gen=5"]),
            (
                Step::Files(true, success()),
                &[
                    "record result_received",
                    "persist active working gen=5 report=complete",
                    "record report_sent",
                    "send task_complete",
                ],
            ),
        ],
    );
    assert_eq!(h.sent()[0]["generation"], 5);
}

#[test]
fn a_result_written_while_the_task_was_taken_back_is_reported_at_the_new_generation() {
    let mut h = taken_back_after_a_crash();
    let changed = Input::Event(Event::Results(ResultsEvent::Changed(vec![format!("/r/{TASK}.json").into()])));
    transcript(
        &mut h,
        vec![
            // Kept for a hand-back, neither read nor warned about.
            (Step::Input(changed), &[]),
            (
                Step::Assign(TASK, 5),
                &[
                    "record task_accepted",
                    "persist active accepted gen=5",
                    "send task_accepted",
                    "read files",
                ],
            ),
            (
                Step::Files(true, success()),
                // Its `.started` is there: confirmed with the result.
                &[
                    "record confirmed",
                    "record result_received",
                    "persist active accepted gen=5 report=complete",
                    "record report_sent",
                    "send task_complete",
                ],
            ),
        ],
    );
    assert_eq!(h.sent()[0]["generation"], 5);
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
    transcript(
        &mut h,
        vec![
            // Attempt 2 was running: cancelled.
            (
                Step::Frame(json!({"type":"task_reassign","task_id":TASK})),
                &["cancel wake", "persist idle past=taken_back", "record task_dropped"],
            ),
            // Files first.
            (
                Step::Assign(TASK, 5),
                &[
                    "record task_accepted",
                    "persist active accepted gen=5",
                    "send task_accepted",
                    "read files",
                ],
            ),
            // The cancelled attempt has not ended yet.
            (Step::Files(false, ReadResult::Missing), &[]),
            // One new wake.
            (
                Step::WakeDone(2, WakeStatus::Cancelled),
                &[
                    "record wake_finished",
                    "record wake_attempt",
                    "persist active waking gen=5",
                    "start wake 1",
                ],
            ),
        ],
    );
}

#[test]
fn a_taken_back_task_not_handed_back_in_time_has_its_result_logged_and_removed() {
    let mut h = taken_back_after_a_crash();
    // readopt_window is 10 s in these settings.
    let due = h.deadline_ms().unwrap();
    assert!(due <= 10_000, "{due}");
    transcript(
        &mut h,
        vec![
            (Step::Tick(10_000), &["persist idle", "discard files"]),
            // A push of that id now is new work.
            (
                Step::Assign(TASK, 7),
                &[
                    "record task_accepted",
                    "persist active accepted gen=7",
                    "send task_accepted",
                    "record wake_attempt",
                    "persist active waking gen=7",
                    "start wake 1",
                    "read files",
                ],
            ),
        ],
    );
}

#[test]
fn a_task_adopted_without_a_wake_whose_agent_stays_silent_fails_in_bounded_time() {
    let mut h = taken_back_after_a_crash();
    h.at(1_000).assign(TASK, 5);
    // adopted_silence is 20 s: progress at 15 s starts it over.
    let progress = |at_ms: u64, value: u64| {
        let files = TaskFiles {
            task_id: TASK.into(),
            started: true,
            result: ReadResult::Missing,
            progress: ReadResult::Parsed(json!({ "progress": value })),
        };
        at(at_ms, Step::Input(Input::Files(files)))
    };
    transcript(
        &mut h,
        vec![
            (Step::Files(true, ReadResult::Missing), &["record confirmed", "persist active working gen=5"]),
            (progress(15_000, 10), &["send task_progress"]),
            (Step::Tick(34_999), &[]),
            (progress(34_999, 10), &[]),
            (Step::Tick(35_000), &["record task_failed_here", "persist active working gen=5 report=failed(adopted_task_silent: taken over without a wake, no progress or result for 20000 ms)", "record report_sent", "send task_failed"]),
        ],
    );
    let failed = h.sent().into_iter().find(|f| f["type"] == "task_failed").expect("failed at 35 s");
    assert!(failed["reason"].as_str().unwrap().starts_with("adopted_task_silent"), "{failed}");
}

#[test]
fn a_task_recovered_while_waking_whose_agent_had_confirmed_is_not_woken_again() {
    let mut h = Harness::with(settings(), node_queue("waking"));
    h.input(started_listing());
    h.files(true, ReadResult::Missing);
    h.identify();
    transcript(
        &mut h,
        vec![(
            resume(3),
            &[
                "record task_continued",
                "persist active waking gen=3",
                "send task_accepted",
                "persist active working gen=3",
                "read files",
            ],
        )],
    );
    // Same when the hub hands it back instead of answering continue.
    let mut h = Harness::with(settings(), node_queue("accepted"));
    h.input(started_listing());
    h.files(true, ReadResult::Missing);
    h.identify();
    transcript(
        &mut h,
        vec![(
            Step::Assign(TASK, 5),
            &[
                "record task_readopted",
                "persist active accepted gen=5",
                "send task_accepted",
                "persist active working gen=5",
                "read files",
            ],
        )],
    );
}

#[test]
fn after_a_settled_failure_the_same_task_is_new_work_and_its_old_files_never_count() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, ReadResult::Parsed(json!({"status":"failure","reason":"no"})));
    let late_file =
        Input::Event(Event::Results(ResultsEvent::Changed(vec![format!("/r/{TASK}.json").into()])));
    transcript(
        &mut h,
        vec![
            // Recorded as settled before its files go.
            (ack("retried"), &["persist idle past=settled", "record report_settled", "remove files"]),
            // A late file of the settled run is discarded (logged), not left.
            (Step::Input(late_file), &["discard files"]),
            // The retry is new work: woken, not adopted.
            (
                Step::Assign(TASK, 4),
                &[
                    "record task_accepted",
                    "persist active accepted gen=4",
                    "send task_accepted",
                    "record wake_attempt",
                    "persist active waking gen=4",
                    "start wake 1",
                    "read files",
                ],
            ),
        ],
    );
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
    transcript(
        &mut h,
        vec![
            (Step::Connected, &["record connected", "send identify"]),
            // Nothing is reported again.
            (Step::Frame(json!({"type":"identified","agent_id":"a1"})), &["record identified"]),
            // The retry is new work.
            (
                Step::Assign(TASK, 4),
                &[
                    "record task_accepted",
                    "persist active accepted gen=4",
                    "send task_accepted",
                    "record wake_attempt",
                    "persist active waking gen=4",
                    "start wake 1",
                    "read files",
                ],
            ),
        ],
    );
}

/// A task taken back, another task done meanwhile, then the first handed
/// back: still adopted without a second wake (its agent had confirmed). A
/// reconnect makes this order common: the hub takes the task back and its
/// scheduler may push another queued task first.
#[test]
fn a_task_handed_back_after_another_task_was_done_meanwhile_is_not_woken_again() {
    const OTHER: &str = "task-ffffffffffffffff";
    let mut h = taken_back_after_a_crash();
    h.at(100).assign(OTHER, 1);
    let wake = h.fx.iter().find_map(|e| match e {
        Effect::StartWake(start) => Some(start.clone()),
        _ => None,
    });
    assert_eq!(wake.map(|w| w.task_id), Some(OTHER.to_string()));
    h.input(Input::Event(Event::Wake(WakeOutcome {
        task_id: OTHER.into(),
        attempt: 1,
        status: WakeStatus::Success,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        elapsed: ms(3),
    })));
    h.input(Input::Files(TaskFiles {
        task_id: OTHER.into(),
        started: true,
        result: success(),
        progress: ReadResult::Missing,
    }));
    assert_eq!(h.sent_types(), ["task_complete"]);
    h.frame(json!({"type":"task_ack","task_id":OTHER,"status":"complete"}));
    assert!(h.has(|e| matches!(e, Effect::RemoveTaskFiles { task_id } if task_id == OTHER)));
    assert!(
        !h.has(|e| matches!(e, Effect::DiscardTaskFiles { task_id } | Effect::RemoveTaskFiles { task_id }
            if task_id == TASK)),
        "the taken-back task's files stay: {:?}",
        h.steps()
    );
    let queue = h.persisted().unwrap();
    let remembered: Vec<_> =
        queue.past_earlier.iter().chain(&queue.past).map(|p| p.task_id.as_str()).collect();
    assert_eq!(remembered, [TASK, OTHER], "both remembered in queue.json");

    h.at(200).assign(TASK, 5);
    assert!(h.steps().contains(&"read files".to_string()), "{:?}", h.steps());
    h.files(true, ReadResult::Missing);
    assert!(h.wake_starts().is_empty(), "{:?}", h.steps());
    h.files(true, success());
    assert_eq!(h.sent()[0]["type"], "task_complete");
    assert_eq!(h.sent()[0]["generation"], 5);
}

/// Taken back, one after another: each is remembered (its files kept) up to
/// the limit; beyond it the oldest one's files go, after the write that
/// forgets it. At their deadlines the rest go, in one write.
#[test]
fn taken_back_tasks_are_remembered_up_to_a_limit_and_each_discarded_at_its_deadline() {
    use crate::state::past::PAST_REMEMBERED;
    let mut h = Harness::new();
    h.identify();
    let id = |n: usize| format!("task-{n:016x}");
    for n in 0..=PAST_REMEMBERED {
        h.at(n as u64).assign(&id(n), 1);
        h.frame(json!({"type":"task_reassign","task_id":id(n)}));
        if n < PAST_REMEMBERED {
            assert!(!h.has(|e| matches!(e, Effect::DiscardTaskFiles { .. })), "{n}: {:?}", h.steps());
        }
    }
    // The limit was passed by one: the oldest goes.
    let steps = h.steps();
    let persist = steps.iter().position(|s| s.starts_with("persist idle")).unwrap();
    let discard = steps.iter().position(|s| s == "discard files").unwrap();
    assert!(persist < discard, "{steps:?}");
    assert!(h.has(|e| matches!(e, Effect::DiscardTaskFiles { task_id } if *task_id == id(0))));
    let queue = h.persisted().unwrap();
    assert_eq!(queue.past.as_ref().map(|p| p.task_id.clone()), Some(id(PAST_REMEMBERED)));
    assert_eq!(queue.past_earlier.len(), PAST_REMEMBERED - 1);
    assert_eq!(queue.past_earlier[0].task_id, id(1));

    // readopt_window is 10 s: tasks 1..=limit are due at 10_001..; one
    // tick past them all discards every one in one batch.
    h.tick(10_000 + PAST_REMEMBERED as u64);
    let discarded: Vec<String> =
        h.fx.iter()
            .filter_map(|e| match e {
                Effect::DiscardTaskFiles { task_id } => Some(task_id.clone()),
                _ => None,
            })
            .collect();
    assert_eq!(discarded, (1..=PAST_REMEMBERED).map(id).collect::<Vec<_>>());
    assert_eq!(h.steps().iter().filter(|s| s.starts_with("persist")).count(), 1, "{:?}", h.steps());
    let queue = h.persisted().unwrap();
    assert!(queue.past.is_none() && queue.past_earlier.is_empty());
}

fn failure() -> ReadResult {
    ReadResult::Parsed(json!({"status":"failure","error":"it broke"}))
}

/// A failure the hub hands back under a newer generation (task_assign or
/// task_continue) is reported under it and its agent, which started and
/// finished that work, is not woken again: whether the failure was sent
/// before or not (soak seed 11101 lifecycle 16 and the silent-hub cases of
/// its seeds 10202, 11202 and 11303, where starting over woke finished
/// agents). If the hub had in fact settled the failure and its answer was
/// lost, the hub counts it twice: docs/protocol.md 5.3 says why that is the
/// lesser harm.
#[test]
fn a_failure_handed_back_under_a_newer_generation_is_reported_under_it() {
    for sent_before in [true, false] {
        let mut h = Harness::new();
        h.working(3);
        if sent_before {
            h.files(true, failure());
            assert_eq!(h.sent_types(), ["task_failed"]);
            h.disconnect(None, None);
        } else {
            h.disconnect(None, None);
            h.files(true, failure());
            assert!(h.sent().is_empty());
        }
        h.tick(1_000);
        h.identify();
        h.assign(TASK, 5);
        h.frame(json!({"type":"task_continue","task_id":TASK,"generation":5}));
        assert!(h.wake_starts().is_empty(), "sent before {sent_before}: {:?}", h.steps());
        let failed: Vec<Value> = h.sent().into_iter().filter(|f| f["type"] == "task_failed").collect();
        assert_eq!(failed.len(), 1, "sent before {sent_before}: {:?}", h.steps());
        assert_eq!(failed[0]["generation"], 5);
    }
}
