//! The real pm2 running `scripts/ecosystem.config.js`, against the
//! development hub on loopback, in a private `PM2_HOME`.
//!
//! The box is a git checkout holding copies of the scripts, whose HEAD is
//! already built: `target/release/agentcom-sidecar.last-good` is the binary
//! cargo built for this test run, and the build stamp names HEAD. `cargo` on
//! pm2's PATH is a shim that records any call and fails, so a rebuild cannot
//! go unnoticed. Ignored in a plain `cargo test` (pm2 is not a prerequisite);
//! `.ci/run` installs pm2 and runs it with `--ignored`, where a missing pm2
//! fails it.
//!
//! Every wait is on a hub event, a file or pm2's own process list, with a
//! deadline. A guard runs `pm2 kill` on the private home, even on failure.
//! Linux only: it reads process states from /proc.

#![cfg(target_os = "linux")]

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use agentcom_sidecar::devhub::{DevHub, DevHubEvent, OutcomeKind, TaskStatus};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::support::{config, start_hub, AGENT};

const REPO_ROOT: &str = env!("CARGO_MANIFEST_DIR");
const APP: &str = "agentcom-sidecar";
/// pm2 restarts a crashed app after its restart delay (5 s in the
/// ecosystem file), and each pm2 command takes a second or two on a busy
/// machine: waits here get more room than the suite's failsafe.
const DEADLINE: Duration = Duration::from_secs(60);

#[test]
#[ignore = "needs pm2 (`npm install -g pm2@7`): run by .ci/run with --ignored"]
fn the_real_pm2_runs_stops_and_restarts_the_sidecar() {
    // Asked for by name: a missing pm2 fails it, never an "ok" that ran nothing.
    let pm2_path =
        pm2_on_path().expect("pm2 is not on PATH (.ci/run installs it with `npm install -g pm2@7`)");
    println!("pm2 test with {}", pm2_path.display());
    let hub = start_hub();
    let fleet = PmBox::new();
    let pm2 = Pm2::new(&fleet);

    // Started through the ecosystem file, it identifies at the hub.
    fleet.write_config(&hub, Some(&hanging_wake(&fleet.agent)), false);
    pm2.run_ok(&["start", fleet.ecosystem().to_str().unwrap()]);
    let conn = wait_identified(&hub);
    let pid = pm2.wait_online(None);
    let cmdline = fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(cmdline.contains("agentcom-sidecar.last-good"), "pm2's process is the sidecar: {cmdline:?}");
    // One timestamp per line, of fixed width: the sidecar's and start.sh's
    // own; pm2 adds none.
    let logs = pm2.logs();
    assert!(logs.contains(" start.sh: ") && logs.contains(" [INFO] "), "{logs}");
    for line in logs.lines().filter(|line| !line.is_empty()) {
        assert!(starts_with_timestamp(line), "no timestamp of fixed width: {line:?}");
        assert!(
            !starts_with_timestamp(&line[25..]) && !line[25..].starts_with("20"),
            "two timestamps: {line:?}"
        );
    }

    // `pm2 restart` with nothing new: a restart, no build.
    pm2.run_ok(&["restart", APP]);
    wait_disconnected(&hub, conn);
    let conn = wait_identified(&hub);
    pm2.wait_online(Some(pid));
    assert_eq!(fleet.cargo_calls(), "", "cargo ran on a restart with nothing changed");
    assert!(pm2.logs().contains("not rebuilding"), "{}", pm2.logs());

    // `pm2 stop` while a wake command runs: SIGINT, a clean exit, and no
    // process of the wake command left.
    let first = hub.push_task(AGENT, "hangs in its wake command", json!({}));
    let grandchild = wait_file(&fleet.agent.join("grandchild.pid"));
    let pm2_log_before = pm2.daemon_log().len();
    pm2.run_ok(&["stop", APP]);
    wait_disconnected(&hub, conn);
    wait_until("the wake command's child to be gone", || process_gone(&grandchild).then_some(()));
    let stopped_log = pm2.daemon_log()[pm2_log_before..].to_owned();
    assert!(stopped_log.contains("exited with code [0] via signal [SIGINT]"), "{stopped_log}");
    assert!(!stopped_log.contains("SIGKILL"), "{stopped_log}");
    assert_eq!(pm2.app()["pm2_env"]["status"], "stopped");

    // Started again with an agent that confirms (and an update command for
    // the end): the first task is finished.
    fleet.write_config(&hub, Some(&confirming_wake()), true);
    pm2.run_ok(&["start", APP]);
    wait_identified(&hub);
    let pid = pm2.wait_online(None);
    write_result(&fleet.results(), &first, "first");
    wait_until("the first task to complete at the hub", || {
        (hub.task(&first)?.status == TaskStatus::Completed).then_some(())
    });

    // kill -9 while the agent works on a task: pm2 starts the sidecar again,
    // the task is recovered, and the hub gets exactly one outcome.
    let second = hub.push_task(AGENT, "survives a kill -9", json!({}));
    let started = fleet.results().join(format!("{second}.started"));
    wait_until("the agent to confirm the second task", || started.exists().then_some(()));
    let restarts = pm2.restarts();
    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    let pid = pm2.wait_online(Some(pid));
    assert_eq!(pm2.restarts(), restarts + 1);
    wait_identified(&hub);
    write_result(&fleet.results(), &second, "second");
    wait_until("the second task to complete at the hub", || {
        (hub.task(&second)?.status == TaskStatus::Completed).then_some(())
    });
    let outcomes = hub.task(&second).unwrap().outcomes;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0].kind, OutcomeKind::Completed);
    assert_eq!(outcomes[0].result, Some(json!({"status": "success", "output": "second"})));
    assert!(fleet.recovered(&second), "the restarted sidecar reported {second} as recovering");

    // The hub's restart_sidecar: the sidecar runs update.sh, which finds
    // the binary for HEAD ready and restarts it through pm2.
    let restarts = pm2.restarts();
    assert!(hub.send_raw(AGENT, json!({"type": "restart_sidecar", "reason": "test"})));
    hub.wait_for(DEADLINE, |e| matches!(e, DevHubEvent::Disconnected { .. }))
        .expect("the sidecar's connection closes for the restart");
    let down = Instant::now();
    wait_identified(&hub);
    println!("restart_sidecar under pm2: no sidecar at the hub for {} ms", down.elapsed().as_millis());
    pm2.wait_online(Some(pid));
    assert_eq!(pm2.restarts(), restarts + 1);
    let update_log = wait_until("update.sh to finish", || {
        let log = fs::read_to_string(fleet.agent.join("update.log")).unwrap_or_default();
        log.contains("update.sh: restarted").then_some(log)
    });
    assert!(update_log.contains("is ready; restarting: pm2 restart 0"), "{update_log}");
    assert_eq!(fleet.cargo_calls(), "", "cargo ran although HEAD never moved");
}

