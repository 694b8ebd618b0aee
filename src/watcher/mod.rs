//! The results directory: a notify watcher that turns file-system activity
//! into [`ResultsEvent`] hints, plus the pure helpers the event loop uses to
//! name, classify, scan, read and delete the files an agent writes there.
//!
//! The agent writes `RESULTS_DIR/<task_id>.started` (it woke up),
//! `RESULTS_DIR/<task_id>.progress` (a small JSON object with `progress` and
//! `message`) and finally `RESULTS_DIR/<task_id>.json` (the result). See
//! docs/protocol.md section 8.4.
//!
//! File watching is unreliable (vfs-notify says as much): events can be
//! coalesced, dropped on queue overflow, or never come on some file systems.
//! So events are only hints. The loop rescans the directory with [`scan`] at
//! start-up, on every event and after every [`ResultsEvent::Rescan`].

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};

pub use crate::state::{classify, is_valid_task_id, FileKind, ReadResult, ResultsEvent, MAX_TASK_ID_LEN};

/// Watches one results directory, non-recursively. The loop owns this value;
/// dropping it stops watching (notify's watcher shuts its thread down on
/// drop), after which `on_event` is no longer called.
pub struct ResultsWatcher {
    _watcher: notify::RecommendedWatcher,
}

impl ResultsWatcher {
    /// Creates `dir` if it is missing and starts watching it. `on_event` runs
    /// on notify's own thread; it should only forward the event (e.g.
    /// `let _ = tx.send(..)`, where a failed send just means we are shutting
    /// down).
    pub fn start(
        dir: &Path,
        on_event: Box<dyn Fn(ResultsEvent) + Send + Sync>,
    ) -> Result<ResultsWatcher, String> {
        fs::create_dir_all(dir)
            .map_err(|error| format!("cannot create results directory {}: {error}", dir.display()))?;
        let mut watcher = notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
            if let Some(event) = results_event(result) {
                crate::failpoint::panic_at("watcher_event");
                on_event(event);
            }
        })
        .map_err(|error| {
            format!("cannot start a file watcher for results directory {}: {error}", dir.display())
        })?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|error| format!("cannot watch results directory {}: {error}", dir.display()))?;
        Ok(ResultsWatcher { _watcher: watcher })
    }
}

/// `results_dir/<task_id>.<extension>`. The caller must have checked the id
/// with [`is_valid_task_id`]; otherwise the path could leave `results_dir`.
pub fn task_file_path(results_dir: &Path, task_id: &str, kind: FileKind) -> PathBuf {
    results_dir.join(format!("{task_id}.{}", kind.extension()))
}

/// Lists the task files in `dir`, sorted by task id and kind so callers see a
/// stable order. Directories and names that [`classify`] rejects (including
/// names that are not UTF-8) are skipped.
pub fn scan(dir: &Path) -> io::Result<Vec<(String, FileKind)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some((task_id, kind)) = classify(&file_name) else {
            continue;
        };
        // The entry may vanish between read_dir and here (the agent renames,
        // the loop deletes); then it is simply not listed.
        match entry.file_type() {
            Ok(file_type) if file_type.is_dir() => continue,
            Ok(_) => found.push((task_id, kind)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        }
    }
    found.sort_by(|a, b| (&a.0, kind_order(a.1)).cmp(&(&b.0, kind_order(b.1))));
    Ok(found)
}

