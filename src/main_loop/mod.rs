//! The shell around the pure core: receives [`Event`]s, asks
//! [`State`](crate::state::State) what to do, and does it (sockets, files,
//! processes, logs). It decides nothing about tasks: what to read, when to
//! rescan and what to withhold after a failed write are the core's. Two
//! judgements are its own, about the machine rather than the task: whether a
//! wake command an earlier run left is still running (`agent.rs`, before the
//! core starts), and whether a worker thread is dead or hung (`deaths.rs`).
//! It blocks in exactly one place, [`Shell::next_event`].
//!
//! Nothing here returns early with `?` once the loop runs: every failure is
//! logged and turned into something the state machine understands, so the
//! loop always gets to shut down cleanly. Only set-up errors abort `run`.

mod agent;

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use serde_json::json;

use crate::clock::unix_ms;
use crate::config::{redact_url, Config};
use crate::error::Error;
use crate::event::Event;
use crate::hub::{HubEvent, HubHandle};
use crate::lifecycle_log::{LifecycleEvent, LifecycleLog};
use crate::queue_lock::QueueLock;
use crate::queue_store::{self, Loaded, QueueFile};
use crate::retry::Jitter;
use crate::state::{Input, Settings, State};
use crate::supervisor::Supervisor;
use crate::wake::{self, WakeHandle};
use crate::watcher::{self, FileKind, ResultsWatcher};
use deaths::{Deaths, WakeDue};

mod deaths;
mod effects;
pub(crate) use effects::handoff_file_path;

/// Largest progress file we read.
const MAX_PROGRESS_BYTES: u64 = 4096;
/// A loop turn slower than this is worth a warning.
const SLOW_TURN: Duration = Duration::from_millis(100);

/// Runs the sidecar until `Event::Shutdown` (or the hub's
/// `restart_sidecar`). `events` is the sender side of `inbox`; worker threads
/// get clones of it.
pub fn run(config: Config, events: Sender<Event>, inbox: Receiver<Event>) -> Result<(), Error> {
    run_supervised(config, events, inbox, crate::supervisor::from_env())
}

/// [`run`], telling `supervisor` when the sidecar is ready, what it is
/// doing, that its loop is alive, and when it stops (see
/// [`crate::supervisor`]).
pub fn run_supervised(
    config: Config,
    events: Sender<Event>,
    inbox: Receiver<Event>,
    supervisor: Box<dyn Supervisor>,
) -> Result<(), Error> {
    let problems = config.directory_problems();
    if !problems.is_empty() {
        return Err(Error::Runtime(format!("cannot start: {}", problems.join("; "))));
    }
    // One sidecar per queue, before anything is read or sent.
    if let Some(dir) = config.queue_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::io(format!("cannot create the directory of {}", config.queue_file.display()), e)
        })?;
    }
    let _lock = QueueLock::acquire(&config.queue_file)?;
    let mut shell = Shell::new(config, events, supervisor)?;
    shell.run(&inbox);
    if let Some(death) = shell.died.take() {
        // Crash-only: no teardown, whose joins could wait on the broken
        // worker; the process exits, as after a kill, and its supervisor
        // restarts it.
        std::mem::forget(shell);
        return Err(Error::Runtime(format!(
            "{death}; exiting so that the supervisor restarts the sidecar (queue.json makes that safe)"
        )));
    }
    shell.teardown();
    Ok(())
}

struct Shell {
    config: Config,
    events: Sender<Event>,
    state: State,
    lifecycle: LifecycleLog,
    /// The connection the state machine considers live, if any.
    hub: Option<HubHandle>,
    hub_conn_id: u64,
    /// Connections we closed whose threads have not reported `Disconnected`
    /// yet. Dropping a handle joins its thread, so they wait here rather
    /// than blocking the loop.
    closing: Vec<(u64, HubHandle)>,
    // Kept alive for its events. Field order matters for drop: the watcher
    // stops before the executor.
    _watcher: Option<ResultsWatcher>,
    wake: WakeHandle,
    /// The run-mode agent an earlier run left, where its exit code needs a
    /// handle (Windows).
    agent_watch: Option<wake::AgentWatch>,
    #[cfg(feature = "failpoints")]
    failpoint: Option<String>,
    exit: bool,
    deaths: Deaths,
    /// A worker thread died: the loop ends and so does the process.
    died: Option<String>,
    /// The wake attempt the executor owes an outcome for, and when it is
    /// overdue (a hung executor is a dead one).
    wake_due: WakeDue,
    supervisor: Box<dyn Supervisor>,
    /// The last status line the supervisor was given, and the watchdog
    /// pings sent (see `supervise.rs`).
    supervisor_status: String,
    beats: u64,
    /// A self-update (`restart_sidecar` with `update_url`) is running.
    updating: Arc<AtomicBool>,
}

