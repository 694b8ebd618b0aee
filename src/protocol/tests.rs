use super::*;
use crate::state::TaskStatus;

fn object(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text).unwrap() {
        Value::Object(o) => o,
        other => panic!("not an object: {other}"),
    }
}

#[test]
fn identify_has_exactly_the_protocol_fields() {
    let o = object(&out_identify("a1", "tok", "a1", &["code".to_string()]));
    let mut keys: Vec<_> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["agent_id", "capabilities", "client_type", "name", "protocol_version", "status", "token", "type"]
    );
    assert_eq!(o["type"], "identify");
    assert_eq!(o["client_type"], "sidecar");
    assert_eq!(o["protocol_version"], 1);
    assert_eq!(o["capabilities"], json!(["code"]));
}

#[test]
fn every_outgoing_frame_carries_protocol_version_and_a_sendable_type() {
    let frames = [
        out_identify("a", "t", "a", &[]),
        out_ping(),
        out_task_accepted("t1"),
        out_task_progress("t1", 5, Some("m")),
        out_task_complete("t1", 3, &json!({"status":"success"})),
        out_task_failed("t1", 3, "boom"),
        out_task_recovering("t1", "d", &json!({}), TaskStatus::Working),
        out_state_report("t1", 3, TaskStatus::Working, 1),
        out_wake_result("t1", "failed", 2, Some("exit 1")),
    ];
    for text in frames {
        let o = object(&text);
        assert_eq!(o["protocol_version"], 1, "{text}");
        assert!(SENDABLE_TYPES.contains(&o["type"].as_str().unwrap()), "{text}");
    }
}

#[test]
fn every_field_stays_within_the_newest_hubs_limits_with_a_visible_cut() {
    let long = "é".repeat(3_000);
    let o = object(&out_task_failed("t1", 4, &long));
    for key in ["reason", "error"] {
        let text = o[key].as_str().unwrap();
        assert_eq!(text.chars().count(), MAX_REASON_CHARS, "{key}");
        assert!(text.starts_with("ééé") && text.ends_with(CUT_MARKER), "{key}");
    }
    let o = object(&out_identify("a", "t", &"n".repeat(300), &[]));
    assert_eq!(o["name"].as_str().unwrap().chars().count(), MAX_NAME_CHARS);
    let o = object(&out_task_recovering("t1", &"d".repeat(20_000), &json!({}), TaskStatus::Working));
    assert_eq!(o["description"].as_str().unwrap().chars().count(), MAX_DESCRIPTION_CHARS);
    let o = object(&out_wake_result("t1", "failed", 1, Some(&"x".repeat(5_000))));
    assert_eq!(o["error"].as_str().unwrap().chars().count(), MAX_REASON_CHARS);
    // Within the limit: untouched.
    assert_eq!(cut_text("short", 10), "short");
    assert_eq!(cut_text(&"x".repeat(2_000), 2_000).len(), 2_000);
    assert_eq!(cut_text("abcdef", 3), "abc", "a limit shorter than the marker");
}

#[test]
fn validation_failed_names_the_frame_type_it_refused() {
    let text = r#"{"type":"error","error":"validation_failed","message_type":"task_failed",
                   "errors":[{"field":"reason","error":"too_long","detail":"exceeds maximum length of 2000 characters"}]}"#;
    let Incoming::ValidationFailed { message_type, kind, unknown_type, errors } = parse(text).unwrap() else {
        panic!("not parsed as validation_failed")
    };
    assert_eq!(
        (message_type.as_str(), kind, unknown_type),
        ("task_failed", Some(OutKind::TaskFailed), false)
    );
    assert!(errors.contains("too_long"));
    let text = r#"{"type":"error","error":"validation_failed","message_type":"task_rejected",
                   "errors":[{"field":"type","error":"unknown_message_type","detail":"unknown message type 'task_rejected'"}]}"#;
    let Incoming::ValidationFailed { kind, unknown_type, .. } = parse(text).unwrap() else { panic!() };
    assert!(unknown_type);
    assert_eq!(kind, None, "a type we never send");
}

