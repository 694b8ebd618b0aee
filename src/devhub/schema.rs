//! The wire schema of the frames a sidecar sends, as 4718a58 validates them
//! (lib/agent_com/validation/schemas.ex, validation.ex), and the shapes of
//! the hub's error replies. cbf9c20 validates nothing.

use serde_json::{json, Map, Value};

use super::state::Reply;

#[derive(Clone, Copy)]
pub(super) enum FieldType {
    String,
    Integer,
    /// An integer or a float.
    Number,
    Object,
    StringList,
    ObjectList,
}

pub(super) struct Schema {
    required: &'static [(&'static str, FieldType)],
    optional: &'static [(&'static str, FieldType)],
}

/// Every type 4718a58's schema knows, sorted, as its `known_types` lists them
/// ((4718a58) validation/schemas.ex:30-225). `task_rejected` is not one of them.
pub(super) const KNOWN_TYPES: &[&str] = &[
    "channel_history",
    "channel_publish",
    "channel_subscribe",
    "channel_unsubscribe",
    "identify",
    "list_agents",
    "list_channels",
    "message",
    "ollama_report",
    "ping",
    "resource_report",
    "state_report",
    "status",
    "task_accepted",
    "task_complete",
    "task_failed",
    "task_progress",
    "task_recovering",
    "wake_result",
];

/// The schema of a frame type, `None` for a type 4718a58 does not know. The
/// chat and report types a sidecar never sends are checked for `type` only.
pub(super) fn schema_for(frame_type: &str) -> Option<&'static Schema> {
    use FieldType::*;
    // (4718a58) schemas.ex:31-44
    const IDENTIFY: Schema = Schema {
        required: &[("agent_id", String), ("token", String), ("type", String)],
        optional: &[
            ("capabilities", StringList),
            ("name", String),
            ("ollama_url", String),
            ("status", String),
        ],
    };
    // (4718a58) schemas.ex:72-78 (ping) and the types a sidecar never sends.
    const TYPE_ONLY: Schema = Schema { required: &[("type", String)], optional: &[] };
    // (4718a58) schemas.ex:125-132 (task_accepted), 170-177 (task_recovering)
    const TASK_ID_ONLY: Schema = Schema { required: &[("task_id", String), ("type", String)], optional: &[] };
    // (4718a58) schemas.ex:133-143
    const TASK_PROGRESS: Schema = Schema {
        required: &[("task_id", String), ("type", String)],
        optional: &[("execution_event", Object), ("progress", Integer)],
    };
    // (4718a58) schemas.ex:144-157
    const TASK_COMPLETE: Schema = Schema {
        required: &[("generation", Integer), ("task_id", String), ("type", String)],
        optional: &[
            ("result", Object),
            ("tokens_used", Integer),
            ("verification_history", ObjectList),
            ("verification_report", Object),
        ],
    };
    // (4718a58) schemas.ex:158-169
    const TASK_FAILED: Schema = Schema {
        required: &[("generation", Integer), ("task_id", String), ("type", String)],
        optional: &[("error", String), ("reason", String)],
    };
    // (4718a58) schemas.ex:200-212
    const WAKE_RESULT: Schema = Schema {
        required: &[("status", String), ("task_id", String), ("type", String)],
        optional: &[("attempt", Integer), ("error", String), ("reason", String)],
    };
    // (4718a58) schemas.ex:213-224
    const STATE_REPORT: Schema = Schema {
        required: &[("task_id", String), ("type", String)],
        optional: &[("assigned_at", Number), ("generation", Integer), ("status", String)],
    };
    match frame_type {
        "identify" => Some(&IDENTIFY),
        "task_accepted" | "task_recovering" => Some(&TASK_ID_ONLY),
        "task_progress" => Some(&TASK_PROGRESS),
        "task_complete" => Some(&TASK_COMPLETE),
        "task_failed" => Some(&TASK_FAILED),
        "wake_result" => Some(&WAKE_RESULT),
        "state_report" => Some(&STATE_REPORT),
        known if KNOWN_TYPES.contains(&known) => Some(&TYPE_ONLY),
        _ => None,
    }
}

/// The one error of a frame whose type the schema does not know
/// ((4718a58) validation.ex:29-36).
pub(super) fn unknown_type_error(frame_type: &str) -> Value {
    json!({
        "field": "type",
        "error": "unknown_message_type",
        "detail": format!("unknown message type '{frame_type}'"),
        "known_types": KNOWN_TYPES,
    })
}

/// Length limits by field name, in characters, for any field of a schema
/// ((4718a58) schemas.ex:16-27, validation.ex:344-361).
pub(super) fn length_limit(field: &str) -> Option<usize> {
    match field {
        "agent_id" => Some(128),
        "description" => Some(10_000),
        "status" => Some(256),
        "channel" => Some(64),
        "token" => Some(256),
        "error" | "reason" => Some(2_000),
        "name" => Some(256),
        "repo" | "ollama_url" => Some(512),
        _ => None,
    }
}

