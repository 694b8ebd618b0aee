use super::*;
use crate::retry::{BackoffPolicy, JitterStrategy};
use crate::state::{TaskStatus, WakeStatus};
use serde_json::Value;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn timers() -> LinkSettings {
    LinkSettings {
        heartbeat_interval: ms(1_000),
        pong_timeout: ms(300),
        connect_timeout: ms(500),
        backoff: BackoffPolicy { initial: ms(100), max: ms(400), jitter: JitterStrategy::Equal },
        reply_timeout: ms(5_000),
        // 10 normal tokens, one every 100 ms; 20 light ones.
        rate_limits: RateLimits { light: 20, normal: 10, heavy: 2, window: ms(1_000) },
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

/// The model's time for `n` normal tokens (0.5 % slower than the hub's
/// 100 ms each).
fn token(n: u32) -> Duration {
    Duration::from_micros(100_500) * n
}

fn entry(kind: ReplyKind, generation: u64) -> Awaiting {
    Awaiting { kind, task_id: "t".into(), generation }
}

/// A frame of the kind named `kind` that [`sent`] shows as `label`.
fn out(kind: &str, label: impl Into<String>) -> Outgoing {
    let label = label.into();
    match OutKind::parse(kind).expect("a kind we send") {
        OutKind::TaskProgress => {
            Outgoing::TaskProgress { task_id: "t".into(), progress: 0, message: Some(label) }
        }
        OutKind::TaskAccepted => Outgoing::TaskAccepted { task_id: label },
        OutKind::TaskComplete => {
            Outgoing::TaskComplete { task_id: label, generation: 0, result: Value::Null }
        }
        OutKind::WakeResult => {
            Outgoing::WakeResult { task_id: label, status: WakeStatus::Success, attempt: 1, error: None }
        }
        OutKind::TaskRecovering => Outgoing::TaskRecovering {
            task_id: label,
            description: String::new(),
            metadata: Value::Null,
            last_status: TaskStatus::Working,
        },
        other => panic!("no test frame of kind {other}"),
    }
}

/// The labels (see [`out`]) of the frames sent; a ping is `ping`.
fn sent(fx: &[Effect]) -> Vec<&str> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Send { frame, .. } => Some(match frame {
                Outgoing::TaskProgress { message, .. } => message.as_deref().unwrap_or(""),
                Outgoing::TaskAccepted { task_id }
                | Outgoing::TaskComplete { task_id, .. }
                | Outgoing::WakeResult { task_id, .. }
                | Outgoing::TaskRecovering { task_id, .. } => task_id.as_str(),
                Outgoing::Ping => "ping",
                _ => "?",
            }),
            _ => None,
        })
        .collect()
}

