//! The rate-budget run: one sidecar against the dev hub's 4718a58 profile
//! with the hub's real rate limits (`normal` 60 tokens, one a second;
//! `light` 120, two a second), `hub_features` `wake_result` and
//! `state_report`, and the instant agent; `BENCH_RATE_TASKS` (100) tasks
//! queued at once. It prints the sidecar's normal-tier frames per task, the
//! hub's denials (`rate_limited`) and warnings, and tasks per minute: over
//! the whole run and sustained (from a minute in, once the bucket's first
//! minute of tokens is spent). With two frames per task the hub's budget
//! allows about 30 tasks a minute.
//!
//! Knobs: `BENCH_RATE_TASKS` (100), `BENCH_RATE_MAX_SECS` (600: the run stops
//! there and says how many tasks completed), `BENCH_LOG_LEVEL`,
//! `BENCH_SIDECAR`, `BENCH_KEEP`, `TMPDIR` as for the table.

use std::collections::HashMap;
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentcom_sidecar::devhub::{DevHub, DevHubEvent, DevHubOptions};
use serde_json::json;

use crate::env_u64;
use crate::floors::shell_quote;

pub fn run() {
    let tasks = env_u64("BENCH_RATE_TASKS", 100).max(2) as usize;
    let max = Duration::from_secs(env_u64("BENCH_RATE_MAX_SECS", 600));
    let built = env!("CARGO_BIN_EXE_agentcom-sidecar").to_string();
    let binary = std::env::var("BENCH_SIDECAR").unwrap_or(built);
    let helper = std::env::current_exe().expect("own path").to_string_lossy().into_owned();
    let mut dir = tempfile::tempdir().expect("temporary directory");
    if std::env::var_os("BENCH_KEEP").is_some() {
        dir.disable_cleanup(true);
    }
    // The default options are 4718a58 with the real hub's limits.
    let hub = DevHub::start(DevHubOptions::new("bench", "bench-token")).expect("hub");
    let events = hub.events();
    let config = json!({
        "agent_id": "bench", "token": "bench-token", "hub_url": hub.url(),
        "wake_command": format!("exec {} agent", shell_quote(&helper)),
        "hub_features": ["wake_result", "state_report"],
        "results_dir": dir.path().join("results"), "log_file": dir.path().join("sidecar.log"),
        "queue_file": dir.path().join("queue.json"),
        "log_level": std::env::var("BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
    });
    fs::write(dir.path().join("config.json"), config.to_string()).expect("config");
    let log = fs::File::create(dir.path().join("stdout.log")).expect("stdout log");
    let mut child = Command::new(&binary)
        .arg("--config")
        .arg(dir.path().join("config.json"))
        .stdout(Stdio::from(log))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("sidecar starts");

    let started = Instant::now();
    let deadline = crossbeam_channel::at(started + max);
    let mut identified = false;
    let mut pushed = false;
    let mut frames: HashMap<String, usize> = HashMap::new();
    let (mut denials, mut warnings) = (0usize, 0usize);
    let mut acked: Vec<Instant> = Vec::new();
    let mut first_push = None;
    while acked.len() < tasks {
        let event = crossbeam_channel::select! {
            recv(events) -> event => match event { Ok(event) => event, Err(_) => break },
            recv(deadline) -> _ => break,
        };
        match event {
            DevHubEvent::Identified { .. } if !identified => {
                identified = true;
                if !pushed {
                    pushed = true;
                    first_push = Some(Instant::now());
                    for i in 0..tasks {
                        hub.push_task("bench", &format!("rate {i}"), json!({}));
                    }
                }
            }
            DevHubEvent::Identified { .. } | DevHubEvent::Disconnected { .. } => identified = false,
            DevHubEvent::Received { frame, .. } => {
                let kind = frame["type"].as_str().unwrap_or("?").to_string();
                *frames.entry(kind).or_default() += 1;
            }
            DevHubEvent::Sent { frame, .. } => match frame["type"].as_str() {
                Some("rate_limited") => denials += 1,
                Some("rate_limit_warning") => warnings += 1,
                Some("task_ack") if frame["status"] == "complete" => acked.push(Instant::now()),
                _ => {}
            },
            _ => {}
        }
    }
    let elapsed = started.elapsed();
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
    hub.stop();

    let normal: usize =
        frames.iter().filter(|(kind, _)| !matches!(kind.as_str(), "ping" | "identify")).map(|(_, n)| n).sum();
    let done = acked.len();
    let first_push = first_push.unwrap_or(started);
    // Up to the last ack when every task completed, else to the end of the run.
    let end = if done == tasks { acked.last().copied().unwrap_or(first_push) } else { started + elapsed };
    // Tasks a minute from `from` to `end`: the whole run, and "sustained",
    // from a minute in (once the bucket's first minute of tokens is spent).
    let per_minute = |from: Instant| -> f64 {
        let count = acked.iter().filter(|at| **at > from).count();
        let window = end.saturating_duration_since(from).as_secs_f64();
        if window > 0.0 {
            count as f64 * 60.0 / window
        } else {
            0.0
        }
    };
    let sustained_from = first_push + Duration::from_secs(60);
    let mut kinds: Vec<_> = frames.iter().collect();
    kinds.sort();
    println!();
    println!(
        "agentcom-sidecar rate budget: dev hub 4718a58, real limits (normal 60/min), {tasks} tasks queued at once"
    );
    println!("{:-<78}", "");
    println!(
        "{:<52} {:>24}",
        "tasks completed",
        format!("{done} of {tasks} in {:.0} s", elapsed.as_secs_f64())
    );
    println!(
        "{:<52} {:>24.2}",
        "normal-tier frames per task (completed)",
        normal as f64 / done.max(1) as f64
    );
    println!("{:<52} {:>24}", "hub denials (rate_limited) / warnings", format!("{denials} / {warnings}"));
    println!("{:<52} {:>24.1}", "tasks per minute, whole run", per_minute(first_push));
    println!(
        "{:<52} {:>24.1}",
        "tasks per minute, sustained (after the first minute)",
        per_minute(sustained_from)
    );
    println!(
        "{:<52} {}",
        "frames read by the hub",
        kinds.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
    );
    println!("{:-<78}", "");
}
