//! The development hub: a small stand-in for the AgentCom hub that speaks the
//! hub side of PROTOCOL.md on a loopback address. The integration tests start
//! one in-process on port 0; `src/bin/agentcom-devhub.rs` wraps it so a person
//! can try a wake command without the real hub.
//!
//! It copies the real hub's task bookkeeping closely enough to exercise the
//! sidecar's edge cases. A task starts at generation 0 and every assignment
//! bumps it; taking a task back (socket dropped, acceptance window missed) and
//! a retried failure bump it again, so a task taken back and pushed again comes
//! two generations higher. Each identified agent has a small state machine like
//! the hub's `AgentFSM` (idle, assigned, working): only an idle agent is handed
//! queued work, only the task it was handed while idle has an acceptance window,
//! and only that task is taken back when its socket drops.
//!
//! Shape: one accept thread, one thread per connection that owns its WebSocket
//! (a 50 ms read timeout lets it drain its outbox and notice `stop`), and one
//! sweep thread for acceptance windows driven by a crossbeam ticker. The shared
//! state sits behind one `Mutex`: this is a test tool and simplicity wins over
//! the sidecar's own "one loop owns the state" rule. Every connection event and
//! every frame in and out is reported, in order, on the `DevHubEvent` channel.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{select, Receiver, Sender};
use serde_json::{json, Map, Value};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{HandshakeError, Message, WebSocket};

/// How to start a [`DevHub`].
pub struct DevHubOptions {
    /// Where to listen. Default `127.0.0.1:0`; a non-loopback address is refused.
    pub bind: SocketAddr,
    /// `agent_id -> token`. An identify is accepted when its token is the one of
    /// its agent; a token of another agent gets `token_agent_mismatch`.
    pub tokens: HashMap<String, String>,
    /// How long an assigned task may wait for `task_accepted` before the hub
    /// takes it back and pushes it again (two generations higher). Default 60 s.
    pub accept_timeout: Duration,
    /// `task_failed` answers `retried` until a task has failed this many times;
    /// the failure that reaches it answers `dead_letter`. Default 3, as the hub.
    pub max_retries: u32,
    /// After identify, push the queued task that was taken back from this agent
    /// (what the real hub's scheduler does on `agent_joined`). Default true.
    pub repush_on_identify: bool,
    /// `Some`: serve `wss` with this acceptor.
    pub tls: Option<native_tls::TlsAcceptor>,
    /// The real hub closes a socket that has sent nothing for 60 s, with code
    /// 1002. `None` never closes. Default `Some(60 s)`.
    pub idle_timeout: Option<Duration>,
}

/// A running development hub. Dropping it stops it, as [`DevHub::stop`] does.
pub struct DevHub {
    // Drop order matters: the sweep thread's stop sender goes before its handle.
    sweep_stop: Option<Sender<()>>,
    sweep_thread: Option<JoinHandle<()>>,
    accept_thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    events: Receiver<DevHubEvent>,
    addr: SocketAddr,
    is_tls: bool,
}

/// What the hub saw or did, in order. `conn` numbers connections from 1.
#[derive(Debug, Clone, PartialEq)]
pub enum DevHubEvent {
    /// A WebSocket handshake completed.
    Connected { conn: u64 },
    /// A TCP connection that never became a WebSocket (wrong path, bad TLS...).
    HandshakeFailed { conn: u64, reason: String },
    /// An identify was accepted; emitted right after the `identified` frame.
    Identified { conn: u64, agent_id: String },
    /// A text frame from the sidecar, raw (an identify keeps its token here;
    /// use [`redact_token`] before printing it).
    Received { conn: u64, frame: Value },
    /// A text frame that is not JSON, or a binary frame (lossy UTF-8).
    ReceivedText { conn: u64, text: String },
    /// A frame written to the sidecar.
    Sent { conn: u64, frame: Value },
    /// A frame the hub would have written but did not because it is silent.
    Suppressed { conn: u64, frame: Value },
    /// The hub sent a close frame.
    ClosedByHub { conn: u64, code: u16, reason: String },
    /// A task went back to the queue without an answer from the sidecar:
    /// `reason` is `disconnect`, `accept_timeout` or `hub_crash`.
    TaskTakenBack { task_id: String, generation: u64, reason: String },
    /// The connection is gone, with the agent it had identified as.
    Disconnected { conn: u64, agent_id: Option<String> },
}

/// Where a task stands in the hub's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Queued,
    Assigned,
    Completed,
    DeadLetter,
}

/// What settled one generation of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    Completed,
    Retried,
    DeadLetter,
}

/// One accepted `task_complete` or `task_failed`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub generation: u64,
    pub kind: OutcomeKind,
    /// The `result` of a completion.
    pub result: Option<Value>,
    /// The `error` (or else `reason`) of a failure.
    pub reason: Option<String>,
}

/// A copy of what the hub knows about a task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSnapshot {
    pub task_id: String,
    pub description: String,
    pub metadata: Value,
    pub generation: u64,
    pub status: TaskStatus,
    pub assigned_to: Option<String>,
    /// A `task_accepted` arrived for the current assignment.
    pub accepted: bool,
    pub n_failures: u32,
    pub outcomes: Vec<Outcome>,
    /// Every `task_progress` frame received for this task.
    pub progress: Vec<Value>,
}

impl DevHubOptions {
    /// One agent with one token, on `127.0.0.1:0`, with the real hub's timings.
    pub fn new(agent_id: &str, token: &str) -> Self {
        DevHubOptions {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            tokens: HashMap::from([(agent_id.to_string(), token.to_string())]),
            accept_timeout: Duration::from_secs(60),
            max_retries: 3,
            repush_on_identify: true,
            tls: None,
            idle_timeout: Some(Duration::from_secs(60)),
        }
    }
}