pub(super) fn validate(object: &Map<String, Value>, schema: &Schema) -> Vec<Value> {
    let mut errors = Vec::new();
    let fields = schema
        .required
        .iter()
        .map(|field| (field, true))
        .chain(schema.optional.iter().map(|field| (field, false)));
    for (&(field, field_type), required) in fields {
        let value = match object.get(field) {
            None | Some(Value::Null) if required => {
                errors.push(field_error(field, "required", "field is required", None));
                continue;
            }
            None | Some(Value::Null) => continue,
            Some(value) => value,
        };
        // Never echo a token back, even a malformed one.
        let echo = if field == "token" { None } else { Some(value) };
        let (ok, expected) = match field_type {
            FieldType::String => (value.is_string(), "string"),
            FieldType::Integer => (value.is_i64() || value.is_u64(), "integer"),
            FieldType::Object => (value.is_object(), "object"),
            FieldType::Number => (value.is_number(), "number"),
            FieldType::StringList | FieldType::ObjectList => {
                let (item_ok, item_name): (fn(&Value) -> bool, &str) = match field_type {
                    FieldType::StringList => (Value::is_string, "string"),
                    _ => (Value::is_object, "map"),
                };
                match value.as_array() {
                    Some(items) => match items.iter().position(|item| !item_ok(item)) {
                        None => (true, "array"),
                        Some(idx) => {
                            let detail = format!("expected {item_name}, got {}", type_name(&items[idx]));
                            let name = format!("{field}[{idx}]");
                            errors.push(field_error(&name, "wrong_type", &detail, Some(&items[idx])));
                            continue;
                        }
                    },
                    None => (false, "array"),
                }
            }
        };
        if !ok {
            let detail = format!("expected {expected}, got {}", type_name(value));
            errors.push(field_error(field, "wrong_type", &detail, echo));
            continue;
        }
        if let (Some(limit), Some(text)) = (length_limit(field), value.as_str()) {
            if text.chars().count() > limit {
                let detail = format!("exceeds maximum length of {limit} characters");
                let short = Value::String(text.chars().take(50).collect::<String>() + "...");
                let echo = echo.map(|_| &short);
                errors.push(field_error(field, "too_long", &detail, echo));
            }
        }
    }
    errors
}

pub(super) fn field_error(field: &str, error: &str, detail: &str, value: Option<&Value>) -> Value {
    let mut entry = json!({"field": field, "error": error, "detail": detail});
    if let Some(value) = value {
        entry["value"] = value.clone();
    }
    entry
}

pub(super) fn validation_failed(frame_type: &str, errors: Vec<Value>) -> Reply {
    Reply::Frame(json!({
        "type": "error",
        "error": "validation_failed",
        "message_type": frame_type,
        "errors": errors,
    }))
}

pub(super) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "string",
        Value::Number(number) if number.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::Bool(_) => "boolean",
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::Null => "null",
    }
}

pub(super) fn error_reply(error: &str) -> Reply {
    Reply::Frame(json!({"type": "error", "error": error}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_errors(frame: Value, expected: &[(&str, &str)]) {
        let object = frame.as_object().expect("test frames are objects");
        let schema = schema_for(object["type"].as_str().unwrap()).expect("known type");
        let errors = validate(object, schema);
        let got: Vec<(String, String)> = errors
            .iter()
            .map(|e| (e["field"].as_str().unwrap().to_string(), e["error"].as_str().unwrap().to_string()))
            .collect();
        let expected: Vec<(String, String)> =
            expected.iter().map(|(f, e)| (f.to_string(), e.to_string())).collect();
        assert_eq!(got, expected, "{frame}");
    }

    #[test]
    fn validation_follows_the_hub_schemas() {
        check_errors(json!({"type": "ping"}), &[]);
        check_errors(json!({"type": "ping", "protocol_version": 1}), &[]);
        check_errors(
            json!({"type": "identify", "agent_id": "a1", "token": "t", "capabilities": ["code"]}),
            &[],
        );
        check_errors(json!({"type": "identify", "agent_id": "a1"}), &[("token", "required")]);
        check_errors(
            json!({"type": "identify", "agent_id": "a1", "token": "t", "capabilities": ["code", 1]}),
            &[("capabilities[1]", "wrong_type")],
        );
        check_errors(
            json!({"type": "task_complete", "task_id": "t1", "result": {}}),
            &[("generation", "required")],
        );
        check_errors(
            json!({"type": "task_complete", "task_id": "t1", "generation": 1.5}),
            &[("generation", "wrong_type")],
        );
        check_errors(
            json!({"type": "task_complete", "task_id": "t1", "generation": 1, "result": "done"}),
            &[("result", "wrong_type")],
        );
        check_errors(
            json!({"type": "task_failed", "task_id": "t1", "generation": 1, "reason": "x".repeat(2001)}),
            &[("reason", "too_long")],
        );
        check_errors(json!({"type": "task_accepted"}), &[("task_id", "required")]);
    }

    #[test]
    fn a_malformed_token_is_never_echoed() {
        let frame = json!({"type": "identify", "agent_id": "a1", "token": 12345});
        let errors = validate(frame.as_object().unwrap(), schema_for("identify").unwrap());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].get("value").is_none(), "{}", errors[0]);
    }
}
