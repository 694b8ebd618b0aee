//! How the hub answers each frame a sidecar sends, in the real hub's order
//! (lib/agent_com/socket.ex: cbf9c20 87-92 and 188-379; 4718a58 91-106 and
//! 247-304): 4718a58 validates the frame against its schema and counts a
//! violation, then rate-limits an identified connection; both then dispatch
//! by type. Error frames carry no task id (socket.ex:439-442 (cbf9c20), 755-758
//! (4718a58)).

use std::time::Instant;

use serde_json::{json, Map, Value};

use super::guard::{cooldown_reason, Admit, Backoff, Tier, TokenBucket};
use super::observe::{DevHubEvent, Outcome, OutcomeKind, TaskStatus};
use super::schema::{
    error_reply, field_error, schema_for, type_name, unknown_type_error, validate, validation_failed,
};
use super::state::{now_ms, AgentFsm, AgentPhase, HubState, Reply};

/// The close of a connection that reached the violation limit
/// ((4718a58) socket.ex:720-734).
pub(super) const TOO_MANY_VIOLATIONS: &str = "too many validation errors";

impl HubState {
    /// Handles one JSON frame from `conn`.
    pub(super) fn handle_frame(&mut self, conn: u64, frame: &Value, now: Instant) -> Vec<Reply> {
        if self.version.validates() {
            if let Some((message_type, errors)) = schema_errors(frame) {
                return self.violation(conn, &message_type, errors, now);
            }
        }
        let Some(object) = frame.as_object() else {
            // Not reached on 4718a58 (a violation above); cbf9c20 has no
            // clause for it.
            return vec![error_reply("unknown_message_type")];
        };
        let frame_type = object.get("type").and_then(Value::as_str).unwrap_or("");
        let agent_id = self.conns.get(&conn).and_then(|entry| entry.agent_id.clone());
        let mut replies = Vec::new();
        // Every frame of an identified connection, identify too (heavy)
        // ((4718a58) socket.ex:249-304).
        if let Some(agent_id) = &agent_id {
            match self.admit(agent_id, frame_type, now) {
                Ok(None) => {}
                Ok(Some(warning)) => replies.push(Reply::Frame(warning)),
                Err(denied) => return vec![denied],
            }
        }
        if frame_type == "identify" {
            replies.extend(self.identify(conn, object, agent_id.is_some(), now));
            return replies;
        }
        let Some(agent_id) = agent_id else {
            return vec![error_reply("not_identified")];
        };
        let task_id = object.get("task_id").and_then(Value::as_str).unwrap_or("");
        let reports = self.version.has_reports();
        replies.extend(match frame_type {
            "ping" => vec![Reply::Frame(json!({"type": "pong", "timestamp": now_ms()}))],
            "task_accepted" => self.task_accepted(&agent_id, task_id, now),
            "task_progress" => {
                // No reply; touches the task if it is assigned, to anyone
                // (socket.ex:311-316 (cbf9c20), 437-454 (4718a58)).
                if let Some(task) = self.tasks.get_mut(task_id) {
                    if task.status == TaskStatus::Assigned {
                        task.updated_at = now;
                    }
                    task.progress.push(frame.clone());
                }
                Vec::new()
            }
            "task_complete" => self.task_complete(&agent_id, object, task_id, now),
            "task_failed" => self.task_failed(&agent_id, object, task_id, now),
            "task_recovering" => self.task_recovering(task_id),
            "wake_result" if reports => {
                // No reply; a success touches the task ((4718a58) socket.ex:522-533).
                if object.get("status").and_then(Value::as_str) == Some("success") {
                    self.touch_assigned(task_id, now);
                }
                Vec::new()
            }
            "state_report" if reports => self.state_report(&agent_id, object, task_id, now),
            // cbf9c20's catch-all (socket.ex:377-379), also what 4718a58's
            // chat and report handlers would be: the devhub does not model them.
            _ => vec![error_reply("unknown_message_type")],
        });
        if self.pending_join.remove(&conn).is_some() {
            // The late push after identify goes through the outbox, after the
            // replies to this frame.
            self.schedule(now, Some(&agent_id));
        }
        replies
    }

