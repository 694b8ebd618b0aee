//! The pure core: everything the sidecar decides, as a state machine.
//!
//! [`State::handle`] takes one [`Input`] and the current time and returns the
//! [`Effect`]s to carry out; [`State::next_deadline`] says when it next wants
//! a [`Input::Tick`]. There are no channels, files, sockets or clocks in here,
//! so every transition is unit-tested with injected times (`tests.rs`).
//! `main_loop.rs` is the shell that carries the effects out.
//!
//! The parts: `link.rs` (the connection, its deadlines and the reply
//! correlation), `frames.rs` (what each hub frame and connection event
//! means), `task.rs` (the held task, its one state enum, intake, waking
//! and its files), `report.rs` (outcomes, reports, acks, settling).
//!
//! The task slot holds at most one task (docs/protocol.md section 9). A task the
//! hub gave us is never lost and never reported twice under one generation:
//! its outcome (the report) is persisted before it is sent, resent after every
//! reconnect until the hub settles it, and after any reconnect nothing is
//! reported before the hub has said, in answer to `task_recovering`, whether
//! the task is still ours.

mod agent;
mod busy;
mod frames;
mod link;
mod past;
mod public;
mod report;
mod settings;
pub(crate) use report::{parse_progress, report_from_result};
pub use settings::{LinkSettings, Secret, Settings, WakeMode};
mod task;
#[cfg(test)]
mod tests;
mod work;

use std::collections::HashSet;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::event::Event;
use crate::hub::HubEvent;
use crate::lifecycle_log::LifecycleEvent;
use crate::protocol;
use crate::queue_store::{QueueFile, WakeProcess};
use crate::watcher::{FileKind, ReadResult, ResultsEvent};

pub use link::RateLimits;
use link::{Link, Timeout};
use past::PastTasks;
use task::{HubSync, Phase, Task};

/// Something that happened, as the core sees it: an [`Event`] from a worker
/// thread, or the outcome of an effect the shell carried out.
#[derive(Debug)]
pub enum Input {
    Event(Event),
    /// What the results directory holds for one task (after `ReadTaskFiles`).
    Files(TaskFiles),
    /// The task files in the results directory (after `ListResults`).
    Listing(Result<Vec<(String, FileKind)>, String>),
    /// A `Persist` failed. `withheld` are the effects that followed it in its
    /// batch, not carried out: the core decides which still may be.
    PersistFailed {
        error: String,
        withheld: Vec<Effect>,
    },
    /// `StartUpdate` failed: the update command could not be started.
    UpdateFailed {
        error: String,
    },
    /// What [`Effect::CheckAgent`] found: the run-mode agent left from an
    /// earlier run has ended (its result file is written).
    AgentEnded {
        task_id: String,
    },
    /// A deadline may be due.
    Tick,
}

/// The results-directory files of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFiles {
    pub task_id: String,
    pub started: bool,
    pub result: ReadResult,
    pub progress: ReadResult,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Open connection `conn_id` (identify follows on `Connected`).
    Connect {
        conn_id: u64,
    },
    Send {
        conn_id: u64,
        text: String,
    },
    /// Close gracefully; no events from this connection matter any more.
    Close {
        conn_id: u64,
    },
    /// Write queue.json. On failure the shell stops the batch here and
    /// returns the rest as [`Input::PersistFailed`].
    Persist(Box<QueueFile>),
    StartWake(WakeStart),
    /// Let a started wake command run, now that queue.json records it (the
    /// `Persist` before this one): see `WakeHandle::spawn_gated`.
    ReleaseWake {
        task_id: String,
        attempt: u32,
    },
    CancelWake {
        task_id: String,
    },
    /// Tell the agent of `task_id` that its task is cancelled: the marker
    /// file `<task_id>.cancel` in the results directory, holding `reason`.
    MarkCancelled {
        task_id: String,
        reason: String,
    },
    /// The run-mode agent left running by an earlier run (not the
    /// executor's): if it has ended, write its result file and answer
    /// [`Input::AgentEnded`]; if it still runs, nothing.
    CheckAgent {
        process: WakeProcess,
    },
    /// End that agent: SIGTERM to its process group, the kill after
    /// `cancel_grace_ms`, without blocking the loop.
    EndAgent {
        process: WakeProcess,
    },
    /// Read the results-directory files of this task: `Input::Files`.
    ReadTaskFiles {
        task_id: String,
    },
    /// List the task files of the results directory: `Input::Listing`.
    ListResults,
    /// Delete the task's result files and the task file handed to the agent.
    RemoveTaskFiles {
        task_id: String,
    },
    /// The task will not be held again: record its result file's content
    /// (if there is one) in the lifecycle log, then remove its files.
    DiscardTaskFiles {
        task_id: String,
    },
    /// A lifecycle-log record.
    Record {
        event: LifecycleEvent,
        fields: Value,
    },
    /// Start the update command, detached (`restart_sidecar` with
    /// `update_command`); it restarts us through the supervisor once a new
    /// binary is ready. On failure: [`Input::UpdateFailed`].
    StartUpdate,
    /// Leave the loop (shutdown or `restart_sidecar`).
    Exit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WakeStart {
    pub task_id: String,
    pub generation: u64,
    pub attempt: u32,
    pub description: String,
    pub task_json: String,
}

