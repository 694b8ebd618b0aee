//! The shell's side of the agent as it really runs: the wake command an
//! earlier run recorded in queue.json (ended, found exited, or, a run-mode
//! agent, found still at work), the cancel marker, and ending an agent that
//! no executor watches.

use std::time::Duration;

use serde_json::json;

use crate::config::Config;
use crate::lifecycle_log::{LifecycleEvent, LifecycleLog};
use crate::queue_store::{QueueFile, TaskStatus, WakeProcess};
use crate::state::Input;
use crate::wake::run::{self, RunExit};
use crate::wake::{self, Leftover, WakeMode};

/// What became of the wake command queue.json records from the last run,
/// before any new wake. Its exit file says how it ended: a launcher's exit
/// code is kept in the record for the core; a run-mode agent's end becomes
/// its result file. A run-mode agent still running is left alone (`true`:
/// the core watches it); a launcher still running is ended, as always.
pub(super) fn find_leftover(queue: &mut QueueFile, config: &Config, lifecycle: &mut LifecycleLog) -> bool {
    let working = queue.wake_process.as_ref().is_some_and(|p| task_working(queue, &p.task_id));
    let Some(process) = queue.wake_process.as_mut() else {
        return false;
    };
    let exit = run::read_exit_file(&run::exit_file(&config.results_dir, &process.task_id));
    let what = format!(
        "the wake command of task {} (attempt {}, pid {})",
        process.task_id, process.attempt, process.identity.pid
    );
    let found = match (process.mode, exit) {
        (mode, Some(exit)) => {
            log::info!("{what} ended while no sidecar ran: it {}", run::describe_exit(exit));
            process.exit_code = match exit {
                RunExit::Code(code) => Some(code),
                _ => None,
            };
            if mode == WakeMode::Run {
                conclude(config, &process.task_id, exit);
            } else if working {
                conclude_launch(config, &process.task_id, exit);
            }
            Found::Exited
        }
        (WakeMode::Run, None) if wake::leftover_running(&process.identity) => {
            log::info!("{what}, the agent, is still running from before: watching it, not starting it again");
            Found::Running
        }
        (WakeMode::Run, None) => {
            log::warn!("{what}, the agent, is gone and left no exit status");
            conclude(config, &process.task_id, RunExit::Unknown);
            Found::Gone
        }
        (WakeMode::Launch, None) if working && wake::leftover_running(&process.identity) => {
            log::info!(
                "{what}, a synchronous agent at work on its confirmed task, is still running: watching it"
            );
            wake::bound_leftover_output(
                &config.results_dir,
                &process.task_id,
                &process.identity,
                config.settings.results_poll,
            );
            Found::Running
        }
        (WakeMode::Launch, None) => {
            end_wake_leftover(process, lifecycle);
            return false;
        }
    };
    lifecycle.record(
        LifecycleEvent::WakeLeftover,
        json!({ "task_id": process.task_id, "attempt": process.attempt, "pid": process.identity.pid,
                "mode": process.mode.name(), "found": found.word(), "exit_code": process.exit_code }),
    );
    found == Found::Running
}

/// What [`find_leftover`] found of a recorded command it does not end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// Its exit file says how it ended.
    Exited,
    /// Still at work: watched.
    Running,
    /// Gone without an exit file.
    Gone,
}

impl Found {
    /// Its word in the lifecycle log (`found`).
    fn word(self) -> &'static str {
        match self {
            Found::Exited => "exited",
            Found::Running => "running",
            Found::Gone => "gone",
        }
    }
}

