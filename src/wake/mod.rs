//! The wake module: runs the operator's `wake_command` for a task, one
//! attempt at a time, and reports one [`WakeOutcome`] per attempt. It never
//! retries and keeps no schedule; the event loop decides both (STYLE.md
//! section 4).
//!
//! - `render`: how the task reaches the command (placeholders become
//!   references to environment variables, the task file). The hub's text
//!   never becomes shell code; the reasoning lives there.
//! - `executor`: the executor thread, [`WakeHandle`]; one attempt, its
//!   deadline, cancel and shutdown.
//! - `capture`: the output readers and the bounded tails of an outcome.
//! - `unix` / `windows`: the platform shell, process tree and kill.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

mod capture;
mod executor;
mod render;
#[cfg(unix)]
mod unix;
#[cfg(windows)]
mod windows;

#[cfg(unix)]
use self::unix as sys;
#[cfg(windows)]
use self::windows as sys;

pub use capture::TAIL_LIMIT_BYTES;
pub use executor::{WakeHandle, OUTPUT_GRACE};
pub use render::{
    render_command, write_task_file, ENV_GENERATION, ENV_RESULTS_DIR, ENV_TASK_DESCRIPTION, ENV_TASK_FILE,
    ENV_TASK_ID, ENV_TASK_JSON,
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
    /// Kill the command's process tree if it has not exited by then.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeStatus {
    /// The command exited with status 0.
    Success,
    /// The command exited non-zero; `exit_code` is `None` when a signal
    /// ended it.
    Failed { exit_code: Option<i32> },
    /// The command did not exit within the timeout; its tree was killed.
    TimedOut,
    /// The command could not be started (or its task file not written); the
    /// text says why.
    SpawnFailed(String),
    /// [`WakeHandle::cancel`] (or dropping the handle) killed the running
    /// attempt.
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct WakeOutcome {
    pub task_id: String,
    pub attempt: u32,
    pub status: WakeStatus,
    /// The last [`TAIL_LIMIT_BYTES`] of stdout, as lossy UTF-8.
    pub stdout_tail: String,
    /// The last [`TAIL_LIMIT_BYTES`] of stderr, as lossy UTF-8.
    pub stderr_tail: String,
    /// From the start of the attempt to the outcome.
    pub elapsed: Duration,
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
            .field("timeout", &self.timeout)
            .finish()
    }
}
