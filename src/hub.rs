//! The hub socket thread: one thread per connection that owns the WebSocket
//! to the AgentCom hub outright, and `HubHandle`, the main loop's way to talk
//! to it.
//!
//! The thread connects (DNS, TCP, TLS for `wss://`, WebSocket handshake, all
//! bounded together by `connect_timeout`), then relays: every text frame from
//! the hub becomes `HubEvent::Frame`, and every `HubHandle::send` becomes a text
//! frame to the hub, in call order. It ends with exactly one
//! `HubEvent::Disconnected` and exits. Reconnecting is not its business: the
//! main loop spawns a new connection with a new `conn_id`.
//!
//! Why mio: the socket thread must hand a frame to the kernel within about a
//! millisecond of the loop asking, and must not wake up when nothing happens.
//! A blocking read with a short read timeout (ewebsock's approach) cannot do
//! both, so the thread blocks in `mio::Poll` on the socket plus a `mio::Waker`
//! that `send`/`close` trigger. In steady state the poll has no timeout at all.
//! mio is edge-triggered, so every socket event is followed by reading until
//! `WouldBlock`, and a write that would block is finished on the next event
//! (the socket is registered for both readable and writable).
//!
//! TLS is done by hand with native-tls over the non-blocking socket, because
//! tungstenite's own `client_tls*` helpers cannot resume a TLS handshake that
//! would block. The certificate and the host name are always verified.
//!
//! Nothing here logs or reports frame contents (the first frame carries the
//! secret token) or the raw hub URL (it may carry credentials); URLs go
//! through `config::redact_url`.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use tungstenite::client::IntoClientRequest;
use tungstenite::error::{CapacityError, ProtocolError};
use tungstenite::handshake::HandshakeError as WsHandshakeError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::Utf8Bytes;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

use crate::config::redact_url;

/// Everything one connection attempt needs.
#[derive(Clone)]
pub struct HubParams {
    /// Echoed in every event so the owner can ignore stale connections.
    pub conn_id: u64,
    /// `ws://host:port/path` or `wss://...`. Never logged unredacted.
    pub url: String,
    /// PEM file whose certificates are trusted in addition to the system
    /// roots. `None`: system roots only.
    pub tls_ca_file: Option<PathBuf>,
    /// The largest frame (and message) accepted from the hub. A bigger one is
    /// refused from its header and ends the connection.
    pub max_message_bytes: usize,
    /// Bounds DNS, TCP connect, TLS and WebSocket handshakes together.
    pub connect_timeout: Duration,
    /// How long a graceful close waits for the hub's close reply.
    pub close_timeout: Duration,
}

/// What the socket thread reports. `Disconnected` is always the last event
/// of a connection, and there is exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubEvent {
    /// The WebSocket handshake is done; frames can flow.
    Connected { conn_id: u64 },
    /// One text frame received from the hub.
    Frame { conn_id: u64, text: String },
    /// The connection is over and the thread is exiting. `reason` is a
    /// one-line description for logs; `close_code` and `close_reason` are
    /// what the hub's close frame said, if it sent one (an empty close reason
    /// is reported as `None`).
    Disconnected { conn_id: u64, reason: String, close_code: Option<u16>, close_reason: Option<String> },
}

/// The owner's end of one hub connection.
///
/// Dropping it closes the connection gracefully (bounded by
/// `close_timeout`) and joins the thread.
pub struct HubHandle {
    // Drop order is significant: the command sender goes first so that the
    // thread sees its inbox disconnect even if the explicit close in `Drop`
    // were lost, and the join handle last. Mirrors rust-analyzer's
    // `FlycheckHandle`.
    commands: Sender<Command>,
    waker: Arc<Waker>,
    conn_id: u64,
    thread: Option<JoinHandle<()>>,
}