/// An input of a link transcript (times in ms after `t0`).
enum L {
    /// Send a frame of this kind, labelled so (see [`out`]), awaiting an
    /// answer of this kind about generation 3 (or nothing).
    Send(&'static str, &'static str, Option<ReplyKind>),
    /// The hub's `rate_limited` (its `retry_after_ms` and tier) at this time.
    Denied(u64, &'static str, u64),
    /// A tick at this time.
    Tick(u64),
    /// The hub answers the oldest frame of this kind.
    Answer(ReplyKind),
    /// Not an input: the link's next deadline must be this.
    Deadline(u64),
}

/// Runs `rows` on `link`, each input with the labels of the frames it
/// must send (a ping is `ping`; a tick's timeout is `timeout <why>`): the
/// link's own transcripts, beside the whole core's (`state/tests/mod.rs`).
fn link_transcript(link: &mut Link, t0: Instant, rows: Vec<(L, &[&str])>) {
    for (number, (input, expected)) in rows.into_iter().enumerate() {
        let mut fx = Vec::new();
        let mut timeout = None;
        match input {
            L::Send(kind, label, awaiting) => {
                link.send(out(kind, label), awaiting.map(|kind| entry(kind, 3)), &mut fx)
            }
            L::Denied(retry_after, tier, at) => {
                link.on_rate_limited(ms(retry_after), Some(tier), t0 + ms(at), &mut fx)
            }
            L::Tick(at) => timeout = link.tick(t0 + ms(at), &mut fx),
            L::Answer(kind) => {
                assert!(link.take_awaiting(&[kind]).is_some(), "row {}: nothing awaited", number + 1)
            }
            L::Deadline(at) => {
                assert_eq!(link.deadline(), Some(t0 + ms(at)), "row {}: the deadline", number + 1)
            }
        }
        let mut batch: Vec<String> = sent(&fx).into_iter().map(str::to_owned).collect();
        batch.extend(timeout.map(|why| format!("timeout {why:?}")));
        assert_eq!(batch, expected, "row {} of the link transcript", number + 1);
    }
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
    link.send(out("task_complete", "a"), Some(entry(ReplyKind::Complete, 1)), &mut fx);
    link.send(out("wake_result", "b"), Some(entry(ReplyKind::Unhandled, 0)), &mut fx);
    link.send(out("task_complete", "c"), Some(entry(ReplyKind::Complete, 2)), &mut fx);
    assert_eq!(link.find_awaiting(ReplyKind::Complete), Some(&entry(ReplyKind::Complete, 1)));
    assert_eq!(link.take_awaiting(&[ReplyKind::Complete]), Some(entry(ReplyKind::Complete, 1)));
    assert_eq!(
        link.take_awaiting(&[ReplyKind::Failed, ReplyKind::Unhandled]),
        Some(entry(ReplyKind::Unhandled, 0))
    );
    assert_eq!(link.take_awaiting(&[ReplyKind::Complete]), Some(entry(ReplyKind::Complete, 2)));
    assert_eq!(link.take_awaiting(&[ReplyKind::Complete]), None);
    // The newer hub answers no wake_result: the answer to a later frame
    // says it was handled.
    link.send(out("wake_result", "d"), Some(entry(ReplyKind::Unhandled, 0)), &mut fx);
    link.send(out("task_complete", "e"), Some(entry(ReplyKind::Complete, 3)), &mut fx);
    assert_eq!(link.take_awaiting(&[ReplyKind::Complete]), Some(entry(ReplyKind::Complete, 3)));
    assert_eq!(link.take_awaiting(&[ReplyKind::Unhandled]), None);
}

#[test]
fn a_warning_corrects_the_model_for_the_frames_sent_after_the_one_it_speaks_of() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    link.hub_rate_limits();
    let mut fx = Vec::new();
    // The model thinks 10 - 3 = 7 are left; the hub says 2 were left after
    // the first of the three, so 1 is, and one more frame may go.
    link.send(out("task_accepted", "a"), Some(entry(ReplyKind::Accepted, 1)), &mut fx);
    link.send(out("wake_result", "w"), Some(entry(ReplyKind::Unhandled, 0)), &mut fx);
    link.send(out("task_complete", "c"), Some(entry(ReplyKind::Complete, 1)), &mut fx);
    link.on_rate_limit_warning(Some("normal"), Some(3), Some(10), &mut fx);
    assert_eq!(link.budget.tokens(Tier::Normal, t0), 1);
    fx.clear();
    link.send(out("task_accepted", "b"), Some(entry(ReplyKind::Accepted, 2)), &mut fx);
    link.send(out("task_accepted", "b2"), Some(entry(ReplyKind::Accepted, 3)), &mut fx);
    assert_eq!(sent(&fx), ["b"]);
    // The hub may hold a fraction more than it says, never less: a model
    // with most of a token more comes down to the whole number.
    let mut link = ready(t0);
    link.hub_rate_limits();
    for _ in 0..9 {
        link.send(out("task_accepted", "x"), Some(entry(ReplyKind::Accepted, 1)), &mut fx);
        link.take_awaiting(&[ReplyKind::Accepted]);
    }
    let later = t0 + ms(90);
    link.set_now(later);
    assert_eq!(link.budget.tokens(Tier::Normal, later), 1, "1.9 in the model");
    link.on_rate_limit_warning(Some("normal"), Some(1), Some(10), &mut fx);
    assert_eq!(link.budget.ready_at(Tier::Normal), later, "exactly 1 now");
}

#[test]
fn a_lost_connection_forgets_what_it_awaited_and_backs_off_with_a_cooldown() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    let mut fx = Vec::new();
    link.send(out("task_complete", "a"), Some(entry(ReplyKind::Complete, 1)), &mut fx);
    let delay = link.on_lost(Some(ms(5_000)), t0, &mut fx);
    assert_eq!(delay, ms(5_000));
    assert_eq!(link.live_conn_id(), None);
    assert_eq!(link.take_awaiting(&[ReplyKind::Complete]), None);
    assert_eq!(link.deadline(), Some(t0 + ms(5_000)));
    let delay = link.on_lost(None, t0, &mut fx);
    assert!(delay >= ms(100) && delay <= ms(200), "second step of the backoff: {delay:?}");
}