#[derive(Debug)]
pub struct State {
    settings: Settings,
    link: Link,
    task: Option<Task>,
    /// The last task let go of, while its files may matter.
    past: PastTasks,
    /// The time of the input being handled.
    now: Instant,
    /// The task whose wake attempt the executor is running, if any (it may
    /// be a task we dropped, whose attempt is being cancelled). The executor
    /// runs one attempt at a time, whichever task it belongs to.
    wake_running: Option<String>,
    /// The started wake command not yet reported ended, as persisted (so
    /// that after a crash the next start can end it first, or, a run-mode
    /// agent, find it again).
    wake_process: Option<WakeProcess>,
    /// `wake_process` is a run-mode agent an earlier run left running: no
    /// executor watches it; it is checked at `agent_check_at`.
    agent_outside: bool,
    agent_check_at: Option<Instant>,
    /// Top-level queue.json fields we do not know, kept on every save.
    queue_extra: Map<String, Value>,
    shutting_down: bool,
    /// When to rescan the results directory (only with `rescan_results`).
    next_poll_at: Option<Instant>,
    /// Result-file names of tasks we do not hold, already logged once.
    foreign_files_logged: HashSet<String>,
    /// The hub has shown it is the newer kind (4718a58: schema validation,
    /// rate limits, the extra task_assign fields). See [`BUSY_REASON`].
    newer_hub: bool,
    /// Tasks pushed to us while we were busy, oldest first: taken or
    /// handed back once we hold no task (see `busy.rs`).
    pushed_while_busy: Vec<busy::BusyPush>,
}

/// A task pushed while another is held is never woken and never answered
/// with `task_rejected` (unknown to both hubs; a schema violation on the
/// newer one, ten of which lock the sidecar out). It is remembered, and once
/// the sidecar holds no task of its own it is taken if it came on the live
/// connection (see `busy.rs`). If the connection dropped since, the hub may
/// have taken it back: on the older hub nothing is sent for it (its
/// `task_failed` crashes that hub's queue; the hub's own sweep returns the
/// task); on the newer hub it is answered with `task_failed` and this reason
/// (never while busy: it would move the hub's agent state to idle while we
/// work, drawing more pushes). The hub then queues the task again at once.
pub const BUSY_REASON: &str = "busy: the sidecar was working on another task";

/// Keys only the newer hub's `task_assign` carries.
const NEWER_HUB_ASSIGN_KEYS: &[&str] = &[
    "repo",
    "branch",
    "file_hints",
    "success_criteria",
    "verification_steps",
    "complexity",
    "routing_decision",
    "skip_verification",
    "verification_timeout_ms",
    "max_verification_retries",
];

/// The held task with the parts of [`State`] its transitions use, borrowed
/// side by side, so a transition can change the task, send and persist
/// without borrowing the slot again.
struct Held<'a> {
    task: &'a mut Task,
    link: &'a mut Link,
    settings: &'a Settings,
    past: &'a PastTasks,
    queue_extra: &'a Map<String, Value>,
    wake_running: &'a mut Option<String>,
    wake_process: &'a Option<WakeProcess>,
    /// The held task's agent process is known to be running (the
    /// executor's, or one an earlier run left): it is at work, not silent.
    agent_alive: bool,
}

impl Held<'_> {
    /// Persists queue.json as it is now.
    fn persist(&self, fx: &mut Vec<Effect>) {
        let queue = queue_file(Some(self.task), self.past, self.wake_process, self.queue_extra);
        fx.push(Effect::Persist(Box::new(queue)));
    }
}

