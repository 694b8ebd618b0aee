//! The hub socket thread (`agentcom_sidecar::hub`) against small scripted
//! WebSocket servers on 127.0.0.1, plain and TLS.
//!
//! Every wait is on a channel with a generous failsafe; nothing sleeps. The
//! events channel also tells when the socket thread has ended: its sender
//! lives in the thread's `on_event` closure, so the channel disconnects when
//! the thread exits.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use agentcom_sidecar::hub::{HubEvent, HubHandle, HubParams};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use native_tls::TlsAcceptor;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use crate::support::tls::TestCa;

const FAILSAFE: Duration = Duration::from_secs(10);
const CONN_ID: u64 = 7;

#[test]
fn frames_flow_both_ways() {
    let hub = TestHub::start(None, |ws, seen| {
        let first = ws.read().expect("read the first frame");
        seen.send(Seen::from(first)).unwrap();
        ws.send(Message::text("welcome")).expect("send welcome");
        record(ws, seen);
    });
    let (handle, events) = spawn(params(hub.ws_url()));
    assert_eq!(next_event(&events), HubEvent::Connected { conn_id: CONN_ID });
    handle.send("hello".to_owned());
    assert_eq!(hub.next(), Seen::Text("hello".to_owned()));
    assert_eq!(next_event(&events), HubEvent::Frame { conn_id: CONN_ID, text: "welcome".to_owned() });
    // Dropping the handle closes gracefully and joins the thread.
    drop(handle);
    assert_eq!(hub.next(), Seen::Close(Some(1000)));
    let ending = expect_disconnected(&events);
    assert_eq!(ending.reason, "closed by sidecar");
}

#[test]
fn sends_keep_call_order() {
    const N_FRAMES: usize = 1000;
    let hub = TestHub::start(None, record);
    let (handle, events) = spawn(params(hub.ws_url()));
    // Half of them are queued while still connecting, half after.
    for i in 0..N_FRAMES / 2 {
        handle.send(format!("frame {i}"));
    }
    assert_eq!(next_event(&events), HubEvent::Connected { conn_id: CONN_ID });
    for i in N_FRAMES / 2..N_FRAMES {
        handle.send(format!("frame {i}"));
    }
    for i in 0..N_FRAMES {
        assert_eq!(hub.next(), Seen::Text(format!("frame {i}")));
    }
    drop(handle);
    assert_eq!(hub.next(), Seen::Close(Some(1000)));
}

#[test]
fn graceful_close_sends_1000_and_ends_the_thread() {
    let hub = TestHub::start(None, record);
    let (handle, events) = spawn(params(hub.ws_url()));
    assert_eq!(next_event(&events), HubEvent::Connected { conn_id: CONN_ID });
    handle.close();
    assert_eq!(hub.next(), Seen::Close(Some(1000)));
    let ending = expect_disconnected(&events);
    assert_eq!(ending.reason, "closed by sidecar");
    // The hub's reply echoes our code.
    assert_eq!(ending.close_code, Some(1000));
    // Sending after the end is harmless, and the join in Drop returns.
    handle.send("too late".to_owned());
    handle.close();
    drop(handle);
    assert_eq!(hub.next(), Seen::Ended("closed".to_owned()));
}

#[test]
fn hub_close_code_and_reason_are_reported() {
    let hub = TestHub::start(None, |ws, seen| {
        ws.close(Some(CloseFrame { code: CloseCode::Policy, reason: "retry in 30 s".into() }))
            .expect("send close");
        record(ws, seen);
    });
    let (_handle, events) = spawn(params(hub.ws_url()));
    assert_eq!(next_event(&events), HubEvent::Connected { conn_id: CONN_ID });
    let ending = expect_disconnected(&events);
    assert_eq!(ending.reason, "closed by hub (code 1008: retry in 30 s)");
    assert_eq!(ending.close_code, Some(1008));
    assert_eq!(ending.close_reason.as_deref(), Some("retry in 30 s"));
    // tungstenite answered the hub's close with the same code.
    assert_eq!(hub.next(), Seen::Close(Some(1008)));
}

