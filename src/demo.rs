//! `agentcom-devhub --demo`: one task from hub to sidecar to an example agent
//! and back, on loopback, with nothing else installed. The development hub and
//! the sidecar's loop run in this process; the agent is
//! `scripts/example-agent.sh` (`scripts/example-agent.cmd` on Windows),
//! compiled in and written to a temp directory. `--demo-run` does the same in
//! run mode with `scripts/example-cli-agent.sh` (`.cmd`), the stand-in for a
//! headless agent CLI.

use std::io::Write;
use std::time::Duration;

use serde_json::json;

use crate::config::Config;
use crate::devhub::{redact_token, DevHub, DevHubEvent, DevHubOptions};
use crate::event::Event;

#[cfg(not(windows))]
const AGENT_SCRIPT: (&str, &str) = ("example-agent.sh", include_str!("../scripts/example-agent.sh"));
#[cfg(windows)]
const AGENT_SCRIPT: (&str, &str) = ("example-agent.cmd", include_str!("../scripts/example-agent.cmd"));
#[cfg(not(windows))]
const CLI_AGENT_SCRIPT: (&str, &str) =
    ("example-cli-agent.sh", include_str!("../scripts/example-cli-agent.sh"));
#[cfg(windows)]
const CLI_AGENT_SCRIPT: (&str, &str) =
    ("example-cli-agent.cmd", include_str!("../scripts/example-cli-agent.cmd"));
const AGENT_ID: &str = "demo-agent";
const TOKEN: &str = "demo-token";
/// The whole demo normally takes well under a second; this bounds a broken one.
const DEMO_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run_demo(out: &mut dyn Write) -> Result<(), String> {
    run_demo_in(out, false)
}

/// The demo, in run mode (`wake_mode: "run"`, the CLI stand-in) or not.
pub fn run_demo_in(out: &mut dyn Write, run_mode: bool) -> Result<(), String> {
    let hub = DevHub::start(DevHubOptions::new(AGENT_ID, TOKEN))
        .map_err(|e| format!("cannot start the hub: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let (agent_name, agent_text) = if run_mode { CLI_AGENT_SCRIPT } else { AGENT_SCRIPT };
    let agent = dir.path().join(agent_name);
    std::fs::write(&agent, agent_text).map_err(|e| format!("cannot write the example agent: {e}"))?;
    // sh on Unix; on Windows the sidecar runs the command through cmd.
    let wake_command = match (cfg!(windows), run_mode) {
        (true, _) => format!("\"{}\"", agent.display()),
        // The prompt as the CLI's argument, as data.
        (false, true) => format!("sh '{}' \"$AGENTCOM_TASK_DESCRIPTION\"", agent.display()),
        (false, false) => format!("sh '{}'", agent.display()),
    };
    let config_text = json!({
        "agent_id": AGENT_ID,
        "token": TOKEN,
        "hub_url": hub.url(),
        "wake_command": wake_command,
        "wake_mode": if run_mode { "run" } else { "launch" },
        "capabilities": ["demo"],
        "heartbeat_interval_ms": 5_000,
        "reconnect_initial_ms": 200,
    })
    .to_string();
    let (config, _) =
        Config::from_json_str(&config_text, &dir.path().join("config.json")).map_err(|e| e.to_string())?;
    let say = |out: &mut dyn Write, line: String| {
        let _ = writeln!(out, "{line}");
    };
    say(out, format!("demo: hub on {}, sidecar files in {}", hub.url(), dir.path().display()));

    let (events, inbox) = crossbeam_channel::unbounded();
    let shutdown = events.clone();
    let sidecar = std::thread::Builder::new()
        .name("sidecar".into())
        .spawn(move || crate::run(config, events, inbox))
        .map_err(|e| format!("cannot start the sidecar thread: {e}"))?;

    let mut pushed = false;
    let mut outcome: Result<(), String> = Err("the demo timed out".into());
    let deadline = std::time::Instant::now() + DEMO_TIMEOUT;
    while std::time::Instant::now() < deadline {
        let Some(event) = hub.wait_for(deadline - std::time::Instant::now(), |_| true) else { break };
        match &event {
            DevHubEvent::Received { frame, .. } => {
                say(out, format!("  hub <- sidecar  {}", redact_token(frame)))
            }
            DevHubEvent::Sent { frame, .. } => say(out, format!("  hub -> sidecar  {frame}")),
            other => say(out, format!("  hub: {other:?}")),
        }
        match event {
            DevHubEvent::Identified { .. } if !pushed => {
                pushed = true;
                hub.push_task(AGENT_ID, "Say hello to the fleet", json!({ "demo": true }));
            }
            DevHubEvent::Sent { frame, .. }
                if frame["type"] == "task_ack" && frame["status"] == "complete" =>
            {
                outcome = Ok(());
                break;
            }
            _ => {}
        }
    }
    let _ = shutdown.send(Event::Shutdown);
    match sidecar.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("the sidecar failed: {e}")),
        Err(_) => return Err("the sidecar thread panicked".into()),
    }
    hub.stop();
    if outcome.is_ok() {
        say(out, "demo: the task went hub -> sidecar -> agent -> hub and was acknowledged".into());
    }
    outcome
}
