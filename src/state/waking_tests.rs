//! Waking: the running wake command in queue.json (persisted as soon as it
//! is known, cleared with its outcome, forgotten at start), retries at the
//! configured delays, and `wake_result`.

use super::*;
use crate::state::{TaskStatus, WakeProcess};
use crate::state::{WakeIdentity, WakeMode, WakeStarted};

fn identity() -> WakeIdentity {
    WakeIdentity { pid: 4242, process_group: Some(4242), start_time: Some(987_654) }
}

fn started(h: &mut Harness, attempt: u32) -> &[Effect] {
    h.input(Input::Event(Event::WakeStarted(WakeStarted {
        task_id: TASK.into(),
        attempt,
        identity: identity(),
    })))
}

fn persists(h: &Harness) -> usize {
    h.fx.iter().filter(|e| matches!(e, Effect::Persist(_))).count()
}

#[test]
fn a_started_wake_is_persisted_at_once_and_cleared_by_its_outcome() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 1);
    assert_eq!(h.wake_starts(), [1]);
    assert_eq!(h.persisted().unwrap().wake_process, None, "not known before it starts");

    started(&mut h, 1);
    assert_eq!(h.steps(), ["persist active waking gen=1", "release wake 1"], "recorded before it runs");
    let expected = WakeProcess {
        task_id: TASK.into(),
        attempt: 1,
        identity: identity(),
        mode: WakeMode::Launch,
        exit_code: None,
    };
    assert_eq!(h.persisted().unwrap().wake_process, Some(expected.clone()));
    assert_eq!(h.state.queue_file().wake_process, Some(expected));

    transcript(
        &mut h,
        vec![
            // A failed attempt whose retry waits: the clearing persist is its
            // own.
            (
                at(10, Step::WakeDone(1, WakeStatus::Failed { exit_code: Some(1) })),
                &["record wake_finished", "persist active waking gen=1"],
            ),
            // The retry: started, then a success that persists anyway (once).
            (Step::Tick(110), &["record wake_attempt", "persist active waking gen=1", "start wake 2"]),
            (Step::WakeStarted(2), &["persist active waking gen=1", "release wake 2"]),
        ],
    );
    assert_eq!(h.persisted().unwrap().wake_process.map(|p| p.attempt), Some(2));
    transcript(
        &mut h,
        vec![(
            at(120, Step::WakeDone(2, WakeStatus::Success)),
            &["record wake_finished", "persist active waking_confirmation gen=1", "read files"],
        )],
    );
    assert_eq!(h.persisted().unwrap().wake_process, None);
    assert_eq!(h.state.queue_file().wake_process, None);
}

#[test]
fn an_outcome_of_another_attempt_does_not_clear_the_running_one() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 1);
    transcript(
        &mut h,
        vec![
            (Step::WakeStarted(1), &["persist active waking gen=1", "release wake 1"]),
            (Step::WakeDone(7, WakeStatus::Cancelled), &["record wake_finished"]),
        ],
    );
    assert_eq!(h.state.queue_file().wake_process.map(|p| p.attempt), Some(1));
}

#[test]
fn start_forgets_a_leftover_the_shell_has_ended() {
    let leftover = WakeProcess {
        task_id: TASK.into(),
        attempt: 1,
        identity: identity(),
        mode: WakeMode::Launch,
        exit_code: None,
    };
    // No task held: persisted on its own.
    let queue = QueueFile { wake_process: Some(leftover.clone()), ..QueueFile::default() };
    let h = Harness::with(settings(), queue);
    assert_eq!(h.steps(), ["persist idle", "list results", "connect", "record connecting"]);
    assert_eq!(h.persisted().unwrap().wake_process, None);

    // A task held: with the recovering task's persist.
    let mut queue = node_queue("waking");
    queue.wake_process = Some(leftover);
    let h = Harness::with(settings(), queue);
    assert_eq!(persists(&h), 1, "{:?}", h.steps());
    let persisted = h.persisted().unwrap();
    assert_eq!(persisted.wake_process, None);
    assert_eq!(persisted.recovering.unwrap().status, TaskStatus::Waking);
}

