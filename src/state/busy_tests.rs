//! Tasks pushed while another is held: never woken while busy; taken once
//! free if pushed on the live connection, else handed back (newest hub) or
//! left to the hub (older hub).

use super::*;

const OTHER: &str = "task-ffffffffffffffff";
const THIRD: &str = "task-eeeeeeeeeeeeeeee";

/// A `task_assign` as 4718a58 sends it: its extra keys tell the sidecar
/// which hub it faces.
fn newer_hub_assign(task_id: &str, generation: u64) -> Value {
    json!({"type":"task_assign","task_id":task_id,"description":"d","metadata":{},"generation":generation,
           "assigned_at":5,"repo":null,"branch":null,"file_hints":[{"path":"a.rs"}],"success_criteria":[],
           "verification_steps":[],"complexity":null,"routing_decision":null,"skip_verification":false,
           "verification_timeout_ms":null,"max_verification_retries":0})
}

/// A `task_assign` as cbf9c20 sends it.
fn older_hub_assign(task_id: &str, generation: u64) -> Value {
    json!({"type":"task_assign","task_id":task_id,"description":"d","metadata":{},"generation":generation,
           "assigned_at":5})
}

fn woken(h: &mut Harness, task_id: &str) {
    h.input(Input::Event(Event::Wake(WakeOutcome {
        task_id: task_id.into(),
        attempt: 1,
        status: WakeStatus::Success,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        elapsed: ms(3),
    })));
}

fn finished(h: &mut Harness, task_id: &str) {
    h.input(Input::Files(TaskFiles {
        task_id: task_id.into(),
        started: true,
        result: success(),
        progress: ReadResult::Missing,
    }));
}

fn started_wake(h: &Harness) -> Option<WakeStart> {
    h.fx.iter().find_map(|e| match e {
        Effect::StartWake(w) => Some(w.clone()),
        _ => None,
    })
}

/// Holds TASK at generation 3, woken; the hub then pushes `push`.
fn busy_with_a_push(push: Value) -> Harness {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    h.frame(push);
    assert_eq!(h.steps(), ["record task_refused"], "never woken nor answered while busy");
    h
}

/// TASK completes and the hub acknowledges it.
fn settle_task(h: &mut Harness) {
    woken(h, TASK);
    finished(h, TASK);
    assert_eq!(h.sent_types(), ["task_complete"]);
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"complete"}));
}

const TAKEN_AFTER_SETTLING: [&str; 10] = [
    "persist idle past=settled",
    "record report_settled",
    "remove files",
    "record task_accepted",
    "persist active accepted gen=7 past=settled",
    "send task_accepted",
    "record wake_attempt",
    "persist active waking gen=7 past=settled",
    "start wake 1",
    "read files",
];

#[test]
fn a_task_pushed_while_busy_on_this_connection_is_taken_once_we_are_free() {
    for push in [newer_hub_assign(OTHER, 7), older_hub_assign(OTHER, 7)] {
        let mut h = busy_with_a_push(push.clone());
        settle_task(&mut h);
        assert_eq!(h.steps(), TAKEN_AFTER_SETTLING, "{push}");
        assert_eq!(h.sent(), [json!({"type":"task_accepted","task_id":OTHER,"protocol_version":1})]);
        assert_eq!(h.state.held_task_id(), Some(OTHER));
        // The whole assignment, as if it had been pushed just now.
        let wake = started_wake(&h).unwrap();
        let task_json: Value = serde_json::from_str(&wake.task_json).unwrap();
        assert_eq!((wake.task_id.as_str(), wake.generation), (OTHER, 7));
        assert_eq!(task_json["file_hints"], push.get("file_hints").cloned().unwrap_or(Value::Null));
        assert_eq!(task_json["assigned_at"], 5);
        // Reported at the generation it was pushed with, once.
        woken(&mut h, OTHER);
        finished(&mut h, OTHER);
        assert_eq!(h.sent_types(), ["task_complete"]);
        assert_eq!(h.sent()[0]["generation"], 7);
        h.frame(json!({"type":"task_ack","task_id":OTHER,"status":"complete"}));
        h.tick(100);
        assert!(h.sent().is_empty());
        assert!(h.state.held_task_id().is_none());
    }
}

/// The duplicate outcome the 30 % loss test found: our report was accepted
/// but its ack was lost with the connection; after the reconnect the hub
/// (idle for it) pushes the next task at once, before its answer to
/// `task_recovering` (`task_reassign`: the task is complete) lets ours go.
/// Failing that push back as busy cost it a retry and settled it twice.
#[test]
fn a_task_pushed_during_a_reconnects_recovery_is_taken_when_the_held_task_is_let_go() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, success());
    assert_eq!(h.sent_types(), ["task_complete"]);
    h.disconnect(None, None);
    h.tick(1_000);
    h.identify();
    assert_eq!(h.sent_types(), ["task_recovering"]);
    transcript(
        &mut h,
        vec![
            (Step::Frame(newer_hub_assign(OTHER, 3)), &["record task_refused"]),
            (
                Step::Frame(json!({"type":"task_reassign","task_id":TASK})),
                &[
                    "record result_withheld",
                    "persist idle past=taken_back",
                    "record task_dropped",
                    "record task_accepted",
                    "persist active accepted gen=3 past=taken_back",
                    "send task_accepted",
                    "record wake_attempt",
                    "persist active waking gen=3 past=taken_back",
                    "start wake 1",
                    "read files",
                ],
            ),
        ],
    );
    assert_eq!(h.sent(), [json!({"type":"task_accepted","task_id":OTHER,"protocol_version":1})]);
    assert_eq!(h.state.held_task_id(), Some(OTHER));
}

