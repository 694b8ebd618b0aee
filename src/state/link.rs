//! The connection to the hub as the core sees it: which connection is live,
//! the identify and heartbeat deadlines, the reconnect backoff, which frames
//! await an answer (the reply-correlation queue) and which must be resent
//! after a `rate_limited`. A small owned type with no knowledge of tasks:
//! [`State`](super::State) asks it to send and tells it what the hub said.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{record, Effect};
use crate::lifecycle_log::LifecycleEvent;
use crate::protocol;
use crate::retry::{backoff, BackoffPolicy, Jitter};

/// The link's timers, from the config.
#[derive(Debug, Clone)]
pub(crate) struct LinkTimers {
    pub heartbeat_interval: Duration,
    pub pong_timeout: Duration,
    pub identify_timeout: Duration,
    pub backoff: BackoffPolicy,
}

#[derive(Debug, Clone, PartialEq)]
enum Conn {
    Backoff { retry_at: Instant },
    Connecting { conn_id: u64 },
    Identifying { conn_id: u64, deadline: Instant },
    Ready { conn_id: u64, next_ping_at: Instant, pong_deadline: Option<Instant> },
    Stopped,
}

/// What a frame we sent waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyKind {
    Accepted,
    Complete,
    Failed,
    Recovering,
    StateReport,
    /// `wake_result`: older hubs answer `unknown_message_type`, newer ones
    /// nothing.
    Unhandled,
}

/// A frame sent on the live connection that awaits an answer. Error frames
/// carry no task id; they answer the oldest entry of their kind (PROTOCOL.md
/// section 6).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Awaiting {
    pub kind: ReplyKind,
    pub task_id: String,
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct Resendable {
    text: String,
    awaiting: Option<Awaiting>,
}

/// Why the link gave up on the live connection in [`Link::tick`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Timeout {
    Identify,
    Pong,
}

#[derive(Debug)]
pub(crate) struct Link {
    timers: LinkTimers,
    jitter: Jitter,
    conn: Conn,
    last_conn_id: u64,
    /// Failed connection attempts since the last `identified`.
    reconnect_attempt: u32,
    /// Frames sent on the live connection that await an answer, oldest first.
    awaiting: VecDeque<Awaiting>,
    /// The last frame sent that a `rate_limited` may refer to.
    last_sent: Option<Resendable>,
    /// The last frame sent was a heartbeat ping (so a `rate_limited` drops
    /// the ping, not `last_sent`).
    ping_was_last: bool,
    /// A frame the hub dropped with `rate_limited`, and when to resend it.
    resend: Option<(Instant, Resendable)>,
}

impl Link {
    /// A link that connects at once (its first deadline is `now`).
    pub fn new(timers: LinkTimers, jitter_seed: u64, now: Instant) -> Link {
        Link {
            timers,
            jitter: Jitter::new(jitter_seed),
            conn: Conn::Backoff { retry_at: now },
            last_conn_id: 0,
            reconnect_attempt: 0,
            awaiting: VecDeque::new(),
            last_sent: None,
            ping_was_last: false,
            resend: None,
        }
    }

    /// The connection whose events count, if any.
    pub fn live_conn_id(&self) -> Option<u64> {
        match self.conn {
            Conn::Connecting { conn_id }
            | Conn::Identifying { conn_id, .. }
            | Conn::Ready { conn_id, .. } => Some(conn_id),
            Conn::Backoff { .. } | Conn::Stopped => None,
        }
    }

    /// Identified: frames about tasks may flow.
    pub fn is_ready(&self) -> bool {
        matches!(self.conn, Conn::Ready { .. })
    }

    pub fn is_identifying(&self) -> bool {
        matches!(self.conn, Conn::Identifying { .. })
    }

    /// Opens a new connection.
    pub fn connect(&mut self, fx: &mut Vec<Effect>) {
        self.last_conn_id += 1;
        let conn_id = self.last_conn_id;
        self.conn = Conn::Connecting { conn_id };
        fx.push(Effect::Connect { conn_id });
        fx.push(record(LifecycleEvent::Connecting, json!({ "attempt": self.reconnect_attempt + 1 })));
    }

    /// The socket of `conn_id` is open: the caller sends `identify` (not
    /// correlated, never resent) and the link waits for the answer. False for
    /// a connection that is not the one being opened.
    pub fn on_connected(&mut self, conn_id: u64, now: Instant) -> bool {
        if self.conn != (Conn::Connecting { conn_id }) {
            return false;
        }
        self.conn = Conn::Identifying { conn_id, deadline: now + self.timers.identify_timeout };
        true
    }

    /// The hub answered `identified`. False if we were not identifying.
    pub fn on_identified(&mut self, now: Instant) -> bool {
        let Conn::Identifying { conn_id, .. } = self.conn else {
            return false;
        };
        self.conn =
            Conn::Ready { conn_id, next_ping_at: now + self.timers.heartbeat_interval, pong_deadline: None };
        self.reconnect_attempt = 0;
        true
    }

    pub fn on_pong(&mut self) {
        if let Conn::Ready { pong_deadline, .. } = &mut self.conn {
            *pong_deadline = None;
        }
    }

    /// The connection is gone: forget what it awaited and schedule the next
    /// attempt (at least `cooldown` away). Returns the delay.
    pub fn on_lost(&mut self, cooldown: Option<Duration>, now: Instant) -> Duration {
        self.awaiting.clear();
        self.last_sent = None;
        self.ping_was_last = false;
        self.resend = None;
        let mut delay = backoff(self.reconnect_attempt, &self.timers.backoff, self.jitter.next_unit());
        if let Some(cooldown) = cooldown {
            delay = delay.max(cooldown);
        }
        self.reconnect_attempt = self.reconnect_attempt.saturating_add(1);
        self.conn = Conn::Backoff { retry_at: now + delay };
        delay
    }

