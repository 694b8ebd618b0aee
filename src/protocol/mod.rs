//! The wire format of docs/protocol.md: frames the hub sends us, parsed leniently
//! into [`Incoming`] (here); the frames we send, `Outgoing` with their wire
//! names and the `out_*` builders (`outgoing.rs`); and the agent's result and
//! progress files (`agent_files.rs`).
//!
//! Parsing is by hand rather than with a derived `Deserialize` because a
//! malformed frame of a known type must still be answered (a `task_assign`
//! without a usable `task_id` or generation is refused), and an unknown
//! type must be ignored quietly, never treated as an error.

use serde_json::{json, Map, Value};

/// Every frame we send carries this.
pub const PROTOCOL_VERSION: u64 = 1;

/// A frame from the hub.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Identified,
    /// `{"type":"error","error":...}`. The text says what failed; see
    /// [`ErrorKind::of`].
    Error(String),
    Pong,
    /// `{"type":"error","error":"validation_failed","message_type":T,"errors":[...]}`
    /// (4718a58): our frame of type `message_type` was refused by the hub's
    /// schema and dropped. `kind`: which of ours that is (`None`: a type we
    /// never send). `unknown_type`: the hub does not know that type at all.
    /// `errors` is the list as text, for the log.
    ValidationFailed {
        message_type: String,
        kind: Option<OutKind>,
        unknown_type: bool,
        errors: String,
    },
    TaskAssign(TaskAssign),
    TaskAck {
        task_id: String,
        status: AckStatus,
    },
    TaskContinue {
        task_id: String,
        generation: Option<u64>,
    },
    TaskReassign {
        task_id: String,
    },
    StateReportAck {
        task_id: String,
        action: ReportAction,
    },
    TaskCancelled {
        task_id: String,
    },
    RestartSidecar {
        reason: String,
    },
    /// The hub dropped a frame of `tier` (it never names the frame's type).
    RateLimited {
        retry_after_ms: u64,
        tier: Option<String>,
    },
    /// A frame of `tier` was handled with `remaining` of `capacity` tokens
    /// left.
    RateLimitWarning {
        tier: Option<String>,
        remaining: Option<u64>,
        capacity: Option<u64>,
    },
    /// A frame we do not act on (chat, presence, newer types).
    Ignored {
        kind: String,
    },
}

/// The `status` of a `task_ack` (docs/protocol.md section 6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckStatus {
    /// Answers `task_accepted`.
    Accepted,
    /// Answers `task_complete`: settled.
    Complete,
    /// Answers `task_failed`: settled, the hub retries the task elsewhere.
    Retried,
    /// Answers `task_failed`: settled, the hub gave up on the task.
    DeadLetter,
    /// Anything else, kept for the log.
    Unknown(String),
}

impl AckStatus {
    fn parse(text: &str) -> AckStatus {
        match text {
            "accepted" => AckStatus::Accepted,
            "complete" => AckStatus::Complete,
            "retried" => AckStatus::Retried,
            "dead_letter" => AckStatus::DeadLetter,
            other => AckStatus::Unknown(other.to_owned()),
        }
    }

    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            AckStatus::Accepted => "accepted",
            AckStatus::Complete => "complete",
            AckStatus::Retried => "retried",
            AckStatus::DeadLetter => "dead_letter",
            AckStatus::Unknown(other) => other,
        }
    }
}

/// The `action` of a `state_report_ack`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportAction {
    /// The task is still ours at the reported generation.
    Continue,
    /// It is not: stop it.
    Abort,
    Unknown(String),
}

impl ReportAction {
    fn parse(text: &str) -> ReportAction {
        match text {
            "continue" => ReportAction::Continue,
            "abort" => ReportAction::Abort,
            other => ReportAction::Unknown(other.to_owned()),
        }
    }
}