/// Issue 17: a run-mode agent (the wake command is the agent) works on
/// through `pm2 restart` and `pm2 stop` + `pm2 start` of the sidecar. pm2
/// signals only the sidecar (`treekill: false` in the ecosystem file; with
/// pm2's default it would SIGINT the agent too, and SIGKILL it after
/// `kill_timeout`); the sidecar leaves the agent running, the next one finds
/// it, and the hub gets exactly one outcome, the agent's stdout intact. The
/// agent started once: same pid throughout, one line in `starts`.
#[test]
#[ignore = "needs pm2 (`npm install -g pm2@7`): run by .ci/run with --ignored"]
fn a_run_mode_agent_outlives_pm2_restart_and_stop() {
    pm2_on_path().expect("pm2 is not on PATH (.ci/run installs it with `npm install -g pm2@7`)");
    let hub = start_hub();
    let fleet = PmBox::new();
    let pm2 = Pm2::new(&fleet);
    let agent = RunAgent::new(&fleet.agent);
    fleet.write_config_with(&hub, |cfg| {
        cfg["wake_mode"] = json!("run");
        cfg["wake_command"] = json!(agent.command());
    });
    pm2.run_ok(&["start", fleet.ecosystem().to_str().unwrap()]);
    let conn = wait_identified(&hub);
    let sidecar = pm2.wait_online(None);

    let task = hub.push_task(AGENT, "works through pm2 restarts", json!({}));
    let agent_pid = agent.wait_started();
    wait_until("the task to be working", || {
        let queue: Value = serde_json::from_slice(&fs::read(fleet.agent.join("queue.json")).ok()?).ok()?;
        (queue["active"]["status"] == "working").then_some(())
    });

    // `pm2 restart`: SIGINT to the sidecar alone, the agent works on.
    let log_before = pm2.daemon_log().len();
    pm2.run_ok(&["restart", APP]);
    wait_disconnected(&hub, conn);
    let conn = wait_identified(&hub);
    let sidecar = pm2.wait_online(Some(sidecar));
    fleet.wait_found_running(1);
    assert!(alive(agent_pid), "the agent outlives `pm2 restart`\n{}", pm2.logs());
    let restart_log = pm2.daemon_log()[log_before..].to_owned();
    assert!(restart_log.contains("exited with code [0] via signal [SIGINT]"), "{restart_log}");
    assert!(!restart_log.contains("SIGKILL"), "{restart_log}");

    // `pm2 stop`, then `pm2 start`: the agent runs on while no sidecar does.
    let stopping = Instant::now();
    pm2.run_ok(&["stop", APP]);
    // Well under kill_timeout (5 s): pm2 returns once the sidecar is gone.
    println!("pm2 stop with a run-mode agent at work: {} ms", stopping.elapsed().as_millis());
    wait_disconnected(&hub, conn);
    assert_eq!(pm2.app()["pm2_env"]["status"], "stopped");
    assert!(alive(agent_pid), "the agent outlives `pm2 stop`\n{}", pm2.logs());
    pm2.run_ok(&["start", APP]);
    wait_identified(&hub);
    pm2.wait_online(Some(sidecar));
    fleet.wait_found_running(2);
    assert!(alive(agent_pid), "the agent outlives `pm2 start`\n{}", pm2.logs());

    // The agent finishes: one outcome, its JSON object intact, one start.
    agent.finish();
    wait_until("the task to complete at the hub", || {
        (hub.task(&task)?.status == TaskStatus::Completed).then_some(())
    });
    let outcomes = hub.task(&task).unwrap().outcomes;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0].kind, OutcomeKind::Completed);
    assert_eq!(
        outcomes[0].result,
        Some(json!({"status": "success", "output": {"type": "result", "result": "survived pm2"}}))
    );
    assert_eq!(agent.starts(), vec![agent_pid], "the agent started once");
}

