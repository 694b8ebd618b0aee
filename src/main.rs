//! The `agentcom-sidecar` binary: parse the command line, load the config,
//! set up logging and signals, run the loop, map the result to an exit code.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentcom_sidecar::config::Config;
use agentcom_sidecar::event::Event;
use crossbeam_channel::{Receiver, Sender};

const USAGE: &str = "\
agentcom-sidecar: relays AgentCom hub tasks to a local agent

USAGE:
    agentcom-sidecar [--config PATH]           run the sidecar
    agentcom-sidecar check [--config PATH]     validate the config and print it (token redacted)
    agentcom-sidecar status [--json] [--config PATH]
                                               show the held task, pending reports and recent events
                                               (--json: as one JSON object on one line);
                                               exit 0 when idle with nothing pending, 1 when busy,
                                               2 when queue.json is corrupt or unreadable
    agentcom-sidecar agent started|progress|done|fail ...
                                               the agent's reporting helpers (agent --help)
    agentcom-sidecar try-wake [--config PATH] [--description TEXT]
                                               rehearse the wake command on a pretend task, no hub
    agentcom-sidecar service ...               install and control the Windows service
                                               (`agentcom-sidecar service --help`)
    agentcom-sidecar update [--check] [--force] [--config PATH]
                                               install the newer release from update_url (signed);
                                               exit 0 installed (--check: available), 3 nothing newer
    agentcom-sidecar update --rollback         put back the binary the last update replaced
    agentcom-sidecar --help | --version

The config path defaults to $SIDECAR_CONFIG, then ./config.json.
Exit codes: 0 clean stop, 1 runtime failure, 2 bad config or usage.";

enum Command {
    Run,
    Check,
    Status,
    Update,
}