impl fmt::Debug for DevHubOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tokens are secrets: show which agents have one, never the value.
        let mut agents: Vec<&String> = self.tokens.keys().collect();
        agents.sort();
        f.debug_struct("DevHubOptions")
            .field("bind", &self.bind)
            .field("token_agents", &agents)
            .field("accept_timeout", &self.accept_timeout)
            .field("max_retries", &self.max_retries)
            .field("repush_on_identify", &self.repush_on_identify)
            .field("tls", &self.tls.is_some())
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl DevHub {
    /// Binds, then starts the accept and sweep threads.
    pub fn start(options: DevHubOptions) -> io::Result<DevHub> {
        if !options.bind.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("devhub binds loopback addresses only, not {}", options.bind),
            ));
        }
        let listener = TcpListener::bind(options.bind)?;
        let addr = listener.local_addr()?;
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let is_tls = options.tls.is_some();
        let sweep_tick =
            (options.accept_timeout / 10).clamp(Duration::from_millis(5), Duration::from_secs(1));
        let shared = Arc::new(Shared {
            state: Mutex::new(HubState::new(&options, events_tx)),
            stopping: AtomicBool::new(false),
            conn_threads: Mutex::new(Vec::new()),
        });

        let (sweep_stop_tx, sweep_stop_rx) = crossbeam_channel::bounded::<()>(0);
        let sweep_shared = Arc::clone(&shared);
        let sweep_thread = thread::Builder::new()
            .name("devhub-sweep".to_string())
            .spawn(move || sweep_loop(&sweep_shared, &sweep_stop_rx, sweep_tick))?;

        let accept_shared = Arc::clone(&shared);
        let tls = options.tls;
        let accept_thread = thread::Builder::new()
            .name("devhub-accept".to_string())
            .spawn(move || accept_loop(&accept_shared, &listener, tls.as_ref()))?;

        Ok(DevHub {
            sweep_stop: Some(sweep_stop_tx),
            sweep_thread: Some(sweep_thread),
            accept_thread: Some(accept_thread),
            shared,
            events: events_rx,
            addr,
            is_tls,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:PORT/ws`, or `wss://localhost:PORT/ws` with TLS (the
    /// name a test certificate is made for).
    pub fn url(&self) -> String {
        if self.is_tls {
            format!("wss://localhost:{}/ws", self.addr.port())
        } else {
            format!("ws://{}/ws", self.addr)
        }
    }

    /// The event queue. Every clone reads the same queue: an event goes to one
    /// reader only, so use one reader (or [`DevHub::wait_for`]) at a time.
    pub fn events(&self) -> Receiver<DevHubEvent> {
        self.events.clone()
    }

    /// Consumes events until one matches `pred`, or returns `None` after
    /// `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&DevHubEvent) -> bool,
    ) -> Option<DevHubEvent> {
        let deadline = crossbeam_channel::at(Instant::now() + timeout);
        loop {
            select! {
                recv(self.events) -> event => match event {
                    Ok(event) if pred(&event) => return Some(event),
                    Ok(_) => {}
                    Err(_) => return None,
                },
                recv(deadline) -> _ => return None,
            }
        }
    }

    /// Queues a new task `task-` + 16 hex digits for `agent_id`. It is assigned
    /// and pushed now if the agent is identified and idle, else when it becomes
    /// so.
    pub fn push_task(&self, agent_id: &str, description: &str, metadata: Value) -> String {
        let mut state = self.shared.lock();
        let task_id = state.new_task_id();
        state.create_task(&task_id, agent_id, description, metadata);
        state.schedule(Instant::now(), None);
        task_id
    }

    /// Assigns `task_id` to `agent_id` (creating it if new) and pushes it at
    /// once, busy agent or not; returns the new generation. An idle agent's
    /// state machine takes it as its current task, with an acceptance window;
    /// a busy one ignores it, as the real hub's does.
    pub fn push_task_now(&self, agent_id: &str, task_id: &str, description: &str, metadata: Value) -> u64 {
        let now = Instant::now();
        let mut state = self.shared.lock();
        if state.tasks.contains_key(task_id) {
            let task = state.tasks.get_mut(task_id).expect("checked just above");
            task.description = description.to_string();
            task.metadata = metadata;
            task.target_agent = agent_id.to_string();
        } else {
            state.create_task(task_id, agent_id, description, metadata);
        }
        let frame = state.assign_task(task_id, agent_id);
        let generation = state.tasks[task_id].generation;
        let accept_deadline = now + state.accept_timeout;
        if let Some(fsm) = state.agents.get_mut(agent_id) {
            match fsm.phase {
                AgentPhase::Idle => {
                    fsm.phase = AgentPhase::Assigned { accept_deadline };
                    fsm.current_task = Some(task_id.to_string());
                }
                AgentPhase::Assigned { .. } if fsm.current_task.as_deref() == Some(task_id) => {
                    fsm.phase = AgentPhase::Assigned { accept_deadline };
                }
                _ => {}
            }
        }
        state.send_to_agent(agent_id, frame);
        generation
    }

    /// Makes the hub know `task_id` as assigned to `agent_id` at `generation`,
    /// without pushing anything (recovery tests). An agent that identifies
    /// afterwards adopts it as its current task, acceptance window included,
    /// as the real hub's state machine does on start.
    pub fn seed_task(&self, task_id: &str, generation: u64, agent_id: &str) {
        let mut state = self.shared.lock();
        if !state.tasks.contains_key(task_id) {
            state.create_task(task_id, agent_id, "", json!({}));
        }
        let task = state.tasks.get_mut(task_id).expect("created just above");
        task.generation = generation;
        task.status = TaskStatus::Assigned;
        task.assigned_to = Some(agent_id.to_string());
        task.last_assigned_to = Some(agent_id.to_string());
        task.target_agent = agent_id.to_string();
        task.accepted = false;
    }

    /// Sends any frame to the agent's current socket. False when the agent has
    /// no identified connection.
    pub fn send_raw(&self, agent_id: &str, frame: Value) -> bool {
        self.shared.lock().send_to_agent(agent_id, frame)
    }

    /// Silent: keep every TCP connection open, keep reading and recording
    /// frames, but handle none and write none (no pong, no ack, no push): a
    /// half-open hub. WebSocket-level pings are still answered by tungstenite.
    pub fn set_silent(&self, silent: bool) {
        self.shared.lock().silent = silent;
    }

    /// Shuts the agent's TCP connections down at once, with no close frame.
    pub fn drop_connection(&self, agent_id: &str) {
        let state = self.shared.lock();
        for entry in state.conns.values() {
            if entry.agent_id.as_deref() == Some(agent_id) {
                let _ = entry.tcp.shutdown(Shutdown::Both);
            }
        }
    }

    /// Sends a close frame with `code` and `reason` on the agent's connections.
    pub fn close_connection(&self, agent_id: &str, code: u16, reason: &str) {
        let state = self.shared.lock();
        for entry in state.conns.values() {
            if entry.agent_id.as_deref() == Some(agent_id) {
                let _ = entry.outbox.send(Outgoing::Close { code, reason: reason.to_string() });
            }
        }
    }

    /// The next frame of `frame_type` from an identified connection is dropped
    /// unhandled and answered with `rate_limited` (the real hub rate-limits
    /// only after identify).
    pub fn rate_limit_next(&self, frame_type: &str, retry_after_ms: u64) {
        self.shared.lock().rate_limits.push((frame_type.to_string(), retry_after_ms));
    }

    /// Emulates old hubs: on `task_failed`, re-queue the task one generation
    /// higher, answer nothing and close the socket with 1011.
    pub fn set_crash_on_task_failed(&self, on: bool) {
        self.shared.lock().crash_on_task_failed = on;
    }

    pub fn task(&self, task_id: &str) -> Option<TaskSnapshot> {
        self.shared.lock().tasks.get(task_id).map(Task::snapshot)
    }

    /// Closes the listener and every connection (close frame 1001) and joins
    /// every thread. The address can be bound again right away.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        drop(self.sweep_stop.take());
        if let Some(handle) = self.sweep_thread.take() {
            join_logged(handle);
        }
        if let Some(handle) = self.accept_thread.take() {
            // The accept thread blocks in accept(); a connection of our own wakes
            // it up, and it sees the stop flag before handling it.
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            join_logged(handle);
        }
        // Every connection thread was spawned by now; each sees the flag within
        // one read timeout.
        let handles = std::mem::take(
            &mut *self.shared.conn_threads.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for handle in handles {
            join_logged(handle);
        }
    }
}

