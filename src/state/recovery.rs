//! Recovery: what runs an agent ([`Executor`], one slot), and what an
//! earlier run of the sidecar left behind: the wake command queue.json
//! records, ended or forgotten at start, and a run-mode agent that outlived
//! it, found, watched and ended like the executor's.
//!
//! - A launcher that exited 0 just before the sidecar died (its exit file
//!   says so) is not woken again at the next start: its agent gets
//!   `confirmation_timeout_ms` to confirm (`take_leftover`).
//! - A run-mode agent left running by an earlier run (`Executor::Outside`),
//!   or a synchronous launch-mode script that confirmed and is still at
//!   work, is checked every `results_poll` (its exit file), ended on a
//!   cancel or the task's timeout, and left running on shutdown.
//! - Confirmed work is never started again: once `.started` appeared (run
//!   mode: once the command was released to run), no wake retry, timeout,
//!   reconnect, re-adoption or restart starts the agent again (`waking.rs`,
//!   `working.rs`).

use std::time::Instant;

use super::task::Phase;
use super::{Effect, State, WakeMode, WakeProcess};

/// What runs an agent, as the core knows it: one slot, so that the
/// executor's attempt and a process left by an earlier run cannot be
/// confused.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Executor {
    /// Nothing runs that the core knows of.
    Idle,
    /// Recorded in queue.json by an earlier run (or left running at
    /// shutdown): [`State::start`] forgets it, unless the shell found it
    /// still at work (`Outside`).
    Leftover(WakeProcess),
    /// The executor runs an attempt for `task_id` (it may be a task we
    /// dropped, whose attempt is being cancelled); `process` once it has
    /// started, as persisted so that after a crash the next start can end
    /// it first, or, a run-mode agent, find it again. One attempt at a
    /// time, whichever task it belongs to.
    Running { task_id: String, process: Option<WakeProcess> },
    /// A run-mode agent an earlier run left running: no executor watches
    /// it; it is checked at `check_at` (every `results_poll`).
    Outside { process: WakeProcess, check_at: Option<Instant> },
}

impl Executor {
    /// The process queue.json records.
    pub fn process(&self) -> Option<&WakeProcess> {
        match self {
            Executor::Idle | Executor::Running { process: None, .. } => None,
            Executor::Leftover(process)
            | Executor::Running { process: Some(process), .. }
            | Executor::Outside { process, .. } => Some(process),
        }
    }

    /// The executor is busy with an attempt.
    pub fn is_running(&self) -> bool {
        matches!(self, Executor::Running { .. })
    }

    pub fn is_running_for(&self, task: &str) -> bool {
        matches!(self, Executor::Running { task_id, .. } if task_id == task)
    }

    /// A process of `task`'s agent is known to run (the executor's, or one
    /// an earlier run left).
    pub fn runs_agent_of(&self, task: &str) -> bool {
        match self {
            Executor::Running { task_id, .. } => task_id == task,
            Executor::Outside { process, .. } => process.task_id == task,
            Executor::Idle | Executor::Leftover(_) => false,
        }
    }

    /// When the agent left running is next checked.
    pub fn check_at(&self) -> Option<Instant> {
        match self {
            Executor::Outside { check_at, .. } => *check_at,
            _ => None,
        }
    }

    /// The executor reported attempt `attempt` of `task` ended: whether it
    /// was the one running (the executor is idle now), and whether it was
    /// recorded (queue.json must forget it).
    pub fn finished(&mut self, task: &str, attempt: u32) -> (bool, bool) {
        let Executor::Running { task_id, process } = self else {
            return (false, false);
        };
        if task_id != task {
            return (false, false);
        }
        let recorded = process.as_ref().is_some_and(|p| p.attempt == attempt);
        // An outcome of another attempt leaves the recorded one recorded.
        let left = if recorded { None } else { process.take() };
        *self = left.map_or(Executor::Idle, Executor::Leftover);
        (true, recorded)
    }

