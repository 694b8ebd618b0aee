//! The seeded chaos soak (issue 10): the real sidecar binary against the
//! development hub on loopback, through many task lifecycles, while a seeded
//! schedule injects faults; a checker then verifies every task.
//!
//! ```sh
//! cargo test --release --test soak -- --seed 7 --lifecycles 1000
//! ```
//!
//! Faults: SIGKILL of the sidecar (restarted after a random delay, as pm2
//! would), hub closes with 1000 / 1002 / 1008 "cooldown active" / 1011, hub
//! restarts on the same port (the task carried over), a silent hub with TCP
//! open, `rate_limited` replies; and agents (see `agent.rs`) whose wake command
//! fails, hangs or is still running when the sidecar is killed, and which
//! write their result before `.started`, twice, late, half-written, or never.
//!
//! Checks (see `checker.rs`): exactly one final outcome per task and at most
//! one per generation; no stale result reported; no wake for work the agent
//! had started; never two wake commands at once; `queue.json` parses after
//! every kill; no file left behind for settled tasks, no leftover temp file of
//! a killed save after the restart, no unexpected file next to the queue; a
//! 1008 cooldown is respected; no process of ours left at the end. The output
//! is the seed, the counts, and every violation with its lifecycle's trace;
//! the exit code is 1 on any violation.
//!
//! It is a `harness = false` test target so it never ships; `test = false`
//! keeps it out of a plain `cargo test`. The same executable is the agent
//! (`--soak-agent`, `--soak-worker`) the sidecar's wake command runs.

mod agent;
mod checker;
mod prng;

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, OpenOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use agentcom_sidecar::devhub::{
    DevHub, DevHubEvent, DevHubOptions, HubVersion, Outcome, OutcomeKind, TaskStatus,
};
use agentcom_sidecar::queue_store;
use crossbeam_channel::{Receiver, Sender};
use serde_json::{json, Value};

use agent::{now_ms, TaskPlan};
use checker::{AgentEvent, SettleKind, Tail, TraceEntry};
use prng::Rng;

const AGENT: &str = "soak-agent";
const TOKEN: &str = "soak-token-7f3e";
const SIDECAR: &str = env!("CARGO_BIN_EXE_agentcom-sidecar");
/// The cooldown the hub's 1008 close asks for.
const COOLDOWN_S: u64 = 1;
/// A lifecycle that has not settled this long after its last fault is lost.
/// A `rate_limited` the hub sends counts as a fault when it is sent (an
/// injected one is armed earlier, for the next frame of its type): after
/// five denials within a minute the sidecar, as the newer hub's backoff
/// asks, sends nothing of that tier for 30 s.
const SETTLE_DEADLINE: Duration = Duration::from_secs(45);
/// The sidecar's stdout+stderr past this size means a logging loop.
const MAX_OUTPUT_BYTES: u64 = 20_000_000;
/// More CPU than this share of a lifecycle's wall time means a busy loop.
const MAX_CPU_SHARE: f64 = 0.5;
/// Bound on every other wait (a reconnect, a file removal, a process exit).
const WAIT: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--soak-agent") => return agent::wake_main(&args[1..]),
        Some("--soak-worker") => return agent::worker_main(&args[1..]),
        _ => {}
    }
    let options = match Options::parse(&args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}\nusage: soak [--seed N] [--lifecycles M] [--hub cbf9c20|4718a58] [--keep]");
            return ExitCode::from(2);
        }
    };
    if prng::Rng::new(0).next_u64() != prng::FIRST_OF_SEED_0 {
        eprintln!("soak: the PRNG is not splitmix64");
        return ExitCode::from(2);
    }
    let hub = if options.hub == HubVersion::Cbf9c20 { "cbf9c20" } else { "4718a58" };
    let mode = if options.run_mode { "run" } else { "launch" };
    println!("soak: seed {} lifecycles {} hub {hub} wake-mode {mode}", options.seed, options.lifecycles);
    println!(
        "soak: replay with: cargo test --release --test soak -- --seed {} --lifecycles {} --hub {hub} --wake-mode {mode}",
        options.seed, options.lifecycles
    );
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    if let Err(error) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        eprintln!("soak: no Ctrl-C handler ({error}); an interrupted run leaves its sidecar running");
    }
    match Soak::new(&options, interrupted).and_then(|mut soak| soak.run(&options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("soak: cannot run: {error}");
            ExitCode::from(2)
        }
    }
}