/// `task_assign` as the hub sent it. `task_id` is `None` when the frame has
/// none or it is not a string; it is *not* validated here.
#[derive(Clone, PartialEq)]
pub struct TaskAssign {
    pub task_id: Option<String>,
    pub description: String,
    pub metadata: Value,
    /// Missing or `null`: 0, as both hubs default it. Anything but a JSON
    /// integer in `0..2^64` (`"7"`, `-1`, `1.5`, 2^64) is `Err` with the
    /// value as text: such an assignment cannot be reported, so it is
    /// refused.
    pub generation: Result<u64, String>,
    pub assigned_at: Option<u64>,
    /// Every field of the frame except `type` and `protocol_version`,
    /// unknown ones included: what the agent gets.
    pub fields: Map<String, Value>,
}

// Descriptions can be large; keep `debug!` lines readable.
impl std::fmt::Debug for TaskAssign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskAssign")
            .field("task_id", &self.task_id)
            .field("generation", &self.generation)
            .field("description_len", &self.description.len())
            .finish_non_exhaustive()
    }
}

/// Why a text frame could not be understood at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    NotJson(String),
    NotAnObject,
    NoType,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::NotJson(e) => write!(f, "frame is not JSON: {e}"),
            ParseError::NotAnObject => f.write_str("frame is not a JSON object"),
            ParseError::NoType => f.write_str("frame has no string `type`"),
        }
    }
}

pub fn parse(text: &str) -> Result<Incoming, ParseError> {
    let value: Value = serde_json::from_str(text).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let Value::Object(object) = value else {
        return Err(ParseError::NotAnObject);
    };
    let kind = object.get("type").and_then(Value::as_str).ok_or(ParseError::NoType)?;
    let string = |key: &str| object.get(key).and_then(Value::as_str).map(str::to_owned);
    let task_id = || string("task_id");
    // Frames about a task without a task id cannot be acted on; ignore them
    // like unknown frames rather than guessing.
    let with_task_id = |build: &dyn Fn(String) -> Incoming| match task_id() {
        Some(id) => build(id),
        None => Incoming::Ignored { kind: format!("{kind} (no task_id)") },
    };
    Ok(match kind {
        "identified" => Incoming::Identified,
        "error" if string("error").as_deref() == Some("validation_failed") => {
            let errors = object.get("errors").cloned().unwrap_or(Value::Null);
            let unknown_type = errors.as_array().is_some_and(|list| {
                list.iter().any(|e| e.get("error").and_then(Value::as_str) == Some("unknown_message_type"))
            });
            let message_type = string("message_type").unwrap_or_default();
            Incoming::ValidationFailed {
                kind: OutKind::parse(&message_type),
                message_type,
                unknown_type,
                errors: errors.to_string(),
            }
        }
        "error" => Incoming::Error(string("error").or_else(|| string("message")).unwrap_or_default()),
        "pong" => Incoming::Pong,
        "task_assign" => Incoming::TaskAssign(TaskAssign {
            task_id: task_id(),
            description: match object.get("description") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            },
            metadata: object.get("metadata").cloned().unwrap_or_else(|| json!({})),
            generation: match object.get("generation") {
                None | Some(Value::Null) => Ok(0),
                Some(value) => value.as_u64().ok_or_else(|| value.to_string()),
            },
            assigned_at: object.get("assigned_at").and_then(Value::as_u64),
            fields: object
                .iter()
                .filter(|(key, _)| !matches!(key.as_str(), "type" | "protocol_version"))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        }),
        "task_ack" => with_task_id(&|task_id| Incoming::TaskAck {
            task_id,
            status: AckStatus::parse(&string("status").unwrap_or_default()),
        }),
        "task_continue" => with_task_id(&|task_id| Incoming::TaskContinue {
            task_id,
            generation: object.get("generation").and_then(Value::as_u64),
        }),
        "task_reassign" => with_task_id(&|task_id| Incoming::TaskReassign { task_id }),
        "state_report_ack" => with_task_id(&|task_id| Incoming::StateReportAck {
            task_id,
            action: ReportAction::parse(&string("action").unwrap_or_default()),
        }),
        "task_cancelled" => with_task_id(&|task_id| Incoming::TaskCancelled { task_id }),
        "restart_sidecar" => Incoming::RestartSidecar { reason: string("reason").unwrap_or_default() },
        "rate_limited" => Incoming::RateLimited {
            retry_after_ms: object.get("retry_after_ms").and_then(Value::as_u64).unwrap_or(1_000),
            tier: string("tier"),
        },
        "rate_limit_warning" => Incoming::RateLimitWarning {
            tier: string("tier"),
            remaining: object.get("remaining").and_then(Value::as_u64),
            capacity: object.get("capacity").and_then(Value::as_u64),
        },
        other => Incoming::Ignored { kind: other.to_owned() },
    })
}

