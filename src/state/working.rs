//! Working: which files in results_dir are the held task's, what the
//! agent's files say (`.started`, progress, the result that becomes the
//! outcome), the held task's deadlines (confirmation, silence,
//! `task_timeout_ms`, result rescans), and how its process ending after it
//! confirmed decides the task.

use std::time::{Duration, Instant};

use serde_json::json;

use super::task::{Phase, Unparsed};
use super::ReadResult;
use super::{record, Effect, State, TaskFiles};
use super::{LifecycleEvent, PastFate, Report, WakeMode};
use super::{WakeOutcome, WakeStatus};
use crate::protocol::{parse_progress, report_from_result};

/// At most this many foreign result-file names are remembered (each is
/// logged once).
const FOREIGN_FILES_REMEMBERED: usize = 10_000;

impl State {
    /// Names of result files that exist or changed: read the held task's
    /// files if they are among them; discard late files of a settled task;
    /// have the directory listed before warning about files of other tasks
    /// (a change may be a removal, ours).
    pub(super) fn on_result_names(
        &mut self,
        names: impl IntoIterator<Item = String>,
        listed: bool,
        fx: &mut Vec<Effect>,
    ) {
        let mut touches_held = false;
        let mut late_settled = Vec::new();
        let mut unknown = false;
        for name in names {
            let Some((task_id, _)) = super::classify(&name) else {
                continue;
            };
            if self.held_task_id() == Some(task_id.as_str()) {
                touches_held = true;
            } else if let Some(past) = self.kept.past.get(&task_id) {
                if past.task.fate == PastFate::Settled && !late_settled.contains(&task_id) {
                    late_settled.push(task_id);
                }
            } else if self.foreign_files_logged.contains(&name)
                || self.foreign_files_logged.len() >= FOREIGN_FILES_REMEMBERED
            {
                // Logged already, or too many to keep listing for.
            } else if !listed {
                unknown = true;
            } else {
                say!(fx, Info, "results_dir has {name}, which belongs to no task we hold; leaving it alone");
                self.foreign_files_logged.insert(name);
            }
        }
        if let Some(task_id) = self.held_task_id().filter(|_| touches_held) {
            fx.push(Effect::ReadTaskFiles { task_id: task_id.to_owned() });
        }
        for task_id in late_settled {
            fx.push(Effect::DiscardTaskFiles { task_id });
        }
        if unknown {
            fx.push(Effect::ListResults);
        }
    }

    pub(super) fn on_files(&mut self, files: TaskFiles, now: Instant, fx: &mut Vec<Effect>) {
        let task = held!(self);
        if task.report().is_some() {
            return;
        }
        let task_id = files.task_id;
        if files.started && !task.confirmed() {
            say!(fx, Info, "agent confirmed task {task_id}");
            fx.push(record(LifecycleEvent::Confirmed, json!({ "task_id": task_id })));
            // Still waking (or waiting to retry): the wake command is the
            // agent at work (a synchronous script); it is never started
            // again.
            if task.confirm() {
                self.kept.persist(Some(task), fx);
            }
        }
        if let ReadResult::Parsed(value) = &files.progress {
            match parse_progress(value) {
                Some(progress) => {
                    let Some(live) = task.live_mut() else {
                        return;
                    };
                    let new = live.progress.last_value.as_ref() != Some(&progress)
                        && live.progress.pending.as_ref() != Some(&progress);
                    if new {
                        live.progress.pending = Some(progress);
                        if let Phase::Working { silent_until: Some(until), .. } = &mut live.phase {
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
                if let Some(live) = task.live_mut() {
                    live.unparsed = None;
                }
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
                let since = task.live().and_then(|live| live.unparsed).map_or(now, |u| u.since);
                if now.duration_since(since) >= settle {
                    say!(fx, Warn, "result file of task {task_id} does not parse ({len} bytes): {error}");
                    self.set_outcome(Report::Failed { reason: "result_parse_error".into() }, fx);
                } else {
                    let step = (settle / 8).max(Duration::from_millis(10));
                    let rescan_at = Some((now + step).min(since + settle));
                    if let Some(live) = task.live_mut() {
                        live.unparsed = Some(Unparsed { since, rescan_at });
                    }
                }
            }
        }
        // A handed-back task whose files were just read, with no outcome in
        // them (and none being written): go on from where its agent was.
        let task = held!(self);
        if task
            .live()
            .is_some_and(|live| matches!(live.phase, Phase::Adopting { .. }) && live.unparsed.is_none())
        {
            self.begin_work(now, fx);
        }
    }

    pub(super) fn on_task_tick(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let task = held!(self);
        if let Some(unparsed) = task.live_mut().and_then(|live| live.unparsed.as_mut()) {
            if unparsed.rescan_at.is_some_and(|at| now >= at) {
                unparsed.rescan_at = None;
                fx.push(Effect::ReadTaskFiles { task_id: task.id.clone() });
            }
        }
        if let Some(&Phase::Confirming { deadline: Some(at) }) = task.phase() {
            if now >= at {
                say!(fx, Warn, "the agent did not confirm task {} in time", task.id);
                self.set_outcome(Report::Failed { reason: "confirmation_timeout".into() }, fx);
            }
        }
        // Its agent's process runs (the executor's, or one an earlier run
        // left): at work, not silent.
        let task = held!(self);
        let agent_alive = self.kept.executor.runs_agent_of(&task.id);
        if let Some(Phase::Working { silent_until, .. }) = task.phase_mut() {
            if agent_alive {
                *silent_until = None;
            }
        }
        if matches!(task.phase(), Some(Phase::Working { silent_until: Some(at), .. }) if now >= *at) {
            let ms = self.settings.adopted_silence.as_millis();
            say!(
                fx,
                Warn,
                "task {} was adopted without a wake and its agent wrote nothing for {ms} ms",
                task.id
            );
            let reason =
                format!("adopted_task_silent: taken over without a wake, no progress or result for {ms} ms");
            self.set_outcome(Report::Failed { reason }, fx);
        }
        let task = held!(self);
        if task.live().is_some_and(|live| live.timeout_at.is_some_and(|at| now >= at)) {
            say!(fx, Warn, "task {} produced no result in time", task.id);
            // Its agent was told to stop (`State::stop_agent`) just before.
            self.set_outcome(Report::Failed { reason: "task_timeout".into() }, fx);
        }
        self.flush_progress(now, fx);
    }

    /// The held task's wake command ended after its agent had confirmed:
    /// never a retry. Its result file decides; with none, a failed command
    /// fails the task at once (see `exit_failure`).
    pub(super) fn after_confirmed(&mut self, outcome: &WakeOutcome, fx: &mut Vec<Effect>) {
        let task = held!(self);
        let task_id = task.id.clone();
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
            say!(fx, Info, "the agent of task {task_id} ended ({}); its result file decides", outcome.status);
        }
        if let Some(Phase::Working { exit_failure, .. }) = task.phase_mut() {
            *exit_failure = failure;
        }
        fx.push(Effect::ReadTaskFiles { task_id });
    }

    /// No result file after the agent's process ended with a failure: the
    /// task fails now.
    pub(super) fn fail_if_exited(&mut self, fx: &mut Vec<Effect>) {
        let task = held!(self);
        let exited = match task.phase_mut() {
            Some(Phase::Working { exit_failure, .. }) => exit_failure.take(),
            _ => None,
        };
        if let Some(reason) = exited {
            say!(fx, Warn, "task {} failed: {reason}", task.id);
            self.set_outcome(Report::Failed { reason }, fx);
        }
    }
}
