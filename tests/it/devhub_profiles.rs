//! The development hub's two profiles on the wire, driven by a raw client:
//! the shapes and closes a sidecar sees from cbf9c20 and 4718a58, and the
//! prompt commands a person uses to send every hub-to-sidecar frame.

use std::time::Duration;

use agentcom_sidecar::devhub::prompt::{self, Command};
use agentcom_sidecar::devhub::{AgentState, Bucket, DevHubEvent, DevHubOptions, HubVersion, TaskStatus};
use serde_json::json;

use crate::devhub::{complete, identified, start, task, wait_disconnected, Client, AGENT, TOKEN};

#[test]
fn the_newest_hub_closes_with_1008_at_the_tenth_violation_and_then_enforces_a_cooldown() {
    let mut options = DevHubOptions::for_version(AGENT, TOKEN, HubVersion::V4718a58);
    options.limits.cooldowns = [Duration::from_secs(30); 3];
    let hub = start(options);
    let mut client = identified(&hub);
    let rejected = json!({"type": "task_rejected", "task_id": "task-0000000000000001", "reason": "busy"});
    for _ in 0..9 {
        client.send(rejected.clone());
        let error = client.recv();
        assert_eq!(
            (error["error"].as_str(), error["message_type"].as_str()),
            (Some("validation_failed"), Some("task_rejected"))
        );
    }
    client.send(rejected);
    assert_eq!(client.recv_close(), (1008, "too many validation errors".to_string()));
    wait_disconnected(&hub);
    assert_eq!((hub.violations(AGENT), hub.violation_closes(AGENT)), (10, 1));
    // identify during the cooldown: closed at once, no error frame.
    let mut client = Client::connect(&hub.url());
    client.send(json!({"type": "identify", "agent_id": AGENT, "token": TOKEN}));
    let (code, reason) = client.recv_close();
    assert_eq!(code, 1008);
    assert!(reason.starts_with("cooldown active: retry in ") && reason.ends_with('s'), "{reason}");
}

#[test]
fn the_old_hub_counts_nothing_and_never_closes_for_violations() {
    let hub = start(DevHubOptions::for_version(AGENT, TOKEN, HubVersion::Cbf9c20));
    let mut client = identified(&hub);
    for _ in 0..12 {
        client.send(json!({"type": "task_rejected", "task_id": "task-0000000000000001", "reason": "busy"}));
        assert_eq!(client.recv(), json!({"type": "error", "error": "unknown_message_type"}));
    }
    client.send(json!({"type": "ping"}));
    client.recv_type("pong");
    assert_eq!(hub.violations(AGENT), 0);
}

#[test]
fn the_newest_hub_warns_then_rate_limits_on_the_wire() {
    let mut options = DevHubOptions::for_version(AGENT, TOKEN, HubVersion::V4718a58);
    options.limits.light = Bucket { capacity: 2, refill_every: Duration::from_secs(60) };
    let hub = start(options);
    let mut client = identified(&hub);
    client.send(json!({"type": "ping"}));
    client.recv_type("pong");
    client.send(json!({"type": "ping"}));
    assert_eq!(
        client.recv(),
        json!({"type": "rate_limit_warning", "tier": "light", "remaining": 0, "capacity": 2})
    );
    client.recv_type("pong");
    client.send(json!({"type": "ping"}));
    assert_eq!(client.recv(), json!({"type": "rate_limited", "retry_after_ms": 60_000, "tier": "light"}));
    assert_eq!(hub.agent(AGENT).map(|agent| agent.rate_limited), Some(true));
}

#[test]
fn state_report_is_acked_by_generation_on_the_newest_hub_only() {
    for version in HubVersion::ALL {
        let hub = start(DevHubOptions::for_version(AGENT, TOKEN, version));
        let mut client = identified(&hub);
        let task_id = hub.push_task(AGENT, "d", json!({}));
        assert_eq!(client.recv_type("task_assign")["generation"], 1);
        client
            .send(json!({"type": "state_report", "task_id": task_id, "generation": 1, "status": "working"}));
        let ack = client.recv();
        match version {
            HubVersion::Cbf9c20 => assert_eq!(ack, json!({"type": "error", "error": "unknown_message_type"})),
            HubVersion::V4718a58 => {
                assert_eq!(ack, json!({"type": "state_report_ack", "task_id": task_id, "action": "continue"}))
            }
        }
    }
}

#[test]
fn the_agent_state_follows_the_hubs_state_machine() {
    let hub = start(DevHubOptions::new(AGENT, TOKEN));
    assert_eq!(hub.agent(AGENT), None);
    let mut client = identified(&hub);
    assert_eq!(hub.agent(AGENT).map(|agent| agent.state), Some(AgentState::Idle));
    let task_id = hub.push_task(AGENT, "d", json!({}));
    client.recv_type("task_assign");
    let agent = hub.agent(AGENT).expect("identified");
    assert_eq!((agent.state, agent.current_task.as_deref()), (AgentState::Assigned, Some(task_id.as_str())));
    client.send(json!({"type": "task_accepted", "task_id": task_id}));
    client.recv_type("task_ack");
    assert_eq!(hub.agent(AGENT).map(|agent| agent.state), Some(AgentState::Working));
    client.send(complete(&task_id, 1));
    client.recv_type("task_ack");
    assert_eq!(hub.agent(AGENT).map(|agent| agent.state), Some(AgentState::Idle));
}

#[test]
fn every_hub_to_sidecar_frame_can_be_sent_from_the_prompt() {
    let hub = start(DevHubOptions::new(AGENT, TOKEN));
    let mut client = identified(&hub);
    let run = |line: &str| {
        let command = prompt::parse(line).expect("parses").expect("not blank");
        prompt::run(&hub, AGENT, command)
    };
    assert!(run("first task").contains("assigned, generation 1"), "a plain line pushes a task");
    let first = client.recv_type("task_assign");
    assert!(run("/second while busy").contains("pushed now"));
    let second = client.recv_type("task_assign");
    assert_eq!(second["description"], "while busy");
    assert_eq!(
        hub.agent(AGENT).and_then(|agent| agent.current_task),
        first["task_id"].as_str().map(String::from)
    );
    assert!(run("/restart new build").contains("restart_sidecar sent"));
    assert_eq!(client.recv(), json!({"type": "restart_sidecar", "reason": "new build"}));
    run("/warn 3");
    assert_eq!(
        client.recv(),
        json!({"type": "rate_limit_warning", "tier": "normal", "remaining": 3, "capacity": 60})
    );
    run(r#"/send {"type":"task_reassign","task_id":"task-0000000000000001"}"#);
    assert_eq!(client.recv(), json!({"type": "task_reassign", "task_id": "task-0000000000000001"}));
    run("/ratelimit task_accepted 250");
    client.send(json!({"type": "task_accepted", "task_id": first["task_id"]}));
    assert_eq!(client.recv(), json!({"type": "rate_limited", "retry_after_ms": 250, "tier": "normal"}));
    // /cancel with no id cancels the agent's current task.
    assert!(run("/cancel").contains("cancelled"));
    let cancelled = client.recv_type("task_cancelled");
    assert_eq!(cancelled["task_id"], first["task_id"]);
    let first_id = first["task_id"].as_str().unwrap_or_default();
    assert_eq!(task(&hub, first_id).status, TaskStatus::Cancelled);
    assert!(run("/state").contains("Cancelled"));
    assert_eq!(prompt::parse("/drop"), Ok(Some(Command::Drop)));
    run("/drop");
    hub.wait_for(Duration::from_secs(10), |event| matches!(event, DevHubEvent::Disconnected { .. }))
        .expect("the connection is dropped");
}
