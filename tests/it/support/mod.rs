//! Shared helpers for the integration tests: the real sidecar binary as a
//! child process, the development hub in-process, and waits with deadlines.

// Mints its CA with OpenSSL, a Unix-only dev-dependency; on Windows a
// stand-in that fails (the TLS tests are ignored there, with the reason).
#[cfg_attr(windows, path = "tls_unavailable.rs")]
pub mod tls;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use agentcom_sidecar::devhub::{DevHub, DevHubEvent, DevHubOptions};
use serde_json::{json, Value};

pub const AGENT: &str = "test-agent";
pub const TOKEN: &str = "tok-SECRET-0f3a9c";
/// Generous failsafe for waits: tests wait on conditions, and this only
/// bounds how long a broken build hangs.
pub const FAILSAFE: Duration = Duration::from_secs(15);

pub fn start_hub() -> DevHub {
    DevHub::start(DevHubOptions::new(AGENT, TOKEN)).expect("dev hub starts")
}

/// A hub that dead-letters a task on its first failure. A hub that retries
/// pushes a failed task again at once, and the sidecar's next attempt (a
/// wake that fails in microseconds) can add to what a test counts after
/// the `task_failed` it waited for.
pub fn start_hub_that_dead_letters() -> DevHub {
    DevHub::start(DevHubOptions { max_retries: 1, ..DevHubOptions::new(AGENT, TOKEN) })
        .expect("dev hub starts")
}

/// A config with short timers for a sidecar in `dir`, talking to `hub_url`.
pub fn config(dir: &Path, hub_url: &str) -> Value {
    json!({
        "agent_id": AGENT,
        "token": TOKEN,
        "hub_url": hub_url,
        "results_dir": dir.join("results"),
        "log_file": dir.join("sidecar.log"),
        "queue_file": dir.join("queue.json"),
        "heartbeat_interval_ms": 5_000,
        "pong_timeout_ms": 2_000,
        "reconnect_initial_ms": 100,
        "reconnect_max_ms": 400,
        "connect_timeout_ms": 3_000,
        "confirmation_timeout_ms": 5_000,
        "wake_timeout_ms": 5_000,
        "wake_retry_delays_ms": [100, 200, 300],
        "result_settle_ms": 500,
        "shutdown_grace_ms": 300,
        "log_level": "debug",
    })
}

