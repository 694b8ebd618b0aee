//! Frames waiting for a token of the hub's rate budget (see `budget.rs`),
//! and the order they go out in: frames the hub answers (`task_complete`,
//! `task_failed`, `task_accepted`, `task_recovering`, `state_report`) in the
//! order they were sent, before the informational ones (`task_progress`,
//! `wake_result`), which only ever carry the latest word about their task:
//! a newer one takes the place of a waiting one, and none is kept for a task
//! that has an outcome or was let go of.

use std::collections::VecDeque;
use std::time::Instant;

use super::Awaiting;
use crate::protocol::{OutKind, Outgoing};

/// A frame for the hub: waiting for a token, or sent on the live connection
/// and its fate not known yet.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Sent {
    pub frame: Outgoing,
    pub awaiting: Option<Awaiting>,
    /// The task it is about, if any.
    pub about: Option<String>,
    /// A keep-alive `task_progress` (repeats the last value): needless once
    /// anything else about its task went out.
    pub keepalive: bool,
    /// Its place in the order the core sent frames in.
    pub seq: u64,
    pub sent_at: Instant,
}

impl Sent {
    /// No answer is expected: handled silently (or dropped).
    pub fn expects_no_answer(&self) -> bool {
        self.awaiting.is_none() && self.kind() != OutKind::Ping
    }

    pub fn kind(&self) -> OutKind {
        self.frame.kind()
    }

    /// See [`OutKind::informational`].
    pub fn informational(&self) -> bool {
        self.kind().informational()
    }

    fn supersedes(&self, other: &Sent) -> bool {
        self.informational() && self.kind() == other.kind() && self.about == other.about
    }
}

#[derive(Debug, Default)]
pub(super) struct Outbox {
    frames: VecDeque<Sent>,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn clear(&mut self) {
        self.frames.clear();
    }

    /// Queues a frame at the back. An informational frame takes the place of
    /// a waiting one of its type and task (a keep-alive gives way to a real
    /// progress update). Returns how many frames were merged away.
    pub fn push(&mut self, frame: Sent) -> usize {
        if let Some(waiting) = self.frames.iter_mut().find(|w| frame.supersedes(w)) {
            // A keep-alive does not replace a real update.
            if !frame.keepalive || waiting.keepalive {
                waiting.frame = frame.frame;
                waiting.keepalive = frame.keepalive;
            }
            return 1;
        }
        self.frames.push_back(frame);
        0
    }

    /// Frames the hub dropped go back to their place in the order they were
    /// first sent in (before every frame queued after them); an
    /// informational one a newer waiting frame has replaced is left out.
    /// Returns how many were left out.
    pub fn take_back(&mut self, frames: Vec<Sent>) -> usize {
        let mut left_out = 0;
        for frame in frames {
            if self.frames.iter().any(|w| w.supersedes(&frame)) {
                left_out += 1;
            } else {
                let at = self.frames.partition_point(|w| w.seq < frame.seq);
                self.frames.insert(at, frame);
            }
        }
        left_out
    }

    /// The frame to send next: the oldest one that awaits an answer, else
    /// the oldest informational one.
    pub fn next(&self) -> Option<&Sent> {
        self.frames.iter().find(|f| !f.informational()).or_else(|| self.frames.front())
    }

    pub fn pop_next(&mut self) -> Option<Sent> {
        let index = self.frames.iter().position(|f| !f.informational()).or(
            // Only informational frames are left.
            (!self.frames.is_empty()).then_some(0),
        )?;
        self.frames.remove(index)
    }

    /// Removes and returns the first frame matching `is_of`.
    pub fn take(&mut self, is_of: impl Fn(&Sent) -> bool) -> Option<Sent> {
        let index = self.frames.iter().position(is_of)?;
        self.frames.remove(index)
    }

    /// Removes the frames matching `is_of`; returns them.
    pub fn remove_all(&mut self, is_of: impl Fn(&Sent) -> bool) -> Vec<Sent> {
        let mut removed = Vec::new();
        let mut kept = VecDeque::with_capacity(self.frames.len());
        for frame in self.frames.drain(..) {
            if is_of(&frame) {
                removed.push(frame);
            } else {
                kept.push_back(frame);
            }
        }
        self.frames = kept;
        removed
    }
}