    /// Shutdown: the executor's attempt is no longer ours to watch (a
    /// launcher is killed when the executor stops; a run-mode agent is left
    /// running, recorded for the next start).
    pub fn stop(&mut self) {
        if let Executor::Running { process, .. } = self {
            *self = process.take().map_or(Executor::Idle, Executor::Leftover);
        }
    }
}

impl State {
    /// The shell found the agent recorded in queue.json (a run-mode agent,
    /// or a synchronous script whose task is working) still running: it is
    /// watched, not ended. Call before [`State::start`].
    pub fn agent_still_running(&mut self) {
        if let Executor::Leftover(process) = &self.kept.executor {
            self.kept.executor = Executor::Outside { process: process.clone(), check_at: None };
        }
    }

    /// At start: forgets the recorded wake command unless it is a run-mode
    /// agent still at work; a launcher recorded as having exited 0 leaves
    /// its task waiting for confirmation. Whether a record was forgotten.
    pub(super) fn take_leftover(&mut self, fx: &mut Vec<Effect>) -> bool {
        let Executor::Leftover(process) = &self.kept.executor else {
            return false;
        };
        let process = process.clone();
        self.kept.executor = Executor::Idle;
        let Some(task) = self.task.as_mut() else {
            return true;
        };
        let same_attempt = task.id == process.task_id && task.wake_attempts == process.attempt;
        if process.mode == WakeMode::Launch
            && process.exit_code == Some(0)
            && same_attempt
            && matches!(task.phase(), Some(Phase::ToWake { interrupted: true, .. }))
        {
            say!(
                fx, Info,
                "the wake command of task {} exited 0 just before the last stop: waiting for its agent to confirm, not waking it again",
                task.id
            );
            task.set_phase(Phase::Confirming { deadline: None });
        }
        true
    }

    /// Asks the shell about the agent left running, when due.
    pub(super) fn check_agent_outside(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let Executor::Outside { process, check_at } = &mut self.kept.executor else {
            return;
        };
        match *check_at {
            Some(at) if now < at => {}
            _ => {
                if check_at.is_some() {
                    fx.push(Effect::CheckAgent { process: process.clone() });
                }
                *check_at = Some(now + self.settings.results_poll);
            }
        }
    }

    /// The agent left running has ended: its result file is written.
    pub(super) fn on_agent_ended(&mut self, task_id: &str, fx: &mut Vec<Effect>) {
        if !matches!(&self.kept.executor, Executor::Outside { process, .. } if process.task_id == task_id) {
            return;
        }
        say!(fx, Info, "the agent of task {task_id}, left running by an earlier run, has ended");
        self.kept.executor = Executor::Idle;
        fx.push(Effect::Persist(Box::new(self.queue_file())));
        let silence = self.now + self.settings.adopted_silence;
        if let Some(task) = self.task.as_mut().filter(|t| t.id == task_id) {
            // From now on it must show life like any task adopted without a
            // wake (its result is read next).
            if let Some(Phase::Working { silent_until, .. }) = task.phase_mut() {
                *silent_until = Some(silence);
            }
            fx.push(Effect::ReadTaskFiles { task_id: task_id.to_owned() });
        }
    }

    /// The task's work is being stopped (cancel, timeout, settled): a
    /// process of its agent is ended gracefully, and with a `reason` (a
    /// cancel, a timeout) its agent learns it from the marker file.
    pub(super) fn stop_agent(&mut self, task_id: &str, reason: Option<&str>, fx: &mut Vec<Effect>) {
        if let Some(reason) = reason {
            fx.push(Effect::MarkCancelled { task_id: task_id.to_owned(), reason: reason.to_owned() });
            if let Some(task) = self.task.as_mut().filter(|t| t.id == task_id) {
                task.cancel_marked = true;
            }
        }
        if self.kept.executor.is_running_for(task_id) {
            fx.push(Effect::CancelWake { task_id: task_id.to_owned() });
        }
        if matches!(&self.kept.executor, Executor::Outside { process, .. } if process.task_id == task_id) {
            if let Executor::Outside { process, .. } =
                std::mem::replace(&mut self.kept.executor, Executor::Idle)
            {
                fx.push(Effect::EndAgent { process });
            }
        }
    }
}
