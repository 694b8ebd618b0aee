//! `agentcom-devhub`: the development hub (`agentcom_sidecar::devhub`) for
//! people. It listens on 127.0.0.1, plays one real hub version, prints a
//! config.json a sidecar can use, pushes each line typed on stdin as a task
//! (or carries out a `/` command, `devhub::prompt`), and prints every frame in
//! and out with tokens redacted. End of input stops it cleanly; there is no Ctrl-C
//! handler, because the hub keeps nothing on disk and a kill loses nothing.

use std::io::{self, BufRead};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use agentcom_sidecar::devhub::{prompt, redact_token, DevHub, DevHubEvent, DevHubOptions, HubVersion};
use serde_json::json;

const USAGE: &str = "\
agentcom-devhub: a development AgentCom hub on 127.0.0.1, to try a sidecar and
its wake command without the real hub.

Usage: agentcom-devhub [--port N] [--agent-id A] [--token T] [--accept-timeout-ms N]
                       [--hub-version cbf9c20|4718a58] [--second-push-races N]
       agentcom-devhub --demo | --demo-run

  --demo                 run a complete loop in this process and exit: the hub on a
                         free loopback port, a sidecar, and scripts/example-agent.sh
                         as the agent; one task goes out and its result comes back
  --demo-run             the same with wake_mode run and
                         scripts/example-cli-agent.sh, a stand-in for a headless
                         agent CLI that prints one JSON object on stdout

