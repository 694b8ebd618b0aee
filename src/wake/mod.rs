//! The wake module: runs the operator's `wake_command` for a task, one
//! attempt at a time, and reports one [`WakeOutcome`] per attempt. It never
//! retries and keeps no schedule; the event loop decides both.
//!
//! - `render`: how the task reaches the command (placeholders become
//!   references to environment variables, the task file). The hub's text
//!   never becomes shell code; the reasoning lives there.
//! - `executor`: the executor thread, [`WakeHandle`]; one attempt, its
//!   deadline, cancel and shutdown.
//! - `capture`: the command's output files, kept bounded, and the tails of
//!   an outcome.
//! - `run`: the files of a command's run (exit status, output) and how a
//!   run-mode agent's end becomes its result file.
//! - `unix` / `windows` (with `windows/gate`): the platform shell, the gate
//!   that records the exit status, process tree and kill.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::state::{
    WakeIdentity, WakeMode, WakeOutcome, WakeStarted, WakeStatus, STDERR_LINE_LIMIT_CHARS,
};

mod capture;
mod executor;
mod render;
pub mod run;
#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(unix)]
use self::unix as sys;
#[cfg(windows)]
use self::windows as sys;

pub use capture::TAIL_LIMIT_BYTES;
pub use executor::WakeHandle;
#[cfg(test)]
pub(crate) use render::task_environment;
pub(crate) use render::TASK_FILE_TEMP_PREFIX;
pub use render::{
    render_command, write_task_file, ENV_GENERATION, ENV_MAX_RESULT_BYTES, ENV_RESULTS_DIR, ENV_SIDECAR,
    ENV_TASK_DESCRIPTION, ENV_TASK_FILE, ENV_TASK_ID, ENV_TASK_JSON, ENV_TASK_TRUNCATED,
    ENV_VALUE_LIMIT_BYTES, TRUNCATION_MARKER,
};

/// One wake attempt, as the event loop asks for it.
#[derive(Clone)]
pub struct WakeRequest {
    pub task_id: String,
    pub generation: u64,
    /// 1 for the first attempt; only reported back.
    pub attempt: u32,
    /// The operator's `wake_command`, with `${TASK_ID}`, `${TASK_JSON}`,
    /// `${TASK_DESCRIPTION}` and `${TASK_FILE}` placeholders.
    pub command_template: String,
    pub description: String,
    /// The whole task as JSON; written to `task_file` before each attempt.
    pub task_json: String,
    pub task_file: PathBuf,
    pub results_dir: PathBuf,
    /// The directory the command runs in: config.json's directory, which
    /// every relative path of the config is relative to
    /// ([`Config::base_dir`](crate::config::Config::base_dir)). Relative
    /// paths here and in `task_file`/`results_dir` are relative to the
    /// sidecar's working directory; the command gets them absolute.
    pub work_dir: PathBuf,
    /// Launch mode: kill the command's process tree if it has not exited by
    /// then, unless the agent has confirmed (`.started`) by then: a command
    /// still running after confirmation is the agent at work. Run mode: not
    /// used (the process start is the confirmation).
    pub timeout: Duration,
    pub mode: WakeMode,
    /// A cancel sends SIGTERM (Windows: ends the job) and kills what is left
    /// after this long.
    pub cancel_grace: Duration,
    /// The config's `max_result_bytes`: run mode fails the task with
    /// `result_too_large` when stdout is larger, and the command gets it as
    /// `AGENTCOM_MAX_RESULT_BYTES` for the reporting helpers to check against.
    pub max_result_bytes: u64,
    /// How often a launch-mode command's output files are checked against
    /// their bound while its process group lives (Unix; the config's
    /// `results_poll_ms`). See `capture.rs`.
    pub output_check: Duration,
}

