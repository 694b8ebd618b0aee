//! The agent author's kit, through the real binary: the reporting helpers
//! (`agentcom-sidecar agent ...`) and `agentcom-sidecar try-wake`.
//! The helpers' checks one by one are unit tests (src/agent_cli/tests.rs).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use tempfile::TempDir;

const SIDECAR: &str = env!("CARGO_BIN_EXE_agentcom-sidecar");

/// Text a task could carry to break a shell or cmd line that pasted it.
fn hostile_text(marker: &Path) -> String {
    format!(
        "quote \" single ' $(touch {m}) `touch {m}` ; touch {m} & type nul > \"{m}\" | %PATH% ^& !PATH! (x) \
         --json - \n second line\t{{\"status\":\"failure\"}}",
        m = marker.display()
    )
}

/// A helper run as an agent would: the task in the environment.
fn helper(results_dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(SIDECAR);
    command
        .arg("agent")
        .args(args)
        .env("AGENTCOM_TASK_ID", "task-7")
        .env("AGENTCOM_RESULTS_DIR", results_dir)
        .env_remove("AGENTCOM_MAX_RESULT_BYTES")
        .stdin(Stdio::null());
    command
}

fn one_line_error(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    stderr
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn helpers_take_hostile_task_text_as_data() {
    let dir = TempDir::new().unwrap();
    let marker = dir.path().join("pwned");
    let text = hostile_text(&marker);
    let out = helper(dir.path(), &["progress", "30", &text]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let progress = read_json(&dir.path().join("task-7.progress"));
    assert_eq!(progress, json!({"progress": 30, "message": text}));
    let out = helper(dir.path(), &["done", "--output", &text]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(read_json(&dir.path().join("task-7.json")), json!({"status": "success", "output": text}));
    assert!(!marker.exists(), "the text was run");
}

#[test]
fn a_helper_without_a_task_or_results_directory_says_so_in_one_line() {
    let dir = TempDir::new().unwrap();
    let out = helper(dir.path(), &["started"]).env_remove("AGENTCOM_TASK_ID").output().unwrap();
    assert!(one_line_error(&out).contains("AGENTCOM_TASK_ID is not set"));
    let missing = dir.path().join("missing");
    let out = helper(&missing, &["done", "--output", "x"]).output().unwrap();
    assert!(one_line_error(&out).contains("does not exist"));
    let out = helper(dir.path(), &["progress", "101"]).output().unwrap();
    assert!(one_line_error(&out).contains("from 0 to 100, got \"101\""));
    let out = helper(dir.path(), &["fail", &"r".repeat(2001)]).output().unwrap();
    assert!(one_line_error(&out).contains("over the hub's limit of 2000"));
    let out = helper(dir.path(), &["finish"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "usage: {out:?}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");
}

#[test]
fn done_reads_stdin_and_checks_the_limit_passed_down() {
    let dir = TempDir::new().unwrap();
    let run = |input: &str, limit: &str| {
        let mut child = helper(dir.path(), &["done"])
            .env("AGENTCOM_MAX_RESULT_BYTES", limit)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(&"x".repeat(200), "100");
    assert!(one_line_error(&out).contains("over the sidecar's result limit of 100 bytes"));
    let out = run("the answer\n", "100");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(read_json(&dir.path().join("task-7.json"))["output"], "the answer\n");
}

/// Eight helpers started at once to finish the same task: exactly one
/// result, written whole, and seven clear refusals.
#[test]
fn racing_helpers_leave_exactly_one_result() {
    let dir = TempDir::new().unwrap();
    let children: Vec<_> = (0..8)
        .map(|i| {
            let verb = if i % 2 == 0 { ["done", "--output"] } else { ["fail", "--"] };
            helper(dir.path(), &[verb[0], verb[1], &format!("writer {i}")])
                .stderr(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children.into_iter().map(|child| child.wait_with_output().unwrap()).collect();
    let winners: Vec<usize> = (0..8).filter(|i| outputs[*i].status.success()).collect();
    assert_eq!(winners.len(), 1, "{outputs:?}");
    for (i, output) in outputs.iter().enumerate() {
        if i != winners[0] {
            assert!(one_line_error(output).contains("already has a result"), "{output:?}");
        }
    }
    let result = read_json(&dir.path().join("task-7.json"));
    assert!(result.to_string().contains(&format!("writer {}", winners[0])), "{result}");
    let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["task-7.json"], "no temporary file left");
}

/// A read-only file system (a tmpfs mounted read-only in a mount namespace
/// of its own, so nothing outlives the test): the helpers fail with one
/// line and write nothing. Needs unshare(1) and the right to make mount
/// namespaces (root, or unprivileged user namespaces).
#[cfg(target_os = "linux")]
#[test]
fn on_a_read_only_file_system_a_helper_fails_with_one_line() {
    let dir = TempDir::new().unwrap();
    let ro = dir.path().join("ro");
    fs::create_dir(&ro).unwrap();
    for args in [&["started"][..], &["done", "--output", "x"], &["progress", "5"]] {
        let script = "mount -t tmpfs -o ro,size=64k tmpfs \"$1\" || exit 99; shift; exec \"$@\"";
        let mut unshare = Command::new("unshare");
        if !nix_is_root() {
            unshare.arg("--map-root-user");
        }
        let out = unshare
            .args(["--mount", "sh", "-c", script, "sh"])
            .arg(&ro)
            .arg(SIDECAR)
            .arg("agent")
            .args(args)
            .env("AGENTCOM_TASK_ID", "task-7")
            .env("AGENTCOM_RESULTS_DIR", &ro)
            .output()
            .expect("unshare (util-linux) is needed to make a read-only file system");
        assert_ne!(
            out.status.code(),
            Some(99),
            "cannot mount a read-only tmpfs in a mount namespace: {out:?}"
        );
        let line = one_line_error(&out);
        assert!(line.contains("cannot write") && line.contains("Read-only file system"), "{line}");
    }
    assert_eq!(fs::read_dir(&ro).unwrap().count(), 0);
}

#[cfg(target_os = "linux")]
fn nix_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

// ----- try-wake ---------------------------------------------------------------

/// A config.json in a fresh directory: a hub that is never contacted, the
/// wake command and the given keys.
fn try_wake(wake_command: &str, extra: Value) -> (TempDir, Output, String) {
    let dir = TempDir::new().unwrap();
    let mut config = json!({
        "agent_id": "kit-agent",
        "token": "tok-kit",
        "hub_url": "ws://127.0.0.1:9/ws",
        "wake_command": wake_command,
        "wake_timeout_ms": 10_000,
        "confirmation_timeout_ms": 2_000,
        // Bounds the wait for a result if an agent goes wrong.
        "task_timeout_ms": 60_000,
    });
    config.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let path = dir.path().join("config.json");
    fs::write(&path, config.to_string()).unwrap();
    #[cfg(unix)]
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = Command::new(SIDECAR)
        .args(["try-wake", "--config"])
        .arg(&path)
        .args(["--description", "say hello"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (dir, out, stdout)
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

fn assert_verdict(out: &Output, stdout: &str, completed: bool, needles: &[&str]) {
    let expected =
        if completed { "verdict: the task would have completed" } else { "would NOT have completed" };
    assert!(stdout.contains(expected), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(if completed { 0 } else { 1 }), "{stdout}");
    for needle in needles {
        assert!(stdout.contains(needle), "{needle:?} missing from:\n{stdout}");
    }
    if !completed {
        assert!(stdout.contains("  fix:"), "every problem has a fix:\n{stdout}");
    }
}

/// The synchronous script shape: the example agent, which uses the helpers.
#[test]
fn try_wake_passes_the_example_agent_on_a_rehearsal_task() {
    let command = if cfg!(windows) {
        format!("\"{}\"", scripts().join("example-agent.cmd").display())
    } else {
        format!("sh {}", scripts().join("example-agent.sh").display())
    };
    let (_dir, out, stdout) = try_wake(&command, json!({}));
    assert_verdict(
        &out,
        &stdout,
        true,
        &[".started appeared", ".progress:", "result file appeared", "\"type\":\"task_complete\""],
    );
    assert!(
        stdout.contains("REHEARSAL by agentcom-sidecar try-wake") && stdout.contains("say hello"),
        "{stdout}"
    );
    assert!(stdout.contains("command ended: succeeded"), "{stdout}");
}

#[test]
fn try_wake_without_a_wake_command_is_a_config_error() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("config.json");
    fs::write(&path, json!({"agent_id": "a", "token": "t", "hub_url": "ws://127.0.0.1:9/ws"}).to_string())
        .unwrap();
    let out = Command::new(SIDECAR).args(["try-wake", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no wake_command"), "{out:?}");
}

#[cfg(unix)]
mod unix {
    use super::*;

    /// The launcher shape: the command starts the agent in the background
    /// and returns at once; the agent reports through the helpers later.
    #[test]
    fn a_launcher_passes() {
        let (_dir, out, stdout) = try_wake(
            "(\"$AGENTCOM_SIDECAR\" agent started; \"$AGENTCOM_SIDECAR\" agent progress 60 busy; \
             \"$AGENTCOM_SIDECAR\" agent done --output launched) >/dev/null 2>&1 &",
            json!({}),
        );
        assert_verdict(&out, &stdout, true, &["\"progress\":60", "\"output\":\"launched\""]);
    }

    /// A CLI wrapped by a synchronous script: its stdout becomes the result.
    #[test]
    fn a_wrapped_cli_passes() {
        let (_dir, out, stdout) = try_wake(
            "\"$AGENTCOM_SIDECAR\" agent started && printf 'the answer\\n' > \"$AGENTCOM_RESULTS_DIR/.out\" && \
             \"$AGENTCOM_SIDECAR\" agent done --output-file \"$AGENTCOM_RESULTS_DIR/.out\"",
            json!({}),
        );
        assert_verdict(&out, &stdout, true, &["\"output\":\"the answer\\n\""]);
    }

    #[test]
    fn a_command_that_does_not_exist() {
        let (_dir, out, stdout) = try_wake("./no-such-agent --go", json!({}));
        assert_verdict(
            &out,
            &stdout,
            false,
            &["not found (exit code 127)", "check the program's path", "wake_failed"],
        );
    }

    #[test]
    fn a_command_that_exits_0_and_writes_nothing() {
        let (_dir, out, stdout) = try_wake("true", json!({"confirmation_timeout_ms": 300}));
        assert_verdict(
            &out,
            &stdout,
            false,
            &[
                "never appeared within confirmation_timeout_ms (300 ms)",
                "agent started",
                "confirmation_timeout",
            ],
        );
    }

    #[test]
    fn a_command_that_writes_a_broken_result() {
        let (_dir, out, stdout) = try_wake(
            "\"$AGENTCOM_SIDECAR\" agent started; printf '{\"status\":' > \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.json\"",
            json!({"result_settle_ms": 200}),
        );
        assert_verdict(
            &out,
            &stdout,
            false,
            &["is not a JSON object", "rename it into place", "result_parse_error"],
        );
    }

    #[test]
    fn a_result_over_the_limit() {
        let (_dir, out, stdout) = try_wake(
            "head -c 5000 /dev/zero | tr '\\0' x > \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.json\"",
            json!({"max_result_bytes": 1000}),
        );
        assert_verdict(
            &out,
            &stdout,
            false,
            &["5000 bytes, over max_result_bytes (1000)", "result_too_large"],
        );
    }

    #[test]
    fn a_command_that_hangs() {
        let (_dir, out, stdout) = try_wake("sleep 60", json!({"wake_timeout_ms": 300}));
        assert_verdict(
            &out,
            &stdout,
            false,
            &[
                "still running at wake_timeout_ms (300 ms) and never wrote .started",
                "write .started first",
                "wake_mode",
            ],
        );
    }

    /// A synchronous script that confirms, then works for longer than a wake
    /// may take: the agent at work, not killed at wake_timeout_ms (issue
    /// 17); only the task's own timeout ends it.
    #[test]
    fn a_command_that_confirms_and_works_past_the_wake_timeout_is_the_agent_at_work() {
        let (_dir, out, stdout) = try_wake(
            "\"$AGENTCOM_SIDECAR\" agent started; echo thinking >&2; sleep 60",
            json!({"wake_timeout_ms": 500, "task_timeout_ms": 1_500}),
        );
        assert_verdict(
            &out,
            &stdout,
            false,
            &["no result within 1500 ms", "task_timeout", "| thinking", "runs on: the agent at work"],
        );
        assert!(!stdout.contains("still running at wake_timeout_ms"), "{stdout}");
    }

    /// Run mode: a CLI stand-in that prints a claude-like JSON object; the
    /// executor makes it the result's output, the frame carries the object.
    #[test]
    fn run_mode_a_cli_printing_json_passes() {
        let (_dir, out, stdout) = try_wake(
            "echo working >&2; printf '{\"type\":\"result\",\"subtype\":\"success\",\"result\":\"hello\"}\\n'",
            json!({"wake_mode": "run"}),
        );
        assert_verdict(
            &out,
            &stdout,
            true,
            &[
                "wake_mode run",
                ".started appeared",
                "command ended: succeeded",
                "\"type\":\"task_complete\"",
                "\"output\":{\"result\":\"hello\",\"subtype\":\"success\",\"type\":\"result\"}",
                "| working",
            ],
        );
    }

    /// The CLI shape: the example CLI agent in run mode, as docs/agents.md
    /// wires it.
    #[test]
    fn run_mode_passes_the_example_cli_agent() {
        let command =
            format!("sh {} \"$AGENTCOM_TASK_DESCRIPTION\"", scripts().join("example-cli-agent.sh").display());
        let (_dir, out, stdout) = try_wake(&command, json!({"wake_mode": "run"}));
        assert_verdict(
            &out,
            &stdout,
            true,
            &["\"output\":{", "\"type\":\"result\"", "\"type\":\"task_complete\""],
        );
    }

    /// Run mode: a CLI that never ends is ended when the wait runs out (with
    /// cancel_grace_ms), and the task times out.
    #[test]
    fn run_mode_a_cli_that_never_ends_times_out() {
        let (_dir, out, stdout) = try_wake(
            "echo thinking >&2; sleep 60",
            json!({"wake_mode": "run", "task_timeout_ms": 800, "cancel_grace_ms": 200}),
        );
        assert_verdict(
            &out,
            &stdout,
            false,
            &["no result within 800 ms", "task_timeout", "must end when the task is done", "| thinking"],
        );
    }

    /// Run mode: a non-zero exit is the outcome, named with the last line of
    /// stderr and the hub's task_failed reason; never a retry.
    #[test]
    fn run_mode_a_failing_cli_names_its_status_and_stderr() {
        let (_dir, out, stdout) = try_wake(
            "echo 'loading model' >&2; echo 'fatal: no API key' >&2; exit 3",
            json!({"wake_mode": "run"}),
        );
        assert_verdict(
            &out,
            &stdout,
            false,
            &[
                "the command exited with status 3; its stderr ends with: fatal: no API key",
                "task_failed with reason \"agent_failed: the agent exited with status 3; last line of stderr: fatal: no API key\"",
                "\"type\":\"task_failed\"",
            ],
        );
        assert!(!stdout.contains("wake_retry_delays_ms"), "{stdout}");
    }

    /// Run mode: stdout over max_result_bytes fails the task with
    /// result_too_large.
    #[test]
    fn run_mode_stdout_over_the_limit() {
        let (_dir, out, stdout) = try_wake(
            "head -c 5000 /dev/zero | tr '\\0' x",
            json!({"wake_mode": "run", "max_result_bytes": 1000}),
        );
        assert_verdict(
            &out,
            &stdout,
            false,
            &[
                "its stdout was 5000 bytes, over max_result_bytes (1000)",
                "result_too_large",
                "print only the answer to stdout",
            ],
        );
    }

    /// Launch mode (the default) with a command that is an agent CLI: it
    /// prints its answer and exits, never writing .started; the fix is run
    /// mode.
    #[test]
    fn launch_mode_with_a_cli_that_never_writes_started_suggests_run_mode() {
        let (_dir, out, stdout) = try_wake(
            "printf '{\"type\":\"result\",\"result\":\"hello\"}\\n'",
            json!({"confirmation_timeout_ms": 300}),
        );
        assert_verdict(
            &out,
            &stdout,
            false,
            &["wake_mode launch", "confirmation_timeout", "set wake_mode to \"run\""],
        );
    }

    #[test]
    fn an_agent_that_reports_failure() {
        let (_dir, out, stdout) = try_wake("\"$AGENTCOM_SIDECAR\" agent fail 'no GPU here'", json!({}));
        assert_verdict(
            &out,
            &stdout,
            false,
            &["the agent reported a failure: no GPU here", "\"type\":\"task_failed\""],
        );
    }
}

#[cfg(windows)]
mod windows {
    use super::*;

    /// The launcher of docs/agents.md: launch.cmd starts worker.cmd with
    /// `start /b` and returns; the worker reports through the helpers.
    #[test]
    fn a_launcher_passes() {
        let scripts = TempDir::new().unwrap();
        let worker = scripts.path().join("worker.cmd");
        let launcher = scripts.path().join("launch.cmd");
        // docs/agents.md's worker.cmd, with `type` as the agent.
        let worker_text = "@echo off\r\nsetlocal EnableDelayedExpansion\r\n\
            \"!AGENTCOM_SIDECAR!\" agent started\r\n\
            if errorlevel 1 exit /b 1\r\n\
            \"!AGENTCOM_SIDECAR!\" agent progress 10 cloning\r\n\
            set \"OUT=!AGENTCOM_RESULTS_DIR!\\.!AGENTCOM_TASK_ID!.out\"\r\n\
            type \"!AGENTCOM_TASK_FILE!\" >\"!OUT!\"\r\n\
            if errorlevel 1 (\r\n\
                \"!AGENTCOM_SIDECAR!\" agent fail my-agent failed\r\n\
                exit /b 0\r\n\
            )\r\n\
            \"!AGENTCOM_SIDECAR!\" agent done --output-file \"!OUT!\"\r\n";
        fs::write(&worker, worker_text).unwrap();
        let launcher_text =
            format!("@echo off\r\nstart \"\" /b cmd /d /v:on /c \"{}\" >nul 2>&1\r\n", worker.display());
        fs::write(&launcher, launcher_text).unwrap();
        let (_dir, out, stdout) = try_wake(&format!("\"{}\"", launcher.display()), json!({}));
        assert_verdict(&out, &stdout, true, &["\"progress\":10", "REHEARSAL by agentcom-sidecar try-wake"]);
    }

    #[test]
    fn a_command_that_does_not_exist() {
        let (_dir, out, stdout) = try_wake("no-such-agent.exe --go", json!({}));
        assert_verdict(&out, &stdout, false, &["wake_failed"]);
    }
}
