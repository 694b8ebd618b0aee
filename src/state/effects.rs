//! The core's edges: the [`Input`]s it takes and the [`Effect`]s it asks
//! the shell (`main_loop`) to carry out, in order.

use serde_json::Value;

use super::{Event, FileKind, LifecycleEvent, QueueFile, ReadResult, WakeProcess};
use crate::protocol::Outgoing;

/// Something that happened, as the core sees it: an [`Event`] from a worker
/// thread, or the outcome of an effect the shell carried out.
#[derive(Debug)]
pub enum Input {
    Event(Event),
    /// What the results directory holds for one task (after `ReadTaskFiles`).
    Files(TaskFiles),
    /// The task files in the results directory (after `ListResults`).
    Listing(Result<Vec<(String, FileKind)>, String>),
    /// A `Persist` failed. `withheld` are the effects that followed it in its
    /// batch, not carried out: the core decides which still may be.
    PersistFailed {
        error: String,
        withheld: Vec<Effect>,
    },
    /// `StartUpdate` failed: the update command could not be started.
    UpdateFailed {
        error: String,
    },
    /// What [`Effect::CheckAgent`] found: the run-mode agent left from an
    /// earlier run has ended (its result file is written).
    AgentEnded {
        task_id: String,
    },
    /// A deadline may be due.
    Tick,
}

/// The results-directory files of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFiles {
    pub task_id: String,
    pub started: bool,
    pub result: ReadResult,
    pub progress: ReadResult,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Open connection `conn_id` (identify follows on `Connected`).
    Connect {
        conn_id: u64,
    },
    /// Send `frame` on connection `conn_id`.
    Send {
        conn_id: u64,
        frame: Outgoing,
    },
    /// Close gracefully; no events from this connection matter any more.
    Close {
        conn_id: u64,
    },
    /// Write queue.json. On failure the shell stops the batch here and
    /// returns the rest as [`Input::PersistFailed`].
    Persist(Box<QueueFile>),
    StartWake(WakeStart),
    /// Let a started wake command run, now that queue.json records it (the
    /// `Persist` before this one): see `WakeHandle::spawn_gated`.
    ReleaseWake {
        task_id: String,
        attempt: u32,
    },
    CancelWake {
        task_id: String,
    },
    /// Tell the agent of `task_id` that its task is cancelled: the marker
    /// file `<task_id>.cancel` in the results directory, holding `reason`.
    MarkCancelled {
        task_id: String,
        reason: String,
    },
    /// The run-mode agent left running by an earlier run (not the
    /// executor's): if it has ended, write its result file and answer
    /// [`Input::AgentEnded`]; if it still runs, nothing.
    CheckAgent {
        process: WakeProcess,
    },
    /// End that agent: SIGTERM to its process group, the kill after
    /// `cancel_grace_ms`, without blocking the loop.
    EndAgent {
        process: WakeProcess,
    },
    /// Read the results-directory files of this task: `Input::Files`.
    ReadTaskFiles {
        task_id: String,
    },
    /// List the task files of the results directory: `Input::Listing`.
    ListResults,
    /// Delete the task's result files and the task file handed to the agent.
    RemoveTaskFiles {
        task_id: String,
    },
    /// The task will not be held again: record its result file's content
    /// (if there is one) in the lifecycle log, then remove its files.
    DiscardTaskFiles {
        task_id: String,
    },
    /// A line for the sidecar's log (the core does not log itself).
    Log {
        level: log::Level,
        text: String,
    },
    /// A lifecycle-log record.
    Record {
        event: LifecycleEvent,
        fields: Value,
    },
    /// Start the update command, detached (`restart_sidecar` with
    /// `update_command`); it restarts us through the supervisor once a new
    /// binary is ready. On failure: [`Input::UpdateFailed`].
    StartUpdate,
    /// Leave the loop (shutdown or `restart_sidecar`).
    Exit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WakeStart {
    pub task_id: String,
    pub generation: u64,
    pub attempt: u32,
    pub description: String,
    pub task_json: String,
}
