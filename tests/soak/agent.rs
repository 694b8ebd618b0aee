//! The soak's agent. The sidecar's wake command runs this same executable
//! (`--soak-agent AGENT_DIR`); it plays one wake command as the task's plan
//! says (fail, hang, exit quickly or slowly) and, when it "wakes the agent",
//! starts a detached worker (`--soak-worker`) that writes `.started`,
//! `.progress` and the result in the way the plan says (in order, result
//! first, twice, late, half-written, never). Two more shapes of agent
//! (docs/protocol.md 8.7): a synchronous script (`Sync`: the wake command does
//! the worker's part itself, then exits), and, with `--soak-agent AGENT_DIR
//! run` (the soak's `--wake-mode run`), a CLI that is the agent: confirmed by
//! its start, it prints its result on stdout, or fails with a non-zero exit.
//!
//! Every step is one line of JSON appended to `AGENT_DIR/agent.log` with a
//! wall-clock time, which the checker reads. A wake command holds an exclusive
//! `flock` on `AGENT_DIR/wake.lock` while it runs (the kernel drops it when
//! the process dies, however it dies): a second wake command that finds it
//! taken logs `wake_overlap`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::prng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WakeMode {
    /// Starts the worker and exits 0 at once.
    Ok,
    /// Starts the worker and exits 0 after `slow_ms` (still running if the
    /// sidecar is killed meanwhile).
    Slow,
    /// Exits 3 without starting anything.
    Fail,
    /// Sleeps `hang_ms` (past `wake_timeout_ms`) without starting anything.
    Hang,
    /// A synchronous script: does the worker's part itself (`.started`,
    /// work, result), then exits 0, often after `wake_timeout_ms`.
    Sync,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerMode {
    /// `.started` after d1, `.progress`, the result after d2 more.
    Normal,
    /// The result, then `.started` after d1.
    ResultFirst,
    /// `.started`, the result after d2, another result d1 later.
    Twice,
    /// `.started`, the result after a long d2.
    Late,
    /// `.started`, half of the result written in place, the rest after d1.
    HalfThenFull,
    /// `.started`, half of the result written in place, never finished.
    HalfForever,
    /// `.started` and nothing else.
    Never,
    /// Nothing at all.
    Silent,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WakePlan {
    pub wake: WakeMode,
    pub slow_ms: u64,
    pub hang_ms: u64,
    pub worker: WorkerMode,
    pub d1: u64,
    pub d2: u64,
    /// The result says `failure` instead of `success`.
    pub failure: bool,
}

/// What the agent does at its 1st, 2nd, ... wake for one task (the last entry
/// repeats).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskPlan {
    pub wakes: Vec<WakePlan>,
}

/// Longest a hanging wake sleeps; it is killed by `wake_timeout_ms` first,
/// unless the sidecar that started it was killed.
pub const MAX_HANG_MS: u64 = 6_000;

impl TaskPlan {
    pub fn random(rng: &mut Rng) -> TaskPlan {
        let wakes = (0..4).map(|_| WakePlan::random(rng)).collect();
        TaskPlan { wakes }
    }

    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .wakes
            .iter()
            .map(|w| format!("{:?}/{:?}{}", w.wake, w.worker, if w.failure { "/failure" } else { "" }))
            .collect();
        parts.join(", ")
    }
}

impl WakePlan {
    /// Wakes at once, works normally, succeeds.
    pub fn reliable() -> WakePlan {
        WakePlan {
            wake: WakeMode::Ok,
            slow_ms: 0,
            hang_ms: 0,
            worker: WorkerMode::Normal,
            d1: 50,
            d2: 100,
            failure: false,
        }
    }

    fn random(rng: &mut Rng) -> WakePlan {
        let wake = rng.weighted(&[
            (45, WakeMode::Ok),
            (15, WakeMode::Slow),
            (15, WakeMode::Fail),
            (10, WakeMode::Hang),
            (15, WakeMode::Sync),
        ]);
        let worker = rng.weighted(&[
            (46, WorkerMode::Normal),
            (8, WorkerMode::ResultFirst),
            (8, WorkerMode::Twice),
            (10, WorkerMode::Late),
            (10, WorkerMode::HalfThenFull),
            (6, WorkerMode::HalfForever),
            (6, WorkerMode::Never),
            (6, WorkerMode::Silent),
        ]);
        let d2 = match worker {
            WorkerMode::Late => rng.range(1_000, 2_500),
            _ => rng.range(20, 600),
        };
        WakePlan {
            wake,
            slow_ms: rng.range(100, 800),
            hang_ms: rng.range(3_000, MAX_HANG_MS),
            worker,
            d1: rng.range(0, 400),
            d2,
            failure: rng.chance(15),
        }
    }
}