/// What an `error` frame means for us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// `invalid_token`, `token_agent_mismatch`: identify was refused.
    Auth,
    /// `not_identified`: we sent something before identify.
    NotIdentified,
    /// `task_complete_failed: <why>`
    CompleteFailed(String),
    /// `task_fail_failed: <why>`
    FailFailed(String),
    /// `unknown_message_type`: an older hub has no handler for what we sent.
    UnknownMessageType,
    Other,
}

impl ErrorKind {
    pub(crate) fn of(error: &str) -> ErrorKind {
        let why = |prefix: &str| {
            error.strip_prefix(prefix).map(|rest| rest.trim_start_matches([':', ' ']).to_owned())
        };
        if error == "invalid_token" || error == "token_agent_mismatch" {
            ErrorKind::Auth
        } else if error == "not_identified" {
            ErrorKind::NotIdentified
        } else if error == "unknown_message_type" {
            ErrorKind::UnknownMessageType
        } else if let Some(why) = why("task_complete_failed") {
            ErrorKind::CompleteFailed(why)
        } else if let Some(why) = why("task_fail_failed") {
            ErrorKind::FailFailed(why)
        } else {
            ErrorKind::Other
        }
    }
}

/// The reasons a hub gives for refusing a report that mean "this report is
/// settled: it will never be accepted, stop sending it".
pub(crate) fn is_final_refusal(why: &str) -> bool {
    matches!(why, "stale_generation" | "invalid_state" | "not_found")
}

/// The newest hub's length limits (characters; it counts graphemes, which
/// are never more than characters) for the fields we send.
pub(crate) const MAX_REASON_CHARS: usize = 2_000;
pub(crate) const MAX_NAME_CHARS: usize = 256;
pub(crate) const MAX_STATUS_CHARS: usize = 256;
pub(crate) const MAX_DESCRIPTION_CHARS: usize = 10_000;

/// What replaces the end of a text cut to a limit. The full text is in the
/// lifecycle log (the record of the outcome or wake that produced it).
const CUT_MARKER: &str = " [...cut; full text in the sidecar's lifecycle log]";

/// `text` if it has at most `max_chars` characters, else its start and
/// [`CUT_MARKER`], `max_chars` characters in all.
pub(crate) fn cut_text(text: &str, max_chars: usize) -> std::borrow::Cow<'_, str> {
    if text.chars().count() <= max_chars {
        return std::borrow::Cow::Borrowed(text);
    }
    let marker_chars = CUT_MARKER.chars().count();
    let keep: String = text.chars().take(max_chars.saturating_sub(marker_chars)).collect();
    let mut cut = keep + CUT_MARKER;
    if cut.chars().count() > max_chars {
        // A limit shorter than the marker: the bare start.
        cut = text.chars().take(max_chars).collect();
    }
    std::borrow::Cow::Owned(cut)
}

mod agent_files;
pub(crate) use agent_files::{parse_progress, report_from_result};
mod outgoing;
pub use outgoing::*;

#[cfg(test)]
mod tests;
