//! `agentcom-sidecar service ...`: the sidecar as a Windows service, for
//! machines without pm2 (and its Node.js). The command line and the plan
//! (arguments, recovery, timings, the log file) are here and tested on every
//! platform; the calls into the service manager are in `windows.rs`.
//!
//! The installed service runs `agentcom-sidecar service run --config PATH
//! --name NAME`, starts at boot, and is restarted by the service manager's
//! recovery actions after a crash or a failed exit. A stop, shutdown or
//! pre-shutdown is the same orderly shutdown as Ctrl-C (`Event::Shutdown`).

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[cfg(windows)]
mod windows;

/// The service name when `--name` is not given.
pub const DEFAULT_NAME: &str = "agentcom-sidecar";
/// The password of a `--account` that needs one comes from here, never from
/// the command line (which other users can read).
pub const PASSWORD_ENV: &str = "AGENTCOM_SERVICE_PASSWORD";
/// Recovery: restart after these delays (the first, second and every later
/// failure), the count starting over after [`RECOVERY_RESET`] without one.
pub const RECOVERY_DELAYS: [Duration; 3] =
    [Duration::from_secs(5), Duration::from_secs(30), Duration::from_secs(120)];
pub const RECOVERY_RESET: Duration = Duration::from_secs(24 * 3600);
/// The service log is moved to `<log>.1` at start once it is this large.
pub const LOG_ROTATE_BYTES: u64 = 10 * 1024 * 1024;

pub const USAGE: &str = "\
agentcom-sidecar service: the sidecar as a Windows service

USAGE:
    agentcom-sidecar service install [--config PATH] [--name NAME] [--account ACCOUNT]
        installs the service (starts at boot, restarted after a failure);
        the account defaults to LocalSystem; a user account's password is
        read from $AGENTCOM_SERVICE_PASSWORD
    agentcom-sidecar service uninstall [--name NAME]   stops and removes it
    agentcom-sidecar service start [--name NAME]
    agentcom-sidecar service stop [--name NAME]
    agentcom-sidecar service status [--name NAME]      exit 0 when running, 1 otherwise
    agentcom-sidecar service run --config PATH [--name NAME]
        what the service manager runs (not for a console)

The name defaults to agentcom-sidecar; the config to $SIDECAR_CONFIG, then
./config.json. The service logs to <config directory>/<name>.log.";

#[derive(Debug, PartialEq, Eq)]
pub enum ServiceCommand {
    Install { config: PathBuf, name: String, account: Option<String> },
    Uninstall { name: String },
    Start { name: String },
    Stop { name: String },
    Status { name: String },
    Run { config: PathBuf, name: String },
}

/// Parses what follows `service`. `config` is a `--config` given before
/// the word `service`, if any.
pub fn parse(config: Option<PathBuf>, args: &[OsString]) -> Result<ServiceCommand, String> {
    let mut args = args.iter().map(|a| a.to_str().ok_or("arguments must be valid UTF-8"));
    let verb =
        args.next().transpose()?.ok_or("service needs a command: install, uninstall, start, stop, status")?;
    let (mut config, mut name, mut account) = (config, None::<String>, None::<String>);
    while let Some(arg) = args.next().transpose()? {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg, None),
        };
        let mut value = || match inline.clone() {
            Some(value) => Ok(value),
            None => args.next().transpose()?.map(str::to_owned).ok_or(format!("{flag} needs a value")),
        };
        match flag {
            "-c" | "--config" => config = Some(PathBuf::from(value()?)),
            "--name" => name = Some(value()?),
            "--account" => account = Some(value()?),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let name = name.unwrap_or_else(|| DEFAULT_NAME.to_owned());
    check_name(&name)?;
    let takes_config = matches!(verb, "install" | "run");
    if config.is_some() && !takes_config {
        return Err(format!("--config goes with install and run, not {verb}"));
    }
    if account.is_some() && verb != "install" {
        return Err(format!("--account goes with install, not {verb}"));
    }
    let config = config
        .or_else(|| std::env::var_os("SIDECAR_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("config.json"));
    match verb {
        "install" => Ok(ServiceCommand::Install { config, name, account }),
        "run" => Ok(ServiceCommand::Run { config, name }),
        "uninstall" => Ok(ServiceCommand::Uninstall { name }),
        "start" => Ok(ServiceCommand::Start { name }),
        "stop" => Ok(ServiceCommand::Stop { name }),
        "status" => Ok(ServiceCommand::Status { name }),
        other => Err(format!("unknown service command {other:?}")),
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 256 || name.contains(['/', '\\']) || name.chars().any(char::is_control)
    {
        return Err(format!("bad service name {name:?}: 1 to 256 characters, no slashes"));
    }
    Ok(())
}

/// What the service manager runs: this binary with these arguments.
pub fn launch_arguments(config: &Path, name: &str) -> Vec<OsString> {
    vec!["service".into(), "run".into(), "--config".into(), config.into(), "--name".into(), name.into()]
}

/// Where the service logs: `<config directory>/<name>.log`, a place the
/// service account must be able to write anyway (queue.json and the results
/// default to that directory).
pub fn log_path(config: &Path, name: &str) -> PathBuf {
    let dir = match config.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    dir.join(format!("{name}.log"))
}

/// Opens the service log for appending, first moving it to `<log>.1` (the
/// one kept) once it reached `rotate_at` bytes.
pub fn open_log(path: &Path, rotate_at: u64) -> io::Result<File> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() >= rotate_at) {
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(path, PathBuf::from(old))?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// How long the service manager should wait for a stop: the loop's
/// teardown (the close handshake is bounded by shutdown_grace, the wake's
/// tree is ended at once) plus room for a slow disk. Also the pre-shutdown
/// timeout the install sets.
pub fn stop_wait_hint(shutdown_grace: Duration) -> Duration {
    shutdown_grace * 2 + Duration::from_secs(10)
}

/// The service-specific exit code of a sidecar that stopped without being
/// asked to (the hub's `restart_sidecar`): non-zero, so the recovery actions
/// start it again, as pm2 and systemd do after any exit.
pub const RESTART_EXIT_CODE: u32 = 3;

/// The service's exit code for the loop's outcome: 0 after a stop the
/// service manager asked for; the console run's exit code after a failure
/// (service-specific, non-zero, so the recovery actions restart it); and
/// [`RESTART_EXIT_CODE`] when the loop ended by itself.
pub fn exit_code(outcome: &Result<(), crate::error::Error>, stop_requested: bool) -> u32 {
    match outcome {
        Ok(()) if stop_requested => 0,
        Ok(()) => RESTART_EXIT_CODE,
        Err(e) => u32::from(e.exit_code()),
    }
}

/// `agentcom-sidecar service ...`.
pub fn main(config: Option<PathBuf>, args: &[OsString]) -> ExitCode {
    if args.first().is_some_and(|a| a == "--help" || a == "-h") {
        crate::outln!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let command = match parse(config, args) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("agentcom-sidecar: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    run_command(command)
}

#[cfg(windows)]
fn run_command(command: ServiceCommand) -> ExitCode {
    windows::run_command(command)
}

#[cfg(not(windows))]
fn run_command(_: ServiceCommand) -> ExitCode {
    eprintln!(
        "agentcom-sidecar: service commands manage a Windows service; elsewhere use pm2 or systemd \
         (scripts/agentcom-sidecar.service)"
    );
    ExitCode::from(2)
}

#[cfg(test)]
mod tests;
