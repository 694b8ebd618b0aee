//! Working: the agent's confirmation and its deadline, the results
//! directory as the core sees it (which files are the held task's, when to
//! rescan, what a failed write withholds), and `task_timeout_ms`.

use std::path::PathBuf;

use super::*;

fn listing(entries: &[(&str, FileKind)]) -> Input {
    Input::Listing(Ok(entries.iter().map(|(id, kind)| (id.to_string(), *kind)).collect()))
}

#[test]
fn a_listing_reads_the_held_tasks_files_only_when_it_has_some() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    transcript(
        &mut h,
        vec![
            // Another task's file is only logged.
            (Step::Input(listing(&[("task-other", FileKind::Result)])), &[]),
            (
                Step::Input(listing(&[("task-other", FileKind::Result), (TASK, FileKind::Started)])),
                &["read files"],
            ),
            // A directory that cannot be listed: read the held task's files
            // directly.
            (Step::Input(Input::Listing(Err("permission denied".into()))), &["read files"]),
        ],
    );
}

#[test]
fn watcher_hints_read_the_held_tasks_files_and_a_lost_track_lists_the_directory() {
    let mut h = Harness::new();
    h.identify();
    let changed = |names: &[&str]| {
        Step::Input(Input::Event(Event::Results(ResultsEvent::Changed(
            names.iter().map(|n| PathBuf::from("/r").join(n)).collect(),
        ))))
    };
    transcript(
        &mut h,
        vec![
            // Not ours: listed (does it exist?) before any warning.
            (changed(&[&format!("{TASK}.json")]), &["list results"]),
            (
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
            ),
            // Not task files.
            (changed(&[".tmp123", "notes.txt"]), &[]),
            (changed(&["task-other.json", &format!("{TASK}.progress")]), &["read files", "list results"]),
            // Once listed (it exists), it is logged once and never listed
            // for again.
            (Step::Input(listing(&[("task-other", FileKind::Result)])), &[]),
            (changed(&["task-other.json"]), &[]),
            (Step::Input(Input::Event(Event::Results(ResultsEvent::Rescan))), &["list results"]),
        ],
    );
}

#[test]
fn without_a_watcher_the_directory_is_polled_only_while_a_task_is_held() {
    let mut h = Harness::with(
        Settings { results_poll: ms(200), rescan_results: true, ..settings() },
        QueueFile::default(),
    );
    h.identify();
    transcript(
        &mut h,
        vec![
            // Idle: only the heartbeat.
            (Step::Deadline(Some(60_000)), &[]),
            (
                at(10, Step::Assign(TASK, 3)),
                &[
                    "record task_accepted",
                    "persist active accepted gen=3",
                    "send task_accepted",
                    "record wake_attempt",
                    "persist active waking gen=3",
                    "start wake 1",
                    "read files",
                ],
            ),
            (Step::Deadline(Some(210)), &[]),
            (Step::Tick(209), &[]),
            (Step::Tick(210), &["list results"]),
            // And again.
            (Step::Deadline(Some(410)), &[]),
            (
                Step::Frame(json!({"type":"task_cancelled","task_id":TASK})),
                &[
                    "mark cancelled (task_cancelled)",
                    "cancel wake",
                    "persist idle past=settled",
                    "record task_dropped",
                ],
            ),
            // Only the cancelled task's files are due to go (cancel_grace,
            // 2 s): nothing held, no polling.
            (Step::Deadline(Some(2_210)), &[]),
            (Step::Tick(2_210), &["discard files"]),
            (Step::Deadline(Some(60_000)), &[]),
        ],
    );
}

#[test]
fn a_failed_persist_withholds_the_sends_that_followed_it_and_nothing_else() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    // The shell stopped at the first persist of that batch and hands back
    // what followed it.
    let first_persist = h.fx.iter().position(|e| matches!(e, Effect::Persist(_))).unwrap();
    let withheld = h.fx[first_persist + 1..].to_vec();
    h.input(Input::PersistFailed { error: "disk full".into(), withheld });
    assert_eq!(
        h.steps(),
        [
            "record persist_failed",
            "record wake_attempt",
            "persist active waking gen=3",
            "start wake 1",
            "read files"
        ]
    );
}