pub fn plan_path(agent_dir: &Path, task_id: &str) -> PathBuf {
    agent_dir.join("plans").join(format!("{task_id}.json"))
}

pub fn log_path(agent_dir: &Path) -> PathBuf {
    agent_dir.join("agent.log")
}

/// Unix time in milliseconds, with microseconds.
pub fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

/// Appends one line in one `write` (O_APPEND: lines of concurrent writers do
/// not interleave).
fn log(agent_dir: &Path, mut line: Value) {
    line["t"] = json!(now_ms());
    line["pid"] = json!(std::process::id());
    let mut text = line.to_string();
    text.push('\n');
    if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(log_path(agent_dir)) {
        let _ = file.write_all(text.as_bytes());
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

fn sleep_ms(ms: u64) {
    // The agent's own behaviour, not a wait for something: the plan says how
    // long this agent dawdles.
    thread::sleep(Duration::from_millis(ms));
}

/// `--soak-agent AGENT_DIR`: one wake command.
pub fn wake_main(args: &[String]) -> ExitCode {
    let Some(agent_dir) = args.first().map(PathBuf::from) else {
        eprintln!("usage: --soak-agent AGENT_DIR");
        return ExitCode::from(2);
    };
    let task_id = env("AGENTCOM_TASK_ID");
    let generation = env("AGENTCOM_GENERATION");
    let results_dir = env("AGENTCOM_RESULTS_DIR");

    // Held until this process ends; never inherited (std opens with O_CLOEXEC).
    let lock = File::create(agent_dir.join("wake.lock"));
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let overlap = match &lock {
        Ok(file) => (unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) != 0,
        Err(_) => false,
    };
    let nonce = format!("{}-{}", std::process::id(), now_ms() as u64);
    let earlier = fs::read_to_string(log_path(&agent_dir))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["kind"] == "wake_start" && v["task"] == task_id.as_str())
        .count();
    log(
        &agent_dir,
        json!({"kind": "wake_start", "task": task_id, "gen": generation, "nonce": nonce, "index": earlier}),
    );
    if overlap {
        log(&agent_dir, json!({"kind": "wake_overlap", "task": task_id, "gen": generation, "nonce": nonce}));
    }
    let plan: Option<TaskPlan> =
        fs::read(plan_path(&agent_dir, &task_id)).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let Some(plan) = plan else {
        log(&agent_dir, json!({"kind": "no_plan", "task": task_id, "nonce": nonce}));
        return ExitCode::from(4);
    };
    let step = plan.wakes[earlier.min(plan.wakes.len() - 1)].clone();
    let end = |status: &str| {
        log(&agent_dir, json!({"kind": "wake_end", "task": task_id, "nonce": nonce, "status": status}));
    };
    if args.get(1).map(String::as_str) == Some("run") {
        let code = run_agent(&agent_dir, &task_id, &generation, &nonce, &step);
        end(if code == 0 { "ok" } else { "fail" });
        return ExitCode::from(code);
    }
    match step.wake {
        WakeMode::Sync => {
            let results = PathBuf::from(&results_dir);
            work(&agent_dir, &task_id, &generation, &results, &nonce, &step);
            end("ok");
            drop(lock);
            ExitCode::SUCCESS
        }
        WakeMode::Fail => {
            end("fail");
            ExitCode::from(3)
        }
        WakeMode::Hang => {
            sleep_ms(step.hang_ms);
            end("hang_over");
            ExitCode::SUCCESS
        }
        WakeMode::Ok | WakeMode::Slow => {
            let spawned = Command::new(std::env::current_exe().unwrap_or_default())
                .arg("--soak-worker")
                .arg(&agent_dir)
                .arg(&task_id)
                .arg(&generation)
                .arg(&results_dir)
                .arg(&nonce)
                .arg(serde_json::to_string(&step).unwrap_or_default())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own group: the agent outlives the wake command, as a
                // real agent runtime does.
                .process_group(0)
                .spawn();
            if let Err(error) = spawned {
                log(
                    &agent_dir,
                    json!({"kind": "worker_spawn_failed", "task": task_id, "error": error.to_string()}),
                );
                return ExitCode::from(5);
            }
            if step.wake == WakeMode::Slow {
                sleep_ms(step.slow_ms);
            }
            end("ok");
            drop(lock);
            ExitCode::SUCCESS
        }
    }
}

/// `--soak-worker AGENT_DIR TASK GEN RESULTS_DIR NONCE PLAN_JSON`: the agent
/// doing the work after a wake.
pub fn worker_main(args: &[String]) -> ExitCode {
    let [agent_dir, task_id, generation, results_dir, nonce, plan] = args else {
        eprintln!("usage: --soak-worker AGENT_DIR TASK GEN RESULTS_DIR NONCE PLAN_JSON");
        return ExitCode::from(2);
    };
    let Ok(step) = serde_json::from_str::<WakePlan>(plan) else {
        return ExitCode::from(2);
    };
    work(Path::new(agent_dir), task_id, generation, Path::new(results_dir), nonce, &step);
    ExitCode::SUCCESS
}

/// Run mode: the wake command is the agent. Its start is the confirmation
/// (logged as `started_written`: the sidecar wrote `.started` before it ran);
/// it works, then prints its result on stdout (exit 0) or its failure on
/// stderr (exit 1); a `Fail` plan exits 3 at once, a `Hang` plan works
/// `hang_ms` and prints nothing. The exit status.
fn run_agent(agent_dir: &Path, task_id: &str, generation: &str, nonce: &str, step: &WakePlan) -> u8 {
    log(agent_dir, json!({"kind": "started_written", "task": task_id, "nonce": nonce}));
    match step.wake {
        WakeMode::Fail => {
            eprintln!("soak cli agent: cannot reach the model");
            return 3;
        }
        WakeMode::Hang => {
            sleep_ms(step.hang_ms);
            return 0;
        }
        WakeMode::Ok | WakeMode::Slow | WakeMode::Sync => sleep_ms(step.d1 + step.d2),
    }
    let variant = "a";
    log(agent_dir, json!({"kind": "result_written", "task": task_id, "nonce": nonce, "variant": variant}));
    if step.failure {
        eprintln!("thinking...\nsoak agent failure nonce={nonce} variant={variant}");
        return 1;
    }
    let soak = json!({"soak": {"task": task_id, "gen": generation, "nonce": nonce, "variant": variant}});
    println!("{soak}");
    0
}

/// The agent's work after a wake, as the plan's worker mode says.
fn work(agent_dir: &Path, task_id: &str, generation: &str, results: &Path, nonce: &str, step: &WakePlan) {
    log(agent_dir, json!({"kind": "worker_start", "task": task_id, "nonce": nonce}));
    let result_of = |variant: &str| -> Vec<u8> {
        let value = if step.failure {
            json!({"status": "failure", "reason": format!("soak agent failure nonce={nonce} variant={variant}")})
        } else {
            json!({"status": "success", "output": {"soak": {"task": task_id, "gen": generation, "nonce": nonce, "variant": variant}}})
        };
        value.to_string().into_bytes()
    };
    let started = || {
        let _ = fs::write(results.join(format!("{task_id}.started")), b"");
        log(agent_dir, json!({"kind": "started_written", "task": task_id, "nonce": nonce}));
    };
    let result = |variant: &str| {
        let tmp = results.join(format!(".soak-{nonce}.tmp"));
        let _ = fs::write(&tmp, result_of(variant));
        let _ = fs::rename(&tmp, results.join(format!("{task_id}.json")));
        log(
            agent_dir,
            json!({"kind": "result_written", "task": task_id, "nonce": nonce, "variant": variant}),
        );
    };
    let half = |variant: &str| {
        let bytes = result_of(variant);
        let _ = fs::write(results.join(format!("{task_id}.json")), &bytes[..bytes.len() / 2]);
        log(agent_dir, json!({"kind": "result_half", "task": task_id, "nonce": nonce, "variant": variant}));
    };
    let progress = || {
        let _ =
            fs::write(results.join(format!("{task_id}.progress")), br#"{"progress":50,"message":"soak"}"#);
    };
    match step.worker {
        WorkerMode::Normal => {
            sleep_ms(step.d1);
            started();
            progress();
            sleep_ms(step.d2);
            result("a");
        }
        WorkerMode::ResultFirst => {
            result("a");
            sleep_ms(step.d1);
            started();
        }
        WorkerMode::Twice => {
            started();
            sleep_ms(step.d2);
            result("a");
            sleep_ms(step.d1);
            result("b");
        }
        WorkerMode::Late => {
            sleep_ms(step.d1);
            started();
            sleep_ms(step.d2);
            result("a");
        }
        WorkerMode::HalfThenFull => {
            started();
            sleep_ms(step.d2);
            half("a");
            // Well inside result_settle_ms: a slow writer, not a broken one.
            sleep_ms(step.d1.min(150));
            let _ = fs::write(results.join(format!("{task_id}.json")), result_of("a"));
            log(
                agent_dir,
                json!({"kind": "result_written", "task": task_id, "nonce": nonce, "variant": "a"}),
            );
        }
        WorkerMode::HalfForever => {
            started();
            sleep_ms(step.d2);
            half("a");
        }
        WorkerMode::Never => started(),
        WorkerMode::Silent => {}
    }
    log(agent_dir, json!({"kind": "worker_end", "task": task_id, "nonce": nonce}));
}
