//! The service manager's side, through the `windows-service` crate: install,
//! uninstall, start, stop, status, and the service itself (`service run`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod, ServiceInfo,
    ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult, ServiceStatusHandle};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

use super::{ServiceCommand, LOG_ROTATE_BYTES, PASSWORD_ENV, RECOVERY_DELAYS, RECOVERY_RESET};
use crate::config::Config;
use crate::event::Event;
use crate::supervisor::Supervisor;

/// What a service manager answers for a setting it does not know.
const ERROR_INVALID_LEVEL: i32 = 124;
/// How long `start`, `stop` and `uninstall` wait for the service to get there.
const WAIT: Duration = Duration::from_secs(60);
/// How often they ask the service manager meanwhile.
const POLL: Duration = Duration::from_millis(200);

pub(super) fn run_command(command: ServiceCommand) -> ExitCode {
    let outcome = match command {
        ServiceCommand::Install { config, name, account } => install(&config, &name, account),
        ServiceCommand::Uninstall { name } => uninstall(&name),
        ServiceCommand::Start { name } => start(&name),
        ServiceCommand::Stop { name } => stop(&name),
        ServiceCommand::Status { name } => return status(&name),
        ServiceCommand::Run { config, name } => return run(config, name),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentcom-sidecar: {e}");
            ExitCode::FAILURE
        }
    }
}

fn manager(access: ServiceManagerAccess) -> Result<ServiceManager, String> {
    ServiceManager::local_computer(None::<&str>, access)
        .map_err(|e| format!("cannot open the service manager (run as an administrator): {}", why(&e)))
}

fn why(e: &windows_service::Error) -> String {
    match e {
        windows_service::Error::Winapi(io) => io.to_string(),
        other => other.to_string(),
    }
}

fn install(config: &Path, name: &str, account: Option<String>) -> Result<(), String> {
    // The service starts in System32: the config path must be absolute.
    let config = std::path::absolute(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let (loaded, _) = Config::load(&config).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let password = match &account {
        Some(_) => std::env::var_os(PASSWORD_ENV).filter(|p| !p.is_empty()),
        None => None,
    };
    let info = ServiceInfo {
        name: name.into(),
        display_name: format!("AgentCom sidecar ({name})").into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: exe,
        launch_arguments: super::launch_arguments(&config, name),
        dependencies: vec![],
        account_name: account.map(OsString::from),
        account_password: password,
    };
    let manager = manager(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)?;
    let access = ServiceAccess::QUERY_CONFIG
        | ServiceAccess::CHANGE_CONFIG
        | ServiceAccess::QUERY_STATUS
        | ServiceAccess::DELETE;
    let service = manager
        .create_service(&info, access)
        .map_err(|e| format!("cannot install service {name}: {}", why(&e)))?;
    let configure = || -> windows_service::Result<()> {
        service.set_description("Relays AgentCom hub tasks to the local agent (agentcom-sidecar)")?;
        service.update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(RECOVERY_RESET),
            reboot_msg: None,
            command: None,
            actions: Some(
                RECOVERY_DELAYS
                    .iter()
                    .map(|delay| ServiceAction { action_type: ServiceActionType::Restart, delay: *delay })
                    .collect(),
            ),
        })?;
        // A non-zero exit (a failed start, a lost disk) counts as a failure
        // too, not only a crash. Wine's service manager lacks this setting
        // (and acts on no recovery action at all).
        if let Err(e) = service.set_failure_actions_on_non_crash_failures(true) {
            match &e {
                windows_service::Error::Winapi(io) if io.raw_os_error() == Some(ERROR_INVALID_LEVEL) => {
                    eprintln!("warning: this service manager cannot restart the service after a failed exit, only after a crash: {io}")
                }
                _ => return Err(e),
            }
        }
        service.set_preshutdown_timeout(super::stop_wait_hint(loaded.shutdown_grace))
    };
    if let Err(e) = configure() {
        let _ = service.delete();
        return Err(format!("cannot configure service {name}: {}", why(&e)));
    }
    crate::outln!(
        "installed service {name}: {} on {}, starts at boot, logs to {}",
        info.executable_path.display(),
        config.display(),
        super::log_path(&config, name).display()
    );
    Ok(())
}

