//! The development hub on its own, driven by a raw tungstenite client: the hub
//! side of docs/protocol.md as the sidecar's integration tests rely on it. Every
//! wait is on a frame or a hub event with a 10 s failsafe, never on a sleep.

use std::net::TcpStream;
use std::time::Duration;

use agentcom_sidecar::devhub::{
    DevHub, DevHubEvent, DevHubOptions, HubVersion, OutcomeKind, TaskSnapshot, TaskStatus,
};
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub(crate) const FAILSAFE: Duration = Duration::from_secs(10);
pub(crate) const AGENT: &str = "a1";
pub(crate) const TOKEN: &str = "t1";

/// A bare WebSocket client: what a sidecar puts on the wire, nothing more.
pub(crate) struct Client {
    pub(crate) ws: WebSocket<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub(crate) fn connect(url: &str) -> Client {
        let (ws, _response) = tungstenite::connect(url).expect("connect to the devhub");
        match ws.get_ref() {
            MaybeTlsStream::Plain(tcp) => {
                tcp.set_read_timeout(Some(FAILSAFE)).expect("set the failsafe read timeout")
            }
            _ => panic!("Client::connect is for ws:// urls"),
        }
        Client { ws }
    }

    pub(crate) fn send(&mut self, frame: Value) {
        self.ws.send(Message::text(frame.to_string())).expect("send a frame to the devhub");
    }

    /// The next text frame, parsed.
    pub(crate) fn recv(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    return serde_json::from_str(text.as_str()).expect("the devhub sends JSON")
                }
                Ok(_) => {}
                Err(err) => panic!("no frame from the devhub within {FAILSAFE:?}: {err}"),
            }
        }
    }

    /// The next text frame, which must be of `frame_type`.
    pub(crate) fn recv_type(&mut self, frame_type: &str) -> Value {
        let frame = self.recv();
        assert_eq!(frame["type"], frame_type, "unexpected frame {frame}");
        frame
    }

    /// Reads until the hub's close frame and returns its code and reason, then
    /// keeps reading, as a sidecar does, so the close reply goes out.
    pub(crate) fn recv_close(&mut self) -> (u16, String) {
        let close = loop {
            match self.ws.read() {
                Ok(Message::Close(Some(frame))) => {
                    break (u16::from(frame.code), frame.reason.as_str().to_string())
                }
                Ok(Message::Close(None)) => panic!("close frame without a code"),
                Ok(_) => {}
                Err(err) => panic!("no close frame from the devhub: {err}"),
            }
        };
        while self.ws.read().is_ok() {}
        close
    }

    /// Reads until the connection ends without a close frame.
    pub(crate) fn recv_end(&mut self) {
        loop {
            match self.ws.read() {
                Ok(Message::Close(frame)) => panic!("expected no close frame, got {frame:?}"),
                Ok(_) => {}
                Err(tungstenite::Error::Io(err))
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("the devhub kept the connection open for {FAILSAFE:?}")
                }
                Err(_) => return,
            }
        }
    }

    pub(crate) fn identify(&mut self, agent_id: &str, token: &str) -> Value {
        self.send(json!({
            "type": "identify", "agent_id": agent_id, "token": token, "name": agent_id,
            "status": "idle", "capabilities": ["code"], "client_type": "sidecar",
            "protocol_version": 1
        }));
        self.recv()
    }
}

pub(crate) fn start(options: DevHubOptions) -> DevHub {
    DevHub::start(options).expect("start the devhub")
}

/// A hub with the default options and a client identified as `AGENT`.
pub(crate) fn hub_and_client() -> (DevHub, Client) {
    let hub = start(DevHubOptions::new(AGENT, TOKEN));
    let client = identified(&hub);
    (hub, client)
}

pub(crate) fn identified(hub: &DevHub) -> Client {
    let mut client = Client::connect(&hub.url());
    let reply = client.identify(AGENT, TOKEN);
    assert_eq!(reply, json!({"type": "identified", "agent_id": AGENT}));
    client
}

pub(crate) fn task(hub: &DevHub, task_id: &str) -> TaskSnapshot {
    hub.task(task_id).expect("the hub knows the task")
}

pub(crate) fn wait_disconnected(hub: &DevHub) {
    hub.wait_for(FAILSAFE, |event| matches!(event, DevHubEvent::Disconnected { .. }))
        .expect("the hub sees the connection go");
}

pub(crate) fn complete(task_id: &str, generation: u64) -> Value {
    json!({"type": "task_complete", "task_id": task_id, "generation": generation,
           "result": {"status": "success", "output": "done"}, "protocol_version": 1})
}

pub(crate) fn failed(task_id: &str, generation: u64) -> Value {
    json!({"type": "task_failed", "task_id": task_id, "generation": generation,
           "reason": "boom", "error": "boom", "protocol_version": 1})
}

