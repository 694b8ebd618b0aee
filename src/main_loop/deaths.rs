//! Crash-only workers: a worker thread (a hub connection, the wake
//! executor, the results watcher) that ends other than in an orderly
//! shutdown ends the sidecar, with exit 1, so that its supervisor restarts
//! it (queue.json makes a restart safe). Without this a dead worker leaves a
//! process that looks healthy and relays nothing: a connection that never
//! reports, a wake that never ends.
//!
//! Each worker owns the callback through which it reports; the loop puts a
//! [`Watch`] in that callback. A worker that ends drops it: while
//! unwinding (a panic), or without having said it was done, the watch
//! reports the death on the loop's death channel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

/// Hands out watches and collects the deaths they report.
pub(super) struct Deaths {
    tx: Sender<String>,
    pub(super) rx: Receiver<String>,
    /// Set when the loop shuts down: workers ending then are expected.
    stopping: Arc<AtomicBool>,
}

impl Deaths {
    pub(super) fn new() -> Deaths {
        let (tx, rx) = crossbeam_channel::unbounded();
        Deaths { tx, rx, stopping: Arc::new(AtomicBool::new(false)) }
    }

    /// A watch for the worker named `worker` (its thread's name).
    pub(super) fn watch(&self, worker: impl Into<String>) -> Watch {
        Watch {
            worker: worker.into(),
            tx: self.tx.clone(),
            stopping: self.stopping.clone(),
            done: AtomicBool::new(false),
        }
    }

    /// From now on workers end because we asked them to.
    pub(super) fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

/// How long a wake attempt may go without its outcome before the executor
/// is judged hung: twice its own bound (the wake timeout, then up to 5 s for
/// a kill the kernel is slow to carry out). Derived from `wake_timeout_ms`.
pub(super) fn wake_overdue_after(wake_timeout: Duration) -> Duration {
    (wake_timeout + Duration::from_secs(5)) * 2
}

/// Lives in a worker's callback; reports the worker's death when dropped.
pub(super) struct Watch {
    worker: String,
    tx: Sender<String>,
    stopping: Arc<AtomicBool>,
    done: AtomicBool,
}

impl Watch {
    /// Does nothing: a callback calls it so that the watch lives in it.
    pub(super) fn keep(&self) {}

    /// The worker said its last word (a hub connection's `Disconnected`):
    /// its end from now on is orderly.
    pub(super) fn done(&self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let how = if std::thread::panicking() {
            "panicked"
        } else if self.done.load(Ordering::SeqCst) || self.stopping.load(Ordering::SeqCst) {
            return;
        } else {
            "ended unexpectedly"
        };
        let _ = self.tx.send(format!("worker thread {} {how}", self.worker));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_reports_a_panic_and_an_unexpected_end_but_not_an_orderly_one() {
        let deaths = Deaths::new();
        let watch = deaths.watch("w1");
        let _ = std::thread::spawn(move || {
            let _watch = watch;
            panic!("boom");
        })
        .join();
        assert_eq!(deaths.rx.try_recv().unwrap(), "worker thread w1 panicked");
        drop(deaths.watch("w2"));
        assert_eq!(deaths.rx.try_recv().unwrap(), "worker thread w2 ended unexpectedly");
        let watch = deaths.watch("w3");
        watch.done();
        drop(watch);
        deaths.stopping();
        drop(deaths.watch("w4"));
        assert!(deaths.rx.try_recv().is_err(), "done and stopping are orderly");
    }
}
