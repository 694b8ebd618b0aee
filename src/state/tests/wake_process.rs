//! The running wake command in queue.json: persisted as soon as it is
//! known, cleared with its outcome, forgotten at start (the shell ended it).

use super::*;
use crate::queue_store::{TaskStatus, WakeProcess};
use crate::wake::{WakeIdentity, WakeStarted};

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

    // A failed attempt whose retry waits: no other persist in the batch, so
    // the clearing one is its own.
    h.at(10).wake_done(1, WakeStatus::Failed { exit_code: Some(1) });
    assert_eq!(persists(&h), 1, "{:?}", h.steps());
    assert_eq!(h.persisted().unwrap().wake_process, None);

    // The retry: started, then a success that persists anyway (once).
    h.tick(110);
    assert_eq!(h.wake_starts(), [2]);
    started(&mut h, 2);
    assert_eq!(h.persisted().unwrap().wake_process.map(|p| p.attempt), Some(2));
    h.at(120).wake_done(2, WakeStatus::Success);
    assert_eq!(persists(&h), 1, "{:?}", h.steps());
    assert_eq!(h.persisted().unwrap().active.unwrap().status, TaskStatus::WakingConfirmation);
    assert_eq!(h.state.queue_file().wake_process, None);
}

#[test]
fn an_outcome_of_another_attempt_does_not_clear_the_running_one() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 1);
    started(&mut h, 1);
    h.wake_done(7, WakeStatus::Cancelled);
    assert_eq!(persists(&h), 0, "{:?}", h.steps());
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
