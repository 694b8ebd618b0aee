//! How the hub hands out work: the scheduler (idle agents get the oldest
//! queued task), its race that pushes a second task to a busy agent, the
//! sweeps (acceptance window, stuck tasks), and the operator's pushes and
//! cancels.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::observe::TaskStatus;
use super::state::{now_ms, AgentPhase, HubState};

/// With `late_join_push`, how long after identify the push waits for a frame.
const LATE_JOIN_WAIT: Duration = Duration::from_millis(100);

impl HubState {
    /// Hands each idle identified agent its oldest queued task
    /// (try_schedule_all: scheduler.ex:160-173 (cbf9c20), 283-293 (4718a58); on
    /// 4718a58 a rate-limited agent is skipped). Right after `identifying`
    /// identifies, without `repush_on_identify`, tasks taken back from it are
    /// left in the queue.
    pub(super) fn schedule(&mut self, now: Instant, identifying: Option<&str>) {
        let mut idle_agents: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, fsm)| fsm.phase == AgentPhase::Idle)
            .filter(|(agent_id, _)| self.rate_limited_until.get(*agent_id).is_none_or(|until| *until <= now))
            .map(|(agent_id, _)| agent_id.clone())
            .collect();
        idle_agents.sort();
        for agent_id in idle_agents {
            let skip_taken_back = identifying == Some(agent_id.as_str()) && !self.repush_on_identify;
            let queued = |state: &HubState| {
                state
                    .tasks
                    .values()
                    .filter(|task| task.status == TaskStatus::Queued && task.target_agent == agent_id)
                    .filter(|task| {
                        !(skip_taken_back && task.last_assigned_to.as_deref() == Some(agent_id.as_str()))
                    })
                    .min_by_key(|task| task.created_seq)
                    .map(|task| task.task_id.clone())
            };
            let Some(task_id) = queued(self) else {
                continue;
            };
            let Some(frame) = self.assign_task(&task_id, &agent_id, now) else {
                continue;
            };
            // The push casts assign_task to the state machine: idle ->
            // assigned, with a 60 s acceptance timer (agent_fsm.ex:250-271
            // (cbf9c20), 266-289 (4718a58)).
            if let Some(fsm) = self.agents.get_mut(&agent_id) {
                fsm.phase = AgentPhase::Assigned { accept_deadline: now + self.accept_timeout };
                fsm.current_task = Some(task_id);
            }
            self.send_to_agent(&agent_id, frame);
            // The race: the state machine learns of a push only when the
            // socket process handles it, so a scheduling run in that window
            // still sees the agent idle and assigns it another task
            // (scheduler.ex:210-222 + socket.ex:156-168 (cbf9c20), scheduler.ex:
            // 593-630 + socket.ex:170-195 (4718a58)). The second cast is an
            // invalid transition and ignored: the task stays assigned to the
            // agent at its generation, with no acceptance timer, and a socket
            // drop does not take it back.
            if self.second_push_races > 0 {
                if let Some(second) = queued(self) {
                    if let Some(frame) = self.assign_task(&second, &agent_id, now) {
                        self.second_push_races -= 1;
                        self.send_to_agent(&agent_id, frame);
                    }
                }
            }
        }
    }

    /// Takes back every current task whose acceptance window has closed
    /// (agent_fsm.ex:434-461 (cbf9c20), 505-530 (4718a58): the machine goes idle
    /// even when the take-back finds the task no longer assigned), and every
    /// assigned task the stuck sweep finds untouched too long (scheduler.ex:
    /// 126-148 (cbf9c20), 193-247 (4718a58); the state machine is not told). Ends
    /// the scheduler's skip of rate-limited agents whose time is up: the real
    /// hub waits for the next scheduling trigger, the devhub schedules then.
    pub(super) fn sweep(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, fsm)| {
                matches!(fsm.phase, AgentPhase::Assigned { accept_deadline } if accept_deadline <= now)
            })
            .map(|(agent_id, _)| agent_id.clone())
            .collect();
        for agent_id in &expired {
            let current = self.agents.get_mut(agent_id).and_then(|fsm| {
                fsm.phase = AgentPhase::Idle;
                fsm.current_task.take()
            });
            if let Some(task_id) = current {
                self.take_back(&task_id, "accept_timeout");
            }
        }
        let stuck: Vec<String> = self
            .tasks
            .values()
            .filter(|task| task.status == TaskStatus::Assigned)
            .filter(|task| {
                let working = task
                    .assigned_to
                    .as_ref()
                    .and_then(|agent_id| self.agents.get(agent_id))
                    .is_some_and(|fsm| fsm.phase == AgentPhase::Working);
                now.saturating_duration_since(task.updated_at)
                    >= self.limits.stuck_after(self.version, working)
            })
            .map(|task| task.task_id.clone())
            .collect();
        for task_id in &stuck {
            self.take_back(task_id, "stuck");
        }
        let before = self.rate_limited_until.len();
        self.rate_limited_until.retain(|_, until| *until > now);
        let joins = self.pending_join.len();
        self.pending_join.retain(|_, identified| now.saturating_duration_since(*identified) < LATE_JOIN_WAIT);
        let changed = self.rate_limited_until.len() != before || self.pending_join.len() != joins;
        if !expired.is_empty() || !stuck.is_empty() || changed {
            self.schedule(now, None);
        }
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
        let Some(frame) = self.assign_task(task_id, agent_id, now) else {
            return 0;
        };
        let generation = self.tasks.get(task_id).map_or(0, |task| task.generation);
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

    /// Extra `task_assign` fields for `task_id` (an object; other values are
    /// ignored). False for an unknown task.
    pub(super) fn set_extra(&mut self, task_id: &str, extra: Value) -> bool {
        let Some(task) = self.tasks.get_mut(task_id) else {
            return false;
        };
        task.extra = match extra {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        true
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

    /// An operator's cancel (4718a58's TaskQueue.cancel_task,
    /// task_queue.ex:715-760): the task is deleted whatever its status, its
    /// agent's socket gets `task_cancelled`, and that agent's state machine
    /// goes idle even if its current task is another one (agent_fsm.ex:
    /// 362-390). cbf9c20 has no cancel; the devhub offers it on both so a
    /// person can rehearse it. False for an unknown or finished task.
    pub(super) fn cancel(&mut self, task_id: &str, now: Instant) -> bool {
        let Some(task) = self.tasks.get_mut(task_id) else {
            return false;
        };
        if matches!(task.status, TaskStatus::Completed | TaskStatus::DeadLetter | TaskStatus::Cancelled) {
            return false;
        }
        task.status = TaskStatus::Cancelled;
        let holder = task.assigned_to.take();
        if let Some(agent_id) = holder {
            let frame = json!({"type": "task_cancelled", "task_id": task_id, "timestamp": now_ms()});
            self.send_to_agent(&agent_id, frame);
            if let Some(fsm) = self.agents.get_mut(&agent_id) {
                if fsm.phase != AgentPhase::Idle {
                    fsm.phase = AgentPhase::Idle;
                    fsm.current_task = None;
                }
            }
            self.schedule(now, None);
        }
        true
    }
}
