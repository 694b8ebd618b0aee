use serde_json::json;

use super::coalesce_persists;
use crate::lifecycle_log::LifecycleEvent;
use crate::queue_store::QueueFile;
use crate::state::Effect;

fn persist(tag: &str) -> Effect {
    let mut queue = QueueFile::default();
    queue.extra.insert("tag".into(), json!(tag));
    Effect::Persist(Box::new(queue))
}

/// A frame told apart by `label` (its task id).
fn send(label: &str) -> Effect {
    Effect::Send { conn_id: 1, frame: crate::protocol::Outgoing::TaskAccepted { task_id: label.into() } }
}

fn read() -> Effect {
    Effect::ReadTaskFiles { task_id: "t".into() }
}

fn plain(effects: Vec<Effect>) -> Vec<(Effect, bool)> {
    effects.into_iter().map(|effect| (effect, false)).collect()
}

#[test]
fn a_run_of_persists_is_one_write_of_the_last_snapshot_before_its_sends() {
    let record = Effect::Record { event: LifecycleEvent::WakeAttempt, fields: json!({}) };
    let effects = vec![persist("accepted"), send("task_accepted"), record.clone(), persist("waking"), read()];
    assert_eq!(
        coalesce_persists(effects),
        vec![(persist("waking"), true), (send("task_accepted"), false), (record, false), (read(), false)]
    );
    assert_eq!(
        coalesce_persists(vec![persist("working"), persist("outcome"), send("task_complete")]),
        vec![(persist("outcome"), true), (send("task_complete"), false)]
    );
}

#[test]
fn any_other_effect_ends_a_run() {
    let effects = vec![persist("a"), send("x"), read(), persist("b"), send("y")];
    assert_eq!(coalesce_persists(effects.clone()), plain(effects));
    let exit = vec![persist("a"), Effect::Exit, persist("b")];
    assert_eq!(coalesce_persists(exit.clone()), plain(exit));
    assert_eq!(coalesce_persists(vec![send("x")]), plain(vec![send("x")]));
}