/// A failed attempt is retried at the first of `wake_retry_delays` (100 ms
/// here), the same task file, the next attempt number.
#[test]
fn a_failed_attempt_is_retried_after_its_delay_as_a_transcript() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    transcript(
        &mut h,
        vec![
            (Step::WakeStarted(1), &["persist active waking gen=3", "release wake 1"]),
            (
                Step::WakeDone(1, WakeStatus::Failed { exit_code: Some(1) }),
                &["record wake_finished", "persist active waking gen=3"],
            ),
            (Step::Tick(99), &[]),
            (Step::Tick(100), &["record wake_attempt", "persist active waking gen=3", "start wake 2"]),
        ],
    );
}

#[test]
fn failed_wakes_retry_at_the_configured_delays_then_fail_the_task() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    let failed = WakeStatus::Failed { exit_code: Some(1) };
    // No process was recorded (no `WakeStarted`): nothing to clear, nothing
    // written.
    let attempt_failed: &[&str] = &["record wake_finished"];
    transcript(
        &mut h,
        vec![
            (Step::WakeDone(1, failed.clone()), attempt_failed),
            (Step::Deadline(Some(100)), &[]),
            (Step::Tick(99), &[]),
            (Step::Tick(100), &["record wake_attempt", "persist active waking gen=3", "start wake 2"]),
            (at(100, Step::WakeDone(2, failed.clone())), attempt_failed),
            (Step::Deadline(Some(300)), &[]),
            (Step::Tick(299), &[]),
            (Step::Tick(300), &["record wake_attempt", "persist active waking gen=3", "start wake 3"]),
            (at(300, Step::WakeDone(3, failed)), attempt_failed),
            (Step::Deadline(Some(600)), &[]),
            (Step::Tick(599), &[]),
            (Step::Tick(600), &["record wake_attempt", "persist active waking gen=3", "start wake 4"]),
            (
                Step::WakeDone(4, WakeStatus::TimedOut),
                &[
                    "record wake_finished",
                    "record task_failed_here",
                    "persist active waking gen=3 report=failed(wake_failed: wake command failed after 4 attempts (last: timed out))",
                    "record report_sent",
                    "send task_failed",
                ],
            ),
        ],
    );
    let failed = &h.sent()[0];
    assert_eq!(failed["generation"], 3);
    assert!(failed["reason"].as_str().unwrap().contains("after 4 attempts"), "{failed}");
    assert_eq!(failed["reason"], failed["error"]);
}

// ----- wake_result -------------------------------------------------------

#[test]
fn wake_result_is_sent_only_when_the_hub_has_the_feature() {
    let mut s = settings();
    s.send_wake_result = true;
    let mut h = Harness::with(s, QueueFile::default());
    h.identify();
    h.assign(TASK, 3);
    transcript(
        &mut h,
        vec![(
            Step::WakeDone(1, WakeStatus::Failed { exit_code: Some(2) }),
            &["record wake_finished", "send wake_result"],
        )],
    );
    assert_eq!(
        h.sent()[0],
        json!({"type":"wake_result","task_id":TASK,"status":"failed","attempt":1,"error":"exit code 2","protocol_version":1})
    );
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    transcript(
        &mut h,
        vec![(Step::WakeDone(1, WakeStatus::Failed { exit_code: Some(2) }), &["record wake_finished"])],
    );
}

/// An agent that confirms (`.started`) while its next attempt waits is
/// never woken again: the task is at work.
#[test]
fn an_agent_confirming_while_a_retry_waits_is_not_woken_again() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    transcript(
        &mut h,
        vec![
            (Step::WakeDone(1, WakeStatus::Failed { exit_code: Some(1) }), &["record wake_finished"]),
            (Step::Files(true, ReadResult::Missing), &["record confirmed", "persist active working gen=3"]),
            (Step::Tick(100), &[]),
            (Step::Deadline(Some(60_000)), &[]),
        ],
    );
}
