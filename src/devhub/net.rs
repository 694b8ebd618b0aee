//! The development hub's network loop: one accept thread, one thread per
//! connection that owns its WebSocket (a 50 ms read timeout lets it drain its
//! outbox and notice `stop`), and one sweep thread for acceptance windows
//! driven by a crossbeam ticker. Every decision is the state's; this file only
//! moves frames between sockets and the state.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};
use serde_json::Value;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{HandshakeError, Message, WebSocket};

use super::observe::DevHubEvent;
use super::redact_token;
use super::schema::error_reply;
use super::state::{HubState, Outgoing, Reply};

/// Read poll of a connection thread: the bound on how long it takes to notice
/// an outbox frame or `stop`.
pub(super) const READ_POLL: Duration = Duration::from_millis(50);
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the hub waits for the peer's close frame after sending its own.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// The same wait while the hub stops: short, so `stop` stays quick even when a
/// peer is not reading.
pub(super) const STOP_CLOSE_GRACE: Duration = Duration::from_millis(300);

pub(super) struct Shared {
    pub(super) state: Mutex<HubState>,
    pub(super) stopping: AtomicBool,
    pub(super) conn_threads: Mutex<Vec<JoinHandle<()>>>,
    /// A clone of each connection's socket, so `drop_connection` can shut it
    /// down at once.
    pub(super) sockets: Mutex<HashMap<u64, TcpStream>>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding the lock leaves consistent-enough state for a
        // test tool; keep serving rather than cascade the panic.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn sockets(&self) -> MutexGuard<'_, HashMap<u64, TcpStream>> {
        self.sockets.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub(super) fn join_logged(handle: JoinHandle<()>) {
    let name = handle.thread().name().unwrap_or("devhub thread").to_string();
    if handle.join().is_err() {
        log::error!("{name} panicked");
    }
}

pub(super) fn sweep_loop(shared: &Shared, stop: &Receiver<()>, tick: Duration) {
    let ticker = crossbeam_channel::tick(tick);
    loop {
        select! {
            // Nothing is ever sent: the sender is dropped to stop.
            recv(stop) -> _ => return,
            recv(ticker) -> _ => shared.lock().sweep(Instant::now()),
        }
    }
}

pub(super) fn accept_loop(
    shared: &Arc<Shared>,
    listener: &TcpListener,
    tls: Option<&native_tls::TlsAcceptor>,
) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let tcp = match stream {
            Ok(tcp) => tcp,
            Err(err) => {
                log::warn!("devhub: accept failed: {err}");
                continue;
            }
        };
        let conn_shared = Arc::clone(shared);
        let tls = tls.cloned();
        let spawned = thread::Builder::new()
            .name("devhub-conn".to_string())
            .spawn(move || serve_tcp(&conn_shared, tcp, tls.as_ref()));
        match spawned {
            Ok(handle) => {
                let mut handles = shared.conn_threads.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                // Join the threads that are done so a long-running hub does not
                // pile up handles.
                let (done, running): (Vec<_>, Vec<_>) = handles.drain(..).partition(JoinHandle::is_finished);
                *handles = running;
                handles.push(handle);
                drop(handles);
                done.into_iter().for_each(join_logged);
            }
            Err(err) => log::error!("devhub: cannot spawn a connection thread: {err}"),
        }
    }
}

/// Sets the socket up, registers the connection, runs the handshakes and the
/// connection loop, and reports the disconnect.
pub(super) fn serve_tcp(shared: &Shared, tcp: TcpStream, tls: Option<&native_tls::TlsAcceptor>) {
    let setup = tcp
        .set_read_timeout(Some(READ_POLL))
        .and_then(|()| tcp.set_nodelay(true))
        .and_then(|()| tcp.try_clone());
    let tcp_clone = match setup {
        Ok(clone) => clone,
        Err(err) => {
            log::warn!("devhub: cannot set up a connection: {err}");
            return;
        }
    };
    let (outbox_tx, outbox_rx) = crossbeam_channel::unbounded();
    let conn = shared.lock().register_conn(outbox_tx);
    shared.sockets().insert(conn, tcp_clone);
    let served = match tls {
        None => handshake_ws(shared, tcp).map(|ws| run_connection(shared, conn, ws, &outbox_rx)),
        Some(acceptor) => handshake_tls(shared, acceptor, tcp)
            .and_then(|stream| handshake_ws(shared, stream))
            .map(|ws| run_connection(shared, conn, ws, &outbox_rx)),
    };
    shared.sockets().remove(&conn);
    let mut state = shared.lock();
    match served {
        Ok(()) => state.disconnect(conn, Instant::now()),
        Err(reason) => {
            state.conns.remove(&conn);
            log::debug!("devhub conn {conn}: handshake failed: {reason}");
            state.emit(DevHubEvent::HandshakeFailed { conn, reason });
        }
    }
}

pub(super) fn handshake_tls(
    shared: &Shared,
    acceptor: &native_tls::TlsAcceptor,
    tcp: TcpStream,
) -> Result<native_tls::TlsStream<TcpStream>, String> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut result = acceptor.accept(tcp);
    loop {
        match result {
            Ok(stream) => return Ok(stream),
            Err(native_tls::HandshakeError::WouldBlock(mid)) => {
                if shared.stopping.load(Ordering::SeqCst) || Instant::now() > deadline {
                    return Err("tls handshake interrupted".to_string());
                }
                result = mid.handshake();
            }
            Err(native_tls::HandshakeError::Failure(err)) => return Err(format!("tls: {err}")),
        }
    }
}

