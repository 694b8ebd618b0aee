//! The pure core: everything the sidecar decides, as a state machine.
//!
//! [`State::handle`] takes one [`Input`] and the current time and returns the
//! [`Effect`]s to carry out; [`State::next_deadline`] says when it next wants
//! a [`Input::Tick`]. There are no channels, files, sockets or clocks in here
//! (a test fails if a file here uses a module that does I/O, or logs), so
//! every transition is unit-tested with injected times. `src/main_loop` is
//! the shell that carries the effects out.
//!
//! This file holds [`State`] (the link, the task slot, and [`Kept`]: what
//! queue.json holds beside the task) and its start; `dispatch.rs` the one dispatch,
//! [`State::handle`], which hands each input to the stage that owns it (and
//! what a lost connection or a hub error means). The stages, in a task's
//! order:
//!
//! - `intake.rs`: a `task_assign` taken, refused, resent or handed back
//!   (`busy.rs`: pushes that come while we hold another task);
//! - `waking.rs`: wake attempts, their retries and outcomes;
//! - `working.rs`: the agent's files and the held task's deadlines;
//! - `reporting.rs`: the outcome persisted, reported, answered and settled;
//! - `recovery.rs`: the executor slot and processes left by an earlier run;
//!   `past.rs`: tasks let go of, their files, and re-adoption;
//! - `link/`: the connection, its deadlines, reply correlation and pacing.
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

/// The held task (`&mut Task` from `State::task`), or return from the
/// transition: `let task = held!(self);`. Taken again after calling another
/// transition, which may have changed the slot.
macro_rules! held {
    ($state:expr) => {
        match $state.task.as_mut() {
            Some(task) => task,
            None => return,
        }
    };
}

mod busy;
pub use busy::BUSY_REASON;
mod effects;
pub use effects::*;
mod events;
pub use events::*;
mod dispatch;
mod intake;
mod link;
pub use link::RateLimits;
mod past;
mod public;
mod records;
pub use records::*;
mod recovery;
mod reporting;
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

use link::Link;
use past::PastTasks;
use recovery::Executor;
use task::{HubSync, Phase, Task};

#[derive(Debug)]
pub struct State {
    settings: Settings,
    link: Link,
    /// The task slot: at most one task (docs/protocol.md section 9).
    task: Option<Task>,
    /// What queue.json holds beside the task, written with it.
    kept: Kept,
    /// The time of the input being handled.
    now: Instant,
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

/// What queue.json holds beside the held task, kept from one task to the
/// next: [`Kept::persist`] writes it with the task. A field apart from
/// `State::task`, so that a transition holding the task (`&mut Task`
/// from `self.task`) can persist, send on `self.link` and read
/// `self.settings` beside it: disjoint fields, no bundle of borrows.
#[derive(Debug)]
struct Kept {
    /// The last task let go of, while its files may matter.
    past: PastTasks,
    /// What runs an agent: the executor's attempt, or a process an earlier
    /// run left (see `recovery.rs`); its process is recorded.
    executor: Executor,
    /// Top-level queue.json fields we do not know, kept on every save.
    queue_extra: Map<String, Value>,
}

impl Kept {
    /// queue.json as it is with `task` held.
    fn queue_file(&self, task: Option<&Task>) -> QueueFile {
        let (past, past_earlier) = self.past.to_queue();
        let wake_process = self.executor.process().cloned();
        let extra = self.queue_extra.clone();
        let mut queue = QueueFile { active: None, recovering: None, past, past_earlier, wake_process, extra };
        if let Some(task) = task {
            if task.sync == HubSync::Recovered {
                queue.recovering = Some(task.to_record());
            } else {
                queue.active = Some(task.to_record());
            }
        }
        queue
    }

    /// Persists queue.json with `task` held.
    fn persist(&self, task: Option<&Task>, fx: &mut Vec<Effect>) {
        fx.push(Effect::Persist(Box::new(self.queue_file(task))));
    }
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
            kept: Kept {
                past: PastTasks::from_queue(past, past_earlier),
                executor: wake_process.map_or(Executor::Idle, Executor::Leftover),
                queue_extra: extra,
            },
            now,
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
        if let Some(t) = &self.task {
            say!(
                fx,
                Info,
                "recovering task {} (generation {}, status {}) from queue.json",
                t.id,
                t.generation,
                t.status()
            );
            fx.push(record(LifecycleEvent::TaskRecoveredFromDisk, t.fields()));
            self.kept.persist(Some(t), &mut fx);
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

    /// When the core next needs a `Tick`, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.link.is_stopped() {
            return None;
        }
        let task = self.task.as_ref().and_then(|t| {
            let may_send_progress = self.link.is_ready() && t.sync == HubSync::Confirmed;
            let s = &self.settings;
            t.deadline(
                !self.kept.executor.is_running(),
                may_send_progress,
                s.progress_interval,
                s.keepalive_interval,
            )
        });
        let past = self.kept.past.next_due();
        let agent = self.kept.executor.check_at();
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
        self.kept.queue_file(self.task.as_ref())
    }

    /// Whether the held task is `task_id`.
    fn holds(&self, task_id: &str) -> bool {
        self.task.as_ref().is_some_and(|t| t.id == task_id)
    }

    fn shut_down(&mut self, why: &str, fx: &mut Vec<Effect>) {
        if self.link.is_stopped() {
            return;
        }
        say!(fx, Info, "shutting down: {why}");
        fx.push(record(LifecycleEvent::Shutdown, json!({ "why": why })));
        // A running wake command: a launcher is killed when the executor
        // stops; a run-mode agent is left running for the next start.
        self.kept.executor.stop();
        if let Some(task) = &mut self.task {
            // An attempt cut short by shutdown is not a failed attempt; the
            // next run wakes again once the hub confirms the task.
            if task.phase() == Some(&Phase::Waking) {
                task.set_phase(Phase::to_wake(true));
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
