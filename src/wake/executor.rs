//! The executor thread: runs one wake attempt at a time and reports exactly
//! one [`WakeOutcome`] per [`WakeHandle::run`]. It never retries, queues or
//! schedules; the event loop decides all of that and never overlaps attempts.
//!
//! The wake timeout kills the attempt's whole process tree while its agent
//! has not confirmed; a cancel ends it gracefully (SIGTERM, Windows:
//! Ctrl-Break, then the kill after `cancel_grace_ms`); dropping the handle
//! (the sidecar stops) ends a launcher that has not confirmed and leaves an
//! agent at work (run mode, or a confirmed synchronous script) running (see
//! the platform modules). A wake command that exits 0 is never killed, nor
//! is anything it left running: wake commands commonly start the agent in
//! the background and exit.

use std::io::{self, PipeWriter};
use std::process::Child;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{at, bounded, never, select, Receiver, Sender};

use self::ending::{conclude_run, end_gracefully, exit_status, file_tail, kill_and_reap, mark_started};
use self::start::{open_gate, start_child, Running};
use super::{run, sys, WakeOutcome, WakeRequest, WakeStarted, WakeStatus};

/// How long to wait for a killed child to be reported as exited before giving
/// up on it. A kill is not instant only for a process stuck in the kernel
/// (e.g. on a dead network file system); we report the outcome anyway.
const KILL_FAILSAFE: Duration = Duration::from_secs(5);

/// The executor thread and its inbox. Every [`run`](WakeHandle::run) gets
/// exactly one outcome through the callback given to
/// [`spawn`](WakeHandle::spawn), on the executor thread, even when the
/// attempt is cancelled or the handle is dropped.
pub struct WakeHandle {
    // Drop order matters (as in rust-analyzer's FlycheckHandle): the sender
    // goes first so the executor sees its inbox disconnect, kills any
    // running attempt and returns; only then can the join finish. `Drop`
    // does this explicitly.
    sender: Sender<WakeCommand>,
    thread: Option<JoinHandle<()>>,
}

impl WakeHandle {
    /// Starts the executor thread ("wake-executor"). `on_outcome` runs on it
    /// and should only forward the outcome (e.g. `let _ = tx.send(..)`).
    pub fn spawn(on_outcome: Box<dyn Fn(WakeOutcome) + Send>) -> io::Result<WakeHandle> {
        WakeHandle::spawn_with_started(Box::new(|_| {}), on_outcome)
    }

    /// Like [`spawn`](WakeHandle::spawn), and `on_started` gets a
    /// [`WakeStarted`] as soon as an attempt's command is running (before
    /// its outcome, on the same thread), for the core to persist.
    pub fn spawn_with_started(
        on_started: Box<dyn Fn(WakeStarted) + Send>,
        on_outcome: Box<dyn Fn(WakeOutcome) + Send>,
    ) -> io::Result<WakeHandle> {
        WakeHandle::start(on_started, on_outcome, false)
    }

    /// Like [`spawn_with_started`](WakeHandle::spawn_with_started), and each
    /// command, once started, waits to be [released](WakeHandle::release)
    /// before it runs anything, and its exit status lands in its exit file
    /// even if the sidecar is gone by then (a gate around it: `sh` on Unix,
    /// `cmd` on Windows). The caller records the
    /// [`WakeStarted`] first: a wake command never runs unrecorded, even if
    /// the sidecar is killed right after the spawn.
    pub fn spawn_gated(
        on_started: Box<dyn Fn(WakeStarted) + Send>,
        on_outcome: Box<dyn Fn(WakeOutcome) + Send>,
    ) -> io::Result<WakeHandle> {
        WakeHandle::start(on_started, on_outcome, true)
    }