#[test]
fn a_rate_limited_frame_is_resent_after_the_delay_with_its_correlation() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    link_transcript(
        &mut link,
        t0,
        vec![
            (L::Send("task_complete", "report", Some(ReplyKind::Complete)), &["report"]),
            (L::Denied(250, "normal", 0), &[]),
        ],
    );
    assert_eq!(link.find_awaiting(ReplyKind::Complete), None, "a dropped frame awaits nothing");
    link_transcript(
        &mut link,
        t0,
        vec![(L::Deadline(250), &[]), (L::Tick(249), &[]), (L::Tick(250), &["report"])],
    );
    assert_eq!(link.find_awaiting(ReplyKind::Complete), Some(&entry(ReplyKind::Complete, 3)));
}

#[test]
fn a_rate_limited_ping_moves_the_next_ping_instead_of_failing_the_link() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    link_transcript(
        &mut link,
        t0,
        vec![
            (L::Tick(1_000), &["ping"]),
            // The pong is due.
            (L::Deadline(1_300), &[]),
            (L::Denied(2_000, "light", 1_010), &[]),
            (L::Deadline(3_010), &[]),
            // No pong is due.
            (L::Tick(1_300), &[]),
        ],
    );
}

#[test]
fn frames_denied_in_a_row_are_all_resent_in_their_order_after_the_delay() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    link_transcript(
        &mut link,
        t0,
        vec![
            (L::Send("task_accepted", "accepted", Some(ReplyKind::Accepted)), &["accepted"]),
            (L::Send("wake_result", "woken", None), &["woken"]),
            (L::Send("task_complete", "complete", Some(ReplyKind::Complete)), &["complete"]),
            (L::Denied(1_000, "normal", 10), &[]),
            (L::Denied(1_000, "normal", 10), &[]),
            (L::Denied(1_000, "normal", 10), &[]),
            // Sent meanwhile: nothing overtakes a frame waiting to be resent.
            (L::Send("task_progress", "progress", None), &[]),
            // The heartbeat is due first.
            (L::Deadline(1_000), &[]),
            (L::Tick(1_000), &["ping"]),
            (L::Tick(1_009), &[]),
            // What the hub answers first; the informational frames after.
            (L::Tick(1_010), &["accepted", "complete", "woken", "progress"]),
            (L::Answer(ReplyKind::Accepted), &[]),
            (L::Answer(ReplyKind::Complete), &[]),
        ],
    );
}

#[test]
fn a_silent_frame_before_a_denied_one_is_resent_too_and_a_late_answer_cancels_a_resend() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    link_transcript(
        &mut link,
        t0,
        vec![
            (L::Send("task_progress", "progress", None), &["progress"]),
            (L::Send("task_complete", "complete", Some(ReplyKind::Complete)), &["complete"]),
            (L::Send("task_accepted", "accepted", Some(ReplyKind::Accepted)), &["accepted"]),
            // Which of progress and complete was dropped cannot be told: both
            // go again; accepted is still in flight.
            (L::Denied(500, "normal", 0), &[]),
            // The complete had been handled after all (the progress was the
            // one dropped): its answer takes it out of the resend queue.
            (L::Answer(ReplyKind::Complete), &[]),
            (L::Tick(500), &["progress"]),
            (L::Answer(ReplyKind::Accepted), &[]),
        ],
    );
}

#[test]
fn an_answer_retires_the_silent_frames_sent_before_it() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    link_transcript(
        &mut link,
        t0,
        vec![
            (L::Send("task_progress", "p1", None), &["p1"]),
            (L::Send("task_accepted", "accepted", Some(ReplyKind::Accepted)), &["accepted"]),
            (L::Send("task_progress", "p2", None), &["p2"]),
            (L::Answer(ReplyKind::Accepted), &[]),
            // Only p2 can be the frame a rate_limited now refers to.
            (L::Denied(200, "normal", 0), &[]),
            (L::Tick(200), &["p2"]),
        ],
    );
}

