//! The files of a wake command's run, and how a run-mode agent's end becomes
//! its result file.
//!
//! Every wake command's exit status lands in `.tasks/<task_id>.exit` under the
//! results directory (the gate writes it, a shell script on Unix, see
//! `unix.rs`, a batch file on Windows, see `windows/gate.rs`, so it is there
//! even when no sidecar was running when the command ended; the executor
//! writes it too). In run mode the command's stdout and stderr go to
//! `.tasks/<task_id>.stdout` and `.tasks/<task_id>.stderr`, never into memory
//! (on Unix a launch-mode command's too, kept bounded: see `capture.rs`).
//! When a run-mode agent has ended, [`conclude`] writes its result file
//! (`<task_id>.json`) from those, unless the agent wrote one itself: then
//! that one wins. The result file is what the core reports, the same way for
//! an agent that ended under this sidecar or under one that is gone.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The marker a launch-mode agent can watch for: `<task_id>.cancel` in the
/// results directory appears when the task is cancelled or timed out (the
/// hub's `task_cancelled`, `task_timeout_ms`). Its content is the reason.
pub const CANCEL_MARKER_EXTENSION: &str = "cancel";

/// How a wake command ended, as recorded in its exit file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunExit {
    /// It exited with this status.
    Code(i32),
    /// A signal ended it (its number, when known).
    Signal(Option<i32>),
    /// It is gone and left no exit status (its whole group was killed).
    Unknown,
}

/// The sidecar's own files of one task's wake command.
pub fn exit_file(results_dir: &Path, task_id: &str) -> PathBuf {
    results_dir.join(".tasks").join(format!("{task_id}.exit"))
}

pub fn stdout_file(results_dir: &Path, task_id: &str) -> PathBuf {
    results_dir.join(".tasks").join(format!("{task_id}.stdout"))
}

pub fn stderr_file(results_dir: &Path, task_id: &str) -> PathBuf {
    results_dir.join(".tasks").join(format!("{task_id}.stderr"))
}

pub fn cancel_marker(results_dir: &Path, task_id: &str) -> PathBuf {
    results_dir.join(format!("{task_id}.{CANCEL_MARKER_EXTENSION}"))
}

/// Removes the run files and the cancel marker of `task_id` (missing ones
/// are fine), and the temporary exit file a gate killed between its write
/// and its rename leaves.
pub fn remove_run_files(results_dir: &Path, task_id: &str) {
    for path in [
        exit_file(results_dir, task_id),
        results_dir.join(".tasks").join(format!("{task_id}.exit.tmp")),
        stdout_file(results_dir, task_id),
        stderr_file(results_dir, task_id),
        cancel_marker(results_dir, task_id),
    ] {
        if let Err(error) = fs::remove_file(&path) {
            if error.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {error}", path.display());
            }
        }
    }
}

/// The exit file's content: `exit N` or `signal N`. `None` when there is no
/// (complete) exit file.
pub fn read_exit_file(path: &Path) -> Option<RunExit> {
    let text = fs::read_to_string(path).ok()?;
    let (word, number) = text.trim().split_once(' ')?;
    let number: i32 = number.trim().parse().ok()?;
    match word {
        // A shell's status for a signal (Unix; on Windows any code is a code).
        "exit" if cfg!(unix) && number > 128 && number < 160 => Some(RunExit::Signal(Some(number - 128))),
        "exit" => Some(RunExit::Code(number)),
        "signal" => Some(RunExit::Signal(Some(number))),
        _ => None,
    }
}

/// Records `exit` in the exit file (atomically), for a sidecar started later.
pub fn write_exit_file(path: &Path, exit: RunExit) -> io::Result<()> {
    let text = match exit {
        RunExit::Code(code) => format!("exit {code}\n"),
        RunExit::Signal(Some(signal)) => format!("signal {signal}\n"),
        RunExit::Signal(None) | RunExit::Unknown => return Ok(()),
    };
    crate::queue_store::write_atomic_unsynced(path, text.as_bytes(), ".exit.")
}

/// The words a failure reason uses for `exit`.
pub fn describe_exit(exit: RunExit) -> String {
    match exit {
        RunExit::Code(code) => format!("exited with status {code}"),
        RunExit::Signal(Some(signal)) => format!("was killed by signal {signal}"),
        RunExit::Signal(None) => "was killed by a signal".to_string(),
        RunExit::Unknown => "ended while no sidecar ran and left no exit status".to_string(),
    }
}

