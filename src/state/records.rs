//! The queue.json records (docs/protocol.md section 9) as the core keeps
//! them: the file, the held task, its report, the tasks let go of and the
//! wake command it started. Pure data with its serde form; reading and
//! writing the file is `queue_store`'s job.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::WakeMode;

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueFile {
    #[serde(default)]
    pub active: Option<TaskRecord>,
    #[serde(default)]
    pub recovering: Option<TaskRecord>,
    /// Added by this sidecar: the last task we stopped holding whose files
    /// may still be in results_dir. Absent in Node files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub past: Option<PastTask>,
    /// Added by this sidecar: earlier tasks we stopped holding whose files
    /// may still matter, oldest first (`past` is the newest). Absent when
    /// there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub past_earlier: Vec<PastTask>,
    /// Added by this sidecar: the wake command started and not yet reported
    /// ended. After a crash it may still run: it is ended before any new
    /// wake. Absent in Node files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_process: Option<WakeProcess>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A started wake command, as persisted: the task and attempt it belongs to
/// and what identifies its process without trusting a pid alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeProcess {
    pub task_id: String,
    pub attempt: u32,
    #[serde(flatten)]
    pub identity: WakeIdentity,
    /// `run`: the command is the agent, left running when the sidecar stops
    /// and found again by the next start.
    #[serde(default, skip_serializing_if = "WakeMode::is_launch")]
    pub mode: WakeMode,
    /// How the command ended, as the next start found it recorded (its exit
    /// file, see `wake::run`): a launcher that exited 0 just before the
    /// sidecar died is waited for (`.started`), never woken again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// A task we no longer hold, remembered for what its files mean.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PastTask {
    pub task_id: String,
    pub generation: u64,
    pub fate: PastFate,
    /// Its agent had confirmed it (`.started`).
    #[serde(default)]
    pub confirmed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PastFate {
    /// The hub settled its outcome (or cancelled it): its files are stale,
    /// removed as soon as possible, and a new push of the id is new work.
    Settled,
    /// The hub took it back unsettled: its files are kept for a while, and
    /// if the hub hands the same task back, the agent's work is adopted
    /// without a second wake.
    TakenBack,
}

/// One task as persisted. The first seven fields are the Node sidecar's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "empty_object")]
    pub metadata: Value,
    #[serde(default)]
    pub status: TaskStatus,
    #[serde(default)]
    pub assigned_at: u64,
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub wake_attempts: u32,
    /// Added by this sidecar: every other field of the hub's `task_assign`
    /// (all but `type`, `protocol_version` and the five above), unknown ones
    /// included, handed to the agent with the rest. Absent in Node files.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub assignment: Map<String, Value>,
    /// Added by this sidecar: the outcome owed to the hub, kept until the hub
    /// settles it. Absent in Node files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Where a task stands, as Node's `status` field spells it (docs/protocol.md
/// section 9). The spelling lives here and nowhere else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Accepted,
    Waking,
    WakingConfirmation,
    /// Also the default when a file has no (or an unknown) status: Node's
    /// reader treats such a task as being worked on.
    #[default]
    Working,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Accepted => "accepted",
            TaskStatus::Waking => "waking",
            TaskStatus::WakingConfirmation => "waking_confirmation",
            TaskStatus::Working => "working",
        }
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An outcome owed to the hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Report {
    Complete { result: Value },
    Failed { reason: String },
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// What identifies a started wake command without trusting a pid alone (pids
/// are reused). Serializable for queue.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeIdentity {
    pub pid: u32,
    /// Unix: the process group the command leads (its pid). Windows: none
    /// (a job object holds the tree; a run-mode agent's job is found by a
    /// name made of its pid and creation time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_group: Option<u32>,
    /// When the process started: Linux, clock ticks after boot
    /// (`/proc/<pid>/stat` field 22); Windows, its creation time (100 ns
    /// units since 1601). `None` where the platform gives none: such a
    /// leftover is never ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
}
