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
    /// How long a report or `task_recovering` may wait for its answer
    /// before the connection is given up (and the question asked again on
    /// the next one).
    pub reply_timeout: Duration,
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

/// A frame sent on the live connection whose fate is not known yet.
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    frame_type: &'static str,
    text: String,
    awaiting: Option<Awaiting>,
    sent_at: Instant,
}

impl Sent {
    /// No answer is expected: handled silently (or dropped).
    fn expects_no_answer(&self) -> bool {
        self.awaiting.is_none() && self.frame_type != "ping"
    }

    /// Frames the newer hub (the only one that rate-limits) never answers
    /// when it handles them.
    fn silent_on_rate_limiting_hubs(&self) -> bool {
        matches!(self.frame_type, "task_progress" | "wake_result")
    }
}

/// At most this many frames are remembered as in flight; older ones are
/// forgotten (a hub that answers nothing would otherwise grow the list).
const MAX_IN_FLIGHT: usize = 256;

/// Why the link gave up on the live connection in [`Link::tick`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Timeout {
    Identify,
    Pong,
    /// A frame of this type got no answer within `reply_timeout`.
    Reply(&'static str),
}

#[derive(Debug)]
pub(crate) struct Link {
    timers: LinkTimers,
    jitter: Jitter,
    conn: Conn,
    last_conn_id: u64,
    /// Failed connection attempts since the last `identified`.
    reconnect_attempt: u32,
    /// The time of the input being handled (see [`Link::set_now`]).
    now: Instant,
    /// Frames sent on the live connection whose answer (or silent handling)
    /// is not known yet, oldest first. The hub handles frames in order and
    /// answers in that order, so an answer also says that the silent frames
    /// sent before its frame were handled.
    in_flight: VecDeque<Sent>,
    /// Frames the hub dropped with `rate_limited`, in their original order:
    /// they go out again at `resend_at`...
    denied: VecDeque<Sent>,
    /// ...followed by the frames sent while they waited.
    held_back: VecDeque<Sent>,
    resend_at: Option<Instant>,
    /// Frame types the hub refused as unknown on this connection: never
    /// sent on it again.
    refused_types: Vec<&'static str>,
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
            now,
            in_flight: VecDeque::new(),
            denied: VecDeque::new(),
            held_back: VecDeque::new(),
            resend_at: None,
            refused_types: Vec::new(),
        }
    }

    /// The time of the input being handled: frames sent now are stamped
    /// with it.
    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
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
        self.refused_types.clear();
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
        if let Some(index) = self.in_flight.iter().position(|s| s.frame_type == "ping") {
            self.answered(index);
        }
    }

    /// The connection is gone: forget what it awaited and schedule the next
    /// attempt (at least `cooldown` away). Returns the delay.
    pub fn on_lost(&mut self, cooldown: Option<Duration>, now: Instant) -> Duration {
        self.in_flight.clear();
        self.denied.clear();
        self.held_back.clear();
        self.resend_at = None;
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

    /// Sends a frame of `frame_type` on the live connection (nothing without
    /// one), noting what it awaits. While frames wait to be resent after a
    /// `rate_limited`, it queues behind them, so the hub sees the original
    /// order.
    pub fn send(
        &mut self,
        frame_type: &'static str,
        text: String,
        awaiting: Option<Awaiting>,
        fx: &mut Vec<Effect>,
    ) {
        let frame = Sent { frame_type, text, awaiting, sent_at: self.now };
        if self.resend_at.is_some() {
            self.held_back.push_back(frame);
            return;
        }
        self.transmit(frame, fx);
    }

    fn transmit(&mut self, frame: Sent, fx: &mut Vec<Effect>) {
        let Some(conn_id) = self.live_conn_id() else {
            return;
        };
        if self.refused_types.contains(&frame.frame_type) {
            log::debug!("not sending {}: the hub refused that type on this connection", frame.frame_type);
            return;
        }
        fx.push(Effect::Send { conn_id, text: frame.text.clone() });
        if self.in_flight.len() == MAX_IN_FLIGHT {
            self.in_flight.pop_front();
        }
        self.in_flight.push_back(frame);
    }

    /// The frame at `index` of `in_flight` was answered: it and the silent
    /// frames sent before it are done.
    fn answered(&mut self, index: usize) -> Option<Sent> {
        let mut kept = VecDeque::with_capacity(self.in_flight.len());
        let mut answered = None;
        for (i, frame) in std::mem::take(&mut self.in_flight).into_iter().enumerate() {
            match i.cmp(&index) {
                std::cmp::Ordering::Less if frame.expects_no_answer() => {}
                std::cmp::Ordering::Equal => answered = Some(frame),
                _ => kept.push_back(frame),
            }
        }
        self.in_flight = kept;
        answered
    }

    /// Removes and returns the oldest awaiting entry of one of `kinds`. A
    /// frame taken for resending whose answer comes after all (the hub had
    /// handled it) leaves the resend queue.
    pub fn take_awaiting(&mut self, kinds: &[ReplyKind]) -> Option<Awaiting> {
        self.take_sent(|s| s.awaiting.as_ref().is_some_and(|a| kinds.contains(&a.kind)))?.awaiting
    }

    fn take_sent(&mut self, is_of: impl Fn(&Sent) -> bool) -> Option<Sent> {
        if let Some(index) = self.in_flight.iter().position(&is_of) {
            return self.answered(index);
        }
        if let Some(index) = self.denied.iter().position(&is_of) {
            return self.denied.remove(index);
        }
        let index = self.held_back.iter().position(&is_of)?;
        self.held_back.remove(index)
    }

    /// The hub refused the oldest frame of `frame_type` we sent
    /// (`validation_failed` names the type). Returns what it awaited.
    /// `unknown_type`: the hub has no such type; none is sent again on this
    /// connection.
    pub fn refused(&mut self, frame_type: &str, unknown_type: bool) -> Option<Awaiting> {
        let sent = self.take_sent(|s| s.frame_type == frame_type);
        if unknown_type {
            if let Some(sent) = &sent {
                self.refuse_type(sent.frame_type);
            }
        }
        sent.and_then(|s| s.awaiting)
    }

    /// `unknown_message_type` (the older hub): it answers the oldest frame
    /// awaiting one of `kinds`; that type is not sent again on this
    /// connection.
    pub fn unknown_type(&mut self, kinds: &[ReplyKind]) -> Option<&'static str> {
        let sent = self.take_sent(|s| s.awaiting.as_ref().is_some_and(|a| kinds.contains(&a.kind)))?;
        self.refuse_type(sent.frame_type);
        Some(sent.frame_type)
    }

    fn refuse_type(&mut self, frame_type: &'static str) {
        if !self.refused_types.contains(&frame_type) {
            log::info!("the hub does not know {frame_type}; not sending it again on this connection");
            self.refused_types.push(frame_type);
        }
    }

    /// When the oldest question that must be answered times out.
    fn reply_deadline(&self) -> Option<(Instant, &'static str)> {
        self.in_flight
            .iter()
            .filter(|s| {
                s.awaiting.as_ref().is_some_and(|a| {
                    matches!(a.kind, ReplyKind::Complete | ReplyKind::Failed | ReplyKind::Recovering)
                })
            })
            .map(|s| (s.sent_at + self.timers.reply_timeout, s.frame_type))
            .min_by_key(|(at, _)| *at)
    }

    /// The oldest awaiting entry of `kind`, left in place.
    pub fn find_awaiting(&self, kind: ReplyKind) -> Option<&Awaiting> {
        self.in_flight.iter().filter_map(|s| s.awaiting.as_ref()).find(|a| a.kind == kind)
    }

    /// `rate_limited`: the hub dropped a frame, the oldest whose fate we do
    /// not know. Silent frames before the first answered one are ambiguous
    /// (handled, or the dropped one), so they are resent too: resending a
    /// progress update is harmless, losing a frame is not. A dropped ping is
    /// not resent; the next ping moves instead.
    pub fn on_rate_limited(&mut self, retry_after: Duration, now: Instant) {
        let retry_after_ms = retry_after.as_millis();
        let count = match self.in_flight.iter().position(|s| !s.silent_on_rate_limiting_hubs()) {
            Some(index) => index + 1,
            None => self.in_flight.len(),
        };
        if count == 0 {
            log::warn!("hub rate-limited us, but we sent nothing that could be resent");
            return;
        }
        let dropped: Vec<Sent> = self.in_flight.drain(..count).collect();
        for frame in dropped {
            if frame.frame_type == "ping" {
                // A dropped ping gets no pong: that is not a dead connection.
                if let Conn::Ready { next_ping_at, pong_deadline, .. } = &mut self.conn {
                    log::warn!("hub rate-limited our ping; pinging again in {retry_after_ms} ms");
                    *pong_deadline = None;
                    *next_ping_at = now + retry_after;
                }
                continue;
            }
            log::warn!("hub rate-limited our {}; resending in {retry_after_ms} ms", frame.frame_type);
            self.denied.push_back(frame);
        }
        if !self.denied.is_empty() {
            let at = now + retry_after;
            self.resend_at = Some(self.resend_at.map_or(at, |earlier| earlier.max(at)));
        }
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
                self.conn = Conn::Ready {
                    conn_id,
                    next_ping_at: now + self.timers.heartbeat_interval,
                    pong_deadline: Some(now + self.timers.pong_timeout),
                };
                // Pings never wait behind resends: they only keep the link.
                let ping =
                    Sent { frame_type: "ping", text: protocol::out_ping(), awaiting: None, sent_at: now };
                self.transmit(ping, fx);
            }
            _ => {}
        }
        if let Some((at, frame_type)) = self.reply_deadline().filter(|_| self.is_ready()) {
            if now >= at {
                return Some(Timeout::Reply(frame_type));
            }
        }
        if self.is_ready() && self.resend_at.is_some_and(|at| now >= at) {
            self.resend_at = None;
            let denied = std::mem::take(&mut self.denied);
            for frame in denied.into_iter().chain(std::mem::take(&mut self.held_back)) {
                self.transmit(Sent { sent_at: now, ..frame }, fx);
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
                let reply = self.reply_deadline().map(|(at, _)| at);
                [Some(heartbeat), self.resend_at, reply].into_iter().flatten().min()
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
}
