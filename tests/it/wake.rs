//! The wake command as the real binary runs it: where it runs, what a failed
//! one says on stdout, and a task too large for the environment.

use std::fs;

use serde_json::json;

use crate::support::*;

/// An agent script that confirms and writes its result at once; `output`
/// is shell text for the result's `output` string.
fn agent_script(output: &str) -> String {
    format!(
        "d=\"$AGENTCOM_RESULTS_DIR\"; t=\"$AGENTCOM_TASK_ID\"\n\
         : > \"$d/$t.started\"\n\
         printf '{{\"status\":\"success\",\"output\":\"%s\"}}' \"{output}\" > \"$d/.$t.tmp\"\n\
         mv \"$d/.$t.tmp\" \"$d/$t.json\"\n"
    )
}

#[test]
#[cfg_attr(
    windows,
    ignore = "skipped on Windows: the agent is a sh script (pwd, wc, /bin/echo), not ported to cmd"
)]
fn a_relative_wake_command_runs_in_the_config_directory() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    // The sidecar runs in the test's working directory (the crate root);
    // agent.sh exists only next to config.json.
    assert_ne!(std::env::current_dir().unwrap(), dir.path());
    fs::write(dir.path().join("agent.sh"), agent_script("$(basename \"$(pwd -P)\")")).unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    cfg["wake_command"] = json!("sh agent.sh");
    let sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let task_id = hub.push_task(AGENT, "d", json!({}));
    let complete = expect_received(&hub, "task_complete");
    assert_eq!(complete["task_id"], task_id.as_str(), "{}", sidecar.output());
    let config_dir = dir.path().canonicalize().unwrap();
    assert_eq!(complete["result"]["output"], config_dir.file_name().unwrap().to_str().unwrap());
}

#[test]
fn a_failed_wakes_warning_on_stdout_names_the_last_line_of_stderr() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    cfg["wake_command"] = json!(if cfg!(windows) {
        "echo noise 1>&2& echo agent: cannot reach the model server 1>&2& exit 3"
    } else {
        "echo noise >&2; echo 'agent: cannot reach the model server' >&2; exit 3"
    });
    cfg["wake_retry_delays_ms"] = json!([]);
    let sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    hub.push_task(AGENT, "d", json!({}));
    expect_received(&hub, "task_failed");
    // stdout only: pm2 shows it as the sidecar's output log.
    let warning = wait_until("a line on stdout with the stderr line", || {
        let stdout = fs::read_to_string(&sidecar.stdout).unwrap_or_default();
        let warning =
            |line: &&str| line.contains("agent: cannot reach the model server") && line.contains("WARN");
        stdout.lines().find(warning).map(str::to_string)
    });
    assert!(warning.contains("WARN") && warning.contains("exit code 3"), "{warning}");
}

#[test]
#[cfg_attr(
    windows,
    ignore = "skipped on Windows: the agent is a sh script (pwd, wc, /bin/echo), not ported to cmd"
)]
fn a_description_over_128_kib_still_wakes_the_agent() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    // The description reaches the command in the environment and on its
    // command line; the agent reports whether it was cut and the task
    // file's size.
    fs::write(
        dir.path().join("agent.sh"),
        agent_script("$AGENTCOM_TASK_TRUNCATED $(wc -c < \"$AGENTCOM_TASK_FILE\")"),
    )
    .unwrap();
    cfg["wake_command"] =
        json!("/bin/echo \"${TASK_DESCRIPTION}\" \"${TASK_JSON}\" > /dev/null && sh agent.sh");
    let sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let description = "x".repeat(1 << 20);
    let task_id = hub.push_task(AGENT, &description, json!({}));
    let complete = expect_received(&hub, "task_complete");
    assert_eq!(complete["task_id"], task_id.as_str(), "{}", sidecar.output());
    let output = complete["result"]["output"].as_str().unwrap();
    let (flag, task_file_bytes) = output.split_once(' ').unwrap();
    assert_eq!(flag, "1");
    assert!(task_file_bytes.trim().parse::<usize>().unwrap() > description.len(), "{output}");
}

