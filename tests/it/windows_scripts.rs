//! The Windows scripts, run by Wine's (or Windows') cmd: `scripts/start.bat`
//! against a box directory whose `git` and `cargo` are `.cmd` shims (no
//! real git or cargo runs under Wine), and `scripts/example-agent.cmd` with a
//! hostile description. The last good binary is the real sidecar, run as
//! `check`, so its output shows which config and arguments it got.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tempfile::TempDir;

const REPO_ROOT: &str = env!("CARGO_MANIFEST_DIR");
const REV_1: &str = "0123456789abcdef0123456789abcdef01234567";
const REV_2: &str = "1123456789abcdef0123456789abcdef01234568";

const GIT_SHIM: &str = "@echo off\r\n\
echo git %*>>\"%FAKE_LOG%\"\r\n\
if \"%1\"==\"pull\" exit /b %FAKE_PULL_EXIT%\r\n\
if \"%1\"==\"rev-parse\" echo %FAKE_HEAD%\r\n\
exit /b 0\r\n";

const CARGO_SHIM: &str = "@echo off\r\n\
echo cargo %*>>\"%FAKE_LOG%\"\r\n\
if not \"%FAKE_BUILD_EXIT%\"==\"0\" exit /b %FAKE_BUILD_EXIT%\r\n\
copy /y \"%FAKE_BUILT%\" \"target\\release\\agentcom-sidecar.exe\" >nul\r\n\
exit /b 0\r\n";

/// A checkout as start.bat sees it: `box\scripts\start.bat`, a config, and
/// shims for git (HEAD and the pull's exit code set per run) and cargo
/// (fails, or "builds" by copying the sidecar binary into target\release).
struct Checkout {
    dir: TempDir,
}

struct Run {
    output: Output,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "status {:?}\nstdout:\n{}\nstderr:\n{}", self.output.status, self.stdout, self.stderr)
    }
}