#[test]
fn a_settled_tasks_files_stay_when_its_settlement_could_not_be_written() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, success());
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"complete"}));
    assert_eq!(h.steps(), ["persist idle past=settled", "record report_settled", "remove files"]);
    // The shell withholds everything after the failed write.
    let withheld = h.fx[1..].to_vec();
    h.input(Input::PersistFailed { error: "disk full".into(), withheld });
    // The settlement, heard, is recorded after the failure (a reader of the
    // log sees that the disk does not hold it); the files stay.
    assert_eq!(h.steps(), ["record persist_failed", "record report_settled"]);
}

// ----- confirmation --------------------------------------------------------

#[test]
fn a_woken_agent_must_confirm_in_time() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    transcript(
        &mut h,
        vec![
            (
                at(10, Step::WakeDone(1, WakeStatus::Success)),
                &["record wake_finished", "persist active waking_confirmation gen=3", "read files"],
            ),
            (Step::Tick(1_009), &[]),
            (
                Step::Tick(1_010),
                &[
                    "record task_failed_here",
                    "persist active waking_confirmation gen=3 report=failed(confirmation_timeout)",
                    "record report_sent",
                    "send task_failed",
                ],
            ),
        ],
    );
    assert_eq!(h.sent()[0]["reason"], "confirmation_timeout");
}

#[test]
fn a_confirmation_moves_the_task_to_working() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    transcript(
        &mut h,
        vec![
            (
                Step::WakeDone(1, WakeStatus::Success),
                &["record wake_finished", "persist active waking_confirmation gen=3", "read files"],
            ),
            (Step::Files(true, ReadResult::Missing), &["record confirmed", "persist active working gen=3"]),
            // Past the confirmation deadline: nothing.
            (Step::Tick(5_000), &[]),
        ],
    );
}

#[test]
fn a_started_file_seen_before_the_wake_exits_counts() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    transcript(
        &mut h,
        vec![
            // The command still running is the agent at work.
            (Step::Files(true, ReadResult::Missing), &["record confirmed", "persist active working gen=3"]),
            (Step::WakeDone(1, WakeStatus::Success), &["record wake_finished", "read files"]),
        ],
    );
    assert_eq!(h.state.queue_file().active.unwrap().status.as_str(), "working");
}

// ----- task_timeout -------------------------------------------------------

#[test]
fn a_task_whose_result_never_comes_fails_at_task_timeout() {
    let mut h = Harness::with(Settings { task_timeout: Some(ms(5_000)), ..settings() }, QueueFile::default());
    h.identify();
    h.at(100).assign(TASK, 3);
    h.wake_done(1, WakeStatus::Success);
    h.files(true, ReadResult::Missing);
    transcript(
        &mut h,
        vec![
            (Step::Deadline(Some(5_100)), &[]),
            (Step::Tick(5_099), &[]),
            (
                Step::Tick(5_100),
                &[
                    "mark cancelled (task_timeout)",
                    "record task_failed_here",
                    "persist active working gen=3 report=failed(task_timeout)",
                    "record report_sent",
                    "send task_failed",
                ],
            ),
        ],
    );
    assert_eq!(h.sent()[0]["reason"], "task_timeout");
}

#[test]
fn a_task_timeout_kills_a_wake_still_running() {
    let mut h = Harness::with(Settings { task_timeout: Some(ms(1_000)), ..settings() }, QueueFile::default());
    h.identify();
    h.assign(TASK, 3);
    transcript(
        &mut h,
        vec![(
            Step::Tick(1_000),
            &[
                "mark cancelled (task_timeout)",
                "cancel wake",
                "record task_failed_here",
                "persist active waking gen=3 report=failed(task_timeout)",
                "record report_sent",
                "send task_failed",
            ],
        )],
    );
    assert_eq!(h.sent()[0]["reason"], "task_timeout");
}
