//! What the sidecar would have made of a rehearsal: the report and frames,
//! and every problem with its fix. Pure: the rules of docs/protocol.md 8.1
//! and 8.5 applied to what [`watch`](super::watch) saw.

use std::time::Duration;

use crate::config::Config;
use crate::protocol;
use crate::queue_store::Report;
use crate::state::{parse_progress, report_from_result};
use crate::wake::{WakeMode, WakeOutcome, WakeStatus};
use crate::watcher::ReadResult;

use super::{GaveUp, Observed};

/// How the sidecar runs the wake command (config key `wake_mode`), which
/// decides the rules [`judge`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The command wakes the agent and returns within `wake_timeout_ms` (or
    /// confirms with `.started` and works on); the agent writes the result.
    Launch,
    /// The command is the agent: its start confirms the task, its end gives
    /// the outcome (the executor writes the result file from stdout and the
    /// exit status, see `wake::run::conclude`).
    Run,
}

impl Mode {
    pub fn of(config: &Config) -> Mode {
        match config.settings.wake_mode {
            WakeMode::Launch => Mode::Launch,
            WakeMode::Run => Mode::Run,
        }
    }

    pub fn wake_mode(self) -> WakeMode {
        match self {
            Mode::Launch => WakeMode::Launch,
            Mode::Run => WakeMode::Run,
        }
    }

    pub fn name(self) -> &'static str {
        self.wake_mode().name()
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
    "set wake_mode to \"run\" if the command is the agent (a CLI that works until the task is \
     done and prints its answer): then its start is the confirmation and its stdout the result";

/// Applies the sidecar's rules to what was seen.
pub fn judge(config: &Config, mode: Mode, seen: &Observed) -> Verdict {
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
            match mode {
                Mode::Launch => launch_result(config, seen, read, &report, &mut verdict),
                Mode::Run => run_result(config, seen, &report, &mut verdict),
            }
            verdict.report = Some(report);
        }
        None => no_result(config, mode, seen, &mut verdict),
    }
    match &verdict.report {
        Some(Report::Complete { result }) => verdict.frames.push(protocol::out_task_complete(id, 1, result)),
        Some(Report::Failed { reason }) => verdict.frames.push(protocol::out_task_failed(id, 1, reason)),
        None => {}
    }
    verdict
}

/// Launch mode, a result is in: the agent's report; how the command ended
/// is only worth a note.
fn launch_result(
    config: &Config,
    seen: &Observed,
    read: &ReadResult,
    report: &Report,
    verdict: &mut Verdict,
) {
    let ms = |d: Duration| d.as_millis();
    if let Report::Failed { reason } = report {
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
            WakeStatus::Cancelled => verdict.notes.push(
                "the command still ran after its result file was in; the rehearsal ended it: exit once the result is \
                 written"
                    .to_string(),
            ),
            ref other => verdict.notes.push(format!(
                "the command ended with {other} after writing the result; the result counts, but exit 0"
            )),
        }
    }
}

/// Run mode, a result is in: written by the executor from the run (stdout
/// and exit status) or by the agent itself, whose own file wins.
fn run_result(config: &Config, seen: &Observed, report: &Report, verdict: &mut Verdict) {
    let Some(outcome) = &seen.command else {
        return;
    };
    let stdout_over = seen.stdout_bytes.filter(|&len| len > config.max_result_bytes);
    match (&outcome.status, report) {
        (WakeStatus::Success, Report::Failed { reason }) if reason == "result_too_large" && stdout_over.is_some() => {
            verdict.problem(
                format!(
                    "the command exited 0 but its stdout was {} bytes, over max_result_bytes ({}): the hub gets \
                     task_failed with reason \"result_too_large\"",
                    stdout_over.unwrap_or_default(),
                    config.max_result_bytes
                ),
                "print only the answer to stdout (progress and chatter to stderr), or raise max_result_bytes",
            );
        }
        (WakeStatus::Success, Report::Failed { reason }) => verdict.problem(
            format!("the agent reported a failure: {reason}"),
            "the wiring works; if the failure was not meant, see the agent's stderr above",
        ),
        (WakeStatus::Failed { exit_code }, Report::Failed { reason }) => {
            let what = match exit_code {
                Some(code @ (127 | 9009)) => format!("was not found (exit status {code})"),
                Some(code) => format!("exited with status {code}"),
                None => "was killed by a signal".to_string(),
            };
            let fix = match exit_code {
                Some(127 | 9009) => format!(
                    "check the program's path in wake_command: it runs in {}, with the sidecar's PATH",
                    config.base_dir().display()
                ),
                _ => "run wake_command by hand and fix what its stderr says; exit 0 once the answer is on stdout, \
                      non-zero only when the task failed"
                    .to_string(),
            };
            verdict.problem(
                format!(
                    "the command {what}{}: the hub gets task_failed with reason \"{reason}\"",
                    stderr_hint(outcome)
                ),
                fix,
            );
        }
        (WakeStatus::Cancelled, _) => verdict.notes.push(format!(
            "the command still ran after its result file was in; the rehearsal ended it (within cancel_grace_ms, {} ms): \
             exit once the result is written",
            config.settings.cancel_grace.as_millis()
        )),
        (status, Report::Complete { .. }) if *status != WakeStatus::Success => verdict.notes.push(format!(
            "the command ended with {status} but had written its own result file, which counts"
        )),
        _ => {}
    }
}

