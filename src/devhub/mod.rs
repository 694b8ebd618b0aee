//! The development hub: a small stand-in for the AgentCom hub that speaks the
//! hub side of docs/protocol.md on a loopback address. The integration tests start
//! one in-process on port 0; `src/bin/agentcom-devhub.rs` wraps it so a person
//! can try a wake command without the real hub.
//!
//! It plays one of two real hub versions of notno/AgentCom ([`HubVersion`]:
//! cbf9c20, the old one, or 4718a58, the newest and the default) closely
//! enough to show a sidecar what each does to it: replies and error shapes,
//! 4718a58's schema validation, violation counting with its 1008 close and
//! cooldowns, and rate limits; cbf9c20's 1011 close on `task_failed`; taking
//! a task back when a socket drops and pushing it again two generations
//! higher; the scheduler's race that pushes a second task to a busy agent;
//! each agent's state machine (`AgentFSM`: idle, assigned, working). Where a
//! hub behaviour is modelled, a comment names its source file (under
//! lib/agent_com/), line and version.
//!
//! It is a separate program that shares no code with the sidecar: the sidecar
//! never uses this module, and this module uses nothing of the sidecar's.
//!
//! Layout: this file is the handle a test or the `agentcom-devhub` binary
//! holds (`DevHub`, `DevHubOptions`); `profile.rs` the two versions and their
//! limits; `observe.rs` what can be observed (events, task and agent
//! snapshots); `state.rs` the hub's bookkeeping, free of sockets;
//! `schedule.rs` how work is handed out and taken back; `dispatch.rs` how each
//! frame is answered; `guard.rs` 4718a58's violation counter, cooldowns and
//! token buckets; `schema.rs` the wire schema and error shapes; `net.rs` the
//! threads that move frames between sockets and the state; `prompt.rs` the
//! commands a person types. `state_tests.rs` and `profile_tests.rs` test the
//! state and both profiles without a socket, with injected time. The shared
//! state sits behind one `Mutex`: this is a test tool and simplicity wins
//! over the sidecar's own "one loop owns the state" rule. Every connection
//! event and every frame in and out is reported, in order, on the
//! `DevHubEvent` channel.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use serde_json::Value;

mod dispatch;
mod guard;
mod net;
mod observe;
mod profile;
#[cfg(test)]
mod profile_tests;
pub mod prompt;
mod schedule;
mod schema;
mod state;
#[cfg(test)]
mod state_tests;

pub use observe::{AgentSnapshot, AgentState, DevHubEvent, Outcome, OutcomeKind, TaskSnapshot, TaskStatus};
pub use profile::{Bucket, HubLimits, HubVersion};

