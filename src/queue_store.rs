//! `queue.json`: the crash record. Reads what the Node sidecar writes and what
//! we write (docs/protocol.md section 9), adding fields only, and saves atomically
//! and durably: temp file in the same directory, write, fsync, rename, fsync
//! the directory where the platform allows.
//!
//! Unknown fields are kept (`extra`) so a file written by a newer or older
//! sidecar survives a round trip through this one.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::state::{PastFate, PastTask, QueueFile, Report, TaskRecord, TaskStatus, WakeProcess};

/// Lenient: a status this version does not know is read as `working` (the
/// task is treated as being worked on, as before), with a warning.
impl<'de> Deserialize<'de> for TaskStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<TaskStatus, D::Error> {
        let text = String::deserialize(deserializer)?;
        let known =
            [TaskStatus::Accepted, TaskStatus::Waking, TaskStatus::WakingConfirmation, TaskStatus::Working];
        Ok(known.into_iter().find(|s| s.as_str() == text).unwrap_or_else(|| {
            log::warn!("queue.json: unknown task status {text:?}; treating it as working");
            TaskStatus::Working
        }))
    }
}

/// What [`load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// No file: start empty.
    Missing,
    Ok(Box<QueueFile>),
    /// The file did not parse; it was renamed to `moved_to` and we start
    /// empty. Never silently overwritten.
    Corrupt {
        error: String,
        moved_to: PathBuf,
    },
}

pub fn load(path: &Path) -> io::Result<Loaded> {
    let text = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Missing),
        Err(e) => return Err(e),
    };
    match parse(&text) {
        Ok(queue) => Ok(Loaded::Ok(Box::new(queue))),
        Err(error) => {
            let moved_to = corrupt_path(path, crate::clock::unix_ms());
            fs::rename(path, &moved_to)?;
            Ok(Loaded::Corrupt { error, moved_to })
        }
    }
}

/// Parses without touching the disk (also used by `status`).
pub fn parse(bytes: &[u8]) -> Result<QueueFile, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        // A zero-length file is what a crash between create and write leaves
        // on file systems that do not order metadata after data.
        return Err("the file is empty".into());
    }
    let queue: QueueFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    // Task ids name files in results_dir. We never accept an id that is not
    // a plain file name, so one here is damage or tampering: a `../` would
    // make us read and write outside results_dir.
    let ids = [
        queue.active.as_ref().map(|t| t.task_id.as_str()),
        queue.recovering.as_ref().map(|t| t.task_id.as_str()),
        queue.past.as_ref().map(|t| t.task_id.as_str()),
    ];
    let earlier = queue.past_earlier.iter().map(|t| t.task_id.as_str());
    if let Some(bad) =
        ids.into_iter().flatten().chain(earlier).find(|id| !crate::watcher::is_valid_task_id(id))
    {
        let shown: String = bad.chars().take(64).collect();
        return Err(format!("invalid task_id {shown:?}"));
    }
    Ok(queue)
}

pub(crate) fn corrupt_path(path: &Path, unix_ms: u64) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "queue.json".into());
    name.push(format!(".corrupt-{unix_ms}"));
    path.with_file_name(name)
}

/// Writes `queue` to `path` atomically and durably. Only the event loop calls
/// this, so there is never a concurrent writer.
pub fn save(path: &Path, queue: &QueueFile) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(queue).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes, ".queue.json.")
}

/// Writes `bytes` to `path` so that a reader (or a crash) sees the old file or
/// the new one, never a mix: a temporary file named `<prefix>XXXXXX.tmp` in
/// the same directory, written and fsynced, renamed over `path`, then the
/// directory fsynced where the platform allows. The one atomic-write helper
/// of the crate.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], prefix: &str) -> io::Result<()> {
    replace(path, bytes, prefix, true)
}

/// [`write_atomic`] without the fsyncs: still never a mix for a reader, but
/// after a power loss the file may be old, empty or missing. Only for a file
/// that is a copy of durable state and rewritten before use (the task file).
pub(crate) fn write_atomic_unsynced(path: &Path, bytes: &[u8], prefix: &str) -> io::Result<()> {
    replace(path, bytes, prefix, false)
}

