//! What the sidecar would have made of a rehearsal: the report and frames,
//! and every problem with its fix. Pure: the rules of docs/protocol.md 8.1
//! and 8.5 applied to what [`watch`](super::watch) saw.

use std::time::Duration;

use crate::config::Config;
use crate::protocol;
use crate::queue_store::Report;
use crate::state::{parse_progress, report_from_result};
use crate::wake::{WakeOutcome, WakeStatus};
use crate::watcher::ReadResult;

use super::{GaveUp, Observed};

/// How the sidecar runs the wake command. Only `launch` exists on this
/// branch: the command wakes the agent and returns within
/// `wake_timeout_ms`. A `run` mode (the command is the agent and runs until
/// the task is done) adds a variant here and its rules in [`judge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Launch,
}

impl Mode {
    pub fn of(_config: &Config) -> Mode {
        Mode::Launch
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Launch => "launch",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub what: String,
    pub fix: String,
}

#[derive(Debug, Default)]
pub struct Verdict {
    /// The outcome the sidecar would have reported, if any.
    pub report: Option<Report>,
    /// The frames the hub would have received about the task, in order.
    pub frames: Vec<String>,
    pub problems: Vec<Problem>,
    /// Things that did not stop the task but are worth changing.
    pub notes: Vec<String>,
}

impl Verdict {
    pub fn completed(&self) -> bool {
        matches!(self.report, Some(Report::Complete { .. }))
    }

