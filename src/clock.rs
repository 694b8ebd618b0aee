//! The wall clock, in the one form the sidecar uses it: Unix milliseconds.
//! Durations and deadlines use `Instant`; this is only for what leaves the
//! process (queue.json, the lifecycle log, file names).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch. A clock before 1970 is a broken clock:
/// 0 beats refusing to write a record.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