#[test]
fn task_failed_carries_reason_and_error_alike() {
    let o = object(&out_task_failed("t1", 4, "confirmation_timeout"));
    assert_eq!(o["reason"], "confirmation_timeout");
    assert_eq!(o["error"], "confirmation_timeout");
    assert_eq!(o["generation"], 4);
}

#[test]
fn parses_hub_frames() {
    let cases = [
        (r#"{"type":"identified","agent_id":"a1"}"#, Incoming::Identified),
        (r#"{"type":"pong","timestamp":1}"#, Incoming::Pong),
        (r#"{"type":"error","error":"invalid_token"}"#, Incoming::Error("invalid_token".into())),
        (
            r#"{"type":"task_ack","task_id":"t","status":"complete"}"#,
            Incoming::TaskAck { task_id: "t".into(), status: AckStatus::Complete },
        ),
        (
            r#"{"type":"task_continue","task_id":"t","generation":7}"#,
            Incoming::TaskContinue { task_id: "t".into(), generation: Some(7) },
        ),
        (r#"{"type":"task_reassign","task_id":"t"}"#, Incoming::TaskReassign { task_id: "t".into() }),
        (
            r#"{"type":"task_cancelled","task_id":"t","timestamp":1}"#,
            Incoming::TaskCancelled { task_id: "t".into() },
        ),
        (
            r#"{"type":"restart_sidecar","reason":"update"}"#,
            Incoming::RestartSidecar { reason: "update".into() },
        ),
        (
            r#"{"type":"rate_limited","retry_after_ms":250,"tier":"x"}"#,
            Incoming::RateLimited { retry_after_ms: 250, tier: Some("x".into()) },
        ),
        (
            r#"{"type":"rate_limit_warning","tier":"normal","remaining":11,"capacity":60}"#,
            Incoming::RateLimitWarning {
                tier: Some("normal".into()),
                remaining: Some(11),
                capacity: Some(60),
            },
        ),
        (r#"{"type":"agent_joined","agent_id":"b"}"#, Incoming::Ignored { kind: "agent_joined".into() }),
        (
            r#"{"type":"task_ack","status":"complete"}"#,
            Incoming::Ignored { kind: "task_ack (no task_id)".into() },
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(parse(text).unwrap(), expected, "{text}");
    }
}

#[test]
fn task_assign_is_parsed_leniently() {
    let Incoming::TaskAssign(assign) = parse(
        r#"{"type":"task_assign","task_id":"task-00","description":"d","metadata":{"k":1},"generation":3,"assigned_at":9}"#,
    )
    .unwrap() else {
        panic!("not an assign")
    };
    assert_eq!(assign.task_id.as_deref(), Some("task-00"));
    assert_eq!(assign.generation, Ok(3));
    assert_eq!(assign.metadata, json!({"k":1}));
    let Incoming::TaskAssign(assign) = parse(r#"{"type":"task_assign","task_id":5}"#).unwrap() else {
        panic!("not an assign")
    };
    assert_eq!(assign.task_id, None);
    assert_eq!(assign.metadata, json!({}));
}

#[test]
fn malformed_frames_are_errors_not_panics() {
    assert!(matches!(parse("nope"), Err(ParseError::NotJson(_))));
    assert_eq!(parse("[1]"), Err(ParseError::NotAnObject));
    assert_eq!(parse(r#"{"type":5}"#), Err(ParseError::NoType));
}

#[test]
fn error_kinds() {
    assert_eq!(ErrorKind::of("token_agent_mismatch"), ErrorKind::Auth);
    assert_eq!(
        ErrorKind::of("task_complete_failed: stale_generation"),
        ErrorKind::CompleteFailed("stale_generation".into())
    );
    assert_eq!(ErrorKind::of("task_fail_failed: not_found"), ErrorKind::FailFailed("not_found".into()));
    assert_eq!(ErrorKind::of("unknown_message_type"), ErrorKind::UnknownMessageType);
    assert_eq!(ErrorKind::of("whatever"), ErrorKind::Other);
    assert!(is_final_refusal("invalid_state"));
    assert!(!is_final_refusal("timeout"));
}
