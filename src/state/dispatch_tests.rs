//! The dispatch and the connection: one task walked through every stage,
//! identify, heartbeat, backoff, cooldowns, pacing of frames the hub
//! rate-limits or does not know, shutdown and restart.

use super::*;

#[test]
fn identify_carries_exactly_the_protocol_fields() {
    let mut h = Harness::new();
    transcript(&mut h, vec![(Step::Connected, &["record connected", "send identify"])]);
    let identify = &h.sent()[0];
    assert_eq!(
        identify,
        &json!({"type":"identify","agent_id":"a1","token":"s3cret-token","name":"a1","status":"idle",
                "capabilities":["code"],"client_type":"sidecar","protocol_version":1})
    );
}

#[test]
fn reconnect_backoff_doubles_is_capped_and_resets_once_identified() {
    let mut h = Harness::new();
    let mut now = 0;
    // (step) for attempts 0..: 100, 200, 400, 800, 1600, 1600
    for step in [100u64, 200, 400, 800, 1_600, 1_600] {
        h.at(now);
        h.disconnect(None, None);
        let due = h.deadline_ms().unwrap() - now;
        assert!(due >= step / 2 && due <= step, "delay {due} outside [{}, {step}]", step / 2);
        // Nothing happens before the deadline...
        h.tick(now + due - 1);
        assert!(connect_id(&h.fx).is_none());
        // ...and a new connection starts at it.
        now += due;
        h.tick(now);
        assert!(connect_id(&h.fx).is_some(), "reconnects at the deadline");
    }
    h.identify();
    h.disconnect(None, None);
    assert!(h.deadline_ms().unwrap() - now <= 100, "backoff is reset by identified");
}

#[test]
fn stale_connection_events_are_ignored() {
    let mut h = Harness::new();
    let old = h.conn;
    h.disconnect(None, None);
    h.tick(1_000);
    assert_ne!(h.conn, old);
    let dropped =
        HubEvent::Disconnected { conn_id: old, reason: "x".into(), close_code: None, close_reason: None };
    transcript(
        &mut h,
        vec![
            (Step::Input(Input::Event(Event::Hub(HubEvent::Connected { conn_id: old }))), &[]),
            (Step::Input(Input::Event(Event::Hub(dropped))), &[]),
        ],
    );
}

#[test]
fn heartbeat_pings_on_schedule_and_a_missing_pong_drops_the_connection() {
    let mut h = Harness::with(with_heartbeat(ms(1_000)), QueueFile::default());
    h.identify();
    transcript(
        &mut h,
        vec![
            (Step::Deadline(Some(1_000)), &[]),
            (Step::Tick(999), &[]),
            (Step::Tick(1_000), &["send ping"]),
            // The pong deadline.
            (Step::Deadline(Some(1_500)), &[]),
            (at(1_200, Step::Frame(json!({"type":"pong","timestamp":1}))), &[]),
            // The next ping.
            (Step::Deadline(Some(2_000)), &[]),
            (Step::Tick(2_000), &["send ping"]),
            // Half-open: no pong. Detected within interval + timeout of the
            // last pong.
            (Step::Tick(2_499), &[]),
            (Step::Tick(2_500), &["close", "record disconnected"]),
        ],
    );
    assert!(h.deadline_ms().unwrap() <= 2_600, "reconnect is scheduled");
}

#[test]
fn identify_that_is_never_answered_times_out() {
    let mut h = Harness::new();
    transcript(
        &mut h,
        vec![
            (Step::Connected, &["record connected", "send identify"]),
            (Step::Tick(1_999), &[]),
            (Step::Tick(2_000), &["close", "record disconnected"]),
        ],
    );
}

#[test]
fn an_auth_error_closes_and_backs_off_without_spinning() {
    let mut h = Harness::new();
    let mut attempts = 0;
    let mut now = 0;
    while now < 3_000 {
        h.at(now);
        h.connected();
        h.frame(json!({"type":"error","error":"invalid_token"}));
        assert!(h.has(|e| matches!(e, Effect::Close { .. })));
        assert!(h.has(|e| matches!(e, Effect::Record { event: LifecycleEvent::AuthFailed, .. })));
        attempts += 1;
        now = h.deadline_ms().unwrap();
        h.tick(now);
    }
    // Steps 100,200,400,800,1600,1600: at least 50+100+200+400+800 ms pass
    // before the sixth attempt, so at most 6 fit in 3 s.
    assert!(attempts <= 6, "{attempts} attempts in 3 s");
}

