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
//! reports the death on the loop's death channel. The wake executor can also
//! hang without ending: [`WakeDue`] says when an outcome it owes is overdue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::state::WakeMode;

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

/// How long the executor may take past one of its own bounds (the wake
/// timeout, a cancel's grace) before it is judged hung: twice the bound,
/// plus up to 5 s for a kill the kernel is slow to carry out.
fn overdue_after(bound: Duration) -> Duration {
    (bound + Duration::from_secs(5)) * 2
}

/// The wake attempt the executor owes an outcome for, and by when: a hung
/// executor is a dead one. Only the executor's own bounds count: a
/// launch-mode attempt's wake timeout (until its agent confirms) and a
/// cancel's grace. A run-mode agent, or a launch-mode command still running
/// after its agent confirmed (a synchronous script), is the agent at work:
/// it may run for hours, until it ends, the task's timeout or a cancel,
/// whose grace bounds the executor again.
#[derive(Debug, Default)]
pub(super) struct WakeDue {
    running: Option<Running>,
    due: Option<(Instant, String)>,
}

#[derive(Debug)]
struct Running {
    task_id: String,
    attempt: u32,
    mode: WakeMode,
}

impl WakeDue {
    /// The shell asked the executor for attempt `attempt` of `task_id`.
    pub(super) fn asked(
        &mut self,
        task_id: &str,
        attempt: u32,
        mode: WakeMode,
        wake_timeout: Duration,
        now: Instant,
    ) {
        let overdue = overdue_after(wake_timeout);
        let what = format!("attempt {attempt} of task {task_id} within {} ms", overdue.as_millis());
        self.running = Some(Running { task_id: task_id.to_owned(), attempt, mode });
        self.due = Some((now + overdue, what));
    }

    /// The executor reports the attempt's command running: a run-mode
    /// agent is at work from here on, unbounded.
    pub(super) fn command_running(&mut self) {
        if self.running.as_ref().is_some_and(|r| !r.mode.is_launch()) {
            self.due = None;
        }
    }

    /// The shell asked the executor to cancel `task_id`'s attempt: if it
    /// runs one, its outcome is owed within the cancel's grace.
    pub(super) fn cancelled(&mut self, task_id: &str, grace: Duration, now: Instant) {
        if let Some(running) = self.running.as_ref().filter(|r| r.task_id == task_id) {
            let overdue = overdue_after(grace);
            let what = format!(
                "the cancel of attempt {} of task {task_id} within {} ms",
                running.attempt,
                overdue.as_millis()
            );
            self.due = Some((now + overdue, what));
        }
    }

    /// The executor reported the attempt's outcome.
    pub(super) fn ended(&mut self) {
        *self = WakeDue::default();
    }

    /// When the outcome is overdue, if it is owed by a time.
    pub(super) fn at(&self) -> Option<Instant> {
        self.due.as_ref().map(|(at, _)| *at)
    }

    /// The time [`at`](WakeDue::at) has come. A launch-mode command whose
    /// agent has confirmed (`confirmed(task_id)`: its `.started` is there,
    /// what the executor checks at its wake timeout) is the agent at work:
    /// no longer bounded, `None`. Otherwise the executor is hung: what it
    /// owed.
    pub(super) fn overdue(&mut self, confirmed: impl FnOnce(&str) -> bool) -> Option<String> {
        let (_, what) = self.due.take()?;
        match &self.running {
            Some(running) if running.mode.is_launch() && confirmed(&running.task_id) => None,
            _ => Some(what),
        }
    }
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

    const WAKE_TIMEOUT: Duration = Duration::from_millis(1_000);
    const GRACE: Duration = Duration::from_millis(500);

    #[test]
    fn a_launch_attempt_is_owed_within_twice_its_timeout_and_a_kill_unless_its_agent_confirmed() {
        let now = Instant::now();
        let mut due = WakeDue::default();
        assert_eq!(due.at(), None);
        due.asked("t1", 2, WakeMode::Launch, WAKE_TIMEOUT, now);
        due.command_running();
        assert_eq!(due.at(), Some(now + Duration::from_secs(12)), "launch mode stays bounded");
        assert_eq!(
            due.overdue(|_| false).as_deref(),
            Some("attempt 2 of task t1 within 12000 ms"),
            "no .started: the executor is hung"
        );

        due.asked("t1", 3, WakeMode::Launch, WAKE_TIMEOUT, now);
        let mut asked_for = None;
        assert_eq!(
            due.overdue(|task_id| {
                asked_for = Some(task_id.to_owned());
                true
            }),
            None,
            "a confirmed command is the agent at work"
        );
        assert_eq!(asked_for.as_deref(), Some("t1"));
        assert_eq!(due.at(), None, "and bounded no more");
    }

    #[test]
    fn a_run_mode_agent_is_unbounded_once_running_until_a_cancel_bounds_it_by_the_grace() {
        let now = Instant::now();
        let mut due = WakeDue::default();
        due.asked("t1", 1, WakeMode::Run, WAKE_TIMEOUT, now);
        assert!(due.at().is_some(), "its spawn is bounded");
        due.command_running();
        assert_eq!(due.at(), None, "the agent at work");
        due.cancelled("other", GRACE, now);
        assert_eq!(due.at(), None, "a cancel of another task bounds nothing");
        due.cancelled("t1", GRACE, now);
        assert_eq!(due.at(), Some(now + Duration::from_secs(11)));
        assert_eq!(
            due.overdue(|_| true).as_deref(),
            Some("the cancel of attempt 1 of task t1 within 11000 ms"),
            "a run-mode agent's .started does not excuse a hung cancel"
        );
        due.asked("t2", 1, WakeMode::Run, WAKE_TIMEOUT, now);
        due.ended();
        assert_eq!(due.at(), None);
        due.cancelled("t2", GRACE, now);
        assert_eq!(due.at(), None, "nothing runs: nothing owed");
    }
}
