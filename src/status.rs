//! `agentcom-sidecar status`: what this box is doing, from `queue.json` and
//! the lifecycle log alone (no hub, no running sidecar needed). It only
//! reads: a corrupt `queue.json` is reported, never moved or rewritten.
//!
//! [`collect`] gathers the facts once; [`report`] prints them for people and
//! [`report_json`] as one JSON object for scripts and monitoring agents.

use std::io::{self, Write};

use serde_json::{json, Value};

use crate::config::Config;
use crate::lifecycle_log::{self, LifecycleEvent};
use crate::protocol::OutKind;
use crate::queue_store::{self, QueueFile, Report, TaskRecord};

/// Events that describe the connection, for "last connection event".
const CONNECTION_EVENTS: &[LifecycleEvent] = &[
    LifecycleEvent::Connecting,
    LifecycleEvent::Connected,
    LifecycleEvent::Identified,
    LifecycleEvent::Disconnected,
    LifecycleEvent::AuthFailed,
    LifecycleEvent::Started,
    LifecycleEvent::Stopped,
    LifecycleEvent::Shutdown,
];
/// How many recent lifecycle records to read and how many task events to show.
const RECENT_RECORDS: usize = 200;
const TASK_EVENTS_SHOWN: usize = 5;

/// Whether the box is idle with nothing owed to the hub. The text and the
/// JSON report say it with the same word ([`Verdict::word`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Idle,
    /// A task is held, or a report is owed to the hub.
    Busy,
    /// `queue.json` does not parse (the sidecar would move it aside and
    /// start empty): not busy, broken.
    Corrupt,
    /// `queue.json` cannot be read (permissions, I/O error).
    Unreadable,
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Idle => "idle",
            Verdict::Busy => "busy",
            Verdict::Corrupt => "corrupt",
            Verdict::Unreadable => "unreadable",
        }
    }

    /// `status`'s exit code: 0 idle, 1 busy, 2 when queue.json must be
    /// looked at (corrupt or unreadable).
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Idle => 0,
            Verdict::Busy => 1,
            Verdict::Corrupt | Verdict::Unreadable => 2,
        }
    }
}

/// What `queue.json` holds, as far as status can tell.
#[derive(Debug)]
pub enum QueueState {
    Missing,
    Unreadable(String),
    Corrupt(String),
    Ok(Box<QueueFile>),
}

/// What the lifecycle log says.
#[derive(Debug)]
pub enum LogState {
    Missing,
    Unreadable(String),
    /// The newest connection event, and the newest task events first.
    Ok {
        last_connection: Option<Value>,
        task_events: Vec<Value>,
    },
}

/// Every fact `status` reports.
#[derive(Debug)]
pub struct Status {
    pub now_ms: u64,
    pub queue_file: String,
    pub queue: QueueState,
    pub log_file: String,
    pub log: LogState,
}

impl Status {
    /// Busy when a task is held or a report is owed; corrupt or unreadable
    /// when `queue.json` cannot be parsed or read (so scripts notice).
    pub fn verdict(&self) -> Verdict {
        match &self.queue {
            QueueState::Missing => Verdict::Idle,
            QueueState::Ok(queue) if queue.active.is_none() && queue.recovering.is_none() => Verdict::Idle,
            QueueState::Ok(_) => Verdict::Busy,
            QueueState::Corrupt(_) => Verdict::Corrupt,
            QueueState::Unreadable(_) => Verdict::Unreadable,
        }
    }
}

/// Reads `queue.json` and the recent lifecycle log. Never writes anything.
pub fn collect(config: &Config, now_ms: u64) -> Status {
    let queue = match std::fs::read(&config.queue_file) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => QueueState::Missing,
        Err(e) => QueueState::Unreadable(e.to_string()),
        Ok(bytes) => match queue_store::parse(&bytes) {
            Err(e) => QueueState::Corrupt(e.to_string()),
            Ok(queue) => QueueState::Ok(Box::new(queue)),
        },
    };
    let log = match lifecycle_log::read_recent(&config.log_file, RECENT_RECORDS) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => LogState::Missing,
        Err(e) => LogState::Unreadable(e.to_string()),
        Ok(records) => {
            let is_connection = |r: &Value| {
                r.get("event")
                    .and_then(Value::as_str)
                    .is_some_and(|e| CONNECTION_EVENTS.iter().any(|c| c.name() == e))
            };
            let last_connection = records.iter().rev().find(|r| is_connection(r)).cloned();
            let task_events =
                records.iter().rev().filter(|r| !is_connection(r)).take(TASK_EVENTS_SHOWN).cloned().collect();
            LogState::Ok { last_connection, task_events }
        }
    };
    Status {
        now_ms,
        queue_file: config.queue_file.display().to_string(),
        queue,
        log_file: config.log_file.display().to_string(),
        log,
    }
}