#[test]
fn hub_dropping_the_socket_is_reported() {
    let hub = TestHub::start(None, |_ws, _seen| {});
    let (_handle, events) = spawn(params(hub.ws_url()));
    assert_eq!(next_event(&events), HubEvent::Connected { conn_id: CONN_ID });
    let ending = expect_disconnected(&events);
    assert_eq!(ending.reason, "connection closed by hub without a close frame");
    assert_eq!(ending.close_code, None);
}

#[test]
fn connection_refused_is_reported_without_waiting_for_the_timeout() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut params = params(format!("ws://127.0.0.1:{port}/ws"));
    // Far longer than the failsafe: only a prompt refusal passes.
    params.connect_timeout = Duration::from_secs(60);
    let (_handle, events) = spawn(params);
    let ending = expect_disconnected(&events);
    assert!(ending.reason.starts_with("connection refused"), "{}", ending.reason);
}

#[test]
fn frames_up_to_the_limit_pass_and_a_larger_one_ends_the_connection() {
    let hub = TestHub::start(None, |ws, seen| {
        ws.send(Message::text("a".repeat(1024))).unwrap();
        ws.send(Message::text("b".repeat(1025))).unwrap();
        record(ws, seen);
    });
    let mut params = params(hub.ws_url());
    params.max_message_bytes = 1024;
    let (_handle, events) = spawn(params);
    assert_eq!(next_event(&events), HubEvent::Connected { conn_id: CONN_ID });
    assert_eq!(next_event(&events), HubEvent::Frame { conn_id: CONN_ID, text: "a".repeat(1024) });
    let ending = expect_disconnected(&events);
    assert_eq!(ending.reason, "frame larger than max_message_bytes (1024): 1025 bytes");
    // Best effort, the sidecar told the hub why.
    assert_eq!(hub.next(), Seen::Close(Some(1009)));
}

#[test]
fn an_oversized_frame_is_refused_from_its_header() {
    // The hub announces a 1 MiB text frame (under tungstenite's default
    // frame limit) and then sends nothing more. A client that waited for the
    // payload before checking the size would hang here.
    let hub = TestHub::start(None, |ws, seen| {
        let mut header = vec![0x81, 127];
        header.extend_from_slice(&(1u64 << 20).to_be_bytes());
        ws.get_mut().write_all(&header).unwrap();
        ws.get_mut().flush().unwrap();
        read_until_eof(ws.get_mut());
        seen.send(Seen::Ended("eof".to_owned())).unwrap();
    });
    let mut params = params(hub.ws_url());
    params.max_message_bytes = 1024;
    let (_handle, events) = spawn(params);
    assert_eq!(next_event(&events), HubEvent::Connected { conn_id: CONN_ID });
    let ending = expect_disconnected(&events);
    assert!(ending.reason.starts_with("frame larger than max_message_bytes (1024)"), "{}", ending.reason);
    assert_eq!(hub.next(), Seen::Ended("eof".to_owned()));
}

#[test]
fn hub_pings_are_answered() {
    let hub = TestHub::start(None, |ws, seen| {
        ws.send(Message::Ping("are you there".into())).unwrap();
        record(ws, seen);
    });
    let (handle, events) = spawn(params(hub.ws_url()));
    assert_eq!(next_event(&events), HubEvent::Connected { conn_id: CONN_ID });
    assert_eq!(hub.next(), Seen::Pong);
    drop(handle);
    assert_eq!(hub.next(), Seen::Close(Some(1000)));
}

#[test]
fn binary_frames_are_ignored() {
    // Sent right after the upgrade, so they may arrive together with the
    // handshake response: the first read after connecting must find them.
    let hub = TestHub::start(None, |ws, seen| {
        ws.send(Message::binary(vec![1, 2, 3])).unwrap();
        ws.send(Message::text("after binary")).unwrap();
        record(ws, seen);
    });
    let (handle, events) = spawn(params(hub.ws_url()));
    assert_eq!(next_event(&events), HubEvent::Connected { conn_id: CONN_ID });
    assert_eq!(next_event(&events), HubEvent::Frame { conn_id: CONN_ID, text: "after binary".to_owned() });
    drop(handle);
    assert_eq!(hub.next(), Seen::Close(Some(1000)));
}

