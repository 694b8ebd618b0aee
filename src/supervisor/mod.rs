//! What the loop tells whatever supervises the process: systemd through its
//! notify socket ([`systemd`]), or the Windows service manager (the
//! `service` module, Windows only). The shell calls these at fixed moments:
//!
//! - [`Supervisor::ready`] once, when the local set-up is done (config
//!   loaded, log opened, queue.json read, a wake left over from a previous
//!   run ended, the results watcher and the wake executor running) and the
//!   loop is about to start. Not at the first hub connection: the hub may be
//!   down for hours, and the sidecar is doing its job while it retries
//!   (keeping the queued reports for the next connection). A supervisor that
//!   waited for the hub would time the start out and restart the sidecar in a
//!   loop, losing the backoff.
//! - [`Supervisor::status`] when the one-line summary of what the loop is
//!   doing changes ([`status_line`]).
//! - [`Supervisor::beat`] from the loop itself, whenever
//!   [`Supervisor::next_beat`] is due: the loop's `next_event` wakes for it.
//!   A loop that hangs stops beating, which is the point.
//! - [`Supervisor::stopping`] when the shutdown starts (asked for, or the
//!   hub's `restart_sidecar`).

use std::time::Instant;

pub mod systemd;

/// The process's supervisor, as the loop sees it. Every method is cheap and
/// never blocks; each does nothing unless a supervisor overrides it.
pub trait Supervisor: Send {
    fn ready(&mut self) {}
    fn status(&mut self, _line: &str) {}
    fn stopping(&mut self) {}
    /// When [`beat`](Supervisor::beat) is next due, if ever.
    fn next_beat(&self) -> Option<Instant> {
        None
    }
    /// Tells the supervisor the loop is alive, if a beat is due at `now`.
    /// Returns whether it did.
    fn beat(&mut self, _now: Instant) -> bool {
        false
    }
}

/// No supervisor to tell anything (`NOTIFY_SOCKET` unset, tests).
pub struct Unsupervised;

impl Supervisor for Unsupervised {}

/// The supervisor the environment names: systemd when `NOTIFY_SOCKET` is
/// set (Unix), nothing otherwise.
pub fn from_env() -> Box<dyn Supervisor> {
    match systemd::Notifier::from_env() {
        Some(notifier) => Box::new(notifier),
        None => Box::new(Unsupervised),
    }
}

/// What the loop is doing, in one line (systemd's `STATUS=`, shown by
/// `systemctl status`). `hub_ready`: identified on a live connection.
pub fn status_line(stopping: bool, hub_ready: bool, held_task: Option<&str>) -> String {
    match (stopping, hub_ready, held_task) {
        (true, _, _) => "stopping: saving the queue and closing the hub connection".to_owned(),
        (false, false, None) => "connecting to the hub".to_owned(),
        (false, false, Some(task)) => format!("holding task {task}; connecting to the hub"),
        (false, true, None) => "connected to the hub; idle".to_owned(),
        (false, true, Some(task)) => format!("connected to the hub; holding task {task}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_name_the_connection_and_the_task() {
        assert_eq!(status_line(false, false, None), "connecting to the hub");
        assert_eq!(status_line(false, true, None), "connected to the hub; idle");
        assert_eq!(status_line(false, true, Some("t-1")), "connected to the hub; holding task t-1");
        assert_eq!(status_line(false, false, Some("t-1")), "holding task t-1; connecting to the hub");
        assert!(status_line(true, true, Some("t-1")).starts_with("stopping"));
    }
}