impl Drop for DevHub {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A copy of `frame` with the value of every `token` key replaced by
/// `"<redacted>"`: use it for anything printed or logged.
pub fn redact_token(frame: &Value) -> Value {
    match frame {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| {
                    let value = if key == "token" {
                        Value::String("<redacted>".to_string())
                    } else {
                        redact_token(value)
                    };
                    (key.clone(), value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact_token).collect()),
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------
// Private: shared state
// ---------------------------------------------------------------------------

/// Read poll of a connection thread: the bound on how long it takes to notice
/// an outbox frame or `stop`.
const READ_POLL: Duration = Duration::from_millis(50);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the hub waits for the peer's close frame after sending its own.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// The same wait while the hub stops: short, so `stop` stays quick even when a
/// peer is not reading.
const STOP_CLOSE_GRACE: Duration = Duration::from_millis(300);

struct Shared {
    state: Mutex<HubState>,
    stopping: AtomicBool,
    conn_threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding the lock leaves consistent-enough state for a
        // test tool; keep serving rather than cascade the panic.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

enum Outgoing {
    Frame(Value),
    Close { code: u16, reason: String },
}

/// What a connection thread does after handling one frame, in order.
#[derive(Debug)]
enum Reply {
    Frame(Value),
    Close { code: u16, reason: String },
    Emit(DevHubEvent),
}

struct ConnEntry {
    agent_id: Option<String>,
    outbox: Sender<Outgoing>,
    /// A clone of the socket, so `drop_connection` can shut it down at once.
    tcp: TcpStream,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum AgentPhase {
    Idle,
    Assigned { accept_deadline: Instant },
    Working,
}

/// The hub's per-agent state machine (`AgentFSM`), one per identified agent.
struct AgentFsm {
    /// The connection that identified last; only its loss takes the task back.
    conn: u64,
    phase: AgentPhase,
    /// Set whenever `phase` is not `Idle`.
    current_task: Option<String>,
}

struct Task {
    task_id: String,
    description: String,
    metadata: Value,
    /// Creation order; the queue hands out the oldest queued task first.
    created_seq: u64,
    generation: u64,
    status: TaskStatus,
    assigned_to: Option<String>,
    /// Kept when the task is taken back, so that agent can get it back.
    last_assigned_to: Option<String>,
    /// The agent whose queue the task is in.
    target_agent: String,
    accepted: bool,
    n_failures: u32,
    outcomes: Vec<Outcome>,
    progress: Vec<Value>,
}

impl Task {
    fn snapshot(&self) -> TaskSnapshot {
        TaskSnapshot {
            task_id: self.task_id.clone(),
            description: self.description.clone(),
            metadata: self.metadata.clone(),
            generation: self.generation,
            status: self.status,
            assigned_to: self.assigned_to.clone(),
            accepted: self.accepted,
            n_failures: self.n_failures,
            outcomes: self.outcomes.clone(),
            progress: self.progress.clone(),
        }
    }
}

struct HubState {
    tokens: HashMap<String, String>,
    accept_timeout: Duration,
    max_retries: u32,
    repush_on_identify: bool,
    idle_timeout: Option<Duration>,
    /// Dead-lettered tasks stay here with `DeadLetter` status but, as in the
    /// real hub (which moves them to another table), the protocol no longer
    /// finds them.
    tasks: HashMap<String, Task>,
    next_task_seq: u64,
    next_conn: u64,
    conns: HashMap<u64, ConnEntry>,
    agents: HashMap<String, AgentFsm>,
    silent: bool,
    crash_on_task_failed: bool,
    /// `(frame type, retry_after_ms)`, oldest first.
    rate_limits: Vec<(String, u64)>,
    events: Sender<DevHubEvent>,
    id_seed: RandomState,
}

impl HubState {
    fn new(options: &DevHubOptions, events: Sender<DevHubEvent>) -> HubState {
        HubState {
            tokens: options.tokens.clone(),
            accept_timeout: options.accept_timeout,
            max_retries: options.max_retries,
            repush_on_identify: options.repush_on_identify,
            idle_timeout: options.idle_timeout,
            tasks: HashMap::new(),
            next_task_seq: 0,
            next_conn: 1,
            conns: HashMap::new(),
            agents: HashMap::new(),
            silent: false,
            crash_on_task_failed: false,
            rate_limits: Vec::new(),
            events,
            id_seed: RandomState::new(),
        }
    }

    fn emit(&self, event: DevHubEvent) {
        // Nobody reading events is fine: the hub keeps working.
        let _ = self.events.send(event);
    }

    /// `task-` + 16 lowercase hex digits, unique in this hub.
    fn new_task_id(&mut self) -> String {
        loop {
            let mut hasher = self.id_seed.build_hasher();
            hasher.write_u64(self.next_task_seq);
            hasher.write_u128(
                SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_nanos()).unwrap_or(0),
            );
            self.next_task_seq += 1;
            let task_id = format!("task-{:016x}", hasher.finish());
            if !self.tasks.contains_key(&task_id) {
                return task_id;
            }
        }
    }

    fn create_task(&mut self, task_id: &str, agent_id: &str, description: &str, metadata: Value) {
        self.next_task_seq += 1;
        let task = Task {
            task_id: task_id.to_string(),
            description: description.to_string(),
            metadata,
            created_seq: self.next_task_seq,
            generation: 0,
            status: TaskStatus::Queued,
            assigned_to: None,
            last_assigned_to: None,
            target_agent: agent_id.to_string(),
            accepted: false,
            n_failures: 0,
            outcomes: Vec::new(),
            progress: Vec::new(),
        };
        self.tasks.insert(task_id.to_string(), task);
    }

    fn send_to_conn(&self, conn: u64, outgoing: Outgoing) -> bool {
        match self.conns.get(&conn) {
            Some(entry) => entry.outbox.send(outgoing).is_ok(),
            None => false,
        }
    }

    fn send_to_agent(&self, agent_id: &str, frame: Value) -> bool {
        match self.agents.get(agent_id) {
            Some(fsm) => self.send_to_conn(fsm.conn, Outgoing::Frame(frame)),
            None => false,
        }
    }

    /// Bumps the generation, marks the task assigned and returns the
    /// `task_assign` frame. The caller updates the agent and pushes.
    fn assign_task(&mut self, task_id: &str, agent_id: &str) -> Value {
        let task = self.tasks.get_mut(task_id).expect("assign_task on a known task");
        task.generation += 1;
        task.status = TaskStatus::Assigned;
        task.assigned_to = Some(agent_id.to_string());
        task.last_assigned_to = Some(agent_id.to_string());
        task.accepted = false;
        // The enrichment keys are always present in the real hub's push.
        json!({
            "type": "task_assign",
            "task_id": task.task_id,
            "description": task.description,
            "metadata": task.metadata,
            "generation": task.generation,
            "assigned_at": now_ms(),
            "repo": null,
            "branch": null,
            "file_hints": [],
            "success_criteria": [],
            "verification_steps": [],
            "complexity": null,
        })
    }

    /// Puts an assigned task back in the queue one generation higher.
    fn take_back(&mut self, task_id: &str, reason: &str) {
        let Some(task) = self.tasks.get_mut(task_id) else {
            return;
        };
        if task.status != TaskStatus::Assigned {
            return;
        }
        task.generation += 1;
        task.status = TaskStatus::Queued;
        task.assigned_to = None;
        task.accepted = false;
        let event = DevHubEvent::TaskTakenBack {
            task_id: task.task_id.clone(),
            generation: task.generation,
            reason: reason.to_string(),
        };
        log::debug!("devhub: {event:?}");
        self.emit(event);
    }

    /// Hands each idle identified agent its oldest queued task. Right after
    /// `identifying` identifies, without `repush_on_identify`, tasks taken back
    /// from it are left in the queue.
    fn schedule(&mut self, now: Instant, identifying: Option<&str>) {
        let mut idle_agents: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, fsm)| fsm.phase == AgentPhase::Idle)
            .map(|(agent_id, _)| agent_id.clone())
            .collect();
        idle_agents.sort();
        for agent_id in idle_agents {
            let skip_taken_back = identifying == Some(agent_id.as_str()) && !self.repush_on_identify;
            let next = self
                .tasks
                .values()
                .filter(|task| task.status == TaskStatus::Queued && task.target_agent == agent_id)
                .filter(|task| {
                    !(skip_taken_back && task.last_assigned_to.as_deref() == Some(agent_id.as_str()))
                })
                .min_by_key(|task| task.created_seq)
                .map(|task| task.task_id.clone());
            let Some(task_id) = next else {
                continue;
            };
            let frame = self.assign_task(&task_id, &agent_id);
            let fsm = self.agents.get_mut(&agent_id).expect("listed just above");
            fsm.phase = AgentPhase::Assigned { accept_deadline: now + self.accept_timeout };
            fsm.current_task = Some(task_id);
            self.send_to_agent(&agent_id, frame);
        }
    }

    /// Takes back every current task whose acceptance window has closed.
    fn sweep(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, fsm)| {
                matches!(fsm.phase, AgentPhase::Assigned { accept_deadline } if accept_deadline <= now)
            })
            .map(|(agent_id, _)| agent_id.clone())
            .collect();
        if expired.is_empty() {
            return;
        }
        for agent_id in expired {
            let fsm = self.agents.get_mut(&agent_id).expect("listed just above");
            fsm.phase = AgentPhase::Idle;
            if let Some(task_id) = fsm.current_task.take() {
                self.take_back(&task_id, "accept_timeout");
            }
        }
        self.schedule(now, None);
    }

