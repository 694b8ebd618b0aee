//! `agentcom-sidecar try-wake`: rehearses the configured wake command on a
//! pretend task, with no hub, and says whether the task would have
//! completed and, for every problem, what to change.
//!
//! The command runs exactly as the sidecar runs it: the same executor
//! ([`WakeHandle`]), environment and placeholders, directory, `wake_mode`,
//! `wake_timeout_ms`, `cancel_grace_ms` and `max_result_bytes`, with a
//! scratch results directory. In run mode the executor writes `.started`
//! when the command starts and the result file from its stdout and exit
//! status when it ends, as for the sidecar; the rehearsal waits for that end
//! (up to `--wait-ms` or `task_timeout_ms`) and judges the file. The results
//! directory is polled (it is a one-off tool; the sidecar's watcher is not
//! needed) and read with the sidecar's own readers; `verdict` applies the
//! sidecar's rules to what was seen.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, tick};
use serde_json::{json, Value};

use crate::config::Config;
use crate::wake::{WakeHandle, WakeOutcome, WakeRequest};
use crate::watcher::{read_json_file, task_file_path, FileKind, ReadResult};

mod print;
mod verdict;

use print::{print, shorten};

pub use verdict::{judge, Mode, Verdict};

const USAGE: &str = "\
agentcom-sidecar try-wake: rehearse the wake command on a pretend task, with no hub

USAGE:
    agentcom-sidecar try-wake [--config PATH] [--description TEXT] [--wait-ms N]

Runs wake_command as the sidecar would (same environment, directory and
timeouts) for a rehearsal task in a scratch results directory, prints what
happened and when, the frames the hub would have received, and a verdict
with a fix for every problem. --wait-ms bounds the wait for the result once
the agent has confirmed (default: task_timeout_ms, else 600000). Both
wake modes are rehearsed: in run mode the command's start confirms the
task and its stdout and exit status, when it ends, become the result.

Exit codes: 0 the task would have completed, 1 it would not, 2 bad config or usage.";

/// How often the results directory is looked at.
const POLL: Duration = Duration::from_millis(20);
/// How long to wait for a result when neither `--wait-ms` nor
/// `task_timeout_ms` says.
const DEFAULT_RESULT_WAIT: Duration = Duration::from_secs(600);
/// The sidecar reads a `.progress` file of at most this many bytes.
const MAX_PROGRESS_BYTES: u64 = 4096;
/// How long past `wake_timeout_ms` a command may still run before the
/// rehearsal ends it itself.
const KILL_MARGIN: Duration = Duration::from_secs(1);
/// The rehearsal task's description starts with this.
pub const REHEARSAL_NOTE: &str = "REHEARSAL by agentcom-sidecar try-wake: no hub is connected and nothing \
here is real work. Confirm the task, report progress and finish with a short success result, as quickly as you can.";

/// What was seen during a rehearsal, in the order it happened; times are
/// from the start of the command.
#[derive(Debug, Default)]
pub struct Observed {
    pub task_id: String,
    pub timeline: Vec<(Duration, String)>,
    pub started_at: Option<Duration>,
    /// The last `.progress` content read, whatever it held.
    pub progress: Option<Value>,
    /// The result file as finally read: `Parsed`, `TooLarge`, or
    /// `Unparseable` for `result_settle_ms`.
    pub result: Option<ReadResult>,
    pub command: Option<WakeOutcome>,
    pub command_ended_at: Option<Duration>,
    /// Run mode: the size of the command's stdout, which the executor made
    /// the result.
    pub stdout_bytes: Option<u64>,
    /// Why the rehearsal stopped waiting, if it did not end on its own.
    pub gave_up: Option<GaveUp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// The command exited 0 and `.started` did not come in time.
    Confirmation,
    /// No result within the wait (the command may have been ended for it).
    Result(Duration),
    /// Ctrl-C: the command was ended.
    Interrupted,
}

struct Options {
    config_path: PathBuf,
    description: Option<String>,
    wait: Option<Duration>,
}