/// The run-mode agent left running by an earlier run: if it has ended, its
/// result file is written and the core told.
pub(super) fn check_agent(
    process: &WakeProcess,
    config: &Config,
    watch: Option<&wake::AgentWatch>,
) -> Option<Input> {
    let recorded = run::read_exit_file(&run::exit_file(&config.results_dir, &process.task_id));
    let exit = match recorded.or_else(|| watch.and_then(|w| w.exit_code()).map(RunExit::Code)) {
        Some(exit) => exit,
        None if wake::leftover_running(&process.identity) => return None,
        // Gone without a record (its group was killed).
        None => RunExit::Unknown,
    };
    log::info!("the agent of task {} has ended: it {}", process.task_id, run::describe_exit(exit));
    match process.mode {
        WakeMode::Run => conclude(config, &process.task_id, exit),
        WakeMode::Launch => conclude_launch(config, &process.task_id, exit),
    }
    Some(Input::AgentEnded { task_id: process.task_id.clone() })
}

/// Ends that agent gracefully, on a thread of its own (it may take
/// `cancel_grace_ms`).
pub(super) fn end_agent(process: WakeProcess, grace: Duration) {
    let spawned = std::thread::Builder::new().name("agent-stop".to_string()).spawn(move || {
        match wake::terminate_leftover(&process.identity, grace) {
            Leftover::Ended => log::info!("ended the agent of task {}", process.task_id),
            Leftover::Gone => log::debug!("the agent of task {} had already ended", process.task_id),
            other => log::warn!("cannot end the agent of task {}: {other:?}", process.task_id),
        }
    });
    if let Err(error) = spawned {
        log::error!("cannot start a thread to end an agent: {error}");
    }
}

/// `<task_id>.cancel` in the results directory: how a launch-mode agent,
/// which the sidecar did not start itself, learns that its task is over.
pub(super) fn mark_cancelled(config: &Config, task_id: &str, reason: &str) {
    let path = run::cancel_marker(&config.results_dir, task_id);
    if let Err(error) = crate::queue_store::write_atomic_unsynced(&path, reason.as_bytes(), ".cancel.") {
        log::warn!("cannot write {}: {error}", path.display());
    }
}

/// Whether queue.json holds `task_id` as `working` (its agent confirmed it).
fn task_working(queue: &QueueFile, task_id: &str) -> bool {
    let record = queue.active.as_ref().or(queue.recovering.as_ref());
    record.is_some_and(|t| t.task_id == task_id && t.report.is_none() && t.status == TaskStatus::Working)
}

fn conclude_launch(config: &Config, task_id: &str, exit: RunExit) {
    if let Err(error) = run::conclude_launch(&config.results_dir, task_id, exit) {
        log::error!("cannot write the result file of task {task_id}: {error}");
    }
}

fn conclude(config: &Config, task_id: &str, exit: RunExit) {
    if let Err(error) = run::conclude(&config.results_dir, task_id, exit, config.max_result_bytes) {
        log::error!("cannot write the result file of task {task_id}: {error}");
    }
}

/// Ends a wake command the previous run started and did not see end (it
/// died while the command ran), so that it never runs next to a new one.
/// Blocks up to [`wake::LEFTOVER_WAIT`](crate::wake::LEFTOVER_WAIT), once, at
/// start.
pub(super) fn end_wake_leftover(leftover: &WakeProcess, lifecycle: &mut LifecycleLog) {
    let WakeProcess { task_id, attempt, identity, .. } = leftover;
    let found = wake::end_leftover(identity);
    let what = format!("the wake command of task {task_id} (attempt {attempt}, pid {})", identity.pid);
    let error = match &found {
        Leftover::Gone => {
            log::info!("{what}, left from before, is no longer running");
            None
        }
        Leftover::Ended => {
            log::warn!("{what} was still running from before; ended it and its process group");
            None
        }
        Leftover::Unverifiable => {
            log::warn!("{what} may still be running from before: without its start time it is left alone");
            None
        }
        Leftover::StillExiting => {
            log::error!(
                "{what} was still running from before and could not be ended (it had not exited in time)"
            );
            None
        }
        Leftover::Failed(error) => {
            log::error!("{what} was still running from before and could not be ended ({error})");
            Some(error)
        }
    };
    lifecycle.record(
        LifecycleEvent::WakeLeftover,
        json!({ "task_id": task_id, "attempt": attempt, "pid": identity.pid,
                "process_group": identity.process_group, "found": found.word(), "error": error }),
    );
}
