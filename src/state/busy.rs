//! Tasks pushed while the sidecar holds another (both hubs do it: a
//! scheduling run that raced with the push that made us busy, or a push
//! right after a reconnect's `identified` while the task we hold still
//! awaits the answer to `task_recovering`).
//!
//! Such a task is never woken while we are busy and never answered with
//! `task_rejected` (unknown to both hubs, a schema violation on the newer
//! one). It is remembered in memory with its whole assignment and the
//! connection it came on. At the first moment the sidecar holds no task of
//! its own:
//!
//! - pushed on the live connection (no drop since, so as far as we can know
//!   the hub still holds it as ours at that generation): it is **adopted**,
//!   exactly as if it had been pushed just now: persisted, `task_accepted`,
//!   woken. No retry of it is burned and nothing waits for a hub sweep. The
//!   oldest such push goes first; the others wait for the next free moment.
//! - pushed on an earlier connection (the hub may have taken it back since):
//!   on the newer hub it is handed back with `task_failed` and
//!   [`BUSY_REASON`], which re-queues it at once; on the older hub nothing
//!   is sent (its `task_failed` crashes the task queue) and its stuck sweep
//!   returns the task.
//!
//! Hand-backs go out before an adoption's `task_accepted`: that one moves the
//! hub's agent state to `working`, and a `task_failed` after it would move
//! it back to idle while we work, drawing more pushes.

use std::time::Instant;

use super::link::{Awaiting, ReplyKind};
use super::{Effect, State};
use crate::protocol::{Outgoing, TaskAssign};

/// A task pushed while another is held is never woken and never answered
/// with `task_rejected` (unknown to both hubs; a schema violation on the
/// newer one, ten of which lock the sidecar out). It is remembered, and once
/// the sidecar holds no task of its own it is taken if it came on the live
/// connection (see `busy.rs`). If the connection dropped since, the hub may
/// have taken it back: on the older hub nothing is sent for it (its
/// `task_failed` crashes that hub's queue; the hub's own sweep returns the
/// task); on the newer hub it is answered with `task_failed` and this reason
/// (never while busy: it would move the hub's agent state to idle while we
/// work, drawing more pushes). The hub then queues the task again at once.
pub const BUSY_REASON: &str = "busy: the sidecar was working on another task";

/// At most this many tasks pushed while busy are remembered.
const REMEMBERED: usize = 16;

/// A task pushed while another was held.
#[derive(Debug)]
pub(crate) struct BusyPush {
    task_id: String,
    generation: u64,
    assign: TaskAssign,
    /// The wall clock when it came (its `assigned_at` if the hub sent none).
    wall_ms: u64,
    /// The connection it came on.
    conn_id: Option<u64>,
}

impl State {
    /// Remembers a task pushed while we hold another; a later push of the
    /// same id replaces an earlier one.
    pub(super) fn remember_busy_push(
        &mut self,
        task_id: String,
        generation: u64,
        assign: TaskAssign,
        wall_ms: u64,
        fx: &mut Vec<Effect>,
    ) {
        self.pushed_while_busy.retain(|p| p.task_id != task_id);
        if self.pushed_while_busy.len() >= REMEMBERED {
            say!(
                fx,
                Warn,
                "not remembering task {task_id}: {REMEMBERED} tasks pushed while busy are remembered already"
            );
            return;
        }
        let conn_id = self.link.live_conn_id();
        self.pushed_while_busy.push(BusyPush { task_id, generation, assign, wall_ms, conn_id });
    }

    /// Forgets a remembered push of `task_id` (taken now, or cancelled).
    pub(super) fn forget_busy_push(&mut self, task_id: &str) -> bool {
        let before = self.pushed_while_busy.len();
        self.pushed_while_busy.retain(|p| p.task_id != task_id);
        self.pushed_while_busy.len() != before
    }

    /// Once we hold no task: hands back or forgets what cannot be adopted,
    /// then adopts the oldest push of the live connection.
    pub(super) fn take_up_busy_pushes(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if self.task.is_some()
            || !self.link.is_ready()
            || self.link.is_stopped()
            || self.pushed_while_busy.is_empty()
        {
            return;
        }
        let live = self.link.live_conn_id();
        let (current, earlier): (Vec<BusyPush>, Vec<BusyPush>) =
            std::mem::take(&mut self.pushed_while_busy).into_iter().partition(|p| p.conn_id == live);
        for push in earlier {
            let BusyPush { task_id, generation, .. } = push;
            if !self.newer_hub {
                say!(fx, Info, "forgetting task {task_id} (generation {generation}), pushed while busy on an earlier connection: this hub takes it back by itself");
                continue;
            }
            say!(fx, Info, "handing task {task_id} (generation {generation}) back to the hub: it was pushed while we were busy, on an earlier connection");
            let frame =
                Outgoing::TaskFailed { task_id: task_id.clone(), generation, reason: BUSY_REASON.into() };
            let entry = Awaiting { kind: ReplyKind::Failed, task_id, generation };
            self.link.send(frame, Some(entry), fx);
        }
        let mut current = current.into_iter();
        if let Some(push) = current.next() {
            self.pushed_while_busy = current.collect();
            let BusyPush { task_id, generation, assign, wall_ms, .. } = push;
            say!(fx, Info, "taking task {task_id} (generation {generation}), pushed while we were busy on this connection");
            self.take_task(task_id, generation, assign, now, wall_ms, fx);
        }
    }
}
