//! How an attempt ends beyond a plain exit: killed, ended gracefully (a
//! cancel), and what a run-mode agent's end leaves on disk.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::super::capture::{tail_text, TAIL_LIMIT_BYTES};
use super::super::render::absolute;
use std::io;
use std::process::Child;

use super::super::{run, sys, WakeRequest, WakeStatus};
use super::{kill_tree, ChildExited, KILL_FAILSAFE};

/// Kills the child's whole tree, then reaps the child once the waiter sees
/// it exit. Gives up after [`KILL_FAILSAFE`] so the outcome is never held
/// hostage by a process stuck in the kernel.
pub(super) fn kill_and_reap(
    request: &WakeRequest,
    pid: u32,
    tree: &sys::ProcessTree,
    exit_rx: &Receiver<ChildExited>,
) {
    kill_tree(pid, tree);
    match exit_rx.recv_timeout(KILL_FAILSAFE) {
        // Reap it; its exit status is our kill, nothing to report.
        Ok((mut child, _)) => drop(child.wait()),
        // Only if the waiter thread panicked.
        Err(RecvTimeoutError::Disconnected) => {}
        Err(RecvTimeoutError::Timeout) => log::error!(
            "wake command for task {} (pid {pid}) did not exit within {KILL_FAILSAFE:?} of being ended; reporting anyway",
            request.task_id
        ),
    }
}

/// Run mode: the agent runs from here on, which confirms the task. The
/// sidecar writes its `.started`, so that a later start or a hand-back
/// sees confirmed work (and never starts it again) as for a launched agent.
pub(super) fn mark_started(request: &WakeRequest) {
    if request.mode.is_launch() {
        return;
    }
    let path = crate::watcher::task_file_path(
        &request.results_dir,
        &request.task_id,
        crate::watcher::FileKind::Started,
    );
    if let Err(error) = std::fs::write(&path, b"") {
        log::warn!("cannot write {}: {error}", path.display());
    }
}

/// How a graceful end is asked for, for the log.
const STOP_REQUEST: &str = if cfg!(windows) { "Ctrl-Break (or the cancel marker)" } else { "SIGTERM" };

/// A cancel: SIGTERM to the tree (Windows: Ctrl-Break to its process group,
/// or the job ended at once where that cannot be delivered), then, if
/// anything of it is left after the request's `cancel_grace`, the kill of
/// [`kill_and_reap`].
pub(super) fn end_gracefully(
    request: &WakeRequest,
    pid: u32,
    tree: &sys::ProcessTree,
    exit_rx: &Receiver<ChildExited>,
) {
    if let Err(error) = tree.terminate() {
        log::warn!("cannot signal the process tree of wake command pid {pid}: {error}");
    }
    let grace_end = Instant::now() + request.cancel_grace;
    match exit_rx.recv_deadline(grace_end) {
        Ok((mut child, _)) => {
            // The command's own shell may go at once while the agent it runs
            // still finishes: reap it, then give the rest of the group what
            // is left of the grace. (With a member alive the group id cannot
            // be reused; once none is, `any_left` says so and nothing more is
            // signalled.)
            let _ = child.wait();
            while tree.any_left() && Instant::now() < grace_end {
                // Not ours to wait on: a short bounded poll.
                std::thread::sleep(Duration::from_millis(20));
            }
            if tree.any_left() {
                log::warn!(
                    "the agent of task {} (pid {pid}) did not end within {} ms of {STOP_REQUEST}; killing it",
                    request.task_id,
                    request.cancel_grace.as_millis()
                );
                kill_tree(pid, tree);
            }
        }
        // Only if the waiter thread panicked.
        Err(RecvTimeoutError::Disconnected) => {}
        Err(RecvTimeoutError::Timeout) => {
            log::warn!(
                "the agent of task {} (pid {pid}) did not end within {} ms of {STOP_REQUEST}; killing it",
                request.task_id,
                request.cancel_grace.as_millis()
            );
            kill_and_reap(request, pid, tree, exit_rx);
        }
    }
}

/// Records how the command ended (the gate script does this too on Unix)
/// and, in run mode, turns the end of the agent into its result file.
pub(super) fn conclude_run(request: &WakeRequest, status: &WakeStatus) {
    let exit = match status {
        WakeStatus::Success => run::RunExit::Code(0),
        WakeStatus::Failed { exit_code: Some(code) } => run::RunExit::Code(*code),
        WakeStatus::Failed { exit_code: None } => run::RunExit::Signal(None),
        _ => return,
    };
    let exit_file = run::exit_file(&request.results_dir, &request.task_id);
    if run::read_exit_file(&exit_file).is_none() {
        if let Err(error) = run::write_exit_file(&exit_file, exit) {
            log::warn!("cannot write {}: {error}", exit_file.display());
        }
    }
    if request.mode.is_launch() {
        return;
    }
    // The gate script's record knows the signal's number.
    let exit = run::read_exit_file(&exit_file).unwrap_or(exit);
    match run::conclude(&request.results_dir, &request.task_id, exit, request.max_result_bytes) {
        Ok(run::Concluded::AgentResult) => {
            log::info!("the agent of task {} wrote its own result file", request.task_id)
        }
        Ok(run::Concluded::Written) => {}
        Err(error) => log::error!("cannot write the result file of task {}: {error}", request.task_id),
    }
}

/// The last [`TAIL_LIMIT_BYTES`] of an output file as text, for the
/// outcome (the log, the lifecycle record, `wake_result`).
pub(super) fn file_tail(path: &std::path::Path) -> String {
    match run::read_tail(path, TAIL_LIMIT_BYTES as u64) {
        Ok(bytes) => tail_text(&bytes, bytes.len() >= TAIL_LIMIT_BYTES),
        Err(_) => String::new(),
    }
}

pub(super) fn absolute_path(path: &std::path::Path) -> std::path::PathBuf {
    std::path::PathBuf::from(absolute(path))
}

/// Reaps an exited child and turns its exit status into a [`WakeStatus`].
pub(super) fn exit_status(
    request: &WakeRequest,
    child: &mut Child,
    wait_result: io::Result<()>,
) -> WakeStatus {
    if let Err(error) = wait_result {
        log::warn!("waiting for the wake command of task {} failed: {error}", request.task_id);
    }
    match child.wait() {
        Ok(status) if status.success() => WakeStatus::Success,
        Ok(status) => WakeStatus::Failed { exit_code: status.code() },
        Err(error) => {
            log::warn!(
                "cannot read the exit status of the wake command of task {}: {error}",
                request.task_id
            );
            WakeStatus::Failed { exit_code: None }
        }
    }
}