fn queue_file(
    task: Option<&Task>,
    past: &PastTasks,
    wake_process: &Option<WakeProcess>,
    extra: &Map<String, Value>,
) -> QueueFile {
    let (past, past_earlier) = past.to_queue();
    let wake_process = wake_process.clone();
    let mut queue =
        QueueFile { active: None, recovering: None, past, past_earlier, wake_process, extra: extra.clone() };
    if let Some(task) = task {
        if task.sync == HubSync::Recovered {
            queue.recovering = Some(task.to_record());
        } else {
            queue.active = Some(task.to_record());
        }
    }
    queue
}

impl State {
    /// A `wake_process` in `queue` is a wake command that may have outlived
    /// the previous run: the shell must have ended it (or found it gone)
    /// before this, as [`start`](State::start) forgets it.
    pub fn new(settings: Settings, queue: QueueFile, jitter_seed: u64, now: Instant) -> State {
        let QueueFile { active, recovering, past, past_earlier, wake_process, extra } = queue;
        // A task that was active when we died is recovering now; one that was
        // already recovering stays so. If a file somehow holds both, the
        // recovering one is older news: keep the active one, which is the
        // task the hub most recently gave us, and log the other.
        if let (Some(a), Some(r)) = (&active, &recovering) {
            log::warn!(
                "queue.json holds both an active ({}) and a recovering ({}) task; keeping the active one",
                a.task_id,
                r.task_id
            );
        }
        let mut link = Link::new(settings.link, jitter_seed, now);
        // Only the newer hub has these features, and it rate-limits.
        if settings.send_wake_result || settings.send_state_report {
            link.hub_rate_limits();
        }
        State {
            link,
            settings,
            task: active.or(recovering).map(Task::recovered),
            past: PastTasks::from_queue(past, past_earlier),
            now,
            wake_running: None,
            wake_process,
            agent_outside: false,
            agent_check_at: None,
            queue_extra: extra,
            shutting_down: false,
            next_poll_at: None,
            foreign_files_logged: HashSet::new(),
            newer_hub: false,
            pushed_while_busy: Vec::new(),
        }
    }

    /// The first effects: persist the recovered task as `recovering`, look at
    /// the results directory, and connect.
    pub fn start(&mut self) -> Vec<Effect> {
        let mut fx = Vec::new();
        // Ended by the shell before the state was built (see `new`), or a
        // run-mode agent still at work (`agent_still_running`).
        let leftover_forgotten = self.take_leftover();
        if leftover_forgotten && self.task.is_none() {
            fx.push(Effect::Persist(Box::new(self.queue_file())));
        }
        if let Some(held) = self.held() {
            let t = &held.task;
            log::info!(
                "recovering task {} (generation {}, status {}) from queue.json",
                t.id,
                t.generation,
                t.status()
            );
            fx.push(record(LifecycleEvent::TaskRecoveredFromDisk, t.fields()));
            held.persist(&mut fx);
        }
        let now = self.now;
        self.start_past(now, &mut fx);
        // Results already on disk when we start count (docs/protocol.md
        // section 8.4): the listing reads the held task's files if it has any, and
        // logs the files of other tasks.
        fx.push(Effect::ListResults);
        self.link.connect(&mut fx);
        fx
    }

