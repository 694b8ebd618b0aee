//! Letting go of a task, and what is kept of it while its files may matter.
//!
//! When the hub **settles** a task (its report is answered, or it cancels
//! the task), queue.json first records it as settled, then its files are
//! removed: killed in between, the next start removes them. A later push of
//! the same id is new work, never answered with the old result.
//!
//! When the hub **takes a task back** unsettled (`task_reassign`, or a
//! `state_report_ack` abort of the generation we hold), the agent may still
//! be working on it, and both real hubs hand the same task back moments
//! later at a higher generation. So its files stay, queue.json remembers it
//! (id, generation, whether its agent had confirmed), and a push of that id
//! is adopted without waking the agent again if its `.started` is there;
//! its result, if already written, is reported at the new generation. If
//! the hub does not hand it back within `readopt_window`, its result (if
//! any) goes to the lifecycle log and its files are removed.
//!
//! The rule for an adopted task whose agent then produces nothing (see
//! `Phase::Working`'s `silent_until`): a task taken over without a wake (handed back, or
//! found in queue.json after our own crash, with its agent confirmed) must
//! show life, a new progress value or its result, within `adopted_silence`
//! of the adoption or of its last progress; otherwise it is failed with
//! `adopted_task_silent`. The hub then retries it as new work (its files are
//! removed when that failure settles), which wakes an agent afresh: bounded
//! time, no second agent on the same work while the first may still run.

use std::time::Instant;

use serde_json::json;

use super::LifecycleEvent;
use super::{record, Effect, State};
use super::{PastFate, PastTask};

/// A task we let go of, while its files may matter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Past {
    pub task: PastTask,
    /// Taken back: when its files stop being kept for a hand-back.
    /// Cancelled (settled with its cancel marker written): when its files go.
    pub keep_until: Option<Instant>,
}

/// How many let-go tasks are remembered. More than one: a reconnect often
/// has the hub take the held task back and push another queued task first,
/// and the first one handed back after that must still be adopted. Each
/// taken-back one keeps its files for at most `readopt_window`.
pub(crate) const PAST_REMEMBERED: usize = 8;

/// The tasks we let go of, oldest first, one entry per id, at most
/// [`PAST_REMEMBERED`]. In queue.json the newest is `past`, the others
/// `past_earlier`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct PastTasks(Vec<Past>);

impl PastTasks {
    pub(crate) fn from_queue(past: Option<PastTask>, earlier: Vec<PastTask>) -> PastTasks {
        let mut tasks = PastTasks::default();
        for task in earlier.into_iter().chain(past) {
            // Evicted ones were over the limit when written: nothing to do
            // for them here (start removes settled files; see `start_past`).
            let _ = tasks.push(Past { task, keep_until: None });
        }
        tasks
    }

    /// (`past`, `past_earlier`) for queue.json.
    pub(crate) fn to_queue(&self) -> (Option<PastTask>, Vec<PastTask>) {
        let mut tasks: Vec<PastTask> = self.0.iter().map(|p| p.task.clone()).collect();
        let newest = tasks.pop();
        (newest, tasks)
    }

    pub(crate) fn get(&self, task_id: &str) -> Option<&Past> {
        self.0.iter().find(|p| p.task.task_id == task_id)
    }

    pub(crate) fn remove(&mut self, task_id: &str) -> Option<Past> {
        let at = self.0.iter().position(|p| p.task.task_id == task_id)?;
        Some(self.0.remove(at))
    }

    /// Remembers `past` as the newest (replacing an entry of the same id);
    /// the oldest beyond the limit is returned.
    #[must_use]
    pub(crate) fn push(&mut self, past: Past) -> Option<Past> {
        self.remove(&past.task.task_id);
        self.0.push(past);
        (self.0.len() > PAST_REMEMBERED).then(|| self.0.remove(0))
    }

    pub(crate) fn ids(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|p| p.task.task_id.as_str())
    }

    /// The earliest end of a taken-back task's keep.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.0.iter().filter_map(|p| p.keep_until).min()
    }
}

impl State {
    /// The first effects about the remembered tasks, at start.
    pub(super) fn start_past(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if let Some(held) = self.task.as_ref().map(|t| t.id.clone()) {
            // Held again: its files are the held task's.
            self.kept.past.remove(&held);
        }
        for past in &mut self.kept.past.0 {
            match past.task.fate {
                // A settled task's files may be left by a kill mid-settle.
                PastFate::Settled => fx.push(Effect::RemoveTaskFiles { task_id: past.task.task_id.clone() }),
                PastFate::TakenBack => past.keep_until = Some(now + self.settings.readopt_window),
            }
        }
    }

