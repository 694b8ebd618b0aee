//! The parser: config.json's text to a [`Config`], each key read, checked
//! and defaulted in one place, in the order its errors are reported. The
//! core's part goes straight into its [`Settings`]; what it derives from the
//! keys (a wake command is set, the backoff from `reconnect_*`, the hub
//! features) is derived here, once.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use super::keys::Keys;
use super::{checks, redact_url, Config, HubFeature};
use crate::error::Error;
use crate::retry::{BackoffPolicy, JitterStrategy};
use crate::state::{LinkSettings, RateLimits, Secret, Settings, WakeMode};

/// The newest hub's limits for identify (4718a58 validation/schemas.ex).
const MAX_AGENT_ID_CHARS: usize = 128;
const MAX_TOKEN_CHARS: usize = 256;

impl Config {
    /// Parses config text as if it had been read from `path` (relative paths
    /// resolve against `path`'s directory).
    pub fn from_json_str(text: &str, path: &Path) -> Result<(Config, Vec<String>), Error> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("{}: not valid JSON: {e}", path.display())))?;
        let Value::Object(object) = value else {
            return Err(Error::Config(format!("{}: the top level must be a JSON object", path.display())));
        };
        let base_dir = super::base_dir_of(path);
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
                super::join_without_dots(&base_dir, &p)
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
            None => WakeMode::default(),
            Some(name) => WakeMode::parse(&name)
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

        let capabilities = keys.string_list("capabilities")?.unwrap_or_default();
        let confirmation_timeout = keys.millis("confirmation_timeout_ms", 30_000, 1)?;
        let heartbeat_interval = keys.millis("heartbeat_interval_ms", 30_000, 1)?;
        let pong_timeout = keys.millis("pong_timeout_ms", 10_000, 1)?;
        let connect_timeout = keys.millis("connect_timeout_ms", 10_000, 1)?;
        let max_message_bytes = keys.integer("max_message_bytes", 4 << 20, 1024)? as usize;
        let wake_timeout = keys.millis("wake_timeout_ms", 60_000, 1)?;
        let cancel_grace = keys.millis("cancel_grace_ms", 10_000, 0)?;
        let max_result_bytes = keys.integer("max_result_bytes", 1 << 20, 1)?;
        let task_timeout = keys.optional_millis("task_timeout_ms")?;
        let result_settle = keys.millis("result_settle_ms", 2_000, 0)?;
        let progress_interval = keys.millis("progress_interval_ms", 1_000, 0)?;
        let shutdown_grace = keys.millis("shutdown_grace_ms", 500, 0)?;
        let reply_timeout = keys.millis("reply_timeout_ms", 30_000, 1)?;
        let readopt_window = keys.millis("readopt_window_ms", 600_000, 0)?;
        let adopted_silence = keys.millis("adopted_silence_ms", 1_800_000, 1)?;
        let keepalive_interval =
            Some(keys.millis("keepalive_interval_ms", 60_000, 0)?).filter(|d| !d.is_zero());
        let rate_limits = RateLimits {
            light: keys.integer_at_most("rate_limit_light", 120, 1, 1_000_000)? as u32,
            normal: keys.integer_at_most("rate_limit_normal", 60, 1, 1_000_000)? as u32,
            heavy: keys.integer_at_most("rate_limit_heavy", 10, 1, 1_000_000)? as u32,
            window: Duration::from_millis(keys.integer_at_most(
                "rate_limit_window_ms",
                60_000,
                100,
                86_400_000,
            )?),
        };
        let watch_results = keys.boolean("watch_results", true)?;
        let results_poll = keys.millis("results_poll_ms", 1_000, 10)?;

        let settings = Settings {
            agent_id,
            name,
            token,
            capabilities,
            has_wake_command: wake_command.is_some(),
            wake_mode,
            cancel_grace,
            has_update_command: update_command.is_some() || update_url.is_some(),
            link: LinkSettings {
                heartbeat_interval,
                pong_timeout,
                connect_timeout,
                backoff: BackoffPolicy {
                    initial: reconnect_initial,
                    max: reconnect_max,
                    jitter: reconnect_jitter,
                },
                reply_timeout,
                rate_limits,
            },
            confirmation_timeout,
            wake_retry_delays,
            task_timeout,
            result_settle,
            progress_interval,
            readopt_window,
            adopted_silence,
            keepalive_interval,
            send_wake_result: hub_features.contains(&HubFeature::WakeResult),
            send_state_report: hub_features.contains(&HubFeature::StateReport),
            results_poll,
            // Until the shell finds that the watcher cannot start.
            rescan_results: !watch_results,
        };
        let config = Config {
            config_path: path.to_path_buf(),
            hub_url,
            wake_command,
            update_command,
            update_log,
            update_url,
            update_public_key,
            update_timeout,
            results_dir,
            log_file,
            queue_file,
            tls_ca_file,
            max_message_bytes,
            wake_timeout,
            max_result_bytes,
            shutdown_grace,
            watch_results,
            log_max_bytes: keys.integer("log_max_bytes", 10 << 20, 1024)?,
            log_keep: keys.integer_at_most("log_keep", 5, 0, 1_000)? as u32,
            log_level,
            settings,
            effective: Map::new(),
        };
        let mut effective = keys.effective.into_inner();
        effective.insert("config_path".into(), Value::from(path.display().to_string()));
        effective.insert("agent_id".into(), Value::from(config.settings.agent_id.as_str()));
        effective.insert("capabilities".into(), Value::from(config.settings.capabilities.clone()));
        let features: Vec<&str> = hub_features.iter().map(|f| f.name()).collect();
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
        if config.wake_command.is_none() && config.settings.task_timeout.is_none() {
            warnings.push(format!(
                "{}: no wake_command and no task_timeout_ms: tasks are accepted but no agent is woken, and a \
                 task no agent picks up on its own stays `working` for ever (set wake_command, or \
                 task_timeout_ms to fail such tasks)",
                path.display()
            ));
        }
        Ok((Config { effective, ..config }, warnings))
    }
}
