//! The queue.json loader: `queue_store::parse` on any bytes. No panic; what
//! loads saves and loads back to the same value (a round trip through this
//! sidecar never loses or changes a field).
#![no_main]

use agentcom_sidecar::queue_store;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(queue) = queue_store::parse(data) {
        let saved = serde_json::to_vec_pretty(&queue).expect("a loaded queue serializes");
        let again = queue_store::parse(&saved).expect("what we save loads");
        assert_eq!(again, queue, "round trip changed the queue: {}", String::from_utf8_lossy(&saved));
    }
});