/// Writes the report for people to `out`. `Err` only for failures writing
/// `out`; every problem with the files is part of the report (and makes it
/// `Busy`, so scripts notice).
pub fn report(config: &Config, now_ms: u64, out: &mut dyn Write) -> io::Result<Verdict> {
    let status = collect(config, now_ms);
    write_text(&status, out)?;
    Ok(status.verdict())
}

/// Writes the same facts as [`report`] as one JSON object on one line.
pub fn report_json(config: &Config, now_ms: u64, out: &mut dyn Write) -> io::Result<Verdict> {
    let status = collect(config, now_ms);
    writeln!(out, "{}", to_json(&status))?;
    Ok(status.verdict())
}

fn write_text(status: &Status, out: &mut dyn Write) -> io::Result<()> {
    let now_ms = status.now_ms;
    writeln!(out, "queue file: {}", status.queue_file)?;
    match &status.queue {
        QueueState::Missing => writeln!(out, "  no queue file: idle")?,
        QueueState::Unreadable(e) => writeln!(out, "  cannot read it: {e}")?,
        QueueState::Corrupt(e) => {
            writeln!(out, "  CORRUPT: {e}")?;
            writeln!(out, "  (the sidecar will move it aside to queue.json.corrupt-<ms> and start empty)")?;
        }
        QueueState::Ok(queue) => {
            let (active, recovering) = (&queue.active, &queue.recovering);
            for (label, task) in [("active", active), ("recovering", recovering)] {
                match task {
                    None => writeln!(out, "  {label}: none")?,
                    Some(task) => describe_task(out, label, task, now_ms)?,
                }
            }
            if recovering.is_some() {
                writeln!(out, "  pending report: task_recovering (sent once the hub is reachable)")?;
            }
            if active.is_none() && recovering.is_none() {
                writeln!(out, "  nothing pending")?;
            }
        }
    }

    writeln!(out, "lifecycle log: {}", status.log_file)?;
    match &status.log {
        LogState::Missing => writeln!(out, "  no log yet")?,
        LogState::Unreadable(e) => writeln!(out, "  cannot read it: {e}")?,
        LogState::Ok { last_connection, task_events } => {
            match last_connection {
                Some(record) => writeln!(out, "  last connection event: {}", summarize(record, now_ms))?,
                None => writeln!(out, "  last connection event: none")?,
            }
            if task_events.is_empty() {
                writeln!(out, "  last task events: none")?;
            } else {
                writeln!(out, "  last task events (newest first):")?;
                for record in task_events {
                    writeln!(out, "    {}", summarize(record, now_ms))?;
                }
            }
        }
    }
    writeln!(out, "verdict: {}", status.verdict().word())
}

/// The JSON form: documented in the README ("status --json").
pub fn to_json(status: &Status) -> Value {
    let now_ms = status.now_ms;
    let (queue_state, queue_error, active, recovering) = match &status.queue {
        QueueState::Missing => ("missing", None, None, None),
        QueueState::Unreadable(e) => ("unreadable", Some(e.as_str()), None, None),
        QueueState::Corrupt(e) => ("corrupt", Some(e.as_str()), None, None),
        QueueState::Ok(queue) => ("ok", None, queue.active.as_ref(), queue.recovering.as_ref()),
    };
    let mut pending_reports = Vec::new();
    for task in [active, recovering].into_iter().flatten() {
        if let Some(report) = &task.report {
            pending_reports.push(pending_report_json(task, report));
        }
    }
    if let Some(task) = recovering {
        pending_reports.push(json!({
            "type": OutKind::TaskRecovering.wire_name(),
            "task_id": task.task_id,
            "generation": task.generation,
        }));
    }
    let with_age = |record: &Value| {
        let mut record = record.clone();
        if let Some(ts) = record.get("ts").and_then(Value::as_u64) {
            record["age_ms"] = json!(now_ms.saturating_sub(ts));
        }
        record
    };
    let (log_state, log_error, last_connection, task_events) = match &status.log {
        LogState::Missing => ("missing", None, Value::Null, Vec::new()),
        LogState::Unreadable(e) => ("unreadable", Some(e.as_str()), Value::Null, Vec::new()),
        LogState::Ok { last_connection, task_events } => (
            "ok",
            None,
            last_connection.as_ref().map_or(Value::Null, with_age),
            task_events.iter().map(with_age).collect(),
        ),
    };
    let verdict = status.verdict();
    json!({
        "verdict": verdict.word(),
        "idle": verdict == Verdict::Idle,
        "now_ms": now_ms,
        "queue_file": status.queue_file,
        "queue_state": queue_state,
        "queue_error": queue_error,
        "active": active.map(|task| task_json(task, now_ms)),
        "recovering": recovering.map(|task| task_json(task, now_ms)),
        "pending_reports": pending_reports,
        "log_file": status.log_file,
        "log_state": log_state,
        "log_error": log_error,
        "last_connection_event": last_connection,
        "last_task_events": task_events,
    })
}

