//! The one-sidecar table: footprint, idle cost and per-task latencies with
//! their floors.
//!
//! Knobs: `BENCH_IDLE_SECS` (idle window, default 60), `BENCH_LATENCY_TASKS`
//! (tasks pushed one at a time for the latencies, default 200),
//! `BENCH_TASKS` (tasks queued at once for the throughput, default 1000),
//! `BENCH_FLOOR_SAMPLES` (floor samples before the sidecar starts, default 100;
//! one more of each floor is taken after each one-at-a-time task), `BENCH_LOG_LEVEL` (the sidecar's,
//! default warn; its log stays in the temporary directory with `BENCH_KEEP=1`),
//! `BENCH_SIDECAR` (another sidecar binary, e.g. one built with other
//! release-profile settings), `TMPDIR` (the disk: the sidecar's
//! files and the floor's writes share one temporary directory).
//!
//! Timestamps are CLOCK_MONOTONIC nanoseconds. The hub's events are stamped
//! when this thread receives them: `Sent` is emitted after the hub's write
//! returned (the dev hub sends frames it did not originate from a read only
//! between its 50 ms read polls, so a push is timed from its actual write),
//! `Received` after the hub read and parsed the frame. The agent stamps
//! "wake started" as the first thing it does and "renamed" just before its
//! rename.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use agentcom_sidecar::devhub::{DevHub, DevHubEvent, DevHubOptions};
use agentcom_sidecar::queue_store::{QueueFile, TaskRecord};
use crossbeam_channel::Receiver;
use serde_json::json;

use crate::agent::STAMP_FILE_ENV;
use crate::floors::{self, shell_quote};
use crate::procfs::{self, mono_ns};
use crate::{env_u64, ms, Summary};

const FAILSAFE: Duration = Duration::from_secs(30);

/// Per-task timestamps (ns).
#[derive(Debug, Default, Clone, Copy)]
struct Times {
    pushed: Option<u64>,
    accepted: Option<u64>,
    completed: Option<u64>,
    acked: Option<u64>,
}

/// Latency samples of one phase (ns).
#[derive(Default)]
struct Latencies {
    accept: Vec<u64>,
    wake: Vec<u64>,
    complete: Vec<u64>,
}

