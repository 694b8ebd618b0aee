//! Carrying out the core's effects: each [`Effect`] in order (a failed
//! persist ends the batch, the rest going back to the core), with what the
//! core needs to hear back (the files of a task, a listing), and the work
//! behind them: the connection, the wake command, the task's files.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use super::{agent, Shell, MAX_PROGRESS_BYTES};
use crate::config::redact_url;
use crate::event::Event;
use crate::hub::{HubEvent, HubHandle, HubParams};
use crate::lifecycle_log::LifecycleEvent;
use crate::queue_store::{self};
use crate::selfupdate;
use crate::state::{Effect, Input, TaskFiles, WakeStart};
use crate::wake::{self, WakeRequest};
use crate::watcher::{self, FileKind, ReadResult};

impl Shell {
    pub(super) fn read_task_files(&self, task_id: &str) -> TaskFiles {
        let dir = &self.config.results_dir;
        TaskFiles {
            task_id: task_id.to_owned(),
            started: watcher::is_regular_file(&watcher::task_file_path(dir, task_id, FileKind::Started)),
            result: watcher::read_json_file(
                &watcher::task_file_path(dir, task_id, FileKind::Result),
                self.config.max_result_bytes,
            ),
            progress: watcher::read_json_file(
                &watcher::task_file_path(dir, task_id, FileKind::Progress),
                MAX_PROGRESS_BYTES,
            ),
        }
    }

    /// Carries out `effects` in order. What they produce for the core goes
    /// to `follow_ups`; a failed persist ends the batch there, the rest going
    /// back to the core undone.
    pub(super) fn execute(&mut self, effects: Vec<Effect>, follow_ups: &mut VecDeque<Input>) {
        let mut effects = coalesce_persists(effects).into_iter();
        while let Some((effect, merged)) = effects.next() {
            match effect {
                Effect::Connect { conn_id } => self.connect(conn_id),
                Effect::Send { conn_id, frame } => {
                    #[cfg(feature = "failpoints")]
                    self.check_failpoint(frame.kind());
                    let text = frame.to_text();
                    match &self.hub {
                        Some(hub) if self.hub_conn_id == conn_id => hub.send(text),
                        _ => log::debug!("dropping a frame for closed connection {conn_id}"),
                    }
                }
                Effect::Close { conn_id } => {
                    if self.hub_conn_id == conn_id {
                        if let Some(hub) = self.hub.take() {
                            hub.close();
                            self.closing.push((conn_id, hub));
                        }
                    }
                }
                Effect::Persist(queue_file) => {
                    if let Err(e) = queue_store::save(&self.config.queue_file, &queue_file) {
                        let error = format!("{}: {e}", self.config.queue_file.display());
                        // A write that stood for later Persists goes back
                        // with the rest, as those would have.
                        let retry = merged.then_some(Effect::Persist(queue_file));
                        let withheld = retry.into_iter().chain(effects.map(|(effect, _)| effect)).collect();
                        follow_ups.push_back(Input::PersistFailed { error, withheld });
                        return;
                    }
                }
                Effect::StartWake(start) => self.start_wake(start),
                Effect::ReleaseWake { task_id, attempt } => self.wake.release(&task_id, attempt),
                Effect::CancelWake { task_id } => {
                    self.wake_due.cancelled(&task_id, self.config.settings.cancel_grace, Instant::now());
                    self.wake.cancel(&task_id)
                }
                Effect::MarkCancelled { task_id, reason } => {
                    agent::mark_cancelled(&self.config, &task_id, &reason)
                }
                Effect::CheckAgent { process } => {
                    if let Some(input) = agent::check_agent(&process, &self.config, self.agent_watch.as_ref())
                    {
                        follow_ups.push_back(input);
                    }
                }
                Effect::EndAgent { process } => agent::end_agent(process, self.config.settings.cancel_grace),
                Effect::ReadTaskFiles { task_id } => {
                    follow_ups.push_back(Input::Files(self.read_task_files(&task_id)))
                }
                Effect::ListResults => {
                    let listing = watcher::scan(&self.config.results_dir)
                        .map_err(|e| format!("{}: {e}", self.config.results_dir.display()));
                    follow_ups.push_back(Input::Listing(listing));
                }
                Effect::RemoveTaskFiles { task_id } => self.remove_task_files(&task_id),
                Effect::DiscardTaskFiles { task_id } => {
                    let path = watcher::task_file_path(&self.config.results_dir, &task_id, FileKind::Result);
                    let result = match watcher::read_json_file(&path, self.config.max_result_bytes) {
                        ReadResult::Missing => None,
                        ReadResult::Parsed(value) => Some(value),
                        other => Some(json!(format!("{other:?}"))),
                    };
                    if let Some(result) = result {
                        log::warn!("discarding the result of task {task_id}, which we will not hold again");
                        self.lifecycle.record(
                            LifecycleEvent::ResultDiscarded,
                            json!({ "task_id": task_id, "result": result }),
                        );
                    }
                    self.remove_task_files(&task_id);
                }
                Effect::Log { level, text } => log::log!(level, "{text}"),
                Effect::Record { event, fields } => self.lifecycle.record(event, fields),
                Effect::StartUpdate if self.config.update_url.is_some() => {
                    selfupdate::start_for_restart(&self.config, &self.events, &self.updating)
                }
                Effect::StartUpdate => {
                    let started = match &self.config.update_command {
                        Some(command) => crate::update::start_detached(
                            command,
                            &self.config.base_dir(),
                            &self.config.update_log,
                        )
                        .map_err(|e| format!("{}: {e}", self.config.update_log.display())),
                        None => Err("no update_command is configured".to_owned()),
                    };
                    match started {
                        Ok(()) => log::info!(
                            "update_command started; its output goes to {}",
                            self.config.update_log.display()
                        ),
                        Err(error) => follow_ups.push_back(Input::UpdateFailed { error }),
                    }
                }
                Effect::Exit => self.exit = true,
            }
        }
    }

