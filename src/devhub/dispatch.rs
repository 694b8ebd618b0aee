//! How the hub answers each frame a sidecar sends, in the real hub's order:
//! validate against the schema, rate-limit (identified connections only),
//! then dispatch by type.

use std::time::Instant;

use serde_json::{json, Map, Value};

use super::schema::{
    error_reply, field_error, rate_limit_tier, schema_for, type_name, validate, validation_failed,
};
use super::state::{
    now_ms, AgentFsm, AgentPhase, DevHubEvent, HubState, Outcome, OutcomeKind, Reply, Task, TaskStatus,
};

impl HubState {
    /// Handles one JSON frame from `conn`, in the real hub's order: validate,
    /// rate-limit (identified only), then dispatch.
    pub(super) fn handle_frame(&mut self, conn: u64, frame: &Value, now: Instant) -> Vec<Reply> {
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

    pub(super) fn identify(&mut self, conn: u64, object: &Map<String, Value>, now: Instant) -> Vec<Reply> {
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

    pub(super) fn task_accepted(&mut self, agent_id: &str, task_id: &str) -> Vec<Reply> {
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
    pub(super) fn check_report(&mut self, task_id: &str, generation: i64) -> Result<&mut Task, &'static str> {
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
    pub(super) fn release_current(&mut self, task_id: &str) {
        for fsm in self.agents.values_mut() {
            if fsm.current_task.as_deref() == Some(task_id) {
                fsm.phase = AgentPhase::Idle;
                fsm.current_task = None;
            }
        }
    }

    pub(super) fn task_complete(
        &mut self,
        object: &Map<String, Value>,
        task_id: &str,
        now: Instant,
    ) -> Vec<Reply> {
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

    pub(super) fn task_failed(
        &mut self,
        object: &Map<String, Value>,
        task_id: &str,
        now: Instant,
    ) -> Vec<Reply> {
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

    pub(super) fn task_recovering(&mut self, agent_id: &str, task_id: &str) -> Vec<Reply> {
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