pub fn run() {
    let idle_secs = env_u64("BENCH_IDLE_SECS", 60);
    let latency_tasks = env_u64("BENCH_LATENCY_TASKS", 200) as usize;
    let throughput_tasks = env_u64("BENCH_TASKS", 1000) as usize;
    let floor_samples = env_u64("BENCH_FLOOR_SAMPLES", 100).max(1) as usize;
    let built = env!("CARGO_BIN_EXE_agentcom-sidecar").to_string();
    let binary = std::env::var("BENCH_SIDECAR").unwrap_or(built);
    let binary = binary.as_str();
    let helper = std::env::current_exe().expect("own path").to_string_lossy().into_owned();
    let mut dir = tempfile::tempdir().expect("temporary directory");
    if std::env::var_os("BENCH_KEEP").is_some() {
        dir.disable_cleanup(true);
    }

    // Floors: sampled before the sidecar starts and again between the
    // one-at-a-time tasks, so a disk that gets busier during the run weighs
    // on both sides alike.
    let queue_json = typical_queue_json();
    let floor_dir = dir.path().join("floor");
    fs::create_dir_all(&floor_dir).expect("floor dir");
    let mut echo = floors::Echo::start();
    let mut floor = Floors::default();
    for _ in 0..floor_samples {
        floor.sample(&mut echo, &floor_dir, &queue_json, &helper);
    }
    let agent_helpers = crate::helpers::sample(binary, &dir.path().join("helpers"), floor_samples);

    let mut options = DevHubOptions::new("bench", "bench-token");
    // This measures the relay, not 4718a58's rate limit (60 frames, then one
    // a second, which the default dev hub enforces): room for every frame.
    options.limits.normal.capacity = 1_000_000;
    options.limits.light.capacity = 1_000_000;
    let hub = DevHub::start(options).expect("hub");
    let events = hub.events();
    let results = dir.path().join("results");
    let stamps_path = dir.path().join("stamps.txt");
    let config = json!({
        "agent_id": "bench", "token": "bench-token", "hub_url": hub.url(),
        "wake_command": format!("exec {} agent", shell_quote(&helper)),
        "results_dir": results, "log_file": dir.path().join("sidecar.log"),
        "queue_file": dir.path().join("queue.json"),
        "log_level": std::env::var("BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
        // ...and the sidecar paces itself to the hub's budget: the same room.
        "rate_limit_normal": 1_000_000, "rate_limit_light": 1_000_000,
    });
    fs::write(dir.path().join("config.json"), config.to_string()).expect("config");
    let started = mono_ns();
    let mut child = Command::new(binary)
        .arg("--config")
        .arg(dir.path().join("config.json"))
        .env(STAMP_FILE_ENV, &stamps_path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("sidecar starts");
    let pid = child.id();
    let (identified, _) =
        next(&events, |e| matches!(e, DevHubEvent::Identified { .. })).expect("the sidecar identifies");
    let start_to_identified = identified - started;
    drain_for(&events, Duration::from_secs(2));
    let idle_rss = (procfs::status_kb(pid, "VmRSS:"), procfs::status_kb(pid, "VmHWM:"));

    // Latencies: one task at a time.
    let mut times: HashMap<String, Times> = HashMap::new();
    let mut order = Vec::new();
    for i in 0..latency_tasks {
        let task_id = hub.push_task("bench", &format!("task {i}"), json!({}));
        order.push(task_id.clone());
        follow(&events, &mut times, 1);
        floor.sample(&mut echo, &floor_dir, &queue_json, &helper);
    }
    drop(echo);
    // Throughput: every task queued at once; the hub hands the next one
    // over as soon as the sidecar has settled the previous one.
    let cpu_before = procfs::process_cpu_ticks(pid);
    let mut loaded = Vec::new();
    for i in 0..throughput_tasks {
        loaded.push(hub.push_task("bench", &format!("load {i}"), json!({})));
    }
    follow(&events, &mut times, throughput_tasks);
    let first_push = loaded.iter().filter_map(|t| times.get(t)?.pushed).min().unwrap_or(0);
    let last_ack = loaded.iter().filter_map(|t| times.get(t)?.acked).max().unwrap_or(0);
    let per_second = throughput_tasks as f64 / ((last_ack.saturating_sub(first_push)) as f64 / 1e9);
    let cpu_per_task_ms =
        (procfs::process_cpu_ticks(pid) - cpu_before) as f64 * 10.0 / throughput_tasks.max(1) as f64;
    let busy_rss = (procfs::status_kb(pid, "VmRSS:"), procfs::status_kb(pid, "VmHWM:"));

    let stamps = read_stamps(&stamps_path);
    let one_at_a_time = latencies(&order, &times, &stamps);
    let back_to_back = latencies(&loaded, &times, &stamps);

    // Idle: let the last task's tail pass, then a full window.
    drain_for(&events, Duration::from_secs(2));
    let before = procfs::threads(&pid.to_string());
    drain_for(&events, Duration::from_secs(idle_secs));
    let after = procfs::threads(&pid.to_string());
    let mut idle_cpu_ns = 0;
    let mut idle_switches = 0;
    let mut per_thread = Vec::new();
    for thread in &after {
        let (cpu, switches) = match before.iter().find(|b| b.tid == thread.tid) {
            Some(b) => (thread.cpu_ns - b.cpu_ns, thread.switches - b.switches),
            None => (thread.cpu_ns, thread.switches),
        };
        idle_cpu_ns += cpu;
        idle_switches += switches;
        per_thread.push(format!("{} {switches}", thread.name));
    }

    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let _ = child.wait();
    hub.stop();
    let size = fs::metadata(binary).map(|m| m.len()).unwrap_or(0);
    let stripped = is_stripped(binary);

    let ws_floor = Summary::of(&floor.ws);
    let write_floor = Summary::of(&floor.write);
    let true_floor = Summary::of(&floor.spawn_true);
    let exec_floor = Summary::of(&floor.exec);
    let rtt_half = Summary { p50: ws_floor.p50 / 2, p95: ws_floor.p95 / 2, max: ws_floor.max / 2, count: 0 };
    let accept_floor = add(&[ws_floor, write_floor]);
    // Two writes: `waking` before the spawn, and the wake command's identity
    // before it may run (the gate, docs/protocol.md 8.1).
    let wake_floor = add(&[rtt_half, write_floor, write_floor, exec_floor]);
    let complete_floor = add(&[write_floor, rtt_half]);

    println!();
    println!(
        "agentcom-sidecar benchmark: release binary, dev hub and instant agent on loopback; {} + {} tasks",
        latency_tasks, throughput_tasks
    );
    println!("files in {} (fs {})", dir.path().display(), fs_type(dir.path()));
    println!("{:-<112}", "");
    println!(
        "{:<46} {:>24}   {:<28} {:>9}",
        "measure (ms: p50 / p95 / max)", "sidecar", "floor (p50 / p95)", "x floor"
    );
    println!("{:-<112}", "");
    println!("{:<46} {:>24}", "floor: WebSocket round trip, loopback", ws_floor.ms());
    println!(
        "{:<46} {:>24}",
        format!("floor: atomic write + fsyncs, {} B", queue_json.len()),
        write_floor.ms()
    );
    println!("{:<46} {:>24}", "floor: spawn `sh -c true` to reaped", true_floor.ms());
    println!("{:<46} {:>24}", "floor: spawn `sh -c exec agent` to its 1st read", exec_floor.ms());
    let row = |name: &str, figure: Summary, floor: Summary, what: &str| {
        println!(
            "{:<46} {:>24}   {:<28} {:>9}",
            name,
            figure.ms(),
            format!("{} / {} {what}", ms(floor.p50), ms(floor.p95)),
            format!("{:.1}x", figure.p50 as f64 / floor.p50.max(1) as f64),
        );
    };
    for (label, set) in [("", &one_at_a_time), (" (back to back)", &back_to_back)] {
        row(
            &format!("push -> task_accepted read{label}"),
            Summary::of(&set.accept),
            accept_floor,
            "rtt+write",
        );
        row(
            &format!("push -> wake started{label}"),
            Summary::of(&set.wake),
            wake_floor,
            "rtt/2+2 writes+exec",
        );
        row(
            &format!("result renamed -> task_complete read{label}"),
            Summary::of(&set.complete),
            complete_floor,
            "write+rtt/2",
        );
    }
    let helper_floor = add(&[Summary::of(&agent_helpers.version), write_floor]);
    row(
        "agent helper `agent progress`, spawn -> exit",
        Summary::of(&agent_helpers.progress),
        helper_floor,
        "start+write",
    );
    row(
        "agent helper `agent done`, spawn -> exit",
        Summary::of(&agent_helpers.done),
        helper_floor,
        "start+write",
    );
    println!("{:<46} {:>24.0}", "tasks per second, whole loop (back to back)", per_second);
    println!("{:<46} {:>24.3}", "sidecar CPU per task, ms (back to back)", cpu_per_task_ms);
    println!("{:<46} {:>24}", "start -> identified", ms(start_to_identified));
    println!(
        "{:<46} {:>24}",
        "VmRSS / VmHWM after start-up idle (KiB)",
        format!("{} / {}", idle_rss.0, idle_rss.1)
    );
    println!(
        "{:<46} {:>24}",
        format!("VmRSS / VmHWM after {} tasks (KiB)", latency_tasks + throughput_tasks),
        format!("{} / {}", busy_rss.0, busy_rss.1)
    );
    println!(
        "{:<46} {:>24}",
        format!("idle {idle_secs} s connected: CPU ms, wake-ups"),
        format!("{} / {}", ms(idle_cpu_ns), idle_switches)
    );
    println!("{:<46} {}", "  wake-ups per thread", per_thread.join(", "));
    println!(
        "{:<46} {:>24}",
        "release binary (MiB)",
        format!("{:.2}{}", size as f64 / 1048576.0, if stripped { " stripped" } else { " NOT stripped" })
    );
    println!("{:-<112}", "");
    println!("x floor = sidecar p50 / floor p50. rtt/2 is half the WebSocket round trip.");
}

/// Floor samples (ns).
#[derive(Default)]
struct Floors {
    ws: Vec<u64>,
    write: Vec<u64>,
    spawn_true: Vec<u64>,
    exec: Vec<u64>,
}

impl Floors {
    fn sample(&mut self, echo: &mut floors::Echo, dir: &Path, queue_json: &[u8], helper: &str) {
        for _ in 0..5 {
            self.ws.push(echo.round_trip());
        }
        self.write.push(floors::atomic_write(dir, queue_json));
        self.spawn_true.push(floors::spawn_true());
        self.exec.push(floors::spawn_to_helper(helper));
    }
}

/// Consumes hub events until `count` more tasks have been acknowledged,
/// stamping each task's push, accept, completion and ack.
fn follow(events: &Receiver<DevHubEvent>, times: &mut HashMap<String, Times>, count: usize) {
    let mut acked = 0;
    while acked < count {
        let (at, event) = next(events, |_| true).expect("the task loop goes on");
        let (frame, sent) = match &event {
            DevHubEvent::Sent { frame, .. } => (frame, true),
            DevHubEvent::Received { frame, .. } => (frame, false),
            _ => continue,
        };
        let Some(task_id) = frame["task_id"].as_str() else { continue };
        let entry = times.entry(task_id.to_string()).or_default();
        match (sent, frame["type"].as_str().unwrap_or("")) {
            (true, "task_assign") => entry.pushed = Some(at),
            (false, "task_accepted") => entry.accepted = Some(at),
            (false, "task_complete") => entry.completed = Some(at),
            // The hub also answers task_accepted with a task_ack.
            (true, "task_ack") if frame["status"] == "complete" => {
                entry.acked = Some(at);
                acked += 1;
            }
            (false, "task_failed") => panic!("task {task_id} failed: {frame}"),
            _ => {}
        }
    }
}

fn latencies(
    tasks: &[String],
    times: &HashMap<String, Times>,
    stamps: &HashMap<String, (u64, u64)>,
) -> Latencies {
    let mut out = Latencies::default();
    for task_id in tasks {
        let t = times.get(task_id).copied().unwrap_or_default();
        let Some(pushed) = t.pushed else { continue };
        if let Some(accepted) = t.accepted {
            out.accept.push(accepted.saturating_sub(pushed));
        }
        if let Some(&(woke, renamed)) = stamps.get(task_id) {
            out.wake.push(woke.saturating_sub(pushed));
            if let Some(completed) = t.completed {
                out.complete.push(completed.saturating_sub(renamed));
            }
        }
    }
    out
}

/// The agent's `task_id woke renamed` lines.
fn read_stamps(path: &Path) -> HashMap<String, (u64, u64)> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let task_id = parts.next()?.to_string();
            let woke = parts.next()?.parse().ok()?;
            let renamed = parts.next()?.parse().ok()?;
            Some((task_id, (woke, renamed)))
        })
        .collect()
}

