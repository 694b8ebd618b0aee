//! What the hub hears about the held task: `task_recovering` after each
//! (re)connect and its answers, the outcome (persisted, then reported),
//! progress, the acks and refusals that settle a report, and forgetting a
//! task once the hub has settled it or taken it back.

use std::time::Instant;

use serde_json::json;

use super::link::{Awaiting, Link, ReplyKind};
use super::task::{HubSync, Stage, Task};
use super::LifecycleEvent;
use super::{record, Effect, State};
use super::{PastFate, Report};
use crate::protocol::{self, AckStatus, Outgoing};

impl State {
    /// After a (re)connect the hub may have taken the task back: ask before
    /// reporting anything about it.
    pub(super) fn ask_hub_about_task(&mut self, fx: &mut Vec<Effect>) {
        let task = held!(self);
        if task.sync != HubSync::Recovered {
            task.sync = HubSync::Unconfirmed { readopted: false };
        }
        let t = &*task;
        say!(fx, Info, "asking the hub about task {} (generation {})", t.id, t.generation);
        fx.push(record(LifecycleEvent::RecoveringSent, t.fields()));
        let recovering = Outgoing::TaskRecovering {
            task_id: t.id.clone(),
            description: t.description.clone(),
            metadata: t.metadata.clone(),
            last_status: t.status(),
        };
        let state_report = self.settings.send_state_report.then(|| Outgoing::StateReport {
            task_id: t.id.clone(),
            generation: t.generation,
            status: t.status(),
            assigned_at: t.assigned_at,
        });
        let generation = t.generation;
        self.link.send_about(&task.id, recovering, ReplyKind::Recovering, generation, fx);
        if let Some(frame) = state_report {
            self.link.send_about(&task.id, frame, ReplyKind::StateReport, generation, fx);
        }
    }

    /// `task_continue`: the task is still ours.
    pub(super) fn on_continue(&mut self, generation: Option<u64>, now: Instant, fx: &mut Vec<Effect>) {
        let task = held!(self);
        if let Some(generation) = generation {
            raise_generation(task, &mut self.link, generation, fx);
        }
        say!(fx, Info, "hub says task {} is still ours (generation {})", task.id, task.generation);
        fx.push(record(LifecycleEvent::TaskContinued, task.fields()));
        let resume = task.sync == HubSync::Recovered;
        task.sync = HubSync::Confirmed;
        self.kept.persist(Some(task), fx);
        // The hub's agent state restarts in `assigned` after a reconnect
        // (4718a58) and takes the task back 60 s later unless it hears
        // task_accepted; on both hubs it is answered task_ack and harmless.
        self.accept(fx);
        if resume {
            self.resume_work(now, fx);
        }
        self.try_send_report(fx);
        self.flush_progress(now, fx);
    }

    /// Records the outcome durably, then reports it when allowed.
    pub(super) fn set_outcome(&mut self, report: Report, fx: &mut Vec<Effect>) {
        let task = held!(self);
        if task.report().is_some() {
            return;
        }
        let (event, detail) = match &report {
            Report::Complete { .. } => (LifecycleEvent::ResultReceived, json!("success")),
            Report::Failed { reason } => (LifecycleEvent::TaskFailedHere, json!(reason)),
        };
        let t = &mut *task;
        say!(fx, Info, "task {} finished: {}", t.id, detail);
        fx.push(record(event, json!({ "task_id": t.id, "generation": t.generation, "outcome": detail })));
        // Progress after the outcome means nothing to the hub (it ends with
        // the task's work), nor does any progress or wake_result still
        // waiting for a token.
        t.conclude(report);
        self.link.forget_info(&t.id);
        self.kept.persist(Some(task), fx);
        self.try_send_report(fx);
    }