    /// Stops holding the task. `Settled`: the hub settled or cancelled it,
    /// its files go; `TakenBack`: its files stay for a hand-back. `witness`,
    /// the lifecycle record of why, follows the write of queue.json that
    /// lets go of the task: the log never claims what the disk does not
    /// hold (the soak's checker reads `report_settled` as proof that the
    /// hub's answer was heard).
    pub(super) fn let_go(&mut self, fate: PastFate, witness: Effect, fx: &mut Vec<Effect>) {
        let now = self.now;
        let Some(task_id) = self.task.as_ref().map(|t| t.id.clone()) else { return };
        let confirmed = self.task.as_ref().is_some_and(|t| t.confirmed());
        if fate == PastFate::Settled {
            // Cancelled or settled by the hub: its agent stops.
            self.stop_agent(&task_id, None, fx);
        } else if !confirmed && self.kept.executor.is_running_for(&task_id) {
            // Taken back before its agent confirmed: the hub may hand it to
            // another. Confirmed work goes on: if the hub hands the task
            // back, its result is taken from its files.
            fx.push(Effect::CancelWake { task_id: task_id.clone() });
        }
        let Some(task) = self.task.take() else { return };
        // A report of it still waiting to go out would speak for a hold that
        // has ended; if the hub hands the task back, its result is reported
        // again from its files.
        super::reporting::withdraw_stale_reports(&mut self.link, &task.id, None, fx);
        self.link.forget_info(&task.id);
        // A cancelled task's files (its cancel marker) stay for its agent to
        // notice, `cancel_grace` long; then they go as a taken-back task's do.
        let marked = fate == PastFate::Settled && task.cancel_marked;
        let keep_until = match fate {
            PastFate::TakenBack => Some(now + self.settings.readopt_window),
            PastFate::Settled if marked => Some(now + self.settings.cancel_grace),
            PastFate::Settled => None,
        };
        let past = PastTask {
            task_id: task.id.clone(),
            generation: task.generation,
            fate,
            confirmed: task.confirmed(),
        };
        // Beyond the limit, the oldest is forgotten: a taken-back one's
        // files go with it (after the write that forgets it).
        let evicted = self.kept.past.push(Past { task: past, keep_until });
        // Recorded before the files go, so a kill in between cannot leave
        // them to be taken for a later push's result.
        fx.push(Effect::Persist(Box::new(self.queue_file())));
        fx.push(witness);
        if let Some(evicted) =
            evicted.filter(|e| e.task.fate == PastFate::TakenBack || e.keep_until.is_some())
        {
            fx.push(Effect::DiscardTaskFiles { task_id: evicted.task.task_id });
        }
        if fate == PastFate::Settled && !marked {
            fx.push(Effect::RemoveTaskFiles { task_id: task.id });
        }
    }

    /// The remembered task `task_id`, if it was taken back (so a push of it
    /// is adopted); forgotten either way once the id is pushed again.
    pub(super) fn take_past(&mut self, task_id: &str) -> Option<PastTask> {
        self.kept.past.remove(task_id).map(|p| p.task).filter(|t| t.fate == PastFate::TakenBack)
    }

    /// Taken-back tasks not handed back in time: their results go to the
    /// lifecycle log, their files away. A cancelled task's files go once its
    /// grace is over (it stays remembered, as settled tasks are).
    pub(super) fn on_past_tick(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let mut settled = Vec::new();
        let mut gone = Vec::new();
        self.kept.past.0.retain_mut(|p| {
            if p.keep_until.is_none_or(|at| now < at) {
                return true;
            }
            p.keep_until = None;
            let task_id = p.task.task_id.clone();
            if p.task.fate == PastFate::Settled {
                settled.push(task_id);
                true
            } else {
                gone.push(task_id);
                false
            }
        });
        for task_id in settled {
            fx.push(Effect::DiscardTaskFiles { task_id });
        }
        if gone.is_empty() {
            return;
        }
        fx.push(Effect::Persist(Box::new(self.queue_file())));
        for task_id in gone {
            say!(fx, Info, "task {task_id} was not handed back; discarding its files");
            fx.push(Effect::DiscardTaskFiles { task_id });
        }
    }

    /// The hub cancelled the held task, settled it, or took it back.
    pub(super) fn drop_task(&mut self, why: &str, fate: PastFate, fx: &mut Vec<Effect>) {
        if let Some(task_id) = self.held_task_id() {
            say!(fx, Info, "dropping task {task_id}: {why}");
            let witness = record(LifecycleEvent::TaskDropped, json!({ "task_id": task_id, "why": why }));
            self.let_go(fate, witness, fx);
        }
    }
}
