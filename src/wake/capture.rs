//! Output capture: files or pipes, and the bounded tails an outcome keeps.
//!
//! Files: a run-mode agent's stdout and stderr, and on Unix a launch-mode
//! command's too ([`output_in_files`]), go to `.tasks/<task_id>.stdout` and
//! `.stderr` under the results directory (`run.rs`). A command that outlives
//! the sidecar (an agent at work, or what a launcher put in the background
//! with the command's stdout) keeps writing to them: a pipe would break
//! with the sidecar's death, and the next write would end the writer with
//! SIGPIPE. The outcome's tails are read from the files' ends. A launch
//! command's files are kept bounded ([`spawn_bounder`]): the output is only
//! logged, and a background agent may write to them for as long as it runs.
//!
//! Pipes (a launch-mode command on Windows, whose job object ends it with the
//! sidecar): one reader thread per pipe. The outcome is reported when the
//! child exits, not when its output pipes close: a background agent often
//! inherits stdout and keeps it open for hours. The executor gives the
//! readers at most `OUTPUT_GRACE` to finish, then detaches them; they keep
//! draining the pipe (discarding it) so the agent never blocks on a full
//! pipe or dies of SIGPIPE.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::Path;
use std::thread;
use std::time::Instant;
#[cfg(unix)]
use std::{io::Write, thread::JoinHandle, time::Duration};

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

/// Whether a command of `mode` writes its output to files rather than to
/// pipes read by the sidecar (see the module comment).
pub(super) fn output_in_files(mode: super::WakeMode) -> bool {
    !mode.is_launch() || cfg!(unix)
}

#[cfg(unix)]
/// The most a launch-mode command's output file holds for long: past it,
/// [`cut`] keeps only the last [`TAIL_LIMIT_BYTES`].
pub(super) const LAUNCH_OUTPUT_LIMIT_BYTES: u64 = 1024 * 1024;

/// A new, empty output file at `path` (an older one is unlinked first: what
/// an earlier attempt left in the background keeps its own), opened twice:
/// for the command, append-only, so that [`cut`] never leaves a hole in
/// front of its next write; and for the sidecar, to read and cut it.
pub(super) fn fresh_output_file(path: &Path) -> io::Result<(File, File)> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let ours = OpenOptions::new().read(true).append(true).create_new(true).open(path)?;
    let theirs = OpenOptions::new().append(true).open(path)?;
    Ok((theirs, ours))
}

#[cfg(unix)]
/// Cuts `file` (opened by [`fresh_output_file`]) down to its last
/// [`TAIL_LIMIT_BYTES`] when it is over `limit`, behind a line that says how
/// much went. Whatever the command writes in the instant between the read
/// of the tail and the cut is lost: the file is a log. Whether it cut.
pub(super) fn cut(file: &File, limit: u64) -> io::Result<bool> {
    let len = file.metadata()?.len();
    if len <= limit {
        return Ok(false);
    }
    let keep = (TAIL_LIMIT_BYTES as u64).min(len);
    let mut tail = vec![0u8; keep as usize];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut tail, len - keep)?;
    file.set_len(0)?;
    // One write: the command's own appends never land inside it.
    let mut text = format!("[agentcom-sidecar: {} bytes of earlier output cut]\n", len - keep).into_bytes();
    text.extend_from_slice(&tail);
    (&mut &*file).write_all(&text)?;
    Ok(true)
}

#[cfg(unix)]
/// A detached thread ("wake-output") that [`cut`]s `files` every `every`
/// while `alive()` says a writer may be left (the command's process group),
/// once more after it says none is, then ends. A launcher's output file
/// stays bounded even when the agent it put in the background writes to it
/// for days, also after the task's files are deleted (the open file lives
/// on). The handle is only for tests.
pub(super) fn spawn_bounder(
    files: Vec<File>,
    limit: u64,
    every: Duration,
    alive: impl Fn() -> bool + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name("wake-output".to_string()).spawn(move || loop {
        // A coarse period (`results_poll_ms`): nothing to wake on when a
        // file grows.
        thread::sleep(every);
        let last = !alive();
        for file in &files {
            if let Err(error) = cut(file, limit) {
                log::debug!("cannot bound a wake command's output file: {error}");
            }
        }
        if last {
            return;
        }
    })
}

/// Bounds the output files at `paths` of a launch-mode command an earlier
/// sidecar started and left at work (a synchronous script), as
/// [`spawn_bounder`] did for it there, every `every` while its process
/// group `pgid` lives. Files that are not there are left alone.
#[cfg(unix)]
pub(super) fn bound_leftover(paths: [std::path::PathBuf; 2], pgid: u32, every: Duration) {
    let files: Vec<File> =
        paths.iter().filter_map(|path| OpenOptions::new().read(true).append(true).open(path).ok()).collect();
    if files.is_empty() {
        return;
    }
    let alive = move || super::sys::group_alive(pgid);
    if let Err(error) = spawn_bounder(files, LAUNCH_OUTPUT_LIMIT_BYTES, every, alive) {
        log::warn!("cannot start the thread that bounds a wake command's output files: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use std::io::Write;

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

    #[cfg(unix)]
    #[test]
    fn cut_keeps_the_tail_behind_a_note_and_the_command_appends_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let (mut theirs, ours) = fresh_output_file(&path).unwrap();
        theirs.write_all(&[b'x'; 100]).unwrap();
        assert!(!cut(&ours, 100).unwrap(), "at the limit: nothing cut");
        let mut text = vec![b'a'; 3 * TAIL_LIMIT_BYTES - 3];
        text.extend_from_slice(b"END");
        theirs.write_all(&text).unwrap();
        assert!(cut(&ours, 100).unwrap());
        theirs.write_all(b" more").unwrap();
        let after = fs::read(&path).unwrap();
        let note = format!(
            "[agentcom-sidecar: {} bytes of earlier output cut]\n",
            100 + text.len() - TAIL_LIMIT_BYTES
        );
        assert!(after.starts_with(note.as_bytes()), "{:?}", String::from_utf8_lossy(&after[..80]));
        assert_eq!(after.len(), note.len() + TAIL_LIMIT_BYTES + 5, "no hole before the command's next write");
        assert!(after.ends_with(b"aaEND more"));
    }

    #[cfg(unix)]
    #[test]
    fn a_fresh_output_file_is_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let (mut earlier, _) = fresh_output_file(&path).unwrap();
        let (mut theirs, _) = fresh_output_file(&path).unwrap();
        earlier.write_all(b"old attempt's background").unwrap();
        theirs.write_all(b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }

    #[cfg(unix)]
    #[test]
    fn the_bounder_keeps_files_bounded_until_no_writer_is_left() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let (mut theirs, ours) = fresh_output_file(&path).unwrap();
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        let limit = 2 * TAIL_LIMIT_BYTES as u64;
        let bounder =
            spawn_bounder(vec![ours], limit, Duration::from_millis(5), move || flag.load(Ordering::SeqCst))
                .unwrap();
        theirs.write_all(&[b'y'; 5 * TAIL_LIMIT_BYTES]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::metadata(&path).unwrap().len() > limit {
            assert!(Instant::now() < deadline, "never cut");
            thread::park_timeout(Duration::from_millis(5));
        }
        // The writers are gone: one last check cuts what they left, then it ends.
        theirs.write_all(&[b'z'; 5 * TAIL_LIMIT_BYTES]).unwrap();
        alive.store(false, Ordering::SeqCst);
        bounder.join().unwrap();
        assert!(fs::metadata(&path).unwrap().len() <= limit, "cut once more at the end");
        assert!(fs::read(&path).unwrap().ends_with(b"zzz"));
    }
}
