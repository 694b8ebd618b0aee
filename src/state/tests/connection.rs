//! The connection: identify, heartbeat, backoff, cooldowns.

use super::*;

#[test]
fn identify_carries_exactly_the_protocol_fields() {
    let mut h = Harness::new();
    h.connected();
    assert_eq!(h.steps(), ["record connected", "send identify"]);
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
    h.input(Input::Event(Event::Hub(HubEvent::Connected { conn_id: old })));
    assert!(h.sent().is_empty());
    h.input(Input::Event(Event::Hub(HubEvent::Disconnected {
        conn_id: old,
        reason: "x".into(),
        close_code: None,
        close_reason: None,
    })));
    assert!(h.fx.iter().all(|e| !matches!(e, Effect::Record { event: LifecycleEvent::Disconnected, .. })));
}

#[test]
fn heartbeat_pings_on_schedule_and_a_missing_pong_drops_the_connection() {
    let mut h = Harness::with(with_heartbeat(ms(1_000)), QueueFile::default());
    h.identify();
    assert_eq!(h.deadline_ms(), Some(1_000));
    h.tick(999);
    assert!(h.sent().is_empty());
    h.tick(1_000);
    assert_eq!(h.sent_types(), ["ping"]);
    assert_eq!(h.deadline_ms(), Some(1_500), "pong deadline");
    h.at(1_200).frame(json!({"type":"pong","timestamp":1}));
    assert_eq!(h.deadline_ms(), Some(2_000), "next ping");
    h.tick(2_000);
    assert_eq!(h.sent_types(), ["ping"]);
    // Half-open: no pong. Detected within interval + timeout of the last pong.
    h.tick(2_499);
    assert!(!h.has(|e| matches!(e, Effect::Close { .. })));
    h.tick(2_500);
    assert!(h.has(|e| matches!(e, Effect::Close { .. })));
    assert!(h.deadline_ms().unwrap() <= 2_600, "reconnect is scheduled");
}

#[test]
fn identify_that_is_never_answered_times_out() {
    let mut h = Harness::new();
    h.connected();
    h.tick(2_000);
    assert!(h.has(|e| matches!(e, Effect::Close { .. })));
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
    h.at(10).disconnect(Some(1008), Some("too many violations, retry in 30 s"));
    assert!(h.deadline_ms().unwrap() >= 30_010);
}