/// Runs `agentcom-sidecar try-wake ...`; `args` are the arguments after
/// `try-wake`.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let options = match parse(args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            crate::outln!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(text) => {
            eprintln!("agentcom-sidecar try-wake: {text}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (config, warnings) = match Config::load(&options.config_path) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("agentcom-sidecar try-wake: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    let mut out = crate::output::Stdout;
    match rehearse(&config, options.description.as_deref(), options.wait, &mut out) {
        Ok(verdict) if verdict.completed() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(text) => {
            eprintln!("agentcom-sidecar try-wake: {text}");
            ExitCode::from(2)
        }
    }
}

fn parse(args: Vec<OsString>) -> Result<Option<Options>, String> {
    let mut config_path = None;
    let mut description = None;
    let mut wait = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg.into_string().map_err(|_| "arguments must be valid UTF-8".to_string())?;
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value"))?
                .into_string()
                .map_err(|_| "arguments must be valid UTF-8".to_string())
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "-c" | "--config" => config_path = Some(PathBuf::from(value("--config")?)),
            "--description" => description = Some(value("--description")?),
            "--wait-ms" => {
                let text = value("--wait-ms")?;
                let ms = text
                    .parse::<u64>()
                    .map_err(|_| format!("--wait-ms must be milliseconds, got {text:?}"))?;
                wait = Some(Duration::from_millis(ms));
            }
            other => match other.strip_prefix("--config=") {
                Some(path) => config_path = Some(PathBuf::from(path)),
                None => return Err(format!("unexpected argument {other:?}")),
            },
        }
    }
    let config_path = config_path
        .or_else(|| std::env::var_os("SIDECAR_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("config.json"));
    Ok(Some(Options { config_path, description, wait }))
}

/// Rehearses the config's wake command, prints the timeline, frames and
/// verdict to `out`, and returns the verdict. An error (no wake command, no
/// scratch directory) is one line.
pub fn rehearse(
    config: &Config,
    description: Option<&str>,
    wait: Option<Duration>,
    out: &mut dyn Write,
) -> Result<Verdict, String> {
    let Some(template) = config.wake_command.clone() else {
        return Err(
            "the config has no wake_command: the sidecar wakes nothing (the agent must find its tasks \
                    itself), so there is nothing to rehearse"
                .to_string(),
        );
    };
    let mode = Mode::of(config);
    let scratch = tempfile::Builder::new()
        .prefix("agentcom-try-wake.")
        .tempdir()
        .map_err(|e| format!("cannot make a scratch directory: {e}"))?;
    let results_dir = scratch.path().join("results");
    let task_id = format!("rehearsal-{}", crate::clock::unix_ms());
    let task_file = crate::main_loop::handoff_file_path(&results_dir, &task_id);
    std::fs::create_dir_all(task_file.parent().unwrap_or(&results_dir))
        .map_err(|e| format!("cannot make a scratch results directory: {e}"))?;
    let description = match description {
        Some(text) => format!("{REHEARSAL_NOTE}\n\n{text}"),
        None => REHEARSAL_NOTE.to_string(),
    };
    let task_json = json!({
        "task_id": task_id,
        "description": description,
        "metadata": { "rehearsal": true },
        "generation": 1,
        "assigned_at": crate::clock::unix_ms(),
    })
    .to_string();
    let say = |out: &mut dyn Write, text: String| {
        let _ = writeln!(out, "{text}");
    };
    say(out, format!("try-wake: rehearsal task {task_id}; no hub is connected"));
    say(out, format!("  command      {template}"));
    let wait = wait.or(config.settings.task_timeout).unwrap_or(DEFAULT_RESULT_WAIT);
    let timing = match mode {
        Mode::Launch => format!("wake_timeout_ms {}", config.wake_timeout.as_millis()),
        Mode::Run => format!(
            "its start confirms, its end (waited for up to {} ms) is the outcome; max_result_bytes {}",
            wait.as_millis(),
            config.max_result_bytes
        ),
    };
    say(
        out,
        format!(
            "  runs in      {} ({}), wake_mode {}, {timing}",
            std::path::absolute(config.base_dir()).unwrap_or_else(|_| config.base_dir()).display(),
            if cfg!(windows) { "cmd /D /V:ON /S /C" } else { "sh -c" },
            mode.name(),
        ),
    );
    say(out, format!("  results_dir  {} (scratch, removed at the end)", results_dir.display()));
    let _ = out.flush();

    let request = WakeRequest {
        task_id: task_id.clone(),
        generation: 1,
        attempt: 1,
        command_template: template,
        description,
        task_json,
        task_file,
        results_dir: results_dir.clone(),
        work_dir: config.base_dir(),
        timeout: config.wake_timeout,
        mode: mode.wake_mode(),
        cancel_grace: config.settings.cancel_grace,
        max_result_bytes: config.max_result_bytes,
        output_check: config.settings.results_poll,
    };
    let observed = watch(config, mode, request, &results_dir, wait)?;
    let verdict = judge(config, mode, &observed);
    print(out, &observed, &verdict);
    Ok(verdict)
}

/// Runs the command and watches the results directory until the sidecar
/// would know the task's fate (or would have waited longer than `wait`).
fn watch(
    config: &Config,
    mode: Mode,
    request: WakeRequest,
    dir: &Path,
    wait: Duration,
) -> Result<Observed, String> {
    let (outcome_tx, outcomes) = crossbeam_channel::bounded(1);
    let handle = WakeHandle::spawn(Box::new(move |outcome| {
        let _ = outcome_tx.send(outcome);
    }))
    .map_err(|e| format!("cannot start the wake executor: {e}"))?;
    let mut seen = Observed { task_id: request.task_id.clone(), ..Observed::default() };
    let task_id = request.task_id.clone();
    let start = Instant::now();
    handle.run(request);
    seen.timeline.push((Duration::ZERO, "command started".to_string()));
    let ticks = tick(POLL);
    // Ctrl-C (or SIGTERM) ends the command with its process tree, which
    // runs in a group of its own and would not get the signal.
    let (interrupt_tx, interrupts) = crossbeam_channel::bounded(1);
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = interrupt_tx.try_send(());
    }) {
        seen.timeline.push((Duration::ZERO, format!("(cannot catch Ctrl-C: {e})")));
    }
    let mut cancelled = false;
    let mut unparsed_since: Option<Instant> = None;
    let mut result_final = false;
    let mut ended: Option<(Duration, WakeOutcome)> = None;
    let mut noted_at_work = false;
    let mut result_final_at: Option<Duration> = None;
    // Launch mode: the executor ends an unconfirmed command at
    // wake_timeout_ms; the rehearsal ends what runs too long only later,
    // so that the two do not race. Run mode: only the wait bounds it.
    let give_up_at = match mode {
        Mode::Launch => wait.max(config.wake_timeout + KILL_MARGIN),
        Mode::Run => wait,
    };
    loop {
        let now = Instant::now();
        let at = now - start;
        look_at_files(&mut seen, dir, config, at, now, &mut unparsed_since, &mut result_final);
        // Listed after the files, which the command wrote before it ended.
        if let Some((at, outcome)) = ended.take() {
            seen.timeline.push((at, format!("command ended: {}", outcome.status)));
            if mode == Mode::Run {
                let stdout = crate::wake::run::stdout_file(dir, &task_id);
                seen.stdout_bytes = std::fs::metadata(stdout).ok().map(|meta| meta.len());
            }
            seen.command_ended_at = Some(at);
            seen.command = Some(outcome);
        }
        // A command still running when the sidecar would have given up on
        // the result is ended (after the executor's own end at
        // wake_timeout_ms, with a margin so that the two do not race).
        if mode == Mode::Launch
            && !noted_at_work
            && seen.command.is_none()
            && seen.started_at.is_some()
            && at >= config.wake_timeout
        {
            noted_at_work = true;
            seen.timeline.push((
                at,
                format!(
                    "wake_timeout_ms ({} ms) passed; the command confirmed, so it runs on: the agent at work",
                    config.wake_timeout.as_millis()
                ),
            ));
        }
        if result_final {
            result_final_at.get_or_insert(at);
        }
        // A command still running well after its result is ended: the
        // sidecar would have reported the result by then.
        if seen.command.is_none()
            && !cancelled
            && result_final_at.is_some_and(|then| at >= then + KILL_MARGIN)
        {
            seen.timeline.push((at, "the result is in but the command still runs; ending it".to_string()));
            handle.cancel(&task_id);
            cancelled = true;
        }
        if seen.command.is_none() && !cancelled && !result_final && at >= give_up_at {
            seen.gave_up = Some(GaveUp::Result(wait));
            seen.timeline.push((at, format!("no result after {} ms; ending the command", wait.as_millis())));
            handle.cancel(&task_id);
            cancelled = true;
        }
        if let Some(outcome) = &seen.command {
            if cancelled {
                break;
            }
            let ended = seen.command_ended_at.unwrap_or_default();
            let success = outcome.status == crate::wake::WakeStatus::Success;
            if result_final || !success {
                break;
            }
            if seen.started_at.is_none() && at >= ended + config.settings.confirmation_timeout {
                seen.gave_up = Some(GaveUp::Confirmation);
                seen.timeline.push((
                    at,
                    format!(
                        "no .started within confirmation_timeout_ms ({} ms) of the exit",
                        config.settings.confirmation_timeout.as_millis()
                    ),
                ));
                break;
            }
            if seen.started_at.is_some() && at >= wait {
                seen.gave_up = Some(GaveUp::Result(wait));
                seen.timeline.push((at, format!("no result after {} ms; stopped waiting", wait.as_millis())));
                break;
            }
        }
        select! {
            recv(outcomes) -> outcome => {
                let outcome = outcome.map_err(|_| "the wake executor stopped".to_string())?;
                ended = Some((start.elapsed(), outcome));
            }
            recv(ticks) -> _ => {}
            recv(interrupts) -> _ => {
                if !cancelled {
                    seen.timeline.push((start.elapsed(), "interrupted: ending the command".to_string()));
                    seen.gave_up = Some(GaveUp::Interrupted);
                    handle.cancel(&task_id);
                    cancelled = true;
                }
            }
        }
    }
    // Dropping the handle kills nothing here: the command has ended.
    drop(handle);
    Ok(seen)
}

