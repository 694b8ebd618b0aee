//! What the soak records, and the checks run on it after each lifecycle.
//!
//! Times are Unix milliseconds (f64) from the one machine clock: the driver
//! stamps each devhub event as a forwarding thread receives it, the agent
//! stamps its own steps, the sidecar stamps its lifecycle log.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use agentcom_sidecar::devhub::{Outcome, OutcomeKind};
use serde_json::Value;

/// One line of the agent log.
#[derive(Debug, Clone)]
pub struct AgentEvent {
    pub t: f64,
    pub kind: String,
    pub task: String,
    pub nonce: String,
    pub pid: u32,
    pub raw: Value,
}

/// One line of the trace printed with a violation.
#[derive(Debug, Clone)]
pub struct TraceEntry {
    pub t: f64,
    pub text: String,
}

/// A moment at which the hub settled or explicitly took back a task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SettleKind {
    /// `task_ack` complete / retried / dead_letter.
    Ack,
    /// `task_reassign`: the hub took the task back explicitly.
    Reassign,
}

/// Reads a growing JSON-lines file from where the last call stopped (whole
/// lines only).
pub struct Tail {
    path: PathBuf,
    offset: u64,
}

impl Tail {
    pub fn new(path: PathBuf) -> Tail {
        Tail { path, offset: 0 }
    }

    pub fn read_new(&mut self) -> Vec<Value> {
        let Ok(mut file) = fs::File::open(&self.path) else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut text = String::new();
        if file.read_to_string(&mut text).is_err() {
            return Vec::new();
        }
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        self.offset += complete as u64;
        text[..complete].lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }
}

pub fn agent_event(v: Value) -> Option<AgentEvent> {
    Some(AgentEvent {
        t: v["t"].as_f64()?,
        kind: v["kind"].as_str()?.to_string(),
        task: v["task"].as_str().unwrap_or("").to_string(),
        nonce: v["nonce"].as_str().unwrap_or("").to_string(),
        pid: v["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        raw: v,
    })
}

/// Everything known about one task once its lifecycle is over.
pub struct TaskRecord<'a> {
    pub task_id: &'a str,
    /// In the order the hubs recorded them (hub incarnation, then generation).
    pub outcomes: &'a [(u32, Outcome)],
    /// Acks and reassigns for this task, in time order.
    pub settles: &'a [(f64, SettleKind)],
    /// Generations the hub pushed (`task_assign`) or continued (`task_continue`).
    pub opened: &'a [u64],
    /// `(generation the task went back to the queue at)` for each take-back.
    pub taken_back: &'a [u64],
    pub agent: &'a [AgentEvent],
    /// The sidecar's `wake_attempt` records for this task.
    pub wake_attempts: &'a [f64],
    /// The sidecar's `report_settled` records for this task.
    pub settled_seen: &'a [f64],
}

/// How long the sidecar may take to notice a `.started` before a wake it
/// starts counts as waking an agent that had already started.
pub const NOTICE_MS: f64 = 200.0;

/// How late the driver may stamp a hub event it forwards (a loaded machine).
const REASSIGN_SLACK_MS: f64 = 500.0;

/// The agent's wake nonce, the result variant, and (for a completion) the
/// task the result names.
fn provenance(outcome: &Outcome) -> Option<(String, String, Option<String>)> {
    if let Some(result) = &outcome.result {
        let soak = &result["output"]["soak"];
        let nonce = soak["nonce"].as_str()?.to_string();
        let variant = soak["variant"].as_str().unwrap_or("").to_string();
        return Some((nonce, variant, soak["task"].as_str().map(str::to_string)));
    }
    let reason = outcome.reason.as_deref()?;
    let word = |key: &str| -> Option<String> {
        let rest = &reason[reason.find(key)? + key.len()..];
        Some(rest.split_whitespace().next()?.to_string())
    };
    Some((word("nonce=")?, word("variant=").unwrap_or_default(), None))
}

/// What the checks of one task found, one line each.
#[derive(Default)]
pub struct Findings {
    pub violations: Vec<String>,
    /// A failure reported again under a newer generation after the hub had
    /// settled it, where the hub's answer never reached the sidecar (it
    /// recorded no settlement): the one case no frame of the protocol
    /// resolves (docs/protocol.md 5.3). Counted and shown, not a violation.
    pub lost_answers: Vec<String>,
}

