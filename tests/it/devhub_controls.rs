//! The development hub's controls and edges, driven by a raw client: a
//! silent hub, one-shot rate limits, acceptance windows, restarts on the same
//! address, closes (1002 idle, 1011 crash), malformed frames, TLS and a wrong
//! path.

use std::net::TcpStream;
use std::time::Duration;

use agentcom_sidecar::devhub::{DevHubEvent, DevHubOptions, HubVersion, TaskStatus};
use serde_json::json;
use tungstenite::Message;

use crate::devhub::*;

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
fn the_old_hub_answers_unknown_types_with_unknown_message_type() {
    let hub = start(DevHubOptions::for_version(AGENT, TOKEN, HubVersion::Cbf9c20));
    let mut client = identified(&hub);
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

#[test]
#[cfg_attr(
    windows,
    ignore = "skipped on Windows: the TLS test mints its certificate with OpenSSL, a Unix-only dev-dependency"
)]
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

/// Windows: OpenSSL, which mints the certificate, is a Unix-only
/// dev-dependency; the test is ignored there and fails if run.
#[cfg(windows)]
fn test_tls() -> (native_tls::TlsAcceptor, native_tls::TlsConnector) {
    panic!("the test certificate is minted with OpenSSL, a Unix-only dev-dependency")
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
