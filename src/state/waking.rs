//! Waking: the wake command started for the held task (with retries at
//! `wake_retry_delays_ms`), recorded in queue.json before it is released to
//! run, and what each attempt's outcome means: a retry, the wait for the
//! agent's `.started`, or (run mode, or confirmed while it ran) the agent's
//! own end.

use std::time::Instant;

use serde_json::{json, Value};

use super::link::ReplyKind;
use super::recovery::Executor;
use super::task::Phase;
use super::{record, Effect, State, WakeStart};
use super::{LifecycleEvent, Report, WakeMode, WakeProcess};
use super::{WakeOutcome, WakeStarted, WakeStatus};
use crate::protocol::Outgoing;

impl State {
    /// A failed attempt's retry is due once its delay has passed and the
    /// executor is free.
    pub(super) fn on_retry_tick(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let task = held!(self);
        if let Some(&Phase::WakeRetry { at }) = task.phase() {
            if now >= at && !self.kept.executor.is_running() {
                let attempt = task.wake_attempts + 1;
                self.start_wake_attempt(attempt, now, fx);
            }
        }
    }

    /// A wake command has started and waits at its gate: persisted, then
    /// released. A crash before the persist leaves a command that never
    /// runs; one after it, a command the next start finds and ends before
    /// any new wake.
    pub(super) fn on_wake_started(&mut self, started: WakeStarted, fx: &mut Vec<Effect>) {
        let WakeStarted { task_id, attempt, identity } = started;
        say!(fx, Debug, "wake attempt {attempt} for task {task_id} runs as {identity:?}");
        let mode = self.settings.wake_mode;
        let process = WakeProcess { task_id: task_id.clone(), attempt, identity, mode, exit_code: None };
        self.kept.executor = Executor::Running { task_id: task_id.clone(), process: Some(process) };
        // Recorded before it runs: in run mode, as confirmed.
        self.confirm_run(&task_id, attempt, fx);
        fx.push(Effect::Persist(Box::new(self.queue_file())));
        fx.push(Effect::ReleaseWake { task_id, attempt });
    }

    /// An attempt ended: it is no longer recorded as running (persisted with
    /// whatever the outcome changes, or on its own).
    pub(super) fn on_wake_finished(&mut self, outcome: WakeOutcome, now: Instant, fx: &mut Vec<Effect>) {
        let (was_running, ended) = self.kept.executor.finished(&outcome.task_id, outcome.attempt);
        let first = fx.len();
        self.on_wake_outcome(outcome, was_running, now, fx);
        if ended && !fx[first..].iter().any(|effect| matches!(effect, Effect::Persist(_))) {
            fx.push(Effect::Persist(Box::new(self.queue_file())));
        }
    }

    /// `was_running`: the executor ran this attempt (it is idle now).
    fn on_wake_outcome(
        &mut self,
        outcome: WakeOutcome,
        was_running: bool,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let error = outcome.status.error();
        fx.push(record(
            LifecycleEvent::WakeFinished,
            json!({
                "task_id": outcome.task_id,
                "attempt": outcome.attempt,
                "status": outcome.status.word(),
                "error": error,
                "elapsed_ms": outcome.elapsed.as_millis() as u64,
                "stdout": outcome.stdout_tail,
                "stderr": outcome.stderr_tail,
            }),
        ));
        if matches!(outcome.status, WakeStatus::Cancelled | WakeStatus::LeftRunning) {
            return;
        }
        let Some(task) = self.task.as_mut().filter(|t| t.id == outcome.task_id) else {
            return;
        };
        // The attempt of the held task that was running: still waking, or
        // the task's outcome came while the command ran.
        let current = match task.phase() {
            Some(Phase::Waking) => task.wake_attempts == outcome.attempt,
            // Confirmed while it ran (or adopted while it still ran): the
            // executor runs one command at a time, so it is this task's.
            Some(Phase::Working { .. }) | None => was_running,
            _ => false,
        };
        if !current {
            return;
        }
        if self.settings.send_wake_result {
            let frame = Outgoing::WakeResult {
                task_id: outcome.task_id.clone(),
                status: outcome.status.clone(),
                attempt: outcome.attempt,
                error: error.as_deref().map(super::public::without_local_paths),
            };
            self.link.send_about(&task.id, frame, ReplyKind::Unhandled, 0, fx);
        }
        match task.phase() {
            // Not confirmed: a confirmation moves it on to `Working`.
            Some(Phase::Waking) => {
                let attempt = task.wake_attempts;
                // The one line a failed attempt gets: what failed and why.
                let error = error.map(|error| match outcome.stderr_last_line() {
                    Some(line) => (format!("{error}; last line of stderr: {line}"), error),
                    None => (format!("{error}; no stderr"), error),
                });
                self.after_attempt(attempt, outcome.status == WakeStatus::Success, error, now, fx)
            }
            Some(Phase::Working { .. }) => self.after_confirmed(&outcome, fx),
            _ => {}
        }
    }

