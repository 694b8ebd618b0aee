//! The link's side of the hub's rate budget (docs/protocol.md 7.2): frames
//! go out as the model of the hub's buckets (`budget.rs`) allows, in the
//! outbox's order (`outbox.rs`); a `rate_limit_warning` corrects the model, a
//! `rate_limited` takes the dropped frames back and holds their tier.

use std::time::{Duration, Instant};

use super::budget::Tier;
use super::outbox::Sent;
use super::{Awaiting, Conn, Link, ReplyKind, MAX_RETRY_AFTER};
use crate::protocol::{OutKind, Outgoing};
use crate::state::Effect;

/// A run of `rate_limited` answers, logged once when it starts and once
/// with its counts when the frames it held back are out.
#[derive(Debug)]
pub(super) struct Episode {
    pub started: Instant,
    pub denials: u32,
    /// Frames taken back to be sent again.
    pub taken_back: usize,
    /// Informational frames merged into newer ones or dropped as stale.
    pub dropped: usize,
}

impl Link {
    /// Sends `frame` on the live connection (nothing without one), noting
    /// what it awaits. On a hub that rate-limits it waits for a token of its
    /// tier (see `outbox.rs` for the order).
    pub fn send(&mut self, frame: Outgoing, awaiting: Option<Awaiting>, fx: &mut Vec<Effect>) {
        let about = awaiting.as_ref().map(|a| a.task_id.clone());
        let frame = Sent { frame, awaiting, about, keepalive: false, seq: 0, sent_at: self.now };
        self.queue(frame, fx);
    }

    /// Sends `frame` about `task_id`, awaiting an answer of `kind` (about
    /// its `generation`).
    pub fn send_about(
        &mut self,
        task_id: &str,
        frame: Outgoing,
        kind: ReplyKind,
        generation: u64,
        fx: &mut Vec<Effect>,
    ) {
        let awaiting = Awaiting { kind, task_id: task_id.to_owned(), generation };
        self.send(frame, Some(awaiting), fx);
    }

    /// Sends a `task_progress` about `task_id` (a keep-alive: one that only
    /// repeats the last value). While it waits for a token, a newer one
    /// takes its place.
    pub fn send_progress(&mut self, task_id: &str, frame: Outgoing, keepalive: bool, fx: &mut Vec<Effect>) {
        let frame = Sent {
            frame,
            awaiting: None,
            about: Some(task_id.to_owned()),
            keepalive,
            seq: 0,
            sent_at: self.now,
        };
        self.queue(frame, fx);
    }

    fn queue(&mut self, mut frame: Sent, fx: &mut Vec<Effect>) {
        frame.seq = self.next_seq;
        self.next_seq += 1;
        if !self.paced && self.outbox.is_empty() {
            self.transmit(frame, fx);
            return;
        }
        let merged = self.outbox.push(frame);
        self.count_dropped(merged);
        if self.is_ready() {
            self.release(self.now, fx);
        }
    }

    /// The hub has shown that it rate-limits (it is the newer one): from now
    /// on frames go out only as its budget allows.
    pub fn hub_rate_limits(&mut self) {
        self.paced = true;
    }

    /// Sends what the budget allows now, in the outbox's order.
    pub(super) fn release(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        while let Some(next) = self.outbox.next() {
            if self.paced && !self.budget.can_send(Tier::of(next.kind()), now) {
                return;
            }
            let Some(frame) = self.outbox.pop_next() else { break };
            if let (false, Some(task_id)) = (frame.informational(), &frame.about) {
                // It tells the hub the task is alive: a waiting keep-alive
                // of it is needless.
                let needless = self.outbox.remove_all(|w| w.keepalive && w.about.as_ref() == Some(task_id));
                self.count_dropped(needless.len());
            }
            self.transmit(Sent { sent_at: now, ..frame }, fx);
        }
        if !self.budget.is_blocked(now) {
            self.end_episode(now, "the frames it held back are out", fx);
        }
    }

    /// Informational frames about `task_id` still waiting are stale: it has
    /// an outcome or was let go of.
    pub fn forget_info(&mut self, task_id: &str) {
        let stale = self.outbox.remove_all(|w| w.informational() && w.about.as_deref() == Some(task_id));
        self.count_dropped(stale.len());
    }

    fn count_dropped(&mut self, count: usize) {
        if let Some(episode) = &mut self.episode {
            episode.dropped += count;
        }
    }

