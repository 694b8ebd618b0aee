//! The files an agent writes, as the core reads them (docs/protocol.md
//! section 8.5): the result object as the report the hub gets, and the
//! progress file.

use serde_json::Value;

use crate::state::Report;

/// A result file's object as the report the hub gets (docs/protocol.md section 8.5):
/// `status: success` is a completion carrying the whole object; anything else
/// is a failure with its `reason` or `error`.
pub(crate) fn report_from_result(result: Value) -> Report {
    if result.get("status").and_then(Value::as_str) == Some("success") {
        return Report::Complete { result };
    }
    let text = |key: &str| result.get(key).and_then(Value::as_str).map(str::to_owned);
    let reason = text("reason").or_else(|| text("error")).unwrap_or_else(|| match result.get("status") {
        Some(status) => format!("agent reported status {status}"),
        None => "agent result has no status".into(),
    });
    Report::Failed { reason }
}

/// `{"progress": 0..=100, "message": "..."}`; the message is cut to 1 KiB.
pub(crate) fn parse_progress(value: &Value) -> Option<(u64, Option<String>)> {
    let progress = value.get("progress")?.as_f64()?;
    if !(0.0..=100.0).contains(&progress) {
        return None;
    }
    let message = value.get("message").and_then(Value::as_str).map(|m| {
        let mut end = m.len().min(1024);
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        m[..end].to_owned()
    });
    Some((progress.round() as u64, message))
}