/// [`write_atomic`] for a file of the agent's (the reporting helpers):
/// readable by everyone (0644 on Unix; a tempfile is 0600), so a sidecar
/// running as another user can read it. With `new_only` an existing file is
/// never replaced: if `path` exists (or another writer gets there first),
/// nothing is changed and the error is [`io::ErrorKind::AlreadyExists`]; of
/// two racing writers exactly one wins.
pub(crate) fn write_atomic_shared(path: &Path, bytes: &[u8], prefix: &str, new_only: bool) -> io::Result<()> {
    let dir = parent_dir(path);
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix).suffix(".tmp");
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let mut temp = builder.tempfile_in(dir)?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    if new_only {
        temp.persist_noclobber(path).map_err(|e| e.error)?;
    } else {
        persist(temp, path)?;
    }
    sync_dir(dir);
    Ok(())
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn replace(path: &Path, bytes: &[u8], prefix: &str, durable: bool) -> io::Result<()> {
    let dir = parent_dir(path);
    let mut temp = tempfile::Builder::new().prefix(prefix).suffix(".tmp").tempfile_in(dir)?;
    temp.write_all(bytes)?;
    if durable {
        temp.as_file().sync_all()?;
    }
    persist(temp, path)?;
    if durable {
        sync_dir(dir);
    }
    Ok(())
}

#[cfg(not(windows))]
fn persist(temp: tempfile::NamedTempFile, path: &Path) -> io::Result<()> {
    temp.persist(path).map(drop).map_err(|e| e.error)
}

/// On Windows a rename over a file that another process has open (the
/// `status` command, an editor, a virus scanner) fails with "access denied"
/// or a sharing violation until that process closes it. Such opens are
/// brief, so retries with doubling delays (635 ms in all, seen needed under
/// Wine on a loaded machine with a reader polling the file) ride them out; a
/// lasting failure is returned as before.
#[cfg(windows)]
fn persist(mut temp: tempfile::NamedTempFile, path: &Path) -> io::Result<()> {
    const ERROR_ACCESS_DENIED: i32 = 5;
    const ERROR_SHARING_VIOLATION: i32 = 32;
    for delay_ms in [5, 10, 20, 40, 80, 160, 320] {
        match temp.persist(path) {
            Ok(_) => return Ok(()),
            Err(e)
                if matches!(e.error.raw_os_error(), Some(ERROR_ACCESS_DENIED | ERROR_SHARING_VIOLATION)) =>
            {
                temp = e.file;
                std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            }
            Err(e) => return Err(e.error),
        }
    }
    temp.persist(path).map(drop).map_err(|e| e.error)
}