pub(crate) fn is_real_task_id(task_id: &str) -> bool {
    task_id
        .strip_prefix("task-")
        .is_some_and(|hex| hex.len() == 16 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')))
}

#[test]
fn identify_is_answered_and_every_frame_is_recorded_in_order() {
    let (hub, _client) = hub_and_client();
    let mut events = Vec::new();
    hub.wait_for(FAILSAFE, |event| {
        events.push(event.clone());
        matches!(event, DevHubEvent::Identified { .. })
    })
    .expect("an Identified event");
    assert!(matches!(events[0], DevHubEvent::Connected { conn: 1 }), "{events:?}");
    // Tests see the raw identify, token included; printing redacts it.
    let DevHubEvent::Received { frame, .. } = &events[1] else { panic!("{events:?}") };
    assert_eq!(frame["token"], TOKEN);
    assert_eq!(
        events[2],
        DevHubEvent::Sent { conn: 1, frame: json!({"type": "identified", "agent_id": AGENT}) }
    );
    assert_eq!(events[3], DevHubEvent::Identified { conn: 1, agent_id: AGENT.to_string() });
}

#[test]
fn a_bad_token_is_refused_and_the_socket_stays_open() {
    let hub = start(DevHubOptions::new(AGENT, TOKEN));
    let mut client = Client::connect(&hub.url());
    assert_eq!(client.identify(AGENT, "wrong"), json!({"type": "error", "error": "invalid_token"}));
    // Still open, still not identified.
    client.send(json!({"type": "ping"}));
    assert_eq!(client.recv(), json!({"type": "error", "error": "not_identified"}));
    // The sidecar may try again on the same socket.
    assert_eq!(client.identify(AGENT, TOKEN)["type"], "identified");
}

#[test]
fn a_token_of_another_agent_is_a_mismatch() {
    let mut options = DevHubOptions::new(AGENT, TOKEN);
    options.tokens.insert("a2".to_string(), "t2".to_string());
    let hub = start(options);
    let mut client = Client::connect(&hub.url());
    assert_eq!(client.identify(AGENT, "t2"), json!({"type": "error", "error": "token_agent_mismatch"}));
    assert_eq!(client.identify("a2", "t2"), json!({"type": "identified", "agent_id": "a2"}));
}

#[test]
fn frames_before_identify_get_not_identified() {
    for version in HubVersion::ALL {
        let hub = start(DevHubOptions::for_version(AGENT, TOKEN, version));
        let mut client = Client::connect(&hub.url());
        for frame in
            [json!({"type": "ping"}), json!({"type": "task_accepted", "task_id": "task-0000000000000001"})]
        {
            client.send(frame);
            assert_eq!(client.recv(), json!({"type": "error", "error": "not_identified"}), "{version}");
        }
        // 4718a58 validates first: a type outside its schema is a violation
        // even before identify.
        client.send(json!({"type": "task_rejected", "task_id": "task-0000000000000001", "reason": "busy"}));
        let reply = client.recv();
        match version {
            HubVersion::Cbf9c20 => assert_eq!(reply, json!({"type": "error", "error": "not_identified"})),
            HubVersion::V4718a58 => assert_eq!(reply["error"], "validation_failed"),
        }
    }
}

#[test]
fn ping_gets_a_pong_with_a_timestamp() {
    let (_hub, mut client) = hub_and_client();
    client.send(json!({"type": "ping", "protocol_version": 1}));
    let pong = client.recv_type("pong");
    assert!(pong["timestamp"].as_u64().unwrap() > 1_700_000_000_000, "{pong}");
}

#[test]
fn a_pushed_task_is_assigned_and_its_acceptance_acked() {
    let (hub, mut client) = hub_and_client();
    let task_id = hub.push_task(AGENT, "write the docs", json!({"priority": "high"}));
    assert!(is_real_task_id(&task_id), "{task_id}");
    let assign = client.recv_type("task_assign");
    assert_eq!(assign["task_id"], task_id.as_str());
    assert_eq!(assign["description"], "write the docs");
    assert_eq!(assign["metadata"], json!({"priority": "high"}));
    assert_eq!(assign["generation"], 1);
    assert!(assign["assigned_at"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(task(&hub, &task_id).status, TaskStatus::Assigned);
    assert!(!task(&hub, &task_id).accepted);

    client.send(json!({"type": "task_accepted", "task_id": task_id}));
    assert_eq!(client.recv(), json!({"type": "task_ack", "task_id": task_id, "status": "accepted"}));
    let snapshot = task(&hub, &task_id);
    assert!(snapshot.accepted);
    assert_eq!(snapshot.assigned_to.as_deref(), Some(AGENT));
}

#[test]
fn a_task_pushed_before_identify_waits_for_the_agent() {
    let hub = start(DevHubOptions::new(AGENT, TOKEN));
    let task_id = hub.push_task(AGENT, "queued early", json!({}));
    assert_eq!(task(&hub, &task_id).status, TaskStatus::Queued);
    assert_eq!(task(&hub, &task_id).generation, 0);
    let mut client = identified(&hub);
    let assign = client.recv_type("task_assign");
    assert_eq!(assign["task_id"], task_id.as_str());
    assert_eq!(assign["generation"], 1);
}

#[test]
fn task_complete_is_fenced_by_generation() {
    let (hub, mut client) = hub_and_client();
    let task_id = "task-00000000000000c1";
    assert_eq!(hub.push_task_now(AGENT, task_id, "first", json!({})), 1);
    assert_eq!(hub.push_task_now(AGENT, task_id, "again", json!({})), 2);
    assert_eq!(client.recv_type("task_assign")["generation"], 1);
    assert_eq!(client.recv_type("task_assign")["generation"], 2);

    client.send(complete(task_id, 1));
    assert_eq!(client.recv(), json!({"type": "error", "error": "task_complete_failed: stale_generation"}));
    client.send(complete(task_id, 2));
    assert_eq!(client.recv(), json!({"type": "task_ack", "task_id": task_id, "status": "complete"}));
    client.send(complete(task_id, 2));
    assert_eq!(client.recv(), json!({"type": "error", "error": "task_complete_failed: invalid_state"}));
    client.send(complete("task-00000000000000ff", 1));
    assert_eq!(client.recv(), json!({"type": "error", "error": "task_complete_failed: not_found"}));

    let snapshot = task(&hub, task_id);
    assert_eq!(snapshot.status, TaskStatus::Completed);
    assert_eq!(snapshot.outcomes.len(), 1);
    assert_eq!(snapshot.outcomes[0].kind, OutcomeKind::Completed);
    assert_eq!(snapshot.outcomes[0].generation, 2);
    assert_eq!(snapshot.outcomes[0].result, Some(json!({"status": "success", "output": "done"})));
}

#[test]
fn task_failed_is_retried_then_dead_lettered() {
    let mut options = DevHubOptions::new(AGENT, TOKEN);
    options.max_retries = 2;
    let hub = start(options);
    let mut client = identified(&hub);
    let task_id = hub.push_task(AGENT, "flaky", json!({}));
    assert_eq!(client.recv_type("task_assign")["generation"], 1);
    client.send(json!({"type": "task_accepted", "task_id": task_id}));
    client.recv_type("task_ack");

    client.send(failed(&task_id, 1));
    assert_eq!(client.recv(), json!({"type": "task_ack", "task_id": task_id, "status": "retried"}));
    // Re-queued one generation higher, then handed straight back: one more.
    let again = client.recv_type("task_assign");
    assert_eq!(again["task_id"], task_id.as_str());
    assert_eq!(again["generation"], 3);

    client.send(failed(&task_id, 1));
    assert_eq!(client.recv(), json!({"type": "error", "error": "task_fail_failed: stale_generation"}));
    client.send(failed(&task_id, 3));
    assert_eq!(client.recv(), json!({"type": "task_ack", "task_id": task_id, "status": "dead_letter"}));
    // A dead-lettered task is gone for the protocol.
    client.send(complete(&task_id, 3));
    assert_eq!(client.recv(), json!({"type": "error", "error": "task_complete_failed: not_found"}));

    let snapshot = task(&hub, &task_id);
    assert_eq!(snapshot.status, TaskStatus::DeadLetter);
    assert_eq!(snapshot.n_failures, 2);
    let kinds: Vec<(OutcomeKind, u64)> =
        snapshot.outcomes.iter().map(|outcome| (outcome.kind, outcome.generation)).collect();
    assert_eq!(kinds, [(OutcomeKind::Retried, 1), (OutcomeKind::DeadLetter, 3)]);
    assert_eq!(snapshot.outcomes[0].reason.as_deref(), Some("boom"));
}

#[test]
fn a_hub_dropped_socket_gives_the_task_back_at_a_higher_generation() {
    let (hub, mut client) = hub_and_client();
    let task_id = hub.push_task(AGENT, "survive a drop", json!({}));
    assert_eq!(client.recv_type("task_assign")["generation"], 1);
    client.send(json!({"type": "task_accepted", "task_id": task_id}));
    client.recv_type("task_ack");

    hub.drop_connection(AGENT);
    client.recv_end();
    hub.wait_for(FAILSAFE, |event| {
        matches!(event, DevHubEvent::TaskTakenBack { reason, generation: 2, .. } if reason == "disconnect")
    })
    .expect("the task is taken back at once");
    wait_disconnected(&hub);
    assert_eq!(task(&hub, &task_id).status, TaskStatus::Queued);

    let mut client = identified(&hub);
    let assign = client.recv_type("task_assign");
    assert_eq!(assign["task_id"], task_id.as_str());
    assert_eq!(assign["generation"], 3);
    // The generation the sidecar held before the drop is dead now.
    client.send(complete(&task_id, 1));
    assert_eq!(client.recv(), json!({"type": "error", "error": "task_complete_failed: stale_generation"}));
}

#[test]
fn a_vanished_client_gives_the_task_back_too() {
    let mut options = DevHubOptions::new(AGENT, TOKEN);
    options.repush_on_identify = false;
    let hub = start(options);
    let mut client = identified(&hub);
    let task_id = hub.push_task(AGENT, "survive a vanish", json!({}));
    client.recv_type("task_assign");
    // Gone without a close frame.
    drop(client);
    wait_disconnected(&hub);
    let snapshot = task(&hub, &task_id);
    assert_eq!(snapshot.status, TaskStatus::Queued);
    assert_eq!(snapshot.generation, 2);

    // While the task sits in the queue, any completion is in the wrong state.
    let mut client = identified(&hub);
    client.send(complete(&task_id, 1));
    assert_eq!(client.recv(), json!({"type": "error", "error": "task_complete_failed: invalid_state"}));
}

#[test]
fn task_recovering_continues_what_the_hub_holds_and_reassigns_the_rest() {
    let (hub, mut client) = hub_and_client();
    let seeded = "task-00000000000000aa";
    hub.seed_task(seeded, 5, AGENT);
    client.send(json!({"type": "task_recovering", "task_id": seeded, "description": "x",
                       "metadata": {}, "last_status": "working", "protocol_version": 1}));
    assert_eq!(client.recv(), json!({"type": "task_continue", "task_id": seeded, "generation": 5}));

    client.send(json!({"type": "task_recovering", "task_id": "task-00000000000000bb"}));
    assert_eq!(client.recv(), json!({"type": "task_reassign", "task_id": "task-00000000000000bb"}));

    client.send(complete(seeded, 5));
    client.recv_type("task_ack");
    client.send(json!({"type": "task_recovering", "task_id": seeded}));
    assert_eq!(client.recv(), json!({"type": "task_reassign", "task_id": seeded}));

    // Assigned to another agent: both real hubs still answer task_continue,
    // with that agent's generation (recover_task checks the status only).
    hub.seed_task("task-00000000000000cc", 2, "a2");
    client.send(json!({"type": "task_recovering", "task_id": "task-00000000000000cc"}));
    assert_eq!(
        client.recv(),
        json!({"type": "task_continue", "task_id": "task-00000000000000cc", "generation": 2})
    );
}

#[test]
fn a_task_taken_back_is_reassigned_and_pushed_again_two_generations_higher() {
    let mut options = DevHubOptions::new(AGENT, TOKEN);
    options.repush_on_identify = false;
    let hub = start(options);
    let mut client = identified(&hub);
    let task_id = hub.push_task(AGENT, "recover me", json!({}));
    assert_eq!(client.recv_type("task_assign")["generation"], 1);
    drop(client);
    wait_disconnected(&hub);
    assert_eq!(task(&hub, &task_id).generation, 2);

    // No re-push after identify with repush_on_identify off: the task sits in
    // the queue, so recovering it is answered task_reassign.
    let mut client = identified(&hub);
    client.send(json!({"type": "task_recovering", "task_id": task_id}));
    assert_eq!(client.recv(), json!({"type": "task_reassign", "task_id": task_id}));
    assert_eq!(task(&hub, &task_id).status, TaskStatus::Queued);
    drop(client);
    wait_disconnected(&hub);

    // With the real scheduler's re-push on identify, the task comes first,
    // two generations higher, and recovering it is answered task_continue.
    let hub = start(DevHubOptions::new(AGENT, TOKEN));
    let mut client = identified(&hub);
    let task_id = hub.push_task(AGENT, "recover me", json!({}));
    assert_eq!(client.recv_type("task_assign")["generation"], 1);
    drop(client);
    wait_disconnected(&hub);
    let mut client = identified(&hub);
    assert_eq!(client.recv_type("task_assign")["generation"], 3);
    client.send(json!({"type": "task_recovering", "task_id": task_id}));
    assert_eq!(client.recv(), json!({"type": "task_continue", "task_id": task_id, "generation": 3}));
    client.send(json!({"type": "task_accepted", "task_id": task_id}));
    client.recv_type("task_ack");
    client.send(complete(&task_id, 3));
    client.recv_type("task_ack");
}
