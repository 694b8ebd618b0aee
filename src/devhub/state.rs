//! The hub's bookkeeping, free of sockets: its tasks, each agent's state
//! machine, the protocol guards, and which connection an agent speaks on.
//! Frames out go to per-connection outboxes (channels the network loop
//! drains) and events to the `DevHubEvent` channel, and time is passed in, so
//! every rule is tested by calling methods and reading channels
//! (`state_tests.rs`). `schedule.rs` hands out the work, `dispatch.rs`
//! answers the frames.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;
use serde_json::{json, Map, Value};

use super::guard::{Backoff, Tier, TokenBucket, Violations};
use super::observe::{AgentSnapshot, AgentState, DevHubEvent, Outcome, TaskSnapshot, TaskStatus};
use super::profile::{HubLimits, HubVersion};
use super::DevHubOptions;

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
    pub(super) violations: Violations,
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
    /// Extra `task_assign` fields, sent as given on top of the version's own.
    pub(super) extra: Map<String, Value>,
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
    /// What the stuck sweep looks at: set by an assignment, `task_accepted`
    /// and `task_progress` (both versions), a successful `wake_result` and a
    /// `state_report` answered `continue` (4718a58).
    pub(super) updated_at: Instant,
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

    /// Assigned to someone at exactly `generation`.
    pub(super) fn is_assigned_at(&self, generation: i64) -> bool {
        self.status == TaskStatus::Assigned && i64::try_from(self.generation).ok() == Some(generation)
    }
}

pub(super) struct HubState {
    pub(super) version: HubVersion,
    pub(super) limits: HubLimits,
    pub(super) tokens: HashMap<String, String>,
    pub(super) accept_timeout: Duration,
    pub(super) max_retries: u32,
    pub(super) repush_on_identify: bool,
    pub(super) idle_timeout: Option<Duration>,
    /// How many more times the scheduler's race pushes a second task to an
    /// agent it has just made busy.
    pub(super) second_push_races: u32,
    pub(super) late_join_push: bool,
    /// With `late_join_push`: connections whose scheduling after identify
    /// waits for their next frame, with the time of the identify.
    pub(super) pending_join: HashMap<u64, Instant>,
    /// Dead-lettered and cancelled tasks stay here but, as in the real hub
    /// (which moves or deletes them), the protocol no longer finds them.
    pub(super) tasks: HashMap<String, Task>,
    pub(super) next_task_seq: u64,
    pub(super) next_conn: u64,
    pub(super) conns: HashMap<u64, ConnEntry>,
    pub(super) agents: HashMap<String, AgentFsm>,
    pub(super) silent: bool,
    pub(super) crash_on_task_failed: bool,
    /// `(frame type, retry_after_ms)`, oldest first: one-shot denials a test
    /// or a person asked for, on either version.
    pub(super) rate_limits: Vec<(String, u64)>,
    pub(super) buckets: HashMap<(String, Tier), TokenBucket>,
    /// Agents the scheduler skips after a denial, until then.
    pub(super) rate_limited_until: HashMap<String, Instant>,
    pub(super) backoffs: HashMap<String, Backoff>,
    /// Every violation counted on an identified connection, per agent.
    pub(super) violations_total: HashMap<String, u32>,
    pub(super) events: Sender<DevHubEvent>,
    pub(super) id_seed: RandomState,
}

impl HubState {
    pub(super) fn new(options: &DevHubOptions, events: Sender<DevHubEvent>) -> HubState {
        HubState {
            version: options.hub_version,
            limits: options.limits.clone(),
            tokens: options.tokens.clone(),
            accept_timeout: options.accept_timeout,
            max_retries: options.max_retries,
            repush_on_identify: options.repush_on_identify,
            idle_timeout: options.idle_timeout,
            second_push_races: options.second_push_races,
            late_join_push: options.late_join_push,
            pending_join: HashMap::new(),
            tasks: HashMap::new(),
            next_task_seq: 0,
            next_conn: 1,
            conns: HashMap::new(),
            agents: HashMap::new(),
            silent: false,
            crash_on_task_failed: options.hub_version.crashes_on_task_failed(),
            rate_limits: Vec::new(),
            buckets: HashMap::new(),
            rate_limited_until: HashMap::new(),
            backoffs: HashMap::new(),
            violations_total: HashMap::new(),
            events,
            id_seed: RandomState::new(),
        }
    }

    pub(super) fn emit(&self, event: DevHubEvent) {
        // Nobody reading events is fine: the hub keeps working.
        let _ = self.events.send(event);
    }