    pub(super) fn end_episode(&mut self, now: Instant, why: &str, fx: &mut Vec<Effect>) {
        if let Some(e) = self.episode.take() {
            say!(
                fx, Warn,
                "hub rate limit episode over after {} ms ({why}): {} denials, {} frames sent again, {} stale progress or wake_result frames merged or dropped",
                now.saturating_duration_since(e.started).as_millis(),
                e.denials,
                e.taken_back,
                e.dropped
            );
        }
    }

    /// `rate_limit_warning`: the hub rate-limits, and `remaining` tokens of
    /// `tier` were left after the frame it answers.
    pub fn on_rate_limit_warning(
        &mut self,
        tier: Option<&str>,
        remaining: Option<u64>,
        capacity: Option<u64>,
        fx: &mut Vec<Effect>,
    ) {
        self.paced = true;
        let tier = tier.and_then(Tier::parse).unwrap_or(Tier::Normal);
        say!(fx, Debug, "hub rate limit warning: {remaining:?} of {capacity:?} {} tokens left", tier.name());
        // It speaks of the oldest frame of the tier whose fate was unknown
        // (an informational one is thereby done); the hub has not counted
        // the ones sent after it yet.
        let of_tier: Vec<usize> =
            (0..self.in_flight.len()).filter(|&i| Tier::of(self.in_flight[i].kind()) == tier).collect();
        let after = of_tier.len().saturating_sub(1) as u64;
        if let Some(&oldest) = of_tier.first() {
            if self.in_flight[oldest].informational() {
                self.in_flight.remove(oldest);
            }
        }
        self.budget.on_warning(tier, remaining.map(|r| r.saturating_sub(after)), capacity, self.now);
    }

    /// `rate_limited`: the hub dropped a frame of `tier` (named by the hub,
    /// never the frame's type): the oldest of that tier sent whose fate we do
    /// not know. Informational frames before the first one the hub answers
    /// are ambiguous (handled, or the dropped one), so they are taken back
    /// too: a repeated progress update is harmless, a lost frame is not.
    /// They go out again first, once the tier's wait is over; a dropped
    /// ping is not resent, the next ping moves instead.
    pub fn on_rate_limited(
        &mut self,
        retry_after: Duration,
        tier: Option<&str>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        self.paced = true;
        let tier = tier.and_then(Tier::parse).unwrap_or(Tier::Normal);
        // The hub's own value is about a second; a huge one (a bug, or a
        // hostile hub) must not postpone pings, and with them the detection
        // of a dead link, or a report, for ages.
        let (wait, in_a_row) = self.budget.on_denied(tier, retry_after.min(MAX_RETRY_AFTER), now);
        let of_tier: Vec<usize> =
            (0..self.in_flight.len()).filter(|&i| Tier::of(self.in_flight[i].kind()) == tier).collect();
        let count =
            of_tier.iter().position(|&i| !self.in_flight[i].informational()).map_or(of_tier.len(), |n| n + 1);
        let mut taken = Vec::with_capacity(count);
        for &index in of_tier[..count].iter().rev() {
            taken.extend(self.in_flight.remove(index));
        }
        taken.reverse();
        let denied = taken.last().map_or("nothing of ours in flight", |f| f.kind().wire_name());
        match &mut self.episode {
            None => {
                say!(
                    fx, Warn,
                    "hub rate-limited a {} frame (taken as our {denied}; denial {in_a_row} in a row); no {} frame for {} ms, then in order; further denials are counted until the frames held back are out",
                    tier.name(),
                    tier.name(),
                    wait.as_millis()
                );
                self.episode = Some(Episode { started: now, denials: 1, taken_back: 0, dropped: 0 });
            }
            Some(episode) => {
                episode.denials += 1;
                say!(
                    fx,
                    Debug,
                    "denial {} of this episode: a {} frame (taken as our {denied}); {} ms",
                    episode.denials,
                    tier.name(),
                    wait.as_millis()
                );
            }
        }
        let mut resend = Vec::with_capacity(taken.len());
        for frame in taken {
            if frame.kind() == OutKind::Ping {
                // A dropped ping gets no pong: that is not a dead connection.
                if let Conn::Ready { next_ping_at, pong_deadline, .. } = &mut self.conn {
                    *pong_deadline = None;
                    *next_ping_at = now + wait;
                }
            } else {
                resend.push(frame);
            }
        }
        let resent = resend.len();
        let left_out = self.outbox.take_back(resend);
        if let Some(episode) = &mut self.episode {
            episode.taken_back += resent - left_out;
            episode.dropped += left_out;
        }
    }
}