/// The run-mode stand-in: logs its pid to `starts`, works until the test
/// creates `go`, then prints a JSON object as `claude -p --output-format
/// json` would. Dropping it ends the agent, should the test fail before it
/// finished (pm2 leaves it running, as it should).
struct RunAgent {
    dir: PathBuf,
}

impl RunAgent {
    fn new(dir: &Path) -> RunAgent {
        let dir = dir.join("run-agent");
        fs::create_dir_all(&dir).unwrap();
        let script = format!(
            "D='{}'\necho \"$$\" >> \"$D/starts\"\nwhile [ ! -e \"$D/go\" ]; do sleep 0.05; done\n\
             printf '%s\\n' '{{\"type\":\"result\",\"result\":\"survived pm2\"}}'\n",
            dir.display()
        );
        fs::write(dir.join("agent.sh"), script).unwrap();
        RunAgent { dir }
    }

    fn command(&self) -> String {
        format!("sh '{}'", self.dir.join("agent.sh").display())
    }

    fn starts(&self) -> Vec<u32> {
        let text = fs::read_to_string(self.dir.join("starts")).unwrap_or_default();
        text.lines().filter_map(|line| line.trim().parse().ok()).collect()
    }

    fn wait_started(&self) -> u32 {
        wait_until("the agent to start", || self.starts().first().copied())
    }

    fn finish(&self) {
        fs::write(self.dir.join("go"), "").unwrap();
    }
}

impl Drop for RunAgent {
    fn drop(&mut self) {
        self.finish();
    }
}

fn alive(pid: u32) -> bool {
    !process_gone(&pid.to_string())
}

/// The box: a checkout with the scripts and HEAD already built, the agent's
/// directory (config, queue, results, lifecycle log), and the cargo shim.
struct PmBox {
    _dir: TempDir,
    root: PathBuf,
    checkout: PathBuf,
    agent: PathBuf,
    tools: PathBuf,
}