/// What [`end_leftover`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    /// No process with that pid and start time is running: nothing to end
    /// (it exited, or its pid now names another process, left alone).
    Gone,
    /// It was still running; it (Unix: its whole process group) was ended
    /// and is gone.
    Ended,
    /// It was told to end but had not gone within the wait.
    StillExiting,
    /// The identity has no start time to check the pid against: nothing was
    /// done.
    Unverifiable,
    /// Checking or ending it failed; the text says why.
    Failed(String),
}

impl Leftover {
    /// Its word in the lifecycle log (`found` of `wake_leftover`).
    pub fn word(&self) -> &'static str {
        match self {
            Leftover::Gone => "gone",
            Leftover::Ended => "ended",
            Leftover::StillExiting => "still_exiting",
            Leftover::Unverifiable => "unverifiable",
            Leftover::Failed(_) => "failed",
        }
    }
}

/// How long [`end_leftover`] waits for an ended leftover to go.
pub const LEFTOVER_WAIT: Duration = Duration::from_secs(2);

/// Ends a wake command still running from before a crash, so that a new
/// wake never runs next to it. Only when its pid still names the very
/// process that was started (same start time); a reused pid is never
/// touched. Blocks up to [`LEFTOVER_WAIT`]: call it at start, before the
/// first wake, with the identity persisted from [`WakeStarted`].
///
/// Its whole tree is ended: on Unix its process group, on Windows its job
/// (found by its name; if it was in none, only the command itself).
pub fn end_leftover(identity: &WakeIdentity) -> Leftover {
    sys::end_leftover(identity, LEFTOVER_WAIT)
}

/// Whether the recorded wake command still runs (same pid and start time).
pub fn leftover_running(identity: &WakeIdentity) -> bool {
    sys::leftover_running(identity)
}

/// A run-mode agent an earlier sidecar left running, watched for its exit
/// code should its gate not record it (Windows: an open process handle; on
/// Unix the gate's exit file is all there is).
pub struct AgentWatch(sys::Watch);

/// Opens a watch on the recorded command if it is still running (Windows);
/// `None` on Unix, where its exit file says how it ended.
pub fn watch_leftover(identity: &WakeIdentity) -> Option<AgentWatch> {
    sys::watch_leftover(identity).map(AgentWatch)
}

impl AgentWatch {
    /// `None` while it runs; its exit code once it has ended.
    pub fn exit_code(&self) -> Option<i32> {
        self.0.exit_code()
    }
}

/// Keeps the output files of a launch-mode command an earlier sidecar left
/// at work bounded while its process tree lives. See `capture.rs`.
pub fn bound_leftover_output(
    results_dir: &std::path::Path,
    task_id: &str,
    identity: &WakeIdentity,
    every: Duration,
) {
    capture::bound_leftover(
        [run::stdout_file(results_dir, task_id), run::stderr_file(results_dir, task_id)],
        identity.clone(),
        every,
    );
}

/// Ends a recorded wake command gracefully: SIGTERM to its process group
/// (Windows: Ctrl-Break where it can be delivered), the kill (Windows: of
/// its whole job) after `grace`. Blocks up to `grace` plus [`LEFTOVER_WAIT`]: call
/// it on a thread of its own.
pub fn terminate_leftover(identity: &WakeIdentity, grace: Duration) -> Leftover {
    sys::terminate_leftover(identity, grace)
}

impl fmt::Debug for WakeRequest {
    /// Leaves out the description and JSON, which can be large and are the
    /// hub's text; their sizes are enough to debug with.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WakeRequest")
            .field("task_id", &self.task_id)
            .field("generation", &self.generation)
            .field("attempt", &self.attempt)
            .field("command_template", &self.command_template)
            .field("description_len", &self.description.len())
            .field("task_json_len", &self.task_json.len())
            .field("task_file", &self.task_file)
            .field("results_dir", &self.results_dir)
            .field("work_dir", &self.work_dir)
            .field("timeout", &self.timeout)
            .field("mode", &self.mode)
            .field("cancel_grace", &self.cancel_grace)
            .field("max_result_bytes", &self.max_result_bytes)
            .finish()
    }
}
