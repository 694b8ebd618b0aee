//! The connected half of a hub connection: relays frames both ways until the
//! connection ends, then says how it ended. Blocks in `mio::Poll` on the
//! socket and the waker only; no timeout in steady state.

use std::io;
use std::time::{Duration, Instant};

use crossbeam_channel::TryRecvError;
use log::debug;
use tungstenite::error::{CapacityError, ProtocolError};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::frame::Utf8Bytes;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use super::connect::{deadline_after, Connector};
use super::{Command, Ending, HubEvent, WsStream, READ_BUDGET, SOCKET};

/// The connected half: relays frames until the connection ends.
pub(super) struct Session<'a> {
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
    pub(super) fn new(
        connector: Connector,
        ws: WebSocket<WsStream>,
        on_event: &'a dyn Fn(HubEvent),
    ) -> Session<'a> {
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

    pub(super) fn run(mut self) -> Ending {
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

/// A one-line reason for a connection-ending error. Never includes frame
/// contents: tungstenite's own `Utf8` error text quotes the bad bytes.
pub(super) fn describe_ws_error(err: &tungstenite::Error, max_message_bytes: usize) -> String {
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
}
