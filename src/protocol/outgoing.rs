//! The frames we send, as data: [`Outgoing`] (what the core's send effects
//! carry), its wire name from one place ([`OutKind::wire_name`]), and its
//! text ([`Outgoing::to_text`], built by the `out_*` functions).

use std::fmt;

use serde_json::{json, Map, Value};

use super::{
    cut_text, MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS, MAX_REASON_CHARS, MAX_STATUS_CHARS, PROTOCOL_VERSION,
};
use crate::state::{Secret, TaskStatus, WakeStatus};

/// The type of a frame we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutKind {
    Identify,
    Ping,
    TaskAccepted,
    TaskProgress,
    TaskComplete,
    TaskFailed,
    TaskRecovering,
    StateReport,
    WakeResult,
}

impl OutKind {
    pub const ALL: [OutKind; 9] = [
        OutKind::Identify,
        OutKind::Ping,
        OutKind::TaskAccepted,
        OutKind::TaskProgress,
        OutKind::TaskComplete,
        OutKind::TaskFailed,
        OutKind::TaskRecovering,
        OutKind::StateReport,
        OutKind::WakeResult,
    ];

    /// Its `type` on the wire: the one place the names are written.
    pub const fn wire_name(self) -> &'static str {
        match self {
            OutKind::Identify => "identify",
            OutKind::Ping => "ping",
            OutKind::TaskAccepted => "task_accepted",
            OutKind::TaskProgress => "task_progress",
            OutKind::TaskComplete => "task_complete",
            OutKind::TaskFailed => "task_failed",
            OutKind::TaskRecovering => "task_recovering",
            OutKind::StateReport => "state_report",
            OutKind::WakeResult => "wake_result",
        }
    }

    /// The kind a hub names (`validation_failed`'s `message_type`), if we send
    /// such frames.
    pub fn parse(name: &str) -> Option<OutKind> {
        OutKind::ALL.into_iter().find(|kind| kind.wire_name() == name)
    }

    /// Frames the newer hub (the only one that rate-limits) never answers
    /// when it handles them: they only inform it.
    pub fn informational(self) -> bool {
        matches!(self, OutKind::TaskProgress | OutKind::WakeResult)
    }
}

impl fmt::Display for OutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire_name())
    }
}

/// A frame for the hub, one variant per type docs/protocol.md lets a sidecar
/// send (6.6).
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// Its token is a [`Secret`]: `Debug` shows `<redacted>`.
    Identify {
        agent_id: String,
        token: Secret,
        name: String,
        capabilities: Vec<String>,
    },
    Ping,
    TaskAccepted {
        task_id: String,
    },
    TaskProgress {
        task_id: String,
        progress: u64,
        message: Option<String>,
    },
    TaskComplete {
        task_id: String,
        generation: u64,
        result: Value,
    },
    TaskFailed {
        task_id: String,
        generation: u64,
        reason: String,
    },
    TaskRecovering {
        task_id: String,
        description: String,
        metadata: Value,
        last_status: TaskStatus,
    },
    StateReport {
        task_id: String,
        generation: u64,
        status: TaskStatus,
        assigned_at: u64,
    },
    /// `error` has had its local paths taken out.
    WakeResult {
        task_id: String,
        status: WakeStatus,
        attempt: u32,
        error: Option<String>,
    },
}

impl Outgoing {
    pub fn kind(&self) -> OutKind {
        match self {
            Outgoing::Identify { .. } => OutKind::Identify,
            Outgoing::Ping => OutKind::Ping,
            Outgoing::TaskAccepted { .. } => OutKind::TaskAccepted,
            Outgoing::TaskProgress { .. } => OutKind::TaskProgress,
            Outgoing::TaskComplete { .. } => OutKind::TaskComplete,
            Outgoing::TaskFailed { .. } => OutKind::TaskFailed,
            Outgoing::TaskRecovering { .. } => OutKind::TaskRecovering,
            Outgoing::StateReport { .. } => OutKind::StateReport,
            Outgoing::WakeResult { .. } => OutKind::WakeResult,
        }
    }