impl HubHandle {
    /// Starts the socket thread `hub-conn-<conn_id>`, which connects at once
    /// and reports through `on_event` (called on that thread).
    ///
    /// An `Err` means the thread could not be started (no poller, no thread);
    /// then no event is ever reported. Every failure after that, including a
    /// failed connect, is reported as `HubEvent::Disconnected`.
    pub fn spawn(params: HubParams, on_event: Box<dyn Fn(HubEvent) + Send>) -> io::Result<HubHandle> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (commands_tx, commands_rx) = crossbeam_channel::unbounded();
        let conn_id = params.conn_id;
        let thread = thread::Builder::new()
            .name(format!("hub-conn-{conn_id}"))
            .spawn(move || connection_thread(params, poll, commands_rx, on_event))?;
        Ok(HubHandle { commands: commands_tx, waker, conn_id, thread: Some(thread) })
    }

    /// The id this connection reports in its events.
    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }

    /// Queues a text frame and wakes the thread; never blocks. Frames go out
    /// in call order; frames sent before `Connected` go out right after the
    /// handshake. A frame sent after the connection ended, or after a close
    /// started, is dropped (the owner learns of the end from `Disconnected`).
    pub fn send(&self, text: String) {
        if self.commands.send(Command::Send(text)).is_err() {
            debug!("hub connection {}: already ended, frame dropped", self.conn_id);
            return;
        }
        self.wake();
    }

    /// Starts a graceful close: a close frame with code 1000, then reading
    /// and flushing until the hub answers or `close_timeout` passes. The
    /// thread then reports `Disconnected` and exits. Calling it again, or
    /// after the end, does nothing. Never blocks.
    pub fn close(&self) {
        if self.commands.send(Command::Close).is_ok() {
            self.wake();
        }
    }

    fn wake(&self) {
        // A failed wake would leave the frame sitting in the channel until
        // the next socket event, so it is worth a warning; it should not
        // happen while the poller exists.
        if let Err(err) = self.waker.wake() {
            warn!("hub connection {}: cannot wake the socket thread: {err}", self.conn_id);
        }
    }
}

impl Drop for HubHandle {
    fn drop(&mut self) {
        self.close();
        if let Some(thread) = self.thread.take() {
            if let Err(payload) = thread.join() {
                // Re-raise the worker's panic, as lsp-server's `IoThreads::join`
                // does, unless we are already unwinding (a second panic aborts).
                if !thread::panicking() {
                    std::panic::resume_unwind(payload);
                }
            }
        }
    }
}

impl fmt::Debug for HubParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubParams")
            .field("conn_id", &self.conn_id)
            .field("url", &redact_url(&self.url))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("connect_timeout", &self.connect_timeout)
            .field("close_timeout", &self.close_timeout)
            .finish()
    }
}

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);

/// How many messages one turn reads before looking at the command channel
/// again, so a hub that floods us cannot starve our outgoing frames.
const READ_BUDGET: usize = 64;

enum Command {
    Send(String),
    Close,
}

type WsStream = MaybeTlsStream<TcpStream>;

/// How a connection ended: the payload of `HubEvent::Disconnected`.
struct Ending {
    reason: String,
    close_code: Option<u16>,
    close_reason: Option<String>,
}

impl Ending {
    fn error(reason: impl Into<String>) -> Ending {
        Ending { reason: reason.into(), close_code: None, close_reason: None }
    }
}

fn connection_thread(
    params: HubParams,
    poll: Poll,
    commands: Receiver<Command>,
    on_event: Box<dyn Fn(HubEvent) + Send>,
) {
    let conn_id = params.conn_id;
    debug!("hub connection {conn_id}: connecting to {}", redact_url(&params.url));
    let mut connector =
        Connector { params, poll, events: Events::with_capacity(16), commands, outbox: VecDeque::new() };
    let ending = match connector.connect() {
        Ok(ws) => {
            debug!("hub connection {conn_id}: connected");
            on_event(HubEvent::Connected { conn_id });
            // The session owns the socket and drops it before returning, so
            // the socket is closed by the time the owner hears Disconnected.
            Session::new(connector, ws, &*on_event).run()
        }
        Err(ending) => ending,
    };
    debug!("hub connection {conn_id}: disconnected: {}", ending.reason);
    on_event(HubEvent::Disconnected {
        conn_id,
        reason: ending.reason,
        close_code: ending.close_code,
        close_reason: ending.close_reason,
    });
}

/// The connecting half: everything up to a finished WebSocket handshake.
struct Connector {
    params: HubParams,
    poll: Poll,
    events: Events,
    commands: Receiver<Command>,
    /// Frames the owner sent before the handshake finished, in call order.
    outbox: VecDeque<String>,
}