/// The checks of one task.
pub fn check_task(rec: &TaskRecord<'_>) -> Findings {
    let mut violations = Vec::new();
    let mut lost_answers = Vec::new();
    let id = rec.task_id;

    // Exactly one final outcome: completed or dead-lettered, once.
    let finals: Vec<&(u32, Outcome)> =
        rec.outcomes.iter().filter(|(_, o)| o.kind != OutcomeKind::Retried).collect();
    match finals.len() {
        0 => violations
            .push(format!("{id}: lost: no final outcome at the hub (outcomes: {:?})", kinds(rec.outcomes))),
        1 => {}
        n => violations.push(format!("{id}: duplicated: {n} final outcomes {:?}", kinds(rec.outcomes))),
    }
    // At most one outcome per generation, across hub restarts.
    let mut per_gen: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, outcome) in rec.outcomes {
        *per_gen.entry(outcome.generation).or_default() += 1;
    }
    for (generation, n) in &per_gen {
        if *n > 1 {
            violations.push(format!("{id}: {n} outcomes for generation {generation}"));
        }
    }
    // Every generation the hub handed out ends settled or explicitly taken
    // back, never both, never twice.
    for generation in rec.opened {
        let settled = per_gen.get(generation).copied().unwrap_or(0);
        let back = rec.taken_back.iter().filter(|g| **g == generation + 1).count();
        if settled + back > 1 {
            violations.push(format!(
                "{id}: generation {generation} ended {settled} time(s) settled and {back} time(s) taken back"
            ));
        }
    }

    // Each reported outcome comes from agent work done after the previous
    // settlement (never a stale file the sidecar should have removed).
    let acks: Vec<f64> = rec.settles.iter().filter(|(_, k)| *k == SettleKind::Ack).map(|(t, _)| *t).collect();
    // A hub stopped between recording an outcome and writing its ack leaves
    // fewer acks than outcomes: those outcomes are not paired (not checked).
    for ((_, outcome), ack_t) in rec.outcomes.iter().zip(&acks) {
        let Some((nonce, variant, result_task)) = provenance(outcome) else {
            continue;
        };
        if let Some(other) = result_task.filter(|t| t != id) {
            violations.push(format!(
                "{id}: generation {} completed with the result of task {other}",
                outcome.generation
            ));
        }
        let previous_settle =
            rec.settles.iter().map(|(t, _)| *t).filter(|t| t < ack_t).fold(f64::NEG_INFINITY, f64::max);
        let written = rec
            .agent
            .iter()
            .filter(|e| e.nonce == nonce && (e.kind == "result_written" || e.kind == "result_half"))
            .filter(|e| e.raw["variant"].as_str().unwrap_or("") == variant)
            .map(|e| e.t)
            .fold(f64::INFINITY, f64::min);
        if written.is_infinite() {
            violations.push(format!(
                "{id}: generation {} reported a result no agent wrote (nonce {nonce})",
                outcome.generation
            ));
        } else if written < previous_settle {
            let text = format!(
                "{id}: generation {} reported a stale result (written by wake {nonce} {:.0} ms before the previous settlement)",
                outcome.generation,
                previous_settle - written
            );
            // Did the sidecar hear that settlement? (Clocks: both stamps are
            // the system clock, of the sidecar and of the driver.)
            let heard = rec.settled_seen.iter().any(|t| *t >= previous_settle - 1.0 && *t <= *ack_t);
            if outcome.reason.is_some() && !heard {
                lost_answers.push(format!("{text}; the hub's answer to it never reached the sidecar"));
            } else {
                violations.push(text);
            }
        }
    }

    // No wake for work the agent had already started, unless the hub settled
    // that work in between. Times: the sidecar's decision (its lifecycle log)
    // against the agent's `.started` (both stamped from the system clock by
    // the process concerned); "in between" by generation (the hub's outcomes)
    // or, for explicit take-backs, by the driver's stamp with REASSIGN_SLACK_MS.
    let wakes: Vec<&AgentEvent> = rec.agent.iter().filter(|e| e.kind == "wake_start").collect();
    let generation_of = |e: &AgentEvent| e.raw["gen"].as_str().and_then(|g| g.parse::<u64>().ok());
    for (i, attempt) in rec.wake_attempts.iter().enumerate() {
        let next = rec.wake_attempts.get(i + 1).copied().unwrap_or(f64::INFINITY);
        // The wake command this decision started (if it got as far as running).
        let Some(wake) = wakes.iter().find(|w| w.t >= attempt - 1.0 && w.t < next) else {
            continue;
        };
        let Some(generation) = generation_of(wake) else {
            continue;
        };
        for started in rec.agent.iter().filter(|e| e.kind == "started_written" && e.t + NOTICE_MS < *attempt)
        {
            let Some(started_gen) =
                wakes.iter().find(|w| w.nonce == started.nonce).and_then(|w| generation_of(w))
            else {
                continue;
            };
            // The agent began that work with its first file: `.started`, or
            // its result when it wrote that first (a settlement in between
            // ends the work even if `.started` comes after it).
            let began = rec
                .agent
                .iter()
                .filter(|e| e.nonce == started.nonce)
                .filter(|e| matches!(e.kind.as_str(), "started_written" | "result_written" | "result_half"))
                .map(|e| e.t)
                .fold(started.t, f64::min);
            let settled =
                rec.outcomes.iter().any(|(_, o)| started_gen <= o.generation && o.generation < generation)
                    || rec.settles.iter().any(|(t, kind)| {
                        *kind == SettleKind::Reassign && *t > began && *t < attempt + REASSIGN_SLACK_MS
                    });
            if !settled {
                violations.push(format!(
                    "{id}: woke the agent (generation {generation}) {:.0} ms after it had written .started \
                     (wake {}, generation {started_gen}) with no settlement between",
                    attempt - started.t,
                    started.nonce
                ));
                break;
            }
        }
    }

    // Never two wake commands at once.
    for event in rec.agent.iter().filter(|e| e.kind == "wake_overlap") {
        violations.push(format!("{id}: wake {} started while another wake command was running", event.nonce));
    }
    Findings { violations, lost_answers }
}

fn kinds(outcomes: &[(u32, Outcome)]) -> Vec<String> {
    outcomes.iter().map(|(hub, o)| format!("hub#{hub} gen {} {:?}", o.generation, o.kind)).collect()
}

/// Milliseconds since the Unix epoch of a file's last change.
pub fn mtime_ms(path: &Path) -> Option<f64> {
    let modified = fs::symlink_metadata(path).ok()?.modified().ok()?;
    Some(modified.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64() * 1000.0)
}

/// True if `pid` is a live (not zombie) process whose command line contains
/// `marker` (so a reused pid is not mistaken for ours).
pub fn alive_with(pid: u32, marker: &str) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state is the first field after the parenthesised command name.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    if state == Some("Z") || state == Some("X") {
        return false;
    }
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
}