fn task_json(task: &TaskRecord, now_ms: u64) -> Value {
    json!({
        "task_id": task.task_id,
        "generation": task.generation,
        "status": task.status,
        "assigned_at": (task.assigned_at > 0).then_some(task.assigned_at),
        "age_ms": (task.assigned_at > 0).then(|| now_ms.saturating_sub(task.assigned_at)),
        "wake_attempts": task.wake_attempts,
    })
}

fn pending_report_json(task: &TaskRecord, report: &Report) -> Value {
    match report {
        Report::Complete { .. } => {
            json!({"type": OutKind::TaskComplete.wire_name(), "task_id": task.task_id, "generation": task.generation})
        }
        Report::Failed { reason } => json!({
            "type": OutKind::TaskFailed.wire_name(), "task_id": task.task_id, "generation": task.generation, "reason": reason,
        }),
    }
}

fn describe_task(out: &mut dyn Write, label: &str, task: &TaskRecord, now_ms: u64) -> io::Result<()> {
    let age = if task.assigned_at > 0 { ago(task.assigned_at, now_ms) } else { "unknown age".into() };
    writeln!(
        out,
        "  {label}: {} generation {} status {} ({age}, {} wake attempt(s))",
        task.task_id, task.generation, task.status, task.wake_attempts
    )?;
    match &task.report {
        None => {}
        Some(Report::Complete { .. }) => {
            writeln!(out, "  pending report: task_complete (generation {}) not yet settled", task.generation)?
        }
        Some(Report::Failed { reason }) => writeln!(
            out,
            "  pending report: task_failed (generation {}, reason {reason:?}) not yet settled",
            task.generation
        )?,
    }
    Ok(())
}

/// One lifecycle record on one line: age, event, then the other fields.
fn summarize(record: &Value, now_ms: u64) -> String {
    let when = record.get("ts").and_then(Value::as_u64).map_or_else(|| "?".into(), |ts| ago(ts, now_ms));
    let event = record.get("event").and_then(Value::as_str).unwrap_or("?");
    let mut details: Vec<String> = Vec::new();
    if let Some(fields) = record.as_object() {
        for (key, value) in fields {
            if matches!(key.as_str(), "ts" | "event" | "agent_id" | "stdout" | "stderr" | "report") {
                continue;
            }
            let mut text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if text.len() > 120 {
                let mut end = 120;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
                text.push('…');
            }
            details.push(format!("{key}={text}"));
        }
    }
    format!("{when}: {event} {}", details.join(" ")).trim_end().to_owned()
}