impl Connector {
    fn connect(&mut self) -> Result<WebSocket<WsStream>, Ending> {
        let deadline = deadline_after(self.params.connect_timeout);

        // The request is built from the raw URL, so its errors are reported
        // without echoing it.
        let request = self
            .params
            .url
            .as_str()
            .into_client_request()
            .map_err(|_| Ending::error("invalid hub URL (expected ws://host:port/path or wss://...)"))?;
        let uri = request.uri();
        let use_tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(Ending::error("invalid hub URL (the scheme must be ws or wss)")),
        };
        let host = match uri.host() {
            // `Uri::host` keeps the brackets of an IPv6 literal.
            Some(host) if !host.is_empty() => host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            _ => return Err(Ending::error("invalid hub URL (no host)")),
        };
        let port = uri.port_u16().unwrap_or(if use_tls { 443 } else { 80 });

        // Set up TLS before touching the network, so a bad tls_ca_file is
        // reported as such and not as a handshake failure.
        let tls_connector = if use_tls { Some(self.tls_connector()?) } else { None };

        let addrs = self.resolve(&host, port, deadline)?;
        let tcp = self.connect_tcp(&addrs, deadline)?;

        let stream = match tls_connector {
            None => MaybeTlsStream::Plain(tcp),
            Some(tls_connector) => {
                MaybeTlsStream::NativeTls(self.tls_handshake(&tls_connector, &host, tcp, deadline)?)
            }
        };

