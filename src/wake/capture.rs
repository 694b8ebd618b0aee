//! Output capture: one reader thread per pipe, and the bounded tails an
//! outcome keeps.
//!
//! The outcome is reported when the child exits, not when its output pipes
//! close: a background agent often inherits stdout and keeps it open for
//! hours. The executor gives the readers at most `OUTPUT_GRACE` to finish,
//! then detaches them; they keep draining the pipe (discarding it) so the
//! agent never blocks on a full pipe or dies of SIGPIPE.

use std::io::{self, Read};
use std::thread;
use std::time::Instant;

use crossbeam_channel::{at, never, select, Receiver, Sender};

/// How much of each output stream an outcome keeps.
pub const TAIL_LIMIT_BYTES: usize = 4096;

/// Which pipe a chunk of output came from.
#[derive(Clone, Copy, Debug)]
pub(super) enum Stream {
    Stdout,
    Stderr,
}

pub(super) type Chunk = (Stream, Vec<u8>);

/// The output channel of one attempt and the tails collected from it.
pub(super) struct Output {
    /// `None` once both readers have finished, so `select!` stops seeing a
    /// disconnected channel (which is always ready) and cannot spin on it.
    receiver: Option<Receiver<Chunk>>,
    idle: Receiver<Chunk>,
    stdout: Tail,
    stderr: Tail,
}

impl Output {
    pub(super) fn new(receiver: Receiver<Chunk>) -> Output {
        Output { receiver: Some(receiver), idle: never(), stdout: Tail::default(), stderr: Tail::default() }
    }

    pub(super) fn receiver(&self) -> &Receiver<Chunk> {
        self.receiver.as_ref().unwrap_or(&self.idle)
    }

    pub(super) fn record(&mut self, chunk: Result<Chunk, crossbeam_channel::RecvError>) {
        match chunk {
            Ok((Stream::Stdout, bytes)) => self.stdout.push(&bytes),
            Ok((Stream::Stderr, bytes)) => self.stderr.push(&bytes),
            Err(_) => self.receiver = None,
        }
    }

    /// Collects output until both readers are done or `deadline` passes,
    /// whichever comes first. Readers still running are then detached.
    pub(super) fn drain_until(&mut self, deadline: Instant) {
        let deadline = at(deadline);
        while self.receiver.is_some() {
            select! {
                recv(self.receiver()) -> chunk => self.record(chunk),
                recv(deadline) -> _ => break,
            }
        }
    }

    /// (stdout, stderr)
    pub(super) fn into_tails(self) -> (String, String) {
        (self.stdout.into_string(), self.stderr.into_string())
    }
}

/// The last [`TAIL_LIMIT_BYTES`] of one output stream.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        if chunk.len() >= TAIL_LIMIT_BYTES {
            self.truncated |= !self.bytes.is_empty() || chunk.len() > TAIL_LIMIT_BYTES;
            self.bytes.clear();
            self.bytes.extend_from_slice(&chunk[chunk.len() - TAIL_LIMIT_BYTES..]);
            return;
        }
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > TAIL_LIMIT_BYTES {
            let excess = self.bytes.len() - TAIL_LIMIT_BYTES;
            self.bytes.drain(..excess);
            self.truncated = true;
        }
    }

    /// Lossy UTF-8. When the front was cut off, up to three bytes of a
    /// character split by the cut are dropped, so the tail does not start
    /// with a replacement character that was never in the output.
    fn into_string(self) -> String {
        let mut start = 0;
        if self.truncated {
            while start < 3 && self.bytes.get(start).is_some_and(|byte| byte & 0xC0 == 0x80) {
                start += 1;
            }
        }
        String::from_utf8_lossy(&self.bytes[start..]).into_owned()
    }
}

/// Reads one pipe on its own thread and forwards the chunks. When the
/// attempt is over (its receiver dropped) the reader keeps reading and
/// discards, until end of file: a background agent that inherited the pipe
/// must neither block on a full pipe nor be killed by SIGPIPE.
pub(super) fn spawn_reader(
    stream: Stream,
    mut pipe: impl Read + Send + 'static,
    chunks: Sender<Chunk>,
) -> io::Result<()> {
    let name = match stream {
        Stream::Stdout => "wake-stdout",
        Stream::Stderr => "wake-stderr",
    };
    thread::Builder::new().name(name.to_string()).spawn(move || {
        let mut buffer = vec![0u8; 8192];
        let mut forwarding = true;
        loop {
            match pipe.read(&mut buffer) {
                Ok(0) => return,
                Ok(n) => {
                    if forwarding && chunks.send((stream, buffer[..n].to_vec())).is_err() {
                        forwarding = false;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    })?;
    // The reader is detached on purpose (see above); it ends at end of file.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut tail = Tail::default();
        tail.push(b"hello ");
        tail.push(b"world");
        assert_eq!(tail.into_string(), "hello world");

        let mut tail = Tail::default();
        for _ in 0..1000 {
            tail.push(b"0123456789");
        }
        tail.push(b"END");
        let text = tail.into_string();
        assert_eq!(text.len(), TAIL_LIMIT_BYTES);
        assert!(text.ends_with("789END"));

        let mut tail = Tail::default();
        tail.push(&vec![b'a'; 3 * TAIL_LIMIT_BYTES]);
        assert_eq!(tail.into_string(), "a".repeat(TAIL_LIMIT_BYTES));
    }

    #[test]
    fn tail_does_not_start_with_half_a_character() {
        let mut tail = Tail::default();
        // 'é' is two bytes; 4097 bytes means the cut falls inside the first.
        let text = "é".repeat(TAIL_LIMIT_BYTES / 2) + "x";
        tail.push(text.as_bytes());
        let kept = tail.into_string();
        assert!(!kept.contains('\u{FFFD}'), "{kept:?}");
        assert!(kept.ends_with("éx"));
    }

    #[test]
    fn tail_is_lossy_for_invalid_utf8() {
        let mut tail = Tail::default();
        tail.push(b"ok \xff\xfe done");
        assert_eq!(tail.into_string(), "ok \u{FFFD}\u{FFFD} done");
    }
}
