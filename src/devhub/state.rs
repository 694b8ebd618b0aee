//! The hub's bookkeeping, free of sockets: its task queue (generations,
//! assignment, taking back, retries), each agent's state machine, and which
//! connection an agent speaks on. Frames out go to per-connection outboxes
//! (channels the network loop drains) and events to the `DevHubEvent` channel,
//! so every rule here is tested by calling methods and reading channels.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use serde_json::{json, Value};

use super::DevHubOptions;

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

pub(super) enum Outgoing {
    Frame(Value),
    Close { code: u16, reason: String },
}

/// What a connection thread does after handling one frame, in order.
#[derive(Debug)]
pub(super) enum Reply {
    Frame(Value),
    Close { code: u16, reason: String },
    Emit(DevHubEvent),
}

pub(super) struct ConnEntry {
    pub(super) agent_id: Option<String>,
    pub(super) outbox: Sender<Outgoing>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum AgentPhase {
    Idle,
    Assigned { accept_deadline: Instant },
    Working,
}

/// The hub's per-agent state machine (`AgentFSM`), one per identified agent.
pub(super) struct AgentFsm {
    /// The connection that identified last; only its loss takes the task back.
    pub(super) conn: u64,
    pub(super) phase: AgentPhase,
    /// Set whenever `phase` is not `Idle`.
    pub(super) current_task: Option<String>,
}

pub(super) struct Task {
    pub(super) task_id: String,
    pub(super) description: String,
    pub(super) metadata: Value,
    /// Creation order; the queue hands out the oldest queued task first.
    pub(super) created_seq: u64,
    pub(super) generation: u64,
    pub(super) status: TaskStatus,
    pub(super) assigned_to: Option<String>,
    /// Kept when the task is taken back, so that agent can get it back.
    pub(super) last_assigned_to: Option<String>,
    /// The agent whose queue the task is in.
    pub(super) target_agent: String,
    pub(super) accepted: bool,
    pub(super) n_failures: u32,
    pub(super) outcomes: Vec<Outcome>,
    pub(super) progress: Vec<Value>,
}

impl Task {
    pub(super) fn snapshot(&self) -> TaskSnapshot {
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

pub(super) struct HubState {
    pub(super) tokens: HashMap<String, String>,
    pub(super) accept_timeout: Duration,
    pub(super) max_retries: u32,
    pub(super) repush_on_identify: bool,
    pub(super) idle_timeout: Option<Duration>,
    /// Dead-lettered tasks stay here with `DeadLetter` status but, as in the
    /// real hub (which moves them to another table), the protocol no longer
    /// finds them.
    pub(super) tasks: HashMap<String, Task>,
    pub(super) next_task_seq: u64,
    pub(super) next_conn: u64,
    pub(super) conns: HashMap<u64, ConnEntry>,
    pub(super) agents: HashMap<String, AgentFsm>,
    pub(super) silent: bool,
    pub(super) crash_on_task_failed: bool,
    /// `(frame type, retry_after_ms)`, oldest first.
    pub(super) rate_limits: Vec<(String, u64)>,
    pub(super) events: Sender<DevHubEvent>,
    pub(super) id_seed: RandomState,
}

impl HubState {
    pub(super) fn new(options: &DevHubOptions, events: Sender<DevHubEvent>) -> HubState {
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

    pub(super) fn emit(&self, event: DevHubEvent) {
        // Nobody reading events is fine: the hub keeps working.
        let _ = self.events.send(event);
    }

    /// `task-` + 16 lowercase hex digits, unique in this hub.
    pub(super) fn new_task_id(&mut self) -> String {
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

    pub(super) fn create_task(&mut self, task_id: &str, agent_id: &str, description: &str, metadata: Value) {
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

    pub(super) fn send_to_conn(&self, conn: u64, outgoing: Outgoing) -> bool {
        match self.conns.get(&conn) {
            Some(entry) => entry.outbox.send(outgoing).is_ok(),
            None => false,
        }
    }

    pub(super) fn send_to_agent(&self, agent_id: &str, frame: Value) -> bool {
        match self.agents.get(agent_id) {
            Some(fsm) => self.send_to_conn(fsm.conn, Outgoing::Frame(frame)),
            None => false,
        }
    }

    /// Bumps the generation, marks the task assigned and returns the
    /// `task_assign` frame. The caller updates the agent and pushes.
    pub(super) fn assign_task(&mut self, task_id: &str, agent_id: &str) -> Value {
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
    pub(super) fn take_back(&mut self, task_id: &str, reason: &str) {
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
    pub(super) fn schedule(&mut self, now: Instant, identifying: Option<&str>) {
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
    pub(super) fn sweep(&mut self, now: Instant) {
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

    pub(super) fn register_conn(&mut self, outbox: Sender<Outgoing>) -> u64 {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(conn, ConnEntry { agent_id: None, outbox });
        conn
    }

    pub(super) fn disconnect(&mut self, conn: u64, now: Instant) {
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

    /// Assigns `task_id` to `agent_id` (creating it if new) and pushes it at
    /// once, busy agent or not; returns the new generation. An idle agent's
    /// state machine takes it as its current task, with an acceptance window;
    /// a busy one ignores it, as the real hub's does.
    pub(super) fn push_now(
        &mut self,
        agent_id: &str,
        task_id: &str,
        description: &str,
        metadata: Value,
        now: Instant,
    ) -> u64 {
        if let Some(task) = self.tasks.get_mut(task_id) {
            task.description = description.to_string();
            task.metadata = metadata;
            task.target_agent = agent_id.to_string();
        } else {
            self.create_task(task_id, agent_id, description, metadata);
        }
        let frame = self.assign_task(task_id, agent_id);
        let generation = self.tasks[task_id].generation;
        let accept_deadline = now + self.accept_timeout;
        if let Some(fsm) = self.agents.get_mut(agent_id) {
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
        self.send_to_agent(agent_id, frame);
        generation
    }

    /// Makes the hub know `task_id` as assigned to `agent_id` at `generation`,
    /// without pushing anything.
    pub(super) fn seed(&mut self, task_id: &str, generation: u64, agent_id: &str) {
        if !self.tasks.contains_key(task_id) {
            self.create_task(task_id, agent_id, "", json!({}));
        }
        if let Some(task) = self.tasks.get_mut(task_id) {
            task.generation = generation;
            task.status = TaskStatus::Assigned;
            task.assigned_to = Some(agent_id.to_string());
            task.last_assigned_to = Some(agent_id.to_string());
            task.target_agent = agent_id.to_string();
            task.accepted = false;
        }
    }

    /// The connections identified as `agent_id`.
    pub(super) fn conns_of(&self, agent_id: &str) -> Vec<u64> {
        let mut conns: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, entry)| entry.agent_id.as_deref() == Some(agent_id))
            .map(|(conn, _)| *conn)
            .collect();
        conns.sort_unstable();
        conns
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