        // Limit frames as well as messages: tungstenite checks the frame
        // size from the header, before buffering the payload.
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(self.params.max_message_bytes))
            .max_frame_size(Some(self.params.max_message_bytes));
        let mut attempt = tungstenite::client::client_with_config(request, stream, Some(ws_config));
        loop {
            match attempt {
                Ok((ws, _response)) => return Ok(ws),
                Err(WsHandshakeError::Interrupted(mid)) => {
                    self.wait_for_socket(deadline, "WebSocket handshake")?;
                    attempt = mid.handshake();
                }
                Err(WsHandshakeError::Failure(err)) => {
                    return Err(Ending::error(describe_ws_handshake_error(err)))
                }
            }
        }
    }

    fn tls_connector(&self) -> Result<native_tls::TlsConnector, Ending> {
        let mut builder = native_tls::TlsConnector::builder();
        if let Some(path) = &self.params.tls_ca_file {
            let pem = std::fs::read(path)
                .map_err(|err| Ending::error(format!("cannot read tls_ca_file {}: {err}", path.display())))?;
            let certs = native_tls::Certificate::stack_from_pem(&pem).map_err(|err| {
                Ending::error(format!("tls_ca_file {} is not usable PEM: {err}", path.display()))
            })?;
            if certs.is_empty() {
                return Err(Ending::error(format!(
                    "tls_ca_file {} holds no PEM certificate",
                    path.display()
                )));
            }
            for cert in certs {
                builder.add_root_certificate(cert);
            }
        }
        builder.build().map_err(|err| Ending::error(format!("cannot set up TLS: {err}")))
    }

    /// Resolves `host`. A name lookup (`getaddrinfo`) blocks and cannot be
    /// interrupted, so it runs on a short-lived helper thread while this one
    /// keeps watching the deadline and the command channel; a lookup that
    /// outlives the deadline finishes in the background and is discarded.
    fn resolve(&mut self, host: &str, port: u16, deadline: Instant) -> Result<Vec<SocketAddr>, Ending> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let (result_tx, result_rx) = crossbeam_channel::bounded(1);
        let lookup = (host.to_owned(), port);
        thread::Builder::new()
            .name(format!("hub-dns-{}", self.params.conn_id))
            .spawn(move || {
                let result = lookup.to_socket_addrs().map(|addrs| addrs.collect::<Vec<_>>());
                // A failed send means the connection gave up waiting.
                let _ = result_tx.send(result);
            })
            .map_err(|err| Ending::error(format!("cannot start the DNS lookup thread: {err}")))?;
        let timeout = crossbeam_channel::at(deadline);
        loop {
            crossbeam_channel::select! {
                recv(result_rx) -> result => return match result {
                    Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
                    Ok(Ok(_)) => Err(Ending::error(format!("DNS lookup of {host} found no address"))),
                    Ok(Err(err)) => Err(Ending::error(format!("DNS lookup of {host} failed: {err}"))),
                    Err(_) => Err(Ending::error(format!("DNS lookup of {host} ended without an answer"))),
                },
                recv(self.commands) -> command => self.handle_command_while_connecting(command.ok())?,
                recv(timeout) -> _ => return Err(self.timed_out("DNS lookup")),
            }
        }
    }

    /// Tries each address in turn until one accepts, as `TcpStream::connect`
    /// in std does.
    fn connect_tcp(&mut self, addrs: &[SocketAddr], deadline: Instant) -> Result<TcpStream, Ending> {
        let mut last_error = None;
        for &addr in addrs {
            match self.connect_one(addr, deadline)? {
                Ok(stream) => return Ok(stream),
                Err(err) => {
                    debug!("hub connection {}: connect to {addr} failed: {err}", self.params.conn_id);
                    last_error = Some((addr, err));
                }
            }
        }
        Err(match last_error {
            Some((addr, err)) => Ending::error(describe_connect_error(addr, &err)),
            None => Ending::error("no address to connect to"),
        })
    }

    /// Non-blocking connect, following the steps in mio's
    /// `TcpStream::connect` docs. The outer `Err` ends the whole attempt
    /// (deadline, close); the inner one moves on to the next address.
    fn connect_one(&mut self, addr: SocketAddr, deadline: Instant) -> Result<io::Result<TcpStream>, Ending> {
        let mut stream = match TcpStream::connect(addr) {
            Ok(stream) => stream,
            Err(err) => return Ok(Err(err)),
        };
        // Registered for both directions for the life of the connection:
        // writable finishes the connect and any write that would block,
        // readable drives reads and handshakes.
        if let Err(err) =
            self.poll.registry().register(&mut stream, SOCKET, Interest::READABLE | Interest::WRITABLE)
        {
            return Err(Ending::error(format!("cannot register the socket with the poller: {err}")));
        }
        loop {
            if let Err(ending) = self.wait_for_socket(deadline, "TCP connect") {
                let _ = self.poll.registry().deregister(&mut stream);
                return Err(ending);
            }
            let outcome = match stream.take_error() {
                Ok(Some(err)) | Err(err) => Err(err),
                Ok(None) => match stream.peer_addr() {
                    Ok(_) => {
                        // Every write is a whole frame (or handshake
                        // message), so Nagle's algorithm only adds delay: a
                        // small frame sent while the previous one is unacked
                        // would wait for the hub's delayed ACK (~40 ms).
                        if let Err(err) = stream.set_nodelay(true) {
                            debug!("hub connection {}: cannot set TCP_NODELAY: {err}", self.params.conn_id);
                        }
                        return Ok(Ok(stream));
                    }
                    // Not connected yet: the event was spurious.
                    Err(err) if err.kind() == io::ErrorKind::NotConnected => continue,
                    Err(err) => Err(err),
                },
            };
            let _ = self.poll.registry().deregister(&mut stream);
            return Ok(outcome);
        }
    }

    fn tls_handshake(
        &mut self,
        tls_connector: &native_tls::TlsConnector,
        host: &str,
        tcp: TcpStream,
        deadline: Instant,
    ) -> Result<native_tls::TlsStream<TcpStream>, Ending> {
        let mut attempt = tls_connector.connect(host, tcp);
        loop {
            match attempt {
                Ok(stream) => return Ok(stream),
                Err(native_tls::HandshakeError::WouldBlock(mid)) => {
                    self.wait_for_socket(deadline, "TLS handshake")?;
                    attempt = mid.handshake();
                }
                Err(native_tls::HandshakeError::Failure(err)) => {
                    let hint = match self.params.tls_ca_file {
                        None => "if the hub uses a private CA, set tls_ca_file",
                        Some(_) => {
                            "the hub's certificate must be signed by the CA in tls_ca_file and name the host in hub_url"
                        }
                    };
                    return Err(Ending::error(format!("TLS handshake failed: {err} ({hint})")));
                }
            }
        }
    }

    /// Blocks until the socket reports an event or the deadline passes,
    /// taking commands as they come: sends are kept for after the handshake,
    /// a close abandons the attempt.
    fn wait_for_socket(&mut self, deadline: Instant, phase: &str) -> Result<(), Ending> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(self.timed_out(phase));
            }
            match self.poll.poll(&mut self.events, Some(deadline - now)) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(Ending::error(format!("waiting on the socket failed: {err}"))),
            }
            let socket_ready = self.events.iter().any(|event| event.token() == SOCKET);
            self.take_commands_while_connecting()?;
            if socket_ready {
                return Ok(());
            }
        }
    }

    fn take_commands_while_connecting(&mut self) -> Result<(), Ending> {
        loop {
            match self.commands.try_recv() {
                Ok(command) => self.handle_command_while_connecting(Some(command))?,
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return self.handle_command_while_connecting(None),
            }
        }
    }

    /// `None` means the handle is gone, which can only mean "close".
    fn handle_command_while_connecting(&mut self, command: Option<Command>) -> Result<(), Ending> {
        match command {
            Some(Command::Send(text)) => {
                self.outbox.push_back(text);
                Ok(())
            }
            Some(Command::Close) | None => {
                Err(Ending::error("closed by sidecar before the connection was established"))
            }
        }
    }

    fn timed_out(&self, phase: &str) -> Ending {
        Ending::error(format!(
            "connect timed out after {} ms ({phase})",
            self.params.connect_timeout.as_millis()
        ))
    }
}

