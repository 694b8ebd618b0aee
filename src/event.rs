//! What the worker threads send the event loop: one enum, one variant per
//! source. The loop hands each to the core as `state::Input::Event`.

use crate::hub::HubEvent;
use crate::wake::{WakeOutcome, WakeStarted};
use crate::watcher::ResultsEvent;

#[derive(Debug)]
pub enum Event {
    /// From a hub socket thread.
    Hub(HubEvent),
    /// From the wake executor: an attempt's command is running.
    WakeStarted(WakeStarted),
    /// From the wake executor.
    Wake(WakeOutcome),
    /// From the results-directory watcher (a hint: rescan).
    Results(ResultsEvent),
    /// Ctrl-C, SIGTERM, or a test harness.
    Shutdown,
    /// The hub's `restart_sidecar` with `update_url`: the new binary is in
    /// place (src/selfupdate); exit for the supervisor to start it.
    UpdateInstalled { version: String },
}