    fn register_conn(&mut self, outbox: Sender<Outgoing>, tcp: TcpStream) -> u64 {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(conn, ConnEntry { agent_id: None, outbox, tcp });
        conn
    }

    fn disconnect(&mut self, conn: u64, now: Instant) {
        let agent_id = self.conns.remove(&conn).and_then(|entry| entry.agent_id);
        if let Some(agent_id) = &agent_id {
            if self.agents.get(agent_id).is_some_and(|fsm| fsm.conn == conn) {
                let fsm = self.agents.remove(agent_id).expect("checked just above");
                if let Some(task_id) = fsm.current_task {
                    self.take_back(&task_id, "disconnect");
                }
                self.schedule(now, None);
            }
        }
        self.emit(DevHubEvent::Disconnected { conn, agent_id });
    }

    /// Handles one JSON frame from `conn`, in the real hub's order: validate,
    /// rate-limit (identified only), then dispatch.
    fn handle_frame(&mut self, conn: u64, frame: &Value, now: Instant) -> Vec<Reply> {
        let Some(object) = frame.as_object() else {
            return vec![validation_failed(
                "unknown",
                vec![field_error("message", "wrong_type", "expected JSON object", None)],
            )];
        };
        let frame_type = match object.get("type") {
            Some(Value::String(frame_type)) => frame_type.as_str(),
            Some(other) => {
                let detail = format!("expected string, got {}", type_name(other));
                return vec![validation_failed(
                    "unknown",
                    vec![field_error("type", "wrong_type", &detail, Some(other))],
                )];
            }
            None => {
                return vec![validation_failed(
                    "unknown",
                    vec![field_error("type", "required", "field is required", None)],
                )];
            }
        };
        let schema = schema_for(frame_type);
        if let Some(schema) = schema {
            let errors = validate(object, schema);
            if !errors.is_empty() {
                return vec![validation_failed(frame_type, errors)];
            }
        }
        let agent_id = self.conns.get(&conn).and_then(|entry| entry.agent_id.clone());
        if agent_id.is_some() && schema.is_some() {
            if let Some(idx) = self.rate_limits.iter().position(|(t, _)| t == frame_type) {
                let (_, retry_after_ms) = self.rate_limits.remove(idx);
                return vec![Reply::Frame(json!({
                    "type": "rate_limited",
                    "retry_after_ms": retry_after_ms,
                    "tier": rate_limit_tier(frame_type),
                }))];
            }
        }
        if frame_type == "identify" {
            return self.identify(conn, object, now);
        }
        let Some(agent_id) = agent_id else {
            return vec![error_reply("not_identified")];
        };
        let task_id = object.get("task_id").and_then(Value::as_str).unwrap_or("");
        match frame_type {
            "ping" => vec![Reply::Frame(json!({"type": "pong", "timestamp": now_ms()}))],
            "task_accepted" => self.task_accepted(&agent_id, task_id),
            "task_progress" => {
                if let Some(task) = self.tasks.get_mut(task_id) {
                    task.progress.push(frame.clone());
                }
                Vec::new()
            }
            "task_complete" => self.task_complete(object, task_id, now),
            "task_failed" => self.task_failed(object, task_id, now),
            "task_recovering" => self.task_recovering(&agent_id, task_id),
            _ => vec![error_reply("unknown_message_type")],
        }
    }