    /// `task-` + 16 lowercase hex digits, unique in this hub
    /// (lib/agent_com/task_queue.ex:647-649 (cbf9c20), 1030-1032 (4718a58)).
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

    /// A queued task at generation 0 (task_queue.ex:202-225 (cbf9c20)).
    pub(super) fn create_task(&mut self, task_id: &str, agent_id: &str, description: &str, metadata: Value) {
        self.next_task_seq += 1;
        let task = Task {
            task_id: task_id.to_string(),
            description: description.to_string(),
            metadata,
            extra: Map::new(),
            created_seq: self.next_task_seq,
            generation: 0,
            status: TaskStatus::Queued,
            assigned_to: None,
            last_assigned_to: None,
            target_agent: agent_id.to_string(),
            accepted: false,
            updated_at: Instant::now(),
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
    /// `task_assign` frame, or `None` for an unknown task. The caller updates
    /// the agent and pushes.
    pub(super) fn assign_task(&mut self, task_id: &str, agent_id: &str, now: Instant) -> Option<Value> {
        let version = self.version;
        let task = self.tasks.get_mut(task_id)?;
        // Every assignment bumps the generation (task_queue.ex:318 (cbf9c20), 441 (4718a58)).
        task.generation += 1;
        task.status = TaskStatus::Assigned;
        task.assigned_to = Some(agent_id.to_string());
        task.last_assigned_to = Some(agent_id.to_string());
        task.accepted = false;
        task.updated_at = now;
        // socket.ex:156-171 (cbf9c20): exactly these six keys.
        let mut frame = json!({
            "type": "task_assign",
            "task_id": task.task_id,
            "description": task.description,
            "metadata": task.metadata,
            "generation": task.generation,
            "assigned_at": now_ms(),
        });
        if version == HubVersion::V4718a58 {
            // socket.ex:170-198 (4718a58): the enrichment keys are always present.
            let enrichment = json!({
                "repo": null,
                "branch": null,
                "file_hints": [],
                "success_criteria": [],
                "verification_steps": [],
                "complexity": null,
                "routing_decision": null,
                "skip_verification": false,
                "verification_timeout_ms": null,
                "max_verification_retries": 0,
            });
            if let (Some(frame), Value::Object(enrichment)) = (frame.as_object_mut(), enrichment) {
                frame.extend(enrichment);
            }
        }
        if let Some(frame) = frame.as_object_mut() {
            frame.extend(task.extra.clone());
        }
        Some(frame)
    }

    /// Puts an assigned task back in the queue one generation higher
    /// (reclaim_task: task_queue.ex:520-548 (cbf9c20), 785-817 (4718a58)).
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

    pub(super) fn register_conn(&mut self, outbox: Sender<Outgoing>) -> u64 {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(conn, ConnEntry { agent_id: None, outbox, violations: Violations::default() });
        conn
    }

    /// The socket is gone: the agent's state machine sees `:DOWN` and takes
    /// back its current task at once, no grace (agent_fsm.ex:422-430 (cbf9c20),
    /// 487-502 (4718a58)). Other tasks assigned to the agent stay assigned.
    pub(super) fn disconnect(&mut self, conn: u64, now: Instant) {
        let agent_id = self.conns.remove(&conn).and_then(|entry| entry.agent_id);
        self.pending_join.remove(&conn);
        if let Some(agent_id) = &agent_id {
            if self.agents.get(agent_id).is_some_and(|fsm| fsm.conn == conn) {
                if let Some(task_id) = self.agents.remove(agent_id).and_then(|fsm| fsm.current_task) {
                    self.take_back(&task_id, "disconnect");
                }
                self.schedule(now, None);
            }
        }
        self.emit(DevHubEvent::Disconnected { conn, agent_id });
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

    pub(super) fn agent_snapshot(&self, agent_id: &str, now: Instant) -> Option<AgentSnapshot> {
        let fsm = self.agents.get(agent_id)?;
        let state = match fsm.phase {
            AgentPhase::Idle => AgentState::Idle,
            AgentPhase::Assigned { .. } => AgentState::Assigned,
            AgentPhase::Working => AgentState::Working,
        };
        Some(AgentSnapshot {
            agent_id: agent_id.to_string(),
            conn: fsm.conn,
            state,
            current_task: fsm.current_task.clone(),
            violations: self.conns.get(&fsm.conn).map_or(0, |entry| entry.violations.count()),
            rate_limited: self.rate_limited_until.get(agent_id).is_some_and(|until| *until > now),
        })
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
