//! The pure core: everything the sidecar decides, as a state machine.
//!
//! [`State::handle`] takes one [`Input`] and the current time and returns the
//! [`Effect`]s to carry out; [`State::next_deadline`] says when it next wants
//! a [`Input::Tick`]. There are no channels, files, sockets or clocks in here
//! (a test fails if a file here uses a module that does I/O, or logs), so
//! every transition is unit-tested with injected times. `src/main_loop` is
//! the shell that carries the effects out.
//!
//! This file holds [`State`], its start and the one dispatch: `handle` hands
//! each input to the stage that owns it. The stages, in a task's order:
//!
//! - `intake.rs`: a `task_assign` taken, refused, resent or handed back
//!   (`busy.rs`: pushes that come while we hold another task);
//! - `waking.rs`: wake attempts, their retries and outcomes;
//! - `working.rs`: the agent's files and the held task's deadlines;
//! - `reporting.rs`: the outcome persisted, reported, answered and settled;
//! - `recovery.rs`: the executor slot and processes left by an earlier run;
//!   `past.rs`: tasks let go of, their files, and re-adoption;
//! - `frames.rs`: what each hub frame and a lost connection mean, and
//!   `link/`: the connection, its deadlines, reply correlation and pacing.
//!
//! Shared: `task.rs` (the held task and its [`Phase`](task::Phase)),
//! `effects.rs` (inputs and effects), `events.rs` and `records.rs` (the
//! types the I/O modules hand in and queue.json holds), `settings.rs`,
//! `public.rs` (what of an error may go to the hub).
//!
//! The task slot holds at most one task (docs/protocol.md section 9). A task the
//! hub gave us is never lost and never reported twice under one generation:
//! its outcome (the report) is persisted before it is sent, resent after every
//! reconnect until the hub settles it, and after any reconnect nothing is
//! reported before the hub has said, in answer to `task_recovering`, whether
//! the task is still ours.

/// A line for the shell's log, as an [`Effect::Log`] pushed to `fx`: the
/// core does not log itself.
macro_rules! say {
    ($fx:expr, $level:ident, $($arg:tt)+) => {
        $fx.push($crate::state::Effect::Log { level: log::Level::$level, text: format!($($arg)+) })
    };
}

mod busy;
pub use busy::BUSY_REASON;
mod effects;
pub use effects::*;
mod events;
pub use events::*;
mod frames;
mod intake;
mod link;
pub use link::RateLimits;
mod past;
mod public;
mod records;
pub use records::*;
mod recovery;
mod reporting;
pub(crate) use reporting::{parse_progress, report_from_result};
mod settings;
pub use settings::{LinkSettings, Secret, Settings, WakeMode};
#[cfg(test)]
mod purity_tests;
mod task;
#[cfg(test)]
mod tests;
mod waking;
mod working;

use std::collections::HashSet;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::protocol::{Outgoing, Token};

use link::{Link, Timeout};
use past::PastTasks;
use recovery::Executor;
use task::{HubSync, Phase, Task};

#[derive(Debug)]
pub struct State {
    settings: Settings,
    link: Link,
    task: Option<Task>,
    /// The last task let go of, while its files may matter.
    past: PastTasks,
    /// The time of the input being handled.
    now: Instant,
    /// What runs an agent: the executor's attempt, or a process an earlier
    /// run left (see `agent.rs`).
    executor: Executor,
    /// Top-level queue.json fields we do not know, kept on every save.
    queue_extra: Map<String, Value>,
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
    /// Log lines from [`State::new`], given out by [`State::start`].
    said: Vec<Effect>,
}

/// The held task with the parts of [`State`] its transitions use, borrowed
/// side by side, so a transition can change the task, send and persist
/// without borrowing the slot again.
struct Held<'a> {
    task: &'a mut Task,
    link: &'a mut Link,
    settings: &'a Settings,
    past: &'a PastTasks,
    queue_extra: &'a Map<String, Value>,
    executor: &'a mut Executor,
    /// The held task's agent process is known to be running (the
    /// executor's, or one an earlier run left): it is at work, not silent.
    agent_alive: bool,
}

impl Held<'_> {
    /// Persists queue.json as it is now.
    fn persist(&self, fx: &mut Vec<Effect>) {
        let queue = queue_file(Some(self.task), self.past, self.executor.process(), self.queue_extra);
        fx.push(Effect::Persist(Box::new(queue)));
    }
}