struct Options {
    seed: u64,
    lifecycles: u64,
    keep: bool,
    hub: HubVersion,
    /// `--wake-mode run`: the sidecar in run mode, the agent a CLI.
    run_mode: bool,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            seed: (now_ms() as u64) % 1_000_000,
            lifecycles: 60,
            keep: false,
            hub: HubVersion::V4718a58,
            run_mode: false,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut number = |name: &str| -> Result<u64, String> {
                let value = args.next().ok_or(format!("{name} needs a value"))?;
                value.parse().map_err(|_| format!("{name}: not a number: {value}"))
            };
            match arg.as_str() {
                "--seed" => options.seed = number("--seed")?,
                "--lifecycles" => options.lifecycles = number("--lifecycles")?,
                "--keep" => options.keep = true,
                "--hub" => {
                    options.hub = match args.next().map(String::as_str) {
                        Some("cbf9c20") => HubVersion::Cbf9c20,
                        Some("4718a58") => HubVersion::V4718a58,
                        other => return Err(format!("--hub: cbf9c20 or 4718a58, not {other:?}")),
                    }
                }
                "--wake-mode" => {
                    options.run_mode = match args.next().map(String::as_str) {
                        Some("run") => true,
                        Some("launch") => false,
                        other => return Err(format!("--wake-mode: launch or run, not {other:?}")),
                    }
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        Ok(options)
    }
}

#[derive(Debug, Clone)]
enum Fault {
    Kill { restart_after_ms: u64 },
    Close { code: u16, reason: &'static str },
    HubRestart { down_ms: u64 },
    Silent { ms: u64 },
    RateLimit { frame_type: &'static str, retry_after_ms: u64 },
}

#[derive(Debug, Clone)]
enum Action {
    Fault(Fault),
    RestartSidecar,
    StartHub,
    Unsilence,
}

/// A devhub event with the wall time it was seen and which hub saw it.
struct Stamped {
    t: f64,
    hub: u32,
    event: DevHubEvent,
}

#[derive(Default)]
struct Counts {
    lifecycles: u64,
    kills: u64,
    queue_checks: u64,
    hub_restarts: u64,
    closes: BTreeMap<u16, u64>,
    silences: u64,
    rate_limits: u64,
    /// `rate_limited` frames the hub sent: the injected ones and any its
    /// buckets denied.
    denials: u64,
    connections: u64,
    disconnects: u64,
    taken_back: u64,
    outcomes: BTreeMap<&'static str, u64>,
    wakes: u64,
    workers: u64,
    wake_modes: BTreeMap<String, u64>,
    worker_modes: BTreeMap<String, u64>,
}

/// What the current lifecycle's task went through.
#[derive(Default)]
struct TaskLedger {
    task_id: String,
    outcomes: Vec<(u32, Outcome)>,
    settles: Vec<(f64, SettleKind)>,
    opened: Vec<u64>,
    taken_back: Vec<u64>,
}

struct Soak {
    seed: u64,
    /// Ctrl-C or SIGTERM: stop, killing the sidecar (see `Drop`).
    interrupted: Arc<AtomicBool>,
    /// When each stopped hub began stopping: its own take-backs after that
    /// are the stop, not a protocol event (the next hub carries the task on).
    hub_stopped_at: BTreeMap<u32, f64>,
    hub_version: HubVersion,
    rng: Rng,
    dir: tempfile::TempDir,
    agent_dir: PathBuf,
    results: PathBuf,
    config_path: PathBuf,
    addr: SocketAddr,
    hub: Option<DevHub>,
    hub_no: u32,
    events_tx: Sender<Stamped>,
    events_rx: Receiver<Stamped>,
    sidecar: Option<Child>,
    sidecar_started: f64,
    identified: bool,
    /// `(hub, conn)` of the last identified connection.
    identified_conn: Option<(u32, u64)>,
    /// `(time of a 1008 "retry in" close)`, until the next connection.
    cooldown_from: Option<f64>,
    /// When the hub last sent a `rate_limited` (see [`SETTLE_DEADLINE`]).
    denied_at: Option<Instant>,
    /// The current task's status and generation at the hub that was stopped.
    carried: Option<(TaskStatus, u64)>,
    counts: Counts,
    trace: Vec<TraceEntry>,
    ledger: TaskLedger,
    agent_log: Tail,
    sidecar_log: Tail,
    agent_events: Vec<AgentEvent>,
    wake_attempts: Vec<(f64, String)>,
    /// The sidecar's `report_settled` records: (time, task).
    settled_seen: Vec<(f64, String)>,
    /// See `checker::Findings::lost_answers`.
    lost_answers: Vec<String>,
    reported_files: HashSet<String>,
    violations: Vec<String>,
}

impl Soak {
    fn new(options: &Options, interrupted: Arc<AtomicBool>) -> Result<Soak, String> {
        let dir = tempfile::Builder::new().prefix("agentcom-soak-").tempdir().map_err(|e| e.to_string())?;
        let agent_dir = dir.path().join("agent");
        let results = dir.path().join("results");
        fs::create_dir_all(agent_dir.join("plans")).map_err(|e| e.to_string())?;
        fs::create_dir_all(&results).map_err(|e| e.to_string())?;
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let hub = start_hub(SocketAddr::from(([127, 0, 0, 1], 0)), options.hub)?;
        let addr = hub.addr();
        let config = json!({
            "agent_id": AGENT,
            "token": TOKEN,
            "hub_url": hub.url(),
            "wake_command": format!(
                "exec '{}' --soak-agent '{}'{}",
                exe.display(),
                agent_dir.display(),
                if options.run_mode { " run" } else { "" }
            ),
            "wake_mode": if options.run_mode { "run" } else { "launch" },
            "cancel_grace_ms": 500,
            "results_dir": results,
            "log_file": dir.path().join("sidecar.log"),
            "queue_file": dir.path().join("queue.json"),
            "heartbeat_interval_ms": 1_000,
            "pong_timeout_ms": 800,
            "reconnect_initial_ms": 50,
            "reconnect_max_ms": 400,
            "connect_timeout_ms": 1_500,
            "confirmation_timeout_ms": 2_000,
            "wake_timeout_ms": 2_000,
            "wake_retry_delays_ms": [100, 250],
            "task_timeout_ms": 8_000,
            // Compressed like every other interval here: a task the hub takes
            // back is handed back within a few seconds or not at all (it may
            // have been our own completion, answered task_reassign after a
            // kill), and the checker waits 15 s for a settled task's files.
            "readopt_window_ms": 8_000,
            "result_settle_ms": 600,
            "progress_interval_ms": 100,
            "shutdown_grace_ms": 200,
            "log_max_bytes": 1_000_000_000u64,
            "log_level": "info",
        });
        let config_path = dir.path().join("config.json");
        fs::write(&config_path, serde_json::to_vec_pretty(&config).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let agent_log = Tail::new(agent::log_path(&agent_dir));
        let sidecar_log = Tail::new(dir.path().join("sidecar.log"));
        let mut soak = Soak {
            seed: options.seed,
            interrupted,
            hub_stopped_at: BTreeMap::new(),
            hub_version: options.hub,
            rng: Rng::new(options.seed),
            dir,
            agent_dir,
            results,
            config_path,
            addr,
            hub: None,
            hub_no: 0,
            events_tx,
            events_rx,
            sidecar: None,
            sidecar_started: 0.0,
            identified: false,
            identified_conn: None,
            cooldown_from: None,
            denied_at: None,
            carried: None,
            counts: Counts::default(),
            trace: Vec::new(),
            ledger: TaskLedger::default(),
            agent_log,
            sidecar_log,
            agent_events: Vec::new(),
            wake_attempts: Vec::new(),
            settled_seen: Vec::new(),
            lost_answers: Vec::new(),
            reported_files: HashSet::new(),
            violations: Vec::new(),
        };
        soak.adopt_hub(hub);
        Ok(soak)
    }

    fn note(&mut self, text: String) {
        self.trace.push(TraceEntry { t: now_ms(), text });
    }

    fn violation(&mut self, text: String) {
        self.note(format!("VIOLATION {text}"));
        self.violations.push(text);
    }

    fn adopt_hub(&mut self, hub: DevHub) {
        self.hub_no += 1;
        let (no, events, tx) = (self.hub_no, hub.events(), self.events_tx.clone());
        thread::spawn(move || {
            for event in events.iter() {
                if tx.send(Stamped { t: now_ms(), hub: no, event }).is_err() {
                    break;
                }
            }
        });
        self.hub = Some(hub);
    }

    fn start_sidecar(&mut self) -> Result<(), String> {
        let open = |name: &str| OpenOptions::new().create(true).append(true).open(self.dir.path().join(name));
        let child = Command::new(SIDECAR)
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(open("stdout.txt").map_err(|e| e.to_string())?)
            .stderr(open("stderr.txt").map_err(|e| e.to_string())?)
            .env_remove("AGENTCOM_FAILPOINT")
            .spawn()
            .map_err(|e| format!("cannot start the sidecar {SIDECAR}: {e}"))?;
        self.sidecar_started = now_ms();
        self.note(format!("sidecar started (pid {})", child.id()));
        self.sidecar = Some(child);
        Ok(())
    }

    fn kill_sidecar(&mut self) {
        let Some(mut child) = self.sidecar.take() else {
            return;
        };
        let _ = child.kill();
        let _ = child.wait();
        self.counts.kills += 1;
        self.identified = false;
        self.cooldown_from = None;
        self.note(format!("SIGKILL sidecar (pid {})", child.id()));
        // queue.json must parse after every kill.
        let queue = self.dir.path().join("queue.json");
        if let Ok(bytes) = fs::read(&queue) {
            self.counts.queue_checks += 1;
            if let Err(error) = queue_store::parse(&bytes) {
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
                self.violation(format!("queue.json does not parse after a kill: {error}: {text:?}"));
            }
        }
    }

    /// Receives devhub events until `until`.
    fn pump(&mut self, until: Instant) {
        self.guard_output();
        loop {
            if self.interrupted.load(Ordering::SeqCst) {
                return;
            }
            let now = Instant::now();
            if now >= until {
                return;
            }
            match self.events_rx.recv_timeout(until - now) {
                Ok(stamped) => self.record(stamped),
                Err(_) => return,
            }
        }
    }

    /// A sidecar that logs in a loop would fill the disk: flag it once and
    /// empty the files (the child appends, so it keeps writing at the start).
    fn guard_output(&mut self) {
        for name in ["stdout.txt", "stderr.txt"] {
            let path = self.dir.path().join(name);
            let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if size > MAX_OUTPUT_BYTES {
                let tail = tail_of(&path, 600);
                self.violation(format!(
                    "the sidecar wrote over {MAX_OUTPUT_BYTES} bytes to {name} (a loop?); it ended with: {tail}"
                ));
                if let Ok(file) = OpenOptions::new().write(true).open(&path) {
                    let _ = file.set_len(0);
                }
            }
        }
    }

    fn record(&mut self, Stamped { t, hub, event }: Stamped) {
        let task = self.ledger.task_id.clone();
        let text = match &event {
            DevHubEvent::Connected { conn } => {
                self.counts.connections += 1;
                if let Some(from) = self.cooldown_from.take() {
                    let waited = t - from;
                    if waited < (COOLDOWN_S * 1000) as f64 - 50.0 {
                        self.violation(format!(
                            "reconnected {waited:.0} ms after a 1008 close asking for {COOLDOWN_S} s"
                        ));
                    }
                }
                Some(format!("conn {conn} connected"))
            }
            DevHubEvent::HandshakeFailed { conn, reason } => {
                Some(format!("conn {conn} handshake failed: {reason}"))
            }
            DevHubEvent::Identified { conn, .. } => {
                self.identified = true;
                self.identified_conn = Some((hub, *conn));
                Some(format!("conn {conn} identified"))
            }
            DevHubEvent::Disconnected { conn, .. } => {
                self.counts.disconnects += 1;
                // An older connection's end (found late) says nothing about
                // the one identified since.
                if self.identified_conn == Some((hub, *conn)) {
                    self.identified = false;
                }
                Some(format!("conn {conn} disconnected"))
            }
            DevHubEvent::ClosedByHub { conn, code, reason } => {
                if *code == 1008 && reason.contains("retry in") {
                    self.cooldown_from = Some(t);
                }
                Some(format!("conn {conn} closed by hub {code} {reason:?}"))
            }
            DevHubEvent::TaskTakenBack { task_id, generation, reason } => {
                let stopping = self.hub_stopped_at.get(&hub).is_some_and(|stop| t >= *stop);
                if *task_id == task && !stopping {
                    self.counts.taken_back += 1;
                    self.ledger.taken_back.push(*generation);
                    // cbf9c20's crash on task_failed: the failure is the answer
                    // (the re-push is new work).
                    if reason == "hub_crash" {
                        self.ledger.settles.push((t, SettleKind::Reassign));
                    }
                }
                Some(format!("{task_id} taken back to gen {generation} ({reason})"))
            }
            DevHubEvent::Received { conn, frame } => describe(frame).map(|d| format!("conn {conn} <- {d}")),
            DevHubEvent::Sent { conn, frame } => {
                if frame["type"] == "rate_limited" {
                    self.counts.denials += 1;
                    self.denied_at = Some(Instant::now());
                }
                if frame["task_id"] == task.as_str() {
                    match (frame["type"].as_str(), frame["status"].as_str()) {
                        (Some("task_ack"), Some("complete" | "retried" | "dead_letter")) => {
                            self.ledger.settles.push((t, SettleKind::Ack));
                        }
                        (Some("task_reassign"), _) => self.ledger.settles.push((t, SettleKind::Reassign)),
                        (Some("task_assign" | "task_continue"), _) => {
                            if let Some(generation) = frame["generation"].as_u64() {
                                if !self.ledger.opened.contains(&generation) {
                                    self.ledger.opened.push(generation);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                describe(frame).map(|d| format!("conn {conn} -> {d}"))
            }
            DevHubEvent::Violation { conn, message_type, count } => {
                self.violation(format!(
                    "{task}: the hub counted a protocol violation ({message_type}, {count} on conn {conn})"
                ));
                None
            }
            DevHubEvent::Suppressed { .. } | DevHubEvent::ReceivedText { .. } => None,
        };
        if let Some(text) = text {
            self.trace.push(TraceEntry { t, text: format!("hub#{hub} {text}") });
        }
    }

    fn run(&mut self, options: &Options) -> Result<bool, String> {
        let began = Instant::now();
        self.start_sidecar()?;
        let mut interrupted = false;
        for index in 0..options.lifecycles {
            match self.lifecycle(index, options.seed) {
                Ok(()) => {}
                Err(error) if self.interrupted.load(Ordering::SeqCst) => {
                    // Summarise what ran (an interrupted lifecycle is not checked).
                    println!("soak: interrupted during lifecycle {index} ({error})");
                    interrupted = true;
                    break;
                }
                Err(error) => return Err(error),
            }
            if (index + 1) % 50 == 0 {
                println!(
                    "soak: {} lifecycles, {} kills, {} violations, {:.0} s",
                    index + 1,
                    self.counts.kills,
                    self.violations.len(),
                    began.elapsed().as_secs_f64()
                );
            }
        }
        self.finish(!interrupted);
        self.summary(began.elapsed());
        if interrupted {
            return Err("interrupted: the summary covers the lifecycles completed".to_string());
        }
        let ok = self.violations.is_empty();
        if options.keep || !ok {
            let path = self.dir.path().to_path_buf();
            println!("soak: run directory kept: {}", path.display());
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().map_err(|e| e.to_string())?);
            let _ = dir.keep();
        }
        Ok(ok)
    }

    fn schedule(&mut self) -> Vec<(u64, Action)> {
        let n = self.rng.weighted(&[(30, 0u64), (35, 1), (25, 2), (10, 3)]);
        let mut plan = Vec::new();
        for _ in 0..n {
            let at = self.rng.range(0, 3_000);
            let kind = self.rng.weighted(&[(35, 0u8), (25, 1), (8, 2), (10, 3), (22, 4)]);
            let fault = match kind {
                0 => Fault::Kill { restart_after_ms: self.rng.range(0, 1_500) },
                1 => {
                    let (code, reason) = [
                        (1000, "normal"),
                        (1002, "timeout"),
                        (1008, "cooldown active: retry in 1s"),
                        (1011, "internal error"),
                    ][self.rng.range(0, 3) as usize];
                    Fault::Close { code, reason }
                }
                2 => Fault::HubRestart { down_ms: self.rng.range(50, 1_500) },
                3 => Fault::Silent { ms: self.rng.range(300, 2_500) },
                _ => {
                    let types = [
                        "task_accepted",
                        "task_complete",
                        "task_failed",
                        "task_recovering",
                        "task_progress",
                        "ping",
                    ];
                    Fault::RateLimit {
                        frame_type: types[self.rng.range(0, types.len() as u64 - 1) as usize],
                        retry_after_ms: self.rng.range(50, 1_000),
                    }
                }
            };
            plan.push((at, Action::Fault(fault)));
        }
        plan.sort_by_key(|(at, _)| *at);
        plan
    }

    fn lifecycle(&mut self, index: u64, seed: u64) -> Result<(), String> {
        let task_id = format!("soak-{seed}-{index}");
        let mut plan = TaskPlan::random(&mut self.rng);
        if self.hub_version == HubVersion::Cbf9c20 {
            // cbf9c20 never dead-letters (its crash skips the retry count):
            // the agent eventually does its job.
            plan.wakes.push(agent::WakePlan::reliable());
        }
        for wake in &plan.wakes {
            *self.counts.wake_modes.entry(format!("{:?}", wake.wake)).or_default() += 1;
            *self.counts.worker_modes.entry(format!("{:?}", wake.worker)).or_default() += 1;
        }
        let plan_bytes = serde_json::to_vec(&plan).map_err(|e| e.to_string())?;
        fs::write(agent::plan_path(&self.agent_dir, &task_id), plan_bytes).map_err(|e| e.to_string())?;
        let schedule = self.schedule();
        self.counts.lifecycles += 1;
        let trace_start = self.trace.len();
        self.ledger = TaskLedger { task_id: task_id.clone(), ..TaskLedger::default() };
        self.note(format!("lifecycle {index}: task {task_id}, agent plan [{}]", plan.summary()));
        let faults: Vec<String> = schedule.iter().map(|(at, a)| format!("+{at} ms {a:?}")).collect();
        self.note(format!("lifecycle {index}: faults [{}]", faults.join(", ")));
        let violations_before = self.violations.len();

        // Push once the sidecar is identified (it may be reconnecting).
        let deadline = Instant::now() + WAIT;
        while !self.identified && Instant::now() < deadline {
            self.pump(Instant::now() + Duration::from_millis(50));
        }
        if !self.identified {
            self.violation(format!(
                "{task_id}: the sidecar did not identify within {WAIT:?} before the push"
            ));
        }
        let t0 = Instant::now();
        let cpu0 = self.sidecar_cpu();
        if let Some(hub) = &self.hub {
            hub.push_task_now(AGENT, &task_id, &format!("soak lifecycle {index}"), json!({"soak": index}));
        }
        let mut pending: Vec<(Instant, Action)> =
            schedule.into_iter().map(|(at, action)| (t0 + Duration::from_millis(at), action)).collect();
        let mut settle_deadline = t0 + SETTLE_DEADLINE;
        let mut lost = false;
        loop {
            if pending.is_empty() && self.final_outcome_seen(&task_id) {
                break;
            }
            if self.interrupted.load(Ordering::SeqCst) {
                return Err("interrupted".to_string());
            }
            if Instant::now() >= settle_deadline {
                self.violation(format!("{task_id}: not settled {SETTLE_DEADLINE:?} after its last fault"));
                lost = true;
                break;
            }
            let next = pending.iter().map(|(at, _)| *at).min();
            let until = next
                .unwrap_or(Instant::now() + Duration::from_millis(100))
                .min(Instant::now() + Duration::from_millis(100));
            self.pump(until);
            if let Some(at) = self.denied_at {
                settle_deadline = settle_deadline.max(at + SETTLE_DEADLINE);
            }
            let now = Instant::now();
            let (due, later): (Vec<_>, Vec<_>) = pending.into_iter().partition(|(at, _)| *at <= now);
            pending = later;
            for (_, action) in due {
                if let Some(follow) = self.act(action)? {
                    pending.push(follow);
                }
                settle_deadline = settle_deadline.max(Instant::now() + SETTLE_DEADLINE);
            }
        }
        if let (Some((pid0, cpu0)), Some((pid1, cpu1))) = (cpu0, self.sidecar_cpu()) {
            let wall = t0.elapsed().as_secs_f64();
            if pid0 == pid1 && cpu1 - cpu0 > MAX_CPU_SHARE * wall {
                self.violation(format!(
                    "{task_id}: the sidecar used {:.1} s of CPU in {wall:.1} s (a busy loop?)",
                    cpu1 - cpu0
                ));
            }
        }
        if !lost {
            self.after_settle(&task_id);
        }
        self.snapshot_outcomes(&task_id);
        self.check(&task_id, trace_start, violations_before);
        if lost {
            self.reset(&task_id)?;
        }
        Ok(())
    }

    /// Carries out one scheduled action; may schedule a follow-up.
    fn act(&mut self, action: Action) -> Result<Option<(Instant, Action)>, String> {
        let now = Instant::now();
        let after = |ms: u64| now + Duration::from_millis(ms);
        match action {
            Action::Fault(Fault::Kill { restart_after_ms }) => {
                if self.sidecar.is_none() {
                    return Ok(None);
                }
                self.kill_sidecar();
                Ok(Some((after(restart_after_ms), Action::RestartSidecar)))
            }
            Action::RestartSidecar => {
                self.start_sidecar()?;
                Ok(None)
            }
            Action::Fault(Fault::Close { code, reason }) => {
                *self.counts.closes.entry(code).or_default() += 1;
                self.note(format!("hub closes the agent's socket: {code} {reason:?}"));
                if let Some(hub) = &self.hub {
                    hub.close_connection(AGENT, code, reason);
                }
                Ok(None)
            }
            Action::Fault(Fault::HubRestart { down_ms }) => {
                let Some(hub) = self.hub.take() else {
                    return Ok(None);
                };
                self.counts.hub_restarts += 1;
                let task_id = self.ledger.task_id.clone();
                // Handle nothing more (as a hub that went down), then read its
                // state: a frame handled between the snapshot and the stop
                // would otherwise be lost from the ledger.
                hub.set_silent(true);
                self.collect_outcomes(&hub, &task_id);
                self.note(format!("hub#{} stops; back in {down_ms} ms", self.hub_no));
                self.hub_stopped_at.insert(self.hub_no, now_ms());
                hub.stop();
                self.identified = false;
                Ok(Some((after(down_ms), Action::StartHub)))
            }
            Action::StartHub => {
                let hub = start_hub(self.addr, self.hub_version)?;
                let task_id = self.ledger.task_id.clone();
                // The hub keeps its tasks across a restart (the real one stores
                // them on disk): carry the current task over at its generation.
                if let Some((status, generation)) = self.carried.take() {
                    if matches!(status, TaskStatus::Assigned | TaskStatus::Queued) {
                        hub.seed_task(&task_id, generation, AGENT);
                    }
                }
                self.adopt_hub(hub);
                self.note(format!("hub#{} started on {}", self.hub_no, self.addr));
                Ok(None)
            }
            Action::Fault(Fault::Silent { ms }) => {
                self.counts.silences += 1;
                self.note(format!("hub goes silent for {ms} ms"));
                if let Some(hub) = &self.hub {
                    hub.set_silent(true);
                }
                Ok(Some((after(ms), Action::Unsilence)))
            }
            Action::Unsilence => {
                self.note("hub speaks again".to_string());
                if let Some(hub) = &self.hub {
                    hub.set_silent(false);
                }
                Ok(None)
            }
            Action::Fault(Fault::RateLimit { frame_type, retry_after_ms }) => {
                self.counts.rate_limits += 1;
                self.note(format!("hub will rate-limit the next {frame_type} ({retry_after_ms} ms)"));
                if let Some(hub) = &self.hub {
                    hub.rate_limit_next(frame_type, retry_after_ms);
                }
                Ok(None)
            }
        }
    }
}

fn start_hub(bind: SocketAddr, version: HubVersion) -> Result<DevHub, String> {
    // The old port can take a moment to be free again after a stop.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut options = DevHubOptions::for_version(AGENT, TOKEN, version);
        options.bind = bind;
        options.accept_timeout = Duration::from_secs(4);
        options.idle_timeout = None;
        // The hub's real buckets (normal: 60, one a second), which quick
        // agents and a fast schedule run dry: the sidecar paces itself to
        // them (its own rate_limit_* are the hub's defaults). The scheduler's
        // skip after a denial (60 s) and the cooldowns are scaled to the
        // soak's faster lifecycles: a sidecar SIGKILLed with the bucket
        // empty starts with a full model and may be denied once.
        options.limits.rate_limited_for = Duration::from_secs(1);
        options.limits.cooldowns = [Duration::from_secs(1); 3];
        match DevHub::start(options) {
            Ok(hub) => return Ok(hub),
            Err(error) if Instant::now() < deadline && error.kind() == std::io::ErrorKind::AddrInUse => {
                thread::park_timeout(Duration::from_millis(20));
            }
            Err(error) => return Err(format!("devhub on {bind}: {error}")),
        }
    }
}

/// The last `n` bytes of a file, lossy.
fn tail_of(path: &std::path::Path, n: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = Vec::new();
    if let Ok(mut file) = fs::File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(n)));
        let _ = file.take(n).read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// A short line for a frame worth tracing (pings and pongs are not).
fn describe(frame: &Value) -> Option<String> {
    let kind = frame["type"].as_str()?;
    if matches!(kind, "ping" | "pong" | "identify" | "identified") {
        return None;
    }
    let mut text = kind.to_string();
    for key in ["task_id", "generation", "status", "error", "action", "retry_after_ms"] {
        if let Some(value) = frame.get(key) {
            text.push_str(&format!(" {key}={value}"));
        }
    }
    if let Some(reason) = frame.get("reason").or_else(|| frame.get("error")).and_then(Value::as_str) {
        let cut: String = reason.chars().take(80).collect();
        text.push_str(&format!(" reason={cut:?}"));
    }
    if let Some(nonce) = frame["result"]["output"]["soak"]["nonce"].as_str() {
        text.push_str(&format!(" result_from={nonce}"));
    }
    Some(text)
}

impl Soak {
    /// After a lost task the sidecar may be stuck on it: start it afresh (a
    /// new queue and results directory) so the run goes on finding things.
    fn reset(&mut self, task_id: &str) -> Result<(), String> {
        self.note(format!(
            "{task_id}: resetting: sidecar killed, queue.json and results cleared, a fresh hub"
        ));
        if let Some(mut child) = self.sidecar.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.identified = false;
        let _ = fs::remove_file(self.dir.path().join("queue.json"));
        for entry in fs::read_dir(&self.results).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with("soak-") {
                let _ = fs::remove_file(entry.path());
            }
        }
        // A fresh hub too, or it would hand the lost task to the next sidecar.
        if let Some(hub) = self.hub.take() {
            self.hub_stopped_at.insert(self.hub_no, now_ms());
            hub.stop();
        }
        self.carried = None;
        let hub = start_hub(self.addr, self.hub_version)?;
        self.adopt_hub(hub);
        self.start_sidecar()
    }

    /// What only this run's agent processes have on their command line.
    fn agent_marker(&self) -> String {
        self.agent_dir.display().to_string()
    }

    /// `(pid, CPU seconds)` of the running sidecar.
    fn sidecar_cpu(&self) -> Option<(u32, f64)> {
        let pid = self.sidecar.as_ref()?.id();
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // utime and stime are fields 14 and 15 (1-based), in clock ticks.
        let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Some((pid, ticks / hz.max(1.0)))
    }

    /// Records the task's outcomes at a hub about to stop, and what to carry
    /// over to the next one.
    fn collect_outcomes(&mut self, hub: &DevHub, task_id: &str) {
        if let Some(snapshot) = hub.task(task_id) {
            for outcome in snapshot.outcomes {
                self.ledger.outcomes.push((self.hub_no, outcome));
            }
            self.carried = Some((snapshot.status, snapshot.generation));
        }
    }

    fn final_outcome_seen(&self, task_id: &str) -> bool {
        self.ledger.outcomes.iter().any(|(_, o)| o.kind != OutcomeKind::Retried)
            || self
                .hub
                .as_ref()
                .and_then(|hub| hub.task(task_id))
                .is_some_and(|t| matches!(t.status, TaskStatus::Completed | TaskStatus::DeadLetter))
    }

    fn snapshot_outcomes(&mut self, task_id: &str) {
        if let Some(hub) = self.hub.take() {
            if let Some(snapshot) = hub.task(task_id) {
                for outcome in snapshot.outcomes {
                    self.ledger.outcomes.push((self.hub_no, outcome));
                }
            }
            self.hub = Some(hub);
        }
        self.carried = None;
    }

    fn read_logs(&mut self) {
        for value in self.agent_log.read_new() {
            if let Some(event) = checker::agent_event(value) {
                match event.kind.as_str() {
                    "wake_start" => self.counts.wakes += 1,
                    "worker_start" => self.counts.workers += 1,
                    _ => {}
                }
                self.agent_events.push(event);
            }
        }
        for value in self.sidecar_log.read_new() {
            if let (Some(t), Some(task)) = (value["ts"].as_f64(), value["task_id"].as_str()) {
                if value["event"] == "wake_attempt" {
                    self.wake_attempts.push((t, task.to_string()));
                } else if value["event"] == "report_settled" {
                    self.settled_seen.push((t, task.to_string()));
                }
            }
        }
    }

    /// Polls `check` (process and file state have no channel) until it holds or
    /// `WAIT` passes, pumping hub events meanwhile.
    fn wait_until(&mut self, mut check: impl FnMut(&mut Soak) -> bool) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            if check(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.pump(Instant::now() + Duration::from_millis(20));
        }
    }

    fn after_settle(&mut self, task_id: &str) {
        // Let this task's agents finish (they are bounded by their plan).
        let workers_done = self.wait_until(|soak| {
            soak.read_logs();
            !soak.agent_events.iter().any(|e| {
                e.task == task_id
                    && e.kind == "worker_start"
                    && checker::alive_with(e.pid, &soak.agent_marker())
            })
        });
        if !workers_done {
            self.note(format!("{task_id}: an agent worker is still running after {WAIT:?}"));
        }
        // Files that existed when the hub settled the task must go.
        let settled_at = self
            .ledger
            .settles
            .iter()
            .filter(|(_, k)| *k == SettleKind::Ack)
            .map(|(t, _)| *t)
            .fold(0.0, f64::max);
        // File times come from a coarse kernel clock: the agent's own log says
        // better whether it wrote after the settlement.
        let last_agent_write = self
            .agent_events
            .iter()
            .filter(|e| e.task == task_id)
            .filter(|e| matches!(e.kind.as_str(), "started_written" | "result_written" | "result_half"))
            .map(|e| e.t)
            .fold(0.0, f64::max);
        let files = [
            self.results.join(format!("{task_id}.started")),
            self.results.join(format!("{task_id}.json")),
            self.results.join(format!("{task_id}.progress")),
            self.results.join(".tasks").join(format!("{task_id}.json")),
        ];
        for file in files {
            let Some(mtime) = checker::mtime_ms(&file) else { continue };
            if mtime > settled_at + 5.0 || last_agent_write > settled_at - 20.0 {
                self.note(format!(
                    "{task_id}: the agent wrote {} after the settlement; removed by the soak",
                    file.display()
                ));
                let _ = fs::remove_file(&file);
                continue;
            }
            if !self.wait_until(|_| !file.exists()) {
                self.violation(format!(
                    "{task_id}: {} left behind after the hub settled the task",
                    file.display()
                ));
                let _ = fs::remove_file(&file);
            }
        }
        self.check_dir_contents();
    }

    /// No temp file of a killed save outlives the restart; nothing but our
    /// own files next to the queue.
    fn check_dir_contents(&mut self) {
        let mut found = Vec::new();
        for dir in [self.dir.path().to_path_buf(), self.results.join(".tasks"), self.results.clone()] {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                found.push((dir.clone(), entry.file_name().to_string_lossy().into_owned(), entry.path()));
            }
        }
        let run_dir = self.dir.path().to_path_buf();
        for (dir, name, path) in found {
            let in_run = dir == run_dir;
            // The start-up's writability probe (one fixed name, created and
            // removed at once) is a temp file too: seen while a sidecar
            // starts, a violation only if it outlives the restart.
            let is_tmp = name.contains(".tmp")
                || (in_run && name.starts_with(".queue.json"))
                || name == ".agentcom-write-test";
            let expected = if in_run {
                matches!(
                    name.as_str(),
                    "config.json"
                        | "queue.json"
                        | "queue.json.lock"
                        | "stdout.txt"
                        | "stderr.txt"
                        | "results"
                        | "agent"
                ) || name.starts_with("sidecar.log")
            } else {
                // Our agent's own temp files, task files, the task-file folder.
                name.starts_with(".soak-") || name == ".tasks" || name.starts_with("soak-")
            };
            if expected || self.reported_files.contains(&name) {
                continue;
            }
            if is_tmp {
                let old = checker::mtime_ms(&path).is_some_and(|m| m < self.sidecar_started - 5.0);
                if old && self.identified {
                    self.reported_files.insert(name.clone());
                    self.violation(format!(
                        "temp file {} of a killed save still there after the restart",
                        path.display()
                    ));
                }
            } else {
                self.reported_files.insert(name.clone());
                self.violation(format!("unexpected file {}", path.display()));
            }
        }
    }

    fn check(&mut self, task_id: &str, trace_start: usize, violations_before: usize) {
        self.read_logs();
        for (_, outcome) in &self.ledger.outcomes {
            let kind = match outcome.kind {
                OutcomeKind::Completed => "completed",
                OutcomeKind::Retried => "retried",
                OutcomeKind::DeadLetter => "dead_letter",
            };
            *self.counts.outcomes.entry(kind).or_default() += 1;
        }
        let agent: Vec<AgentEvent> =
            self.agent_events.iter().filter(|e| e.task == task_id).cloned().collect();
        let attempts: Vec<f64> =
            self.wake_attempts.iter().filter(|(_, t)| t == task_id).map(|(t, _)| *t).collect();
        let settled_seen: Vec<f64> =
            self.settled_seen.iter().filter(|(_, t)| t == task_id).map(|(t, _)| *t).collect();
        let found = checker::check_task(&checker::TaskRecord {
            task_id,
            outcomes: &self.ledger.outcomes,
            settles: &self.ledger.settles,
            opened: &self.ledger.opened,
            taken_back: &self.ledger.taken_back,
            agent: &agent,
            wake_attempts: &attempts,
            settled_seen: &settled_seen,
        });
        for lost in found.lost_answers {
            println!("soak: lost answer (not a violation): {lost}");
            self.lost_answers.push(lost);
        }
        for violation in found.violations {
            self.violation(violation);
        }
        if self.violations.len() == violations_before {
            return;
        }
        // Print the lifecycle's trace: hub events, faults, agent steps and the
        // sidecar's wake attempts, in time order.
        let mut lines: Vec<TraceEntry> = self.trace[trace_start..].to_vec();
        for event in &agent {
            let mut raw = event.raw.clone();
            if let Some(map) = raw.as_object_mut() {
                for key in ["t", "task", "kind"] {
                    map.remove(key);
                }
            }
            lines.push(TraceEntry { t: event.t, text: format!("agent {} {raw}", event.kind) });
        }
        for t in attempts {
            lines.push(TraceEntry { t, text: "sidecar wake_attempt".to_string() });
        }
        lines.sort_by(|a, b| a.t.total_cmp(&b.t));
        let origin = lines.first().map_or(0.0, |l| l.t);
        println!("---- violations in {task_id}:");
        for violation in &self.violations[violations_before..] {
            println!("  {violation}");
        }
        println!("---- trace of {task_id} (ms from the lifecycle's start):");
        for line in lines {
            println!("  {:>8.1} {}", line.t - origin, line.text);
        }
    }

    /// `settled`: every lifecycle ran to its end, so nothing may be pending.
    fn finish(&mut self, settled: bool) {
        // A clean stop, as pm2 or systemd would do it, of a sidecar that is
        // up: one restarted by the last fault may not have reached its
        // signal handler yet (a stop that early is a kill, which the soak
        // covers already).
        if let Some(mut child) = self.sidecar.take() {
            let deadline = Instant::now() + WAIT;
            while !catches_sigterm(child.id()) && Instant::now() < deadline {
                thread::park_timeout(Duration::from_millis(5));
            }
            // SAFETY: a signal to our own child, which we have not reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + WAIT;
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if Instant::now() < deadline => thread::park_timeout(Duration::from_millis(20)),
                    _ => break None,
                }
            };
            match status {
                Some(status) if status.success() => {}
                other => {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.violation(format!("the sidecar did not stop cleanly on SIGTERM: {other:?}"));
                }
            }
        }
        if let Some(hub) = self.hub.take() {
            hub.stop();
        }
        // Every wake command and agent worker is gone (a short grace for the
        // ones finishing right now).
        self.read_logs();
        let ours: Vec<(u32, String, String)> = self
            .agent_events
            .iter()
            .filter(|e| e.kind == "wake_start" || e.kind == "worker_start")
            .map(|e| (e.pid, e.kind.clone(), e.task.clone()))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(2);
        // The run's own agent directory is on every agent's command line: a
        // reused pid, or another soak's agent, is not ours.
        let marker = self.agent_marker();
        while Instant::now() < deadline && ours.iter().any(|(pid, _, _)| checker::alive_with(*pid, &marker)) {
            thread::park_timeout(Duration::from_millis(20));
        }
        for (pid, kind, task) in ours {
            if checker::alive_with(pid, &marker) {
                self.violation(format!(
                    "orphan process {pid} ({kind} of {task}) still running after the sidecar stopped"
                ));
                // SAFETY: killing a process of ours, identified by its command line.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        // Nothing pending, nothing left.
        if !settled {
            return;
        }
        match fs::read(self.dir.path().join("queue.json")).map(|b| queue_store::parse(&b)) {
            Ok(Ok(queue)) if queue.active.is_none() && queue.recovering.is_none() => {}
            Ok(Ok(_)) => self.violation("queue.json still holds a task at the end".to_string()),
            Ok(Err(error)) => self.violation(format!("queue.json does not parse at the end: {error}")),
            Err(_) => {}
        }
        self.check_dir_contents();
        let leftovers: Vec<String> = fs::read_dir(&self.results)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("soak-"))
            .collect();
        if !leftovers.is_empty() {
            self.violation(format!("task files left in the results directory at the end: {leftovers:?}"));
        }
    }

    fn summary(&self, elapsed: Duration) {
        let c = &self.counts;
        println!("==== soak summary");
        println!(
            "seed {} | {} lifecycles (= tasks) in {:.0} s",
            self.seed,
            c.lifecycles,
            elapsed.as_secs_f64()
        );
        println!(
            "faults: {} SIGKILLs ({} queue.json checks), {} hub restarts, closes {:?}, {} silences, {} rate_limited",
            c.kills, c.queue_checks, c.hub_restarts, c.closes, c.silences, c.rate_limits
        );
        println!(
            "hub: {} connections, {} disconnects, {} take-backs, {} rate_limited sent ({} injected)",
            c.connections, c.disconnects, c.taken_back, c.denials, c.rate_limits
        );
        println!("outcomes: {:?}", c.outcomes);
        println!("agent: {} wake commands, {} workers", c.wakes, c.workers);
        println!("planned wake modes {:?}", c.wake_modes);
        println!("planned worker modes {:?}", c.worker_modes);
        println!(
            "failures reported again after a lost answer (docs/protocol.md 5.3, not violations): {}",
            self.lost_answers.len()
        );
        for lost in &self.lost_answers {
            println!("  {lost}");
        }
        println!("violations: {}", self.violations.len());
        for violation in &self.violations {
            println!("  {violation}");
        }
    }
}

impl Drop for Soak {
    /// An interrupted or failed run leaves no sidecar behind.
    fn drop(&mut self) {
        if let Some(mut child) = self.sidecar.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether process `pid` has a handler for SIGTERM (`SigCgt` in
/// /proc/<pid>/status, a hex mask where signal n is bit n-1).
fn catches_sigterm(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
}
