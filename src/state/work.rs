//! The held task's work: taking a `task_assign`, waking the agent (with
//! retries), reading its files, and its deadlines.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::agent::Executor;
use super::link::ReplyKind;
use super::report::{parse_progress, report_from_result};
use super::task::{HubSync, Phase, Task, Unparsed};
use super::LifecycleEvent;
use super::{is_valid_task_id, ReadResult};
use super::{record, Effect, Held, State, TaskFiles, WakeStart};
use super::{Report, WakeProcess};
use super::{WakeOutcome, WakeStarted, WakeStatus};
use crate::protocol::{Outgoing, TaskAssign};

impl State {
    // ----- intake -----------------------------------------------------------

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
        if assign.fields.keys().any(|k| super::NEWER_HUB_ASSIGN_KEYS.contains(&k.as_str())) {
            self.mark_newer_hub();
        }
        if let Some(mut held) = self.held_as(&task_id) {
            held.on_assigned_again(generation, now, fx);
            return;
        }
        // A report of an earlier hold of it, or a busy hand-back, still
        // waiting to go out under an older generation is out of date now.
        super::report::withdraw_stale_reports(&mut self.link, &task_id, Some(generation), fx);
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
            task.phase = Phase::Adopting;
        }
        say!(fx, Info, "accepted task {} (generation {})", task.id, task.generation);
        fx.push(record(LifecycleEvent::TaskAccepted, task.fields()));
        self.task = Some(task);
        if let Some(mut held) = self.held() {
            // Persist before acknowledging: the ack promises we hold it.
            held.persist(fx);
            held.accept(fx);
            held.resume_work(now, fx);
        }
    }

    /// A task we do not take. Nothing is sent: neither hub has a frame for
    /// it (`task_rejected` is unknown to both, and a schema violation on the
    /// newer one).
    fn refuse(&mut self, task_id: Option<&str>, reason: &str, fx: &mut Vec<Effect>) {
        fx.push(record(LifecycleEvent::TaskRefused, json!({ "task_id": task_id, "reason": reason })));
    }

    // ----- waking -----------------------------------------------------------

    /// A wake command has started and waits at its gate: persisted, then
    /// released. A crash before the persist leaves a command that never
    /// runs; one after it, a command the next start finds and ends before
    /// any new wake.
    pub(super) fn on_wake_started(&mut self, started: WakeStarted, fx: &mut Vec<Effect>) {
        let WakeStarted { task_id, attempt, identity } = started;
        say!(fx, Debug, "wake attempt {attempt} for task {task_id} runs as {identity:?}");
        let mode = self.settings.wake_mode;
        let process = WakeProcess { task_id: task_id.clone(), attempt, identity, mode, exit_code: None };
        self.executor = Executor::Running { task_id: task_id.clone(), process: Some(process) };
        // Recorded before it runs: in run mode, as confirmed.
        self.confirm_run(&task_id, attempt, fx);
        fx.push(Effect::Persist(Box::new(self.queue_file())));
        fx.push(Effect::ReleaseWake { task_id, attempt });
    }

    /// An attempt ended: it is no longer recorded as running (persisted with
    /// whatever the outcome changes, or on its own).
    pub(super) fn on_wake_finished(&mut self, outcome: WakeOutcome, now: Instant, fx: &mut Vec<Effect>) {
        let (was_running, ended) = self.executor.finished(&outcome.task_id, outcome.attempt);
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
        let Some(mut held) = self.held_as(&outcome.task_id) else {
            return;
        };
        // The attempt of the held task that was running: still waking, or
        // the task's outcome came while the command ran.
        let current = match held.task.phase {
            Phase::Waking => held.task.wake_attempts == outcome.attempt,
            // Confirmed while it ran (or adopted while it still ran): the
            // executor runs one command at a time, so it is this task's.
            Phase::Working { .. } | Phase::Reporting { .. } => was_running,
            _ => false,
        };
        if !current {
            return;
        }
        if held.settings.send_wake_result {
            let frame = Outgoing::WakeResult {
                task_id: outcome.task_id.clone(),
                status: outcome.status.clone(),
                attempt: outcome.attempt,
                error: error.as_deref().map(super::public::without_local_paths),
            };
            held.send_expecting(frame, ReplyKind::Unhandled, 0, fx);
        }
        match held.task.phase {
            Phase::Waking if !held.task.confirmed => {
                let attempt = held.task.wake_attempts;
                // The one line a failed attempt gets: what failed and why.
                let error = error.map(|error| match outcome.stderr_last_line() {
                    Some(line) => (format!("{error}; last line of stderr: {line}"), error),
                    None => (format!("{error}; no stderr"), error),
                });
                held.after_attempt(attempt, outcome.status == WakeStatus::Success, error, now, fx)
            }
            Phase::Waking | Phase::Working { .. } => {
                if !matches!(held.task.phase, Phase::Working { .. }) {
                    held.task.phase = Phase::WORKING;
                }
                held.after_confirmed(&outcome, fx);
            }
            _ => {}
        }
    }
}