    /// What to do about `input`. Once the core has said `Exit`, nothing: the
    /// shell leaves the loop then, and an input it still hands over (the
    /// files of a read, a wake's outcome) must not start new work.
    pub fn handle(&mut self, input: Input, now: Instant, wall_ms: u64) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.shutting_down {
            log::debug!("shutting down: ignoring {input:?}");
            return fx;
        }
        self.now = now;
        self.link.set_now(now);
        match input {
            Input::Event(event) => self.on_event(event, now, wall_ms, &mut fx),
            Input::Files(files) => {
                if let Some(mut held) = self.held_as(&files.task_id) {
                    held.on_files(files, now, &mut fx);
                }
            }
            Input::Listing(Ok(entries)) => {
                let names = entries.into_iter().map(|(id, kind)| format!("{id}.{}", kind.extension()));
                self.on_result_names(names, true, &mut fx);
            }
            Input::Listing(Err(error)) => {
                log::warn!("cannot list the results directory: {error}");
                // Look at the held task's files directly instead.
                if let Some(task_id) = self.held_task_id() {
                    fx.push(Effect::ReadTaskFiles { task_id: task_id.to_owned() });
                }
            }
            Input::PersistFailed { error, withheld } => {
                // The sends after a failed persist would acknowledge something
                // the disk does not record, and a settled task's files may
                // only go once the disk records it settled: withhold those,
                // do the rest (the next start removes the files).
                log::error!("cannot write queue.json: {error}");
                fx.push(record(LifecycleEvent::PersistFailed, json!({ "error": error })));
                for effect in withheld {
                    match effect {
                        Effect::Send { .. } => {
                            log::error!("not sending a frame: queue.json could not be written")
                        }
                        Effect::RemoveTaskFiles { task_id } | Effect::DiscardTaskFiles { task_id } => {
                            log::error!("keeping the files of {task_id}: queue.json could not be written")
                        }
                        // A wake command's release goes ahead, as a
                        // wake's start does: neither tells the hub anything.
                        // (Unrecorded, a crash now could leave it running
                        // unseen; a disk that refuses queue.json has already
                        // voided that promise for everything else.)
                        other => fx.push(other),
                    }
                }
            }
            Input::UpdateFailed { error } => {
                // The hub still wants a restart: the old way, by exiting.
                log::error!(
                    "cannot start update_command ({error}); exiting so that the supervisor restarts us"
                );
                self.shut_down("restart requested by hub (update_command failed to start)", &mut fx);
            }
            Input::AgentEnded { task_id } => self.on_agent_ended(&task_id, &mut fx),
            Input::Tick => {}
        }
        if !self.shutting_down {
            self.on_tick(now, &mut fx);
        }
        fx
    }

    /// When the core next needs a `Tick`, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.shutting_down {
            return None;
        }
        let task = self.task.as_ref().and_then(|t| {
            let may_send_progress = self.link.is_ready() && t.sync == HubSync::Confirmed;
            let s = &self.settings;
            t.deadline(
                self.wake_running.is_none(),
                may_send_progress,
                s.progress_interval,
                s.keepalive_interval,
            )
        });
        let past = self.past.next_due();
        let agent = self.agent_check_at.filter(|_| self.agent_outside);
        [self.link.deadline(), task, self.next_poll_at, past, agent].into_iter().flatten().min()
    }

    /// The connection whose frames the core acts on, if any (frames of any
    /// other connection are ignored). For tests and the fuzz harness.
    pub fn live_conn_id(&self) -> Option<u64> {
        self.link.live_conn_id()
    }

    /// Identified on a live connection.
    pub fn hub_ready(&self) -> bool {
        self.link.is_ready()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// The hub has shown it is the newer one (see [`BUSY_REASON`]), which
    /// also rate-limits.
    fn mark_newer_hub(&mut self) {
        self.newer_hub = true;
        self.link.hub_rate_limits();
    }

    /// The task whose result files we care about.
    pub fn held_task_id(&self) -> Option<&str> {
        self.task.as_ref().map(|t| t.id.as_str())
    }

    /// queue.json as it should be on disk now.
    pub fn queue_file(&self) -> QueueFile {
        queue_file(self.task.as_ref(), &self.past, &self.wake_process, &self.queue_extra)
    }

    fn held(&mut self) -> Option<Held<'_>> {
        let agent_alive = self.task.as_ref().is_some_and(|t| {
            self.wake_running.as_deref() == Some(t.id.as_str())
                || (self.agent_outside && self.wake_process.as_ref().is_some_and(|p| p.task_id == t.id))
        });
        Some(Held {
            agent_alive,
            task: self.task.as_mut()?,
            link: &mut self.link,
            settings: &self.settings,
            past: &self.past,
            queue_extra: &self.queue_extra,
            wake_running: &mut self.wake_running,
            wake_process: &self.wake_process,
        })
    }

    /// The held task, if it is `task_id`.
    fn held_as(&mut self, task_id: &str) -> Option<Held<'_>> {
        self.held().filter(|held| held.task.id == task_id)
    }

    fn on_event(&mut self, event: Event, now: Instant, wall_ms: u64, fx: &mut Vec<Effect>) {
        match event {
            Event::Hub(HubEvent::Connected { conn_id }) => {
                if self.link.on_connected(conn_id, now) {
                    let s = &self.settings;
                    log::info!("connected to hub; identifying as {}", s.agent_id);
                    fx.push(record(LifecycleEvent::Connected, json!({})));
                    let text =
                        protocol::out_identify(&s.agent_id, s.token.expose(), &s.name, &s.capabilities);
                    fx.push(Effect::Send { conn_id, text });
                }
            }
            Event::Hub(HubEvent::Frame { conn_id, text }) => {
                if self.link.live_conn_id() == Some(conn_id) {
                    self.on_frame(&text, now, wall_ms, fx);
                }
            }
            Event::Hub(HubEvent::Disconnected { conn_id, reason, close_code, close_reason }) => {
                if self.link.live_conn_id() == Some(conn_id) {
                    self.on_connection_lost(&reason, close_code, close_reason.as_deref(), now, fx);
                }
            }
            Event::WakeStarted(started) => self.on_wake_started(started, fx),
            Event::Wake(outcome) => self.on_wake_finished(outcome, now, fx),
            Event::Results(ResultsEvent::Changed(paths)) => {
                let names =
                    paths.iter().filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned));
                self.on_result_names(names.collect::<Vec<_>>(), false, fx);
            }
            Event::Results(ResultsEvent::Rescan) => fx.push(Effect::ListResults),
            Event::Shutdown => self.shut_down("shutdown requested", fx),
            Event::UpdateInstalled { version } => {
                self.shut_down(&format!("restart requested by hub (version {version} installed)"), fx)
            }
        }
    }

    // ----- time -------------------------------------------------------------

    fn on_tick(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        match self.link.tick(now, fx) {
            Some(Timeout::Connect) => {
                let ms = (self.link.identify_timeout() * 2).as_millis();
                self.drop_connection(
                    &format!("the connection attempt reported nothing within {ms} ms"),
                    now,
                    fx,
                );
            }
            Some(Timeout::Identify) => {
                let ms = self.link.identify_timeout().as_millis();
                self.drop_connection(&format!("the hub did not answer identify within {ms} ms"), now, fx);
            }
            Some(Timeout::Reply(frame_type)) => {
                let ms = self.settings.link.reply_timeout.as_millis();
                self.drop_connection(&format!("the hub did not answer {frame_type} within {ms} ms"), now, fx);
            }
            Some(Timeout::Pong) => {
                let ms = self.link.pong_timeout().as_millis();
                self.drop_connection(
                    &format!("no pong within {ms} ms; the connection is presumed dead"),
                    now,
                    fx,
                );
            }
            None => {}
        }
        let timed_out =
            self.task.as_ref().filter(|t| t.report().is_none() && t.timeout_at.is_some_and(|at| now >= at));
        if let Some(task_id) = timed_out.map(|t| t.id.clone()) {
            self.stop_agent(&task_id, Some("task_timeout"), fx);
        }
        if let Some(mut held) = self.held() {
            held.on_tick(now, fx);
        }
        self.on_past_tick(now, fx);
        self.take_up_busy_pushes(now, fx);
        self.check_agent_outside(now, fx);
        match (self.settings.rescan_results.then_some(self.settings.results_poll), &self.task) {
            (Some(poll), Some(_)) => {
                if self.next_poll_at.is_some_and(|at| now >= at) {
                    self.next_poll_at = None;
                    fx.push(Effect::ListResults);
                }
                self.next_poll_at.get_or_insert(now + poll);
            }
            _ => self.next_poll_at = None,
        }
    }

    fn shut_down(&mut self, why: &str, fx: &mut Vec<Effect>) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        log::info!("shutting down: {why}");
        fx.push(record(LifecycleEvent::Shutdown, json!({ "why": why })));
        // A running wake command: a launcher is killed when the executor
        // stops; a run-mode agent is left running for the next start.
        self.wake_running = None;
        if let Some(task) = &mut self.task {
            // An attempt cut short by shutdown is not a failed attempt; the
            // next run wakes again once the hub confirms the task.
            if let Phase::Waking { .. } = task.phase {
                task.phase = Phase::ToWake { interrupted: true };
            }
        }
        fx.push(Effect::Persist(Box::new(self.queue_file())));
        if let Some(conn_id) = self.link.live_conn_id() {
            fx.push(Effect::Close { conn_id });
        }
        self.link.stop();
        fx.push(Effect::Exit);
    }
}

fn record(event: LifecycleEvent, fields: Value) -> Effect {
    Effect::Record { event, fields }
}