use net::{accept_loop, join_logged, sweep_loop, Shared};
use state::{HubState, Outgoing, Task};

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
    /// Which real hub to play. Default the newest, 4718a58.
    pub hub_version: HubVersion,
    /// The limits it enforces (violations, cooldowns, rate limits, stuck
    /// sweep). Default the real hub's.
    pub limits: HubLimits,
    /// How many times the scheduler's race pushes a second queued task to an
    /// agent right after making it busy (each race happens once, at the next
    /// scheduling run that has two queued tasks for an idle agent). Default 0.
    pub second_push_races: u32,
    /// The scheduler's run after an identify (agent_joined) pushes only once
    /// the hub has answered that connection's next frame, or at the first
    /// sweep 100 ms after identify if none comes: the order issue 9 saw on
    /// the real hubs, where a restarted sidecar's `task_recovering` is
    /// answered `task_reassign` before the re-push. Default false: the push
    /// follows `identified` at once (the hubs' push is asynchronous, so both
    /// orders are real).
    pub late_join_push: bool,
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
            hub_version: HubVersion::default(),
            limits: HubLimits::default(),
            second_push_races: 0,
            late_join_push: false,
        }
    }

    /// The same, playing `version`.
    pub fn for_version(agent_id: &str, token: &str, version: HubVersion) -> Self {
        DevHubOptions { hub_version: version, ..DevHubOptions::new(agent_id, token) }
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
            .field("hub_version", &self.hub_version)
            .field("limits", &self.limits)
            .field("second_push_races", &self.second_push_races)
            .field("late_join_push", &self.late_join_push)
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
        // The sweep looks at acceptance windows, stuck tasks and the end of
        // rate-limit skips and late pushes after identify: a tenth of the shortest, within 5 ms..1 s.
        let late_join = if options.late_join_push { Duration::from_millis(100) } else { Duration::MAX };
        let shortest = [
            options.accept_timeout,
            options.limits.stuck_after(options.hub_version, false),
            options.limits.rate_limited_for,
            late_join,
        ]
        .into_iter()
        .min()
        .unwrap_or(options.accept_timeout);
        let sweep_tick = (shortest / 10).clamp(Duration::from_millis(5), Duration::from_secs(1));
        let shared = Arc::new(Shared {
            state: Mutex::new(HubState::new(&options, events_tx)),
            stopping: AtomicBool::new(false),
            conn_threads: Mutex::new(Vec::new()),
            sockets: Mutex::new(HashMap::new()),
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
        self.shared.lock().push_now(agent_id, task_id, description, metadata, Instant::now())
    }

    /// Makes the hub know `task_id` as assigned to `agent_id` at `generation`,
    /// without pushing anything (recovery tests). An agent that identifies
    /// afterwards adopts it as its current task, acceptance window included,
    /// as the real hub's state machine does on start.
    pub fn seed_task(&self, task_id: &str, generation: u64, agent_id: &str) {
        self.shared.lock().seed(task_id, generation, agent_id);
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
        let conns = self.shared.lock().conns_of(agent_id);
        let sockets = self.shared.sockets();
        for conn in conns {
            if let Some(tcp) = sockets.get(&conn) {
                let _ = tcp.shutdown(Shutdown::Both);
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

    /// Queues a task as [`DevHub::push_task`] does, with extra `task_assign`
    /// fields (an object) sent on top of the version's own: a future hub's
    /// fields, or values for 4718a58's enrichment keys.
    pub fn push_task_with(&self, agent_id: &str, description: &str, metadata: Value, extra: Value) -> String {
        let mut state = self.shared.lock();
        let task_id = state.new_task_id();
        state.create_task(&task_id, agent_id, description, metadata);
        state.set_extra(&task_id, extra);
        state.schedule(Instant::now(), None);
        task_id
    }

    /// An operator's cancel: the task is deleted, its agent gets
    /// `task_cancelled` and goes idle. False for an unknown or finished task.
    pub fn cancel_task(&self, task_id: &str) -> bool {
        self.shared.lock().cancel(task_id, Instant::now())
    }

    /// Sends `restart_sidecar` with `reason`, as 4718a58 does on an admin's
    /// restart. False when the agent has no identified connection.
    pub fn restart_sidecar(&self, agent_id: &str, reason: &str) -> bool {
        self.send_raw(agent_id, serde_json::json!({"type": "restart_sidecar", "reason": reason}))
    }

    /// Closes the agent's connections as 4718a58 does at its tenth violation
    /// in a minute (1008 "too many validation errors") and records the close,
    /// so its next identify meets the cooldown.
    pub fn close_for_violations(&self, agent_id: &str) {
        let mut state = self.shared.lock();
        state.record_violation_close(agent_id, Instant::now());
        for conn in state.conns_of(agent_id) {
            let reason = dispatch::TOO_MANY_VIOLATIONS.to_string();
            state.send_to_conn(conn, Outgoing::Close { code: 1008, reason });
        }
    }

    /// Which real hub this one plays.
    pub fn version(&self) -> HubVersion {
        self.shared.lock().version
    }

    /// The agent's state machine as the hub keeps it, `None` when it has no
    /// identified connection.
    pub fn agent(&self, agent_id: &str) -> Option<AgentSnapshot> {
        self.shared.lock().agent_snapshot(agent_id, Instant::now())
    }

    /// Every schema violation counted on the agent's identified connections
    /// since the hub started.
    pub fn violations(&self, agent_id: &str) -> u32 {
        self.shared.lock().violations_total.get(agent_id).copied().unwrap_or(0)
    }

    /// How many times the agent was closed with 1008 for violations.
    pub fn violation_closes(&self, agent_id: &str) -> u32 {
        self.shared.lock().backoffs.get(agent_id).map_or(0, |backoff| backoff.closes)
    }

    /// A fresh `task-` + 16 hex digits id, unique in this hub.
    pub fn new_task_id(&self) -> String {
        self.shared.lock().new_task_id()
    }

    /// Every task the hub knows, oldest first.
    pub fn tasks(&self) -> Vec<TaskSnapshot> {
        let state = self.shared.lock();
        let mut tasks: Vec<&Task> = state.tasks.values().collect();
        tasks.sort_by_key(|task| task.created_seq);
        tasks.into_iter().map(Task::snapshot).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
