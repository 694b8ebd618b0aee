//! `agentcom-sidecar agent started|progress|done|fail`: the reporting
//! helpers an agent calls, from any language, to write its files in the
//! results directory (docs/agents.md).
//!
//! They take the task from the environment the wake command passes down
//! (`AGENTCOM_RESULTS_DIR`, `AGENTCOM_TASK_ID`, `AGENTCOM_MAX_RESULT_BYTES`;
//! flags override), check everything the sidecar and the newest hub would
//! check before writing anything, and write atomically: a temporary file
//! whose name the sidecar ignores (a leading `.` and a `.tmp` end), fsynced,
//! then renamed into place. A result is never replaced: of two helpers
//! racing to finish one task, exactly one wins and the other fails.
//!
//! They start fast: no config, no logger, no thread. Success prints nothing
//! and exits 0; a failure prints one line on stderr and exits 1 (2 for a
//! usage error).

use std::ffi::OsString;
use std::io::{self, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{json, Map, Value};

use crate::protocol::MAX_REASON_CHARS;
use crate::queue_store::write_atomic_shared;
use crate::wake::{ENV_MAX_RESULT_BYTES, ENV_RESULTS_DIR, ENV_TASK_ID};
use crate::watcher::{is_valid_task_id, task_file_path, FileKind};

/// The config's default `max_result_bytes`, used when the environment does
/// not say (a helper run by hand).
const DEFAULT_MAX_RESULT_BYTES: u64 = 1 << 20;
/// The sidecar reads a `.progress` file of at most this many bytes.
const MAX_PROGRESS_FILE_BYTES: usize = 4096;
/// The sidecar sends at most this much of a progress message.
const MAX_PROGRESS_MESSAGE_BYTES: usize = 1024;

pub const USAGE: &str = "\
agentcom-sidecar agent: report a task's progress from the agent (docs/agents.md)

USAGE:
    agentcom-sidecar agent started [OPTIONS]
    agentcom-sidecar agent progress [OPTIONS] [--] <0-100> [MESSAGE]
    agentcom-sidecar agent done [OPTIONS] [--output TEXT | --output-file FILE | --json FILE|-]
                                               (no source: the output is read from stdin)
    agentcom-sidecar agent fail [OPTIONS] [--] <REASON>

OPTIONS (each overrides the environment the wake command gets):
    --task-id ID             default $AGENTCOM_TASK_ID
    --results-dir DIR        default $AGENTCOM_RESULTS_DIR
    --max-result-bytes N     default $AGENTCOM_MAX_RESULT_BYTES, else 1048576

Exit codes: 0 written, 1 refused or not written (one line on stderr says why), 2 usage.";

/// Where and for which task the helper writes.
#[derive(Debug)]
struct Target {
    results_dir: PathBuf,
    task_id: String,
    max_result_bytes: u64,
}

#[derive(Debug, PartialEq)]
enum Source {
    Text(String),
    File(PathBuf),
    Stdin,
    /// A whole result object, from a file or (`None`) stdin.
    Json(Option<PathBuf>),
}

#[derive(Debug, PartialEq)]
enum Action {
    Started,
    Progress { value: u8, message: Option<String> },
    Done(Source),
    Fail(String),
}

/// Why a helper stopped: a usage error (exit 2) or a refusal (exit 1).
#[derive(Debug)]
enum Failure {
    Usage(String),
    Refused(String),
}

/// Runs `agentcom-sidecar agent ...`; `args` are the arguments after
/// `agent`.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let verb = args.first().and_then(|a| a.to_str()).unwrap_or("").to_string();
    match run(args, &|name| std::env::var_os(name)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(text)) if text.is_empty() => {
            crate::outln!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(Failure::Usage(text)) => {
            eprintln!("agentcom-sidecar agent: {text} (see agentcom-sidecar agent --help)");
            ExitCode::from(2)
        }
        Err(Failure::Refused(text)) => {
            let verb = if verb.is_empty() { String::new() } else { format!(" {verb}") };
            eprintln!("agentcom-sidecar agent{verb}: {text}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<OsString>, env: &dyn Fn(&str) -> Option<OsString>) -> Result<(), Failure> {
    let (action, flags) = parse(args)?;
    let target = target(flags, env)?;
    act(&target, action)
}

/// The flags that say where to write, as given.
#[derive(Debug, Default)]
struct Flags {
    task_id: Option<String>,
    results_dir: Option<PathBuf>,
    max_result_bytes: Option<String>,
}

fn parse(args: Vec<OsString>) -> Result<(Action, Flags), Failure> {
    let usage = |text: String| Failure::Usage(text);
    let mut args = args.into_iter().map(|arg| {
        arg.into_string().map_err(|_| Failure::Usage("arguments must be valid UTF-8".to_string()))
    });
    let verb = match args.next().transpose()? {
        None => return Err(usage("say started, progress, done or fail".to_string())),
        Some(verb) => verb,
    };
    if matches!(verb.as_str(), "-h" | "--help" | "help") {
        return Err(usage(String::new()));
    }
    if !matches!(verb.as_str(), "started" | "progress" | "done" | "fail") {
        return Err(usage(format!("unknown helper {verb:?}: say started, progress, done or fail")));
    }
    let mut flags = Flags::default();
    let mut sources = Vec::new();
    let mut positional = Vec::new();
    while let Some(arg) = args.next().transpose()? {
        // Options come first; after the first plain word (or `--`),
        // everything is text, whatever it looks like.
        if !positional.is_empty() {
            positional.push(arg);
            continue;
        }
        let mut value = |name: &str| match args.next().transpose()? {
            Some(value) => Ok(value),
            None => Err(usage(format!("{name} needs a value"))),
        };
        match arg.as_str() {
            "--" => {
                positional.extend(args.by_ref().collect::<Result<Vec<_>, _>>()?);
                break;
            }
            "-h" | "--help" => return Err(usage(String::new())),
            "--task-id" => flags.task_id = Some(value("--task-id")?),
            "--results-dir" => flags.results_dir = Some(PathBuf::from(value("--results-dir")?)),
            "--max-result-bytes" => flags.max_result_bytes = Some(value("--max-result-bytes")?),
            "--output" | "--output-file" | "--json" if verb == "done" => {
                let given = value(&arg)?;
                sources.push(match arg.as_str() {
                    "--output" => Source::Text(given),
                    "--output-file" => Source::File(PathBuf::from(given)),
                    _ if given == "-" => Source::Json(None),
                    _ => Source::Json(Some(PathBuf::from(given))),
                });
            }
            flag if flag.starts_with("--") => {
                return Err(usage(format!("unknown option {flag:?} for {verb}")))
            }
            _ => positional.push(arg),
        }
    }
    let action = match verb.as_str() {
        "started" | "done" if !positional.is_empty() => {
            return Err(usage(format!("{verb} takes no text, got {:?}", positional.join(" "))))
        }
        "started" => Action::Started,
        "done" => match sources.len() {
            0 => Action::Done(Source::Stdin),
            1 => Action::Done(sources.remove(0)),
            _ => return Err(usage("give only one of --output, --output-file and --json".to_string())),
        },
        "progress" => {
            let Some(value) = positional.first() else {
                return Err(usage("progress needs a value from 0 to 100".to_string()));
            };
            let value = match value.trim().parse::<u8>() {
                Ok(value) if value <= 100 => value,
                _ => {
                    return Err(Failure::Refused(format!(
                        "progress must be a whole number from 0 to 100, got {value:?}"
                    )))
                }
            };
            let message = (positional.len() > 1).then(|| positional[1..].join(" "));
            Action::Progress { value, message }
        }
        _ => {
            if positional.is_empty() {
                return Err(usage("fail needs a reason".to_string()));
            }
            Action::Fail(positional.join(" "))
        }
    };
    Ok((action, flags))
}

fn target(flags: Flags, env: &dyn Fn(&str) -> Option<OsString>) -> Result<Target, Failure> {
    let refused = |text: String| Failure::Refused(text);
    let from_env = |name: &str| env(name).filter(|value| !value.is_empty());
    let task_id = match flags.task_id {
        Some(id) => id,
        None => match from_env(ENV_TASK_ID) {
            Some(id) => id.into_string().map_err(|_| refused(format!("{ENV_TASK_ID} is not valid UTF-8")))?,
            None => {
                return Err(refused(format!(
                    "no task: {ENV_TASK_ID} is not set and no --task-id was given (call the helper from the wake command's environment)"
                )))
            }
        },
    };
    if !is_valid_task_id(&task_id) {
        let shown: String = task_id.chars().take(64).collect();
        return Err(refused(format!(
            "invalid task id {shown:?}: 1 to 128 of A-Z a-z 0-9 . _ - not starting with ."
        )));
    }
    let results_dir = match flags.results_dir.or_else(|| from_env(ENV_RESULTS_DIR).map(PathBuf::from)) {
        Some(dir) => dir,
        None => {
            return Err(refused(format!(
                "no results directory: {ENV_RESULTS_DIR} is not set and no --results-dir was given"
            )))
        }
    };
    match std::fs::metadata(&results_dir) {
        Ok(metadata) if metadata.is_dir() => {}
        Ok(_) => {
            return Err(refused(format!("results directory {} is not a directory", results_dir.display())))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(refused(format!("results directory {} does not exist", results_dir.display())))
        }
        Err(e) => {
            return Err(refused(format!("cannot use results directory {}: {e}", results_dir.display())))
        }
    }
    let max = match flags.max_result_bytes {
        Some(text) => Some(("--max-result-bytes", text)),
        None => {
            from_env(ENV_MAX_RESULT_BYTES).map(|v| (ENV_MAX_RESULT_BYTES, v.to_string_lossy().into_owned()))
        }
    };
    let max_result_bytes = match max {
        None => DEFAULT_MAX_RESULT_BYTES,
        Some((name, text)) => match text.trim().parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(refused(format!("{name} must be a positive whole number of bytes, got {text:?}")))
            }
        },
    };
    Ok(Target { results_dir, task_id, max_result_bytes })
}

fn act(target: &Target, action: Action) -> Result<(), Failure> {
    match action {
        Action::Started => write(target, FileKind::Started, b"", false),
        Action::Progress { value, message } => {
            let mut object = json!({ "progress": value });
            if let Some(message) = message {
                object["message"] = Value::from(cut_to_bytes(&message, MAX_PROGRESS_MESSAGE_BYTES));
            }
            let bytes = object.to_string().into_bytes();
            // A 1 KiB message escapes to at most 6 KiB; keep within what the
            // sidecar reads.
            let bytes = if bytes.len() > MAX_PROGRESS_FILE_BYTES {
                let message = object["message"].as_str().unwrap_or_default();
                let keep = cut_to_bytes(message, MAX_PROGRESS_MESSAGE_BYTES / 6);
                json!({ "progress": value, "message": keep }).to_string().into_bytes()
            } else {
                bytes
            };
            write(target, FileKind::Progress, &bytes, false)
        }
        Action::Fail(reason) => {
            check_reason(&reason, "the reason")?;
            let bytes = json!({ "status": "failure", "reason": reason }).to_string().into_bytes();
            check_size(target, bytes.len() as u64, "the result")?;
            write(target, FileKind::Result, &bytes, true)
        }
        Action::Done(source) => {
            let result = match source {
                Source::Text(text) => success(text),
                Source::File(path) => success(read_bounded(target, Some(&path), "output file")?),
                Source::Stdin => {
                    if io::stdin().is_terminal() {
                        return Err(Failure::Usage(
                            "no output given: pass --output TEXT, --output-file FILE or --json FILE, or pipe it on stdin"
                                .to_string(),
                        ));
                    }
                    success(read_bounded(target, None, "output on stdin")?)
                }
                Source::Json(path) => whole_result(target, path.as_deref())?,
            };
            let bytes = Value::Object(result).to_string().into_bytes();
            check_size(target, bytes.len() as u64, "the result")?;
            write(target, FileKind::Result, &bytes, true)
        }
    }
}

fn success(output: String) -> Map<String, Value> {
    let mut result = Map::new();
    result.insert("status".into(), Value::from("success"));
    result.insert("output".into(), Value::from(output));
    result
}

/// A whole result object from `--json`, checked as the sidecar and the hub
/// would take it.
fn whole_result(target: &Target, path: Option<&Path>) -> Result<Map<String, Value>, Failure> {
    let what = if path.is_some() { "--json file" } else { "--json on stdin" };
    let text = read_bounded(target, path, what)?;
    let named = match path {
        Some(path) => format!("{what} {}", path.display()),
        None => what.to_string(),
    };
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| Failure::Refused(format!("{named} is not valid JSON: {e}")))?;
    let Value::Object(result) = value else {
        return Err(Failure::Refused(format!(
            "{named} must hold a JSON object, like {{\"status\":\"success\",\"output\":\"...\"}}"
        )));
    };
    match result.get("status") {
        Some(Value::String(status)) if status == "success" => {}
        Some(Value::String(_)) => {
            for field in ["reason", "error"] {
                if let Some(value) = result.get(field) {
                    let Some(text) = value.as_str() else {
                        return Err(Failure::Refused(format!("the result's \"{field}\" must be a string")));
                    };
                    check_reason(text, &format!("the result's \"{field}\""))?;
                }
            }
        }
        _ => {
            return Err(Failure::Refused(
                "the result needs a \"status\" string: \"success\", or \"failure\" with a \"reason\""
                    .to_string(),
            ))
        }
    }
    Ok(result)
}

