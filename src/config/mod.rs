//! `config.json`: the Node sidecar's keys plus optional new ones, read and
//! validated once at start-up into a plain [`Config`] value.
//!
//! Every failure names the file and the key, so an operator can fix it from a
//! single log line. The token is wrapped in [`Secret`], whose `Debug` and
//! `Display` never show it.

use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::Error;
use crate::retry::JitterStrategy;
use crate::state::RateLimits;

/// The validated configuration. Durations are `Duration`s and paths are
/// absolute or relative to the process's working directory (already resolved
/// against the config file's directory).
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from (informational).
    pub config_path: PathBuf,
    pub agent_id: String,
    /// Display name sent in `identify`; defaults to `agent_id`.
    pub name: String,
    pub token: Secret,
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
    pub capabilities: Vec<String>,
    pub confirmation_timeout: Duration,
    pub results_dir: PathBuf,
    pub log_file: PathBuf,
    pub queue_file: PathBuf,
    pub heartbeat_interval: Duration,
    pub pong_timeout: Duration,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    /// How each reconnect delay is drawn (`equal`, `full`, `decorrelated`).
    pub reconnect_jitter: JitterStrategy,
    pub connect_timeout: Duration,
    pub tls_ca_file: Option<PathBuf>,
    pub max_message_bytes: usize,
    pub wake_timeout: Duration,
    pub wake_retry_delays: Vec<Duration>,
    /// `launch` (the command starts or pokes the agent, which confirms with
    /// `.started`) or `run` (the command is the agent; see `wake::WakeMode`).
    pub wake_mode: crate::wake::WakeMode,
    /// How long a cancelled or timed-out agent has between SIGTERM (Windows:
    /// Ctrl-Break) and being killed.
    pub cancel_grace: Duration,
    /// Optional protocol extensions the hub understands.
    pub hub_features: Vec<HubFeature>,
    pub max_result_bytes: u64,
    pub task_timeout: Option<Duration>,
    /// How long a result file that does not parse yet may keep changing
    /// before it is judged final (agents that do not rename atomically).
    pub result_settle: Duration,
    /// Minimum time between two `task_progress` frames for one task.
    pub progress_interval: Duration,
    /// How long a report or `task_recovering` waits for the hub's answer
    /// before the sidecar reconnects and asks again.
    pub reply_timeout: Duration,
    /// How long the files of a task the hub took back (unsettled) are kept
    /// for the hub to hand the same task back.
    pub readopt_window: Duration,
    /// How long a task adopted without a wake (its agent had confirmed it)
    /// may show no progress and no result before it is failed.
    pub adopted_silence: Duration,
    /// Send a keep-alive `task_progress` for the held task after this long
    /// without one (`keepalive_interval_ms`, 0: never).
    pub keepalive_interval: Option<Duration>,
    /// The newer hub's rate budget (`rate_limit_*`), which frames are paced
    /// to on that hub.
    pub rate_limits: RateLimits,
    /// How long shutdown waits for a close handshake or a running wake.
    pub shutdown_grace: Duration,
    /// Watch `results_dir` with the platform's file notifications. Off
    /// (e.g. on network file systems that miss events): poll instead.
    pub watch_results: bool,
    /// Rescan interval while a task is held and the directory is not
    /// watched (by choice, or because the watcher failed to start).
    pub results_poll: Duration,
    pub log_max_bytes: u64,
    pub log_keep: u32,
    pub log_level: log::LevelFilter,
    /// Every key with its effective value (defaults applied, paths resolved,
    /// token redacted), as `check` prints it. Filled by the parser as it
    /// reads each key, so the list of keys is written once.
    effective: Map<String, Value>,
}

/// A string that must never be logged. `Debug` and `Display` print
/// `<redacted>`; the only way to the text is [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
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