    fn start(
        on_started: Box<dyn Fn(WakeStarted) + Send>,
        on_outcome: Box<dyn Fn(WakeOutcome) + Send>,
        gated: bool,
    ) -> io::Result<WakeHandle> {
        let (sender, receiver) = crossbeam_channel::unbounded();
        let thread = thread::Builder::new()
            .name("wake-executor".to_string())
            .spawn(move || Executor { commands: receiver, on_started, on_outcome, gated }.run())?;
        Ok(WakeHandle { sender, thread: Some(thread) })
    }

    /// Starts one attempt. The caller never overlaps attempts; a request
    /// that arrives while another attempt runs is not queued: it is reported
    /// at once as [`WakeStatus::SpawnFailed`] and the running one goes on.
    pub fn run(&self, request: WakeRequest) {
        if self.sender.send(WakeCommand::Run(Box::new(request))).is_err() {
            // Only possible if the executor panicked; Drop re-raises that.
            log::error!("wake executor is gone; wake request dropped");
        }
    }

    /// Lets attempt `attempt` of `task_id` run its command (handles made by
    /// [`spawn_gated`](WakeHandle::spawn_gated)). Nothing happens if that
    /// attempt is no longer running or was never gated.
    pub fn release(&self, task_id: &str, attempt: u32) {
        if self.sender.send(WakeCommand::Release(task_id.to_string(), attempt)).is_err() {
            log::error!("wake executor is gone; release of {task_id} dropped");
        }
    }

    /// Kills the running attempt for `task_id` with its whole process tree
    /// and reports it as [`WakeStatus::Cancelled`]. If the attempt has
    /// already exited, its real outcome is reported and nothing is killed;
    /// if there is no attempt for the task, nothing happens.
    pub fn cancel(&self, task_id: &str) {
        if self.sender.send(WakeCommand::Cancel(task_id.to_string())).is_err() {
            log::error!("wake executor is gone; cancel of {task_id} dropped");
        }
    }
}

impl Drop for WakeHandle {
    /// Kills a running attempt's tree (reported as `Cancelled`) and joins the
    /// executor thread.
    fn drop(&mut self) {
        // Replace our sender with one whose receiver is already gone: this
        // drops the real sender, and the executor's inbox disconnects.
        let (disconnected, _) = bounded(0);
        drop(std::mem::replace(&mut self.sender, disconnected));
        if let Some(thread) = self.thread.take() {
            if let Err(panic) = thread.join() {
                // Re-raise the worker's panic, unless we
                // are already unwinding, where a second panic would abort.
                if !thread::panicking() {
                    std::panic::resume_unwind(panic);
                }
                log::error!("wake executor thread panicked");
            }
        }
    }
}

enum WakeCommand {
    Run(Box<WakeRequest>),
    Cancel(String),
    Release(String, u32),
}

/// The executor thread's state: its inbox and the callbacks.
struct Executor {
    commands: Receiver<WakeCommand>,
    on_started: Box<dyn Fn(WakeStarted) + Send>,
    on_outcome: Box<dyn Fn(WakeOutcome) + Send>,
    /// Commands wait for [`WakeHandle::release`] before they run.
    gated: bool,
}

/// Why an attempt stops waiting for its child.
enum Stop {
    Exited(ChildExited),
    Kill(WakeStatus),
    /// A cancel: SIGTERM first, kill after the grace.
    Terminate,
    /// The handle was dropped while a run-mode agent ran: leave it running.
    Leave,
}

/// Sent by the waiter thread once the child has exited. On Unix the child is
/// not reaped yet: its pid, and so its process group id, stay reserved until
/// the executor reaps it, so a `killpg` never hits a recycled group.
/// The result is the exit code, `None` when a signal ended the child.
type ChildExited = (Child, io::Result<Option<i32>>);