pub(super) fn handshake_ws<S: Read + Write>(shared: &Shared, stream: S) -> Result<WebSocket<S>, String> {
    // The real hub serves the socket on /ws only; anything else is a 404, which
    // catches a wrong hub_url early. The Result type is tungstenite's callback
    // signature, large error variant included.
    #[allow(clippy::result_large_err)]
    let check_path = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() == "/ws" {
            Ok(response)
        } else {
            let mut not_found = ErrorResponse::new(Some("not found".to_string()));
            *not_found.status_mut() = tungstenite::http::StatusCode::NOT_FOUND;
            Err(not_found)
        }
    };
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut result = tungstenite::accept_hdr(stream, check_path);
    loop {
        match result {
            Ok(ws) => return Ok(ws),
            Err(HandshakeError::Interrupted(mid)) => {
                if shared.stopping.load(Ordering::SeqCst) || Instant::now() > deadline {
                    return Err("websocket handshake interrupted".to_string());
                }
                result = mid.handshake();
            }
            Err(HandshakeError::Failure(err)) => return Err(format!("websocket: {err}")),
        }
    }
}

/// The connection loop: drain the outbox, read one frame (or time out after
/// `READ_POLL`), handle it, repeat until the socket or the hub goes away.
pub(super) fn run_connection<S: Read + Write>(
    shared: &Shared,
    conn: u64,
    mut ws: WebSocket<S>,
    outbox: &Receiver<Outgoing>,
) {
    let idle_timeout = {
        let state = shared.lock();
        state.emit(DevHubEvent::Connected { conn });
        state.idle_timeout
    };
    let mut last_heard = Instant::now();
    loop {
        if idle_timeout.is_some_and(|idle| last_heard.elapsed() >= idle) && !shared.lock().silent {
            close(shared, conn, &mut ws, 1002, "idle timeout", CLOSE_GRACE);
            return;
        }
        if shared.stopping.load(Ordering::SeqCst) {
            close(shared, conn, &mut ws, 1001, "hub stopping", STOP_CLOSE_GRACE);
            return;
        }
        while let Ok(outgoing) = outbox.try_recv() {
            match outgoing {
                Outgoing::Frame(frame) => {
                    if shared.lock().silent {
                        log::debug!("devhub conn {conn} -> (silent) {}", redact_token(&frame));
                        shared.lock().emit(DevHubEvent::Suppressed { conn, frame });
                    } else if !send(shared, conn, &mut ws, frame) {
                        return;
                    }
                }
                Outgoing::Close { code, reason } => {
                    close(shared, conn, &mut ws, code, &reason, CLOSE_GRACE);
                    return;
                }
            }
        }
        let read = ws.read();
        if read.is_ok() {
            last_heard = Instant::now();
        }
        let replies = match read {
            Ok(Message::Text(text)) => receive(shared, conn, text.as_str()),
            Ok(Message::Binary(bytes)) => {
                // The real hub only handles text frames; its handler crashes on
                // anything else and the socket goes down.
                let text = String::from_utf8_lossy(&bytes).into_owned();
                shared.lock().emit(DevHubEvent::ReceivedText { conn, text });
                vec![Reply::Close { code: 1003, reason: "text frames only".to_string() }]
            }
            // Pings are answered by tungstenite; a close is answered by it too,
            // and the next read reports ConnectionClosed.
            Ok(_) => Vec::new(),
            Err(tungstenite::Error::Io(err))
                if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
            {
                Vec::new()
            }
            Err(err) => {
                log::debug!("devhub conn {conn}: read ended: {err}");
                return;
            }
        };
        for reply in replies {
            match reply {
                Reply::Frame(frame) => {
                    if !send(shared, conn, &mut ws, frame) {
                        return;
                    }
                }
                Reply::Close { code, reason } => {
                    close(shared, conn, &mut ws, code, &reason, CLOSE_GRACE);
                    return;
                }
                Reply::Emit(event) => shared.lock().emit(event),
            }
        }
    }
}

/// Records a text frame and, unless the hub is silent, handles it.
pub(super) fn receive(shared: &Shared, conn: u64, text: &str) -> Vec<Reply> {
    let frame: Value = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(_) => {
            log::debug!("devhub conn {conn} <- (not JSON) {} bytes", text.len());
            let state = shared.lock();
            state.emit(DevHubEvent::ReceivedText { conn, text: text.to_string() });
            if state.silent {
                return Vec::new();
            }
            return vec![error_reply("invalid_json")];
        }
    };
    log::debug!("devhub conn {conn} <- {}", redact_token(&frame));
    let mut state = shared.lock();
    state.emit(DevHubEvent::Received { conn, frame: frame.clone() });
    if state.silent {
        return Vec::new();
    }
    state.handle_frame(conn, &frame, Instant::now())
}

pub(super) fn send<S: Read + Write>(shared: &Shared, conn: u64, ws: &mut WebSocket<S>, frame: Value) -> bool {
    let text = frame.to_string();
    match ws.send(Message::text(text)) {
        Ok(()) => {
            log::debug!("devhub conn {conn} -> {}", redact_token(&frame));
            shared.lock().emit(DevHubEvent::Sent { conn, frame });
            true
        }
        Err(err) => {
            log::debug!("devhub conn {conn}: write failed: {err}");
            false
        }
    }
}

/// Sends a close frame, then keeps reading (which flushes) until the peer's
/// close arrives or `grace` runs out.
pub(super) fn close<S: Read + Write>(
    shared: &Shared,
    conn: u64,
    ws: &mut WebSocket<S>,
    code: u16,
    reason: &str,
    grace: Duration,
) {
    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.to_string().into() };
    if ws.close(Some(frame)).is_err() {
        return;
    }
    shared.lock().emit(DevHubEvent::ClosedByHub { conn, code, reason: reason.to_string() });
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::Io(err))
                if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}
