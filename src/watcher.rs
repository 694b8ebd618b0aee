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

/// What the watcher saw. Both variants are hints to look at the directory
/// again; neither says what is in it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultsEvent {
    /// These paths were created, written, renamed or removed.
    Changed(Vec<PathBuf>),
    /// The watcher lost track (an error or an event-queue overflow): anything
    /// may have changed, so rescan the whole directory.
    Rescan,
}

/// Watches one results directory, non-recursively. The loop owns this value;
/// dropping it stops watching (notify's watcher shuts its thread down on
/// drop), after which `on_event` is no longer called.
pub struct ResultsWatcher {
    _watcher: notify::RecommendedWatcher,
}

/// The three files an agent writes for a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `<task_id>.started`: the agent confirms it woke up.
    Started,
    /// `<task_id>.json`: the result, sent to the hub as `result`.
    Result,
    /// `<task_id>.progress`: `{"progress":0..100,"message":...}`.
    Progress,
}

/// What [`read_json_file`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadResult {
    /// No such file (yet, or any more).
    Missing,
    /// The file is larger than allowed; it was not read.
    TooLarge { len: u64 },
    /// The file is not a JSON object: empty, cut off mid-write, garbage, some
    /// other JSON value, or unreadable (then `error` says why).
    Unparseable { len: u64, error: String },
    /// The file holds a JSON object (always a `Value::Object`).
    Parsed(serde_json::Value),
}

/// Longest task id we accept, in bytes. The id names files, so it must stay
/// well below file-name limits (255 bytes on common file systems) with the
/// longest suffix added.
pub const MAX_TASK_ID_LEN: usize = 128;

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

impl FileKind {
    /// The file-name suffix, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            FileKind::Started => "started",
            FileKind::Result => "json",
            FileKind::Progress => "progress",
        }
    }

    const ALL: [FileKind; 3] = [FileKind::Started, FileKind::Result, FileKind::Progress];
}

/// Splits a file name from the results directory into its task id and kind.
/// Returns `None` for anything else, including temporary and hidden files
/// (leading `.`, trailing `.tmp` or `~`), which well-behaved agents write
/// before renaming into place, and names whose id is not a valid task id.
pub fn classify(file_name: &str) -> Option<(String, FileKind)> {
    if file_name.starts_with('.') || file_name.ends_with(".tmp") || file_name.ends_with('~') {
        return None;
    }
    FileKind::ALL.into_iter().find_map(|kind| {
        let task_id = file_name.strip_suffix(kind.extension())?.strip_suffix('.')?;
        is_valid_task_id(task_id).then(|| (task_id.to_string(), kind))
    })
}

/// Whether `id` may name files in the results directory: 1 to 128 bytes of
/// `[A-Za-z0-9._-]` (docs/protocol.md section 5.1), and not `.` or `..`.
///
/// This is slightly stricter than the protocol's character class: an id
/// starting with `.` is refused too. Its files would be hidden files, which
/// [`classify`] ignores, so such a task could never be confirmed or finish;
/// refusing it up front fails it visibly instead. `.` and `..` are covered by
/// the same rule. Real hub ids are `task-` plus hex digits.
///
/// Windows device names (`CON`, `NUL`, `COM1`, ... also with an extension,
/// as in `nul.txt`, in any case) are refused on every platform: on Windows
/// `CON.json` opens the console, not a file, and a task must behave the same
/// on every machine of a fleet.
pub fn is_valid_task_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_TASK_ID_LEN
        && !id.starts_with('.')
        && id.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
        && !is_windows_device_name(id)
}

