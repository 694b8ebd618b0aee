//! What the core hears from the outside, as plain data: the [`Event`]s the
//! worker threads send (the hub connection, the results directory, the wake
//! executor) and the types they carry, the lifecycle-log events its
//! `Record` effects name, and the two pure rules about names the watcher and
//! the core share ([`classify`] a results-directory file name,
//! [`is_valid_task_id`]). Defined here so that the core imports nothing that
//! does I/O; the I/O modules use these.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::records::WakeIdentity;

#[derive(Debug)]
pub enum Event {
    /// From a hub socket thread.
    Hub(HubEvent),
    /// From the wake executor: an attempt's command is running.
    WakeStarted(WakeStarted),
    /// From the wake executor.
    Wake(WakeOutcome),
    /// From the results-directory watcher (a hint: rescan).
    Results(ResultsEvent),
    /// Ctrl-C, SIGTERM, or a test harness.
    Shutdown,
    /// The hub's `restart_sidecar` with `update_url`: the new binary is in
    /// place (src/selfupdate); exit for the supervisor to start it.
    UpdateInstalled { version: String },
}

/// What the socket thread reports. `Disconnected` is always the last event
/// of a connection, and there is exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubEvent {
    /// The WebSocket handshake is done; frames can flow.
    Connected { conn_id: u64 },
    /// One text frame received from the hub.
    Frame { conn_id: u64, text: String },
    /// The connection is over and the thread is exiting. `reason` is a
    /// one-line description for logs; `close_code` and `close_reason` are
    /// what the hub's close frame said, if it sent one (an empty close reason
    /// is reported as `None`).
    Disconnected { conn_id: u64, reason: String, close_code: Option<u16>, close_reason: Option<String> },
}

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

impl FileKind {
    /// The file-name suffix, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            FileKind::Started => "started",
            FileKind::Result => "json",
            FileKind::Progress => "progress",
        }
    }

    pub const ALL: [FileKind; 3] = [FileKind::Started, FileKind::Result, FileKind::Progress];
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

/// Longest task id we accept, in bytes. The id names files, so it must stay
/// well below file-name limits (255 bytes on common file systems) with the
/// longest suffix added.
pub const MAX_TASK_ID_LEN: usize = 128;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeStatus {
    /// The command exited with status 0.
    Success,
    /// The command exited non-zero; `exit_code` is `None` when a signal
    /// ended it.
    Failed { exit_code: Option<i32> },
    /// The command did not exit within the timeout; its tree was killed.
    TimedOut,
    /// The command could not be started (or its task file not written); the
    /// text says why.
    SpawnFailed(String),
    /// [`WakeHandle::cancel`] (or dropping the handle) ended the running
    /// attempt.
    Cancelled,
    /// The handle was dropped (the sidecar stops) while a run-mode agent
    /// ran: it was left running, to be found by the next start.
    LeftRunning,
}

#[derive(Debug, Clone)]
pub struct WakeOutcome {
    pub task_id: String,
    pub attempt: u32,
    pub status: WakeStatus,
    /// The last [`TAIL_LIMIT_BYTES`] of stdout, as lossy UTF-8.
    pub stdout_tail: String,
    /// The last [`TAIL_LIMIT_BYTES`] of stderr, as lossy UTF-8.
    pub stderr_tail: String,
    /// From the start of the attempt to the outcome.
    pub elapsed: Duration,
}

/// Reported (see [`WakeHandle::spawn_with_started`]) as soon as an attempt's
/// command has started, before its outcome: what the core persists so that
/// after a crash it can find the command again ([`end_leftover`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WakeStarted {
    pub task_id: String,
    pub attempt: u32,
    pub identity: WakeIdentity,
}

/// How many characters of a failed attempt's stderr line the warning shows.
pub const STDERR_LINE_LIMIT_CHARS: usize = 300;

impl WakeOutcome {
    /// The last non-blank line of the command's stderr, trimmed and cut to
    /// [`STDERR_LINE_LIMIT_CHARS`] (with `...` when cut): the likely reason
    /// of a failure, short enough for a log line.
    pub fn stderr_last_line(&self) -> Option<String> {
        let line = self.stderr_tail.lines().map(str::trim).rfind(|line| !line.is_empty())?;
        match line.char_indices().nth(STDERR_LINE_LIMIT_CHARS) {
            Some((cut, _)) => Some(format!("{}...", &line[..cut])),
            None => Some(line.to_string()),
        }
    }
}

