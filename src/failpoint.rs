//! Test hooks that panic a worker thread at a chosen moment, compiled only
//! with the `failpoints` feature (the test build's): with
//! `AGENTCOM_FAILPOINT=panic:<point>`, the thread that reaches `<point>`
//! panics; with `hang:<point>` it blocks for ever. The crash-only tests use
//! them to check that a dead or hung worker ends the sidecar
//! (tests/it/loud.rs). The points: `hub_connecting` (TCP is up,
//! the handshakes are not), `hub_connected` (the WebSocket is up, nothing
//! sent), `wake_running` (a wake command runs) and `watcher_event` (a change
//! in results_dir).

/// Panics if `AGENTCOM_FAILPOINT` is `panic:<point>`; never returns if it
/// is `hang:<point>`.
#[cfg(feature = "failpoints")]
pub(crate) fn panic_at(point: &str) {
    let set = std::env::var("AGENTCOM_FAILPOINT").ok();
    if set.as_deref().and_then(|f| f.strip_prefix("panic:")) == Some(point) {
        panic!("failpoint panic:{point} reached");
    }
    if set.as_deref().and_then(|f| f.strip_prefix("hang:")) == Some(point) {
        log::error!("failpoint hang:{point} reached: blocking this thread for ever");
        loop {
            std::thread::park();
        }
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn panic_at(_point: &str) {}