    fn identify(&mut self, conn: u64, object: &Map<String, Value>, now: Instant) -> Vec<Reply> {
        let agent_id = object["agent_id"].as_str().expect("validated: string");
        let token = object["token"].as_str().expect("validated: string");
        if self.tokens.get(agent_id).map(String::as_str) != Some(token) {
            let owned_by_other = self.tokens.values().any(|known| known == token);
            let error = if owned_by_other { "token_agent_mismatch" } else { "invalid_token" };
            // The socket stays open: the sidecar decides to close it.
            return vec![error_reply(error)];
        }
        if let Some(entry) = self.conns.get_mut(&conn) {
            entry.agent_id = Some(agent_id.to_string());
        }
        // A new identify replaces the agent's state machine without taking its
        // task back (the real hub stops the old FSM). The new one adopts the
        // oldest task still assigned to the agent, acceptance window included.
        let adopted = self
            .tasks
            .values()
            .filter(|task| {
                task.status == TaskStatus::Assigned && task.assigned_to.as_deref() == Some(agent_id)
            })
            .min_by_key(|task| task.created_seq)
            .map(|task| task.task_id.clone());
        let phase = match adopted {
            Some(_) => AgentPhase::Assigned { accept_deadline: now + self.accept_timeout },
            None => AgentPhase::Idle,
        };
        self.agents.insert(agent_id.to_string(), AgentFsm { conn, phase, current_task: adopted });
        // Pushes go through the outbox, so they follow `identified` on the wire.
        self.schedule(now, Some(agent_id));
        vec![
            Reply::Frame(json!({"type": "identified", "agent_id": agent_id})),
            Reply::Emit(DevHubEvent::Identified { conn, agent_id: agent_id.to_string() }),
        ]
    }

    fn task_accepted(&mut self, agent_id: &str, task_id: &str) -> Vec<Reply> {
        if let Some(fsm) = self.agents.get_mut(agent_id) {
            if matches!(fsm.phase, AgentPhase::Assigned { .. })
                && fsm.current_task.as_deref() == Some(task_id)
            {
                fsm.phase = AgentPhase::Working;
            }
        }
        if let Some(task) = self.tasks.get_mut(task_id) {
            if task.status == TaskStatus::Assigned && task.assigned_to.as_deref() == Some(agent_id) {
                task.accepted = true;
            }
        }
        // The real hub acks every task_accepted, known task or not.
        vec![Reply::Frame(json!({"type": "task_ack", "task_id": task_id, "status": "accepted"}))]
    }

    /// Checks a report's generation as the real hub's task queue does; on
    /// success returns the task, on failure the error text.
    fn check_report(&mut self, task_id: &str, generation: i64) -> Result<&mut Task, &'static str> {
        match self.tasks.get_mut(task_id) {
            None => Err("not_found"),
            Some(task) if task.status == TaskStatus::DeadLetter => Err("not_found"),
            Some(task) if task.status == TaskStatus::Assigned => {
                if i64::try_from(task.generation).ok() == Some(generation) {
                    Ok(task)
                } else {
                    Err("stale_generation")
                }
            }
            Some(_) => Err("invalid_state"),
        }
    }

    /// The agent whose current task `task_id` is goes back to idle.
    fn release_current(&mut self, task_id: &str) {
        for fsm in self.agents.values_mut() {
            if fsm.current_task.as_deref() == Some(task_id) {
                fsm.phase = AgentPhase::Idle;
                fsm.current_task = None;
            }
        }
    }

    fn task_complete(&mut self, object: &Map<String, Value>, task_id: &str, now: Instant) -> Vec<Reply> {
        let generation = object["generation"].as_i64().unwrap_or(-1);
        let task = match self.check_report(task_id, generation) {
            Ok(task) => task,
            Err(why) => return vec![error_reply(&format!("task_complete_failed: {why}"))],
        };
        task.status = TaskStatus::Completed;
        task.outcomes.push(Outcome {
            generation: task.generation,
            kind: OutcomeKind::Completed,
            result: Some(object.get("result").cloned().unwrap_or_else(|| json!({}))),
            reason: None,
        });
        self.release_current(task_id);
        // The ack is written now; a next task goes through the outbox after it.
        self.schedule(now, None);
        vec![Reply::Frame(json!({"type": "task_ack", "task_id": task_id, "status": "complete"}))]
    }

    fn task_failed(&mut self, object: &Map<String, Value>, task_id: &str, now: Instant) -> Vec<Reply> {
        if self.crash_on_task_failed {
            // Old hubs crash their queue here: the task comes back one
            // generation higher and the socket closes without an answer.
            self.take_back(task_id, "hub_crash");
            return vec![Reply::Close { code: 1011, reason: "internal error".to_string() }];
        }
        let generation = object["generation"].as_i64().unwrap_or(-1);
        let reason = ["error", "reason"]
            .iter()
            .find_map(|key| object.get(*key).and_then(Value::as_str))
            .unwrap_or("unknown")
            .to_string();
        let max_retries = self.max_retries;
        let task = match self.check_report(task_id, generation) {
            Ok(task) => task,
            Err(why) => return vec![error_reply(&format!("task_fail_failed: {why}"))],
        };
        task.n_failures += 1;
        let status = if task.n_failures >= max_retries {
            task.status = TaskStatus::DeadLetter;
            task.outcomes.push(Outcome {
                generation: task.generation,
                kind: OutcomeKind::DeadLetter,
                result: None,
                reason: Some(reason),
            });
            "dead_letter"
        } else {
            task.outcomes.push(Outcome {
                generation: task.generation,
                kind: OutcomeKind::Retried,
                result: None,
                reason: Some(reason),
            });
            task.generation += 1;
            task.status = TaskStatus::Queued;
            task.assigned_to = None;
            task.accepted = false;
            "retried"
        };
        self.release_current(task_id);
        // A retried task goes back in the queue and, with one agent, comes
        // straight back to it, after the ack.
        self.schedule(now, None);
        vec![Reply::Frame(json!({"type": "task_ack", "task_id": task_id, "status": status}))]
    }

    fn task_recovering(&mut self, agent_id: &str, task_id: &str) -> Vec<Reply> {
        let reassign = vec![Reply::Frame(json!({"type": "task_reassign", "task_id": task_id}))];
        let Some(task) = self.tasks.get(task_id) else {
            return reassign;
        };
        let generation = match task.status {
            TaskStatus::Assigned if task.assigned_to.as_deref() == Some(agent_id) => task.generation,
            TaskStatus::Queued if task.last_assigned_to.as_deref() == Some(agent_id) => {
                // Taken back from this agent and not finished: hand it back, one
                // generation higher, and let the agent keep working on it.
                self.assign_task(task_id, agent_id);
                if let Some(task) = self.tasks.get_mut(task_id) {
                    task.accepted = true;
                }
                if let Some(fsm) = self.agents.get_mut(agent_id) {
                    if fsm.phase == AgentPhase::Idle {
                        fsm.phase = AgentPhase::Working;
                        fsm.current_task = Some(task_id.to_string());
                    }
                }
                self.tasks[task_id].generation
            }
            _ => return reassign,
        };
        vec![Reply::Frame(json!({"type": "task_continue", "task_id": task_id, "generation": generation}))]
    }
}

