//! The task lifecycle log (`log_file` in config.json, docs/protocol.md 10.2):
//! one JSON object a line, `{"ts":<unix ms>,"event":"...","agent_id":"...",...}`,
//! kept apart from the process manager's stdout log and rotated by size.
//!
//! Rotation is checked before every line, not only at start-up: a line that
//! would take the file past `max_bytes` first moves `sidecar.log.(k)` to
//! `sidecar.log.(k+1)` for k = keep-1 down to 1 (the oldest falls off),
//! `sidecar.log` to `sidecar.log.1`, and starts a fresh file. `keep = 0`
//! truncates instead. Each line goes out in one `write_all` of a buffer that
//! already ends in `\n`, so records are never interleaved or split by the
//! rotation; a line torn by a crash or a full disk is closed with a newline
//! before the next record, so it costs only itself.
//!
//! Writing the log must never stop the sidecar: [`LifecycleLog::record`]
//! swallows I/O errors and warns once per failure streak. Callers must not put
//! the token in `fields`; nothing here can tell a secret from other text.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use crate::state::LifecycleEvent;

/// An open lifecycle log. Only the main loop owns one, so there is no locking.
pub struct LifecycleLog {
    path: PathBuf,
    agent_id: String,
    max_bytes: u64,
    keep: u32,
    /// The current file, open for appending. `None` after an I/O error: the
    /// next `record` reopens it, so a log directory that comes back (a
    /// remounted disk, a re-created folder) is picked up again.
    file: Option<File>,
    /// Size of the current file: read from the file system whenever it is
    /// (re)opened, then advanced by each line written.
    current_bytes: u64,
    /// The current file ends in the middle of a line (a write torn by a crash
    /// or a full disk), so the next record must start with a newline.
    ends_mid_line: bool,
    /// A `record` failed and none has fully succeeded since. The warning is
    /// logged when this turns true, so a full disk does not flood the log.
    failing: bool,
}

impl LifecycleLog {
    /// Opens (creating it and its parent directories if needed) the log at
    /// `path` for appending. The current size counts towards `max_bytes`, so
    /// a restarted sidecar rotates a file that an earlier run filled.
    pub fn open(path: &Path, agent_id: &str, max_bytes: u64, keep: u32) -> io::Result<LifecycleLog> {
        let mut log = LifecycleLog {
            path: path.to_path_buf(),
            agent_id: agent_id.to_owned(),
            max_bytes,
            keep,
            file: None,
            current_bytes: 0,
            ends_mid_line: false,
            failing: false,
        };
        log.open_current()?;
        Ok(log)
    }

    /// Appends one record. `fields` is normally a JSON object whose members
    /// follow `ts`, `event` and `agent_id` (members with those three names are
    /// dropped: the log's own values win). `Null` adds nothing; any other
    /// value is stored under `"fields"`.
    ///
    /// An I/O error is logged with `warn!` once per failure streak and
    /// otherwise ignored: the lifecycle log is a diagnostic, and losing a line
    /// of it must never stop a task.
    pub fn record(&mut self, event: LifecycleEvent, fields: Value) {
        self.write_record(event.name(), fields);
    }