    pub(super) fn try_send_report(&mut self, fx: &mut Vec<Effect>) {
        let task = held!(self);
        if !self.link.is_ready() || task.needs_reconcile() {
            return;
        }
        let (task_id, generation) = (task.id.clone(), task.generation);
        let Stage::Reporting { report, sent: sent @ None, .. } = &mut task.stage else {
            return;
        };
        let (frame, kind) = match report {
            Report::Complete { result } => (
                Outgoing::TaskComplete { task_id: task_id.clone(), generation, result: result.clone() },
                ReplyKind::Complete,
            ),
            Report::Failed { reason } => (
                Outgoing::TaskFailed { task_id: task_id.clone(), generation, reason: reason.clone() },
                ReplyKind::Failed,
            ),
        };
        *sent = Some(generation);
        say!(fx, Info, "reporting task {task_id} (generation {generation})");
        fx.push(record(
            LifecycleEvent::ReportSent,
            json!({ "task_id": task_id, "generation": generation, "type": frame.kind().wire_name() }),
        ));
        self.link.send_about(&task_id, frame, kind, generation, fx);
    }

    pub(super) fn flush_progress(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let task = held!(self);
        if !self.link.is_ready() || task.needs_reconcile() {
            return;
        }
        let task_id = task.id.clone();
        let Some(live) = task.live_mut() else {
            return;
        };
        let progress = &mut live.progress;
        if progress.last_sent_at.is_some_and(|last| now < last + self.settings.progress_interval) {
            return;
        }
        let keepalive_due = match (self.settings.keepalive_interval, progress.touched_at) {
            (Some(every), Some(touched)) => now >= touched + every,
            _ => false,
        };
        // A keep-alive repeats the last value sent (0 before any).
        let (keepalive, (value, message)) = match progress.pending.take() {
            Some(update) => (false, update),
            None if keepalive_due => (true, progress.last_value.clone().unwrap_or((0, None))),
            None => return,
        };
        progress.last_sent_at = Some(now);
        progress.touched_at = Some(now);
        progress.last_value = Some((value, message.clone()));
        let frame = Outgoing::TaskProgress { task_id: task_id.clone(), progress: value, message };
        self.link.send_progress(&task_id, frame, keepalive, fx);
    }

    pub(super) fn on_ack(&mut self, task_id: &str, status: &AckStatus, fx: &mut Vec<Effect>) {
        let kind = match status {
            AckStatus::Accepted => ReplyKind::Accepted,
            AckStatus::Complete => ReplyKind::Complete,
            AckStatus::Retried | AckStatus::DeadLetter => ReplyKind::Failed,
            AckStatus::Unknown(other) => {
                say!(fx, Warn, "task_ack for {task_id} with unknown status {other:?}");
                return;
            }
        };
        let Some(entry) = self.link.take_awaiting(&[kind]) else {
            say!(fx, Debug, "task_ack {} for {task_id} answers nothing we sent", status.as_str());
            return;
        };
        if kind != ReplyKind::Accepted {
            self.settle(&entry, status.as_str(), fx);
        }
    }

    pub(super) fn on_report_refused(&mut self, entry: &Awaiting, why: &str, fx: &mut Vec<Effect>) {
        if let Some(task) = self.task.as_mut().filter(|t| t.id == entry.task_id) {
            if entry.generation < task.generation {
                // We adopted a newer generation while this report was in
                // flight; the refusal is of the old one. Report again under
                // the new one.
                say!(
                    fx,
                    Info,
                    "report of {} under old generation {} refused ({why}); resending",
                    entry.task_id,
                    entry.generation
                );
                if let Stage::Reporting { sent, .. } = &mut task.stage {
                    *sent = None;
                }
                self.try_send_report(fx);
                return;
            }
        }
        if protocol::is_final_refusal(why) {
            say!(fx, Warn, "hub refused the report of task {} ({why}); dropping it", entry.task_id);
            self.settle(entry, &format!("refused: {why}"), fx);
        } else {
            say!(
                fx,
                Warn,
                "hub refused the report of task {} ({why}); will resend after reconnecting",
                entry.task_id
            );
        }
    }

