//! The connecting half of a hub connection: DNS, non-blocking TCP, TLS (by
//! hand with native-tls, so a handshake that would block can resume) and the
//! WebSocket handshake, all bounded together by `connect_timeout`. Frames the
//! owner sends meanwhile wait in `outbox` for the session.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use log::debug;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError as WsHandshakeError;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::WebSocket;

use super::session::describe_ws_error;
use super::{Command, Ending, HubParams, WsStream, SOCKET};

/// The connecting half: everything up to a finished WebSocket handshake.
pub(super) struct Connector {
    pub(super) params: HubParams,
    pub(super) poll: Poll,
    pub(super) events: Events,
    pub(super) commands: Receiver<Command>,
    /// Frames the owner sent before the handshake finished, in call order.
    pub(super) outbox: VecDeque<String>,
}

impl Connector {
    pub(super) fn connect(&mut self) -> Result<WebSocket<WsStream>, Ending> {
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
        crate::failpoint::panic_at("hub_connecting");

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
                    return Err(Ending::error(describe_tls_failure(&err, self.params.tls_ca_file.is_some())))
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

/// `now + duration`, saturating instead of panicking on absurd durations.
pub(super) fn deadline_after(duration: Duration) -> Instant {
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

/// What the operator should know of a failed TLS handshake: a server
/// that does not speak TLS at all (a `wss://` hub_url for a plain hub) is
/// told apart from a certificate we do not trust, and only the latter gets
/// the tls_ca_file hint. Judged by the TLS library's words (OpenSSL,
/// SChannel, Security.framework), as native-tls gives no kinds.
fn describe_tls_failure(err: &native_tls::Error, has_ca_file: bool) -> String {
    const NOT_TLS: [&str; 6] = [
        "wrong version number",
        "packet length too long",
        "unknown protocol",
        "http request",
        "record layer failure",
        "badly formatted",
    ];
    let text = err.to_string();
    let lower = text.to_lowercase();
    if NOT_TLS.iter().any(|words| lower.contains(words)) {
        return format!(
            "TLS handshake failed: the server does not speak TLS ({text}); a hub served without TLS needs a ws:// hub_url"
        );
    }
    if lower.contains("eof") {
        // Could be either: say what is known, and the likely cause.
        return format!(
            "TLS handshake failed: the server closed the connection during the handshake ({text}); if it does not speak TLS, a hub served without TLS needs a ws:// hub_url"
        );
    }
    if ["certificate", "verify", "trust"].iter().any(|words| lower.contains(words)) {
        let hint = if has_ca_file {
            "the hub's certificate must be signed by the CA in tls_ca_file and name the host in hub_url"
        } else {
            "if the hub uses a private CA, set tls_ca_file"
        };
        return format!("TLS handshake failed: the server's certificate is not trusted: {text} ({hint})");
    }
    format!("TLS handshake failed: {text}")
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