    /// Counts a schema violation and answers it: `validation_failed`, or the
    /// 1008 close when the count reaches the limit, with no error frame for
    /// that last one. A close of an identified connection is recorded for
    /// its agent's cooldown ((4718a58) socket.ex:707-739).
    fn violation(&mut self, conn: u64, message_type: &str, errors: Vec<Value>, now: Instant) -> Vec<Reply> {
        let Some(entry) = self.conns.get_mut(&conn) else {
            return vec![validation_failed(message_type, errors)];
        };
        let close = entry.violations.record(now, &self.limits);
        let count = entry.violations.count();
        let agent_id = entry.agent_id.clone();
        if let Some(agent_id) = &agent_id {
            *self.violations_total.entry(agent_id.clone()).or_default() += 1;
        }
        let event =
            Reply::Emit(DevHubEvent::Violation { conn, message_type: message_type.to_string(), count });
        if !close {
            return vec![validation_failed(message_type, errors), event];
        }
        if let Some(agent_id) = agent_id {
            self.record_violation_close(&agent_id, now);
        }
        vec![event, Reply::Close { code: 1008, reason: TOO_MANY_VIOLATIONS.to_string() }]
    }

    /// Records a 1008 close for the agent's cooldown
    /// ((4718a58) violation_tracker.ex:82-95).
    pub(super) fn record_violation_close(&mut self, agent_id: &str, now: Instant) {
        let closes = self.backoffs.get(agent_id).map_or(0, |backoff| backoff.closes);
        self.backoffs.insert(agent_id.to_string(), Backoff { closes: closes + 1, last_close: now });
    }

    /// The rate limiter, for an identified connection: `Ok(Some(warning))`
    /// to send before the frame's own reply, `Err(rate_limited)` when the
    /// frame is dropped. One-shot denials asked for by a test or a person
    /// apply on either version; the buckets are 4718a58's.
    fn admit(&mut self, agent_id: &str, frame_type: &str, now: Instant) -> Result<Option<Value>, Reply> {
        let tier = Tier::of(frame_type);
        let rate_limited = |retry_after_ms: u64| {
            Reply::Frame(
                json!({"type": "rate_limited", "retry_after_ms": retry_after_ms, "tier": tier.name()}),
            )
        };
        if let Some(idx) = self.rate_limits.iter().position(|(t, _)| t == frame_type) {
            let (_, retry_after_ms) = self.rate_limits.remove(idx);
            return Err(rate_limited(retry_after_ms));
        }
        if !self.version.rate_limits() {
            return Ok(None);
        }
        let bucket = tier.bucket(&self.limits);
        let tokens = self
            .buckets
            .entry((agent_id.to_string(), tier))
            .or_insert_with(|| TokenBucket::full(&bucket, now));
        match tokens.take(&bucket, now) {
            Admit::Allow => Ok(None),
            Admit::Warn { remaining, capacity } => Ok(Some(json!({
                "type": "rate_limit_warning",
                "tier": tier.name(),
                "remaining": remaining,
                "capacity": capacity,
            }))),
            Admit::Deny { retry_after_ms } => {
                let until = self.rate_limited_until.entry(agent_id.to_string()).or_insert(now);
                if *until <= now {
                    *until = now + self.limits.rate_limited_for;
                }
                Err(rate_limited(retry_after_ms))
            }
        }
    }

    fn identify(
        &mut self,
        conn: u64,
        object: &Map<String, Value>,
        identified: bool,
        now: Instant,
    ) -> Vec<Reply> {
        // cbf9c20 matches identify only with an agent_id (socket.ex:188).
        let Some(agent_id) = object.get("agent_id").and_then(Value::as_str) else {
            return vec![error_reply(if identified { "unknown_message_type" } else { "not_identified" })];
        };
        if self.version.validates() {
            // The cooldown is checked before auth, and only here
            // ((4718a58) socket.ex:311, 325-327).
            if let Some(left) = self.backoffs.get(agent_id).and_then(|b| b.cooldown_left(now, &self.limits)) {
                return vec![Reply::Close { code: 1008, reason: cooldown_reason(left) }];
            }
        }
        let token = object.get("token").and_then(Value::as_str).unwrap_or("");
        if self.tokens.get(agent_id).map(String::as_str) != Some(token) {
            let owned_by_other = self.tokens.values().any(|known| known == token);
            let error = if owned_by_other { "token_agent_mismatch" } else { "invalid_token" };
            // The socket stays open: the sidecar decides to close it
            // (socket.ex:191-198 (cbf9c20), 316-323 (4718a58)).
            return vec![error_reply(error)];
        }
        if let Some(entry) = self.conns.get_mut(&conn) {
            entry.agent_id = Some(agent_id.to_string());
        }
        // A new identify replaces the agent's state machine without taking its
        // task back (do_identify stops the old one: socket.ex:383-422 (cbf9c20),
        // 636-691 (4718a58)). The new one starts assigned with the oldest task
        // still assigned to the agent, acceptance window included, without
        // pushing it (agent_fsm.ex:177-221 (cbf9c20), 185-237 (4718a58)).
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
        // agent_joined triggers the scheduler (scheduler.ex:100 (cbf9c20), 127
        // (4718a58)); pushes go through the outbox, so they follow
        // `identified` on the wire.
        if self.late_join_push {
            self.pending_join.insert(conn, now);
        } else {
            self.schedule(now, Some(agent_id));
        }
        vec![
            Reply::Frame(json!({"type": "identified", "agent_id": agent_id})),
            Reply::Emit(DevHubEvent::Identified { conn, agent_id: agent_id.to_string() }),
        ]
    }

