//! Intake: a `task_assign` taken (persisted, acknowledged, then woken),
//! refused (no task id, a bad generation), remembered while busy
//! (`busy.rs`), or, for the task we hold, a resend or a hand-back at a
//! higher generation adopted without a new wake.

use std::time::Instant;

use serde_json::json;

use super::is_valid_task_id;
use super::link::ReplyKind;
use super::task::{HubSync, Phase, Task};
use super::LifecycleEvent;
use super::{record, Effect, State};
use crate::protocol::{Outgoing, TaskAssign};

/// Keys only the newer hub's `task_assign` carries.
const NEWER_HUB_ASSIGN_KEYS: &[&str] = &[
    "repo",
    "branch",
    "file_hints",
    "success_criteria",
    "verification_steps",
    "complexity",
    "routing_decision",
    "skip_verification",
    "verification_timeout_ms",
    "max_verification_retries",
];

impl State {
    pub(super) fn on_assign(&mut self, assign: TaskAssign, now: Instant, wall_ms: u64, fx: &mut Vec<Effect>) {
        let Some(task_id) = assign.task_id.clone() else {
            say!(fx, Warn, "refusing a task_assign without a task_id");
            self.refuse(None, "invalid task_assign: missing task_id", fx);
            return;
        };
        if !is_valid_task_id(&task_id) {
            let shown: String = task_id.chars().take(64).collect();
            say!(fx, Warn, "refusing task_assign with an invalid task_id {shown:?}");
            self.refuse(Some(&shown), "invalid task_id", fx);
            return;
        }
        let generation = match &assign.generation {
            Ok(generation) => *generation,
            Err(value) => {
                let shown: String = value.chars().take(64).collect();
                say!(
                    fx,
                    Warn,
                    "refusing task {task_id}: its generation {shown} is not an integer in 0..2^64"
                );
                self.refuse(Some(&task_id), &format!("invalid generation {shown}"), fx);
                return;
            }
        };
        if assign.fields.keys().any(|k| NEWER_HUB_ASSIGN_KEYS.contains(&k.as_str())) {
            self.mark_newer_hub();
        }
        if self.holds(&task_id) {
            self.on_assigned_again(generation, now, fx);
            return;
        }
        // A report of an earlier hold of it, or a busy hand-back, still
        // waiting to go out under an older generation is out of date now.
        super::reporting::withdraw_stale_reports(&mut self.link, &task_id, Some(generation), fx);
        if let Some(busy_with) = self.held_task_id() {
            say!(fx, Info, "not taking task {task_id} now: busy with {busy_with}; remembering it");
            self.refuse(Some(&task_id), "busy", fx);
            self.remember_busy_push(task_id, generation, assign, wall_ms, fx);
            return;
        }
        self.forget_busy_push(&task_id);
        if self.link.is_stopped() {
            self.refuse(Some(&task_id), "shutting down", fx);
            return;
        }
        self.take_task(task_id, generation, assign, now, wall_ms, fx);
    }

    /// Takes a task while holding none: persisted, acknowledged, woken.
    pub(super) fn take_task(
        &mut self,
        task_id: String,
        generation: u64,
        assign: TaskAssign,
        now: Instant,
        wall_ms: u64,
        fx: &mut Vec<Effect>,
    ) {
        let handed_back = self.take_past(&task_id);
        let mut task = Task::accepted(task_id, generation, assign, wall_ms);
        if let Some(past) = handed_back {
            say!(
                fx, Info,
                "task {} handed back at generation {generation} (taken back at {}); looking at its files before waking",
                task.id,
                past.generation
            );
            task.set_phase(Phase::Adopting { confirmed: false });
        }
        say!(fx, Info, "accepted task {} (generation {})", task.id, task.generation);
        fx.push(record(LifecycleEvent::TaskAccepted, task.fields()));
        self.task = Some(task);
        if let Some(task) = &self.task {
            // Persist before acknowledging: the ack promises we hold it.
            self.kept.persist(Some(task), fx);
            self.accept(fx);
            self.resume_work(now, fx);
        }
    }

    /// A task we do not take. Nothing is sent: neither hub has a frame for
    /// it (`task_rejected` is unknown to both, and a schema violation on the
    /// newer one).
    fn refuse(&mut self, task_id: Option<&str>, reason: &str, fx: &mut Vec<Effect>) {
        fx.push(record(LifecycleEvent::TaskRefused, json!({ "task_id": task_id, "reason": reason })));
    }

    /// `task_assign` for the task we hold: a resend, or the hub handing the
    /// same work back at a higher generation (docs/protocol.md section 5.3), which
    /// is adopted without waking the agent again.
    fn on_assigned_again(&mut self, generation: u64, now: Instant, fx: &mut Vec<Effect>) {
        let task = held!(self);
        let task_id = task.id.clone();
        if generation <= task.generation {
            say!(fx, Debug, "task {task_id} assigned again at generation {generation}: a resend");
            let frame = Outgoing::TaskAccepted { task_id };
            self.link.send_about(&task.id, frame, ReplyKind::Accepted, generation, fx);
            return;
        }
        say!(
            fx,
            Info,
            "task {task_id} handed back at generation {generation} (was {}); adopting it",
            task.generation
        );
        super::reporting::raise_generation(task, &mut self.link, generation, fx);
        let resume = task.sync == HubSync::Recovered;
        if task.needs_reconcile() {
            task.sync = HubSync::Unconfirmed { readopted: true };
        }
        fx.push(record(LifecycleEvent::TaskReadopted, task.fields()));
        self.kept.persist(Some(task), fx);
        self.accept(fx);
        if resume {
            self.resume_work(now, fx);
        }
        self.try_send_report(fx);
    }

    pub(super) fn accept(&mut self, fx: &mut Vec<Effect>) {
        let task = held!(self);
        if let Some(live) = task.live_mut() {
            live.progress.touched_at = Some(self.link.now());
        }
        let frame = Outgoing::TaskAccepted { task_id: task.id.clone() };
        self.link.send_about(&task.id, frame, ReplyKind::Accepted, task.generation, fx);
    }
}
