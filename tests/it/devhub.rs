//! The development hub on its own, driven by a raw tungstenite client: the hub
//! side of PROTOCOL.md as the sidecar's integration tests rely on it. Every
//! wait is on a frame or a hub event with a 10 s failsafe, never on a sleep.

use std::net::TcpStream;
use std::time::Duration;

use agentcom_sidecar::devhub::{DevHub, DevHubEvent, DevHubOptions, OutcomeKind, TaskSnapshot, TaskStatus};
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

const FAILSAFE: Duration = Duration::from_secs(10);
const AGENT: &str = "a1";
const TOKEN: &str = "t1";

/// A bare WebSocket client: what a sidecar puts on the wire, nothing more.
struct Client {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
}

impl Client {
    fn connect(url: &str) -> Client {
        let (ws, _response) = tungstenite::connect(url).expect("connect to the devhub");
        match ws.get_ref() {
            MaybeTlsStream::Plain(tcp) => {
                tcp.set_read_timeout(Some(FAILSAFE)).expect("set the failsafe read timeout")
            }
            _ => panic!("Client::connect is for ws:// urls"),
        }
        Client { ws }
    }

    fn send(&mut self, frame: Value) {
        self.ws.send(Message::text(frame.to_string())).expect("send a frame to the devhub");
    }