/// Reads a small JSON object from `path`, never reading more than
/// `max_bytes + 1` bytes, so a runaway agent cannot make the sidecar allocate
/// without bound. The length is checked from the open file's metadata before
/// reading, and again while reading in case the file grows.
///
/// A file being written without a rename is caught mid-write as
/// `Unparseable`; the caller decides how long to wait for it to settle.
///
/// Only a regular file is read. A symbolic link is never followed (it could
/// point anywhere outside the results directory), and a FIFO or device is
/// never opened in a way that can block the loop: see [`open_no_follow`].
pub fn read_json_file(path: &Path, max_bytes: u64) -> ReadResult {
    let file = match open_no_follow(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return ReadResult::Missing,
        Err(error) if is_symlink(path) => {
            return ReadResult::Unparseable {
                len: 0,
                error: format!("is a symbolic link; only regular files are read ({error})"),
            }
        }
        Err(error) => return ReadResult::Unparseable { len: 0, error: format!("cannot open: {error}") },
    };
    // Metadata of the open file, not of the path, so it describes the same
    // file we read even if the agent renames another one into place.
    let metadata = match file.metadata() {
        Ok(metadata) => metadata,
        Err(error) => {
            return ReadResult::Unparseable { len: 0, error: format!("cannot read metadata: {error}") }
        }
    };
    let len = metadata.len();
    if !metadata.is_file() {
        return ReadResult::Unparseable { len, error: "not a regular file".to_string() };
    }
    if len > max_bytes {
        return ReadResult::TooLarge { len };
    }
    let mut bytes = Vec::new();
    if let Err(error) = file.take(max_bytes.saturating_add(1)).read_to_end(&mut bytes) {
        return ReadResult::Unparseable { len, error: format!("cannot read: {error}") };
    }
    let read_len = bytes.len() as u64;
    if read_len > max_bytes {
        // The file grew past the limit after the metadata check.
        return ReadResult::TooLarge { len: read_len };
    }
    parse_json_object(&bytes)
}

/// The content of a task file as [`read_json_file`] judges it, without the
/// disk: `Parsed` for a JSON object, else `Unparseable` with the length.
pub fn parse_json_object(bytes: &[u8]) -> ReadResult {
    let len = bytes.len() as u64;
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(value @ serde_json::Value::Object(_)) => ReadResult::Parsed(value),
        Ok(other) => ReadResult::Unparseable {
            len,
            error: format!("expected a JSON object, found {}", json_type_name(&other)),
        },
        Err(error) => ReadResult::Unparseable { len, error: error.to_string() },
    }
}

/// Whether `path` is a regular file itself, not a symbolic link (to anything),
/// a directory, a FIFO or a device. Used for `.started`, whose content does
/// not matter: a link named like it does not confirm anything.
pub fn is_regular_file(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|metadata| metadata.file_type().is_file())
}

fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|metadata| metadata.file_type().is_symlink())
}

/// Opens `path` for reading such that neither a symbolic link in its last
/// component is followed nor the open can block. On Unix: `O_NOFOLLOW` (a
/// link fails with `ELOOP`) and `O_NONBLOCK` (opening a FIFO with no writer
/// returns at once instead of waiting for one; it changes nothing for a
/// regular file, and the caller refuses anything else after `fstat`). On
/// Windows: `FILE_FLAG_OPEN_REPARSE_POINT` opens a link itself, which the
/// caller's metadata check then refuses.
fn open_no_follow(path: &Path) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::OpenOptionsExt;
        /// FILE_FLAG_OPEN_REPARSE_POINT (winbase.h).
        const OPEN_REPARSE_POINT: u32 = 0x0020_0000;
        options.custom_flags(OPEN_REPARSE_POINT);
    }
    options.open(path)
}