    fn remove_task_files(&self, task_id: &str) {
        if let Err(e) = watcher::remove_task_files(&self.config.results_dir, task_id) {
            log::warn!("cannot remove the result files of {task_id}: {e}");
        }
        let _ = std::fs::remove_file(handoff_file_path(&self.config.results_dir, task_id));
        wake::run::remove_run_files(&self.config.results_dir, task_id);
    }

    pub(super) fn connect(&mut self, conn_id: u64) {
        if let Some(old) = self.hub.take() {
            old.close();
            self.closing.push((self.hub_conn_id, old));
        }
        log::info!("connecting to {}", redact_url(&self.config.hub_url));
        let params = HubParams {
            conn_id,
            url: self.config.hub_url.clone(),
            tls_ca_file: self.config.tls_ca_file.clone(),
            max_message_bytes: self.config.max_message_bytes,
            connect_timeout: self.config.settings.link.connect_timeout,
            close_timeout: self.config.shutdown_grace,
        };
        let events = self.events.clone();
        let watch = self.deaths.watch(format!("hub-conn-{conn_id}"));
        match HubHandle::spawn(
            params,
            Box::new(move |event| {
                if let HubEvent::Disconnected { .. } = event {
                    watch.done();
                }
                let _ = events.send(Event::Hub(event));
            }),
        ) {
            Ok(handle) => {
                self.hub = Some(handle);
                self.hub_conn_id = conn_id;
            }
            Err(e) => {
                log::error!("cannot start the hub connection thread: {e}");
                self.hub_conn_id = conn_id;
                let _ = self.events.send(Event::Hub(HubEvent::Disconnected {
                    conn_id,
                    reason: format!("cannot start the connection thread: {e}"),
                    close_code: None,
                    close_reason: None,
                }));
            }
        }
    }

    fn start_wake(&mut self, start: WakeStart) {
        let Some(template) = self.config.wake_command.clone() else {
            // The state machine only wakes when a command is configured.
            log::error!("asked to wake task {} without a wake_command", start.task_id);
            return;
        };
        // The executor writes the task file (atomically) before the attempt
        // and reports a failure to do so as a failed attempt.
        let task_file = handoff_file_path(&self.config.results_dir, &start.task_id);
        if let Some(dir) = task_file.parent() {
            if let Err(e) = std::fs::create_dir_all(dir) {
                log::warn!("cannot create {}: {e}", dir.display());
            }
        }
        self.wake_due.asked(
            &start.task_id,
            start.attempt,
            self.config.settings.wake_mode,
            self.config.wake_timeout,
            Instant::now(),
        );
        self.wake.run(WakeRequest {
            task_id: start.task_id,
            generation: start.generation,
            attempt: start.attempt,
            command_template: template,
            description: start.description,
            task_json: start.task_json,
            task_file,
            results_dir: self.config.results_dir.clone(),
            work_dir: self.config.base_dir(),
            timeout: self.config.wake_timeout,
            mode: self.config.settings.wake_mode,
            cancel_grace: self.config.settings.cancel_grace,
            max_result_bytes: self.config.max_result_bytes,
            output_check: self.config.settings.results_poll,
        });
    }
}

/// Where the full task is handed to the agent (`AGENTCOM_TASK_FILE`): a
/// hidden directory inside results_dir, which the results scan ignores. (Not
/// to be confused with `watcher::task_file_path`, the files the agent writes.)
pub(crate) fn handoff_file_path(results_dir: &Path, task_id: &str) -> PathBuf {
    results_dir.join(".tasks").join(format!("{task_id}.json"))
}

/// Saves an fsync (two with the directory's) where the core asks for several
/// writes of queue.json in a row: a `Persist` followed, with only `Send`s,
/// `Record`s and more `Persist`s in between, by a later `Persist` is replaced
/// by that later snapshot, written at the first one's place (marked `true`);
/// the others of the run are dropped. A new task with a wake (accepted, then
/// waking) and an agent that confirms and finishes at once (working, then
/// the outcome) each cost one write instead of two.
///
/// Safe because every `Send` of the run still goes out after a write at least
/// as new as the one the core ordered before it (what a frame acknowledges is
/// on disk first), and a crash inside the run leaves the newer snapshot with
/// some of those frames unsent: the same as a crash between that snapshot's
/// own write and its frames, which recovery already handles (it asks the hub
/// with `task_recovering` before reporting anything). Effects that act on
/// processes or files (`StartWake`, `RemoveTaskFiles`, ...) end a run, so
/// nothing outside the core's order happens before its write.
pub(super) fn coalesce_persists(effects: Vec<Effect>) -> Vec<(Effect, bool)> {
    let mut out: Vec<(Effect, bool)> = Vec::with_capacity(effects.len());
    // Index in `out` of the Persist that opened the current run, if any.
    let mut run_start: Option<usize> = None;
    for effect in effects {
        match effect {
            Effect::Persist(snapshot) => match run_start {
                Some(at) => out[at] = (Effect::Persist(snapshot), true),
                None => {
                    run_start = Some(out.len());
                    out.push((Effect::Persist(snapshot), false));
                }
            },
            Effect::Send { .. } | Effect::Record { .. } | Effect::Log { .. } => out.push((effect, false)),
            other => {
                run_start = None;
                out.push((other, false));
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "coalesce_tests.rs"]
mod coalesce_tests;