impl WakeStatus {
    /// Its word in the lifecycle log and in `wake_result`'s `status`.
    pub fn word(&self) -> &'static str {
        match self {
            WakeStatus::Success => "success",
            WakeStatus::Failed { .. } | WakeStatus::SpawnFailed(_) => "failed",
            WakeStatus::TimedOut => "timeout",
            WakeStatus::Cancelled => "cancelled",
            WakeStatus::LeftRunning => "left_running",
        }
    }

    /// Why the attempt failed, in a few words (`None`: it did not fail).
    pub fn error(&self) -> Option<String> {
        match self {
            WakeStatus::Success | WakeStatus::Cancelled | WakeStatus::LeftRunning => None,
            WakeStatus::Failed { exit_code: Some(code) } => Some(format!("exit code {code}")),
            WakeStatus::Failed { exit_code: None } => Some("killed by a signal".to_string()),
            WakeStatus::TimedOut => Some("timed out".to_string()),
            WakeStatus::SpawnFailed(e) => Some(format!("could not start: {e}")),
        }
    }
}

impl fmt::Display for WakeStatus {
    /// Short words for a log line: `exit code 127`, `timed out`...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WakeStatus::Success => f.write_str("succeeded"),
            WakeStatus::Failed { exit_code: Some(code) } => write!(f, "exit code {code}"),
            WakeStatus::Failed { exit_code: None } => f.write_str("ended without an exit code"),
            WakeStatus::TimedOut => f.write_str("timed out"),
            WakeStatus::SpawnFailed(text) => write!(f, "could not start: {text}"),
            WakeStatus::Cancelled => f.write_str("cancelled"),
            WakeStatus::LeftRunning => f.write_str("left running"),
        }
    }
}

/// Declares [`LifecycleEvent`] with each event's spelling in the log, once.
macro_rules! lifecycle_events {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// Every event the lifecycle log records. The spelling in the file is
        /// given here and nowhere else (readers such as `status` can match on
        /// [`LifecycleEvent::name`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum LifecycleEvent {
            $($(#[$doc])* $variant,)*
        }

        impl LifecycleEvent {
            /// Every event, in declaration order.
            pub const ALL: &'static [LifecycleEvent] = &[$(LifecycleEvent::$variant,)*];

            /// The `event` value written to the log.
            pub fn name(self) -> &'static str {
                match self {
                    $(LifecycleEvent::$variant => $name,)*
                }
            }
        }
    };
}

lifecycle_events! {
    /// The process started (version, redacted hub URL).
    Started = "started",
    /// The process is about to exit.
    Stopped = "stopped",
    /// queue.json did not parse and was moved aside.
    QueueCorrupt = "queue_corrupt",
    /// queue.json could not be written.
    PersistFailed = "persist_failed",
    Connecting = "connecting",
    Connected = "connected",
    Identified = "identified",
    Disconnected = "disconnected",
    AuthFailed = "auth_failed",
    Shutdown = "shutdown",
    /// The hub's `restart_sidecar` started `update_command` (detached).
    UpdateStarted = "update_started",
    /// A task was found in queue.json at start.
    TaskRecoveredFromDisk = "task_recovered_from_disk",
    RecoveringSent = "recovering_sent",
    TaskAccepted = "task_accepted",
    /// A `task_assign` we did not take (busy, invalid id or generation).
    TaskRefused = "task_refused",
    /// The hub handed back the task we hold at a higher generation.
    TaskReadopted = "task_readopted",
    TaskContinued = "task_continued",
    TaskDropped = "task_dropped",
    /// At start: a wake command recorded in queue.json as still running
    /// (the sidecar died while it ran) was looked for, and ended if found.
    WakeLeftover = "wake_leftover",
    WakeAttempt = "wake_attempt",
    WakeFinished = "wake_finished",
    /// The agent wrote `<id>.started`.
    Confirmed = "confirmed",
    /// The agent's result file says success.
    ResultReceived = "result_received",
    /// The task failed (agent result, wake, confirmation or task timeout).
    TaskFailedHere = "task_failed_here",
    /// The hub took the task back; its outcome is logged, not reported.
    ResultWithheld = "result_withheld",
    /// The result file of a task we will not hold again, logged and removed.
    ResultDiscarded = "result_discarded",
    ReportSent = "report_sent",
    ReportSettled = "report_settled",
    /// The hub's schema refused a report; it is given up, kept whole here.
    ReportRefused = "report_refused",
}

impl std::fmt::Display for LifecycleEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