/// The last non-blank line of the stderr file (read from its last 4 KiB),
/// cut to [`super::STDERR_LINE_LIMIT_CHARS`].
pub fn stderr_last_line(path: &Path) -> Option<String> {
    let tail = read_tail(path, 4096).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().map(str::trim).rfind(|line| !line.is_empty())?;
    Some(match line.char_indices().nth(super::STDERR_LINE_LIMIT_CHARS) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line.to_string(),
    })
}

pub(super) fn read_tail(path: &Path, bytes: u64) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(bytes)))?;
    let mut tail = Vec::new();
    file.take(bytes).read_to_end(&mut tail)?;
    Ok(tail)
}

/// The failure reason of a run that ended with `exit` (not 0).
pub fn failure_reason(exit: RunExit, stderr: &Path) -> String {
    let stderr = match stderr_last_line(stderr) {
        Some(line) => format!("; last line of stderr: {line}"),
        None => "; no stderr".to_string(),
    };
    format!("agent_failed: the agent {}{stderr}", describe_exit(exit))
}

/// Writes a failure result for a launch-mode command that confirmed its task
/// and then ended with `exit` (not 0) while no sidecar captured its output,
/// unless a result file is there. Exit 0 writes nothing: the script wrote its
/// result, or the task waits for one as any confirmed task does.
pub fn conclude_launch(results_dir: &Path, task_id: &str, exit: RunExit) -> io::Result<Concluded> {
    let result_path = crate::watcher::task_file_path(results_dir, task_id, crate::watcher::FileKind::Result);
    if result_path.exists() || exit == RunExit::Code(0) {
        return Ok(Concluded::AgentResult);
    }
    let reason = format!("agent_failed: the agent {} after confirming the task", describe_exit(exit));
    let result = json!({ "status": "failed", "error": reason });
    crate::queue_store::write_atomic_unsynced(&result_path, result.to_string().as_bytes(), ".result.")?;
    Ok(Concluded::Written)
}

/// What [`conclude`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Concluded {
    /// The agent had written its own result file: left as it is.
    AgentResult,
    /// The result file was written from the run.
    Written,
}

/// Writes `<task_id>.json` for a run-mode agent that ended with `exit`,
/// unless the agent wrote one: exit 0 gives `{"status":"success","output":
/// <stdout>}` (stdout that is one JSON object stays an object; other text
/// becomes a string, bytes that are not UTF-8 replaced), a stdout over
/// `max_result_bytes` gives a `result_too_large` failure, and anything else a
/// failure naming the exit and the last line of stderr.
pub fn conclude(
    results_dir: &Path,
    task_id: &str,
    exit: RunExit,
    max_result_bytes: u64,
) -> io::Result<Concluded> {
    let result_path = crate::watcher::task_file_path(results_dir, task_id, crate::watcher::FileKind::Result);
    if result_path.exists() {
        return Ok(Concluded::AgentResult);
    }
    let result = match exit {
        RunExit::Code(0) => success_result(&stdout_file(results_dir, task_id), max_result_bytes)?,
        other => {
            json!({ "status": "failed", "error": failure_reason(other, &stderr_file(results_dir, task_id)) })
        }
    };
    crate::queue_store::write_atomic_unsynced(&result_path, result.to_string().as_bytes(), ".result.")?;
    Ok(Concluded::Written)
}