    /// The frame's text (JSON). Identify's carries the token: never log it.
    pub fn to_text(&self) -> String {
        match self {
            Outgoing::Identify { agent_id, token, name, capabilities } => {
                out_identify(agent_id, token.expose(), name, capabilities)
            }
            Outgoing::Ping => out_ping(),
            Outgoing::TaskAccepted { task_id } => out_task_accepted(task_id),
            Outgoing::TaskProgress { task_id, progress, message } => {
                out_task_progress(task_id, *progress, message.as_deref())
            }
            Outgoing::TaskComplete { task_id, generation, result } => {
                out_task_complete(task_id, *generation, result)
            }
            Outgoing::TaskFailed { task_id, generation, reason } => {
                out_task_failed(task_id, *generation, reason)
            }
            Outgoing::TaskRecovering { task_id, description, metadata, last_status } => {
                out_task_recovering(task_id, description, metadata, *last_status)
            }
            Outgoing::StateReport { task_id, generation, status, assigned_at } => {
                out_state_report(task_id, *generation, *status, *assigned_at)
            }
            Outgoing::WakeResult { task_id, status, attempt, error } => {
                out_wake_result(task_id, status.word(), *attempt, error.as_deref())
            }
        }
    }
}

fn frame(kind: OutKind, fields: Value) -> String {
    let mut object = Map::new();
    object.insert("type".into(), Value::from(kind.wire_name()));
    if let Value::Object(fields) = fields {
        object.extend(fields);
    }
    object.insert("protocol_version".into(), Value::from(PROTOCOL_VERSION));
    Value::Object(object).to_string()
}

/// The identify frame. It carries the token: never log it.
pub(crate) fn out_identify(agent_id: &str, token: &str, name: &str, capabilities: &[String]) -> String {
    frame(
        OutKind::Identify,
        json!({
            "agent_id": agent_id,
            "token": token,
            "name": cut_text(name, MAX_NAME_CHARS),
            "status": "idle",
            "capabilities": capabilities,
            "client_type": "sidecar",
        }),
    )
}

pub(crate) fn out_ping() -> String {
    frame(OutKind::Ping, json!({}))
}

pub(crate) fn out_task_accepted(task_id: &str) -> String {
    frame(OutKind::TaskAccepted, json!({ "task_id": task_id }))
}

pub(crate) fn out_task_progress(task_id: &str, progress: u64, message: Option<&str>) -> String {
    let mut fields = json!({ "task_id": task_id, "progress": progress });
    if let Some(message) = message {
        fields["message"] = Value::from(message);
    }
    frame(OutKind::TaskProgress, fields)
}

pub(crate) fn out_task_complete(task_id: &str, generation: u64, result: &Value) -> String {
    frame(OutKind::TaskComplete, json!({ "task_id": task_id, "generation": generation, "result": result }))
}

/// `reason` and `error` carry the same text: older hubs read one, newer the
/// other (docs/protocol.md section 6.4).
pub(crate) fn out_task_failed(task_id: &str, generation: u64, reason: &str) -> String {
    frame(
        OutKind::TaskFailed,
        json!({ "task_id": task_id, "generation": generation, "reason": cut_text(reason, MAX_REASON_CHARS),
                "error": cut_text(reason, MAX_REASON_CHARS) }),
    )
}

pub(crate) fn out_task_recovering(
    task_id: &str,
    description: &str,
    metadata: &Value,
    last_status: TaskStatus,
) -> String {
    frame(
        OutKind::TaskRecovering,
        json!({
            "task_id": task_id,
            "description": cut_text(description, MAX_DESCRIPTION_CHARS),
            "metadata": metadata,
            "last_status": last_status.as_str(),
        }),
    )
}

pub(crate) fn out_state_report(
    task_id: &str,
    generation: u64,
    status: TaskStatus,
    assigned_at: u64,
) -> String {
    frame(
        OutKind::StateReport,
        json!({ "task_id": task_id, "generation": generation, "status": status.as_str(), "assigned_at": assigned_at }),
    )
}

pub(crate) fn out_wake_result(task_id: &str, status: &str, attempt: u32, error: Option<&str>) -> String {
    let mut fields =
        json!({ "task_id": task_id, "status": cut_text(status, MAX_STATUS_CHARS), "attempt": attempt });
    if let Some(error) = error {
        fields["error"] = Value::from(cut_text(error, MAX_REASON_CHARS));
    }
    frame(OutKind::WakeResult, fields)
}

/// The frame types docs/protocol.md lets a sidecar send (6.6). Tests check every frame
/// we send against this list.
pub const SENDABLE_TYPES: &[&str] = &{
    let mut names = [""; OutKind::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = OutKind::ALL[i].wire_name();
        i += 1;
    }
    names
};
