//! The wire schema of the frames a sidecar sends, as the real hub validates
//! them, and the shapes of the hub's error replies.

use serde_json::{json, Map, Value};

use super::state::Reply;

#[derive(Clone, Copy)]
pub(super) enum FieldType {
    String,
    Integer,
    Object,
    StringList,
}

pub(super) struct Schema {
    required: &'static [(&'static str, FieldType)],
    optional: &'static [(&'static str, FieldType)],
}

pub(super) fn schema_for(frame_type: &str) -> Option<&'static Schema> {
    use FieldType::*;
    const IDENTIFY: Schema = Schema {
        required: &[("agent_id", String), ("token", String), ("type", String)],
        optional: &[
            ("capabilities", StringList),
            ("name", String),
            ("ollama_url", String),
            ("status", String),
        ],
    };
    const TYPE_ONLY: Schema = Schema { required: &[("type", String)], optional: &[] };
    const TASK_ID_ONLY: Schema = Schema { required: &[("task_id", String), ("type", String)], optional: &[] };
    const TASK_PROGRESS: Schema = Schema {
        required: &[("task_id", String), ("type", String)],
        optional: &[("execution_event", Object), ("progress", Integer)],
    };
    const TASK_COMPLETE: Schema = Schema {
        required: &[("generation", Integer), ("task_id", String), ("type", String)],
        optional: &[("result", Object), ("tokens_used", Integer), ("verification_report", Object)],
    };
    const TASK_FAILED: Schema = Schema {
        required: &[("generation", Integer), ("task_id", String), ("type", String)],
        optional: &[("error", String), ("reason", String)],
    };
    match frame_type {
        "identify" => Some(&IDENTIFY),
        "ping" => Some(&TYPE_ONLY),
        "task_accepted" | "task_recovering" => Some(&TASK_ID_ONLY),
        "task_progress" => Some(&TASK_PROGRESS),
        "task_complete" => Some(&TASK_COMPLETE),
        "task_failed" => Some(&TASK_FAILED),
        _ => None,
    }
}

pub(super) fn length_limit(field: &str) -> Option<usize> {
    match field {
        "agent_id" => Some(128),
        "description" => Some(10_000),
        "status" => Some(256),
        "token" => Some(256),
        "error" | "reason" => Some(2_000),
        "name" => Some(256),
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
            FieldType::StringList => match value.as_array() {
                Some(items) => match items.iter().position(|item| !item.is_string()) {
                    None => (true, "array"),
                    Some(idx) => {
                        let detail = format!("expected string, got {}", type_name(&items[idx]));
                        let name = format!("{field}[{idx}]");
                        errors.push(field_error(&name, "wrong_type", &detail, Some(&items[idx])));
                        continue;
                    }
                },
                None => (false, "array"),
            },
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

/// The real hub's rate-limit tier of a frame type.
pub(super) fn rate_limit_tier(frame_type: &str) -> &'static str {
    match frame_type {
        "ping" | "list_agents" | "list_channels" | "status" | "channel_history" => "light",
        "identify" => "heavy",
        _ => "normal",
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
