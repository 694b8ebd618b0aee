//! The hub's frames: `protocol::parse` on any text. No panic; a frame that
//! parses as a task_assign keeps its description's text as sent.
#![no_main]

use agentcom_sidecar::protocol::{self, Incoming};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The socket thread hands the loop UTF-8 text frames only.
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(Incoming::TaskAssign(assign)) = protocol::parse(text) {
        let value: serde_json::Value = serde_json::from_str(text).expect("parse accepted it as JSON");
        if let Some(description) = value.get("description").and_then(|d| d.as_str()) {
            assert_eq!(assign.description, description);
        }
        if let Some(task_id) = &assign.task_id {
            assert_eq!(value.get("task_id").and_then(|t| t.as_str()), Some(task_id.as_str()));
        }
    }
});