fn queue_file(
    task: Option<&Task>,
    past: &PastTasks,
    wake_process: Option<&WakeProcess>,
    extra: &Map<String, Value>,
) -> QueueFile {
    let (past, past_earlier) = past.to_queue();
    let wake_process = wake_process.cloned();
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
        let mut said = Vec::new();
        if let (Some(a), Some(r)) = (&active, &recovering) {
            say!(
                said,
                Warn,
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
            executor: wake_process.map_or(Executor::Idle, Executor::Leftover),
            queue_extra: extra,
            next_poll_at: None,
            foreign_files_logged: HashSet::new(),
            newer_hub: false,
            pushed_while_busy: Vec::new(),
            said,
        }
    }

    /// The first effects: persist the recovered task as `recovering`, look at
    /// the results directory, and connect.
    pub fn start(&mut self) -> Vec<Effect> {
        let mut fx = std::mem::take(&mut self.said);
        // Ended by the shell before the state was built (see `new`), or a
        // run-mode agent still at work (`agent_still_running`).
        let leftover_forgotten = self.take_leftover(&mut fx);
        if leftover_forgotten && self.task.is_none() {
            fx.push(Effect::Persist(Box::new(self.queue_file())));
        }
        if let Some(held) = self.held() {
            let t = &held.task;
            say!(
                fx,
                Info,
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
        if self.link.is_stopped() {
            say!(fx, Debug, "shutting down: ignoring {input:?}");
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
                say!(fx, Warn, "cannot list the results directory: {error}");
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
                say!(fx, Error, "cannot write queue.json: {error}");
                fx.push(record(LifecycleEvent::PersistFailed, json!({ "error": error })));
                for effect in withheld {
                    match effect {
                        Effect::Send { .. } => {
                            say!(fx, Error, "not sending a frame: queue.json could not be written")
                        }
                        Effect::RemoveTaskFiles { task_id } | Effect::DiscardTaskFiles { task_id } => {
                            say!(fx, Error, "keeping the files of {task_id}: queue.json could not be written")
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
                say!(
                    fx,
                    Error,
                    "cannot start update_command ({error}); exiting so that the supervisor restarts us"
                );
                self.shut_down("restart requested by hub (update_command failed to start)", &mut fx);
            }
            Input::AgentEnded { task_id } => self.on_agent_ended(&task_id, &mut fx),
            Input::Tick => {}
        }
        if !self.link.is_stopped() {
            self.on_tick(now, &mut fx);
        }
        fx
    }

    /// When the core next needs a `Tick`, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.link.is_stopped() {
            return None;
        }
        let task = self.task.as_ref().and_then(|t| {
            let may_send_progress = self.link.is_ready() && t.sync == HubSync::Confirmed;
            let s = &self.settings;
            t.deadline(
                !self.executor.is_running(),
                may_send_progress,
                s.progress_interval,
                s.keepalive_interval,
            )
        });
        let past = self.past.next_due();
        let agent = self.executor.check_at();
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
        self.link.is_stopped()
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
        queue_file(self.task.as_ref(), &self.past, self.executor.process(), &self.queue_extra)
    }

    fn held(&mut self) -> Option<Held<'_>> {
        let agent_alive = self.task.as_ref().is_some_and(|t| self.executor.runs_agent_of(&t.id));
        Some(Held {
            agent_alive,
            task: self.task.as_mut()?,
            link: &mut self.link,
            settings: &self.settings,
            past: &self.past,
            queue_extra: &self.queue_extra,
            executor: &mut self.executor,
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
                    say!(fx, Info, "connected to hub; identifying as {}", s.agent_id);
                    fx.push(record(LifecycleEvent::Connected, json!({})));
                    let frame = Outgoing::Identify {
                        agent_id: s.agent_id.clone(),
                        token: Token(s.token.expose().to_owned()),
                        name: s.name.clone(),
                        capabilities: s.capabilities.clone(),
                    };
                    fx.push(Effect::Send { conn_id, frame });
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
            Some(Timeout::Reply(kind)) => {
                let ms = self.settings.link.reply_timeout.as_millis();
                self.drop_connection(&format!("the hub did not answer {kind} within {ms} ms"), now, fx);
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
        if self.link.is_stopped() {
            return;
        }
        say!(fx, Info, "shutting down: {why}");
        fx.push(record(LifecycleEvent::Shutdown, json!({ "why": why })));
        // A running wake command: a launcher is killed when the executor
        // stops; a run-mode agent is left running for the next start.
        self.executor.stop();
        if let Some(task) = &mut self.task {
            // An attempt cut short by shutdown is not a failed attempt; the
            // next run wakes again once the hub confirms the task.
            if let Phase::Waking = task.phase {
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
