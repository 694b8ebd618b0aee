//! The hub's `restart_sidecar` with `update_url`: download, verify and swap
//! on a thread while the loop goes on (connected, working); once the new
//! binary is in place, the loop exits through [`Event::UpdateInstalled`] and
//! the supervisor starts the new binary. A failure is logged and leaves
//! everything running: the hub's next `restart_sidecar` tries again, nothing
//! else does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

use super::{fetch, update, Outcome, Settings};
use crate::config::Config;
use crate::event::Event;

/// Starts the update thread unless one is running (`updating`).
pub fn start_for_restart(config: &Config, events: &Sender<Event>, updating: &Arc<AtomicBool>) {
    if updating.swap(true, Ordering::SeqCst) {
        log::info!("self-update: one is already running; this restart_sidecar adds nothing");
        return;
    }
    let settings = match Settings::from_config(config) {
        Ok(Some(settings)) => settings,
        Ok(None) => return updating.store(false, Ordering::SeqCst),
        Err(e) => {
            log::error!("self-update failed, staying on this binary: {e}");
            return updating.store(false, Ordering::SeqCst);
        }
    };
    log::info!("self-update: checking {}", fetch::redact(&settings.url));
    let events = events.clone();
    let running = Arc::clone(updating);
    let spawned = std::thread::Builder::new().name("self-update".into()).spawn(move || {
        let current = settings.current_version.clone();
        match update(&settings, false, false) {
            Ok(Outcome::Installed { from, to }) => {
                log::info!(
                    "self-update: version {to} is in place (was {from}); exiting for the supervisor to start it"
                );
                let _ = events.send(Event::UpdateInstalled { version: to });
                return;
            }
            Ok(Outcome::UpToDate { version }) => log::warn!(
                "self-update: the release ({version}) is not newer than this binary ({current}); staying on it, not restarting"
            ),
            Ok(Outcome::Available { .. }) => {}
            Err(e) => log::error!(
                "self-update failed, staying on version {current}, connected (not retried until the hub asks again): {e}"
            ),
        }
        running.store(false, Ordering::SeqCst);
    });
    if let Err(e) = spawned {
        log::error!("self-update: cannot start its thread: {e}");
        updating.store(false, Ordering::SeqCst);
    }
}