/// Notes what is new in the results directory: `.started`, a changed
/// `.progress`, and the result once it is final (parsed, too large, or not
/// parsing for `result_settle_ms`, as the sidecar judges it).
fn look_at_files(
    seen: &mut Observed,
    dir: &Path,
    config: &Config,
    at: Duration,
    now: Instant,
    unparsed_since: &mut Option<Instant>,
    result_final: &mut bool,
) {
    let task_id = seen.task_id.clone();
    if seen.started_at.is_none()
        && crate::watcher::is_regular_file(&task_file_path(dir, &task_id, FileKind::Started))
    {
        seen.started_at = Some(at);
        seen.timeline.push((at, ".started appeared".to_string()));
    }
    let progress = read_json_file(&task_file_path(dir, &task_id, FileKind::Progress), MAX_PROGRESS_BYTES);
    let progress = match progress {
        ReadResult::Parsed(value) => Some(value),
        ReadResult::Missing => None,
        other => Some(Value::String(format!("(unreadable: {other:?})"))),
    };
    if progress.is_some() && progress != seen.progress {
        let text = progress.as_ref().map(Value::to_string).unwrap_or_default();
        seen.timeline.push((at, format!(".progress: {}", shorten(&text, 200))));
        seen.progress = progress;
    }
    if !*result_final {
        let read = read_json_file(&task_file_path(dir, &task_id, FileKind::Result), config.max_result_bytes);
        match read {
            ReadResult::Missing => {}
            ReadResult::Unparseable { .. } => {
                let since = *unparsed_since.get_or_insert_with(|| {
                    seen.timeline.push((at, "result file appeared; it does not parse (yet)".to_string()));
                    now
                });
                if now.duration_since(since) >= config.settings.result_settle {
                    seen.timeline.push((
                        at,
                        format!(
                            "result file still does not parse after result_settle_ms ({} ms)",
                            config.settings.result_settle.as_millis()
                        ),
                    ));
                    seen.result = Some(read);
                    *result_final = true;
                }
            }
            ReadResult::Parsed(_) | ReadResult::TooLarge { .. } => {
                let what = match &read {
                    ReadResult::TooLarge { len } => {
                        format!("result file appeared: {len} bytes, over max_result_bytes")
                    }
                    _ => "result file appeared".to_string(),
                };
                seen.timeline.push((at, what));
                seen.result = Some(read);
                *result_final = true;
            }
        }
    }
}