fn main() -> ExitCode {
    // The agent's helpers and try-wake have their own arguments, and the
    // helpers must start fast: no config, no logger.
    match std::env::args_os().nth(1).as_ref().and_then(|arg| arg.to_str()) {
        Some("agent") => return agentcom_sidecar::agent_cli::main(std::env::args_os().skip(2).collect()),
        Some("try-wake") => return agentcom_sidecar::try_wake::main(std::env::args_os().skip(2).collect()),
        Some("service") => {
            return agentcom_sidecar::service::main(None, &std::env::args_os().skip(2).collect::<Vec<_>>())
        }
        _ => {}
    }
    let mut command = Command::Run;
    let mut config_path: Option<PathBuf> = None;
    let mut json = false;
    let (mut check_only, mut rollback, mut force) = (false, false, false);
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let Some(arg_str) = arg.to_str() else {
            return usage_error("arguments must be valid UTF-8");
        };
        match arg_str {
            "-h" | "--help" => {
                agentcom_sidecar::outln!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "-V" | "--version" => {
                agentcom_sidecar::outln!("agentcom-sidecar {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "-c" | "--config" => match args.next() {
                Some(path) => config_path = Some(PathBuf::from(path)),
                None => return usage_error("--config needs a path"),
            },
            "--json" => json = true,
            "check" => command = Command::Check,
            "status" => command = Command::Status,
            "run" => command = Command::Run,
            "update" => command = Command::Update,
            "--check" => check_only = true,
            "--rollback" => rollback = true,
            "--force" => force = true,
            other => match other.strip_prefix("--config=") {
                Some(path) => config_path = Some(PathBuf::from(path)),
                None => return usage_error(&format!("unexpected argument {other:?}")),
            },
        }
    }
    if json && !matches!(command, Command::Status) {
        return usage_error("--json goes with status");
    }
    if (check_only || rollback || force) && !matches!(command, Command::Update) {
        return usage_error("--check, --rollback and --force go with update");
    }
    if rollback {
        // Without the config: the binary rolled back from may be the one
        // that cannot read it.
        return ExitCode::from(agentcom_sidecar::selfupdate::rollback_command(
            std::time::Duration::from_secs(30),
        ));
    }
    let config_path = config_path
        .or_else(|| std::env::var_os("SIDECAR_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("config.json"));

    // The service's signal handler goes in before anything else it does, so
    // that a stop asked for during its start (pm2 or systemd stopping a
    // sidecar just restarted) is a clean one: the request waits in the
    // channel for the loop. Only the first moments of the process, before
    // `main`, are left to the default action.
    let signals = match command {
        Command::Run => match install_signal_handler() {
            Ok(signals) => Some(signals),
            Err(e) => {
                eprintln!("agentcom-sidecar: cannot install the signal handler: {e}");
                return ExitCode::FAILURE;
            }
        },
        Command::Check | Command::Status | Command::Update => None,
    };

    let (config, warnings) = match Config::load(&config_path) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("agentcom-sidecar: {e}");
            return ExitCode::from(e.exit_code());
        }
    };

    match command {
        Command::Check => {
            for warning in &warnings {
                eprintln!("warning: {warning}");
            }
            let problems = config.directory_problems();
            for problem in &problems {
                eprintln!("agentcom-sidecar: {problem}");
            }
            if !problems.is_empty() {
                return ExitCode::from(2);
            }
            let text =
                serde_json::to_string_pretty(&config.to_redacted_json()).expect("a JSON value serializes");
            match writeln!(agentcom_sidecar::output::Stdout, "{text}") {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("agentcom-sidecar: cannot write to stdout: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status => {
            let mut stdout = agentcom_sidecar::output::Stdout;
            let now_ms = agentcom_sidecar::clock::unix_ms();
            let written = if json {
                agentcom_sidecar::status::report_json(&config, now_ms, &mut stdout)
            } else {
                agentcom_sidecar::status::report(&config, now_ms, &mut stdout)
            };
            match written {
                Ok(verdict) => ExitCode::from(verdict.exit_code()),
                Err(e) => {
                    eprintln!("agentcom-sidecar: cannot write the status: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Update => {
            for warning in &warnings {
                eprintln!("warning: {warning}");
            }
            ExitCode::from(agentcom_sidecar::selfupdate::command(&config, check_only, force))
        }
        Command::Run => {
            let (events, inbox) = signals.expect("installed for Run");
            run(config, &warnings, events, inbox)
        }
    }
}

/// The channel the service's events go through, with ctrlc's handler
/// already feeding it. ctrlc's handler can be installed once per process,
/// so it lives here and never in `agentcom_sidecar::run`, which tests call
/// repeatedly. The first signal asks for a clean shutdown; a second one
/// exits at once.
fn install_signal_handler() -> Result<(Sender<Event>, Receiver<Event>), ctrlc::Error> {
    let (events, inbox) = crossbeam_channel::unbounded();
    let signals = AtomicUsize::new(0);
    let shutdown = events.clone();
    ctrlc::set_handler(move || {
        if signals.fetch_add(1, Ordering::SeqCst) == 0 {
            let _ = shutdown.send(Event::Shutdown);
        } else {
            std::process::exit(130);
        }
    })?;
    Ok((events, inbox))
}

fn run(config: Config, warnings: &[String], events: Sender<Event>, inbox: Receiver<Event>) -> ExitCode {
    init_logging(config.log_level);
    for warning in warnings {
        log::warn!("{warning}");
    }
    log::info!(
        "agentcom-sidecar {} starting (config {})",
        env!("CARGO_PKG_VERSION"),
        config.config_path.display()
    );

    match agentcom_sidecar::run(config, events, inbox) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Levelled lines on stderr/stdout (the format: `agentcom_sidecar::logging`).
fn init_logging(level: log::LevelFilter) {
    let _ = simplelog::SimpleLogger::init(level, agentcom_sidecar::logging::config());
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("agentcom-sidecar: {message}\n\n{USAGE}");
    ExitCode::from(2)
}