/// Whether Windows would take a file named `id.<ext>` for a device: the part
/// before the first dot is CON, PRN, AUX, NUL, COM0-9 or LPT0-9.
fn is_windows_device_name(id: &str) -> bool {
    let stem = id.split('.').next().unwrap_or(id).to_ascii_uppercase();
    match stem.as_bytes() {
        b"CON" | b"PRN" | b"AUX" | b"NUL" => true,
        [b'C', b'O', b'M', digit] | [b'L', b'P', b'T', digit] => digit.is_ascii_digit(),
        _ => false,
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
mod tests {
    use std::time::{Duration, Instant};

    use crossbeam_channel::{select, unbounded};
    use notify::event::{CreateKind, Flag, ModifyKind};
    use serde_json::json;

    use super::*;

    /// Generous, so a loaded machine does not fail a correct test; a broken
    /// watcher fails it all the same.
    const FAILSAFE: Duration = Duration::from_secs(10);

    #[test]
    fn classify_table() {
        let long_id = "a".repeat(MAX_TASK_ID_LEN);
        let too_long_name = format!("{}.json", "a".repeat(MAX_TASK_ID_LEN + 1));
        let long_name = format!("{long_id}.json");
        let cases: Vec<(&str, Option<(&str, FileKind)>)> = vec![
            ("task-1f2e.started", Some(("task-1f2e", FileKind::Started))),
            ("task-1f2e.json", Some(("task-1f2e", FileKind::Result))),
            ("task-1f2e.progress", Some(("task-1f2e", FileKind::Progress))),
            ("a.b_c-D9.json", Some(("a.b_c-D9", FileKind::Result))),
            // The id itself may end in ".json"; only the last suffix counts.
            ("x.json.json", Some(("x.json", FileKind::Result))),
            (&long_name, Some((&long_id, FileKind::Result))),
            (&too_long_name, None),
            // Temporary and hidden files.
            (".task-1.json", None),
            ("task-1.json.tmp", None),
            ("task-1.json~", None),
            ("task-1.tmp", None),
            // Not task files.
            ("task-1", None),
            ("task-1.txt", None),
            ("task-1.JSON", None),
            (".json", None),
            ("json", None),
            ("", None),
            ("...json", None),
            ("..json", None),
            ("a b.json", None),
            ("a/b.json", None),
            ("../x.json", None),
            ("tâche.json", None),
        ];
        for (file_name, expected) in cases {
            let expected = expected.map(|(id, kind)| (id.to_string(), kind));
            assert_eq!(classify(file_name), expected, "classify({file_name:?})");
        }
    }

    #[test]
    fn is_valid_task_id_table() {
        let cases: Vec<(String, bool)> = vec![
            ("task-0123456789abcdef".into(), true),
            ("A.b_c-9".into(), true),
            ("a".into(), true),
            ("a".repeat(128), true),
            ("a".repeat(129), false),
            ("a".repeat(200), false),
            ("".into(), false),
            (".".into(), false),
            ("..".into(), false),
            (".hidden".into(), false),
            ("../x".into(), false),
            ("a/b".into(), false),
            ("a\\b".into(), false),
            ("a b".into(), false),
            ("a\0b".into(), false),
            ("a\nb".into(), false),
            ("é".into(), false),
            ("$(touch x)".into(), false),
            ("a:b".into(), false),
            // Windows device names, with or without an extension, any case.
            ("CON".into(), false),
            ("con".into(), false),
            ("NUL".into(), false),
            ("nul.txt".into(), false),
            ("PRN".into(), false),
            ("AUX.json".into(), false),
            ("COM1".into(), false),
            ("com9.x.y".into(), false),
            ("LPT0".into(), false),
            ("CONSOLE".into(), true),
            ("COM10".into(), true),
            ("xCON".into(), true),
            ("task-CON".into(), true),
            ("COM".into(), true),
        ];
        for (id, expected) in cases {
            assert_eq!(is_valid_task_id(&id), expected, "is_valid_task_id({id:?})");
        }
    }

    #[test]
    fn task_file_path_names_each_kind() {
        let dir = Path::new("/results");
        assert_eq!(task_file_path(dir, "t-1", FileKind::Started), Path::new("/results/t-1.started"));
        assert_eq!(task_file_path(dir, "t-1", FileKind::Result), Path::new("/results/t-1.json"));
        assert_eq!(task_file_path(dir, "t-1", FileKind::Progress), Path::new("/results/t-1.progress"));
        for kind in FileKind::ALL {
            let path = task_file_path(dir, "t-1", kind);
            let file_name = path.file_name().unwrap().to_str().unwrap();
            assert_eq!(classify(file_name), Some(("t-1".to_string(), kind)));
        }
    }

    #[test]
    fn scan_lists_task_files_only_in_stable_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.json", "a.json", "a.started", "a.progress", ".a.json", "a.json.tmp", "notes.txt"] {
            fs::write(dir.path().join(name), "{}").unwrap();
        }
        fs::create_dir(dir.path().join("c.json")).unwrap();
        let found = scan(dir.path()).unwrap();
        assert_eq!(
            found,
            vec![
                ("a".to_string(), FileKind::Started),
                ("a".to_string(), FileKind::Progress),
                ("a".to_string(), FileKind::Result),
                ("b".to_string(), FileKind::Result),
            ]
        );
    }

    #[test]
    fn scan_of_missing_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(scan(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn read_json_file_cases() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        fs::write(path("empty.json"), "").unwrap();
        fs::write(path("garbage.json"), "{\"status\": \"succ").unwrap();
        fs::write(path("array.json"), "[1, 2]").unwrap();
        fs::write(path("string.json"), "\"x\"").unwrap();
        fs::write(path("big.json"), format!("{{\"x\":\"{}\"}}", "a".repeat(100))).unwrap();
        fs::write(path("ok.json"), r#"{"status":"success","output":[1]}"#).unwrap();
        fs::create_dir(path("dir.json")).unwrap();

        assert_eq!(read_json_file(&path("missing.json"), 1000), ReadResult::Missing);
        assert_eq!(read_json_file(&path("big.json"), 100), ReadResult::TooLarge { len: 108 });
        assert!(matches!(read_json_file(&path("big.json"), 108), ReadResult::Parsed(_)));
        assert!(matches!(read_json_file(&path("empty.json"), 1000), ReadResult::Unparseable { len: 0, .. }));
        assert!(matches!(
            read_json_file(&path("garbage.json"), 1000),
            ReadResult::Unparseable { len: 16, .. }
        ));
        assert_eq!(
            read_json_file(&path("array.json"), 1000),
            ReadResult::Unparseable { len: 6, error: "expected a JSON object, found an array".to_string() }
        );
        assert!(matches!(read_json_file(&path("string.json"), 1000), ReadResult::Unparseable { len: 3, .. }));
        assert!(matches!(read_json_file(&path("dir.json"), 1000), ReadResult::Unparseable { .. }));
        assert_eq!(
            read_json_file(&path("ok.json"), 1000),
            ReadResult::Parsed(json!({"status": "success", "output": [1]}))
        );
        // A limit at the top of the range must not overflow `max_bytes + 1`.
        assert!(matches!(read_json_file(&path("ok.json"), u64::MAX), ReadResult::Parsed(_)));
    }

    /// Runs `read` on another thread and fails the test if it blocks: a
    /// blocked open() must fail the test, not hang it.
    #[cfg(unix)]
    fn read_within_failsafe(path: PathBuf) -> ReadResult {
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let _ = tx.send(read_json_file(&path, 1 << 20));
        });
        rx.recv_timeout(FAILSAFE).expect("read_json_file blocked")
    }

    #[cfg(unix)]
    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo").arg(path).status().unwrap();
        assert!(status.success(), "mkfifo failed");
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_named_like_a_task_file_is_refused_without_blocking() {
        // Regression (issue 10 #1): open() of a FIFO with no writer blocked
        // the loop thread forever.
        let dir = tempfile::tempdir().unwrap();
        for name in ["t.json", "t.progress", "t.started"] {
            let path = dir.path().join(name);
            mkfifo(&path);
            match read_within_failsafe(path.clone()) {
                ReadResult::Unparseable { error, .. } => {
                    assert!(error.contains("not a regular file"), "{name}: {error}")
                }
                other => panic!("{name}: a FIFO was read as {other:?}"),
            }
            assert!(!is_regular_file(&path), "{name}: a FIFO counted as a regular file");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_out_of_the_results_dir_is_never_followed() {
        // Regression (issue 10 #7): a result file that was a link to a JSON
        // file elsewhere was relayed to the hub in full.
        let parent = tempfile::tempdir().unwrap();
        let results = parent.path().join("results");
        fs::create_dir(&results).unwrap();
        let outside = parent.path().join("secret.json");
        fs::write(&outside, r#"{"status":"success","output":"outside"}"#).unwrap();
        for name in ["t.json", "t.progress", "t.started"] {
            let link = results.join(name);
            std::os::unix::fs::symlink(&outside, &link).unwrap();
            match read_json_file(&link, 1 << 20) {
                ReadResult::Unparseable { len: 0, error } => {
                    assert!(error.contains("symbolic link"), "{name}: {error}")
                }
                other => panic!("{name}: a link was read as {other:?}"),
            }
            assert!(!is_regular_file(&link), "{name}: a link counted as a regular file");
        }
        // A dangling link is refused the same way, not taken as missing.
        let dangling = results.join("u.json");
        std::os::unix::fs::symlink(parent.path().join("nothing-here"), &dangling).unwrap();
        assert!(matches!(read_json_file(&dangling, 1 << 20), ReadResult::Unparseable { .. }));
        // A link to a directory, too.
        let to_dir = results.join("v.json");
        std::os::unix::fs::symlink(parent.path(), &to_dir).unwrap();
        assert!(matches!(read_json_file(&to_dir, 1 << 20), ReadResult::Unparseable { .. }));
        // The regular file itself is read; the check is about links only.
        assert!(matches!(read_json_file(&outside, 1 << 20), ReadResult::Parsed(_)));
        assert!(is_regular_file(&outside));
    }

    #[test]
    fn a_large_result_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        // Sparse: 100 MB of length without 100 MB of disk or time.
        fs::File::create(&path).unwrap().set_len(100 << 20).unwrap();
        assert_eq!(read_json_file(&path, 1 << 20), ReadResult::TooLarge { len: 100 << 20 });
    }

    #[test]
    fn leftover_temp_files_of_ours_are_removed_and_nothing_else() {
        // Regression (issue 10 #4): temporary files of a save killed before
        // its rename stayed forever.
        let work = tempfile::tempdir().unwrap();
        let queue_file = work.path().join("queue.json");
        let results = work.path().join("results");
        let tasks = results.join(".tasks");
        fs::create_dir_all(&tasks).unwrap();
        let ours = [work.path().join(".queue.json.a1B2c3.tmp"), tasks.join(".tmpZ9y8X7")];
        let not_ours = [
            work.path().join("queue.json"),
            work.path().join(".queue.json.a1B2c.tmp"),
            work.path().join(".queue.json.a1B2c3d.tmp"),
            work.path().join(".queue.json.a1-2c3.tmp"),
            work.path().join("x.queue.json.a1B2c3.tmp"),
            work.path().join(".tmpZ9y8X7"),
            work.path().join("notes.txt"),
            results.join(".tmpZ9y8X7"),
            results.join("t.json"),
            tasks.join("t.json"),
            tasks.join(".tmpZ9y8X"),
            tasks.join(".tmpZ9y8X7.json"),
        ];
        for path in ours.iter().chain(&not_ours) {
            fs::write(path, "{}").unwrap();
        }
        // A directory with our pattern is not ours either.
        fs::create_dir(tasks.join(".tmpDIR123")).unwrap();
        let mut removed = remove_leftover_temp_files(&queue_file, &results);
        removed.sort();
        let mut expected = ours.to_vec();
        expected.sort();
        assert_eq!(removed, expected);
        for path in &ours {
            assert!(!path.exists(), "{} is still there", path.display());
        }
        for path in &not_ours {
            assert!(path.exists(), "{} was removed", path.display());
        }
        assert!(tasks.join(".tmpDIR123").is_dir());
        // Missing directories are fine.
        assert!(
            remove_leftover_temp_files(&work.path().join("q/queue.json"), &work.path().join("r")).is_empty()
        );
    }

    #[cfg(unix)]
    #[test]
    fn leftover_clean_up_does_not_follow_links() {
        let work = tempfile::tempdir().unwrap();
        let victim = work.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        let link = work.path().join(".queue.json.a1B2c3.tmp");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(
            remove_leftover_temp_files(&work.path().join("queue.json"), &work.path().join("r")).is_empty()
        );
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        // results_dir/.tasks as a link to another directory: not entered.
        let elsewhere = work.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::write(elsewhere.join(".tmpAbCdEf"), "keep").unwrap();
        let results = work.path().join("results");
        fs::create_dir(&results).unwrap();
        std::os::unix::fs::symlink(&elsewhere, results.join(".tasks")).unwrap();
        assert!(remove_leftover_temp_files(&work.path().join("q/queue.json"), &results).is_empty());
        assert!(elsewhere.join(".tmpAbCdEf").exists());
    }

    #[test]
    fn the_temp_name_patterns_match_what_our_saves_create() {
        // Kill a save "between write and rename" by keeping the temp file:
        // the same builders the savers use must produce names we clean up.
        let dir = tempfile::tempdir().unwrap();
        let queue_temp =
            tempfile::Builder::new().prefix(".queue.json.").suffix(".tmp").tempfile_in(dir.path()).unwrap();
        let task_temp = tempfile::Builder::new()
            .prefix(crate::wake::TASK_FILE_TEMP_PREFIX)
            .suffix(".tmp")
            .tempfile_in(dir.path())
            .unwrap();
        let earlier_task_temp = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
        let name = |path: &Path| path.file_name().unwrap().to_str().unwrap().to_string();
        assert!(is_queue_temp_name(&name(queue_temp.path())), "{}", name(queue_temp.path()));
        assert!(is_task_file_temp_name(&name(task_temp.path())), "{}", name(task_temp.path()));
        assert!(
            is_task_file_temp_name(&name(earlier_task_temp.path())),
            "{}",
            name(earlier_task_temp.path())
        );
        assert!(!is_task_file_temp_name(".task.a1B2c3.json"));
    }

    #[test]
    fn remove_task_files_removes_all_three_and_tolerates_missing() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["t.started", "t.json", "t.progress", "u.json"] {
            fs::write(dir.path().join(name), "{}").unwrap();
        }
        remove_task_files(dir.path(), "t").unwrap();
        assert_eq!(scan(dir.path()).unwrap(), vec![("u".to_string(), FileKind::Result)]);
        // Nothing left to remove is not an error.
        remove_task_files(dir.path(), "t").unwrap();
        remove_task_files(dir.path(), "never-existed").unwrap();
    }

    #[test]
    fn remove_task_files_refuses_invalid_ids() {
        let parent = tempfile::tempdir().unwrap();
        let results_dir = parent.path().join("results");
        fs::create_dir(&results_dir).unwrap();
        // A file one level up that a traversal id would reach.
        fs::write(parent.path().join("victim.json"), "{}").unwrap();
        let error = remove_task_files(&results_dir, "../victim").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(parent.path().join("victim.json").exists());
    }

    #[test]
    fn results_event_mapping() {
        let path = PathBuf::from("/results/t.json");
        let event = |kind: EventKind| notify::Event::new(kind).add_path(path.clone());
        let changed = Some(ResultsEvent::Changed(vec![path.clone()]));

        assert_eq!(results_event(Ok(event(EventKind::Create(CreateKind::File)))), changed);
        assert_eq!(results_event(Ok(event(EventKind::Modify(ModifyKind::Any)))), changed);
        assert_eq!(
            results_event(Ok(event(EventKind::Access(AccessKind::Close(AccessMode::Write))))),
            changed
        );
        // Our own reads must not echo back as events.
        assert_eq!(results_event(Ok(event(EventKind::Access(AccessKind::Open(AccessMode::Any))))), None);
        assert_eq!(results_event(Ok(event(EventKind::Access(AccessKind::Close(AccessMode::Read))))), None);
        assert_eq!(
            results_event(Ok(notify::Event::new(EventKind::Other).set_flag(Flag::Rescan))),
            Some(ResultsEvent::Rescan)
        );
        assert_eq!(results_event(Ok(notify::Event::new(EventKind::Any))), Some(ResultsEvent::Rescan));
        assert_eq!(results_event(Err(notify::Error::generic("queue overflow"))), Some(ResultsEvent::Rescan));
    }

    #[test]
    fn watcher_reports_a_new_file() {
        let parent = tempfile::tempdir().unwrap();
        // start() must create the directory.
        let dir = parent.path().join("results");
        let (tx, rx) = unbounded();
        let watcher = ResultsWatcher::start(
            &dir,
            Box::new(move |event| {
                let _ = tx.send(event);
            }),
        )
        .unwrap();
        fs::write(dir.join("task-1.json"), "{}").unwrap();

        let deadline = crossbeam_channel::at(Instant::now() + FAILSAFE);
        loop {
            select! {
                recv(rx) -> event => match event.expect("watcher callback dropped") {
                    ResultsEvent::Changed(paths)
                        if paths
                            .iter()
                            .any(|path| path.file_name() == Some("task-1.json".as_ref())) =>
                    {
                        break
                    }
                    _ => continue,
                },
                recv(deadline) -> _ => panic!("no Changed event for task-1.json within {FAILSAFE:?}"),
            }
        }
        drop(watcher);
    }

    #[test]
    fn watcher_start_error_is_readable() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("file");
        fs::write(&not_a_dir, "").unwrap();
        let results_dir = not_a_dir.join("results");
        let error = match ResultsWatcher::start(&results_dir, Box::new(|_| {})) {
            Ok(_) => panic!("watching below a regular file must fail"),
            Err(error) => error,
        };
        assert!(
            error.starts_with("cannot create results directory ")
                && error.contains(&*results_dir.to_string_lossy()),
            "unexpected error text: {error}"
        );
    }
}