/// Reconnects while holding TASK, which the hub says is still ours, and
/// settles it.
fn reconnect_and_settle(h: &mut Harness) {
    h.disconnect(None, None);
    h.tick(1_000);
    h.identify();
    assert_eq!(h.sent_types(), ["task_recovering"]);
    h.frame(json!({"type":"task_continue","task_id":TASK,"generation":3}));
    assert_eq!(h.sent_types(), ["task_accepted"], "nothing for the other task while busy");
    settle_task(h);
}

#[test]
fn on_the_newest_hub_a_task_pushed_while_busy_before_a_reconnect_is_failed_back_once_we_are_free() {
    let mut h = busy_with_a_push(newer_hub_assign(OTHER, 7));
    reconnect_and_settle(&mut h);
    assert_eq!(
        h.steps(),
        ["persist idle past=settled", "record report_settled", "remove files", "send task_failed"]
    );
    assert_eq!(
        h.sent(),
        [json!({"type":"task_failed","task_id":OTHER,"generation":7,
                "reason":"busy: the sidecar was working on another task",
                "error":"busy: the sidecar was working on another task","protocol_version":1})]
    );
    transcript(
        &mut h,
        vec![
            (Step::Frame(json!({"type":"task_ack","task_id":OTHER,"status":"retried"})), &[]),
            // Once.
            (Step::Tick(2_000), &[]),
        ],
    );
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn on_the_older_hub_nothing_is_sent_for_a_task_pushed_while_busy_before_a_reconnect() {
    let mut h = busy_with_a_push(older_hub_assign(OTHER, 7));
    reconnect_and_settle(&mut h);
    assert_eq!(
        h.steps(),
        ["persist idle past=settled", "record report_settled", "remove files"],
        "task_failed would crash cbf9c20's queue"
    );
    transcript(&mut h, vec![(Step::Tick(2_000), &[])]);
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn tasks_pushed_while_busy_are_taken_one_at_a_time() {
    let mut h = busy_with_a_push(newer_hub_assign(OTHER, 7));
    h.frame(newer_hub_assign(THIRD, 2));
    assert_eq!(h.steps(), ["record task_refused"]);
    settle_task(&mut h);
    assert_eq!(h.steps(), TAKEN_AFTER_SETTLING);
    assert_eq!(h.state.held_task_id(), Some(OTHER));
    woken(&mut h, OTHER);
    finished(&mut h, OTHER);
    h.frame(json!({"type":"task_ack","task_id":OTHER,"status":"complete"}));
    assert_eq!(h.sent(), [json!({"type":"task_accepted","task_id":THIRD,"protocol_version":1})]);
    assert_eq!(started_wake(&h).map(|w| (w.task_id, w.generation)), Some((THIRD.to_string(), 2)));
}

#[test]
fn a_later_push_of_the_same_task_while_busy_replaces_the_earlier_one() {
    let mut h = busy_with_a_push(newer_hub_assign(OTHER, 5));
    transcript(&mut h, vec![(Step::Frame(newer_hub_assign(OTHER, 7)), &["record task_refused"])]);
    settle_task(&mut h);
    assert_eq!(h.steps(), TAKEN_AFTER_SETTLING);
    // Taken once.
    transcript(&mut h, vec![(Step::Tick(100), &[])]);
}

#[test]
fn a_task_pushed_while_busy_then_cancelled_is_not_taken() {
    let mut h = busy_with_a_push(newer_hub_assign(OTHER, 7));
    transcript(
        &mut h,
        vec![
            (Step::Frame(json!({"type":"task_cancelled","task_id":OTHER,"timestamp":1})), &[]),
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
            // Settled, and nothing is taken after it.
            (ack("complete"), &["persist idle past=settled", "record report_settled", "remove files"]),
        ],
    );
    assert!(h.state.held_task_id().is_none());
}

/// A busy hand-back that the hub rate-limits is sent again after the delay
/// (the withdrawal of out-of-date reports touches only let-go tasks and
/// older generations); once the hub pushes that task again under a newer
/// generation, the held-back hand-back is out of date and never sent (the
/// state fuzzer's finding).
#[test]
fn a_rate_limited_busy_hand_back_is_resent_unless_the_task_is_pushed_again() {
    for pushed_again in [false, true] {
        let mut h = busy_with_a_push(newer_hub_assign(OTHER, 7));
        reconnect_and_settle(&mut h);
        assert_eq!(h.sent_types(), ["task_failed"]);
        // The held task's task_accepted answered: the hand-back is the
        // oldest frame in flight, the one the hub drops.
        h.frame(json!({"type":"task_ack","task_id":TASK,"status":"accepted"}));
        h.at(2_000).frame(json!({"type":"rate_limited","retry_after_ms":250,"tier":"t"}));
        if pushed_again {
            h.at(2_100).frame(newer_hub_assign(OTHER, 9));
            assert_eq!(h.state.held_task_id(), Some(OTHER));
        }
        h.tick(2_250);
        let failed: Vec<Value> = h.sent().into_iter().filter(|f| f["type"] == "task_failed").collect();
        if pushed_again {
            assert!(failed.is_empty(), "{failed:?}");
        } else {
            assert_eq!(failed.len(), 1, "{:?}", h.sent());
            assert_eq!(
                (failed[0]["task_id"].as_str(), failed[0]["generation"].as_u64()),
                (Some(OTHER), Some(7))
            );
        }
    }
}