#[test]
fn a_rate_limited_ping_is_dropped_while_the_frames_before_it_are_resent() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    let mut fx = Vec::new();
    link.send(out("task_progress", "p1"), None, &mut fx);
    link.tick(t0 + ms(1_000), &mut fx);
    // The hub names the tier: one denial for each.
    link.on_rate_limited(ms(200), Some("normal"), t0 + ms(1_000), &mut fx);
    link.on_rate_limited(ms(200), Some("light"), t0 + ms(1_000), &mut fx);
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
    link.send(out("task_complete", "report"), Some(entry(ReplyKind::Complete, 3)), &mut fx);
    link.on_rate_limited(Duration::from_millis(u64::MAX), None, t0, &mut fx);
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

fn progress(link: &mut Link, task_id: &str, text: &str, keepalive: bool, fx: &mut Vec<Effect>) {
    link.send_progress(task_id, out("task_progress", text), keepalive, fx);
}

#[test]
fn on_a_hub_that_rate_limits_frames_wait_for_a_token_in_order() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    link.hub_rate_limits();
    let mut fx = Vec::new();
    for i in 0..12 {
        link.send(out("task_accepted", format!("a{i}")), Some(entry(ReplyKind::Accepted, i)), &mut fx);
    }
    assert_eq!(sent(&fx).len(), 10, "the bucket holds 10");
    // The next token comes 100 ms after the bucket ran dry (and a guard).
    assert_eq!(link.deadline(), Some(t0 + token(1)));
    fx.clear();
    assert_eq!(link.tick(t0 + ms(100), &mut fx), None);
    assert!(sent(&fx).is_empty());
    link.tick(t0 + token(1), &mut fx);
    assert_eq!(sent(&fx), ["a10"]);
    assert_eq!(link.deadline(), Some(t0 + token(2)));
    fx.clear();
    link.tick(t0 + token(2), &mut fx);
    assert_eq!(sent(&fx), ["a11"]);
    // Nothing waits: the heartbeat is the next deadline.
    assert_eq!(link.deadline(), Some(t0 + ms(1_000)));
    // Pings have a bucket of their own and never wait behind task frames.
    for i in 0..10 {
        link.send(out("task_accepted", format!("b{i}")), Some(entry(ReplyKind::Accepted, i)), &mut fx);
    }
    fx.clear();
    link.tick(t0 + ms(1_000), &mut fx);
    assert!(sent(&fx)[0].contains("ping"), "{fx:?}");
}

#[test]
fn a_hub_that_has_not_shown_it_rate_limits_gets_every_frame_at_once() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    let mut fx = Vec::new();
    for i in 0..30 {
        link.send(out("task_accepted", format!("a{i}")), Some(entry(ReplyKind::Accepted, i)), &mut fx);
    }
    assert_eq!(sent(&fx).len(), 30);
    // The model counted them, down to an empty bucket (the hub denies what
    // it has no token for): once the hub shows it rate-limits, the next
    // frame waits for a token.
    link.hub_rate_limits();
    fx.clear();
    link.send(out("task_accepted", "late"), Some(entry(ReplyKind::Accepted, 99)), &mut fx);
    assert!(sent(&fx).is_empty());
    assert_eq!(link.deadline(), Some(t0 + token(1)));
    link.tick(t0 + token(1), &mut fx);
    assert_eq!(sent(&fx), ["late"]);
}

#[test]
fn when_tokens_are_short_outcomes_go_first_and_stale_information_is_merged_or_dropped() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    link.hub_rate_limits();
    let mut fx = Vec::new();
    for i in 0..10 {
        link.send(out("task_accepted", format!("spent{i}")), Some(entry(ReplyKind::Accepted, i)), &mut fx);
    }
    fx.clear();
    let wake = |task: &str| Awaiting { kind: ReplyKind::Unhandled, task_id: task.into(), generation: 0 };
    link.send(out("wake_result", "woken t"), Some(wake("t")), &mut fx);
    progress(&mut link, "t", "t 10%", false, &mut fx);
    progress(&mut link, "u", "u keep-alive", true, &mut fx);
    progress(&mut link, "t", "t 50%", false, &mut fx);
    // A keep-alive gives way to a real update waiting for the same task.
    progress(&mut link, "t", "t keep-alive", true, &mut fx);
    link.send(
        out("task_accepted", "accepted u"),
        Some(Awaiting { kind: ReplyKind::Accepted, task_id: "u".into(), generation: 1 }),
        &mut fx,
    );
    link.send(out("task_complete", "complete t"), Some(entry(ReplyKind::Complete, 1)), &mut fx);
    assert!(sent(&fx).is_empty());
    // t has an outcome: its progress and wake_result are stale.
    link.forget_info("t");
    let mut at = t0;
    while let Some(next) = link.deadline().filter(|d| *d < t0 + ms(1_000)) {
        at = next;
        link.tick(at, &mut fx);
    }
    // accepted u went out, so u's keep-alive was needless.
    assert_eq!(sent(&fx), ["accepted u", "complete t"]);
    assert_eq!(at, t0 + token(2), "one token each");
    // With tokens to spare, information goes at once, the latest only.
    fx.clear();
    let later = t0 + ms(5_000);
    link.set_now(later);
    link.tick(later, &mut fx);
    link.on_pong();
    fx.clear();
    progress(&mut link, "t", "t 60%", false, &mut fx);
    assert_eq!(sent(&fx), ["t 60%"]);
}