// ---------------------------------------------------------------------------
// Private: validation, as the real hub's schemas for the frames a sidecar sends
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum FieldType {
    String,
    Integer,
    Object,
    StringList,
}

struct Schema {
    required: &'static [(&'static str, FieldType)],
    optional: &'static [(&'static str, FieldType)],
}

fn schema_for(frame_type: &str) -> Option<&'static Schema> {
    use FieldType::*;
    const IDENTIFY: Schema = Schema {
        required: &[("agent_id", String), ("token", String), ("type", String)],
        optional: &[
            ("capabilities", StringList),
            ("name", String),
            ("ollama_url", String),
            ("status", String),
        ],
    };
    const TYPE_ONLY: Schema = Schema { required: &[("type", String)], optional: &[] };
    const TASK_ID_ONLY: Schema = Schema { required: &[("task_id", String), ("type", String)], optional: &[] };
    const TASK_PROGRESS: Schema = Schema {
        required: &[("task_id", String), ("type", String)],
        optional: &[("execution_event", Object), ("progress", Integer)],
    };
    const TASK_COMPLETE: Schema = Schema {
        required: &[("generation", Integer), ("task_id", String), ("type", String)],
        optional: &[("result", Object), ("tokens_used", Integer), ("verification_report", Object)],
    };
    const TASK_FAILED: Schema = Schema {
        required: &[("generation", Integer), ("task_id", String), ("type", String)],
        optional: &[("error", String), ("reason", String)],
    };
    match frame_type {
        "identify" => Some(&IDENTIFY),
        "ping" => Some(&TYPE_ONLY),
        "task_accepted" | "task_recovering" => Some(&TASK_ID_ONLY),
        "task_progress" => Some(&TASK_PROGRESS),
        "task_complete" => Some(&TASK_COMPLETE),
        "task_failed" => Some(&TASK_FAILED),
        _ => None,
    }
}

fn length_limit(field: &str) -> Option<usize> {
    match field {
        "agent_id" => Some(128),
        "description" => Some(10_000),
        "status" => Some(256),
        "token" => Some(256),
        "error" | "reason" => Some(2_000),
        "name" => Some(256),
        _ => None,
    }
}

fn validate(object: &Map<String, Value>, schema: &Schema) -> Vec<Value> {
    let mut errors = Vec::new();
    let fields = schema
        .required
        .iter()
        .map(|field| (field, true))
        .chain(schema.optional.iter().map(|field| (field, false)));
    for (&(field, field_type), required) in fields {
        let value = match object.get(field) {
            None | Some(Value::Null) if required => {
                errors.push(field_error(field, "required", "field is required", None));
                continue;
            }
            None | Some(Value::Null) => continue,
            Some(value) => value,
        };
        // Never echo a token back, even a malformed one.
        let echo = if field == "token" { None } else { Some(value) };
        let (ok, expected) = match field_type {
            FieldType::String => (value.is_string(), "string"),
            FieldType::Integer => (value.is_i64() || value.is_u64(), "integer"),
            FieldType::Object => (value.is_object(), "object"),
            FieldType::StringList => match value.as_array() {
                Some(items) => match items.iter().position(|item| !item.is_string()) {
                    None => (true, "array"),
                    Some(idx) => {
                        let detail = format!("expected string, got {}", type_name(&items[idx]));
                        let name = format!("{field}[{idx}]");
                        errors.push(field_error(&name, "wrong_type", &detail, Some(&items[idx])));
                        continue;
                    }
                },
                None => (false, "array"),
            },
        };
        if !ok {
            let detail = format!("expected {expected}, got {}", type_name(value));
            errors.push(field_error(field, "wrong_type", &detail, echo));
            continue;
        }
        if let (Some(limit), Some(text)) = (length_limit(field), value.as_str()) {
            if text.chars().count() > limit {
                let detail = format!("exceeds maximum length of {limit} characters");
                let short = Value::String(text.chars().take(50).collect::<String>() + "...");
                let echo = echo.map(|_| &short);
                errors.push(field_error(field, "too_long", &detail, echo));
            }
        }
    }
    errors
}

fn field_error(field: &str, error: &str, detail: &str, value: Option<&Value>) -> Value {
    let mut entry = json!({"field": field, "error": error, "detail": detail});
    if let Some(value) = value {
        entry["value"] = value.clone();
    }
    entry
}

fn validation_failed(frame_type: &str, errors: Vec<Value>) -> Reply {
    Reply::Frame(json!({
        "type": "error",
        "error": "validation_failed",
        "message_type": frame_type,
        "errors": errors,
    }))
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "string",
        Value::Number(number) if number.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::Bool(_) => "boolean",
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::Null => "null",
    }
}

/// The real hub's rate-limit tier of a frame type.
fn rate_limit_tier(frame_type: &str) -> &'static str {
    match frame_type {
        "ping" | "list_agents" | "list_channels" | "status" | "channel_history" => "light",
        "identify" => "heavy",
        _ => "normal",
    }
}