impl Executor {
    fn run(self) {
        // Ends when the inbox disconnects (the handle was dropped); a running
        // attempt has then already been killed by `wait_for_stop`.
        while let Ok(command) = self.commands.recv() {
            match command {
                WakeCommand::Run(request) => {
                    let outcome = self.run_attempt(*request);
                    (self.on_outcome)(outcome);
                }
                WakeCommand::Cancel(task_id) => {
                    log::debug!("cancel for task {task_id}: no wake attempt running");
                }
                WakeCommand::Release(task_id, attempt) => {
                    log::debug!("release of task {task_id} attempt {attempt}: no wake attempt running");
                }
            }
        }
    }

    fn run_attempt(&self, request: WakeRequest) -> WakeOutcome {
        let started = Instant::now();
        log::debug!("wake attempt {} for task {}: starting", request.attempt, request.task_id);
        let running = match start_child(&request, self.gated) {
            Ok(running) => running,
            Err(text) => return finished(&request, WakeStatus::SpawnFailed(text), started),
        };
        let Running { pid, tree, identity, exit_rx, mut gate } = running;
        if gate.is_none() {
            // Not gated: it runs already.
            mark_started(&request);
        }
        (self.on_started)(WakeStarted {
            task_id: request.task_id.clone(),
            attempt: request.attempt,
            identity,
        });
        // Run mode: the process start is the confirmation, nothing times it
        // out but the task's own timeout (a cancel).
        crate::failpoint::panic_at("wake_running");
        let deadline = match started.checked_add(request.timeout) {
            Some(deadline) if request.mode.is_launch() => at(deadline),
            _ => never(),
        };
        let stop = self.wait_for_stop(&request, &tree, &exit_rx, deadline, &mut gate);
        // A kill decided at the same instant as the child exited must not
        // kill the group if the wake succeeded: then it holds the agent.
        let mut stop_pending = false;
        let stop = match stop {
            Stop::Kill(_) | Stop::Terminate => match exit_rx.try_recv() {
                Ok(exited) => {
                    stop_pending = true;
                    Stop::Exited(exited)
                }
                Err(_) => stop,
            },
            other => other,
        };
        let status = match stop {
            Stop::Exited((mut child, wait_result)) => {
                // A command ended by a signal (a supervisor signalling the
                // whole tree: `pm2 stop`), or one that failed while we were
                // ending it, leaves nothing we want: what it put in the
                // background (with SIGINT ignored, as non-interactive shells
                // start them) goes with it. Killed before the reap, while the
                // group id is still ours. Whatever a command that exited 0
                // (or failed on its own) left running goes on: the agent.
                let signalled = matches!(wait_result, Ok(None));
                let failed = !matches!(wait_result, Ok(Some(0)));
                if signalled || (stop_pending && failed) {
                    log::debug!(
                        "wake command for task {} ended by a signal or while being stopped: ending its group",
                        request.task_id
                    );
                    kill_tree(pid, &tree);
                } else {
                    tree.release();
                }
                exit_status(&request, &mut child, wait_result.map(drop))
            }
            Stop::Kill(status) => {
                kill_and_reap(&request, pid, &tree, &exit_rx);
                status
            }
            Stop::Terminate => {
                end_gracefully(&request, pid, &tree, &exit_rx);
                WakeStatus::Cancelled
            }
            Stop::Leave => {
                log::info!(
                    "leaving the agent of task {} (pid {pid}) running; the next start finds it",
                    request.task_id
                );
                // The waiter thread keeps the child and reaps it if it ends
                // before we exit; otherwise init does.
                WakeStatus::LeftRunning
            }
        };
        let stdout_tail = file_tail(&run::stdout_file(&request.results_dir, &request.task_id));
        let stderr_tail = file_tail(&run::stderr_file(&request.results_dir, &request.task_id));
        conclude_run(&request, &status);
        let outcome = WakeOutcome {
            task_id: request.task_id,
            attempt: request.attempt,
            status,
            stdout_tail,
            stderr_tail,
            elapsed: started.elapsed(),
        };
        log::debug!(
            "wake attempt {} for task {}: {:?} after {:?}",
            outcome.attempt,
            outcome.task_id,
            outcome.status,
            outcome.elapsed
        );
        outcome
    }

