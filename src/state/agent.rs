//! The agent as it really runs: work its agent has confirmed is never
//! started again, and a run-mode agent that outlived an earlier run of the
//! sidecar is found, watched and ended like the executor's.
//!
//! - Confirmed work: once `.started` appeared (run mode: once the command
//!   was released to run), no wake retry, timeout, reconnect, re-adoption
//!   or restart starts the agent again. A wake command still running then
//!   is the agent at work; how it ends decides the task (`after_confirmed`).
//! - A launcher that exited 0 just before the sidecar died (its exit file
//!   says so) is not woken again at the next start: its agent gets
//!   `confirmation_timeout_ms` to confirm (`start_leftover`).
//! - A run-mode agent left running by an earlier run (`agent_outside`) is
//!   checked every `results_poll` (its exit file), ended on a
//!   cancel or the task's timeout, and left running on shutdown.

use std::time::Instant;

use serde_json::json;

use super::task::Phase;
use super::{record, Effect, Held, State, WakeMode};
use crate::lifecycle_log::LifecycleEvent;
use crate::queue_store::Report;
use crate::wake::{WakeOutcome, WakeStatus};

impl State {
    /// The shell found the agent recorded in queue.json (a run-mode agent,
    /// or a synchronous script whose task is working) still running: it is
    /// watched, not ended. Call before [`State::start`].
    pub fn agent_still_running(&mut self) {
        if self.wake_process.is_some() {
            self.agent_outside = true;
        }
    }

    /// At start: forgets the recorded wake command unless it is a run-mode
    /// agent still at work; a launcher recorded as having exited 0 leaves
    /// its task waiting for confirmation. Whether a record was forgotten.
    pub(super) fn take_leftover(&mut self) -> bool {
        let Some(process) = self.wake_process.clone() else {
            return false;
        };
        if self.agent_outside {
            return false;
        }
        self.wake_process = None;
        let Some(task) = self.task.as_mut() else {
            return true;
        };
        let same_attempt = task.id == process.task_id && task.wake_attempts == process.attempt;
        if process.mode == WakeMode::Launch
            && process.exit_code == Some(0)
            && same_attempt
            && task.phase == (Phase::ToWake { interrupted: true })
        {
            log::info!(
                "the wake command of task {} exited 0 just before the last stop: waiting for its agent to confirm, not waking it again",
                task.id
            );
            task.phase = Phase::Confirming { deadline: None };
        }
        true
    }

    /// Asks the shell about the agent left running, when due.
    pub(super) fn check_agent_outside(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if !self.agent_outside {
            self.agent_check_at = None;
            return;
        }
        let Some(process) = &self.wake_process else {
            self.agent_outside = false;
            return;
        };
        match self.agent_check_at {
            Some(at) if now < at => {}
            _ => {
                if self.agent_check_at.is_some() {
                    fx.push(Effect::CheckAgent { process: process.clone() });
                }
                self.agent_check_at = Some(now + self.settings.results_poll);
            }
        }
    }

    /// The agent left running has ended: its result file is written.
    pub(super) fn on_agent_ended(&mut self, task_id: &str, fx: &mut Vec<Effect>) {
        if !self.agent_outside || self.wake_process.as_ref().is_none_or(|p| p.task_id != task_id) {
            return;
        }
        log::info!("the agent of task {task_id}, left running by an earlier run, has ended");
        self.agent_outside = false;
        self.agent_check_at = None;
        self.wake_process = None;
        fx.push(Effect::Persist(Box::new(self.queue_file())));
        let silence = self.now + self.settings.adopted_silence;
        if let Some(task) = self.task.as_mut().filter(|t| t.id == task_id) {
            // From now on it must show life like any task adopted without a
            // wake (its result is read next).
            if task.phase == Phase::Working {
                task.silent_until = Some(silence);
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
        if self.wake_running.as_deref() == Some(task_id) {
            fx.push(Effect::CancelWake { task_id: task_id.to_owned() });
        }
        if let Some(process) =
            self.wake_process.as_ref().filter(|p| self.agent_outside && p.task_id == task_id)
        {
            fx.push(Effect::EndAgent { process: process.clone() });
            self.agent_outside = false;
            self.agent_check_at = None;
            self.wake_process = None;
        }
    }

    /// A wake command was released to run: in run mode, that is the agent
    /// confirming its task.
    pub(super) fn confirm_run(&mut self, task_id: &str, attempt: u32, fx: &mut Vec<Effect>) {
        if self.settings.wake_mode != WakeMode::Run {
            return;
        }
        if let Some(task) = self.task.as_mut().filter(|t| t.id == task_id) {
            if task.phase == (Phase::Waking { attempt }) {
                task.confirmed = true;
                task.phase = Phase::Working;
                log::info!("agent started for task {task_id} (run mode): confirmed");
                fx.push(record(LifecycleEvent::Confirmed, json!({ "task_id": task_id })));
            }
        }
    }
}

impl Held<'_> {
    /// The held task's wake command ended after its agent had confirmed:
    /// never a retry. Its result file decides; with none, a failed command
    /// fails the task at once (see `exit_failure`).
    pub(super) fn after_confirmed(&mut self, outcome: &WakeOutcome, fx: &mut Vec<Effect>) {
        let task_id = self.task.id.clone();
        let failure = match &outcome.status {
            WakeStatus::Success if self.settings.wake_mode == WakeMode::Launch => None,
            // The executor has written the result file from the run; this
            // only speaks if that failed.
            WakeStatus::Success => {
                Some("agent_failed: the agent exited 0 but its result could not be written".into())
            }
            status => {
                let stderr = match outcome.stderr_last_line() {
                    Some(line) => format!("; last line of stderr: {line}"),
                    None => "; no stderr".to_string(),
                };
                let what = match status {
                    WakeStatus::Failed { exit_code: Some(code) } => format!("exited with status {code}"),
                    WakeStatus::Failed { exit_code: None } => "was killed by a signal".to_string(),
                    WakeStatus::TimedOut => "was killed at wake_timeout_ms".to_string(),
                    other => format!("ended ({other})"),
                };
                Some(format!("agent_failed: the agent {what} after confirming the task{stderr}"))
            }
        };
        if failure.is_some() {
            log::info!("the agent of task {task_id} ended ({}); its result file decides", outcome.status);
        }
        self.task.exit_failure = failure;
        fx.push(Effect::ReadTaskFiles { task_id });
    }

    /// No result file after the agent's process ended with a failure: the
    /// task fails now.
    pub(super) fn fail_if_exited(&mut self, fx: &mut Vec<Effect>) {
        if let Some(reason) = self.task.exit_failure.take() {
            log::warn!("task {} failed: {reason}", self.task.id);
            self.set_outcome(Report::Failed { reason }, fx);
        }
    }
}