impl PmBox {
    fn new() -> PmBox {
        let dir = TempDir::new().unwrap();
        let root = dir.path().to_path_buf();
        let checkout = root.join("box");
        let agent = root.join("agent");
        let tools = root.join("tools");
        for d in [&checkout.join("scripts"), &agent, &tools] {
            fs::create_dir_all(d).unwrap();
        }
        for script in ["start.sh", "update.sh", "ecosystem.config.js"] {
            fs::copy(
                Path::new(REPO_ROOT).join("scripts").join(script),
                checkout.join("scripts").join(script),
            )
            .unwrap();
        }
        fs::write(checkout.join(".gitignore"), "/target\n/logs\n").unwrap();
        fs::write(root.join("gitconfig"), "").unwrap();
        let git = |args: &[&str]| {
            let output = Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"])
                .args(args)
                .current_dir(&checkout)
                .env("GIT_CONFIG_GLOBAL", root.join("gitconfig"))
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .output()
                .expect("git is required by the pm2 test");
            assert!(output.status.success(), "git {args:?}: {output:?}");
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        };
        git(&["init", "-q", "-b", "main"]);
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", "scripts"]);
        let head = git(&["rev-parse", "HEAD"]);

        let release = checkout.join("target/release");
        fs::create_dir_all(&release).unwrap();
        fs::copy(env!("CARGO_BIN_EXE_agentcom-sidecar"), release.join("agentcom-sidecar.last-good")).unwrap();
        fs::write(release.join(".agentcom-built-rev"), format!("{head}\n")).unwrap();

        let shim = tools.join("cargo");
        fs::write(
            &shim,
            format!("#!/bin/sh\nprintf '%s\\n' \"$*\" >>'{}'\nexit 1\n", root.join("cargo-calls").display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();
        PmBox { _dir: dir, root, checkout, agent, tools }
    }

    fn ecosystem(&self) -> PathBuf {
        self.checkout.join("scripts/ecosystem.config.js")
    }

    fn config_path(&self) -> PathBuf {
        self.agent.join("config.json")
    }

    fn results(&self) -> PathBuf {
        self.agent.join("results")
    }

    /// With `update`, the hub's restart_sidecar runs the box's update.sh.
    fn write_config(&self, hub: &DevHub, wake_command: Option<&str>, update: bool) {
        self.write_config_with(hub, |cfg| {
            if let Some(command) = wake_command {
                cfg["wake_command"] = json!(command);
            }
            if update {
                cfg["update_command"] = json!(self.checkout.join("scripts/update.sh"));
            }
        });
    }

    fn write_config_with(&self, hub: &DevHub, tweak: impl FnOnce(&mut Value)) {
        let mut cfg = config(&self.agent, &hub.url());
        tweak(&mut cfg);
        fs::write(self.config_path(), serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    }

    /// Waits until the lifecycle log has `count` records of a sidecar that
    /// started and found the run-mode agent still running.
    fn wait_found_running(&self, count: usize) {
        wait_until("the next sidecar to find the agent running", || {
            let log = fs::read_to_string(self.agent.join("sidecar.log")).unwrap_or_default();
            (log.matches("\"found\":\"running\"").count() >= count).then_some(())
        });
    }

    fn cargo_calls(&self) -> String {
        fs::read_to_string(self.root.join("cargo-calls")).unwrap_or_default()
    }

    /// Whether the lifecycle log records a task_recovering sent for `task_id`.
    fn recovered(&self, task_id: &str) -> bool {
        let log = fs::read_to_string(self.agent.join("sidecar.log")).unwrap_or_default();
        log.lines().any(|line| line.contains(task_id) && line.contains("recover"))
    }
}

/// pm2 with a private home. Dropping it runs `pm2 kill` on that home, which
/// stops the daemon and every process it started.
struct Pm2 {
    home: PathBuf,
    path: OsString,
    config: PathBuf,
    logs_dir: PathBuf,
}

impl Pm2 {
    fn new(fleet: &PmBox) -> Pm2 {
        let mut paths = vec![fleet.tools.clone()];
        paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
        Pm2 {
            home: fleet.root.join("pm2-home"),
            path: std::env::join_paths(paths).unwrap(),
            config: fleet.config_path(),
            logs_dir: fleet.checkout.join("logs"),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("pm2");
        command
            .args(args)
            .env("PM2_HOME", &self.home)
            .env("PATH", &self.path)
            .env("SIDECAR_CONFIG", &self.config)
            // No remote in the box: the pull would only fail, noisily.
            .env("AGENTCOM_SKIP_PULL", "1")
            .env_remove("pm_id")
            .env_remove("AGENTCOM_RESTART_COMMAND")
            .env_remove("CARGO_TARGET_DIR");
        command
    }

    fn run_ok(&self, args: &[&str]) -> Output {
        let output = self.command(args).output().expect("pm2 runs");
        assert!(output.status.success(), "pm2 {args:?} failed: {output:?}\n{}", self.logs());
        output
    }

    /// pm2's entry for the sidecar, from `pm2 jlist`.
    fn app(&self) -> Value {
        let output = self.run_ok(&["jlist"]);
        let list: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("pm2 jlist is not JSON ({e}): {output:?}"));
        list.as_array()
            .and_then(|apps| apps.iter().find(|app| app["name"] == APP))
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn restarts(&self) -> u64 {
        self.app()["pm2_env"]["restart_time"].as_u64().unwrap_or(0)
    }

    /// Waits until pm2 reports the app online with a pid other than `old`.
    fn wait_online(&self, old: Option<u32>) -> u32 {
        wait_until("pm2 to report the sidecar online", || {
            let app = self.app();
            let pid = app["pid"].as_u64().filter(|pid| *pid > 0)? as u32;
            (app["pm2_env"]["status"] == "online" && Some(pid) != old).then_some(pid)
        })
    }

    /// pm2's own log (starts, exits and the signal that ended a process).
    fn daemon_log(&self) -> String {
        fs::read_to_string(self.home.join("pm2.log")).unwrap_or_default()
    }

    /// The app's stdout and stderr as pm2 wrote them.
    fn logs(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.logs_dir.join(name)).unwrap_or_default();
        format!("{}{}", read("agentcom-sidecar.out.log"), read("agentcom-sidecar.err.log"))
    }
}

impl Drop for Pm2 {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- pm2 logs\n{}\n--- pm2 daemon log\n{}", self.logs(), self.daemon_log());
        }
        let _ = self.command(&["kill"]).output();
    }
}

/// Where `pm2` is on PATH. (Not `pm2 --version`: any pm2 command starts a
/// daemon.)
fn pm2_on_path() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join("pm2")).find(|path| path.is_file())
}

