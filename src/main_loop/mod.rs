//! The shell around the pure core: receives [`Event`]s, asks
//! [`State`](crate::state::State) what to do, and does it (sockets, files,
//! processes, logs). It decides nothing: what to read, when to rescan and
//! what to withhold after a failed write are the core's. It blocks in exactly
//! one place, [`Shell::next_event`].
//!
//! Nothing here returns early with `?` once the loop runs: every failure is
//! logged and turned into something the state machine understands, so the
//! loop always gets to shut down cleanly. Only set-up errors abort `run`.

mod agent;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use serde_json::json;

use crate::clock::unix_ms;
use crate::config::{redact_url, Config};
use crate::error::Error;
use crate::event::Event;
use crate::hub::{HubEvent, HubHandle, HubParams};
use crate::lifecycle_log::{LifecycleEvent, LifecycleLog};
use crate::queue_lock::QueueLock;
use crate::queue_store::{self, Loaded, QueueFile};
use crate::retry::Jitter;
use crate::selfupdate;
use crate::state::{Effect, Input, Settings, State, TaskFiles, WakeStart};
use crate::supervisor::Supervisor;
use crate::wake::{self, WakeHandle, WakeRequest};
use crate::watcher::{self, FileKind, ReadResult, ResultsWatcher};
use deaths::Deaths;

mod deaths;

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
    wake_due: Option<(Instant, String)>,
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
            wake_due: None,
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
            if let Input::Event(Event::Wake(_)) = &input {
                self.wake_due = None;
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
            let overdue = match &self.wake_due {
                Some((at, _)) => crossbeam_channel::at(*at),
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
                    let what = self.wake_due.take().map(|(_, what)| what).unwrap_or_default();
                    self.died = Some(format!("worker thread wake-executor is hung: no outcome for {what}"));
                    return Some(Input::Tick);
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

    fn read_task_files(&self, task_id: &str) -> TaskFiles {
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
    fn execute(&mut self, effects: Vec<Effect>, follow_ups: &mut VecDeque<Input>) {
        let mut effects = coalesce_persists(effects).into_iter();
        while let Some((effect, merged)) = effects.next() {
            match effect {
                Effect::Connect { conn_id } => self.connect(conn_id),
                Effect::Send { conn_id, text } => {
                    #[cfg(feature = "failpoints")]
                    self.check_failpoint(&text);
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
                Effect::CancelWake { task_id } => self.wake.cancel(&task_id),
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

    fn connect(&mut self, conn_id: u64) {
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
            connect_timeout: self.config.connect_timeout,
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
        let overdue = deaths::wake_overdue_after(self.config.wake_timeout);
        let what =
            format!("attempt {} of task {} within {} ms", start.attempt, start.task_id, overdue.as_millis());
        self.wake_due = Some((Instant::now() + overdue, what));
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
        });
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
    fn check_failpoint(&self, text: &str) {
        let Some(failpoint) = &self.failpoint else {
            return;
        };
        let Some(frame_type) = failpoint.strip_prefix("before_send:") else {
            return;
        };
        if text.contains(&format!("\"type\":\"{frame_type}\"")) {
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
fn coalesce_persists(effects: Vec<Effect>) -> Vec<(Effect, bool)> {
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
            Effect::Send { .. } | Effect::Record { .. } => out.push((effect, false)),
            other => {
                run_start = None;
                out.push((other, false));
            }
        }
    }
    out
}

mod supervise;

#[cfg(test)]
mod coalesce_tests;