#[test]
#[cfg_attr(
    windows,
    ignore = "skipped on Windows: the TLS tests mint their CA with OpenSSL, a Unix-only dev-dependency"
)]
fn wss_with_tls_ca_file_connects() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let hub = TestHub::start(Some(ca.acceptor()), |ws, seen| {
        let first = ws.read().expect("read the first frame");
        seen.send(Seen::from(first)).unwrap();
        ws.send(Message::text("welcome over tls")).unwrap();
        record(ws, seen);
    });
    let mut params = params(format!("wss://localhost:{}/ws", hub.port));
    params.tls_ca_file = Some(ca.ca_file.clone());
    let (handle, events) = spawn(params);
    assert_eq!(next_event(&events), HubEvent::Connected { conn_id: CONN_ID });
    handle.send("hello over tls".to_owned());
    assert_eq!(hub.next(), Seen::Text("hello over tls".to_owned()));
    assert_eq!(
        next_event(&events),
        HubEvent::Frame { conn_id: CONN_ID, text: "welcome over tls".to_owned() }
    );
    handle.close();
    assert_eq!(hub.next(), Seen::Close(Some(1000)));
    let ending = expect_disconnected(&events);
    assert_eq!(ending.reason, "closed by sidecar");
}

#[test]
#[cfg_attr(
    windows,
    ignore = "skipped on Windows: the TLS tests mint their CA with OpenSSL, a Unix-only dev-dependency"
)]
fn wss_without_tls_ca_file_rejects_the_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let hub = TestHub::start(Some(ca.acceptor()), record);
    let (_handle, events) = spawn(params(format!("wss://localhost:{}/ws", hub.port)));
    let ending = expect_disconnected(&events);
    assert!(ending.reason.starts_with("TLS handshake failed"), "{}", ending.reason);
    assert!(ending.reason.contains("the server's certificate is not trusted"), "{}", ending.reason);
    assert!(ending.reason.contains("set tls_ca_file"), "{}", ending.reason);
    assert!(!ending.reason.contains("does not speak TLS"), "{}", ending.reason);
    assert!(matches!(hub.next(), Seen::Ended(_)));
}

#[test]
fn wss_to_a_server_that_does_not_speak_tls_says_so_and_not_to_set_tls_ca_file() {
    // A plain web server answers the TLS ClientHello as a bad HTTP request.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 512];
        let _ = stream.read(&mut buf);
        let _ =
            stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    });
    let (_handle, events) = spawn(params(format!("wss://127.0.0.1:{port}/ws")));
    let ending = expect_disconnected(&events);
    // OpenSSL reads the answer and knows it is not TLS; SChannel (under
    // Wine at least) only sees the connection end.
    let known = if cfg!(unix) { "the server does not speak TLS" } else { "TLS handshake failed: the server" };
    assert!(ending.reason.contains(known), "{}", ending.reason);
    assert!(ending.reason.contains("needs a ws:// hub_url"), "{}", ending.reason);
    assert!(!ending.reason.contains("tls_ca_file"), "{}", ending.reason);
    server.join().unwrap();
}

#[test]
#[cfg_attr(
    windows,
    ignore = "skipped on Windows: the TLS tests mint their CA with OpenSSL, a Unix-only dev-dependency"
)]
fn wss_checks_the_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    // Trusted CA, but the certificate is for another name.
    let hub = TestHub::start(Some(ca.acceptor_for_other_name("hub.invalid")), record);
    let mut params = params(format!("wss://localhost:{}/ws", hub.port));
    params.tls_ca_file = Some(ca.ca_file.clone());
    let (_handle, events) = spawn(params);
    let ending = expect_disconnected(&events);
    assert!(ending.reason.starts_with("TLS handshake failed"), "{}", ending.reason);
    assert!(matches!(hub.next(), Seen::Ended(_)));
}