Options:
  --port N               port on 127.0.0.1 (default 4400, clear of the real hub's 4000;
                         0 picks a free one)
  --agent-id A           the agent allowed to identify (default \"dev-agent\")
  --token T              its token (default \"dev-token\")
  --accept-timeout-ms N  how long an assigned task waits for task_accepted before
                         the hub takes it back and pushes it again (default 60000)
  --hub-version V        the real hub to play: cbf9c20 (old: no validation, 1011
                         close on task_failed) or 4718a58 (newest, the default:
                         schema validation, violations and 1008 cooldowns, rate limits)
  --second-push-races N  let the scheduler push a second task to a busy agent N times
                         (the real hubs' race; default 0)
  -h, --help             print this help and exit

Each non-empty line typed on stdin is pushed to the agent as a task description;
a line starting with / is a command (/help lists them: cancel, restart, rate
limits, a second task while busy, any raw frame).
Every frame is printed on one line: \"<-\" received from the sidecar, \"->\" sent
to it, tokens redacted; \"**\" lines are connection and task events.
End the input (Ctrl-D; Ctrl-Z then Enter on Windows) to stop the hub cleanly.
Ctrl-C kills it at once, which loses nothing: the hub keeps no state on disk.
";

#[derive(Debug, PartialEq)]
struct Args {
    port: u16,
    agent_id: String,
    token: String,
    accept_timeout: Option<Duration>,
    hub_version: HubVersion,
    second_push_races: u32,
}

#[derive(Debug, PartialEq)]
enum Command {
    Run(Args),
    Demo { run_mode: bool },
    Help,
}

fn main() -> ExitCode {
    // The demo runs the sidecar in this process, so its wake command gets
    // this binary as AGENTCOM_SIDECAR: the example agent's helpers land here.
    if std::env::args_os().nth(1).is_some_and(|arg| arg == "agent") {
        return agentcom_sidecar::agent_cli::main(std::env::args_os().skip(2).collect());
    }
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(args)) => args,
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Demo { run_mode }) => return demo(run_mode),
        Err(message) => {
            eprintln!("agentcom-devhub: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let mut options = DevHubOptions::for_version(&args.agent_id, &args.token, args.hub_version);
    options.second_push_races = args.second_push_races;
    options.bind = SocketAddr::from(([127, 0, 0, 1], args.port));
    if let Some(accept_timeout) = args.accept_timeout {
        options.accept_timeout = accept_timeout;
    }
    let hub = match DevHub::start(options) {
        Ok(hub) => hub,
        Err(err) => {
            eprintln!("agentcom-devhub: cannot listen on 127.0.0.1:{}: {err}", args.port);
            return ExitCode::FAILURE;
        }
    };

    // The token is printed here on purpose: the person chose it on the command
    // line and the sidecar needs it in its config. Frames never show it.
    let mut config = json!({
        "agent_id": args.agent_id,
        "token": args.token,
        "hub_url": hub.url(),
    });
    let agent = example_agent();
    if let Some(agent) = &agent {
        config["wake_command"] = json!(wake_command_for(agent));
    }
    println!("agentcom-devhub playing hub {} listening on {}", args.hub_version, hub.url());
    println!("config.json for the sidecar (docs/protocol.md section 10.1 lists the optional keys):");
    println!("{}", serde_json::to_string_pretty(&config).expect("a JSON value serializes"));
    match &agent {
        Some(agent) => println!(
            "Its wake_command runs the example agent ({}): replace it with the command that wakes your agent.",
            agent.display()
        ),
        None => println!("Add a wake_command: the command that wakes your agent."),
    }
    println!(
        "Type a task description and press Enter to push it to {}; /help lists the commands; \
         end the input (Ctrl-D) to stop.",
        args.agent_id
    );

    let events = hub.events();
    let printer = thread::Builder::new()
        .name("devhub-printer".to_string())
        // The loop ends when the hub is stopped and its event sender dropped.
        .spawn(move || events.iter().for_each(|event| println!("{}", describe(&event))))
        .expect("spawn the printer thread");

    for line in io::stdin().lock().lines() {
        let line = match line {
            Ok(line) => line,
            Err(err) => {
                eprintln!("agentcom-devhub: cannot read stdin: {err}");
                break;
            }
        };
        match prompt::parse(&line) {
            Ok(Some(command)) => println!("{}", prompt::run(&hub, &args.agent_id, command)),
            Ok(None) => {}
            Err(message) => println!("** {message}"),
        }
    }

    println!("** end of input: stopping");
    hub.stop();
    if printer.join().is_err() {
        eprintln!("agentcom-devhub: the printer thread panicked");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `--demo`: the sidecar's own log lines (info) go to stderr, the frames to
/// stdout.
fn demo(run_mode: bool) -> ExitCode {
    let config = simplelog::ConfigBuilder::new()
        .add_filter_allow_str("agentcom_sidecar")
        .set_target_level(log::LevelFilter::Off)
        .set_thread_level(log::LevelFilter::Off)
        .build();
    let _ = simplelog::WriteLogger::init(log::LevelFilter::Info, config, std::io::stderr());
    match agentcom_sidecar::demo::run_demo_in(&mut std::io::stdout(), run_mode) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("agentcom-devhub --demo: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The example agent of this checkout, for the printed config: looked for
/// next to the executable's ancestors (`target/debug/..` under `cargo run`),
/// then in the source tree it was built from. `None` if there is none (on
/// Windows, `scripts/example-agent.cmd`).
fn example_agent() -> Option<PathBuf> {
    let name = if cfg!(windows) { "example-agent.cmd" } else { "example-agent.sh" };
    let beside_exe = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors().skip(1).map(|dir| dir.join("scripts").join(name)).find(|p| p.is_file())
    });
    beside_exe.or_else(|| {
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join(name)).filter(|p| p.is_file())
    })
}

/// The agent's path as a wake command, quoted for the platform's shell.
fn wake_command_for(agent: &Path) -> String {
    let path = agent.display().to_string();
    if cfg!(windows) {
        format!("\"{path}\"")
    } else {
        // Inside single quotes only a single quote needs care.
        format!("sh '{}'", path.replace('\'', "'\\''"))
    }
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut parsed = Args {
        port: 4400,
        agent_id: "dev-agent".to_string(),
        token: "dev-token".to_string(),
        accept_timeout: None,
        hub_version: HubVersion::default(),
        second_push_races: 0,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // Both `--flag value` and `--flag=value`.
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(value.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "-h" || flag == "--help" {
            return Ok(Command::Help);
        }
        if flag == "--demo" || flag == "--demo-run" {
            return Ok(Command::Demo { run_mode: flag == "--demo-run" });
        }
        if !matches!(
            flag.as_str(),
            "--port"
                | "--agent-id"
                | "--token"
                | "--accept-timeout-ms"
                | "--hub-version"
                | "--second-push-races"
        ) {
            return Err(format!("unknown argument {arg:?}"));
        }
        let value = match inline_value.or_else(|| args.next()) {
            Some(value) => value,
            None => return Err(format!("{flag} needs a value")),
        };
        match flag.as_str() {
            "--port" => {
                parsed.port =
                    value.parse().map_err(|_| format!("--port wants a port number, not {value:?}"))?;
            }
            "--agent-id" if value.is_empty() => return Err("--agent-id is empty".to_string()),
            "--agent-id" => parsed.agent_id = value,
            "--token" if value.is_empty() => return Err("--token is empty".to_string()),
            "--token" => parsed.token = value,
            "--accept-timeout-ms" => {
                let ms: u64 = value
                    .parse()
                    .map_err(|_| format!("--accept-timeout-ms wants milliseconds, not {value:?}"))?;
                parsed.accept_timeout = Some(Duration::from_millis(ms));
            }
            "--hub-version" => {
                parsed.hub_version = HubVersion::parse(&value)
                    .ok_or_else(|| format!("--hub-version wants cbf9c20 or 4718a58, not {value:?}"))?;
            }
            "--second-push-races" => {
                parsed.second_push_races =
                    value.parse().map_err(|_| format!("--second-push-races wants a count, not {value:?}"))?;
            }
            _ => unreachable!("flags are checked above"),
        }
    }
    Ok(Command::Run(parsed))
}

/// One terminal line for an event, tokens redacted.
fn describe(event: &DevHubEvent) -> String {
    match event {
        DevHubEvent::Connected { conn } => format!("** [{conn}] connected"),
        DevHubEvent::HandshakeFailed { conn, reason } => {
            format!("** [{conn}] handshake failed: {reason}")
        }
        DevHubEvent::Identified { conn, agent_id } => {
            format!("** [{conn}] identified as {agent_id}")
        }
        DevHubEvent::Received { conn, frame } => format!("<- [{conn}] {}", redact_token(frame)),
        // Not JSON, so a token in it cannot be found: show its size only.
        DevHubEvent::ReceivedText { conn, text } => {
            format!("<- [{conn}] (not JSON, {} bytes)", text.len())
        }
        DevHubEvent::Sent { conn, frame } => format!("-> [{conn}] {}", redact_token(frame)),
        DevHubEvent::Suppressed { conn, frame } => {
            format!("-> [{conn}] (silent, not sent) {}", redact_token(frame))
        }
        DevHubEvent::ClosedByHub { conn, code, reason } => {
            format!("** [{conn}] closed by the hub: {code} {reason}")
        }
        DevHubEvent::TaskTakenBack { task_id, generation, reason } => {
            format!("** task {task_id} taken back ({reason}), now generation {generation}")
        }
        DevHubEvent::Violation { conn, message_type, count } => {
            format!("** [{conn}] violation {count} ({message_type})")
        }
        DevHubEvent::Disconnected { conn, agent_id } => match agent_id {
            Some(agent_id) => format!("** [{conn}] disconnected ({agent_id})"),
            None => format!("** [{conn}] disconnected"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        parse_args(args.iter().map(|arg| arg.to_string()))
    }

    #[test]
    fn the_printed_config_wakes_this_checkouts_example_agent() {
        let agent = example_agent();
        if let Some(agent) = &agent {
            assert!(agent.is_file(), "{}", agent.display());
        }
        #[cfg(unix)]
        {
            let agent = agent.expect("the example agent of this checkout");
            assert!(agent.ends_with("scripts/example-agent.sh"), "{}", agent.display());
            assert_eq!(wake_command_for(&agent), format!("sh '{}'", agent.display()));
            assert_eq!(wake_command_for(Path::new("/a b/it's.sh")), r"sh '/a b/it'\''s.sh'");
        }
    }

    #[test]
    fn defaults() {
        assert_eq!(
            parse(&[]),
            Ok(Command::Run(Args {
                port: 4400,
                agent_id: "dev-agent".to_string(),
                token: "dev-token".to_string(),
                accept_timeout: None,
                hub_version: HubVersion::V4718a58,
                second_push_races: 0,
            }))
        );
    }

    #[test]
    fn every_flag_in_both_forms() {
        let expected = Ok(Command::Run(Args {
            port: 4100,
            agent_id: "a1".to_string(),
            token: "t1".to_string(),
            accept_timeout: Some(Duration::from_millis(500)),
            hub_version: HubVersion::Cbf9c20,
            second_push_races: 2,
        }));
        let spaced = [
            "--port",
            "4100",
            "--agent-id",
            "a1",
            "--token",
            "t1",
            "--accept-timeout-ms",
            "500",
            "--hub-version",
            "cbf9c20",
            "--second-push-races",
            "2",
        ];
        assert_eq!(parse(&spaced), expected);
        let inline = [
            "--port=4100",
            "--agent-id=a1",
            "--token=t1",
            "--accept-timeout-ms=500",
            "--hub-version=cbf9c20",
            "--second-push-races=2",
        ];
        assert_eq!(parse(&inline), expected);
    }

    #[test]
    fn demo_is_a_command() {
        assert_eq!(parse(&["--demo"]), Ok(Command::Demo { run_mode: false }));
        assert_eq!(parse(&["--demo-run"]), Ok(Command::Demo { run_mode: true }));
    }

    #[test]
    fn help_wins() {
        assert_eq!(parse(&["--port", "1", "--help"]), Ok(Command::Help));
        assert_eq!(parse(&["-h"]), Ok(Command::Help));
    }

    #[test]
    fn mistakes_are_reported() {
        assert!(parse(&["--port"]).unwrap_err().contains("needs a value"));
        assert!(parse(&["--port", "x"]).unwrap_err().contains("port number"));
        assert!(parse(&["--port", "70000"]).is_err());
        assert!(parse(&["--bogus"]).unwrap_err().contains("unknown argument"));
        assert!(parse(&["--token", ""]).unwrap_err().contains("empty"));
        assert!(parse(&["--accept-timeout-ms", "-1"]).is_err());
        assert!(parse(&["--hub-version", "1234567"]).unwrap_err().contains("cbf9c20 or 4718a58"));
        assert!(parse(&["--second-push-races", "x"]).unwrap_err().contains("a count"));
    }

    #[test]
    fn printed_frames_never_show_the_token() {
        let event = DevHubEvent::Received {
            conn: 1,
            frame: json!({"type": "identify", "agent_id": "a1", "token": "s3cret"}),
        };
        let line = describe(&event);
        assert!(line.starts_with("<- [1] "), "{line}");
        assert!(!line.contains("s3cret"), "{line}");
        let not_json = DevHubEvent::ReceivedText { conn: 1, text: "token=s3cret".to_string() };
        assert!(!describe(&not_json).contains("s3cret"));
    }
}
