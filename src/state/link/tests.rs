use super::*;
use crate::retry::JitterStrategy;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn timers() -> LinkTimers {
    LinkTimers {
        heartbeat_interval: ms(1_000),
        pong_timeout: ms(300),
        identify_timeout: ms(500),
        backoff: BackoffPolicy { initial: ms(100), max: ms(400), jitter: JitterStrategy::Equal },
        reply_timeout: ms(5_000),
    }
}

/// A link identified on its first connection at `t0`.
fn ready(t0: Instant) -> Link {
    let mut link = Link::new(timers(), 1, t0);
    let mut fx = Vec::new();
    assert_eq!(link.tick(t0, &mut fx), None);
    let conn_id = link.live_conn_id().expect("connecting");
    assert!(link.on_connected(conn_id, t0));
    assert!(link.on_identified(t0));
    link
}

fn entry(kind: ReplyKind, generation: u64) -> Awaiting {
    Awaiting { kind, task_id: "t".into(), generation }
}

fn sent(fx: &[Effect]) -> Vec<&str> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Send { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn connects_at_once_then_identifies_within_the_timeout() {
    let t0 = Instant::now();
    let mut link = Link::new(timers(), 1, t0);
    assert_eq!(link.deadline(), Some(t0));
    let mut fx = Vec::new();
    link.tick(t0, &mut fx);
    let conn_id = link.live_conn_id().unwrap();
    assert!(matches!(fx[0], Effect::Connect { conn_id: c } if c == conn_id));
    assert!(!link.on_connected(conn_id + 1, t0), "not the connection being opened");
    assert!(link.on_connected(conn_id, t0));
    assert!(link.is_identifying());
    assert_eq!(link.deadline(), Some(t0 + ms(500)));
    assert_eq!(link.tick(t0 + ms(499), &mut fx), None);
    assert_eq!(link.tick(t0 + ms(500), &mut fx), Some(Timeout::Identify));
}

#[test]
fn answers_are_matched_to_the_oldest_frame_of_their_kind() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    let mut fx = Vec::new();
    link.send("task_complete", "a".into(), Some(entry(ReplyKind::Complete, 1)), &mut fx);
    link.send("wake_result", "b".into(), Some(entry(ReplyKind::Unhandled, 0)), &mut fx);
    link.send("task_complete", "c".into(), Some(entry(ReplyKind::Complete, 2)), &mut fx);
    assert_eq!(link.find_awaiting(ReplyKind::Complete), Some(&entry(ReplyKind::Complete, 1)));
    assert_eq!(link.take_awaiting(&[ReplyKind::Complete]), Some(entry(ReplyKind::Complete, 1)));
    assert_eq!(link.take_awaiting(&[ReplyKind::Complete]), Some(entry(ReplyKind::Complete, 2)));
    assert_eq!(link.take_awaiting(&[ReplyKind::Complete]), None);
    assert_eq!(
        link.take_awaiting(&[ReplyKind::Failed, ReplyKind::Unhandled]),
        Some(entry(ReplyKind::Unhandled, 0))
    );
}

#[test]
fn a_lost_connection_forgets_what_it_awaited_and_backs_off_with_a_cooldown() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    let mut fx = Vec::new();
    link.send("task_complete", "a".into(), Some(entry(ReplyKind::Complete, 1)), &mut fx);
    let delay = link.on_lost(Some(ms(5_000)), t0);
    assert_eq!(delay, ms(5_000));
    assert_eq!(link.live_conn_id(), None);
    assert_eq!(link.take_awaiting(&[ReplyKind::Complete]), None);
    assert_eq!(link.deadline(), Some(t0 + ms(5_000)));
    let delay = link.on_lost(None, t0);
    assert!(delay >= ms(100) && delay <= ms(200), "second step of the backoff: {delay:?}");
}

#[test]
fn a_rate_limited_frame_is_resent_after_the_delay_with_its_correlation() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    let mut fx = Vec::new();
    link.send("task_complete", "report".into(), Some(entry(ReplyKind::Complete, 3)), &mut fx);
    link.on_rate_limited(ms(250), t0);
    assert_eq!(link.find_awaiting(ReplyKind::Complete), None, "a dropped frame awaits nothing");
    assert_eq!(link.deadline(), Some(t0 + ms(250)));
    fx.clear();
    link.tick(t0 + ms(249), &mut fx);
    assert!(sent(&fx).is_empty());
    link.tick(t0 + ms(250), &mut fx);
    assert_eq!(sent(&fx), ["report"]);
    assert_eq!(link.find_awaiting(ReplyKind::Complete), Some(&entry(ReplyKind::Complete, 3)));
}

#[test]
fn a_rate_limited_ping_moves_the_next_ping_instead_of_failing_the_link() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    let mut fx = Vec::new();
    link.tick(t0 + ms(1_000), &mut fx);
    assert_eq!(sent(&fx).len(), 1, "ping");
    assert_eq!(link.deadline(), Some(t0 + ms(1_300)), "pong due");
    link.on_rate_limited(ms(2_000), t0 + ms(1_010));
    assert_eq!(link.deadline(), Some(t0 + ms(3_010)));
    assert_eq!(link.tick(t0 + ms(1_300), &mut fx), None, "no pong is due");
}

