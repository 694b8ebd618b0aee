//! The connection to the hub as the core sees it: which connection is live,
//! the identify and heartbeat deadlines, the reconnect backoff, which frames
//! await an answer (the reply-correlation queue), and, on a hub that
//! rate-limits, which frames wait for a token of its budget (`budget.rs`,
//! `outbox.rs`, `pacing.rs`). A small owned type that knows tasks only by id:
//! [`State`](super::State) asks it to send and tells it what the hub said.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{record, Effect, LinkSettings};
use crate::protocol::{OutKind, Outgoing};
use crate::retry::{backoff, Jitter};
use crate::state::LifecycleEvent;

mod budget;
mod outbox;
mod pacing;

use budget::Budget;
pub use budget::{RateLimits, Tier};
use outbox::{Outbox, Sent};
use pacing::Episode;

/// The longest `retry_after_ms` of a `rate_limited` frame we honour.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

// `Connecting`'s deadline: the socket thread reports within
// connect_timeout; one silent for twice that is hung or dead.
#[derive(Debug, Clone, PartialEq)]
enum Conn {
    Backoff { retry_at: Instant },
    Connecting { conn_id: u64, deadline: Instant },
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
/// carry no task id; they answer the oldest entry of their kind
/// (docs/protocol.md section 6.7).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Awaiting {
    pub kind: ReplyKind,
    pub task_id: String,
    pub generation: u64,
}

/// At most this many frames are remembered as in flight; older ones are
/// forgotten (a hub that answers nothing would otherwise grow the list).
const MAX_IN_FLIGHT: usize = 256;

/// Why the link gave up on the live connection in [`Link::tick`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Timeout {
    /// The socket thread reported neither success nor failure in time.
    Connect,
    Identify,
    Pong,
    /// A frame of this type got no answer within `reply_timeout`.
    Reply(OutKind),
}

#[derive(Debug)]
pub(crate) struct Link {
    timers: LinkSettings,
    jitter: Jitter,
    conn: Conn,
    last_conn_id: u64,
    /// Failed connection attempts since the last `identified`.
    reconnect_attempt: u32,
    /// The last backoff drawn (before any cooldown); decorrelated jitter
    /// grows from it. Zero after identified.
    last_backoff: Duration,
    /// The time of the input being handled (see [`Link::set_now`]).
    now: Instant,
    /// Frames sent on the live connection whose answer (or silent handling)
    /// is not known yet, oldest first. The hub handles frames in order and
    /// answers in that order, so an answer also says that the silent frames
    /// sent before its frame were handled.
    in_flight: VecDeque<Sent>,
    /// The hub rate-limits (it has shown to be the newer one): frames go
    /// out only as the budget allows.
    paced: bool,
    /// Our model of the hub's buckets; kept across connections, as the hub
    /// keeps its per agent.
    budget: Budget,
    /// Frames waiting for a token (only while paced), taken-back frames
    /// first.
    outbox: Outbox,
    /// The denials since the first of a run of them (for one log line).
    episode: Option<Episode>,
    /// The number of the next frame (see [`Sent::seq`]).
    next_seq: u64,
    /// Frame types the hub refused as unknown on this connection: never
    /// sent on it again.
    refused_types: Vec<OutKind>,
}

impl Link {
    /// A link that connects at once (its first deadline is `now`).
    pub fn new(timers: LinkSettings, jitter_seed: u64, now: Instant) -> Link {
        Link {
            budget: Budget::new(timers.rate_limits, now),
            timers,
            jitter: Jitter::new(jitter_seed),
            conn: Conn::Backoff { retry_at: now },
            last_conn_id: 0,
            reconnect_attempt: 0,
            last_backoff: Duration::ZERO,
            now,
            in_flight: VecDeque::new(),
            paced: false,
            outbox: Outbox::default(),
            episode: None,
            next_seq: 0,
            refused_types: Vec::new(),
        }
    }