    /// No more connections (shutdown).
    pub fn stop(&mut self) {
        self.conn = Conn::Stopped;
    }

    /// Sends `text` on the live connection (nothing without one), noting what
    /// it awaits.
    pub fn send(&mut self, text: String, awaiting: Option<Awaiting>, fx: &mut Vec<Effect>) {
        let Some(conn_id) = self.live_conn_id() else {
            return;
        };
        if let Some(entry) = &awaiting {
            self.awaiting.push_back(entry.clone());
        }
        self.last_sent = Some(Resendable { text: text.clone(), awaiting });
        self.ping_was_last = false;
        fx.push(Effect::Send { conn_id, text });
    }

    /// Removes and returns the oldest awaiting entry of one of `kinds`.
    pub fn take_awaiting(&mut self, kinds: &[ReplyKind]) -> Option<Awaiting> {
        let index = self.awaiting.iter().position(|a| kinds.contains(&a.kind))?;
        self.awaiting.remove(index)
    }

    /// The oldest awaiting entry of `kind`, left in place.
    pub fn find_awaiting(&self, kind: ReplyKind) -> Option<&Awaiting> {
        self.awaiting.iter().find(|a| a.kind == kind)
    }

    /// `rate_limited`: the hub dropped the last frame we sent.
    pub fn on_rate_limited(&mut self, retry_after: Duration, now: Instant) {
        let retry_after_ms = retry_after.as_millis();
        if self.ping_was_last {
            // A dropped ping gets no pong: that is not a dead connection.
            if let Conn::Ready { next_ping_at, pong_deadline, .. } = &mut self.conn {
                log::warn!("hub rate-limited our ping; pinging again in {retry_after_ms} ms");
                *pong_deadline = None;
                *next_ping_at = now + retry_after;
            }
            self.ping_was_last = false;
            return;
        }
        // "The last frame was dropped: resend after N ms" (PROTOCOL.md
        // section 7). It will get no other answer, so it no longer awaits one.
        let Some(dropped) = self.last_sent.take() else {
            log::warn!("hub rate-limited us, but we sent nothing that could be resent");
            return;
        };
        if let Some(entry) = &dropped.awaiting {
            if let Some(index) = self.awaiting.iter().rposition(|a| a == entry) {
                self.awaiting.remove(index);
            }
        }
        log::warn!("hub rate-limited our last frame; resending in {retry_after_ms} ms");
        self.resend = Some((now + retry_after, dropped));
    }

    /// Reconnects, pings and resends when due. Returns the timeout that ends
    /// the live connection, if one passed (the caller drops it).
    pub fn tick(&mut self, now: Instant, fx: &mut Vec<Effect>) -> Option<Timeout> {
        match self.conn.clone() {
            Conn::Backoff { retry_at } if now >= retry_at => self.connect(fx),
            Conn::Identifying { deadline, .. } if now >= deadline => return Some(Timeout::Identify),
            Conn::Ready { pong_deadline: Some(deadline), .. } if now >= deadline => {
                return Some(Timeout::Pong)
            }
            Conn::Ready { conn_id, next_ping_at, pong_deadline: None } if now >= next_ping_at => {
                fx.push(Effect::Send { conn_id, text: protocol::out_ping() });
                self.ping_was_last = true;
                self.conn = Conn::Ready {
                    conn_id,
                    next_ping_at: now + self.timers.heartbeat_interval,
                    pong_deadline: Some(now + self.timers.pong_timeout),
                };
            }
            _ => {}
        }
        if self.is_ready() && self.resend.as_ref().is_some_and(|(at, _)| now >= *at) {
            if let Some((_, frame)) = self.resend.take() {
                self.send(frame.text, frame.awaiting, fx);
            }
        }
        None
    }

    /// When the link next needs a tick.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.conn {
            Conn::Backoff { retry_at } => Some(*retry_at),
            Conn::Identifying { deadline, .. } => Some(*deadline),
            Conn::Ready { next_ping_at, pong_deadline, .. } => {
                let heartbeat = pong_deadline.unwrap_or(*next_ping_at);
                Some(self.resend.as_ref().map_or(heartbeat, |(at, _)| heartbeat.min(*at)))
            }
            Conn::Connecting { .. } | Conn::Stopped => None,
        }
    }

    pub fn identify_timeout(&self) -> Duration {
        self.timers.identify_timeout
    }

    pub fn pong_timeout(&self) -> Duration {
        self.timers.pong_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn timers() -> LinkTimers {
        LinkTimers {
            heartbeat_interval: ms(1_000),
            pong_timeout: ms(300),
            identify_timeout: ms(500),
            backoff: BackoffPolicy { initial: ms(100), max: ms(400) },
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
        link.send("a".into(), Some(entry(ReplyKind::Complete, 1)), &mut fx);
        link.send("b".into(), Some(entry(ReplyKind::Unhandled, 0)), &mut fx);
        link.send("c".into(), Some(entry(ReplyKind::Complete, 2)), &mut fx);
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
        link.send("a".into(), Some(entry(ReplyKind::Complete, 1)), &mut fx);
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
        link.send("report".into(), Some(entry(ReplyKind::Complete, 3)), &mut fx);
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
}