#[test]
fn frames_denied_in_a_row_are_all_resent_in_their_order_after_the_delay() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    let mut fx = Vec::new();
    link.send("task_accepted", "accepted".into(), Some(entry(ReplyKind::Accepted, 3)), &mut fx);
    link.send("wake_result", "woken".into(), None, &mut fx);
    link.send("task_complete", "complete".into(), Some(entry(ReplyKind::Complete, 3)), &mut fx);
    assert_eq!(sent(&fx), ["accepted", "woken", "complete"]);
    for _ in 0..3 {
        link.on_rate_limited(ms(1_000), t0 + ms(10));
    }
    // Sent meanwhile: waits behind them.
    fx.clear();
    link.send("task_progress", "progress".into(), None, &mut fx);
    assert!(sent(&fx).is_empty(), "nothing overtakes a frame waiting to be resent");
    assert_eq!(link.deadline(), Some(t0 + ms(1_000)), "the heartbeat is due first");
    link.tick(t0 + ms(1_000), &mut fx);
    fx.clear();
    link.tick(t0 + ms(1_009), &mut fx);
    assert!(sent(&fx).is_empty());
    link.tick(t0 + ms(1_010), &mut fx);
    assert_eq!(sent(&fx), ["accepted", "woken", "complete", "progress"]);
    assert_eq!(link.take_awaiting(&[ReplyKind::Accepted]), Some(entry(ReplyKind::Accepted, 3)));
    assert_eq!(link.take_awaiting(&[ReplyKind::Complete]), Some(entry(ReplyKind::Complete, 3)));
}

#[test]
fn a_silent_frame_before_a_denied_one_is_resent_too_and_a_late_answer_cancels_a_resend() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    let mut fx = Vec::new();
    link.send("task_progress", "progress".into(), None, &mut fx);
    link.send("task_complete", "complete".into(), Some(entry(ReplyKind::Complete, 3)), &mut fx);
    link.send("task_accepted", "accepted".into(), Some(entry(ReplyKind::Accepted, 3)), &mut fx);
    // Which of progress and complete was dropped cannot be told: both go
    // again; accepted is still in flight.
    link.on_rate_limited(ms(500), t0);
    // The complete had been handled after all (the progress was the one
    // dropped): its answer takes it out of the resend queue.
    assert_eq!(link.take_awaiting(&[ReplyKind::Complete]), Some(entry(ReplyKind::Complete, 3)));
    fx.clear();
    link.tick(t0 + ms(500), &mut fx);
    assert_eq!(sent(&fx), ["progress"]);
    assert_eq!(link.take_awaiting(&[ReplyKind::Accepted]), Some(entry(ReplyKind::Accepted, 3)));
}

#[test]
fn an_answer_retires_the_silent_frames_sent_before_it() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    let mut fx = Vec::new();
    link.send("task_progress", "p1".into(), None, &mut fx);
    link.send("task_accepted", "accepted".into(), Some(entry(ReplyKind::Accepted, 3)), &mut fx);
    link.send("task_progress", "p2".into(), None, &mut fx);
    assert!(link.take_awaiting(&[ReplyKind::Accepted]).is_some());
    // Only p2 can be the frame a rate_limited now refers to.
    link.on_rate_limited(ms(100), t0);
    fx.clear();
    link.tick(t0 + ms(100), &mut fx);
    assert_eq!(sent(&fx), ["p2"]);
}

#[test]
fn a_rate_limited_ping_is_dropped_while_the_frames_before_it_are_resent() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    let mut fx = Vec::new();
    link.send("task_progress", "p1".into(), None, &mut fx);
    link.tick(t0 + ms(1_000), &mut fx);
    link.on_rate_limited(ms(200), t0 + ms(1_000));
    assert_eq!(link.deadline(), Some(t0 + ms(1_200)), "no pong due; resend and ping at 1200");
    fx.clear();
    link.tick(t0 + ms(1_200), &mut fx);
    let frames = sent(&fx);
    assert_eq!(frames.len(), 2, "{fx:?}");
    assert!(frames.contains(&"p1"));
    assert!(frames.iter().any(|f| f.contains("ping")), "one ping, the dropped one is not resent");
}

#[test]
fn a_huge_retry_after_is_capped_so_pings_and_resends_go_on() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    let mut fx = Vec::new();
    link.send("task_complete", "report".into(), Some(entry(ReplyKind::Complete, 3)), &mut fx);
    link.on_rate_limited(Duration::from_millis(u64::MAX), t0);
    let resend_at = t0 + MAX_RETRY_AFTER;
    // Pings continue meanwhile; the resend is due at the cap, not in 584 million years.
    let mut at = t0;
    let mut resent = false;
    while at <= resend_at {
        fx.clear();
        assert_eq!(link.tick(at, &mut fx), None, "a timeout at {:?}", at - t0);
        resent |= sent(&fx).contains(&"report");
        // Answer every ping so the link stays up.
        if sent(&fx).iter().any(|t| t.contains("ping")) {
            link.on_pong();
        }
        at = link.deadline().expect("a deadline").max(at + ms(1));
    }
    assert!(resent, "the denied frame was resent by the cap");
}

#[test]
fn a_connection_that_never_reports_is_given_up_after_twice_the_connect_timeout() {
    // The socket thread bounds its own attempt by connect_timeout (the
    // identify timeout); one that reports nothing twice that long is hung
    // or gone, and waiting for it for ever would never reconnect.
    let t0 = Instant::now();
    let mut link = Link::new(timers(), 1, t0);
    let mut fx = Vec::new();
    assert_eq!(link.tick(t0, &mut fx), None);
    assert!(link.live_conn_id().is_some());
    assert_eq!(link.deadline(), Some(t0 + ms(1_000)));
    assert_eq!(link.tick(t0 + ms(999), &mut fx), None);
    assert_eq!(link.tick(t0 + ms(1_000), &mut fx), Some(Timeout::Connect));
}