fn check_reason(reason: &str, what: &str) -> Result<(), Failure> {
    if reason.trim().is_empty() {
        return Err(Failure::Refused(format!("{what} is empty")));
    }
    let chars = reason.chars().count();
    if chars > MAX_REASON_CHARS {
        return Err(Failure::Refused(format!(
            "{what} is {chars} characters, over the hub's limit of {MAX_REASON_CHARS}: shorten it"
        )));
    }
    Ok(())
}

fn check_size(target: &Target, len: u64, what: &str) -> Result<(), Failure> {
    if len > target.max_result_bytes {
        return Err(Failure::Refused(format!(
            "{what} would be {len} bytes, over the sidecar's limit of {} ({ENV_MAX_RESULT_BYTES}): shorten it",
            target.max_result_bytes
        )));
    }
    Ok(())
}

/// Reads a file (or stdin) as text, never more than the result limit plus
/// one byte. Bytes that are not UTF-8 become U+FFFD.
fn read_bounded(target: &Target, path: Option<&Path>, what: &str) -> Result<String, Failure> {
    let named = match path {
        Some(path) => format!("{what} {}", path.display()),
        None => what.to_string(),
    };
    let limit = target.max_result_bytes;
    let mut bytes = Vec::new();
    let read = match path {
        Some(path) => std::fs::File::open(path).and_then(|file| file.take(limit + 1).read_to_end(&mut bytes)),
        None => io::stdin().lock().take(limit + 1).read_to_end(&mut bytes),
    };
    read.map_err(|e| Failure::Refused(format!("cannot read {named}: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(Failure::Refused(format!(
            "{named} is over the sidecar's result limit of {limit} bytes ({ENV_MAX_RESULT_BYTES}): shorten it"
        )));
    }
    Ok(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Writes `<task_id>.<kind>` atomically; a result (`new_only`) never
/// replaces one that is there.
fn write(target: &Target, kind: FileKind, bytes: &[u8], new_only: bool) -> Result<(), Failure> {
    let path = task_file_path(&target.results_dir, &target.task_id, kind);
    let prefix = format!(".{}.{}.", target.task_id, kind.extension());
    write_atomic_shared(&path, bytes, &prefix, new_only).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => Failure::Refused(format!(
            "task {} already has a result ({}); not replacing it",
            target.task_id,
            path.display()
        )),
        _ => Failure::Refused(format!("cannot write {}: {e}", path.display())),
    })
}

/// The first `max` bytes of `text` or fewer, at a character boundary.
fn cut_to_bytes(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests;