impl Shell {
    fn new(config: Config, events: Sender<Event>, supervisor: Box<dyn Supervisor>) -> Result<Shell, Error> {
        std::fs::create_dir_all(&config.results_dir).map_err(|e| {
            Error::io(format!("cannot create results_dir {}", config.results_dir.display()), e)
        })?;
        if let Some(dir) = config.queue_file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::io(format!("cannot create the directory of {}", config.queue_file.display()), e)
            })?;
        }
        let mut lifecycle = LifecycleLog::open(
            &config.log_file,
            &config.settings.agent_id,
            config.log_max_bytes,
            config.log_keep,
        )
        .map_err(|e| Error::io(format!("cannot open log_file {}", config.log_file.display()), e))?;

        for path in watcher::remove_leftover_temp_files(&config.queue_file, &config.results_dir) {
            log::info!("removed {}, left behind by an interrupted save", path.display());
        }
        let queue = match queue_store::load(&config.queue_file) {
            Ok(Loaded::Missing) => QueueFile::default(),
            Ok(Loaded::Ok(queue)) => *queue,
            Ok(Loaded::Corrupt { error, moved_to }) => {
                log::error!(
                    "{} is corrupt ({error}); moved it to {} and starting with an empty queue",
                    config.queue_file.display(),
                    moved_to.display()
                );
                lifecycle.record(
                    LifecycleEvent::QueueCorrupt,
                    json!({ "error": error, "moved_to": moved_to.display().to_string() }),
                );
                QueueFile::default()
            }
            Err(e) => return Err(Error::io(format!("cannot read {}", config.queue_file.display()), e)),
        };
        // Before any new wake (the state forgets the record at start, unless
        // it is a run-mode agent still at work).
        let mut queue = queue;
        let agent_running = agent::find_leftover(&mut queue, &config, &mut lifecycle);
        // Where no gate script records its exit status (Windows), a handle
        // on it gives the exit code when it ends.
        let agent_watch = queue
            .wake_process
            .as_ref()
            .filter(|_| agent_running)
            .and_then(|p| wake::watch_leftover(&p.identity));

        let deaths = Deaths::new();
        let wake_events = events.clone();
        let started_events = events.clone();
        let wake_watch = deaths.watch("wake-executor");
        // Gated: a command runs only once queue.json records it, so a crash
        // right after its spawn never leaves one running unseen.
        let wake = WakeHandle::spawn_gated(
            Box::new(move |started| {
                let _ = started_events.send(Event::WakeStarted(started));
            }),
            Box::new(move |outcome| {
                wake_watch.keep();
                // A failed send means the loop is gone: we are shutting down.
                let _ = wake_events.send(Event::Wake(outcome));
            }),
        )
        .map_err(|e| Error::io("cannot start the wake executor thread", e))?;

        let watcher = if config.watch_results {
            let watch_events = events.clone();
            let watch = deaths.watch("results-watcher");
            match ResultsWatcher::start(
                &config.results_dir,
                Box::new(move |event| {
                    watch.keep();
                    let _ = watch_events.send(Event::Results(event));
                }),
            ) {
                Ok(watcher) => Some(watcher),
                Err(e) => {
                    log::warn!(
                        "cannot watch {} ({e}); rescanning it every {} ms instead",
                        config.results_dir.display(),
                        config.settings.results_poll.as_millis()
                    );
                    None
                }
            }
        } else {
            log::info!(
                "watch_results is off: rescanning {} every {} ms while a task is held",
                config.results_dir.display(),
                config.settings.results_poll.as_millis()
            );
            None
        };

        let now = Instant::now();
        let settings = Settings { rescan_results: watcher.is_none(), ..config.settings.clone() };
        let mut state = State::new(settings, queue, Jitter::seed_from_entropy(), now);
        if agent_running {
            state.agent_still_running();
        }
        lifecycle.record(
            LifecycleEvent::Started,
            json!({ "version": env!("CARGO_PKG_VERSION"), "hub_url": redact_url(&config.hub_url) }),
        );
        Ok(Shell {
            #[cfg(feature = "failpoints")]
            failpoint: std::env::var("AGENTCOM_FAILPOINT").ok().filter(|f| !f.is_empty()),
            config,
            events,
            state,
            lifecycle,
            hub: None,
            hub_conn_id: 0,
            closing: Vec::new(),
            updating: Arc::new(AtomicBool::new(false)),
            _watcher: watcher,
            wake,
            agent_watch,
            exit: false,
            deaths,
            died: None,
            wake_due: WakeDue::default(),
            supervisor,
            supervisor_status: String::new(),
            beats: 0,
        })
    }

    fn run(&mut self, inbox: &Receiver<Event>) {
        // What the effects of a batch produced (files read, a failed
        // persist): handed to the core before the next event.
        let mut follow_ups = VecDeque::new();
        let effects = self.state.start();
        self.execute(effects, &mut follow_ups);
        self.supervisor.ready();
        while !self.exit && self.died.is_none() {
            self.supervise(Instant::now());
            let input = match follow_ups.pop_front() {
                Some(input) => input,
                None => self.next_event(inbox).unwrap_or_else(|| {
                    log::error!("the event channel closed without a shutdown; stopping");
                    Input::Event(Event::Shutdown)
                }),
            };
            if self.died.is_some() {
                break;
            }
            match &input {
                Input::Event(Event::Wake(_)) => self.wake_due.ended(),
                Input::Event(Event::WakeStarted(_)) => self.wake_due.command_running(),
                _ => {}
            }
            if let Input::Event(Event::Shutdown) = &input {
                self.supervisor.stopping();
            }
            if let Input::Event(Event::Hub(HubEvent::Disconnected { conn_id, .. })) = &input {
                self.reap_connection(*conn_id);
            }
            #[cfg(feature = "failpoints")]
            if let Input::Event(Event::WakeStarted(_)) = &input {
                self.check_failpoint_at("after_wake_spawn");
            }
            #[cfg(feature = "failpoints")]
            if let Input::Event(Event::Wake(_)) = &input {
                self.check_failpoint_at("before_wake_outcome");
            }
            let started = Instant::now();
            let effects = self.state.handle(input, started, unix_ms());
            self.execute(effects, &mut follow_ups);
            let took = started.elapsed();
            if took > SLOW_TURN {
                log::warn!("one loop turn took {} ms", took.as_millis());
            }
        }
    }

    /// Blocks until something happens: an event from a worker, or the state
    /// machine's next deadline. `None` when every sender is gone.
    /// Wakes for the supervisor's watchdog too, and beats then.
    fn next_event(&mut self, inbox: &Receiver<Event>) -> Option<Input> {
        let event = loop {
            let deadline = self.state.next_deadline();
            let beat = self.supervisor.next_beat().filter(|b| deadline.is_none_or(|d| *b < d));
            let timer = match beat.or(deadline) {
                Some(at) => crossbeam_channel::at(at),
                None => crossbeam_channel::never(),
            };
            let overdue = match self.wake_due.at() {
                Some(at) => crossbeam_channel::at(at),
                None => crossbeam_channel::never(),
            };
            select! {
                recv(inbox) -> event => break event.ok()?,
                recv(timer) -> _ => match beat {
                    Some(_) => self.supervise(Instant::now()),
                    None => return Some(Input::Tick),
                },
                recv(self.deaths.rx) -> death => {
                    self.died = death.ok();
                    return Some(Input::Tick);
                }
                recv(overdue) -> _ => {
                    let results_dir = &self.config.results_dir;
                    let confirmed = |task_id: &str| {
                        watcher::is_regular_file(&watcher::task_file_path(results_dir, task_id, FileKind::Started))
                    };
                    if let Some(what) = self.wake_due.overdue(confirmed) {
                        self.died = Some(format!("worker thread wake-executor is hung: no outcome for {what}"));
                        return Some(Input::Tick);
                    }
                }
            }
        };
        match &event {
            // Frames can be large; their content is logged once parsed.
            Event::Hub(HubEvent::Frame { conn_id, text }) => {
                log::debug!("event: frame of {} bytes on connection {conn_id}", text.len())
            }
            other => log::debug!("event: {other:?}"),
        }
        Some(Input::Event(event))
    }

    /// The thread of `conn_id` is done: drop its handle.
    fn reap_connection(&mut self, conn_id: u64) {
        self.closing.retain(|(id, _)| *id != conn_id);
        if self.hub_conn_id == conn_id {
            self.hub = None;
        }
    }

    /// Test hooks, compiled only with the `failpoints` feature (the test
    /// build enables it): `AGENTCOM_FAILPOINT=before_send:<frame type>` kills
    /// the process, without any clean-up, just before the first frame of that
    /// type goes to the hub; `after_wake_spawn` as soon as a wake command has
    /// started, before anything records it; `before_wake_outcome` when a wake
    /// command's outcome arrives, before the core hears it. The crash-safety
    /// tests use them
    /// to die at exact points.
    #[cfg(feature = "failpoints")]
    fn check_failpoint_at(&self, point: &str) {
        if self.failpoint.as_deref() == Some(point) {
            log::error!("failpoint {point} reached: aborting");
            std::process::abort();
        }
    }

    #[cfg(feature = "failpoints")]
    fn check_failpoint(&self, kind: crate::protocol::OutKind) {
        let Some(failpoint) = &self.failpoint else {
            return;
        };
        let Some(frame_type) = failpoint.strip_prefix("before_send:") else {
            return;
        };
        if crate::protocol::OutKind::parse(frame_type) == Some(kind) {
            log::error!("failpoint {failpoint} reached: aborting");
            std::process::abort();
        }
    }

    fn teardown(mut self) {
        self.supervisor.stopping();
        self.deaths.stopping();
        // Close every connection first so their close handshakes run in
        // parallel, then join them (each bounded by shutdown_grace).
        if let Some(hub) = self.hub.take() {
            hub.close();
            self.closing.push((self.hub_conn_id, hub));
        }
        for (_, hub) in &self.closing {
            hub.close();
        }
        self.closing.clear();
        self.lifecycle.record(LifecycleEvent::Stopped, json!({}));
        log::info!("stopped");
    }
}

mod supervise;