#[test]
fn unreadable_tls_ca_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut params = params("wss://localhost:1/ws".to_owned());
    params.tls_ca_file = Some(dir.path().join("missing.pem"));
    let (_handle, events) = spawn(params);
    let ending = expect_disconnected(&events);
    assert!(ending.reason.starts_with("cannot read tls_ca_file"), "{}", ending.reason);
}

#[test]
fn silent_hub_times_out_after_connect_timeout() {
    let port = silent_hub();
    let mut params = params(format!("ws://127.0.0.1:{port}/ws"));
    params.connect_timeout = Duration::from_millis(300);
    let started = Instant::now();
    let (_handle, events) = spawn(params);
    // No Connected first: the handshake never finished.
    let ending = expect_disconnected(&events);
    assert_eq!(ending.reason, "connect timed out after 300 ms (WebSocket handshake)");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn close_while_connecting_ends_at_once() {
    let port = silent_hub();
    let mut params = params(format!("ws://127.0.0.1:{port}/ws"));
    // Far longer than the failsafe: only the close can end it in time.
    params.connect_timeout = Duration::from_secs(60);
    let (handle, events) = spawn(params);
    handle.close();
    let ending = expect_disconnected(&events);
    assert_eq!(ending.reason, "closed by sidecar before the connection was established");
}

#[test]
fn close_gives_up_after_close_timeout_when_the_hub_does_not_answer() {
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
    // The hub completes the handshake, then never reads again until the test
    // is over, so our close frame is never answered.
    let hub = TestHub::start(None, move |_ws, _seen| {
        let _ = stop_rx.recv_timeout(FAILSAFE);
    });
    let mut params = params(hub.ws_url());
    params.close_timeout = Duration::from_millis(300);
    let (handle, events) = spawn(params);
    assert_eq!(next_event(&events), HubEvent::Connected { conn_id: CONN_ID });
    let started = Instant::now();
    handle.close();
    let ending = expect_disconnected(&events);
    assert_eq!(ending.reason, "closed by sidecar; the hub did not answer the close within 300 ms");
    assert!(started.elapsed() >= Duration::from_millis(300));
    drop(stop_tx);
}

#[test]
fn reasons_never_contain_url_credentials() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    for url in [
        format!("ws://user:s3cret@127.0.0.1:{port}/ws?token=t0ken"),
        "ftp://user:s3cret@127.0.0.1/?token=t0ken".to_owned(),
        "not a url s3cret t0ken".to_owned(),
    ] {
        let (_handle, events) = spawn(params(url));
        let ending = expect_disconnected(&events);
        assert!(!ending.reason.contains("s3cret") && !ending.reason.contains("t0ken"), "{}", ending.reason);
    }
}

// ---------------------------------------------------------------------------
// Client side helpers.

fn params(url: String) -> HubParams {
    HubParams {
        conn_id: CONN_ID,
        url,
        tls_ca_file: None,
        max_message_bytes: 1 << 20,
        connect_timeout: FAILSAFE,
        close_timeout: FAILSAFE,
    }
}

fn spawn(params: HubParams) -> (HubHandle, Receiver<HubEvent>) {
    let (events_tx, events_rx) = crossbeam_channel::unbounded();
    let handle = HubHandle::spawn(
        params,
        Box::new(move |event| {
            let _ = events_tx.send(event);
        }),
    )
    .expect("spawn the hub connection");
    (handle, events_rx)
}

fn next_event(events: &Receiver<HubEvent>) -> HubEvent {
    events.recv_timeout(FAILSAFE).unwrap_or_else(|err| panic!("no hub event within {FAILSAFE:?}: {err}"))
}

#[derive(Debug)]
struct Ending {
    reason: String,
    close_code: Option<u16>,
    close_reason: Option<String>,
}

