//! Output capture: a wake command's stdout and stderr go to files,
//! `.tasks/<task_id>.stdout` and `.stderr` under the results directory
//! (`run.rs`), never through pipes into the sidecar's memory. A command that
//! outlives the sidecar (an agent at work, or what a launcher put in the
//! background with the command's stdout) keeps writing to them: a pipe would
//! break with the sidecar's death, and the next write would end the writer
//! (SIGPIPE on Unix, a failed write on Windows). The outcome's tails are read
//! from the files' ends ([`tail_text`]).
//!
//! A run-mode agent's stdout is its result (bounded by `max_result_bytes`
//! when it is read). A launch-mode command's output is only logged, and a
//! background agent may write to it for as long as it runs: its files are
//! kept bounded ([`spawn_bounder`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::WakeIdentity;

/// How much of each output stream an outcome keeps.
pub const TAIL_LIMIT_BYTES: usize = 4096;

/// The most a launch-mode command's output file holds for long: past it,
/// [`cut`] keeps only the last [`TAIL_LIMIT_BYTES`].
pub(super) const LAUNCH_OUTPUT_LIMIT_BYTES: u64 = 1024 * 1024;

/// The last bytes of an output stream as text: lossy UTF-8. When the front
/// was `cut` off, up to three bytes of a character split by the cut are
/// dropped, so the tail does not start with a replacement character that
/// was never in the output.
pub(super) fn tail_text(bytes: &[u8], cut: bool) -> String {
    let mut start = 0;
    if cut {
        while start < 3 && bytes.get(start).is_some_and(|byte| byte & 0xC0 == 0x80) {
            start += 1;
        }
    }
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// A new, empty output file at `path`, opened twice: for the command,
/// append-only, so that [`cut`] never leaves a hole in front of its next
/// write; and for the sidecar, to read and cut it.
pub(super) fn fresh_output_file(path: &Path) -> io::Result<(File, File)> {
    let ours = open_fresh(path)?;
    let theirs = OpenOptions::new().append(true).open(path)?;
    Ok((theirs, ours))
}

/// Unix: an older file is unlinked first (what an earlier attempt left in
/// the background keeps its own), then a new one made.
#[cfg(unix)]
fn open_fresh(path: &Path) -> io::Result<File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    OpenOptions::new().read(true).append(true).create_new(true).open(path)
}

/// Windows: emptied in place. A file still open elsewhere cannot be made
/// anew under its name at once (its deletion waits for the last handle), so
/// what an earlier attempt left in the background shares the new one (and
/// its bound). Not append-only: cutting it needs the right to write anywhere.
#[cfg(windows)]
fn open_fresh(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)
}

/// Cuts `file` (the sidecar's side of [`fresh_output_file`]) down to its
/// last [`TAIL_LIMIT_BYTES`] when it is over `limit`, behind a line that says
/// how much went. Whatever the command writes in the instant between the
/// read of the tail and the cut is lost: the file is a log. Whether it cut.
pub(super) fn cut(file: &File, limit: u64) -> io::Result<bool> {
    let len = file.metadata()?.len();
    if len <= limit {
        return Ok(false);
    }
    let keep = (TAIL_LIMIT_BYTES as u64).min(len);
    let mut tail = vec![0u8; keep as usize];
    let mut file = file;
    file.seek(SeekFrom::Start(len - keep))?;
    file.read_exact(&mut tail)?;
    file.set_len(0)?;
    let mut text = format!("[agentcom-sidecar: {} bytes of earlier output cut]\n", len - keep).into_bytes();
    text.extend_from_slice(&tail);
    // One write at the end (on Unix an append: the command's own appends
    // never land inside it).
    file.seek(SeekFrom::End(0))?;
    file.write_all(&text)?;
    Ok(true)
}

/// A detached thread ("wake-output") that [`cut`]s `files` every `every`
/// while `alive()` says a writer may be left (the command's process group,
/// on Windows its job), once more after it says none is, then ends. A
/// launcher's output file stays bounded even when the agent it put in the
/// background writes to it for days, also after the task's files are
/// deleted (the open file lives on). The handle is only for tests.
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

/// Starts [`spawn_bounder`] for the output files of the command `identity`
/// names, while any process of its tree lives; logs if it cannot.
pub(super) fn bound_while_alive(files: Vec<File>, identity: WakeIdentity, every: Duration) {
    let alive = move || super::sys::tree_alive(&identity);
    if let Err(error) = spawn_bounder(files, LAUNCH_OUTPUT_LIMIT_BYTES, every, alive) {
        log::warn!("cannot start the thread that bounds a wake command's output files: {error}");
    }
}

/// Bounds the output files at `paths` of a launch-mode command an earlier
/// sidecar started and left at work (a synchronous script), as the bounder
/// did for it there, every `every` while its tree lives. Files that are not
/// there are left alone.
pub(super) fn bound_leftover(paths: [PathBuf; 2], identity: WakeIdentity, every: Duration) {
    let open = |path: &PathBuf| OpenOptions::new().read(true).write(true).append(cfg!(unix)).open(path).ok();
    let files: Vec<File> = paths.iter().filter_map(open).collect();
    if !files.is_empty() {
        bound_while_alive(files, identity, every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::time::Instant;

    #[test]
    fn a_tail_is_lossy_utf8() {
        assert_eq!(tail_text(b"hello world", false), "hello world");
        assert_eq!(tail_text(b"ok \xff\xfe done", false), "ok \u{FFFD}\u{FFFD} done");
    }

    #[test]
    fn a_cut_tail_does_not_start_with_half_a_character() {
        // 'é' is two bytes: the cut fell inside the first.
        let text = "é".repeat(4) + "x";
        let kept = tail_text(&text.as_bytes()[1..], true);
        assert_eq!(kept, "éééx");
        assert!(!kept.contains('\u{FFFD}'), "{kept:?}");
        // An uncut text keeps what it has, broken or not.
        assert_eq!(tail_text(&text.as_bytes()[1..], false), "\u{FFFD}éééx");
    }

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

    #[cfg(windows)]
    #[test]
    fn a_fresh_output_file_is_emptied_while_an_earlier_writer_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let (mut earlier, _) = fresh_output_file(&path).unwrap();
        earlier.write_all(b"old attempt's output").unwrap();
        let (mut theirs, _) = fresh_output_file(&path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"");
        theirs.write_all(b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }

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