fn success_result(stdout: &Path, max_result_bytes: u64) -> io::Result<Value> {
    let len = match fs::metadata(stdout) {
        Ok(meta) => meta.len(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
        Err(error) => return Err(error),
    };
    if len > max_result_bytes {
        log::warn!("the agent's stdout ({len} bytes) is over max_result_bytes ({max_result_bytes})");
        return Ok(json!({ "status": "failed", "error": "result_too_large" }));
    }
    let mut bytes = Vec::new();
    if len > 0 {
        File::open(stdout)?.take(max_result_bytes).read_to_end(&mut bytes)?;
    }
    Ok(json!({ "status": "success", "output": output_value(&bytes) }))
}

/// Stdout as the result's `output`: one JSON object stays an object (what
/// `claude -p --output-format json` prints); anything else is text, without
/// its final line break, with bytes that are not UTF-8 replaced.
pub fn output_value(bytes: &[u8]) -> Value {
    if let Ok(value @ Value::Object(_)) = serde_json::from_slice::<Value>(bytes) {
        return value;
    }
    let text = String::from_utf8_lossy(bytes);
    let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    Value::from(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_becomes_the_output() {
        assert_eq!(output_value(b"done\n"), json!("done"));
        assert_eq!(output_value(b"two\nlines\r\n"), json!("two\nlines"));
        assert_eq!(
            output_value(b" {\"type\":\"result\",\"result\":\"hi\"}\n"),
            json!({"type":"result","result":"hi"})
        );
        // A JSON value that is not an object stays text.
        assert_eq!(output_value(b"[1,2]"), json!("[1,2]"));
        assert_eq!(output_value(b"ok \xff\xfe end"), json!("ok \u{fffd}\u{fffd} end"));
        assert_eq!(output_value(b""), json!(""));
    }

    #[test]
    fn removing_a_tasks_run_files_takes_a_killed_gates_temporary_exit_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let tasks = dir.path().join(".tasks");
        fs::create_dir_all(&tasks).unwrap();
        let names = ["t1.exit", "t1.exit.tmp", "t1.stdout", "t1.stderr", "t2.exit.tmp"];
        for name in names {
            fs::write(tasks.join(name), "x").unwrap();
        }
        fs::write(cancel_marker(dir.path(), "t1"), "task_cancelled").unwrap();
        remove_run_files(dir.path(), "t1");
        let mut left: Vec<String> =
            fs::read_dir(&tasks).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["t2.exit.tmp"], "another task's files stay");
        assert!(!cancel_marker(dir.path(), "t1").exists());
    }

    #[test]
    fn exit_files_round_trip_and_bad_ones_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.exit");
        for exit in [RunExit::Code(0), RunExit::Code(3), RunExit::Signal(Some(9))] {
            write_exit_file(&path, exit).unwrap();
            assert_eq!(read_exit_file(&path), Some(exit));
        }
        fs::write(&path, "exit 143\n").unwrap();
        // A shell's status for SIGTERM on Unix; on Windows, a code like any.
        let expected = if cfg!(unix) { RunExit::Signal(Some(15)) } else { RunExit::Code(143) };
        assert_eq!(read_exit_file(&path), Some(expected));
        // What the Windows gate writes (`echo exit N >file`).
        fs::write(&path, "exit 5 \r\n").unwrap();
        assert_eq!(read_exit_file(&path), Some(RunExit::Code(5)));
        for bad in ["", "exit", "exit x", "gone 1"] {
            fs::write(&path, bad).unwrap();
            assert_eq!(read_exit_file(&path), None, "{bad:?}");
        }
        assert_eq!(read_exit_file(&dir.path().join("missing")), None);
    }

    fn concluded(exit: RunExit, stdout: &[u8], stderr: &[u8], max: u64) -> Value {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(".tasks")).unwrap();
        fs::write(stdout_file(dir.path(), "t1"), stdout).unwrap();
        fs::write(stderr_file(dir.path(), "t1"), stderr).unwrap();
        assert_eq!(conclude(dir.path(), "t1", exit, max).unwrap(), Concluded::Written);
        let text = fs::read(dir.path().join("t1.json")).unwrap();
        serde_json::from_slice(&text).unwrap()
    }

    #[test]
    fn a_run_concludes_into_a_result_file() {
        assert_eq!(
            concluded(RunExit::Code(0), b"answer\n", b"", 100),
            json!({"status":"success","output":"answer"})
        );
        assert_eq!(
            concluded(RunExit::Code(0), &[b'x'; 301], b"", 100),
            json!({"status":"failed","error":"result_too_large"})
        );
        assert_eq!(
            concluded(RunExit::Code(2), b"", b"chatter\nfatal: no model\n\n", 100),
            json!({"status":"failed","error":"agent_failed: the agent exited with status 2; last line of stderr: fatal: no model"})
        );
        let killed = concluded(RunExit::Signal(Some(9)), b"", b"", 100);
        assert_eq!(killed["error"], "agent_failed: the agent was killed by signal 9; no stderr");
    }

    #[test]
    fn the_agents_own_result_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("t1.json"), "{\"status\":\"success\",\"output\":\"mine\"}").unwrap();
        assert_eq!(conclude(dir.path(), "t1", RunExit::Code(1), 100).unwrap(), Concluded::AgentResult);
        assert!(fs::read_to_string(dir.path().join("t1.json")).unwrap().contains("mine"));
    }
}