fn error_reply(error: &str) -> Reply {
    Reply::Frame(json!({"type": "error", "error": error}))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn join_logged(handle: JoinHandle<()>) {
    let name = handle.thread().name().unwrap_or("devhub thread").to_string();
    if handle.join().is_err() {
        log::error!("{name} panicked");
    }
}

// ---------------------------------------------------------------------------
// Private: threads
// ---------------------------------------------------------------------------

fn sweep_loop(shared: &Shared, stop: &Receiver<()>, tick: Duration) {
    let ticker = crossbeam_channel::tick(tick);
    loop {
        select! {
            // Nothing is ever sent: the sender is dropped to stop.
            recv(stop) -> _ => return,
            recv(ticker) -> _ => shared.lock().sweep(Instant::now()),
        }
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener, tls: Option<&native_tls::TlsAcceptor>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let tcp = match stream {
            Ok(tcp) => tcp,
            Err(err) => {
                log::warn!("devhub: accept failed: {err}");
                continue;
            }
        };
        let conn_shared = Arc::clone(shared);
        let tls = tls.cloned();
        let spawned = thread::Builder::new()
            .name("devhub-conn".to_string())
            .spawn(move || serve_tcp(&conn_shared, tcp, tls.as_ref()));
        match spawned {
            Ok(handle) => {
                let mut handles = shared.conn_threads.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                // Join the threads that are done so a long-running hub does not
                // pile up handles.
                let (done, running): (Vec<_>, Vec<_>) = handles.drain(..).partition(JoinHandle::is_finished);
                *handles = running;
                handles.push(handle);
                drop(handles);
                done.into_iter().for_each(join_logged);
            }
            Err(err) => log::error!("devhub: cannot spawn a connection thread: {err}"),
        }
    }
}

/// Sets the socket up, registers the connection, runs the handshakes and the
/// connection loop, and reports the disconnect.
fn serve_tcp(shared: &Shared, tcp: TcpStream, tls: Option<&native_tls::TlsAcceptor>) {
    let setup = tcp
        .set_read_timeout(Some(READ_POLL))
        .and_then(|()| tcp.set_nodelay(true))
        .and_then(|()| tcp.try_clone());
    let tcp_clone = match setup {
        Ok(clone) => clone,
        Err(err) => {
            log::warn!("devhub: cannot set up a connection: {err}");
            return;
        }
    };
    let (outbox_tx, outbox_rx) = crossbeam_channel::unbounded();
    let conn = shared.lock().register_conn(outbox_tx, tcp_clone);
    let served = match tls {
        None => handshake_ws(shared, tcp).map(|ws| run_connection(shared, conn, ws, &outbox_rx)),
        Some(acceptor) => handshake_tls(shared, acceptor, tcp)
            .and_then(|stream| handshake_ws(shared, stream))
            .map(|ws| run_connection(shared, conn, ws, &outbox_rx)),
    };
    let mut state = shared.lock();
    match served {
        Ok(()) => state.disconnect(conn, Instant::now()),
        Err(reason) => {
            state.conns.remove(&conn);
            log::debug!("devhub conn {conn}: handshake failed: {reason}");
            state.emit(DevHubEvent::HandshakeFailed { conn, reason });
        }
    }
}

fn handshake_tls(
    shared: &Shared,
    acceptor: &native_tls::TlsAcceptor,
    tcp: TcpStream,
) -> Result<native_tls::TlsStream<TcpStream>, String> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut result = acceptor.accept(tcp);
    loop {
        match result {
            Ok(stream) => return Ok(stream),
            Err(native_tls::HandshakeError::WouldBlock(mid)) => {
                if shared.stopping.load(Ordering::SeqCst) || Instant::now() > deadline {
                    return Err("tls handshake interrupted".to_string());
                }
                result = mid.handshake();
            }
            Err(native_tls::HandshakeError::Failure(err)) => return Err(format!("tls: {err}")),
        }
    }
}

fn handshake_ws<S: Read + Write>(shared: &Shared, stream: S) -> Result<WebSocket<S>, String> {
    // The real hub serves the socket on /ws only; anything else is a 404, which
    // catches a wrong hub_url early. The Result type is tungstenite's callback
    // signature, large error variant included.
    #[allow(clippy::result_large_err)]
    let check_path = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() == "/ws" {
            Ok(response)
        } else {
            let mut not_found = ErrorResponse::new(Some("not found".to_string()));
            *not_found.status_mut() = tungstenite::http::StatusCode::NOT_FOUND;
            Err(not_found)
        }
    };
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut result = tungstenite::accept_hdr(stream, check_path);
    loop {
        match result {
            Ok(ws) => return Ok(ws),
            Err(HandshakeError::Interrupted(mid)) => {
                if shared.stopping.load(Ordering::SeqCst) || Instant::now() > deadline {
                    return Err("websocket handshake interrupted".to_string());
                }
                result = mid.handshake();
            }
            Err(HandshakeError::Failure(err)) => return Err(format!("websocket: {err}")),
        }
    }
}

/// The connection loop: drain the outbox, read one frame (or time out after
/// `READ_POLL`), handle it, repeat until the socket or the hub goes away.
fn run_connection<S: Read + Write>(
    shared: &Shared,
    conn: u64,
    mut ws: WebSocket<S>,
    outbox: &Receiver<Outgoing>,
) {
    let idle_timeout = {
        let state = shared.lock();
        state.emit(DevHubEvent::Connected { conn });
        state.idle_timeout
    };
    let mut last_heard = Instant::now();
    loop {
        if idle_timeout.is_some_and(|idle| last_heard.elapsed() >= idle) && !shared.lock().silent {
            close(shared, conn, &mut ws, 1002, "idle timeout", CLOSE_GRACE);
            return;
        }
        if shared.stopping.load(Ordering::SeqCst) {
            close(shared, conn, &mut ws, 1001, "hub stopping", STOP_CLOSE_GRACE);
            return;
        }
        while let Ok(outgoing) = outbox.try_recv() {
            match outgoing {
                Outgoing::Frame(frame) => {
                    if shared.lock().silent {
                        log::debug!("devhub conn {conn} -> (silent) {}", redact_token(&frame));
                        shared.lock().emit(DevHubEvent::Suppressed { conn, frame });
                    } else if !send(shared, conn, &mut ws, frame) {
                        return;
                    }
                }
                Outgoing::Close { code, reason } => {
                    close(shared, conn, &mut ws, code, &reason, CLOSE_GRACE);
                    return;
                }
            }
        }
        let read = ws.read();
        if read.is_ok() {
            last_heard = Instant::now();
        }
        let replies = match read {
            Ok(Message::Text(text)) => receive(shared, conn, text.as_str()),
            Ok(Message::Binary(bytes)) => {
                // The real hub only handles text frames; its handler crashes on
                // anything else and the socket goes down.
                let text = String::from_utf8_lossy(&bytes).into_owned();
                shared.lock().emit(DevHubEvent::ReceivedText { conn, text });
                vec![Reply::Close { code: 1003, reason: "text frames only".to_string() }]
            }
            // Pings are answered by tungstenite; a close is answered by it too,
            // and the next read reports ConnectionClosed.
            Ok(_) => Vec::new(),
            Err(tungstenite::Error::Io(err))
                if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
            {
                Vec::new()
            }
            Err(err) => {
                log::debug!("devhub conn {conn}: read ended: {err}");
                return;
            }
        };
        for reply in replies {
            match reply {
                Reply::Frame(frame) => {
                    if !send(shared, conn, &mut ws, frame) {
                        return;
                    }
                }
                Reply::Close { code, reason } => {
                    close(shared, conn, &mut ws, code, &reason, CLOSE_GRACE);
                    return;
                }
                Reply::Emit(event) => shared.lock().emit(event),
            }
        }
    }
}