/// `2026-12-01T21:16:24.180Z ` exactly.
fn starts_with_timestamp(line: &str) -> bool {
    let bytes = line.as_bytes();
    bytes.len() > 25
        && bytes[..25].iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            13 | 16 => *b == b':',
            19 => *b == b'.',
            23 => *b == b'Z',
            24 => *b == b' ',
            _ => b.is_ascii_digit(),
        })
}

fn hanging_wake(dir: &Path) -> String {
    format!("sh -c 'echo $$ > \"$0\"; exec sleep 30' '{}'; true", dir.join("grandchild.pid").display())
}

fn confirming_wake() -> String {
    ": > \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.started\"".to_owned()
}

fn write_result(results: &Path, task_id: &str, output: &str) {
    let temp = results.join(format!(".{task_id}.json.tmp"));
    fs::write(&temp, json!({"status": "success", "output": output}).to_string()).unwrap();
    fs::rename(temp, results.join(format!("{task_id}.json"))).unwrap();
}

fn wait_identified(hub: &DevHub) -> u64 {
    let event = hub
        .wait_for(DEADLINE, |e| matches!(e, DevHubEvent::Identified { .. }))
        .expect("the sidecar identifies at the hub");
    match event {
        DevHubEvent::Identified { conn, .. } => conn,
        _ => unreachable!(),
    }
}

fn wait_disconnected(hub: &DevHub, conn: u64) {
    hub.wait_for(DEADLINE, |e| matches!(e, DevHubEvent::Disconnected { conn: c, .. } if *c == conn))
        .expect("the sidecar's connection closes");
}

fn wait_file(path: &Path) -> String {
    wait_until(&format!("{}", path.display()), || {
        fs::read_to_string(path)
            .ok()
            .filter(|text| !text.trim().is_empty())
            .map(|text| text.trim().to_owned())
    })
}

fn process_gone(pid: &str) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Gone, or a zombie waiting for init to reap it.
    stat.is_empty() || stat.contains(") Z ")
}

fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::park_timeout(Duration::from_millis(50));
    }
}
