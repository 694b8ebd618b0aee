//! The result and progress files: `watcher::parse_json_object` on any bytes
//! (what `read_json_file` does once it has read a regular file within the
//! size cap). No panic; `Parsed` is always an object; `Unparseable` reports
//! the length it saw.
#![no_main]

use agentcom_sidecar::watcher::{self, ReadResult};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match watcher::parse_json_object(data) {
        ReadResult::Parsed(value) => assert!(value.is_object()),
        ReadResult::Unparseable { len, .. } => assert_eq!(len, data.len() as u64),
        other => panic!("parse_json_object returned {other:?}"),
    }
});