    /// Acked always, known task or not (socket.ex:302-309 (cbf9c20)); touches the
    /// task; moves the state machine to working only for its current task
    /// while assigned (agent_fsm.ex:275-301 (cbf9c20), 293-322 (4718a58)).
    fn task_accepted(&mut self, agent_id: &str, task_id: &str, now: Instant) -> Vec<Reply> {
        if let Some(fsm) = self.agents.get_mut(agent_id) {
            if matches!(fsm.phase, AgentPhase::Assigned { .. })
                && fsm.current_task.as_deref() == Some(task_id)
            {
                fsm.phase = AgentPhase::Working;
            }
        }
        if let Some(task) = self.tasks.get_mut(task_id) {
            if task.status == TaskStatus::Assigned {
                task.updated_at = now;
                if task.assigned_to.as_deref() == Some(agent_id) {
                    task.accepted = true;
                }
            }
        }
        vec![Reply::Frame(json!({"type": "task_ack", "task_id": task_id, "status": "accepted"}))]
    }

    fn touch_assigned(&mut self, task_id: &str, now: Instant) {
        if let Some(task) = self.tasks.get_mut(task_id) {
            if task.status == TaskStatus::Assigned {
                task.updated_at = now;
            }
        }
    }

    /// Checks a report as complete_task/fail_task do: only an assigned task
    /// at the same generation, whoever holds it (task_queue.ex:355-446 (cbf9c20),
    /// 484-630 (4718a58)). A missing generation counts as 0.
    fn check_report(&self, task_id: &str, object: &Map<String, Value>) -> Result<(), &'static str> {
        let generation = match object.get("generation") {
            None | Some(Value::Null) => 0,
            Some(value) => value.as_i64().unwrap_or(-1),
        };
        match self.tasks.get(task_id) {
            None => Err("not_found"),
            Some(task) if matches!(task.status, TaskStatus::DeadLetter | TaskStatus::Cancelled) => {
                Err("not_found")
            }
            Some(task) if task.is_assigned_at(generation) => Ok(()),
            Some(task) if task.status == TaskStatus::Assigned => Err("stale_generation"),
            Some(_) => Err("invalid_state"),
        }
    }

    /// A settled report casts task_completed/task_failed to the sender's
    /// state machine, which goes idle only from working, whatever the task
    /// (agent_fsm.ex:305-367 (cbf9c20), 326-358 and 394-425 (4718a58)).
    fn settle_agent(&mut self, agent_id: &str) {
        if let Some(fsm) = self.agents.get_mut(agent_id) {
            if fsm.phase == AgentPhase::Working {
                fsm.phase = AgentPhase::Idle;
                fsm.current_task = None;
            }
        }
    }

    fn task_complete(
        &mut self,
        agent_id: &str,
        object: &Map<String, Value>,
        task_id: &str,
        now: Instant,
    ) -> Vec<Reply> {
        if let Err(why) = self.check_report(task_id, object) {
            return vec![error_reply(&format!("task_complete_failed: {why}"))];
        }
        if let Some(task) = self.tasks.get_mut(task_id) {
            task.status = TaskStatus::Completed;
            task.outcomes.push(Outcome {
                generation: task.generation,
                kind: OutcomeKind::Completed,
                result: Some(object.get("result").cloned().unwrap_or_else(|| json!({}))),
                reason: None,
            });
        }
        self.settle_agent(agent_id);
        // The ack is written now; a next task goes through the outbox after it.
        self.schedule(now, None);
        vec![Reply::Frame(json!({"type": "task_ack", "task_id": task_id, "status": "complete"}))]
    }

    fn task_failed(
        &mut self,
        agent_id: &str,
        object: &Map<String, Value>,
        task_id: &str,
        now: Instant,
    ) -> Vec<Reply> {
        if let Err(why) = self.check_report(task_id, object) {
            return vec![error_reply(&format!("task_fail_failed: {why}"))];
        }
        if self.crash_on_task_failed {
            // cbf9c20: fail_task raises (KeyError on last_error,
            // task_queue.ex:399-428) before persisting anything, the socket
            // process exits with the TaskQueue and Bandit closes with 1011;
            // then the state machine's :DOWN takes back its current task.
            let current = self.agents.get_mut(agent_id).and_then(|fsm| {
                (fsm.current_task.as_deref() == Some(task_id)).then(|| {
                    fsm.phase = AgentPhase::Idle;
                    fsm.current_task.take()
                })
            });
            if current.flatten().is_some() {
                self.take_back(task_id, "hub_crash");
            }
            return vec![Reply::Close { code: 1011, reason: "internal error".to_string() }];
        }
        // Both prefer `error`, then `reason` (socket.ex:340 (cbf9c20), 483 (4718a58)).
        let reason = ["error", "reason"]
            .iter()
            .find_map(|key| object.get(*key).and_then(Value::as_str))
            .unwrap_or("unknown")
            .to_string();
        let max_retries = self.max_retries;
        let mut status = "retried";
        if let Some(task) = self.tasks.get_mut(task_id) {
            task.n_failures += 1;
            let kind = if task.n_failures >= max_retries {
                status = "dead_letter";
                task.status = TaskStatus::DeadLetter;
                OutcomeKind::DeadLetter
            } else {
                OutcomeKind::Retried
            };
            task.outcomes.push(Outcome {
                generation: task.generation,
                kind,
                result: None,
                reason: Some(reason),
            });
            if kind == OutcomeKind::Retried {
                task.generation += 1;
                task.status = TaskStatus::Queued;
                task.assigned_to = None;
                task.accepted = false;
            }
        }
        self.settle_agent(agent_id);
        // A retried task goes back in the queue and, with one agent, comes
        // straight back to it, after the ack.
        self.schedule(now, None);
        vec![Reply::Frame(json!({"type": "task_ack", "task_id": task_id, "status": status}))]
    }

    /// `task_continue` at the task's current generation when it is assigned,
    /// to anyone (recover_task checks the status only: task_queue.ex:451-462
    /// (cbf9c20), 633-644 (4718a58)); `task_reassign` otherwise. The re-push after a
    /// take-back comes from the scheduler, not from this answer.
    fn task_recovering(&mut self, task_id: &str) -> Vec<Reply> {
        let frame = match self.tasks.get(task_id) {
            Some(task) if task.status == TaskStatus::Assigned => {
                json!({"type": "task_continue", "task_id": task_id, "generation": task.generation})
            }
            _ => json!({"type": "task_reassign", "task_id": task_id}),
        };
        vec![Reply::Frame(frame)]
    }

    /// `continue` only for a task assigned to this agent at the reported
    /// generation (missing counts as 0), which it also touches; `abort` for
    /// anything else, with no other effect. The ack names no generation
    /// ((4718a58) socket.ex:537-585).
    fn state_report(
        &mut self,
        agent_id: &str,
        object: &Map<String, Value>,
        task_id: &str,
        now: Instant,
    ) -> Vec<Reply> {
        let generation = object.get("generation").and_then(Value::as_i64).unwrap_or(0);
        let action = match self.tasks.get_mut(task_id) {
            Some(task)
                if task.is_assigned_at(generation) && task.assigned_to.as_deref() == Some(agent_id) =>
            {
                task.updated_at = now;
                "continue"
            }
            _ => "abort",
        };
        vec![Reply::Frame(json!({"type": "state_report_ack", "task_id": task_id, "action": action}))]
    }
}

/// 4718a58's validation of a decoded frame ((4718a58) validation.ex:29-65):
/// `None` when it passes, else the `message_type` to name and the errors.
fn schema_errors(frame: &Value) -> Option<(String, Vec<Value>)> {
    let Some(object) = frame.as_object() else {
        let error = field_error("message", "wrong_type", "expected JSON object", None);
        return Some(("unknown".to_string(), vec![error]));
    };
    let frame_type = match object.get("type") {
        Some(Value::String(frame_type)) => frame_type.as_str(),
        Some(other) => {
            let detail = format!("expected string, got {}", type_name(other));
            return Some((
                "unknown".to_string(),
                vec![field_error("type", "wrong_type", &detail, Some(other))],
            ));
        }
        None => {
            return Some((
                "unknown".to_string(),
                vec![field_error("type", "required", "field is required", None)],
            ));
        }
    };
    let errors = match schema_for(frame_type) {
        None => vec![unknown_type_error(frame_type)],
        Some(schema) => validate(object, schema),
    };
    (!errors.is_empty()).then(|| (frame_type.to_string(), errors))
}