/// The next event matching `pred`, stamped on receipt.
fn next(
    events: &Receiver<DevHubEvent>,
    mut pred: impl FnMut(&DevHubEvent) -> bool,
) -> Option<(u64, DevHubEvent)> {
    let deadline = crossbeam_channel::at(std::time::Instant::now() + FAILSAFE);
    loop {
        crossbeam_channel::select! {
            recv(events) -> event => {
                let event = event.ok()?;
                if pred(&event) {
                    return Some((mono_ns(), event));
                }
            }
            recv(deadline) -> _ => return None,
        }
    }
}

/// Lets `window` pass while consuming (and ignoring) the hub's events.
fn drain_for(events: &Receiver<DevHubEvent>, window: Duration) {
    let deadline = crossbeam_channel::at(std::time::Instant::now() + window);
    loop {
        crossbeam_channel::select! {
            recv(events) -> event => if event.is_err() { return },
            recv(deadline) -> _ => return,
        }
    }
}

/// The queue.json the sidecar writes for a bench task, as bytes.
fn typical_queue_json() -> Vec<u8> {
    let record: TaskRecord = serde_json::from_value(json!({
        "task_id": "task-0123456789abcdef", "description": "task 0", "metadata": {},
        "status": "waking", "assigned_at": 1_764_000_000_000u64, "generation": 1, "wake_attempts": 1,
    }))
    .expect("a task record");
    let queue = QueueFile { active: Some(record), ..QueueFile::default() };
    let mut bytes = serde_json::to_vec_pretty(&queue).expect("serialize");
    bytes.push(b'\n');
    bytes
}

fn add(parts: &[Summary]) -> Summary {
    parts.iter().fold(Summary::default(), |sum, part| Summary {
        p50: sum.p50 + part.p50,
        p95: sum.p95 + part.p95,
        max: sum.max + part.max,
        count: 0,
    })
}

fn is_stripped(binary: &str) -> bool {
    // `file` says "not stripped" for a binary with a symbol table.
    Command::new("file")
        .arg(binary)
        .output()
        .map(|o| !String::from_utf8_lossy(&o.stdout).contains("not stripped"))
        .unwrap_or(false)
}

fn fs_type(dir: &Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "?".into())
}