/// The connected half: relays frames until the connection ends.
struct Session<'a> {
    connector: Connector,
    ws: WebSocket<WsStream>,
    on_event: &'a dyn Fn(HubEvent),
    /// We sent a close frame first (`close()` or the handle went away).
    close_sent_by_us: bool,
    /// The hub's close frame, once received: `Some(None)` is a close frame
    /// without a code.
    hub_close: Option<Option<CloseFrame>>,
    /// While a close handshake is under way: when we stop waiting for it.
    close_deadline: Option<Instant>,
    /// The last read stopped at `READ_BUDGET`, not at `WouldBlock`, so the
    /// edge-triggered poller will not report the rest: poll without blocking.
    more_to_read: bool,
}

impl<'a> Session<'a> {
    fn new(connector: Connector, ws: WebSocket<WsStream>, on_event: &'a dyn Fn(HubEvent)) -> Session<'a> {
        Session {
            connector,
            ws,
            on_event,
            close_sent_by_us: false,
            hub_close: None,
            close_deadline: None,
            more_to_read: false,
        }
    }

    fn run(mut self) -> Ending {
        // Frames sent while connecting go out first, in order.
        while let Some(text) = self.connector.outbox.pop_front() {
            if let Err(ending) = self.send_text(text) {
                return ending;
            }
        }
        // The handshakes may have read past their end (a frame the hub sent
        // right after the upgrade), and that socket edge is already spent, so
        // the first turn reads regardless.
        let mut socket_ready = true;
        loop {
            if let Err(ending) = self.turn(socket_ready) {
                return ending;
            }
            // Checked after the turn, so a close reply that arrives with the
            // deadline still counts.
            if let Some(deadline) = self.close_deadline {
                if Instant::now() >= deadline {
                    return self.close_timed_out();
                }
            }
            let timeout = if self.more_to_read {
                Some(Duration::ZERO)
            } else {
                // None in steady state: no wake-up unless something happens.
                self.close_deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()))
            };
            match self.connector.poll.poll(&mut self.connector.events, timeout) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {
                    socket_ready = false;
                    continue;
                }
                Err(err) => return Ending::error(format!("waiting on the socket failed: {err}")),
            }
            socket_ready =
                self.more_to_read || self.connector.events.iter().any(|event| event.token() == SOCKET);
        }
    }

    /// One pass: our frames first (latency), then whatever the hub sent,
    /// then flush again for tungstenite's automatic pong and close replies.
    fn turn(&mut self, socket_ready: bool) -> Result<(), Ending> {
        self.take_commands()?;
        self.flush()?;
        if socket_ready {
            self.read_available()?;
            self.flush()?;
        }
        Ok(())
    }

    fn take_commands(&mut self) -> Result<(), Ending> {
        loop {
            match self.connector.commands.try_recv() {
                Ok(Command::Send(text)) => self.send_text(text)?,
                Ok(Command::Close) => self.begin_close()?,
                Err(TryRecvError::Empty) => return Ok(()),
                // The handle is gone without a close; close anyway.
                Err(TryRecvError::Disconnected) => return self.begin_close(),
            }
        }
    }

    /// Queues a text frame; the turn's flush pushes it out.
    fn send_text(&mut self, text: String) -> Result<(), Ending> {
        if self.close_sent_by_us || self.hub_close.is_some() {
            debug!(
                "hub connection {}: closing, frame of {} bytes dropped",
                self.connector.params.conn_id,
                text.len()
            );
            return Ok(());
        }
        let result = self.ws.write(Message::text(text));
        self.check_write(result)
    }

    fn begin_close(&mut self) -> Result<(), Ending> {
        if self.close_sent_by_us || self.hub_close.is_some() {
            return Ok(());
        }
        self.close_sent_by_us = true;
        self.close_deadline = Some(deadline_after(self.connector.params.close_timeout));
        let result =
            self.ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: Utf8Bytes::from_static("") }));
        self.check_write(result)
    }

    fn flush(&mut self) -> Result<(), Ending> {
        loop {
            let result = self.ws.flush();
            match result {
                Err(tungstenite::Error::Io(ref err)) if err.kind() == io::ErrorKind::Interrupted => continue,
                _ => return self.check_write(result),
            }
        }
    }

    /// Maps the result of a write, close or flush. `WouldBlock` is fine: the
    /// bytes stay in tungstenite's buffer and the writable event flushes them.
    fn check_write(&mut self, result: tungstenite::Result<()>) -> Result<(), Ending> {
        match result {
            Ok(()) => Ok(()),
            Err(tungstenite::Error::Io(err))
                if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) =>
            {
                Ok(())
            }
            Err(tungstenite::Error::Protocol(ProtocolError::SendAfterClosing)) => Ok(()),
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Err(self.closed_ending())
            }
            Err(err) => Err(self.error_ending(err)),
        }
    }

    /// Reads until `WouldBlock` (mio is edge-triggered) or the read budget.
    fn read_available(&mut self) -> Result<(), Ending> {
        self.more_to_read = false;
        for _ in 0..READ_BUDGET {
            match self.ws.read() {
                Ok(Message::Text(text)) => (self.on_event)(HubEvent::Frame {
                    conn_id: self.connector.params.conn_id,
                    text: text.as_str().to_owned(),
                }),
                Ok(Message::Binary(data)) => debug!(
                    "hub connection {}: ignoring a binary frame of {} bytes",
                    self.connector.params.conn_id,
                    data.len()
                ),
                // tungstenite queues the pong itself; the turn's flush sends it.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Close(frame)) => {
                    if self.hub_close.is_none() {
                        self.hub_close = Some(frame);
                    }
                    // After the hub's close frame, wait for it to close the
                    // TCP connection (RFC 6455: the server closes first), but
                    // not forever.
                    if self.close_deadline.is_none() {
                        self.close_deadline = Some(deadline_after(self.connector.params.close_timeout));
                    }
                }
                Err(tungstenite::Error::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(tungstenite::Error::Io(err)) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Err(self.closed_ending());
                }
                // Once the hub's close frame is in, how the transport ends
                // (a reset, a TLS peer hanging up without close_notify) does
                // not change the outcome: the hub closed.
                Err(_) if self.hub_close.is_some() => return Err(self.closed_ending()),
                Err(err) => return Err(self.error_ending(err)),
            }
        }
        self.more_to_read = true;
        Ok(())
    }

    /// The close handshake is complete, or the hub closed the socket after
    /// its close frame.
    fn closed_ending(&self) -> Ending {
        let (close_code, close_reason) = match &self.hub_close {
            Some(Some(frame)) => {
                let reason = frame.reason.as_str();
                (Some(u16::from(frame.code)), (!reason.is_empty()).then(|| reason.to_owned()))
            }
            _ => (None, None),
        };
        let reason = if self.close_sent_by_us {
            "closed by sidecar".to_owned()
        } else {
            match (close_code, &close_reason) {
                (Some(code), Some(text)) => {
                    format!("closed by hub (code {code}: {})", one_line(text))
                }
                (Some(code), None) => format!("closed by hub (code {code})"),
                (None, _) => "closed by hub (no close code)".to_owned(),
            }
        };
        Ending { reason, close_code, close_reason }
    }

    fn close_timed_out(&self) -> Ending {
        if self.hub_close.is_some() {
            // The close frames were exchanged; the hub just kept the TCP
            // connection open. That is still a clean close.
            return self.closed_ending();
        }
        Ending::error(format!(
            "closed by sidecar; the hub did not answer the close within {} ms",
            self.connector.params.close_timeout.as_millis()
        ))
    }

    fn error_ending(&mut self, err: tungstenite::Error) -> Ending {
        let reason = describe_ws_error(&err, self.connector.params.max_message_bytes);
        if matches!(err, tungstenite::Error::Capacity(_)) {
            // Tell the hub why, best effort and without waiting: the
            // connection is being dropped either way.
            let _ = self.ws.close(Some(CloseFrame {
                code: CloseCode::Size,
                reason: Utf8Bytes::from_static("frame too large"),
            }));
        }
        Ending::error(reason)
    }
}

