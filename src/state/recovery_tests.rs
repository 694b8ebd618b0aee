//! Recovery after our own crash: a task found in queue.json is
//! `recovering` until the hub answers, and what shutdown leaves for the next
//! start (run mode and leftover processes: `agent_run_tests.rs`).

use super::*;

#[test]
fn a_task_found_at_start_is_recovering_until_the_hub_answers() {
    let mut h = Harness::with(settings(), node_queue("working"));
    // Results already on disk when we start count: listed at once.
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
    assert_eq!(h.persisted().unwrap().recovering.unwrap().task_id, TASK);
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
    assert_eq!(h.sent()[0]["task_id"], TASK);
    transcript(
        &mut h,
        vec![
            // A working agent is not woken again.
            (
                resume(4),
                &[
                    "record task_continued",
                    "persist active working gen=4",
                    "send task_accepted",
                    "read files",
                ],
            ),
            (
                Step::Files(true, success()),
                // Confirmed in this run by the `.started` beside the result.
                &[
                    "record confirmed",
                    "record result_received",
                    "persist active working gen=4 report=complete",
                    "record report_sent",
                    "send task_complete",
                ],
            ),
        ],
    );
    assert_eq!(h.sent()[0]["generation"], 4);
}

#[test]
fn a_task_never_woken_before_the_crash_is_woken_once_on_continue_and_re_push() {
    let mut h = Harness::with(settings(), node_queue("accepted"));
    h.identify();
    transcript(
        &mut h,
        vec![
            (
                resume(4),
                &[
                    "record task_continued",
                    "persist active accepted gen=4",
                    "send task_accepted",
                    "record wake_attempt",
                    "persist active waking gen=4",
                    "start wake 1",
                    "read files",
                ],
            ),
            // Woken once.
            (
                Step::Assign(TASK, 5),
                &["record task_readopted", "persist active waking gen=5", "send task_accepted"],
            ),
        ],
    );
}

#[test]
fn a_recovered_task_the_hub_reassigned_is_dropped() {
    let mut h = Harness::with(settings(), node_queue("working"));
    h.identify();
    // Its files stay for a hand-back; queue.json remembers it.
    transcript(
        &mut h,
        vec![(
            Step::Frame(json!({"type":"task_reassign","task_id":TASK})),
            &["persist idle past=taken_back", "record task_dropped"],
        )],
    );
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn shutdown_leaves_a_running_wake_to_the_executor_and_persists_it_for_the_next_start() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    // The executor stops with the shell: a launcher is killed then, a
    // run-mode agent left running (wake::executor). No cancel here.
    transcript(
        &mut h,
        vec![(
            Step::Input(Input::Event(Event::Shutdown)),
            &["record shutdown", "persist active waking gen=3", "close", "exit"],
        )],
    );
}