fn uninstall(name: &str) -> Result<(), String> {
    let manager = manager(ServiceManagerAccess::CONNECT)?;
    let access = ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE;
    let service =
        manager.open_service(name, access).map_err(|e| format!("cannot open service {name}: {}", why(&e)))?;
    let state = service.query_status().map_err(|e| why(&e))?.current_state;
    if state != ServiceState::Stopped {
        let _ = service.stop();
        wait_for(
            name,
            || Ok(service.query_status().map_err(|e| why(&e))?.current_state),
            ServiceState::Stopped,
        )?;
    }
    service.delete().map_err(|e| format!("cannot remove service {name}: {}", why(&e)))?;
    crate::outln!("removed service {name}");
    Ok(())
}

fn start(name: &str) -> Result<(), String> {
    let manager = manager(ServiceManagerAccess::CONNECT)?;
    let access = ServiceAccess::QUERY_STATUS | ServiceAccess::START;
    let service =
        manager.open_service(name, access).map_err(|e| format!("cannot open service {name}: {}", why(&e)))?;
    service.start::<&str>(&[]).map_err(|e| format!("cannot start service {name}: {}", why(&e)))?;
    wait_for(name, || Ok(service.query_status().map_err(|e| why(&e))?.current_state), ServiceState::Running)?;
    crate::outln!("service {name} is running");
    Ok(())
}

fn stop(name: &str) -> Result<(), String> {
    let manager = manager(ServiceManagerAccess::CONNECT)?;
    let access = ServiceAccess::QUERY_STATUS | ServiceAccess::STOP;
    let service =
        manager.open_service(name, access).map_err(|e| format!("cannot open service {name}: {}", why(&e)))?;
    service.stop().map_err(|e| format!("cannot stop service {name}: {}", why(&e)))?;
    wait_for(name, || Ok(service.query_status().map_err(|e| why(&e))?.current_state), ServiceState::Stopped)?;
    crate::outln!("service {name} is stopped");
    Ok(())
}

/// Asks `state` until it is `want`, for up to [`WAIT`]. A service that
/// stops while we wait for it to run has failed.
fn wait_for(
    name: &str,
    mut state: impl FnMut() -> Result<ServiceState, String>,
    want: ServiceState,
) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = state()?;
        if now == want {
            return Ok(());
        }
        if now == ServiceState::Stopped && want == ServiceState::Running {
            return Err(format!("service {name} stopped while starting; see its log"));
        }
        if Instant::now() >= deadline {
            return Err(format!("service {name} is still {now:?} after {} s", WAIT.as_secs()));
        }
        std::thread::sleep(POLL);
    }
}

fn status(name: &str) -> ExitCode {
    let shown = (|| -> Result<bool, String> {
        let manager = manager(ServiceManagerAccess::CONNECT)?;
        let access = ServiceAccess::QUERY_STATUS | ServiceAccess::QUERY_CONFIG;
        let service = manager
            .open_service(name, access)
            .map_err(|e| format!("cannot open service {name}: {}", why(&e)))?;
        let status = service.query_status().map_err(|e| why(&e))?;
        let config = service.query_config().map_err(|e| why(&e))?;
        crate::outln!("service: {name}");
        crate::outln!("state: {:?}", status.current_state);
        if let Some(pid) = status.process_id.filter(|p| *p != 0) {
            crate::outln!("pid: {pid}");
        }
        if let ServiceExitCode::ServiceSpecific(code) = status.exit_code {
            crate::outln!("last exit code: {code}");
        }
        crate::outln!("start: {:?}", config.start_type);
        crate::outln!("account: {}", config.account_name.as_deref().unwrap_or_default().to_string_lossy());
        crate::outln!("command: {}", config.executable_path.display());
        Ok(status.current_state == ServiceState::Running)
    })();
    match shown {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("agentcom-sidecar: {e}");
            ExitCode::FAILURE
        }
    }
}

// ----- the service itself ---------------------------------------------------

/// `service run`'s arguments, for `service_main` (which the dispatcher calls
/// with the service manager's start arguments only).
static RUN_ARGS: OnceLock<(PathBuf, String)> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

fn run(config: PathBuf, name: String) -> ExitCode {
    let _ = RUN_ARGS.set((config, name.clone()));
    // Blocks until the service has stopped.
    match service_dispatcher::start(&name, ffi_service_main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "agentcom-sidecar: `service run` is what the service manager starts ({}); to run the \
                 sidecar in a console, leave out `service run`",
                why(&e)
            );
            ExitCode::from(2)
        }
    }
}