    fn write_record(&mut self, event: &str, fields: Value) {
        let line = self.format_line(crate::clock::unix_ms(), event, &fields);
        match self.write_line(line.as_bytes()) {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    log::info!("lifecycle log {}: writing again", self.path.display());
                }
            }
            Err(error) => {
                if !self.failing {
                    self.failing = true;
                    log::warn!(
                        "lifecycle log {}: {error} (further errors are not logged until a record is written cleanly)",
                        self.path.display()
                    );
                }
                // Reopen on the next record rather than trust this handle.
                self.file = None;
            }
        }
    }

    /// The current log file (rotated files are this path plus `.1`, `.2`, ...).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn format_line(&self, ts_ms: u64, event: &str, fields: &Value) -> String {
        // Written by hand rather than through a `serde_json::Map` so the
        // first three keys stay first: without serde_json's `preserve_order`
        // feature a `Map` sorts its keys. Strings go through serde_json, which
        // escapes control characters, so a record can never contain a raw
        // newline and always stays on one line.
        let mut line = format!(
            "{{\"ts\":{ts_ms},\"event\":{},\"agent_id\":{}",
            Value::from(event),
            Value::from(self.agent_id.as_str())
        );
        match fields {
            Value::Object(members) => {
                for (key, value) in members {
                    if RESERVED_KEYS.contains(&key.as_str()) {
                        continue;
                    }
                    line.push(',');
                    line.push_str(&Value::from(key.as_str()).to_string());
                    line.push(':');
                    line.push_str(&value.to_string());
                }
            }
            Value::Null => {}
            other => {
                line.push_str(",\"fields\":");
                line.push_str(&other.to_string());
            }
        }
        line.push_str("}\n");
        line
    }

    /// Rotates if `line` would not fit, then appends it. A failed rotation
    /// still writes the line (to the old, oversized file) and then reports
    /// the rotation error: on Windows a file held open by a log viewer cannot
    /// be renamed, and that must cost neither lines nor a warning per line.
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            self.open_current()?;
        }
        let pending = u64::from(self.ends_mid_line) + line.len() as u64;
        // An empty file is never rotated, so a line longer than `max_bytes`
        // still gets written whole, alone in its file.
        let must_rotate =
            self.current_bytes > 0 && self.current_bytes.saturating_add(pending) > self.max_bytes;
        let rotation_error = if must_rotate {
            self.rotate().err().map(|error| io::Error::new(error.kind(), format!("cannot rotate: {error}")))
        } else {
            None
        };
        let Some(file) = self.file.as_mut() else {
            // `rotate` reopens the old file when a rename fails; only when
            // that reopen failed too is there nowhere to write.
            return Err(rotation_error.unwrap_or_else(|| io::Error::other("the log file is not open")));
        };

        let mut buffer = Vec::with_capacity(line.len() + 1);
        if self.ends_mid_line {
            buffer.push(b'\n');
        }
        buffer.extend_from_slice(line);
        file.write_all(&buffer)?;
        self.current_bytes += buffer.len() as u64;
        self.ends_mid_line = false;

        match rotation_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Moves the current file aside (or truncates it when `keep` is 0) and
    /// opens a fresh one. If a rename fails, the old file is reopened, so
    /// there is always a file to write to when the reopen succeeds.
    fn rotate(&mut self) -> io::Result<()> {
        // Close first: Windows cannot rename or truncate-by-create a file
        // that we still hold open.
        self.file = None;
        let moved =
            if self.keep == 0 { File::create(&self.path).map(drop) } else { self.shift_rotated_files() };
        self.open_current()?;
        moved
    }

    fn shift_rotated_files(&self) -> io::Result<()> {
        // `rename` replaces an existing target on Unix and, through
        // MoveFileExW(MOVEFILE_REPLACE_EXISTING), on Windows, so the file at
        // `.keep` is dropped by being overwritten.
        for k in (1..self.keep).rev() {
            rename_if_present(&rotated_path(&self.path, k), &rotated_path(&self.path, k + 1))?;
        }
        rename_if_present(&self.path, &rotated_path(&self.path, 1))
    }

    /// (Re)opens the current file for appending and learns its size and
    /// whether it ends mid-line.
    fn open_current(&mut self) -> io::Result<()> {
        self.file = None;
        if let Some(parent) = self.path.parent() {
            if !parent.as_os_str().is_empty() {
                fs::create_dir_all(parent)?;
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        let len = file.metadata()?.len();
        self.ends_mid_line = len > 0 && last_byte(&self.path, len)? != b'\n';
        self.current_bytes = len;
        self.file = Some(file);
        Ok(())
    }
}

/// Reads up to `max_records` of the newest records, oldest first (newest
/// last): the current file, then `.1`, `.2`, ... while more are wanted and
/// the next rotated file exists. A missing log is an empty result.
///
/// Lines that are not a JSON object (torn writes, stray text) are skipped, as
/// are lines longer than 1 MiB. Files are read backwards in 64 KiB chunks and
/// reading stops once enough records are found, so memory stays bounded by
/// the records returned however large the files are.
pub fn read_recent(path: &Path, max_records: usize) -> io::Result<Vec<Value>> {
    read_recent_in_chunks(path, max_records, READ_CHUNK_BYTES)
}

/// Keys every record starts with; `fields` cannot override them.
const RESERVED_KEYS: &[&str] = &["ts", "event", "agent_id"];

/// How much of a file `read_recent` reads at a time, from the end.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// `read_recent` skips longer lines instead of holding them in memory.
const MAX_READ_LINE_BYTES: usize = 1024 * 1024;

fn read_recent_in_chunks(path: &Path, max_records: usize, chunk_bytes: usize) -> io::Result<Vec<Value>> {
    let mut newest_first = Vec::new();
    let mut rotation_idx: u32 = 0;
    while newest_first.len() < max_records {
        let file_path = if rotation_idx == 0 { path.to_path_buf() } else { rotated_path(path, rotation_idx) };
        match read_tail(&file_path, max_records, chunk_bytes, &mut newest_first) {
            Ok(()) => {}
            // The current file may be missing (never written, or deleted by
            // hand) while rotated ones exist; past it, a gap ends the chain.
            Err(error) if error.kind() == io::ErrorKind::NotFound && rotation_idx == 0 => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => break,
            Err(error) => return Err(error),
        }
        rotation_idx += 1;
    }
    newest_first.reverse();
    Ok(newest_first)
}

/// Pushes the records of one file onto `newest_first`, last line first,
/// until it holds `max_records`.
fn read_tail(
    path: &Path,
    max_records: usize,
    chunk_bytes: usize,
    newest_first: &mut Vec<Value>,
) -> io::Result<()> {
    let mut file = File::open(path)?;
    let mut unread = file.metadata()?.len();
    let mut chunk = vec![0u8; chunk_bytes];
    // The end of the line being assembled: bytes after the current chunk, up
    // to the next newline. `skipping` is set when that line is too long.
    let mut line_end: Vec<u8> = Vec::new();
    let mut skipping = false;

    while unread > 0 {
        let n = chunk_bytes.min(usize::try_from(unread).unwrap_or(usize::MAX));
        unread -= n as u64;
        file.seek(SeekFrom::Start(unread))?;
        match file.read_exact(&mut chunk[..n]) {
            Ok(()) => {}
            // The file shrank under us (truncated by a `keep = 0` log):
            // return what was found rather than fail.
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error),
        }
        let mut end = n;
        while let Some(newline) = chunk[..end].iter().rposition(|&b| b == b'\n') {
            let line_start = &chunk[newline + 1..end];
            if skipping || line_start.len() + line_end.len() > MAX_READ_LINE_BYTES {
                // Too long to return: skipped, like any unreadable line.
            } else if line_end.is_empty() {
                push_record(line_start, newest_first);
            } else {
                let mut line = line_start.to_vec();
                line.extend_from_slice(&line_end);
                push_record(&line, newest_first);
            }
            line_end.clear();
            skipping = false;
            if newest_first.len() >= max_records {
                return Ok(());
            }
            end = newline;
        }
        if !skipping {
            if end + line_end.len() > MAX_READ_LINE_BYTES {
                line_end.clear();
                skipping = true;
            } else {
                line_end.splice(0..0, chunk[..end].iter().copied());
            }
        }
    }
    // The first line of the file has no newline before it.
    if !skipping {
        push_record(&line_end, newest_first);
    }
    Ok(())
}

fn push_record(line: &[u8], newest_first: &mut Vec<Value>) {
    if let Ok(record @ Value::Object(_)) = serde_json::from_slice::<Value>(line) {
        newest_first.push(record);
    }
}

fn rotated_path(path: &Path, rotation_idx: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{rotation_idx}"));
    PathBuf::from(name)
}

/// Renames `from` to `to`; a missing `from` is nothing to do.
fn rename_if_present(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn last_byte(path: &Path, len: u64) -> io::Result<u8> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(len - 1))?;
    let mut byte = [0u8; 1];
    file.read_exact(&mut byte)?;
    Ok(byte[0])
}

#[cfg(test)]
mod tests;