/// `now + duration`, saturating instead of panicking on absurd durations.
fn deadline_after(duration: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(duration).unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

fn describe_connect_error(addr: SocketAddr, err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => format!("connection refused ({addr})"),
        io::ErrorKind::TimedOut => format!("TCP connect to {addr} timed out"),
        _ => format!("cannot connect to {addr}: {err}"),
    }
}

fn describe_ws_handshake_error(err: tungstenite::Error) -> String {
    match err {
        tungstenite::Error::Http(response) => {
            format!("hub refused the WebSocket upgrade (HTTP {})", response.status())
        }
        // UrlError::UnableToConnect carries the URL; never echo it.
        tungstenite::Error::Url(_) => "invalid hub URL".to_owned(),
        tungstenite::Error::Io(err) if err.kind() == io::ErrorKind::ConnectionReset => {
            "connection reset during the WebSocket handshake".to_owned()
        }
        err => format!("WebSocket handshake failed: {}", describe_ws_error(&err, 0)),
    }
}

/// A one-line reason for a connection-ending error. Never includes frame
/// contents: tungstenite's own `Utf8` error text quotes the bad bytes.
fn describe_ws_error(err: &tungstenite::Error, max_message_bytes: usize) -> String {
    use tungstenite::Error;
    match err {
        Error::Capacity(CapacityError::MessageTooLong { size, .. }) => {
            format!("frame larger than max_message_bytes ({max_message_bytes}): {size} bytes")
        }
        Error::Io(err) => match err.kind() {
            io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
            io::ErrorKind::ConnectionAborted => "connection aborted".to_owned(),
            io::ErrorKind::BrokenPipe => "connection reset (broken pipe)".to_owned(),
            io::ErrorKind::UnexpectedEof => "connection closed by hub without a close frame".to_owned(),
            _ => format!("connection error: {err}"),
        },
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            "connection closed by hub without a close frame".to_owned()
        }
        Error::Protocol(err) => format!("WebSocket protocol error: {err}"),
        Error::Utf8(_) => "hub sent a text frame that is not valid UTF-8".to_owned(),
        Error::Url(_) => "invalid hub URL".to_owned(),
        Error::Tls(err) => format!("TLS error: {err}"),
        Error::Capacity(err) => format!("hub exceeded a limit: {err}"),
        Error::WriteBufferFull(_) => "write buffer full".to_owned(),
        Error::ConnectionClosed | Error::AlreadyClosed => "connection closed".to_owned(),
        Error::AttackAttempt => "hub sent an attack-like handshake response".to_owned(),
        Error::Http(response) => format!("unexpected HTTP response ({})", response.status()),
        Error::HttpFormat(err) => format!("bad HTTP: {err}"),
    }
}