#[test]
fn a_denial_holds_its_tier_for_the_hubs_wait_and_longer_when_repeated() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    let mut fx = Vec::new();
    link.send(out("task_complete", "c1"), Some(entry(ReplyKind::Complete, 1)), &mut fx);
    // A hub that denies anyway: the first denial waits its retry_after.
    link.on_rate_limited(ms(10), Some("normal"), t0, &mut fx);
    assert_eq!(link.deadline(), Some(t0 + token(1)), "and the model's next token");
    fx.clear();
    link.tick(t0 + token(1), &mut fx);
    assert_eq!(sent(&fx), ["c1"]);
    // Denied again, and again: the hub's backoff (2 and 5 s of 60, scaled
    // to this 1 s window) outlasts the model's token and the hub's 10 ms.
    link.on_rate_limited(ms(10), Some("normal"), t0 + ms(110), &mut fx);
    link.tick(t0 + ms(215), &mut fx);
    assert_eq!(sent(&fx), ["c1", "c1"]);
    link.on_rate_limited(ms(10), Some("normal"), t0 + ms(220), &mut fx);
    let third = t0 + ms(220) + RateLimits { window: ms(1_000), ..RateLimits::default() }.denial_backoff(3);
    assert_eq!(link.deadline(), Some(third.max(t0 + ms(220) + token(1))));
    // The answer comes after all: nothing is left to resend.
    assert_eq!(link.take_awaiting(&[ReplyKind::Complete]), Some(entry(ReplyKind::Complete, 1)));
    assert_eq!(link.deadline(), Some(t0 + ms(1_000)));
}

#[test]
fn a_lost_connection_drops_the_waiting_frames_but_not_the_budget() {
    let t0 = Instant::now();
    let mut link = ready(t0);
    link.hub_rate_limits();
    let mut fx = Vec::new();
    for i in 0..11 {
        link.send(out("task_accepted", format!("a{i}")), Some(entry(ReplyKind::Accepted, i)), &mut fx);
    }
    assert_eq!(sent(&fx).len(), 10);
    link.on_lost(None, t0 + ms(1), &mut fx);
    // The next connection: its first frame still waits for the hub's
    // bucket, which a reconnect does not refill; the dropped a10 is gone.
    let reconnect_at = link.deadline().unwrap();
    fx.clear();
    link.tick(reconnect_at, &mut fx);
    let conn_id = link.live_conn_id().unwrap();
    assert!(link.on_connected(conn_id, reconnect_at));
    assert!(link.on_identified(reconnect_at));
    link.send(out("task_recovering", "recovering"), Some(entry(ReplyKind::Recovering, 1)), &mut fx);
    assert_eq!(sent(&fx), [] as [&str; 0]);
    link.tick(t0 + token(1), &mut fx);
    assert_eq!(sent(&fx), ["recovering"]);
}

#[test]
fn a_connection_that_never_reports_is_given_up_after_twice_the_connect_timeout() {
    // The socket thread bounds its own attempt by connect_timeout (the
    // identify timeout); one that reports nothing twice that long is hung
    // or gone, and waiting for it for ever would never reconnect.
    let t0 = Instant::now();
    let mut link = Link::new(timers(), 1, t0);
    link_transcript(&mut link, t0, vec![(L::Tick(0), &[])]);
    assert!(link.live_conn_id().is_some());
    link_transcript(
        &mut link,
        t0,
        vec![(L::Deadline(1_000), &[]), (L::Tick(999), &[]), (L::Tick(1_000), &["timeout Connect"])],
    );
}