    /// The time of the input being handled: frames sent now are stamped
    /// with it.
    pub fn set_now(&mut self, now: Instant) {
        self.now = now;
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    /// The connection whose events count, if any.
    pub fn live_conn_id(&self) -> Option<u64> {
        match self.conn {
            Conn::Connecting { conn_id, .. }
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
        self.conn = Conn::Connecting { conn_id, deadline: self.now + self.timers.connect_timeout * 2 };
        fx.push(Effect::Connect { conn_id });
        fx.push(record(LifecycleEvent::Connecting, json!({ "attempt": self.reconnect_attempt + 1 })));
    }

    /// The socket of `conn_id` is open: the caller sends `identify` (not
    /// correlated, never resent) and the link waits for the answer. False for
    /// a connection that is not the one being opened.
    pub fn on_connected(&mut self, conn_id: u64, now: Instant) -> bool {
        if !matches!(self.conn, Conn::Connecting { conn_id: c, .. } if c == conn_id) {
            return false;
        }
        self.refused_types.clear();
        self.conn = Conn::Identifying { conn_id, deadline: now + self.timers.connect_timeout };
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
        self.last_backoff = Duration::ZERO;
        true
    }

    pub fn on_pong(&mut self) {
        if let Conn::Ready { pong_deadline, .. } = &mut self.conn {
            *pong_deadline = None;
        }
        if let Some(index) = self.in_flight.iter().position(|s| s.kind() == OutKind::Ping) {
            self.answered(index);
        }
    }

    /// The connection is gone: forget what it awaited and schedule the next
    /// attempt (at least `cooldown` away). Returns the delay.
    pub fn on_lost(&mut self, cooldown: Option<Duration>, now: Instant, fx: &mut Vec<Effect>) -> Duration {
        self.in_flight.clear();
        // What matters is sent again after the recovery handshake
        // (docs/protocol.md 4, 6.5).
        self.outbox.clear();
        self.end_episode(now, "the connection was lost", fx);
        let drawn =
            backoff(self.reconnect_attempt, self.last_backoff, &self.timers.backoff, self.jitter.next_unit());
        self.last_backoff = drawn;
        let mut delay = drawn;
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

    /// Stopped: the sidecar is shutting down.
    pub fn is_stopped(&self) -> bool {
        self.conn == Conn::Stopped
    }

    fn transmit(&mut self, frame: Sent, fx: &mut Vec<Effect>) {
        let Some(conn_id) = self.live_conn_id() else {
            return;
        };
        if self.refused_types.contains(&frame.kind()) {
            say!(fx, Debug, "not sending {}: the hub refused that type on this connection", frame.kind());
            return;
        }
        self.budget.spend(Tier::of(frame.kind()), frame.sent_at);
        fx.push(Effect::Send { conn_id, frame: frame.frame.clone() });
        if self.in_flight.len() == MAX_IN_FLIGHT {
            self.in_flight.pop_front();
        }
        self.in_flight.push_back(frame);
    }

    /// The frame at `index` of `in_flight` was answered: it and the silent
    /// frames sent before it are done (the hub answers in order: a
    /// `wake_result` before it would have had its answer by now, if any).
    fn answered(&mut self, index: usize) -> Option<Sent> {
        let mut kept = VecDeque::with_capacity(self.in_flight.len());
        let mut answered = None;
        for (i, frame) in std::mem::take(&mut self.in_flight).into_iter().enumerate() {
            match i.cmp(&index) {
                std::cmp::Ordering::Less if frame.expects_no_answer() || frame.informational() => {}
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
        self.outbox.take(is_of)
    }

    /// Takes back the frames not yet transmitted (waiting for a token, or
    /// taken back after a `rate_limited`) whose awaited answer matches
    /// `is_of`; what they awaited.
    pub fn withdraw_unsent(&mut self, is_of: impl Fn(&Awaiting) -> bool) -> Vec<Awaiting> {
        let withdrawn = self.outbox.remove_all(|s| s.awaiting.as_ref().is_some_and(&is_of));
        withdrawn.into_iter().filter_map(|s| s.awaiting).collect()
    }

    /// The hub refused the oldest frame of `kind` we sent
    /// (`validation_failed` names the type). Returns what it awaited.
    /// `unknown_type`: the hub has no such type; none is sent again on this
    /// connection.
    pub fn refused(&mut self, kind: OutKind, unknown_type: bool, fx: &mut Vec<Effect>) -> Option<Awaiting> {
        let sent = self.take_sent(|s| s.kind() == kind);
        if unknown_type && sent.is_some() {
            self.refuse_type(kind, fx);
        }
        sent.and_then(|s| s.awaiting)
    }

    /// `unknown_message_type` (the older hub): it answers the oldest frame
    /// awaiting one of `kinds`; that type is not sent again on this
    /// connection.
    pub fn unknown_type(&mut self, kinds: &[ReplyKind], fx: &mut Vec<Effect>) -> Option<OutKind> {
        let sent = self.take_sent(|s| s.awaiting.as_ref().is_some_and(|a| kinds.contains(&a.kind)))?;
        self.refuse_type(sent.kind(), fx);
        Some(sent.kind())
    }

    fn refuse_type(&mut self, kind: OutKind, fx: &mut Vec<Effect>) {
        if !self.refused_types.contains(&kind) {
            say!(fx, Info, "the hub does not know {kind}; not sending it again on this connection");
            self.refused_types.push(kind);
        }
    }

    /// When the oldest question that must be answered times out.
    fn reply_deadline(&self) -> Option<(Instant, OutKind)> {
        self.in_flight
            .iter()
            .filter(|s| {
                s.awaiting.as_ref().is_some_and(|a| {
                    matches!(a.kind, ReplyKind::Complete | ReplyKind::Failed | ReplyKind::Recovering)
                })
            })
            .map(|s| (s.sent_at + self.timers.reply_timeout, s.kind()))
            .min_by_key(|(at, _)| *at)
    }

    /// The oldest awaiting entry of `kind`, left in place.
    pub fn find_awaiting(&self, kind: ReplyKind) -> Option<&Awaiting> {
        self.in_flight.iter().filter_map(|s| s.awaiting.as_ref()).find(|a| a.kind == kind)
    }

    /// Reconnects, pings and resends when due. Returns the timeout that ends
    /// the live connection, if one passed (the caller drops it).
    pub fn tick(&mut self, now: Instant, fx: &mut Vec<Effect>) -> Option<Timeout> {
        match self.conn.clone() {
            Conn::Backoff { retry_at } if now >= retry_at => self.connect(fx),
            Conn::Connecting { deadline, .. } if now >= deadline => return Some(Timeout::Connect),
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
                let ping = Sent {
                    frame: Outgoing::Ping,
                    awaiting: None,
                    about: None,
                    keepalive: false,
                    seq: u64::MAX,
                    sent_at: now,
                };
                self.transmit(ping, fx);
            }
            _ => {}
        }
        if let Some((at, kind)) = self.reply_deadline().filter(|_| self.is_ready()) {
            if now >= at {
                return Some(Timeout::Reply(kind));
            }
        }
        if self.is_ready() {
            self.release(now, fx);
        }
        None
    }

    /// When the link next needs a tick.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.conn {
            Conn::Backoff { retry_at } => Some(*retry_at),
            Conn::Connecting { deadline, .. } | Conn::Identifying { deadline, .. } => Some(*deadline),
            Conn::Ready { next_ping_at, pong_deadline, .. } => {
                let heartbeat = pong_deadline.unwrap_or(*next_ping_at);
                let reply = self.reply_deadline().map(|(at, _)| at);
                // The next frame waiting for a token goes when it comes.
                let release = self.outbox.next().map(|next| self.budget.ready_at(Tier::of(next.kind())));
                [Some(heartbeat), release, reply].into_iter().flatten().min()
            }
            Conn::Stopped => None,
        }
    }

    pub fn identify_timeout(&self) -> Duration {
        self.timers.connect_timeout
    }

    pub fn pong_timeout(&self) -> Duration {
        self.timers.pong_timeout
    }
}

#[cfg(test)]
mod tests;