/// Makes the rename itself durable. Unix only: Windows has no directory
/// handles to fsync, and NTFS journals the rename.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Err(e) = fs::File::open(dir).and_then(|d| d.sync_all()) {
        log::warn!("fsync of {} failed: {e}", dir.display());
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{WakeIdentity, WakeMode};
    use serde_json::{json, Value};

    const NODE_FILE: &str = r#"{
      "active": {"task_id":"task-1f2e3d4c5b6a7980","description":"fix the bug","metadata":{"repo":"x"},
                 "status":"working","assigned_at":1707500000000,"generation":3,"wake_attempts":1,
                 "node_only_field":"kept"},
      "recovering": null
    }"#;

    #[test]
    fn reads_the_node_shape_and_keeps_unknown_fields() {
        let queue = parse(NODE_FILE.as_bytes()).unwrap();
        let active = queue.active.as_ref().unwrap();
        assert_eq!(active.task_id, "task-1f2e3d4c5b6a7980");
        assert_eq!(active.status, TaskStatus::Working);
        assert_eq!(active.generation, 3);
        assert_eq!(active.wake_attempts, 1);
        assert_eq!(active.report, None);
        let written: Value = serde_json::to_value(&queue).unwrap();
        assert_eq!(written["active"]["node_only_field"], "kept");
        assert_eq!(written["recovering"], Value::Null);
        assert!(written["active"].get("report").is_none(), "no field added when there is no report");
    }

    #[test]
    fn task_status_keeps_nodes_spelling_and_reads_an_unknown_one_as_working() {
        for (status, text) in [
            (TaskStatus::Accepted, "accepted"),
            (TaskStatus::Waking, "waking"),
            (TaskStatus::WakingConfirmation, "waking_confirmation"),
            (TaskStatus::Working, "working"),
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), json!(text));
            assert_eq!(serde_json::from_value::<TaskStatus>(json!(text)).unwrap(), status);
            assert_eq!(status.to_string(), text);
        }
        assert_eq!(serde_json::from_value::<TaskStatus>(json!("paused")).unwrap(), TaskStatus::Working);
        let queue = parse(br#"{"active":{"task_id":"t"}}"#).unwrap();
        assert_eq!(queue.active.unwrap().status, TaskStatus::Working, "missing: working, as Node reads it");
    }

    #[test]
    fn save_then_load_round_trips_with_a_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.json");
        let mut queue = parse(NODE_FILE.as_bytes()).unwrap();
        queue.active.as_mut().unwrap().report =
            Some(Report::Complete { result: json!({"status":"success"}) });
        save(&path, &queue).unwrap();
        let Loaded::Ok(back) = load(&path).unwrap() else { panic!("did not load") };
        assert_eq!(*back, queue);
        // Only queue.json is left: the temp file was renamed, not copied.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["queue.json"]);
    }

    #[test]
    fn the_wake_process_is_a_flat_optional_record() {
        let mut queue = parse(NODE_FILE.as_bytes()).unwrap();
        assert_eq!(queue.wake_process, None);
        assert!(serde_json::to_value(&queue).unwrap().get("wake_process").is_none());
        queue.wake_process = Some(WakeProcess {
            task_id: "task-1f2e3d4c5b6a7980".into(),
            attempt: 2,
            identity: WakeIdentity { pid: 77, process_group: Some(77), start_time: None },
            mode: WakeMode::Launch,
            exit_code: None,
        });
        let written = serde_json::to_value(&queue).unwrap();
        assert_eq!(
            written["wake_process"],
            json!({"task_id":"task-1f2e3d4c5b6a7980","attempt":2,"pid":77,"process_group":77})
        );
        let back: QueueFile = serde_json::from_value(written).unwrap();
        assert_eq!(back, queue);
        assert!(back.extra.is_empty(), "not also kept as an unknown field: {:?}", back.extra);
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.json");
        let escape = r#"{"active":{"task_id":"../../escape","generation":1,"status":"working"}}"#;
        let past = r#"{"active":null,"past":{"task_id":"..","generation":1,"fate":"taken_back"}}"#;
        let earlier = r#"{"past_earlier":[{"task_id":"t0","generation":1,"fate":"settled"},
                                           {"task_id":"a/b","generation":1,"fate":"taken_back"}]}"#;
        // Only the id is wrong: the same records with a plain id load.
        assert!(parse(escape.replace("../../escape", "t1").as_bytes()).is_ok());
        assert!(parse(past.replace("\"..\"", "\"t1\"").as_bytes()).is_ok());
        assert_eq!(parse(earlier.replace("a/b", "t1").as_bytes()).unwrap().past_earlier.len(), 2);
        for bad in [escape, past, earlier] {
            assert!(parse(bad.as_bytes()).unwrap_err().contains("invalid task_id"), "{bad}");
        }
        for garbage in ["{\"active\": {", "", "[1,2]", escape, past] {
            fs::write(&path, garbage).unwrap();
            let Loaded::Corrupt { moved_to, .. } = load(&path).unwrap() else { panic!("{garbage:?} loaded") };
            assert!(!path.exists());
            assert_eq!(fs::read_to_string(&moved_to).unwrap(), garbage);
            assert!(moved_to.file_name().unwrap().to_str().unwrap().starts_with("queue.json.corrupt-"));
            fs::remove_file(moved_to).unwrap();
        }
        assert!(matches!(load(&path).unwrap(), Loaded::Missing));
    }
}