#[test]
fn a_close_with_a_cooldown_is_honoured() {
    let mut h = Harness::new();
    h.identify();
    transcript(
        &mut h,
        vec![(
            at(10, Step::Disconnected(Some(1008), Some("too many violations, retry in 30 s"))),
            &["record disconnected"],
        )],
    );
    assert!(h.deadline_ms().unwrap() >= 30_010);
}

/// The walk of docs/architecture.md: one task from its push to
/// `task_complete` and the hub's answer, each input with its whole batch.
#[test]
fn one_task_from_push_to_settled_report_as_a_transcript() {
    let mut h = Harness::new();
    h.identify();
    let assign =
        json!({"type":"task_assign","task_id":TASK,"description":"do it","metadata":{},"generation":3});
    transcript(
        &mut h,
        vec![
            // intake.rs: persisted before it is acknowledged, then woken.
            (
                Step::Frame(assign),
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
            (Step::Frame(json!({"type":"task_ack","task_id":TASK,"status":"accepted"})), &[]),
            // waking.rs: the started command is recorded before it runs.
            (Step::WakeStarted(1), &["persist active waking gen=3", "release wake 1"]),
            (
                Step::WakeDone(1, WakeStatus::Success),
                &["record wake_finished", "persist active waking_confirmation gen=3", "read files"],
            ),
            // working.rs: the agent confirms, then its result is the outcome.
            (Step::Files(true, ReadResult::Missing), &["record confirmed", "persist active working gen=3"]),
            // reporting.rs: persisted before it is sent.
            (
                Step::Files(true, success()),
                &[
                    "record result_received",
                    "persist active working gen=3 report=complete",
                    "record report_sent",
                    "send task_complete",
                ],
            ),
            // Settled: recorded as such before its files go (past.rs).
            (
                Step::Frame(json!({"type":"task_ack","task_id":TASK,"status":"complete"})),
                &["persist idle past=settled", "record report_settled", "remove files"],
            ),
        ],
    );
}

// ----- shutdown, restart, pacing -------------------------------------------

#[test]
fn restart_sidecar_persists_and_exits() {
    let mut h = Harness::new();
    h.working(3);
    transcript(
        &mut h,
        vec![(
            Step::Frame(json!({"type":"restart_sidecar","reason":"update"})),
            &["record shutdown", "persist active working gen=3", "close", "exit"],
        )],
    );
    assert_eq!(h.state.next_deadline(), None);
}

#[test]
fn restart_sidecar_with_an_update_command_starts_it_and_stays() {
    let mut h = Harness::with(Settings { has_update_command: true, ..settings() }, QueueFile::default());
    h.working(3);
    transcript(
        &mut h,
        vec![(
            Step::Frame(json!({"type":"restart_sidecar","reason":"update"})),
            &["record update_started", "start update"],
        )],
    );
    assert!(h.state.next_deadline().is_some(), "still running: the heartbeat is due");
    // If the command cannot start, the hub's restart happens the old way.
    transcript(
        &mut h,
        vec![(
            Step::Input(Input::UpdateFailed { error: "sh: not found".into() }),
            &["record shutdown", "persist active working gen=3", "close", "exit"],
        )],
    );
}

/// Found by the state fuzzer: after `Exit`, the files of a read still in
/// flight started a wake next to the cancelled one (whose outcome had not
/// come). After `Exit` the core does nothing.
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
    transcript(
        &mut h,
        vec![
            // Files first.
            (
                Step::Assign(TASK, 4),
                &[
                    "record task_accepted",
                    "persist active accepted gen=4",
                    "send task_accepted",
                    "read files",
                ],
            ),
            (
                Step::Input(Input::Event(Event::Shutdown)),
                &["record shutdown", "persist active accepted gen=4", "close", "exit"],
            ),
            (Step::Files(false, ReadResult::Missing), &[]),
            (Step::Input(Input::Event(Event::Hub(HubEvent::Connected { conn_id: 9 }))), &[]),
            (Step::Tick(0), &[]),
            (Step::Deadline(None), &[]),
        ],
    );
}