/// The command ended (or the wait did) without a result.
fn no_result(config: &Config, mode: Mode, seen: &Observed, verdict: &mut Verdict) {
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
            let real = match config.settings.task_timeout {
                Some(timeout) => {
                    format!("fails it with task_timeout after task_timeout_ms ({} ms)", ms(timeout))
                }
                None => "would wait for ever (task_timeout_ms is not set)".to_string(),
            };
            let fix = match mode {
                Mode::Launch => {
                    "finish with `agentcom-sidecar agent done` or `agentcom-sidecar agent fail REASON` (or write \
                     <task_id>.json); a slow agent: try again with a larger --wait-ms"
                }
                Mode::Run => {
                    "in run mode the command must end when the task is done (its stdout is the answer); a slow \
                     agent: try again with a larger --wait-ms, and give task_timeout_ms room for it"
                }
            };
            let mut fix = fix.to_string();
            if mode == Mode::Launch
                && outcome.status == WakeStatus::Success
                && !outcome.stdout_tail.trim().is_empty()
            {
                fix.push_str(&format!(
                    "; the command exited 0 with output on stdout, which launch mode ignores: {RUN_MODE}"
                ));
            }
            verdict.problem(format!("no result within {} ms; the sidecar {real}", ms(waited)), fix);
            if config.settings.task_timeout.is_some() {
                verdict.report = Some(Report::Failed { reason: "task_timeout".into() });
            }
            return;
        }
        Some(GaveUp::Confirmation) | None => {}
    }
    // A confirmed task (run mode: the command started) whose command ended
    // without a result fails at once, never a retry (state::agent).
    let confirmed = mode == Mode::Run || seen.started_at.is_some();
    match &outcome.status {
        WakeStatus::Failed { exit_code } if confirmed => {
            let what = match exit_code {
                Some(code) => format!("exited with status {code}"),
                None => "was killed by a signal".to_string(),
            };
            let last = match outcome.stderr_last_line() {
                Some(line) => format!("; last line of stderr: {line}"),
                None => "; no stderr".to_string(),
            };
            let reason = format!("agent_failed: the agent {what} after confirming the task{last}");
            verdict.problem(
                format!("the command {what} after confirming the task, with no result file: the hub gets task_failed with reason \"{reason}\""),
                "finish with `agentcom-sidecar agent done` or `agentcom-sidecar agent fail REASON` before exiting; \
                 see its stderr above",
            );
            verdict.report = Some(Report::Failed { reason });
            return;
        }
        WakeStatus::Success if mode == Mode::Run => {
            let reason = "agent_failed: the agent exited 0 but its result could not be written".to_string();
            verdict.problem(
                format!("the command exited 0 but no result file was written from its stdout: the hub gets task_failed with reason \"{reason}\""),
                "check that the results directory is writable and has room (see the sidecar's log)",
            );
            verdict.report = Some(Report::Failed { reason });
            return;
        }
        _ => {}
    }
    match &outcome.status {
        WakeStatus::Success => {
            if seen.gave_up == Some(GaveUp::Confirmation) {
                let cli = if outcome.stdout_tail.trim().is_empty() {
                    format!("; or {RUN_MODE}")
                } else {
                    format!("; this command printed to stdout (above) and exited, as an agent CLI does: {RUN_MODE}")
                };
                verdict.problem(
                    format!(
                        "the command exited 0 but .started never appeared within confirmation_timeout_ms ({} ms): \
                         the task fails with confirmation_timeout",
                        ms(config.settings.confirmation_timeout)
                    ),
                    format!(
                        "have the agent write .started as soon as it takes the task (`agentcom-sidecar agent started`); \
                         a command that did the work itself must write the result before it exits{cli}"
                    ),
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
                "wrote .started only as wake_timeout_ms ({wake_timeout} ms) ran out: the sidecar kills a command \
                 that has not confirmed by then"
            ),
            format!(
                "write .started first (`agentcom-sidecar agent started`), then work on or return (a launcher); or {RUN_MODE}"
            ),
        ),
        WakeStatus::TimedOut => verdict.problem(
            format!("still running at wake_timeout_ms ({wake_timeout} ms) and never wrote .started: the sidecar kills it"),
            format!(
                "write .started first (`agentcom-sidecar agent started`), then work on or return once the agent runs \
                 (a launcher); or {RUN_MODE}"
            ),
        ),
        WakeStatus::Cancelled | WakeStatus::LeftRunning => {}
    }
    if !matches!(outcome.status, WakeStatus::Success | WakeStatus::Cancelled | WakeStatus::LeftRunning) {
        // What the state machine does with a failed attempt: retry after
        // each delay, then fail the task.
        let attempts = config.settings.wake_retry_delays.len() + 1;
        let delays: Vec<String> =
            config.settings.wake_retry_delays.iter().map(|d| d.as_millis().to_string()).collect();
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