/// Expects `Disconnected` next, then that the thread ends with no further
/// event.
fn expect_disconnected(events: &Receiver<HubEvent>) -> Ending {
    let ending = match next_event(events) {
        HubEvent::Disconnected { conn_id, reason, close_code, close_reason } => {
            assert_eq!(conn_id, CONN_ID);
            Ending { reason, close_code, close_reason }
        }
        other => panic!("expected Disconnected, got {other:?}"),
    };
    match events.recv_timeout(FAILSAFE) {
        Err(RecvTimeoutError::Disconnected) => ending,
        other => {
            panic!("expected the hub thread to end after Disconnected ({ending:?}), got {other:?}")
        }
    }
}

// ---------------------------------------------------------------------------
// The scripted hub.

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

type ServerWs = WebSocket<Box<dyn Stream>>;

/// What the scripted hub saw from the sidecar.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Text(String),
    Close(Option<u16>),
    Pong,
    Other(String),
    /// The connection ended; "closed" after a completed close handshake,
    /// otherwise the error.
    Ended(String),
}

impl From<Message> for Seen {
    fn from(message: Message) -> Seen {
        match message {
            Message::Text(text) => Seen::Text(text.as_str().to_owned()),
            Message::Close(frame) => Seen::Close(frame.map(|frame| u16::from(frame.code))),
            Message::Pong(_) => Seen::Pong,
            other => Seen::Other(format!("{other:?}")),
        }
    }
}

/// One-connection WebSocket server on 127.0.0.1:0.
struct TestHub {
    port: u16,
    seen: Receiver<Seen>,
}

impl TestHub {
    /// Accepts one connection (through `tls` first when given), completes the
    /// WebSocket handshake and runs `script`. A failed TLS or WebSocket
    /// handshake is reported as `Seen::Ended`.
    fn start(
        tls: Option<TlsAcceptor>,
        script: impl FnOnce(&mut ServerWs, &Sender<Seen>) + Send + 'static,
    ) -> TestHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (seen_tx, seen_rx) = crossbeam_channel::unbounded();
        thread::Builder::new()
            .name("test-hub".to_owned())
            .spawn(move || {
                let (tcp, _) = listener.accept().expect("accept");
                let stream: Box<dyn Stream> = match tls {
                    None => Box::new(tcp),
                    Some(acceptor) => match acceptor.accept(tcp) {
                        Ok(stream) => Box::new(stream),
                        Err(err) => {
                            let _ = seen_tx.send(Seen::Ended(format!("tls: {err}")));
                            return;
                        }
                    },
                };
                let mut ws = match tungstenite::accept(stream) {
                    Ok(ws) => ws,
                    Err(err) => {
                        let _ = seen_tx.send(Seen::Ended(format!("handshake: {err}")));
                        return;
                    }
                };
                script(&mut ws, &seen_tx);
            })
            .unwrap();
        TestHub { port, seen: seen_rx }
    }

    fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    fn next(&self) -> Seen {
        self.seen
            .recv_timeout(FAILSAFE)
            .unwrap_or_else(|err| panic!("the test hub saw nothing within {FAILSAFE:?}: {err}"))
    }
}

/// Reports everything the sidecar sends until the connection ends.
fn record(ws: &mut ServerWs, seen: &Sender<Seen>) {
    loop {
        match ws.read() {
            Ok(Message::Ping(_)) => {}
            Ok(message) => {
                let _ = seen.send(Seen::from(message));
            }
            Err(tungstenite::Error::ConnectionClosed) => {
                let _ = seen.send(Seen::Ended("closed".to_owned()));
                return;
            }
            Err(err) => {
                let _ = seen.send(Seen::Ended(err.to_string()));
                return;
            }
        }
    }
}

/// A hub that accepts TCP and never answers the WebSocket handshake. Its
/// thread ends when the sidecar hangs up.
fn silent_hub() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::Builder::new()
        .name("silent-hub".to_owned())
        .spawn(move || {
            let (mut tcp, _) = listener.accept().expect("accept");
            read_until_eof(&mut tcp);
        })
        .unwrap();
    port
}

fn read_until_eof(stream: &mut (impl Read + ?Sized)) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            return;
        }
    }
}