impl Held<'_> {
    /// `task_assign` for the task we hold: a resend, or the hub handing the
    /// same work back at a higher generation (docs/protocol.md section 5.3), which
    /// is adopted without waking the agent again.
    fn on_assigned_again(&mut self, generation: u64, now: Instant, fx: &mut Vec<Effect>) {
        let task_id = self.task.id.clone();
        if generation <= self.task.generation {
            say!(fx, Debug, "task {task_id} assigned again at generation {generation}: a resend");
            let frame = Outgoing::TaskAccepted { task_id };
            self.send_expecting(frame, ReplyKind::Accepted, generation, fx);
            return;
        }
        say!(
            fx,
            Info,
            "task {task_id} handed back at generation {generation} (was {}); adopting it",
            self.task.generation
        );
        self.raise_generation(generation, fx);
        let resume = self.task.sync == HubSync::Recovered;
        if self.task.needs_reconcile() {
            self.task.sync = HubSync::Unconfirmed { readopted: true };
        }
        fx.push(record(LifecycleEvent::TaskReadopted, self.task.fields()));
        self.persist(fx);
        self.accept(fx);
        if resume {
            self.resume_work(now, fx);
        }
        self.try_send_report(fx);
    }

    pub(super) fn accept(&mut self, fx: &mut Vec<Effect>) {
        self.task.progress.touched_at = Some(self.link.now());
        let frame = Outgoing::TaskAccepted { task_id: self.task.id.clone() };
        self.send_expecting(frame, ReplyKind::Accepted, self.task.generation, fx);
    }

    /// Starts or resumes work on the task according to its phase: wake it if
    /// it was never woken, otherwise wait for its files.
    pub(super) fn resume_work(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if self.task.timeout_at.is_none() {
            self.task.timeout_at = self.settings.task_timeout.map(|t| now + t);
        }
        match &mut self.task.phase {
            Phase::Reporting { .. } => return,
            Phase::ToWake { .. } => self.begin_work(now, fx),
            Phase::Confirming { deadline } => *deadline = Some(now + self.settings.confirmation_timeout),
            Phase::Working { silent_until, .. } => {
                // Taken over after our crash without a wake.
                silent_until.get_or_insert(now + self.settings.adopted_silence);
            }
            Phase::Adopting | Phase::Waking | Phase::WakeRetry { .. } => {}
        }
        fx.push(Effect::ReadTaskFiles { task_id: self.task.id.clone() });
    }

    /// A task not woken in this run: a task whose `.started` is there is
    /// being worked on and is never woken again; others are woken (or go
    /// straight to working without a wake command).
    fn begin_work(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if self.task.confirmed {
            say!(
                fx,
                Info,
                "task {} was confirmed by its agent before: adopting it without a wake",
                self.task.id
            );
            let silent_until = Some(now + self.settings.adopted_silence);
            self.task.phase = Phase::Working { silent_until, exit_failure: None };
            self.persist(fx);
        } else if self.settings.has_wake_command {
            self.start_wake_attempt(1, now, fx);
        } else {
            say!(fx, Info, "no wake_command configured: task {} goes straight to working", self.task.id);
            self.task.phase = Phase::WORKING;
            self.persist(fx);
        }
    }

    fn start_wake_attempt(&mut self, attempt: u32, now: Instant, fx: &mut Vec<Effect>) {
        if self.executor.is_running() {
            // The executor is still finishing another attempt (one being
            // cancelled); start as soon as it reports.
            self.task.wake_attempts = attempt - 1;
            self.task.phase = Phase::WakeRetry { at: now };
            return;
        }
        let t = &mut *self.task;
        t.phase = Phase::Waking;
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
        *self.executor = Executor::Running { task_id: t.id.clone(), process: None };
        self.persist(fx);
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
        let task_id = self.task.id.clone();
        if success {
            self.task.phase = if self.task.confirmed {
                Phase::WORKING
            } else {
                Phase::Confirming { deadline: Some(now + self.settings.confirmation_timeout) }
            };
            say!(fx, Info, "agent woken for task {task_id} (now {})", self.task.status());
            self.persist(fx);
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
            self.task.phase = Phase::WakeRetry { at: now + *delay };
        } else {
            say!(fx, Warn, "wake attempt {attempt} for task {task_id} failed ({logged}); no retry left: failing the task");
            let error = super::public::without_local_paths(&error);
            let reason = format!("wake_failed: wake command failed after {attempt} attempts (last: {error})");
            self.set_outcome(Report::Failed { reason }, fx);
        }
    }

    // ----- files ------------------------------------------------------------

    pub(super) fn on_files(&mut self, files: TaskFiles, now: Instant, fx: &mut Vec<Effect>) {
        if self.task.report().is_some() {
            return;
        }
        let task_id = files.task_id;
        if files.started && !self.task.confirmed {
            self.task.confirmed = true;
            say!(fx, Info, "agent confirmed task {task_id}");
            fx.push(record(LifecycleEvent::Confirmed, json!({ "task_id": task_id })));
            // Still waking: the wake command is the agent at work (a
            // synchronous script); it is never started again.
            if let Phase::Confirming { .. } | Phase::Waking = self.task.phase {
                self.task.phase = Phase::WORKING;
                self.persist(fx);
            }
        }
        if let ReadResult::Parsed(value) = &files.progress {
            match parse_progress(value) {
                Some(progress) => {
                    let new = self.task.progress.last_value.as_ref() != Some(&progress)
                        && self.task.progress.pending.as_ref() != Some(&progress);
                    if new {
                        self.task.progress.pending = Some(progress);
                        if let Phase::Working { silent_until: Some(until), .. } = &mut self.task.phase {
                            // Life: the silence starts over.
                            *until = now + self.settings.adopted_silence;
                        }
                    }
                }
                None => say!(fx, Debug, "ignoring a progress file for {task_id} without a 0..100 `progress`"),
            }
        }
        match files.result {
            ReadResult::Missing => {
                self.task.unparsed = None;
                self.fail_if_exited(fx);
            }
            ReadResult::Parsed(result) => self.set_outcome(report_from_result(result), fx),
            ReadResult::TooLarge { len } => {
                say!(fx, Warn, "result file of task {task_id} is too large ({len} bytes)");
                self.set_outcome(Report::Failed { reason: "result_too_large".into() }, fx);
            }
            ReadResult::Unparseable { len, error } => {
                // It may be caught mid-write. Look again shortly (a watcher
                // event usually comes first); give up once it has not
                // parsed for `result_settle`.
                let settle = self.settings.result_settle;
                let since = self.task.unparsed.map_or(now, |u| u.since);
                if now.duration_since(since) >= settle {
                    say!(fx, Warn, "result file of task {task_id} does not parse ({len} bytes): {error}");
                    self.set_outcome(Report::Failed { reason: "result_parse_error".into() }, fx);
                } else {
                    let step = (settle / 8).max(Duration::from_millis(10));
                    let rescan_at = Some((now + step).min(since + settle));
                    self.task.unparsed = Some(Unparsed { since, rescan_at });
                }
            }
        }
        // A handed-back task whose files were just read, with no outcome in
        // them (and none being written): go on from where its agent was.
        if self.task.phase == Phase::Adopting && self.task.unparsed.is_none() {
            self.begin_work(now, fx);
        }
    }

    // ----- time -------------------------------------------------------------

    pub(super) fn on_tick(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if let Phase::WakeRetry { at } = self.task.phase {
            if now >= at && !self.executor.is_running() {
                self.start_wake_attempt(self.task.wake_attempts + 1, now, fx);
            }
        }
        if let Some(unparsed) = &mut self.task.unparsed {
            if unparsed.rescan_at.is_some_and(|at| now >= at) {
                unparsed.rescan_at = None;
                fx.push(Effect::ReadTaskFiles { task_id: self.task.id.clone() });
            }
        }
        if let Phase::Confirming { deadline: Some(at) } = self.task.phase {
            if now >= at {
                say!(fx, Warn, "the agent did not confirm task {} in time", self.task.id);
                self.set_outcome(Report::Failed { reason: "confirmation_timeout".into() }, fx);
            }
        }
        if let Phase::Working { silent_until, .. } = &mut self.task.phase {
            if self.agent_alive {
                // Its process runs: at work, not silent.
                *silent_until = None;
            }
        }
        if matches!(self.task.phase, Phase::Working { silent_until: Some(at), .. } if now >= at) {
            let ms = self.settings.adopted_silence.as_millis();
            say!(
                fx,
                Warn,
                "task {} was adopted without a wake and its agent wrote nothing for {ms} ms",
                self.task.id
            );
            let reason =
                format!("adopted_task_silent: taken over without a wake, no progress or result for {ms} ms");
            self.set_outcome(Report::Failed { reason }, fx);
        }
        if self.task.timeout_at.is_some_and(|at| now >= at) {
            say!(fx, Warn, "task {} produced no result in time", self.task.id);
            // Its agent was told to stop (`State::stop_agent`) just before.
            self.set_outcome(Report::Failed { reason: "task_timeout".into() }, fx);
        }
        self.flush_progress(now, fx);
    }
}