impl Checkout {
    fn new() -> Checkout {
        let dir = TempDir::new().unwrap();
        let root = dir.path().join("box");
        fs::create_dir_all(root.join("scripts")).unwrap();
        fs::create_dir_all(root.join("target").join("release")).unwrap();
        fs::create_dir_all(dir.path().join("tools")).unwrap();
        fs::copy(
            Path::new(REPO_ROOT).join("scripts").join("start.bat"),
            root.join("scripts").join("start.bat"),
        )
        .unwrap();
        fs::write(dir.path().join("tools").join("git.cmd"), GIT_SHIM).unwrap();
        fs::write(dir.path().join("tools").join("cargo.cmd"), CARGO_SHIM).unwrap();
        fs::write(
            root.join("config.json"),
            r#"{"agent_id":"box-agent","token":"box-token","hub_url":"ws://127.0.0.1:9/ws"}"#,
        )
        .unwrap();
        Checkout { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("box")
    }

    fn release(&self) -> PathBuf {
        self.root().join("target").join("release")
    }

    fn good_binary(&self) -> PathBuf {
        self.release().join("agentcom-sidecar.last-good.exe")
    }

    fn built_rev(&self) -> String {
        fs::read_to_string(self.release().join(".agentcom-built-rev")).unwrap_or_default().trim().to_owned()
    }

    /// What the shims were asked to do, one line each.
    fn log(&self) -> Vec<String> {
        let text = fs::read_to_string(self.dir.path().join("log.txt")).unwrap_or_default();
        text.lines().map(|l| l.trim().to_owned()).collect()
    }

    fn cargo_runs(&self) -> usize {
        self.log().iter().filter(|l| l.starts_with("cargo build")).count()
    }

    /// Runs `start.bat check` with HEAD at `head`, the pull exiting
    /// `pull_exit` and the build `build_exit`.
    fn start(&self, head: &str, pull_exit: u8, build_exit: u8, env: &[(&str, &str)]) -> Run {
        let path = std::env::var("PATH").unwrap_or_default();
        let output = Command::new("cmd.exe")
            .args(["/d", "/c"])
            .arg(self.root().join("scripts").join("start.bat"))
            .arg("check")
            .env("PATH", format!("{};{path}", self.dir.path().join("tools").display()))
            .env("FAKE_LOG", self.dir.path().join("log.txt"))
            .env("FAKE_HEAD", head)
            .env("FAKE_PULL_EXIT", pull_exit.to_string())
            .env("FAKE_BUILD_EXIT", build_exit.to_string())
            .env("FAKE_BUILT", env!("CARGO_BIN_EXE_agentcom-sidecar"))
            .env_remove("SIDECAR_CONFIG")
            .env_remove("AGENTCOM_SKIP_PULL")
            .env_remove("CARGO_TARGET_DIR")
            .envs(env.iter().copied())
            .output()
            .expect("cmd.exe runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        Run { output, stdout, stderr }
    }
}

impl Run {
    /// The sidecar ran as `check` on the box's config.json.
    fn assert_sidecar_checked(&self) {
        assert!(self.output.status.success(), "{self}");
        let start = self.stdout.find('{').unwrap_or_else(|| panic!("no JSON from check: {self}"));
        let checked: Value =
            serde_json::from_str(&self.stdout[start..]).unwrap_or_else(|e| panic!("{e}: {self}"));
        assert_eq!(checked["agent_id"], "box-agent", "{self}");
        assert_eq!(checked["config_path"], "config.json", "{self}");
    }
}

#[test]
fn start_bat_builds_once_then_runs_the_up_to_date_binary() {
    let b = Checkout::new();
    let run = b.start(REV_1, 0, 0, &[]);
    run.assert_sidecar_checked();
    assert!(run.stderr.contains(&format!("start.bat: building {REV_1} (last good build: none)")), "{run}");
    assert!(run.stderr.contains(&format!("start.bat: built {REV_1}")), "{run}");
    assert_eq!(b.built_rev(), REV_1);
    assert!(b.good_binary().is_file());
    assert_eq!(b.log(), ["git pull --ff-only", "git rev-parse HEAD", "cargo build --release --locked"]);

    let run = b.start(REV_1, 0, 0, &[]);
    run.assert_sidecar_checked();
    assert!(run.stderr.contains(&format!("binary is up to date with {REV_1}; not rebuilding")), "{run}");
    assert_eq!(b.cargo_runs(), 1, "not rebuilt");
}

#[test]
fn start_bat_logs_a_failed_pull_and_starts_the_checkout() {
    let b = Checkout::new();
    b.start(REV_1, 0, 0, &[]).assert_sidecar_checked();
    let run = b.start(REV_1, 1, 0, &[]);
    run.assert_sidecar_checked();
    assert!(
        run.stderr.contains("start.bat: git pull --ff-only failed; starting the code already checked out"),
        "{run}"
    );

    let run = b.start(REV_1, 0, 0, &[("AGENTCOM_SKIP_PULL", "1")]);
    run.assert_sidecar_checked();
    assert!(run.stderr.contains("start.bat: AGENTCOM_SKIP_PULL=1: not pulling"), "{run}");
    assert_eq!(b.log().iter().filter(|l| l.starts_with("git pull")).count(), 2, "{:?}", b.log());
}

#[test]
fn start_bat_keeps_the_last_good_binary_when_a_build_fails() {
    let b = Checkout::new();
    b.start(REV_1, 0, 0, &[]).assert_sidecar_checked();
    let good_before = fs::read(b.good_binary()).unwrap();
    let run = b.start(REV_2, 0, 101, &[]);
    run.assert_sidecar_checked();
    assert!(run.stderr.contains(&format!("start.bat: building {REV_2} (last good build: {REV_1})")), "{run}");
    assert!(
        run.stderr.contains(&format!("build failed; keeping the last good binary (rev {REV_1})")),
        "{run}"
    );
    assert_eq!(b.built_rev(), REV_1, "the stamp still names the last good build");
    assert_eq!(fs::read(b.good_binary()).unwrap(), good_before);
}

#[test]
fn start_bat_refuses_to_start_without_any_good_binary() {
    let b = Checkout::new();
    let run = b.start(REV_1, 0, 101, &[]);
    assert_eq!(run.output.status.code(), Some(1), "{run}");
    assert!(run.stderr.contains("build failed and there is no previous binary to fall back on"), "{run}");
    assert!(!run.stdout.contains("box-agent"), "nothing ran: {run}");
    assert!(!b.good_binary().exists());
}

/// A failed build is remembered: the next start does not build the same
/// revision again (a pm2 restart loop would rebuild every time), until HEAD
/// moves or AGENTCOM_FORCE_BUILD=1.
#[test]
fn start_bat_does_not_retry_a_failed_build_until_head_moves() {
    let b = Checkout::new();
    b.start(REV_1, 0, 0, &[]).assert_sidecar_checked();
    b.start(REV_2, 0, 101, &[]).assert_sidecar_checked();
    assert_eq!(b.cargo_runs(), 2);

    let run = b.start(REV_2, 0, 101, &[]);
    run.assert_sidecar_checked();
    assert!(
        run.stderr.contains(&format!(
            "{REV_2} failed to build before; not retrying until HEAD moves (AGENTCOM_FORCE_BUILD=1 forces it); \
             keeping the last good binary (rev {REV_1})"
        )),
        "{run}"
    );
    assert_eq!(b.cargo_runs(), 2, "not built again");

    let run = b.start(REV_2, 0, 0, &[("AGENTCOM_FORCE_BUILD", "1")]);
    run.assert_sidecar_checked();
    assert!(run.stderr.contains(&format!("start.bat: built {REV_2}")), "{run}");
    assert_eq!((b.cargo_runs(), b.built_rev()), (3, REV_2.to_owned()));

    // A new HEAD is built even though an older one failed.
    b.start(REV_1, 0, 101, &[]).assert_sidecar_checked();
    let run = b.start(REV_2, 0, 0, &[]);
    run.assert_sidecar_checked();
    assert!(run.stderr.contains("binary is up to date"), "{run}");
    assert_eq!(b.cargo_runs(), 4);
}

#[test]
fn start_bat_without_a_good_binary_does_not_retry_a_failed_build_either() {
    let b = Checkout::new();
    assert_eq!(b.start(REV_1, 0, 101, &[]).output.status.code(), Some(1));
    let run = b.start(REV_1, 0, 0, &[]);
    assert_eq!(run.output.status.code(), Some(1), "{run}");
    assert!(
        run.stderr.contains(&format!(
            "{REV_1} failed to build before and there is no previous binary to fall back on; not starting"
        )),
        "{run}"
    );
    assert_eq!(b.cargo_runs(), 1, "not built again");
    b.start(REV_1, 0, 0, &[("AGENTCOM_FORCE_BUILD", "1")]).assert_sidecar_checked();
    assert_eq!(b.cargo_runs(), 2);
}

#[test]
fn example_agent_cmd_writes_started_progress_and_a_result_and_runs_no_task_text() {
    let dir = TempDir::new().unwrap();
    let results_dir = dir.path().join("results");
    fs::create_dir(&results_dir).unwrap();
    let marker = dir.path().join("pwned");
    let description = format!(
        "\" & type nul > \"{m}\" & echo \" %PATH% ^& type nul>{m} | type nul>{m} (x)",
        m = marker.display()
    );
    let task_file = dir.path().join("task.json");
    let task = serde_json::json!({"task_id": "task-42", "description": description});
    fs::write(&task_file, task.to_string()).unwrap();
    // As the sidecar runs a wake command: cmd /V:ON.
    let agent = Path::new(REPO_ROOT).join("scripts").join("example-agent.cmd");
    let output = Command::new("cmd.exe")
        .args(["/d", "/v:on", "/c"])
        .arg(&agent)
        .env("AGENTCOM_TASK_ID", "task-42")
        .env("AGENTCOM_RESULTS_DIR", &results_dir)
        .env("AGENTCOM_TASK_FILE", &task_file)
        .env("AGENTCOM_TASK_DESCRIPTION", &description)
        .env("AGENTCOM_SIDECAR", env!("CARGO_BIN_EXE_agentcom-sidecar"))
        .output()
        .expect("cmd.exe runs");
    assert!(output.status.success(), "{output:?}");

    assert!(results_dir.join("task-42.started").is_file());
    let progress: Value =
        serde_json::from_str(&fs::read_to_string(results_dir.join("task-42.progress")).unwrap()).unwrap();
    assert_eq!(progress, serde_json::json!({"progress": 50, "message": "halfway"}));
    let result: Value =
        serde_json::from_str(&fs::read_to_string(results_dir.join("task-42.json")).unwrap()).unwrap();
    assert_eq!(result, serde_json::json!({"status": "success", "output": task.to_string()}));
    assert_eq!(fs::read_dir(&results_dir).unwrap().count(), 3, "no temporary file left");
    assert!(!marker.exists(), "the description was executed");
}