fn ago(then_ms: u64, now_ms: u64) -> String {
    let seconds = now_ms.saturating_sub(then_ms) / 1000;
    match seconds {
        0..=119 => format!("{seconds} s ago"),
        120..=7199 => format!("{} min ago", seconds / 60),
        _ => format!("{} h ago", seconds / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;

    /// A lifecycle log that says: identified, then the report of task-1 sent.
    fn write_connected_log(config: &Config) {
        let records = [
            json!({"ts":1_700_000_090_000u64,"event":"identified","agent_id":"a"}),
            json!({"ts":1_700_000_095_000u64,"event":"report_sent","agent_id":"a","task_id":"task-1"}),
        ];
        fs::write(&config.log_file, records.iter().map(|v| format!("{v}\n")).collect::<String>()).unwrap();
    }

    fn config(dir: &std::path::Path) -> Config {
        Config::for_tests(dir, "ws://127.0.0.1:9/ws", "tok")
    }

    fn run(config: &Config) -> (Verdict, String) {
        let mut out = Vec::new();
        let verdict = report(config, 1_700_000_100_000, &mut out).unwrap();
        (verdict, String::from_utf8(out).unwrap())
    }

    #[test]
    fn an_empty_tree_is_idle() {
        let dir = tempfile::tempdir().unwrap();
        let (verdict, text) = run(&config(dir.path()));
        assert_eq!(verdict, Verdict::Idle, "{text}");
        assert!(text.contains("no queue file"));
    }

    #[test]
    fn an_active_task_with_a_pending_report_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        fs::write(
            &config.queue_file,
            json!({"active":{"task_id":"task-1","description":"d","metadata":{},"status":"working",
                             "assigned_at":1_700_000_000_000u64,"generation":3,"wake_attempts":1,
                             "report":{"type":"complete","result":{"status":"success"}}},
                   "recovering":null})
            .to_string(),
        )
        .unwrap();
        write_connected_log(&config);
        let (verdict, text) = run(&config);
        assert_eq!(verdict, Verdict::Busy);
        assert!(text.ends_with("verdict: busy\n"), "the word --json uses: {text}");
        assert!(text.contains("active: task-1 generation 3 status working (100 s ago"), "{text}");
        assert!(text.contains("pending report: task_complete (generation 3)"), "{text}");
        assert!(text.contains("last connection event: 10 s ago: identified"), "{text}");
        assert!(text.contains("5 s ago: report_sent task_id=task-1"), "{text}");
    }

    #[test]
    fn a_corrupt_queue_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        fs::write(&config.queue_file, "{\"active\":").unwrap();
        let (verdict, text) = run(&config);
        assert_eq!(verdict, Verdict::Corrupt);
        assert!(text.contains("CORRUPT"), "{text}");
        assert!(text.ends_with("verdict: corrupt\n"), "{text}");
        assert_eq!(fs::read_to_string(&config.queue_file).unwrap(), "{\"active\":");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "nothing else written");
    }

    fn run_json(config: &Config) -> (Verdict, Value) {
        let mut out = Vec::new();
        let verdict = report_json(config, 1_700_000_100_000, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1, "one object on one line: {text}");
        (verdict, serde_json::from_str(&text).unwrap())
    }

    #[test]
    fn json_has_the_same_facts_as_the_text() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let (verdict, status) = run_json(&config);
        assert_eq!(verdict, Verdict::Idle);
        assert_eq!(status["verdict"], "idle");
        assert_eq!(status["idle"], true);
        assert_eq!(status["queue_state"], "missing");
        assert_eq!(status["last_connection_event"], Value::Null);
        assert_eq!(status["last_task_events"], json!([]));
        assert_eq!(status["active"], Value::Null);
        assert_eq!(status["pending_reports"], json!([]));

        let task = |id: &str, report: Value| {
            json!({"task_id":id,"description":"d","metadata":{},"status":"working",
                   "assigned_at":1_700_000_000_000u64,"generation":3,"wake_attempts":2,"report":report})
        };
        fs::write(
            &config.queue_file,
            json!({"active": task("task-1", json!({"type":"failed","reason":"wake_failed"})),
                   "recovering": task("task-0", Value::Null)})
            .to_string(),
        )
        .unwrap();
        write_connected_log(&config);
        let (verdict, status) = run_json(&config);
        assert_eq!(verdict, Verdict::Busy);
        assert_eq!(status["verdict"], "busy");
        assert_eq!(status["idle"], false);
        assert_eq!(
            status["active"],
            json!({"task_id":"task-1","generation":3,"status":"working",
                   "assigned_at":1_700_000_000_000u64,"age_ms":100_000,"wake_attempts":2})
        );
        assert_eq!(status["recovering"]["task_id"], "task-0");
        assert_eq!(
            status["pending_reports"],
            json!([{"type":"task_failed","task_id":"task-1","generation":3,"reason":"wake_failed"},
                   {"type":"task_recovering","task_id":"task-0","generation":3}])
        );
        assert_eq!(status["last_connection_event"]["event"], "identified");
        assert_eq!(status["last_connection_event"]["age_ms"], 10_000);
        assert_eq!(status["last_task_events"][0]["event"], "report_sent");
        assert_eq!(status["last_task_events"].as_array().unwrap().len(), 1);

        fs::write(&config.queue_file, "{\"active\":").unwrap();
        let (verdict, status) = run_json(&config);
        assert_eq!(verdict, Verdict::Corrupt);
        assert_eq!(status["verdict"], "corrupt");
        assert_eq!(status["queue_state"], "corrupt");
        assert!(status["queue_error"].as_str().is_some_and(|e| !e.is_empty()), "{status}");
    }
}