/// Deletes the `.started`, `.json` and `.progress` files of a task. Missing
/// files are fine. All three are attempted even if one fails; the first error
/// is returned. An invalid task id is refused, because its path could point
/// outside `results_dir`.
pub fn remove_task_files(results_dir: &Path, task_id: &str) -> io::Result<()> {
    if !is_valid_task_id(task_id) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to remove files of invalid task id {task_id:?}"),
        ));
    }
    let mut first_error = None;
    for kind in FileKind::ALL {
        match fs::remove_file(task_file_path(results_dir, task_id, kind)) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Removes what a killed save leaves behind: temporary files that only this
/// sidecar creates, and only by their exact name patterns (tempfile's six
/// random alphanumeric characters). A save writes a temporary file and
/// renames it into place; killed in between, the temporary file stays.
///
/// - `.queue.json.XXXXXX.tmp` next to `queue_file` (queue.json saves),
/// - `.task.XXXXXX.tmp` (or `.tmpXXXXXX`, from earlier versions) in
///   `results_dir/.tasks` (task files for the agent).
///
/// Only regular files are removed (a link of that name is left alone, and
/// so is everything else). Call it at start-up, before anything saves.
/// Returns the files removed; a failure to list or remove is logged.
pub fn remove_leftover_temp_files(queue_file: &Path, results_dir: &Path) -> Vec<PathBuf> {
    let queue_dir = match queue_file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut removed = Vec::new();
    type IsOurs = fn(&str) -> bool;
    // (directory, its temporary names, whether it may be a link). `.tasks`
    // is ours to create; a link in its place (the agent shares results_dir)
    // is not followed. The queue's directory is the operator's choice.
    let places: [(PathBuf, IsOurs, bool); 2] =
        [(queue_dir, is_queue_temp_name, true), (results_dir.join(".tasks"), is_task_file_temp_name, false)];
    for (dir, is_ours, may_be_link) in places {
        if !may_be_link && fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
            log::warn!("{} is a symbolic link; not cleaning up inside it", dir.display());
            continue;
        }
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => {
                log::warn!("cannot list {} to remove leftover temporary files: {error}", dir.display());
                continue;
            }
        };
        for entry in entries.flatten() {
            if !entry.file_name().to_str().is_some_and(is_ours) {
                continue;
            }
            let path = entry.path();
            if !is_regular_file(&path) {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => removed.push(path),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => log::warn!("cannot remove leftover {}: {error}", path.display()),
            }
        }
    }
    removed
}

/// `.queue.json.` + 6 alphanumerics + `.tmp` (queue_store's save).
fn is_queue_temp_name(name: &str) -> bool {
    name.strip_prefix(".queue.json.").and_then(|rest| rest.strip_suffix(".tmp")).is_some_and(is_temp_random)
}

/// `.task.` + 6 alphanumerics + `.tmp` (the task file's save), or `.tmp` + 6
/// alphanumerics (tempfile's default, which earlier versions saved it with).
fn is_task_file_temp_name(name: &str) -> bool {
    let current =
        name.strip_prefix(crate::wake::TASK_FILE_TEMP_PREFIX).and_then(|rest| rest.strip_suffix(".tmp"));
    current.or_else(|| name.strip_prefix(".tmp")).is_some_and(is_temp_random)
}

fn is_temp_random(part: &str) -> bool {
    part.len() == 6 && part.bytes().all(|byte| byte.is_ascii_alphanumeric())
}

/// Maps one notify result to a hint, or `None` for events that cannot mean a
/// task file changed.
///
/// Read-only accesses are dropped on purpose: notify's inotify backend
/// reports every open and every close-without-write, so our own reads of a
/// result file would otherwise come back as events and make the loop read the
/// file again, forever. A close after writing is kept: it is often the last
/// event of a non-atomic write.
fn results_event(result: notify::Result<notify::Event>) -> Option<ResultsEvent> {
    let event = match result {
        Ok(event) => event,
        Err(error) => {
            log::warn!("results watcher error, rescanning: {error}");
            return Some(ResultsEvent::Rescan);
        }
    };
    if event.need_rescan() {
        return Some(ResultsEvent::Rescan);
    }
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return None,
        _ => {}
    }
    if event.paths.is_empty() {
        // An event that names no path says "something happened here".
        return Some(ResultsEvent::Rescan);
    }
    Some(ResultsEvent::Changed(event.paths))
}

fn kind_order(kind: FileKind) -> u8 {
    match kind {
        FileKind::Started => 0,
        FileKind::Progress => 1,
        FileKind::Result => 2,
    }
}

fn json_type_name(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
