//! What a test, or a person at the prompt, can observe of the development
//! hub: the events it reports in order, and snapshots of its tasks and of
//! each agent's state machine.

use serde_json::Value;

/// What the hub saw or did, in order. `conn` numbers connections from 1.
#[derive(Debug, Clone, PartialEq)]
pub enum DevHubEvent {
    /// A WebSocket handshake completed.
    Connected { conn: u64 },
    /// A TCP connection that never became a WebSocket (wrong path, bad TLS...).
    HandshakeFailed { conn: u64, reason: String },
    /// An identify was accepted; emitted right after the `identified` frame.
    Identified { conn: u64, agent_id: String },
    /// A text frame from the sidecar, raw (an identify keeps its token here;
    /// use [`redact_token`](super::redact_token) before printing it).
    Received { conn: u64, frame: Value },
    /// A text frame that is not JSON, or a binary frame (lossy UTF-8).
    ReceivedText { conn: u64, text: String },
    /// A frame written to the sidecar.
    Sent { conn: u64, frame: Value },
    /// A frame the hub would have written but did not because it is silent.
    Suppressed { conn: u64, frame: Value },
    /// The hub sent a close frame.
    ClosedByHub { conn: u64, code: u16, reason: String },
    /// A task went back to the queue without an answer from the sidecar:
    /// `reason` is `disconnect`, `accept_timeout`, `hub_crash` or `stuck`.
    TaskTakenBack { task_id: String, generation: u64, reason: String },
    /// A frame failed 4718a58's schema validation and was counted: `count` is
    /// the connection's count in the current window.
    Violation { conn: u64, message_type: String, count: u32 },
    /// The connection is gone, with the agent it had identified as.
    Disconnected { conn: u64, agent_id: Option<String> },
}

/// Where a task stands in the hub's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Queued,
    Assigned,
    Completed,
    DeadLetter,
    /// Deleted by an operator's cancel (4718a58 deletes it from the queue:
    /// its reports get `not_found`).
    Cancelled,
}

/// What settled one generation of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    Completed,
    Retried,
    DeadLetter,
}

/// One accepted `task_complete` or `task_failed`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub generation: u64,
    pub kind: OutcomeKind,
    /// The `result` of a completion.
    pub result: Option<Value>,
    /// The `error` (or else `reason`) of a failure.
    pub reason: Option<String>,
}

/// A copy of what the hub knows about a task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSnapshot {
    pub task_id: String,
    pub description: String,
    pub metadata: Value,
    pub generation: u64,
    pub status: TaskStatus,
    pub assigned_to: Option<String>,
    /// A `task_accepted` arrived for the current assignment.
    pub accepted: bool,
    pub n_failures: u32,
    pub outcomes: Vec<Outcome>,
    /// Every `task_progress` frame received for this task.
    pub progress: Vec<Value>,
}

/// The state of the hub's per-agent state machine (`AgentFSM`,
/// lib/agent_com/agent_fsm.ex:32-37 at both versions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    Idle,
    /// Handed a task, waiting for `task_accepted` (60 s acceptance timer).
    Assigned,
    Working,
}

/// A copy of what the hub knows about an identified agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSnapshot {
    pub agent_id: String,
    /// The connection that identified last.
    pub conn: u64,
    pub state: AgentState,
    /// The task the state machine is about (set unless idle).
    pub current_task: Option<String>,
    /// Schema violations counted on its connection in the current window.
    pub violations: u32,
    /// 4718a58: the scheduler skips it because a frame was rate-limited.
    pub rate_limited: bool,
}