/// The sidecar binary running as a child process.
pub struct Sidecar {
    pub dir: PathBuf,
    child: Option<Child>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Sidecar {
    /// Writes `config` to `dir/config.json` and starts the binary on it.
    pub fn start(dir: &Path, config: &Value) -> Sidecar {
        Sidecar::start_with_env(dir, config, &[])
    }

    pub fn start_with_env(dir: &Path, config: &Value, env: &[(&str, &str)]) -> Sidecar {
        Sidecar::start_binary(Path::new(env!("CARGO_BIN_EXE_agentcom-sidecar")), dir, config, env)
    }

    /// As `start_with_env`, from a copy of the binary at `exe`.
    pub fn start_binary(exe: &Path, dir: &Path, config: &Value, env: &[(&str, &str)]) -> Sidecar {
        fs::create_dir_all(dir).unwrap();
        let config_path = dir.join("config.json");
        fs::write(&config_path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        // Each run appends, so restarts keep earlier output for the checks.
        let stdout = dir.join("stdout.txt");
        let stderr = dir.join("stderr.txt");
        let open = |p: &Path| fs::OpenOptions::new().create(true).append(true).open(p).unwrap();
        let mut command = Command::new(exe);
        command
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(open(&stdout))
            .stderr(open(&stderr))
            .env_remove("AGENTCOM_FAILPOINT");
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("the sidecar binary starts");
        Sidecar { dir: dir.to_path_buf(), child: Some(child), stdout, stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a Unix signal with kill(1). The signal tests are ignored on
    /// Windows; run anyway, they fail here.
    pub fn signal(&self, signal: &str) {
        #[cfg(windows)]
        panic!("Unix signals (kill -{signal}) do not exist on Windows");
        #[cfg(unix)]
        {
            let status =
                Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().unwrap();
            assert!(status.success(), "kill -{signal} failed");
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::park_timeout(Duration::from_millis(5));
        }
    }

    /// `taskkill /F`, as an operator would, and waits until it is gone (no
    /// clean-up at all, as [`kill9`](Sidecar::kill9)).
    #[cfg(windows)]
    pub fn taskkill(&mut self) {
        let status = Command::new("taskkill")
            .args(["/F", "/PID", &self.pid().to_string()])
            .status()
            .expect("taskkill runs");
        assert!(status.success(), "taskkill /F: {status:?}");
        self.wait_exit(FAILSAFE).expect("the sidecar is gone");
    }

    /// SIGKILL: no clean-up at all, like a power cut for the process.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
        format!("{}{}", read(&self.stdout), read(&self.stderr))
    }

    pub fn lifecycle(&self) -> String {
        fs::read_to_string(self.dir.join("sidecar.log")).unwrap_or_default()
    }

    pub fn results_dir(&self) -> PathBuf {
        self.dir.join("results")
    }

    pub fn queue(&self) -> Value {
        serde_json::from_slice(&fs::read(self.dir.join("queue.json")).expect("queue.json exists"))
            .expect("queue.json parses")
    }

    /// Waits until the process output contains `needle`.
    pub fn wait_output(&self, needle: &str) -> String {
        wait_until(&format!("output containing {needle:?}"), || {
            let out = self.output();
            out.contains(needle).then_some(out)
        })
    }

    /// The token must never reach any output or log of ours.
    pub fn assert_no_token_anywhere(&self) {
        for entry in walk(&self.dir) {
            if entry.file_name().is_some_and(|n| n == "config.json") {
                continue;
            }
            let text = fs::read(&entry).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&text).contains(TOKEN),
                "the token leaked into {}",
                entry.display()
            );
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Waits until `queue.json` in `dir` records the running wake command
/// (`wake_process`): from then on it is released to run, and may outlive
/// the sidecar.
pub fn wait_until_recorded(dir: &Path) {
    let queue = dir.join("queue.json");
    wait_until("the wake command recorded in queue.json", || {
        fs::read_to_string(&queue).ok().filter(|q| q.contains("\"wake_process\"")).map(|_| ())
    });
}

/// Polls `check` until it returns `Some`, with a deadline. For files and
/// process state, which have no channel to wait on.
pub fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + FAILSAFE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

/// Waits for a frame of `frame_type` received by the hub, checking on the way
/// that every frame the sidecar sends is well formed.
pub fn expect_received(hub: &DevHub, frame_type: &str) -> Value {
    let mut found = None;
    hub.wait_for(FAILSAFE, |event| {
        if let DevHubEvent::Received { frame, .. } = event {
            check_sidecar_frame(frame);
            if frame["type"] == frame_type {
                found = Some(frame.clone());
                return true;
            }
        }
        false
    });
    found.unwrap_or_else(|| panic!("the hub received no {frame_type} frame"))
}

/// Waits for any event matching `pred`.
pub fn expect_event(hub: &DevHub, what: &str, mut pred: impl FnMut(&DevHubEvent) -> bool) -> DevHubEvent {
    hub.wait_for(FAILSAFE, |event| {
        if let DevHubEvent::Received { frame, .. } = event {
            check_sidecar_frame(frame);
        }
        pred(event)
    })
    .unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

pub fn expect_identified(hub: &DevHub) {
    expect_event(hub, "identified", |e| matches!(e, DevHubEvent::Identified { .. }));
}

/// Every frame the sidecar sends carries `protocol_version: 1` and a type
/// docs/protocol.md lets a sidecar send.
pub fn check_sidecar_frame(frame: &Value) {
    assert_eq!(frame["protocol_version"], 1, "frame without protocol_version: {frame}");
    let frame_type = frame["type"].as_str().unwrap_or_default();
    assert!(
        agentcom_sidecar::protocol::SENDABLE_TYPES.contains(&frame_type),
        "the sidecar sent a frame type docs/protocol.md does not list: {frame}"
    );
}
