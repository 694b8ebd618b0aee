//! `agentcom-sidecar status`: what this box is doing, from `queue.json` and
//! the lifecycle log alone (no hub, no running sidecar needed). It only
//! reads: a corrupt `queue.json` is reported, never moved or rewritten.

use std::io::{self, Write};

use serde_json::Value;

use crate::config::Config;
use crate::lifecycle_log;
use crate::queue_store::{self, Report, TaskRecord};

/// Events that describe the connection, for "last connection event".
const CONNECTION_EVENTS: &[&str] = &[
    "connecting",
    "connected",
    "identified",
    "disconnected",
    "auth_failed",
    "started",
    "stopped",
    "shutdown",
];
/// How many recent lifecycle records to read and how many task events to show.
const RECENT_RECORDS: usize = 200;
const TASK_EVENTS_SHOWN: usize = 5;

/// Whether the box is idle with nothing owed to the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Idle,
    Busy,
}

/// Writes the report to `out`. `Err` only for failures writing `out`; every
/// problem with the files is part of the report (and makes it `Busy`, so
/// scripts notice).
pub fn report(config: &Config, now_ms: u64, out: &mut dyn Write) -> io::Result<Verdict> {
    let mut verdict = Verdict::Idle;
    writeln!(out, "queue file: {}", config.queue_file.display())?;
    match std::fs::read(&config.queue_file) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => writeln!(out, "  no queue file: idle")?,
        Err(e) => {
            writeln!(out, "  cannot read it: {e}")?;
            verdict = Verdict::Busy;
        }
        Ok(bytes) => match queue_store::parse(&bytes) {
            Err(e) => {
                writeln!(out, "  CORRUPT: {e}")?;
                writeln!(
                    out,
                    "  (the sidecar will move it aside to queue.json.corrupt-<ms> and start empty)"
                )?;
                verdict = Verdict::Busy;
            }
            Ok(queue) => {
                for (label, task) in [("active", &queue.active), ("recovering", &queue.recovering)] {
                    match task {
                        None => writeln!(out, "  {label}: none")?,
                        Some(task) => {
                            verdict = Verdict::Busy;
                            describe_task(out, label, task, now_ms)?;
                        }
                    }
                }
                if queue.recovering.is_some() {
                    writeln!(out, "  pending report: task_recovering (sent once the hub is reachable)")?;
                }
                if queue.active.is_none() && queue.recovering.is_none() {
                    writeln!(out, "  nothing pending")?;
                }
            }
        },
    }

    writeln!(out, "lifecycle log: {}", config.log_file.display())?;
    match lifecycle_log::read_recent(&config.log_file, RECENT_RECORDS) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => writeln!(out, "  no log yet")?,
        Err(e) => writeln!(out, "  cannot read it: {e}")?,
        Ok(records) => {
            let is_connection = |r: &&Value| {
                r.get("event").and_then(Value::as_str).is_some_and(|e| CONNECTION_EVENTS.contains(&e))
            };
            match records.iter().rev().find(is_connection) {
                Some(record) => writeln!(out, "  last connection event: {}", summarize(record, now_ms))?,
                None => writeln!(out, "  last connection event: none")?,
            }
            let task_events: Vec<&Value> =
                records.iter().rev().filter(|r| !is_connection(r)).take(TASK_EVENTS_SHOWN).collect();
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
    writeln!(out, "verdict: {}", if verdict == Verdict::Idle { "idle" } else { "busy or pending" })?;
    Ok(verdict)
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
        fs::write(
            &config.log_file,
            [
                json!({"ts":1_700_000_090_000u64,"event":"identified","agent_id":"a"}),
                json!({"ts":1_700_000_095_000u64,"event":"report_sent","agent_id":"a","task_id":"task-1"}),
            ]
            .iter()
            .map(|v| format!("{v}\n"))
            .collect::<String>(),
        )
        .unwrap();
        let (verdict, text) = run(&config);
        assert_eq!(verdict, Verdict::Busy);
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
        assert_eq!(verdict, Verdict::Busy);
        assert!(text.contains("CORRUPT"), "{text}");
        assert_eq!(fs::read_to_string(&config.queue_file).unwrap(), "{\"active\":");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "nothing else written");
    }
}