    fn problem(&mut self, what: String, fix: impl Into<String>) {
        self.problems.push(Problem { what, fix: fix.into() });
    }
}

const RUN_MODE: &str =
    "set wake_mode to \"run\" if the command is the agent and works until the task is done";

/// Applies the sidecar's rules to what was seen.
pub fn judge(config: &Config, mode: Mode, seen: &Observed) -> Verdict {
    let Mode::Launch = mode;
    let id = seen.task_id.as_str();
    let mut verdict = Verdict::default();
    if let Some(progress) = &seen.progress {
        match parse_progress(progress) {
            Some((value, message)) => {
                verdict.frames.push(protocol::out_task_progress(id, value, message.as_deref()));
            }
            None => verdict.notes.push(
                "the .progress file is not {\"progress\": 0-100, \"message\": \"...\"}, so the sidecar ignores it: \
                 write it with `agentcom-sidecar agent progress N [MESSAGE]`"
                    .to_string(),
            ),
        }
    }
    let ms = |d: Duration| d.as_millis();
    match &seen.result {
        Some(read) => {
            let report = match read {
                ReadResult::Parsed(value) => report_from_result(value.clone()),
                ReadResult::TooLarge { len } => {
                    verdict.problem(
                        format!("the result file is {len} bytes, over max_result_bytes ({}): the task fails with result_too_large", config.max_result_bytes),
                        "shorten the output (`agentcom-sidecar agent done` refuses what would not fit), or raise max_result_bytes",
                    );
                    Report::Failed { reason: "result_too_large".into() }
                }
                ReadResult::Unparseable { error, len } => {
                    verdict.problem(
                        format!("the result file ({len} bytes) is not a JSON object ({error}): the task fails with result_parse_error"),
                        "write {\"status\":\"success\",\"output\":...} whole to a name ending in .tmp and rename it into place, \
                         or use `agentcom-sidecar agent done`, which does",
                    );
                    Report::Failed { reason: "result_parse_error".into() }
                }
                ReadResult::Missing => unreachable!("a result is only kept once read"),
            };
            if let Report::Failed { reason } = &report {
                if matches!(read, ReadResult::Parsed(_)) {
                    verdict.problem(
                        format!("the agent reported a failure: {reason}"),
                        "the wiring works; if the failure was not meant, see the agent's stderr above",
                    );
                }
            }
            if let Some(outcome) = &seen.command {
                match outcome.status {
                    WakeStatus::TimedOut => verdict.notes.push(format!(
                        "the command was still running at wake_timeout_ms ({} ms) after the result and was killed; the result \
                         counts, but exit once it is written",
                        ms(config.wake_timeout)
                    )),
                    WakeStatus::Success => {}
                    ref other => verdict.notes.push(format!(
                        "the command ended with {other} after writing the result; the result counts, but exit 0"
                    )),
                }
            }
            verdict.report = Some(report);
        }
        None => no_result(config, seen, &mut verdict),
    }
    match &verdict.report {
        Some(Report::Complete { result }) => verdict.frames.push(protocol::out_task_complete(id, 1, result)),
        Some(Report::Failed { reason }) => verdict.frames.push(protocol::out_task_failed(id, 1, reason)),
        None => {}
    }
    verdict
}

/// The command ended (or the wait did) without a result.
fn no_result(config: &Config, seen: &Observed, verdict: &mut Verdict) {
    let Some(outcome) = &seen.command else {
        return;
    };
    let ms = |d: Duration| d.as_millis();
    let wake_timeout = ms(config.wake_timeout);
    let stderr = stderr_hint(outcome);
    match seen.gave_up {
        Some(GaveUp::Interrupted) => {
            verdict.problem(
                "the rehearsal was interrupted before the task ended".to_string(),
                "run it again to the end",
            );
            return;
        }
        Some(GaveUp::Result(waited)) => {
            let real = match config.task_timeout {
                Some(timeout) => {
                    format!("fails it with task_timeout after task_timeout_ms ({} ms)", ms(timeout))
                }
                None => "would wait for ever (task_timeout_ms is not set)".to_string(),
            };
            verdict.problem(
                format!("no result within {} ms; the sidecar {real}", ms(waited)),
                "finish with `agentcom-sidecar agent done` or `agentcom-sidecar agent fail REASON` (or write \
                 <task_id>.json); a slow agent: try again with a larger --wait-ms",
            );
            if config.task_timeout.is_some() {
                verdict.report = Some(Report::Failed { reason: "task_timeout".into() });
            }
            return;
        }
        Some(GaveUp::Confirmation) | None => {}
    }
    match &outcome.status {
        WakeStatus::Success => {
            if seen.gave_up == Some(GaveUp::Confirmation) {
                verdict.problem(
                    format!(
                        "the command exited 0 but .started never appeared within confirmation_timeout_ms ({} ms): \
                         the task fails with confirmation_timeout",
                        ms(config.confirmation_timeout)
                    ),
                    "have the agent write .started as soon as it takes the task (`agentcom-sidecar agent started`); \
                     a command that did the work itself must write the result before it exits",
                );
                verdict.report = Some(Report::Failed { reason: "confirmation_timeout".into() });
            }
        }
        WakeStatus::SpawnFailed(text) => verdict.problem(
            format!("the command could not be started: {text}"),
            format!("check wake_command and that its directory {} exists", config.base_dir().display()),
        ),
        WakeStatus::Failed { exit_code: Some(code @ (127 | 9009)) } => verdict.problem(
            format!("the command was not found (exit code {code}){stderr}"),
            format!(
                "check the program's path in wake_command: it runs in {}, with the sidecar's PATH",
                config.base_dir().display()
            ),
        ),
        WakeStatus::Failed { .. } => verdict.problem(
            format!("the command ended with {} before the task was done{stderr}", outcome.status),
            "exit 0 once the agent has the task, non-zero only when it could not be woken",
        ),
        WakeStatus::TimedOut if seen.started_at.is_some() => verdict.problem(
            format!(
                "still running at wake_timeout_ms ({wake_timeout} ms) after writing .started: the sidecar kills it \
                 and starts the task again"
            ),
            format!(
                "return within wake_timeout_ms and let the agent work on in the background (a launcher), or {RUN_MODE}"
            ),
        ),
        WakeStatus::TimedOut => verdict.problem(
            format!("still running at wake_timeout_ms ({wake_timeout} ms) and never wrote .started: the sidecar kills it"),
            format!("write .started first and return once the agent is running (a launcher), or {RUN_MODE}"),
        ),
        WakeStatus::Cancelled | WakeStatus::LeftRunning => {}
    }
    if !matches!(outcome.status, WakeStatus::Success | WakeStatus::Cancelled | WakeStatus::LeftRunning) {
        // What the state machine does with a failed attempt: retry after
        // each delay, then fail the task.
        let attempts = config.wake_retry_delays.len() + 1;
        let delays: Vec<String> =
            config.wake_retry_delays.iter().map(|d| d.as_millis().to_string()).collect();
        verdict.notes.push(format!(
            "the sidecar would run the command again after each of wake_retry_delays_ms [{}], {attempts} attempts in all",
            delays.join(", ")
        ));
        let last = match &outcome.status {
            WakeStatus::Failed { exit_code: Some(code) } => format!("exit code {code}"),
            WakeStatus::Failed { exit_code: None } => "killed by a signal".to_string(),
            WakeStatus::TimedOut => "timed out".to_string(),
            WakeStatus::SpawnFailed(e) => format!("could not start: {e}"),
            WakeStatus::Success | WakeStatus::Cancelled | WakeStatus::LeftRunning => String::new(),
        };
        let reason = format!("wake_failed: wake command failed after {attempts} attempts (last: {last})");
        verdict.report = Some(Report::Failed { reason });
    }
}

fn stderr_hint(outcome: &WakeOutcome) -> String {
    match outcome.stderr_last_line() {
        Some(line) => format!("; its stderr ends with: {line}"),
        None => String::new(),
    }
}