    /// The hub's schema refused the report in `entry`: it can never pass.
    pub(super) fn on_report_invalid(&mut self, entry: &Awaiting, errors: &str, fx: &mut Vec<Effect>) {
        if let Some(report) = self.task.as_ref().filter(|t| t.id == entry.task_id).and_then(|t| t.report()) {
            say!(
                fx,
                Error,
                "the hub cannot accept the report of task {}: {errors}; giving it up",
                entry.task_id
            );
            fx.push(record(
                LifecycleEvent::ReportRefused,
                json!({ "task_id": entry.task_id, "generation": entry.generation, "errors": errors, "report": report }),
            ));
        }
        self.settle(entry, "refused: validation_failed", fx);
    }

    /// The hub has answered the report in `entry` for good: forget the task.
    pub(super) fn settle(&mut self, entry: &Awaiting, how: &str, fx: &mut Vec<Effect>) {
        let reporting = self.task.as_ref().is_some_and(|t| t.id == entry.task_id && t.report().is_some());
        if !reporting {
            say!(fx, Debug, "settlement of {} for a task we no longer hold", entry.task_id);
            return;
        }
        say!(fx, Info, "report of task {} settled: {how}", entry.task_id);
        let witness = record(
            LifecycleEvent::ReportSettled,
            json!({ "task_id": entry.task_id, "generation": entry.generation, "how": how }),
        );
        self.let_go(PastFate::Settled, witness, fx);
    }

    pub(super) fn on_reassign(&mut self, task_id: &str, fx: &mut Vec<Effect>) {
        let Some(task) = self.task.as_mut().filter(|t| t.id == *task_id) else {
            say!(fx, Debug, "task_reassign for {task_id}, which we do not hold");
            return;
        };
        if task.sync == (HubSync::Unconfirmed { readopted: true }) {
            say!(fx, Info, "ignoring task_reassign for {task_id}: the hub handed it back since");
            task.sync = HubSync::Confirmed;
            self.try_send_report(fx);
            return;
        }
        if let Some(report) = task.report() {
            say!(fx, Warn, "task {task_id} was taken back by the hub; its result is withheld (kept in the lifecycle log)");
            fx.push(record(
                LifecycleEvent::ResultWithheld,
                json!({ "task_id": task_id, "generation": task.generation, "report": report }),
            ));
        }
        self.drop_task("taken back by hub (task_reassign)", PastFate::TakenBack, fx);
    }
}

/// The hub gave `task` a newer generation. A report under an older one
/// that has not gone out yet (held back by `rate_limited`) is withdrawn
/// from `link`, to go out under the new one when the caller next tries to
/// report. One already sent is refused as stale and sent again then
/// (`on_report_refused`).
pub(super) fn raise_generation(task: &mut Task, link: &mut Link, generation: u64, fx: &mut Vec<Effect>) {
    if generation <= task.generation {
        return;
    }
    task.generation = generation;
    if withdraw_stale_reports(link, &task.id, Some(generation), fx) {
        task.report_withdrawn();
    }
}

/// Takes back the reports of `task_id` waiting to go out (held back by
/// `rate_limited`): all of them, or those under a generation below `below`.
/// They no longer speak for the task (it was let go of, or the hub has
/// given it a newer generation): the hub would refuse them as stale, or
/// take a let-go hold's result for a later one. Whether any was taken.
pub(super) fn withdraw_stale_reports(
    link: &mut Link,
    task_id: &str,
    below: Option<u64>,
    fx: &mut Vec<Effect>,
) -> bool {
    let withdrawn = link.withdraw_unsent(|a| {
        matches!(a.kind, ReplyKind::Complete | ReplyKind::Failed)
            && a.task_id == task_id
            && below.is_none_or(|generation| a.generation < generation)
    });
    for stale in &withdrawn {
        say!(
            fx,
            Info,
            "not sending the held-back report of task {} under generation {}: it is out of date",
            stale.task_id,
            stale.generation
        );
    }
    !withdrawn.is_empty()
}