    /// The next text frame, parsed.
    fn recv(&mut self) -> Value {
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
    fn recv_type(&mut self, frame_type: &str) -> Value {
        let frame = self.recv();
        assert_eq!(frame["type"], frame_type, "unexpected frame {frame}");
        frame
    }

    /// Reads until the hub's close frame and returns its code and reason, then
    /// keeps reading, as a sidecar does, so the close reply goes out.
    fn recv_close(&mut self) -> (u16, String) {
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
    fn recv_end(&mut self) {
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

    fn identify(&mut self, agent_id: &str, token: &str) -> Value {
        self.send(json!({
            "type": "identify", "agent_id": agent_id, "token": token, "name": agent_id,
            "status": "idle", "capabilities": ["code"], "client_type": "sidecar",
            "protocol_version": 1
        }));
        self.recv()
    }
}

fn start(options: DevHubOptions) -> DevHub {
    DevHub::start(options).expect("start the devhub")
}

/// A hub with the default options and a client identified as `AGENT`.
fn hub_and_client() -> (DevHub, Client) {
    let hub = start(DevHubOptions::new(AGENT, TOKEN));
    let client = identified(&hub);
    (hub, client)
}

fn identified(hub: &DevHub) -> Client {
    let mut client = Client::connect(&hub.url());
    let reply = client.identify(AGENT, TOKEN);
    assert_eq!(reply, json!({"type": "identified", "agent_id": AGENT}));
    client
}

fn task(hub: &DevHub, task_id: &str) -> TaskSnapshot {
    hub.task(task_id).expect("the hub knows the task")
}

fn wait_disconnected(hub: &DevHub) {
    hub.wait_for(FAILSAFE, |event| matches!(event, DevHubEvent::Disconnected { .. }))
        .expect("the hub sees the connection go");
}

fn complete(task_id: &str, generation: u64) -> Value {
    json!({"type": "task_complete", "task_id": task_id, "generation": generation,
           "result": {"status": "success", "output": "done"}, "protocol_version": 1})
}

fn failed(task_id: &str, generation: u64) -> Value {
    json!({"type": "task_failed", "task_id": task_id, "generation": generation,
           "reason": "boom", "error": "boom", "protocol_version": 1})
}

fn is_real_task_id(task_id: &str) -> bool {
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
    let hub = start(DevHubOptions::new(AGENT, TOKEN));
    let mut client = Client::connect(&hub.url());
    for frame in [
        json!({"type": "ping"}),
        json!({"type": "task_accepted", "task_id": "task-0000000000000001"}),
        json!({"type": "task_rejected", "task_id": "task-0000000000000001", "reason": "busy"}),
    ] {
        client.send(frame);
        assert_eq!(client.recv(), json!({"type": "error", "error": "not_identified"}));
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

    // Assigned to another agent: not this sidecar's to continue.
    hub.seed_task("task-00000000000000cc", 2, "a2");
    client.send(json!({"type": "task_recovering", "task_id": "task-00000000000000cc"}));
    client.recv_type("task_reassign");
}

#[test]
fn task_recovering_hands_back_a_task_taken_back_from_this_agent() {
    let mut options = DevHubOptions::new(AGENT, TOKEN);
    options.repush_on_identify = false;
    let hub = start(options);
    let mut client = identified(&hub);
    let task_id = hub.push_task(AGENT, "recover me", json!({}));
    assert_eq!(client.recv_type("task_assign")["generation"], 1);
    drop(client);
    wait_disconnected(&hub);
    assert_eq!(task(&hub, &task_id).generation, 2);

    // No re-push after identify with repush_on_identify off: the first frame
    // after `identified` answers the recovery.
    let mut client = identified(&hub);
    client.send(json!({"type": "task_recovering", "task_id": task_id}));
    assert_eq!(client.recv(), json!({"type": "task_continue", "task_id": task_id, "generation": 3}));
    let snapshot = task(&hub, &task_id);
    assert_eq!(snapshot.status, TaskStatus::Assigned);
    assert_eq!(snapshot.generation, 3);
    client.send(complete(&task_id, 3));
    client.recv_type("task_ack");
}

#[test]
fn a_silent_hub_answers_no_ping() {
    let (hub, mut client) = hub_and_client();
    hub.wait_for(FAILSAFE, |event| matches!(event, DevHubEvent::Identified { .. })).expect("identified");
    hub.set_silent(true);
    client.send(json!({"type": "ping"}));
    hub.wait_for(
        FAILSAFE,
        |event| matches!(event, DevHubEvent::Received { frame, .. } if frame["type"] == "ping"),
    )
    .expect("the silent hub still reads");
    hub.set_silent(false);
    client.send(json!({"type": "task_recovering", "task_id": "task-00000000000000dd"}));
    // Had the ping been answered, its pong would come first.
    client.recv_type("task_reassign");
    let sent = hub
        .wait_for(FAILSAFE, |event| matches!(event, DevHubEvent::Sent { .. }))
        .expect("a frame sent after the silence");
    let DevHubEvent::Sent { frame, .. } = sent else { unreachable!() };
    assert_eq!(frame["type"], "task_reassign");
}

#[test]
fn a_silent_hub_suppresses_pushes() {
    let (hub, mut client) = hub_and_client();
    hub.set_silent(true);
    let task_id = hub.push_task(AGENT, "never seen", json!({}));
    hub.wait_for(FAILSAFE, |event| matches!(event, DevHubEvent::Suppressed { .. }))
        .expect("the push is swallowed");
    // The hub believes it assigned the task, as a half-open hub would.
    assert_eq!(task(&hub, &task_id).status, TaskStatus::Assigned);
    hub.set_silent(false);
    client.send(json!({"type": "ping"}));
    client.recv_type("pong");
}

#[test]
fn rate_limit_next_drops_one_frame_of_that_type() {
    let (hub, mut client) = hub_and_client();
    hub.rate_limit_next("ping", 1500);
    client.send(json!({"type": "ping"}));
    assert_eq!(client.recv(), json!({"type": "rate_limited", "retry_after_ms": 1500, "tier": "light"}));
    client.send(json!({"type": "ping"}));
    client.recv_type("pong");

    let task_id = hub.push_task(AGENT, "limited", json!({}));
    client.recv_type("task_assign");
    hub.rate_limit_next("task_complete", 250);
    client.send(complete(&task_id, 1));
    assert_eq!(client.recv(), json!({"type": "rate_limited", "retry_after_ms": 250, "tier": "normal"}));
    // The dropped frame changed nothing: the resend goes through.
    assert_eq!(task(&hub, &task_id).status, TaskStatus::Assigned);
    client.send(complete(&task_id, 1));
    client.recv_type("task_ack");
}

#[test]
fn an_unaccepted_task_comes_back_two_generations_higher() {
    let mut options = DevHubOptions::new(AGENT, TOKEN);
    options.accept_timeout = Duration::from_millis(200);
    let hub = start(options);
    let mut client = identified(&hub);
    let task_id = hub.push_task(AGENT, "accept me", json!({}));
    assert_eq!(client.recv_type("task_assign")["generation"], 1);
    // Real elapsed time is the thing under test: the failsafe read waits.
    let again = client.recv_type("task_assign");
    assert_eq!(again["task_id"], task_id.as_str());
    assert_eq!(again["generation"], 3);
    hub.wait_for(
        FAILSAFE,
        |event| matches!(event, DevHubEvent::TaskTakenBack { reason, .. } if reason == "accept_timeout"),
    )
    .expect("taken back for the acceptance window");
    // Accepting and completing from here would race the 200 ms window on a
    // loaded machine; the generations above are what this test is about.
}

#[test]
fn stop_then_start_again_on_the_same_address() {
    let (hub, mut client) = hub_and_client();
    let addr = hub.addr();
    hub.stop();
    assert_eq!(client.recv_close().0, 1001);

    let mut options = DevHubOptions::new(AGENT, TOKEN);
    options.bind = addr;
    let hub = start(options);
    assert_eq!(hub.addr(), addr);
    let mut client = identified(&hub);
    client.send(json!({"type": "ping"}));
    client.recv_type("pong");
}

#[test]
fn close_connection_sends_its_code_and_reason() {
    let (hub, mut client) = hub_and_client();
    hub.close_connection(AGENT, 1008, "cooldown active: retry in 5s");
    assert_eq!(client.recv_close(), (1008, "cooldown active: retry in 5s".to_string()));
    wait_disconnected(&hub);
}

#[test]
fn a_socket_that_sends_nothing_is_closed_with_1002() {
    let mut options = DevHubOptions::new(AGENT, TOKEN);
    options.idle_timeout = Some(Duration::from_millis(200));
    let hub = start(options);
    let mut client = identified(&hub);
    // Real elapsed time is the thing under test: the failsafe read waits.
    assert_eq!(client.recv_close(), (1002, "idle timeout".to_string()));
    wait_disconnected(&hub);
}

#[test]
fn an_old_hub_crashes_on_task_failed() {
    let (hub, mut client) = hub_and_client();
    let task_id = hub.push_task(AGENT, "crash it", json!({}));
    client.recv_type("task_assign");
    client.send(json!({"type": "task_accepted", "task_id": task_id}));
    client.recv_type("task_ack");
    hub.set_crash_on_task_failed(true);
    client.send(failed(&task_id, 1));
    assert_eq!(client.recv_close().0, 1011);
    wait_disconnected(&hub);
    let snapshot = task(&hub, &task_id);
    assert_eq!(snapshot.status, TaskStatus::Queued);
    assert_eq!(snapshot.generation, 2);
    assert!(snapshot.outcomes.is_empty());

    let mut client = identified(&hub);
    let assign = client.recv_type("task_assign");
    assert_eq!(assign["task_id"], task_id.as_str());
    assert_eq!(assign["generation"], 3);
}

#[test]
fn unknown_types_get_unknown_message_type() {
    let (_hub, mut client) = hub_and_client();
    for frame in [
        json!({"type": "task_rejected", "task_id": "task-0000000000000001", "reason": "busy"}),
        json!({"type": "wake_result", "task_id": "task-0000000000000001", "status": "success"}),
        json!({"type": "state_report", "task_id": "task-0000000000000001", "generation": 1}),
    ] {
        client.send(frame);
        assert_eq!(client.recv(), json!({"type": "error", "error": "unknown_message_type"}));
    }
}

#[test]
fn malformed_frames_get_the_hub_errors() {
    let (_hub, mut client) = hub_and_client();
    client.ws.send(Message::text("not json")).expect("send text");
    assert_eq!(client.recv(), json!({"type": "error", "error": "invalid_json"}));
    client.send(json!({"type": "task_complete", "task_id": "task-0000000000000001"}));
    let error = client.recv();
    assert_eq!(error["error"], "validation_failed");
    assert_eq!(error["message_type"], "task_complete");
    assert_eq!(error["errors"][0]["field"], "generation");
}

#[test]
fn task_progress_gets_no_reply_and_is_recorded() {
    let (hub, mut client) = hub_and_client();
    let task_id = hub.push_task(AGENT, "progress", json!({}));
    client.recv_type("task_assign");
    client.send(json!({"type": "task_progress", "task_id": task_id, "progress": 50}));
    client.send(json!({"type": "ping"}));
    // Replies come in order: the pong is the next frame.
    client.recv_type("pong");
    assert_eq!(task(&hub, &task_id).progress[0]["progress"], 50);
}

#[test]
fn a_queued_task_follows_the_completion_ack_and_push_now_ignores_busy() {
    let (hub, mut client) = hub_and_client();
    let first = hub.push_task(AGENT, "first", json!({}));
    client.recv_type("task_assign");
    client.send(json!({"type": "task_accepted", "task_id": first}));
    client.recv_type("task_ack");

    // Busy: a pushed task waits in the queue...
    let second = hub.push_task(AGENT, "second", json!({}));
    assert_eq!(task(&hub, &second).status, TaskStatus::Queued);
    // ...but push_task_now reaches the busy sidecar at once.
    let odd = "task-00000000000000ee";
    assert_eq!(hub.push_task_now(AGENT, odd, "while busy", json!({})), 1);
    assert_eq!(client.recv_type("task_assign")["task_id"], odd);

    client.send(complete(&first, 1));
    client.recv_type("task_ack");
    let next = client.recv_type("task_assign");
    assert_eq!(next["task_id"], second.as_str());
    assert_eq!(next["generation"], 1);
}

#[test]
fn send_raw_reaches_the_agent() {
    let (hub, mut client) = hub_and_client();
    let frame = json!({"type": "task_cancelled", "task_id": "../etc/passwd", "timestamp": 1});
    assert!(hub.send_raw(AGENT, frame.clone()));
    assert_eq!(client.recv(), frame);
    assert!(!hub.send_raw("nobody", json!({"type": "restart_sidecar"})));
}

#[test]
fn a_wrong_path_is_a_404() {
    let hub = start(DevHubOptions::new(AGENT, TOKEN));
    let url = format!("ws://{}/socket", hub.addr());
    match tungstenite::connect(url) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 404),
        other => panic!("expected a 404, got {other:?}"),
    }
    hub.wait_for(FAILSAFE, |event| matches!(event, DevHubEvent::HandshakeFailed { .. }))
        .expect("the hub reports the failed handshake");
}

#[cfg(windows)]
#[test]
#[ignore = "skipped on Windows: the TLS test mints its certificate with OpenSSL, a Unix-only dev-dependency"]
fn wss_test_is_unix_only() {}

#[cfg(unix)]
#[test]
fn wss_with_a_test_certificate() {
    let (acceptor, connector) = test_tls();
    let mut options = DevHubOptions::new(AGENT, TOKEN);
    options.tls = Some(acceptor);
    let hub = start(options);
    assert!(hub.url().starts_with("wss://localhost:"), "{}", hub.url());

    let tcp = TcpStream::connect(hub.addr()).expect("tcp connect");
    tcp.set_read_timeout(Some(FAILSAFE)).expect("read timeout");
    let (ws, _response) = tungstenite::client_tls_with_config(
        hub.url(),
        tcp,
        None,
        Some(tungstenite::Connector::NativeTls(connector)),
    )
    .expect("wss handshake");
    let mut client = Client { ws };
    assert_eq!(client.identify(AGENT, TOKEN)["type"], "identified");
    client.send(json!({"type": "ping"}));
    client.recv_type("pong");
    hub.stop();
    assert_eq!(client.recv_close().0, 1001);
}

/// A self-signed certificate for `localhost`: the hub's acceptor and a client
/// connector that trusts it.
#[cfg(unix)]
fn test_tls() -> (native_tls::TlsAcceptor, native_tls::TlsConnector) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509NameBuilder, X509};

    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    builder.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap()).unwrap();
    builder.set_subject_name(&name).unwrap();
    builder.set_issuer_name(&name).unwrap();
    builder.set_pubkey(&key).unwrap();
    builder.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    builder.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
    let san =
        SubjectAlternativeName::new().dns("localhost").build(&builder.x509v3_context(None, None)).unwrap();
    builder.append_extension(san).unwrap();
    builder.sign(&key, MessageDigest::sha256()).unwrap();
    let cert_pem = builder.build().to_pem().unwrap();
    let key_pem = key.private_key_to_pem_pkcs8().unwrap();

    let identity = native_tls::Identity::from_pkcs8(&cert_pem, &key_pem).unwrap();
    let acceptor = native_tls::TlsAcceptor::new(identity).unwrap();
    let connector = native_tls::TlsConnector::builder()
        .add_root_certificate(native_tls::Certificate::from_pem(&cert_pem).unwrap())
        .build()
        .unwrap();
    (acceptor, connector)
}
