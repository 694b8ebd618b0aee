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
//!
//! Layout: this file holds the owner's API (`HubHandle`, `HubParams`,
//! `HubEvent`) and the thread's body; `connect.rs` the connecting half (up to
//! a finished WebSocket handshake); `session.rs` the connected half (relaying
//! frames until the connection ends, and how it ended).

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Events, Poll, Token, Waker};
use tungstenite::stream::MaybeTlsStream;

use crate::config::redact_url;
pub use crate::state::HubEvent;

mod connect;
mod session;

use connect::Connector;
use session::Session;

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

pub(super) const SOCKET: Token = Token(0);
pub(super) const WAKER: Token = Token(1);

/// How many messages one turn reads before looking at the command channel
/// again, so a hub that floods us cannot starve our outgoing frames.
pub(super) const READ_BUDGET: usize = 64;

pub(super) enum Command {
    Send(String),
    Close,
}

pub(super) type WsStream = MaybeTlsStream<TcpStream>;

/// How a connection ended: the payload of `HubEvent::Disconnected`.
pub(super) struct Ending {
    pub(super) reason: String,
    pub(super) close_code: Option<u16>,
    pub(super) close_reason: Option<String>,
}

impl Ending {
    pub(super) fn error(reason: impl Into<String>) -> Ending {
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
            crate::failpoint::panic_at("hub_connected");
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

#[cfg(test)]
mod tests {
    use super::*;

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