    /// Waits for the child to exit, the deadline, or a command that stops
    /// the attempt, collecting output meanwhile. No polling: one `select!`.
    fn wait_for_stop(
        &self,
        request: &WakeRequest,
        tree: &sys::ProcessTree,
        exit_rx: &Receiver<ChildExited>,
        mut deadline: Receiver<Instant>,
        gate: &mut Option<PipeWriter>,
    ) -> Stop {
        let started_file = crate::watcher::task_file_path(
            &request.results_dir,
            &request.task_id,
            crate::watcher::FileKind::Started,
        );
        loop {
            select! {
                recv(exit_rx) -> exited => return match exited {
                    Ok(exited) => Stop::Exited(exited),
                    // Only if the waiter thread panicked.
                    Err(_) => Stop::Kill(WakeStatus::SpawnFailed(
                        "the wake waiter thread died".to_string(),
                    )),
                },
                recv(self.commands) -> command => match command {
                    Ok(WakeCommand::Run(overlapping)) => {
                        // The event loop allows one attempt at a time, so
                        // this is a bug there; refuse rather than queue.
                        log::error!(
                            "wake for task {} requested while task {} is still running; refused",
                            overlapping.task_id,
                            request.task_id
                        );
                        let text = format!("a wake attempt for task {} is still running", request.task_id);
                        (self.on_outcome)(not_started(&overlapping, WakeStatus::SpawnFailed(text)));
                    }
                    Ok(WakeCommand::Cancel(task_id)) => {
                        if task_id == request.task_id {
                            return Stop::Terminate;
                        }
                        log::debug!(
                            "cancel for task {task_id} does not stop the running task {}",
                            request.task_id
                        );
                    }
                    Ok(WakeCommand::Release(task_id, attempt)) => {
                        if task_id == request.task_id && attempt == request.attempt {
                            open_gate(gate, request);
                            // Recorded: the command may now outlive us (a
                            // run-mode agent, or a synchronous script at work
                            // when we stop; the next start ends a launcher).
                            tree.outlive_sidecar();
                        }
                    }
                    // The sidecar stops: a launcher is ended; an agent at
                    // work (run mode, or a launch-mode command whose agent
                    // confirmed: a synchronous script) is left to finish,
                    // for the next start to find.
                    Err(_) if request.mode.is_launch() && !crate::watcher::is_regular_file(&started_file) => {
                        return Stop::Kill(WakeStatus::Cancelled)
                    }
                    Err(_) => return Stop::Leave,
                },
                recv(deadline) -> _ => {
                    if !crate::watcher::is_regular_file(&started_file) {
                        return Stop::Kill(WakeStatus::TimedOut);
                    }
                    // Confirmed: the command is the agent at work. It ends
                    // by itself, at the task's timeout or by a cancel.
                    log::info!(
                        "the wake command of task {} is still running after confirming: the agent at work; wake_timeout_ms no longer applies",
                        request.task_id
                    );
                    deadline = never();
                }
            }
        }
    }
}

pub(super) fn kill_tree(pid: u32, tree: &sys::ProcessTree) {
    if let Err(error) = tree.kill() {
        log::warn!("cannot end the process tree of wake command pid {pid}: {error}");
    }
}

fn not_started(request: &WakeRequest, status: WakeStatus) -> WakeOutcome {
    finished(request, status, Instant::now())
}

fn finished(request: &WakeRequest, status: WakeStatus, started: Instant) -> WakeOutcome {
    log::debug!("wake attempt {} for task {}: {status:?}", request.attempt, request.task_id);
    WakeOutcome {
        task_id: request.task_id.clone(),
        attempt: request.attempt,
        status,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        elapsed: started.elapsed(),
    }
}

mod ending;
mod start;

#[cfg(all(test, unix))]
mod tests;
#[cfg(all(test, windows))]
mod windows_tests;