/// Records a text frame and, unless the hub is silent, handles it.
fn receive(shared: &Shared, conn: u64, text: &str) -> Vec<Reply> {
    let frame: Value = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(_) => {
            log::debug!("devhub conn {conn} <- (not JSON) {} bytes", text.len());
            let state = shared.lock();
            state.emit(DevHubEvent::ReceivedText { conn, text: text.to_string() });
            if state.silent {
                return Vec::new();
            }
            return vec![error_reply("invalid_json")];
        }
    };
    log::debug!("devhub conn {conn} <- {}", redact_token(&frame));
    let mut state = shared.lock();
    state.emit(DevHubEvent::Received { conn, frame: frame.clone() });
    if state.silent {
        return Vec::new();
    }
    state.handle_frame(conn, &frame, Instant::now())
}

fn send<S: Read + Write>(shared: &Shared, conn: u64, ws: &mut WebSocket<S>, frame: Value) -> bool {
    let text = frame.to_string();
    match ws.send(Message::text(text)) {
        Ok(()) => {
            log::debug!("devhub conn {conn} -> {}", redact_token(&frame));
            shared.lock().emit(DevHubEvent::Sent { conn, frame });
            true
        }
        Err(err) => {
            log::debug!("devhub conn {conn}: write failed: {err}");
            false
        }
    }
}

/// Sends a close frame, then keeps reading (which flushes) until the peer's
/// close arrives or `grace` runs out.
fn close<S: Read + Write>(
    shared: &Shared,
    conn: u64,
    ws: &mut WebSocket<S>,
    code: u16,
    reason: &str,
    grace: Duration,
) {
    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.to_string().into() };
    if ws.close(Some(frame)).is_err() {
        return;
    }
    shared.lock().emit(DevHubEvent::ClosedByHub { conn, code, reason: reason.to_string() });
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::Io(err))
                if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_errors(frame: Value, expected: &[(&str, &str)]) {
        let object = frame.as_object().expect("test frames are objects");
        let schema = schema_for(object["type"].as_str().unwrap()).expect("known type");
        let errors = validate(object, schema);
        let got: Vec<(String, String)> = errors
            .iter()
            .map(|e| (e["field"].as_str().unwrap().to_string(), e["error"].as_str().unwrap().to_string()))
            .collect();
        let expected: Vec<(String, String)> =
            expected.iter().map(|(f, e)| (f.to_string(), e.to_string())).collect();
        assert_eq!(got, expected, "{frame}");
    }

    #[test]
    fn validation_follows_the_hub_schemas() {
        check_errors(json!({"type": "ping"}), &[]);
        check_errors(json!({"type": "ping", "protocol_version": 1}), &[]);
        check_errors(
            json!({"type": "identify", "agent_id": "a1", "token": "t", "capabilities": ["code"]}),
            &[],
        );
        check_errors(json!({"type": "identify", "agent_id": "a1"}), &[("token", "required")]);
        check_errors(
            json!({"type": "identify", "agent_id": "a1", "token": "t", "capabilities": ["code", 1]}),
            &[("capabilities[1]", "wrong_type")],
        );
        check_errors(
            json!({"type": "task_complete", "task_id": "t1", "result": {}}),
            &[("generation", "required")],
        );
        check_errors(
            json!({"type": "task_complete", "task_id": "t1", "generation": 1.5}),
            &[("generation", "wrong_type")],
        );
        check_errors(
            json!({"type": "task_complete", "task_id": "t1", "generation": 1, "result": "done"}),
            &[("result", "wrong_type")],
        );
        check_errors(
            json!({"type": "task_failed", "task_id": "t1", "generation": 1, "reason": "x".repeat(2001)}),
            &[("reason", "too_long")],
        );
        check_errors(json!({"type": "task_accepted"}), &[("task_id", "required")]);
    }

    #[test]
    fn a_malformed_token_is_never_echoed() {
        let frame = json!({"type": "identify", "agent_id": "a1", "token": 12345});
        let errors = validate(frame.as_object().unwrap(), schema_for("identify").unwrap());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].get("value").is_none(), "{}", errors[0]);
    }

    #[test]
    fn redact_token_hides_every_token_key() {
        let frame = json!({
            "type": "identify", "agent_id": "a1", "token": "s3cret",
            "nested": {"token": "again", "list": [{"token": "third"}]}
        });
        let redacted = redact_token(&frame).to_string();
        assert!(!redacted.contains("s3cret"), "{redacted}");
        assert!(!redacted.contains("again"), "{redacted}");
        assert!(!redacted.contains("third"), "{redacted}");
        assert_eq!(redact_token(&frame)["agent_id"], "a1");
        assert_eq!(redact_token(&frame)["token"], "<redacted>");
    }

    #[test]
    fn task_ids_look_like_the_real_hub_ones() {
        let (events, _events_rx) = crossbeam_channel::unbounded();
        let mut state = HubState::new(&DevHubOptions::new("a1", "t1"), events);
        for _ in 0..100 {
            let task_id = state.new_task_id();
            let hex = task_id.strip_prefix("task-").expect("task- prefix");
            assert_eq!(hex.len(), 16, "{task_id}");
            assert!(hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{task_id}");
            state.create_task(&task_id, "a1", "", json!({}));
        }
        assert_eq!(state.tasks.len(), 100);
    }

    #[test]
    fn options_debug_hides_tokens() {
        let options = DevHubOptions::new("a1", "s3cret");
        let printed = format!("{options:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("a1"), "{printed}");
    }

    #[test]
    fn start_refuses_a_non_loopback_address() {
        let mut options = DevHubOptions::new("a1", "t1");
        options.bind = SocketAddr::from(([0, 0, 0, 0], 0));
        let err = DevHub::start(options).err().expect("0.0.0.0 is refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
