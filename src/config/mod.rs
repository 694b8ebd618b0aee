//! `config.json`: the Node sidecar's keys plus optional new ones, read and
//! validated once at start-up into a plain [`Config`] value.
//!
//! Every failure names the file and the key, so an operator can fix it from a
//! single log line. The token is wrapped in [`Secret`], whose `Debug` and
//! `Display` never show it.
//!
//! Here: the [`Config`] type and what it answers once read. The parser is
//! `parse.rs`, its typed key reader `keys.rs`, the checks of single values
//! and of the directories `checks.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::Error;
/// The token's wrapper, defined in the core, which sends it in `identify`.
pub use crate::state::Secret;
use crate::state::Settings;

/// The validated configuration. Durations are `Duration`s and paths are
/// absolute or relative to the process's working directory (already resolved
/// against the config file's directory). The keys the core reads are in
/// [`settings`](Config::settings), stated there once; the rest is the shell's.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (informational).
    pub config_path: PathBuf,
    /// The core's part: identity, timers, wake and task keys.
    pub settings: Settings,
    pub hub_url: String,
    pub wake_command: Option<String>,
    /// Run on the hub's `restart_sidecar`, detached, instead of exiting at
    /// once (normally `scripts/update.sh`: build, then restart through the
    /// supervisor). `None`: exit, and let the supervisor restart us.
    pub update_command: Option<String>,
    /// Where the update command's output is appended.
    pub update_log: PathBuf,
    /// The signed release manifest (`update` and `restart_sidecar` install
    /// from it; see src/selfupdate). `None`: build from source as before.
    pub update_url: Option<String>,
    /// The minisign public key (base64) the manifest must be signed with;
    /// required with `update_url`.
    pub update_public_key: Option<String>,
    /// How long a download may receive nothing, and how long the new binary
    /// may take to run `--version` and `check`.
    pub update_timeout: Duration,
    pub results_dir: PathBuf,
    pub log_file: PathBuf,
    pub queue_file: PathBuf,
    pub tls_ca_file: Option<PathBuf>,
    pub max_message_bytes: usize,
    pub wake_timeout: Duration,
    pub max_result_bytes: u64,
    /// How long shutdown waits for a close handshake or a running wake.
    pub shutdown_grace: Duration,
    /// Watch `results_dir` with the platform's file notifications. Off
    /// (e.g. on network file systems that miss events): poll instead, every
    /// `settings.results_poll`.
    pub watch_results: bool,
    pub log_max_bytes: u64,
    pub log_keep: u32,
    pub log_level: log::LevelFilter,
    /// Every key with its effective value (defaults applied, paths resolved,
    /// token redacted), as `check` prints it. Filled by the parser as it
    /// reads each key, so the list of keys is written once.
    effective: Map<String, Value>,
}

/// An optional protocol extension the hub understands (docs/protocol.md
/// sections 7.3 and 7.4), named in `hub_features`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubFeature {
    /// Send `wake_result` after each wake attempt.
    WakeResult,
    /// Send `state_report` after each reconnect.
    StateReport,
}

impl HubFeature {
    pub const ALL: [HubFeature; 2] = [HubFeature::WakeResult, HubFeature::StateReport];

    /// The spelling in config.json.
    pub fn name(self) -> &'static str {
        match self {
            HubFeature::WakeResult => "wake_result",
            HubFeature::StateReport => "state_report",
        }
    }

    fn parse(name: &str) -> Option<HubFeature> {
        HubFeature::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// The config holds the token: warn when other users may read it (any group
/// or other permission bit set). Unix only: Windows ACLs need another check.
fn permission_warning(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode();
        (mode & 0o077 != 0).then(|| {
            format!(
                "{}: the config file holds the token but other users may read it (mode {:o}); run chmod 600 on it",
                path.display(),
                mode & 0o777
            )
        })
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

impl Config {
    /// Reads and validates `path`. Returns the config and warnings (unknown
    /// keys) for the caller to log once logging is set up.
    pub fn load(path: &Path) -> Result<(Config, Vec<String>), Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: cannot read the config file: {e}", path.display())))?;
        let (config, mut warnings) = Config::from_json_str(&text, path)?;
        warnings.extend(permission_warning(path));
        Ok((config, warnings))
    }

    /// A config for tests: everything under `dir`, short timers.
    pub fn for_tests(dir: &Path, hub_url: &str, token: &str) -> Config {
        let text = serde_json::json!({
            "agent_id": "test-agent",
            "token": token,
            "hub_url": hub_url,
            "heartbeat_interval_ms": 500,
            "pong_timeout_ms": 500,
            "reconnect_initial_ms": 50,
            "reconnect_max_ms": 500,
            "confirmation_timeout_ms": 2_000,
            "wake_timeout_ms": 2_000,
            "wake_retry_delays_ms": [50, 50, 50],
            "result_settle_ms": 300,
        })
        .to_string();
        let (config, _) =
            Config::from_json_str(&text, &dir.join("config.json")).expect("the test config is valid");
        config
    }

    /// config.json's directory: every relative path of the config is
    /// relative to it, and the wake command runs in it.
    pub fn base_dir(&self) -> PathBuf {
        base_dir_of(&self.config_path)
    }

    /// What keeps the sidecar from creating its files: `results_dir`, and
    /// the directories of `queue_file` and `log_file`, each missing one
    /// creatable, each existing one a writable directory. One line per
    /// problem, naming the key, the path and the OS error. Creates nothing.
    pub fn directory_problems(&self) -> Vec<String> {
        let parent = |p: &Path| p.parent().map(Path::to_path_buf).unwrap_or_default();
        [
            ("results_dir", self.results_dir.clone()),
            ("queue_file", parent(&self.queue_file)),
            ("log_file", parent(&self.log_file)),
        ]
        .iter()
        .filter_map(|(key, dir)| checks::directory_problem(key, dir))
        .collect()
    }

    /// The effective configuration as JSON with the token redacted, for
    /// `agentcom-sidecar check`.
    pub fn to_redacted_json(&self) -> Value {
        Value::Object(self.effective.clone())
    }
}

/// `base` joined with the relative `path`, leaving out `.` components, so
/// the default `./sidecar.log` next to `./config.json` reads `./sidecar.log`
/// rather than `././sidecar.log`. The result is never empty.
fn join_without_dots(base: &Path, path: &Path) -> PathBuf {
    let mut joined = base.to_path_buf();
    for component in path.components() {
        if component != std::path::Component::CurDir {
            joined.push(component);
        }
    }
    joined
}

/// Returns `url` with any user info (`user:pass@`) and query string replaced,
/// so it can be logged. Credentials must never reach a log.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rfind('@') {
        Some(i) => format!("<redacted>@{}", &authority[i + 1..]),
        None => authority.to_string(),
    };
    let path = match path.find('?') {
        Some(i) => format!("{}?<redacted>", &path[..i]),
        None => path.to_string(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{authority}{path}"),
        None => format!("{authority}{path}"),
    }
}

fn base_dir_of(config_path: &Path) -> PathBuf {
    match config_path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

mod checks;
mod keys;
mod parse;
#[cfg(test)]
mod tests;