/// The newest hub's limits for identify (4718a58 validation/schemas.ex).
const MAX_AGENT_ID_CHARS: usize = 128;
const MAX_TOKEN_CHARS: usize = 256;

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

    /// Parses config text as if it had been read from `path` (relative paths
    /// resolve against `path`'s directory).
    pub fn from_json_str(text: &str, path: &Path) -> Result<(Config, Vec<String>), Error> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("{}: not valid JSON: {e}", path.display())))?;
        let Value::Object(object) = value else {
            return Err(Error::Config(format!("{}: the top level must be a JSON object", path.display())));
        };
        let base_dir = base_dir_of(path);
        let keys = Keys { object: &object, path, effective: RefCell::new(Map::new()) };

        // The newest hub refuses longer ones (a schema violation on every
        // identify); unlike free text they cannot be cut.
        let agent_id = keys.required_string("agent_id")?;
        if agent_id.chars().count() > MAX_AGENT_ID_CHARS {
            return Err(keys.error("agent_id", &format!("must be at most {MAX_AGENT_ID_CHARS} characters")));
        }
        let token = keys.required_string("token")?;
        keys.show("token", Value::from("<redacted>"));
        if token.chars().count() > MAX_TOKEN_CHARS {
            return Err(keys.error("token", &format!("must be at most {MAX_TOKEN_CHARS} characters")));
        }
        let token = Secret::new(token);
        let hub_url = keys.required_string("hub_url")?;
        let hub_url = checks::parse_hub_url(&hub_url).map_err(|why| keys.error("hub_url", &why))?;
        keys.show("hub_url", Value::from(redact_url(&hub_url)));
        let name = keys.string("name")?.unwrap_or_else(|| agent_id.clone());
        keys.show("name", Value::from(name.as_str()));

        let resolve = |p: String| -> PathBuf {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                join_without_dots(&base_dir, &p)
            }
        };

        let show_path = |key: &str, p: &Path| keys.show(key, Value::from(p.display().to_string()));
        let wake_command = keys.string("wake_command")?.filter(|c| !c.trim().is_empty());
        keys.show("wake_command", wake_command.clone().map_or(Value::Null, Value::from));
        let update_command = keys.string("update_command")?.filter(|c| !c.trim().is_empty());
        keys.show("update_command", update_command.clone().map_or(Value::Null, Value::from));
        let update_log = resolve(keys.string("update_log")?.unwrap_or_else(|| "./update.log".into()));
        show_path("update_log", &update_log);
        // The binary channel (src/selfupdate): one block, checked here so a
        // bad key stops the start, not the first update.
        let update_url = keys.string("update_url")?.filter(|u| !u.trim().is_empty());
        if let Some(url) = &update_url {
            crate::selfupdate::check_update_url(url).map_err(|why| keys.error("update_url", &why))?;
        }
        keys.show("update_url", update_url.as_deref().map_or(Value::Null, |u| Value::from(redact_url(u))));
        let update_public_key = keys.string("update_public_key")?.map(|k| k.trim().to_owned());
        match (&update_url, &update_public_key) {
            (_, Some(key)) => crate::selfupdate::check_public_key(key)
                .map_err(|why| keys.error("update_public_key", &why))?,
            (Some(_), None) => {
                return Err(keys.error("update_public_key", "missing (required with update_url)"))
            }
            (None, None) => {}
        }
        keys.show("update_public_key", update_public_key.clone().map_or(Value::Null, Value::from));
        let update_timeout = keys.millis("update_timeout_ms", 30_000, 1)?;
        let results_dir = resolve(keys.string("results_dir")?.unwrap_or_else(|| "./results".into()));
        show_path("results_dir", &results_dir);
        let log_file = resolve(keys.string("log_file")?.unwrap_or_else(|| "./sidecar.log".into()));
        show_path("log_file", &log_file);
        let queue_file = resolve(keys.string("queue_file")?.unwrap_or_else(|| "./queue.json".into()));
        show_path("queue_file", &queue_file);
        let tls_ca_file = keys.string("tls_ca_file")?.map(resolve);
        if let Some(ca) = &tls_ca_file {
            show_path("tls_ca_file", ca);
        }
        if let Some(ca) = &tls_ca_file {
            if !ca.is_file() {
                return Err(keys.error("tls_ca_file", &format!("{} is not a readable file", ca.display())));
            }
        }

        let reconnect_initial = keys.millis("reconnect_initial_ms", 1_000, 1)?;
        let reconnect_max = keys.millis("reconnect_max_ms", 60_000, 1)?;
        if reconnect_max < reconnect_initial {
            return Err(keys.error("reconnect_max_ms", "must not be smaller than reconnect_initial_ms"));
        }
        let reconnect_jitter = match keys.string("reconnect_jitter")? {
            None => JitterStrategy::default(),
            Some(name) => JitterStrategy::parse(&name).ok_or_else(|| {
                keys.error(
                    "reconnect_jitter",
                    &format!("expected one of {}", JitterStrategy::NAMES.join(", ")),
                )
            })?,
        };
        keys.show("reconnect_jitter", Value::from(reconnect_jitter.name()));

        let wake_mode = match keys.string("wake_mode")? {
            None => crate::wake::WakeMode::default(),
            Some(name) => crate::wake::WakeMode::parse(&name)
                .ok_or_else(|| keys.error("wake_mode", "expected \"launch\" or \"run\""))?,
        };
        keys.show("wake_mode", Value::from(wake_mode.name()));

        let hub_features = keys
            .string_list("hub_features")?
            .unwrap_or_default()
            .iter()
            .map(|name| {
                HubFeature::parse(name).ok_or_else(|| {
                    let known: Vec<&str> = HubFeature::ALL.iter().map(|f| f.name()).collect();
                    keys.error(
                        "hub_features",
                        &format!("unknown feature {name:?} (known: {})", known.join(", ")),
                    )
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;

        let log_level: log::LevelFilter = match keys.string("log_level")?.as_deref() {
            None => log::LevelFilter::Info,
            Some(level) => level.parse().map_err(|_| {
                keys.error("log_level", "expected one of off, error, warn, info, debug, trace")
            })?,
        };
        keys.show("log_level", Value::from(log_level.to_string().to_lowercase()));

        let wake_retry_delays = match keys.object.get("wake_retry_delays_ms") {
            None | Some(Value::Null) => vec![
                Duration::from_millis(5_000),
                Duration::from_millis(15_000),
                Duration::from_millis(30_000),
            ],
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_u64().map(Duration::from_millis))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    keys.error(
                        "wake_retry_delays_ms",
                        "expected an array of non-negative integers (milliseconds)",
                    )
                })?,
            Some(_) => {
                return Err(keys.error(
                    "wake_retry_delays_ms",
                    "expected an array of non-negative integers (milliseconds)",
                ))
            }
        };
        let delays_ms: Vec<Value> =
            wake_retry_delays.iter().map(|d| Value::from(d.as_millis() as u64)).collect();
        keys.show("wake_retry_delays_ms", Value::from(delays_ms));

        let config = Config {
            config_path: path.to_path_buf(),
            agent_id,
            name,
            token,
            hub_url,
            wake_command,
            update_command,
            update_log,
            update_url,
            update_public_key,
            update_timeout,
            capabilities: keys.string_list("capabilities")?.unwrap_or_default(),
            confirmation_timeout: keys.millis("confirmation_timeout_ms", 30_000, 1)?,
            results_dir,
            log_file,
            queue_file,
            heartbeat_interval: keys.millis("heartbeat_interval_ms", 30_000, 1)?,
            pong_timeout: keys.millis("pong_timeout_ms", 10_000, 1)?,
            reconnect_initial,
            reconnect_max,
            reconnect_jitter,
            connect_timeout: keys.millis("connect_timeout_ms", 10_000, 1)?,
            tls_ca_file,
            max_message_bytes: keys.integer("max_message_bytes", 4 << 20, 1024)? as usize,
            wake_timeout: keys.millis("wake_timeout_ms", 60_000, 1)?,
            wake_retry_delays,
            wake_mode,
            cancel_grace: keys.millis("cancel_grace_ms", 10_000, 0)?,
            hub_features,
            max_result_bytes: keys.integer("max_result_bytes", 1 << 20, 1)?,
            task_timeout: keys.optional_millis("task_timeout_ms")?,
            result_settle: keys.millis("result_settle_ms", 2_000, 0)?,
            progress_interval: keys.millis("progress_interval_ms", 1_000, 0)?,
            shutdown_grace: keys.millis("shutdown_grace_ms", 500, 0)?,
            reply_timeout: keys.millis("reply_timeout_ms", 30_000, 1)?,
            readopt_window: keys.millis("readopt_window_ms", 600_000, 0)?,
            adopted_silence: keys.millis("adopted_silence_ms", 1_800_000, 1)?,
            keepalive_interval: Some(keys.millis("keepalive_interval_ms", 60_000, 0)?)
                .filter(|d| !d.is_zero()),
            rate_limits: RateLimits {
                light: keys.integer_at_most("rate_limit_light", 120, 1, 1_000_000)? as u32,
                normal: keys.integer_at_most("rate_limit_normal", 60, 1, 1_000_000)? as u32,
                heavy: keys.integer_at_most("rate_limit_heavy", 10, 1, 1_000_000)? as u32,
                window: Duration::from_millis(keys.integer_at_most(
                    "rate_limit_window_ms",
                    60_000,
                    100,
                    86_400_000,
                )?),
            },
            watch_results: keys.boolean("watch_results", true)?,
            results_poll: keys.millis("results_poll_ms", 1_000, 10)?,
            log_max_bytes: keys.integer("log_max_bytes", 10 << 20, 1024)?,
            log_keep: keys.integer_at_most("log_keep", 5, 0, 1_000)? as u32,
            log_level,
            effective: Map::new(),
        };
        let mut effective = keys.effective.into_inner();
        effective.insert("config_path".into(), Value::from(path.display().to_string()));
        effective.insert("agent_id".into(), Value::from(config.agent_id.as_str()));
        effective.insert("capabilities".into(), Value::from(config.capabilities.clone()));
        let features: Vec<&str> = config.hub_features.iter().map(|f| f.name()).collect();
        effective.insert("hub_features".into(), Value::from(features));
        // A key is known when the parser asked for it; anything else is
        // warned about, not refused, so a newer config keeps working with an
        // older binary.
        // One close to a known key is a typo, though: refused, with the
        // key it probably meant.
        let known = || effective.keys().map(String::as_str).filter(|k| *k != "config_path");
        let mut warnings = Vec::new();
        for key in object.keys().filter(|key| !effective.contains_key(key.as_str())) {
            if let Some(meant) = checks::suggestion(key, known()) {
                return Err(Error::Config(format!(
                    "{}: key `{key}` is unknown: did you mean {meant}?",
                    path.display()
                )));
            }
            warnings.push(format!("{}: unknown key `{key}` ignored", path.display()));
        }
        if config.wake_command.is_none() && config.task_timeout.is_none() {
            warnings.push(format!(
                "{}: no wake_command and no task_timeout_ms: tasks are accepted but no agent is woken, and a \
                 task no agent picks up on its own stays `working` for ever (set wake_command, or \
                 task_timeout_ms to fail such tasks)",
                path.display()
            ));
        }
        Ok((Config { effective, ..config }, warnings))
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

    pub fn has_hub_feature(&self, feature: HubFeature) -> bool {
        self.hub_features.contains(&feature)
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

/// Typed access to the top-level object with errors that name file and key.
struct Keys<'a> {
    object: &'a Map<String, Value>,
    path: &'a Path,
    /// Every key asked for, with the value `check` shows for it.
    effective: RefCell<Map<String, Value>>,
}

impl Keys<'_> {
    /// Records what `check` shows for `key` (replacing what the typed reader
    /// recorded, e.g. a resolved path instead of the text).
    fn show(&self, key: &str, value: Value) {
        self.effective.borrow_mut().insert(key.to_owned(), value);
    }

    fn error(&self, key: &str, why: &str) -> Error {
        Error::Config(format!("{}: key `{key}`: {why}", self.path.display()))
    }

    fn required_string(&self, key: &str) -> Result<String, Error> {
        self.show(key, Value::Null);
        match self.object.get(key) {
            None | Some(Value::Null) => Err(self.error(key, "missing (required)")),
            Some(Value::String(s)) if s.trim().is_empty() => Err(self.error(key, "must not be empty")),
            Some(Value::String(s)) => {
                self.show(key, Value::from(s.as_str()));
                Ok(s.clone())
            }
            Some(other) => Err(self.error(key, &format!("expected a string, found {}", kind(other)))),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, Error> {
        self.show(key, Value::Null);
        match self.object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.error(key, &format!("expected a string, found {}", kind(other)))),
        }
    }

    fn string_list(&self, key: &str) -> Result<Option<Vec<String>>, Error> {
        self.show(key, Value::Null);
        match self.object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| self.error(key, "expected an array of strings")),
            Some(other) => {
                Err(self.error(key, &format!("expected an array of strings, found {}", kind(other))))
            }
        }
    }

    fn boolean(&self, key: &str, default: bool) -> Result<bool, Error> {
        let value = match self.object.get(key) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(self.error(key, &format!("expected true or false, found {}", kind(other))))
            }
        };
        self.show(key, Value::from(value));
        Ok(value)
    }

    fn integer(&self, key: &str, default: u64, min: u64) -> Result<u64, Error> {
        self.show(key, Value::from(default));
        match self.object.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(value) => match value.as_u64() {
                Some(n) if n >= min => {
                    self.show(key, Value::from(n));
                    Ok(n)
                }
                Some(_) => Err(self.error(key, &format!("must be at least {min}"))),
                None => {
                    Err(self.error(key, &format!("expected a non-negative integer, found {}", kind(value))))
                }
            },
        }
    }

    fn integer_at_most(&self, key: &str, default: u64, min: u64, max: u64) -> Result<u64, Error> {
        match self.integer(key, default, min)? {
            n if n > max => Err(self.error(key, &format!("must be at most {max}"))),
            n => Ok(n),
        }
    }

    fn millis(&self, key: &str, default: u64, min: u64) -> Result<Duration, Error> {
        self.integer(key, default, min).map(Duration::from_millis)
    }

    fn optional_millis(&self, key: &str) -> Result<Option<Duration>, Error> {
        self.show(key, Value::Null);
        match self.object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.millis(key, 0, 1).map(Some),
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(n) if n.is_i64() && n.as_i64().unwrap_or(0) < 0 => "a negative number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

mod checks;
#[cfg(test)]
mod tests;