fn service_main(_: Vec<OsString>) {
    let Some((config_path, name)) = RUN_ARGS.get() else { return };
    let (events, inbox) = crossbeam_channel::unbounded();
    let stop_events = events.clone();
    let stop_requested = Arc::new(AtomicBool::new(false));
    let stop_flag = Arc::clone(&stop_requested);
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown | ServiceControl::Preshutdown => {
            log::info!("the service manager asks us to stop ({control:?})");
            stop_flag.store(true, Ordering::SeqCst);
            // The loop's Ctrl-C: the same orderly shutdown. A failed send
            // means the loop is already gone.
            let _ = stop_events.send(Event::Shutdown);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let Ok(handle) = service_control_handler::register(name, handler) else { return };
    let mut reporter =
        Reporter { handle, wait_hint: Duration::from_secs(30), checkpoint: 0, stopping: false };
    // Start-up can wait for a wake command left from before
    // (wake::LEFTOVER_WAIT).
    reporter.set(ServiceState::StartPending, ServiceControlAccept::empty(), 0);

    let outcome = match Config::load(config_path) {
        Ok((config, warnings)) => {
            init_logging(config_path, name, config.log_level);
            for warning in &warnings {
                log::warn!("{warning}");
            }
            log::info!(
                "agentcom-sidecar {} starting as service {name} (config {})",
                env!("CARGO_PKG_VERSION"),
                config.config_path.display()
            );
            reporter.wait_hint = super::stop_wait_hint(config.shutdown_grace);
            crate::run_supervised(config, events, inbox, Box::new(reporter))
        }
        Err(e) => {
            init_logging(config_path, name, log::LevelFilter::Info);
            Err(e)
        }
    };
    if let Err(e) = &outcome {
        log::error!("{e}");
    }
    let code = super::exit_code(&outcome, stop_requested.load(Ordering::SeqCst));
    if code == super::RESTART_EXIT_CODE && outcome.is_ok() {
        log::info!(
            "stopped without a stop request (restart_sidecar): the recovery action restarts the service"
        );
    }
    log::info!("service {name} stopped (exit code {code})");
    let exit_code =
        if code == 0 { ServiceExitCode::NO_ERROR } else { ServiceExitCode::ServiceSpecific(code) };
    let _ = handle.set_service_status(service_status(
        ServiceState::Stopped,
        ServiceControlAccept::empty(),
        exit_code,
        0,
        Duration::ZERO,
    ));
}

fn init_logging(config_path: &Path, name: &str, level: log::LevelFilter) {
    let path = super::log_path(config_path, name);
    // Nowhere else to say it: a service has no console.
    if let Ok(file) = super::open_log(&path, LOG_ROTATE_BYTES) {
        let _ = simplelog::WriteLogger::init(level, crate::logging::config(), file);
    }
}

fn service_status(
    state: ServiceState,
    accept: ServiceControlAccept,
    exit_code: ServiceExitCode,
    checkpoint: u32,
    wait_hint: Duration,
) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: accept,
        exit_code,
        checkpoint,
        wait_hint,
        process_id: None,
    }
}

/// Tells the service manager the loop's moments: running once ready,
/// stop-pending when the shutdown starts (stopped is reported after the
/// loop's teardown, by `service_main`).
struct Reporter {
    handle: ServiceStatusHandle,
    wait_hint: Duration,
    checkpoint: u32,
    stopping: bool,
}

impl Reporter {
    fn set(&mut self, state: ServiceState, accept: ServiceControlAccept, checkpoint: u32) {
        let wait_hint =
            if checkpoint == 0 && state == ServiceState::Running { Duration::ZERO } else { self.wait_hint };
        if let Err(e) = self.handle.set_service_status(service_status(
            state,
            accept,
            ServiceExitCode::NO_ERROR,
            checkpoint,
            wait_hint,
        )) {
            log::warn!("cannot report {state:?} to the service manager: {}", why(&e));
        }
    }
}

impl Supervisor for Reporter {
    fn ready(&mut self) {
        let accept =
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN | ServiceControlAccept::PRESHUTDOWN;
        self.set(ServiceState::Running, accept, 0);
        log::info!("told the service manager we are running");
    }

    fn status(&mut self, line: &str) {
        log::debug!("status: {line}");
    }

    fn stopping(&mut self) {
        if !std::mem::replace(&mut self.stopping, true) {
            self.checkpoint += 1;
            self.set(ServiceState::StopPending, ServiceControlAccept::empty(), self.checkpoint);
        }
    }
}