    /// A wake command was released to run: in run mode, that is the agent
    /// confirming its task.
    pub(super) fn confirm_run(&mut self, task_id: &str, attempt: u32, fx: &mut Vec<Effect>) {
        if self.settings.wake_mode != WakeMode::Run {
            return;
        }
        if let Some(task) = self.task.as_mut().filter(|t| t.id == task_id) {
            if task.phase() == Some(&Phase::Waking) && task.wake_attempts == attempt {
                task.confirm();
                say!(fx, Info, "agent started for task {task_id} (run mode): confirmed");
                fx.push(record(LifecycleEvent::Confirmed, json!({ "task_id": task_id })));
            }
        }
    }

    /// Starts or resumes work on the task according to its phase: wake it if
    /// it was never woken, otherwise wait for its files.
    pub(super) fn resume_work(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let task = held!(self);
        let timeout_at = self.settings.task_timeout.map(|t| now + t);
        let confirm_by = now + self.settings.confirmation_timeout;
        let silent_until = now + self.settings.adopted_silence;
        let task_id = task.id.clone();
        let Some(live) = task.live_mut() else {
            return;
        };
        live.timeout_at = live.timeout_at.or(timeout_at);
        match &mut live.phase {
            Phase::ToWake { .. } => self.begin_work(now, fx),
            Phase::Confirming { deadline } => *deadline = Some(confirm_by),
            Phase::Working { silent_until: until, .. } => {
                // Taken over after our crash without a wake.
                until.get_or_insert(silent_until);
            }
            Phase::Adopting { .. } | Phase::Waking | Phase::WakeRetry { .. } => {}
        }
        fx.push(Effect::ReadTaskFiles { task_id });
    }

    /// A task not woken in this run: a task whose `.started` is there is
    /// being worked on and is never woken again; others are woken (or go
    /// straight to working without a wake command).
    pub(super) fn begin_work(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let task = held!(self);
        if task.confirmed() {
            say!(fx, Info, "task {} was confirmed by its agent before: adopting it without a wake", task.id);
            let silent_until = Some(now + self.settings.adopted_silence);
            task.set_phase(Phase::Working { confirmed: true, silent_until, exit_failure: None });
            self.kept.persist(Some(task), fx);
        } else if self.settings.has_wake_command {
            self.start_wake_attempt(1, now, fx);
        } else {
            say!(fx, Info, "no wake_command configured: task {} goes straight to working", task.id);
            task.set_phase(Phase::WORKING);
            self.kept.persist(Some(task), fx);
        }
    }

    pub(super) fn start_wake_attempt(&mut self, attempt: u32, now: Instant, fx: &mut Vec<Effect>) {
        let task = held!(self);
        if self.kept.executor.is_running() {
            // The executor is still finishing another attempt (one being
            // cancelled); start as soon as it reports.
            task.wake_attempts = attempt - 1;
            task.set_phase(Phase::WakeRetry { at: now });
            return;
        }
        let t = &mut *task;
        t.set_phase(Phase::Waking);
        t.wake_attempts = attempt;
        // Everything the hub sent, with our view of the five core fields
        // (the generation may have moved on since the push).
        let mut task_json = t.assignment.clone();
        task_json.insert("task_id".into(), Value::from(t.id.as_str()));
        task_json.insert("description".into(), Value::from(t.description.as_str()));
        task_json.insert("metadata".into(), t.metadata.clone());
        task_json.insert("generation".into(), Value::from(t.generation));
        task_json.insert("assigned_at".into(), Value::from(t.assigned_at));
        let task_json = Value::Object(task_json).to_string();
        let start = WakeStart {
            task_id: t.id.clone(),
            generation: t.generation,
            attempt,
            description: t.description.clone(),
            task_json,
        };
        say!(fx, Info, "waking the agent for task {} (attempt {attempt})", t.id);
        fx.push(record(LifecycleEvent::WakeAttempt, json!({ "task_id": t.id, "attempt": attempt })));
        self.kept.executor = Executor::Running { task_id: t.id.clone(), process: None };
        self.kept.persist(Some(task), fx);
        fx.push(Effect::StartWake(start));
    }

    /// Wake attempt `attempt` ended (not cancelled).
    fn after_attempt(
        &mut self,
        attempt: u32,
        success: bool,
        // What the log says, and what the hub is told.
        error: Option<(String, String)>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let task = held!(self);
        let task_id = task.id.clone();
        if success {
            // Not confirmed yet (that would have ended `Waking`): wait for it.
            task.set_phase(Phase::Confirming { deadline: Some(now + self.settings.confirmation_timeout) });
            say!(fx, Info, "agent woken for task {task_id} (now {})", task.status());
            self.kept.persist(Some(task), fx);
            fx.push(Effect::ReadTaskFiles { task_id });
            return;
        }
        let (logged, error) = error.unwrap_or_default();
        if let Some(delay) = self.settings.wake_retry_delays.get(attempt as usize - 1) {
            say!(
                fx,
                Warn,
                "wake attempt {attempt} for task {task_id} failed ({logged}); retrying in {} ms",
                delay.as_millis()
            );
            task.set_phase(Phase::WakeRetry { at: now + *delay });
        } else {
            say!(fx, Warn, "wake attempt {attempt} for task {task_id} failed ({logged}); no retry left: failing the task");
            let error = super::public::without_local_paths(&error);
            let reason = format!("wake_failed: wake command failed after {attempt} attempts (last: {error})");
            self.set_outcome(Report::Failed { reason }, fx);
        }
    }
}