#[test]
fn retry_in_reasons_parse() {
    assert_eq!(parse_retry_in("retry in 30 s"), Some(Duration::from_secs(30)));
    assert_eq!(parse_retry_in("violations; retry in 2.5s"), Some(Duration::from_millis(2_500)));
    assert_eq!(parse_retry_in("bye"), None);
}

#[test]
fn a_rate_limited_ping_is_sent_again_later_not_taken_for_a_dead_hub() {
    let mut h = Harness::with(with_heartbeat(ms(1_000)), QueueFile::default());
    h.identify();
    transcript(
        &mut h,
        vec![
            (Step::Tick(1_000), &["send ping"]),
            (
                at(1_010, Step::Frame(json!({"type":"rate_limited","retry_after_ms":2_000,"tier":"light"}))),
                &[],
            ),
            // No pong is due for a dropped ping.
            (Step::Tick(1_500), &[]),
            (Step::Deadline(Some(3_010)), &[]),
            (Step::Tick(3_010), &["send ping"]),
        ],
    );
}

#[test]
fn accepted_wake_result_and_complete_denied_in_a_row_reach_the_hub_in_order_but_a_stale_wake_result() {
    let mut h = Harness::with(Settings { send_wake_result: true, ..settings() }, QueueFile::default());
    h.identify();
    h.assign(TASK, 3);
    h.files(true, ReadResult::Missing);
    h.wake_done(1, WakeStatus::Success);
    h.files(true, success());
    let denied = || at(10, Step::Frame(json!({"type":"rate_limited","retry_after_ms":1000,"tier":"normal"})));
    transcript(
        &mut h,
        vec![
            (denied(), &[]),
            (denied(), &[]),
            (denied(), &[]),
            (Step::Tick(1_009), &[]),
            // The task has its outcome: its wake_result says nothing more
            // and is dropped (docs/protocol.md 7.2).
            (Step::Tick(1_010), &["send task_accepted", "send task_complete"]),
            (ack("accepted"), &[]),
            // Settled.
            (ack("complete"), &["persist idle past=settled", "record report_settled", "remove files"]),
        ],
    );
    assert_eq!(h.state.held_task_id(), None);
}

#[test]
fn a_frame_type_the_hub_does_not_know_is_not_sent_again_on_that_connection() {
    // The older hub answers wake_result with unknown_message_type.
    let mut h = Harness::with(Settings { send_wake_result: true, ..settings() }, QueueFile::default());
    h.identify();
    h.assign(TASK, 3);
    let failed = WakeStatus::Failed { exit_code: Some(1) };
    transcript(
        &mut h,
        vec![
            (Step::WakeDone(1, failed.clone()), &["record wake_finished", "send wake_result"]),
            (Step::Frame(json!({"type":"error","error":"unknown_message_type"})), &[]),
            (Step::Tick(100), &["record wake_attempt", "persist active waking gen=3", "start wake 2"]),
            // Not again on this connection.
            (Step::WakeDone(2, failed.clone()), &["record wake_finished"]),
            // A new connection may be another hub: it is tried again there.
            (Step::Disconnected(None, None), &["record disconnected"]),
            (
                Step::Tick(1_000),
                &[
                    "connect",
                    "record connecting",
                    "record wake_attempt",
                    "persist active waking gen=3",
                    "start wake 3",
                ],
            ),
            (Step::Connected, &["record connected", "send identify"]),
            (
                Step::Frame(json!({"type":"identified","agent_id":"a1"})),
                &["record identified", "record recovering_sent", "send task_recovering"],
            ),
            (resume(3), &["record task_continued", "persist active waking gen=3", "send task_accepted"]),
            (Step::Tick(1_300), &[]),
            (Step::WakeDone(3, failed), &["record wake_finished", "send wake_result"]),
        ],
    );

    // The newest hub names the type it does not know.
    let mut h = Harness::with(Settings { send_state_report: true, ..settings() }, node_queue("working"));
    h.identify();
    assert_eq!(h.sent_types(), ["task_recovering", "state_report"]);
    let refused = json!({"type":"error","error":"validation_failed","message_type":"state_report",
                         "errors":[{"field":"type","error":"unknown_message_type"}]});
    transcript(
        &mut h,
        vec![
            (Step::Frame(refused), &[]),
            // The refusal settles nothing.
            (Step::Frame(json!({"type":"task_reassign","task_id":"task-other"})), &[]),
        ],
    );
    assert_eq!(h.state.held_task_id(), Some(TASK));
}