/// Whether `pid` names a live process (a zombie, whose reaping alone is
/// missing, is not: the test container's init may not reap orphans).
#[cfg(target_os = "linux")]
fn is_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// The start of a wake script in the leftover-wake tests: logs `overlap
/// <pid>` to wakes.log for every pid in `pids` (the earlier wake commands
/// and their children) that is still running.
#[cfg(target_os = "linux")]
const OVERLAP_CHECK: &str = "for p in $(cat pids 2>/dev/null); do
  s=$(cut -d' ' -f3 \"/proc/$p/stat\" 2>/dev/null)
  case \"$s\" in ''|Z|X) ;; *) echo \"overlap $p\" >> wakes.log ;; esac
done
";

/// Issue 9 #9: the sidecar is SIGKILLed while a wake command runs (with a
/// child of its own); the restarted sidecar ends that command's group before
/// it wakes the agent again, so two wake commands never run at once.
#[cfg(target_os = "linux")]
#[test]
fn a_wake_command_left_by_a_killed_sidecar_is_ended_before_the_next_wake() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    // Every wake logs its start and end, and at its start whether a wake
    // command (or its child) from before still runs. The first one hangs
    // with a child; later ones confirm and exit.
    fs::write(
        dir.path().join("wake.sh"),
        format!(
            "{OVERLAP_CHECK}n=$(grep -c '^start' wakes.log 2>/dev/null)\n\
         echo \"start $$\" >> wakes.log\n\
         if [ \"${{n:-0}}\" -eq 0 ]; then\n\
         \x20 sleep 60 &\n\
         \x20 echo \"$$ $!\" >> pids\n\
         \x20 wait\n\
         else\n\
         \x20 : > \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.started\"\n\
         fi\n\
         echo \"end $$\" >> wakes.log\n"
        ),
    )
    .unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    cfg["wake_command"] = json!("sh wake.sh");
    cfg["wake_timeout_ms"] = json!(60_000);
    let mut sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let task_id = hub.push_task(AGENT, "d", json!({}));
    let first: Vec<u32> = wait_until("the first wake command and its child", || {
        let pids = fs::read_to_string(dir.path().join("pids")).ok()?;
        let pids: Vec<u32> = pids.split_whitespace().filter_map(|p| p.parse().ok()).collect();
        (pids.len() == 2).then_some(pids)
    });
    wait_until("the running wake command in queue.json", || {
        (sidecar.queue()["wake_process"]["task_id"] == task_id.as_str()).then_some(())
    });
    sidecar.kill9();
    let survived_the_crash = first.iter().all(|&pid| is_alive(pid));

    let sidecar = Sidecar::start(dir.path(), &cfg);
    let log = wait_until("the second wake", || {
        let log = fs::read_to_string(dir.path().join("wakes.log")).ok()?;
        (log.lines().filter(|l| l.starts_with("start")).count() == 2).then_some(log)
    });
    let still_alive: Vec<u32> = first.iter().copied().filter(|&pid| is_alive(pid)).collect();
    for pid in &still_alive {
        let _ = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
    assert!(survived_the_crash, "the wake command died with the sidecar: the test shows nothing");
    assert!(!log.contains("overlap"), "two wake commands ran at once:\n{log}");
    assert!(still_alive.is_empty(), "left running: {still_alive:?}\n{log}");
    let lifecycle = sidecar.lifecycle();
    let leftover = lifecycle
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|record| record["event"] == "wake_leftover")
        .unwrap_or_else(|| panic!("no wake_leftover record:\n{lifecycle}"));
    assert_eq!(leftover["found"], "ended", "{leftover}");
    assert_eq!(leftover["task_id"], task_id.as_str());
    wait_until("the wake command's record cleared", || {
        sidecar.queue().get("wake_process").is_none().then_some(())
    });
}

/// The pids of live processes whose environment holds `marker`
/// (`NAME=value`): how a test finds a wake command nothing recorded.
#[cfg(target_os = "linux")]
fn processes_with_env(marker: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| is_alive(pid))
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| environ.split(|&b| b == 0).any(|var| var == marker.as_bytes()))
        })
        .collect()
}

/// Issue 10 (the soak's last finding, seed 4101 lifecycle 166): the sidecar
/// dies right after spawning a wake command, before queue.json records it,
/// so a restarted sidecar cannot find it. The command must then never run:
/// it waits at a gate until the record is written, and a dead sidecar's gate
/// never opens.
#[cfg(target_os = "linux")]
#[test]
fn a_wake_command_spawned_just_before_a_crash_never_runs_unrecorded() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    // The first sidecar's wake (FIRST=1 in its environment) would hang with
    // a child; the second's does the task. Each checks for a live one from
    // before.
    fs::write(
        dir.path().join("wake.sh"),
        format!(
            "{OVERLAP_CHECK}\
             echo \"start $$ first=${{FIRST:-0}}\" >> wakes.log\n\
             if [ \"${{FIRST:-0}}\" = 1 ]; then\n\
             \x20 sleep 60 &\n\
             \x20 echo \"$$ $!\" >> pids\n\
             \x20 wait\n\
             else\n\
             {}\
             fi\n",
            agent_script("second")
        ),
    )
    .unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    cfg["wake_command"] = json!("sh wake.sh");
    cfg["wake_timeout_ms"] = json!(60_000);
    let mark = dir.path().display().to_string();
    let env = [("AGENTCOM_FAILPOINT", "after_wake_spawn"), ("FIRST", "1"), ("WAKE_TEST_MARK", &mark)];
    let mut sidecar = Sidecar::start_with_env(dir.path(), &cfg, &env);
    expect_identified(&hub);
    let task_id = hub.push_task(AGENT, "d", json!({}));
    let status = sidecar.wait_exit(FAILSAFE).expect("the failpoint kills the sidecar");
    assert!(!status.success());
    assert!(sidecar.queue().get("wake_process").is_none(), "the failpoint fires before the record");

    let sidecar = Sidecar::start(dir.path(), &cfg);
    let complete = expect_received(&hub, "task_complete");
    assert_eq!(complete["task_id"], task_id.as_str(), "{}", sidecar.output());
    assert_eq!(complete["result"]["output"], "second");
    // Had the first command run, it would still be there: it hangs.
    let marker = format!("WAKE_TEST_MARK={mark}");
    let left = gone_within_failsafe(|| processes_with_env(&marker));
    for pid in &left {
        let _ = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
    let log = fs::read_to_string(dir.path().join("wakes.log")).unwrap();
    assert!(!log.contains("first=1"), "the unrecorded wake command ran:\n{log}");
    assert!(!log.contains("overlap"), "two wake commands ran at once:\n{log}");
    assert!(left.is_empty(), "the first wake command is still there: {left:?}\n{log}");
}

/// Waits (on a ticker, bounded by the failsafe) until `find` finds nothing;
/// what it still finds then.
#[cfg(target_os = "linux")]
fn gone_within_failsafe(find: impl Fn() -> Vec<u32>) -> Vec<u32> {
    let deadline = std::time::Instant::now() + FAILSAFE;
    let ticker = crossbeam_channel::tick(std::time::Duration::from_millis(20));
    loop {
        let found = find();
        if found.is_empty() || std::time::Instant::now() >= deadline {
            return found;
        }
        let _ = ticker.recv();
    }
}