/// Keeps a hub-supplied string on one log line.
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_replaces_control_characters() {
        assert_eq!(one_line("retry in 30 s"), "retry in 30 s");
        assert_eq!(one_line("a\nb\r\tc"), "a b  c");
    }

    #[test]
    fn utf8_errors_do_not_quote_the_frame() {
        let err = tungstenite::Error::Utf8("secret-token".to_owned());
        let reason = describe_ws_error(&err, 1024);
        assert!(!reason.contains("secret"), "{reason}");
    }

    #[test]
    fn oversized_frames_name_the_limit() {
        let err = tungstenite::Error::Capacity(CapacityError::MessageTooLong { size: 5000, max_size: 1024 });
        assert_eq!(describe_ws_error(&err, 1024), "frame larger than max_message_bytes (1024): 5000 bytes");
    }

    #[test]
    fn params_debug_redacts_the_url() {
        let params = HubParams {
            conn_id: 1,
            url: "wss://user:pass@hub.example/ws?token=abc".to_owned(),
            tls_ca_file: None,
            max_message_bytes: 1024,
            connect_timeout: Duration::from_secs(1),
            close_timeout: Duration::from_secs(1),
        };
        let debug = format!("{params:?}");
        assert!(!debug.contains("pass") && !debug.contains("abc"), "{debug}");
    }
}
