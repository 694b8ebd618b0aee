//! What the core is configured with: the config keys it reads, each stated
//! here once. The config parser (src/config) fills these structs directly
//! and embeds them in its `Config`; the core never sees the config file.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::link::RateLimits;
use crate::retry::BackoffPolicy;

/// The core's settings, as plain values.
#[derive(Debug, Clone)]
pub struct Settings {
    pub agent_id: String,
    /// Display name sent in `identify`; defaults to `agent_id`.
    pub name: String,
    pub token: Secret,
    pub capabilities: Vec<String>,
    /// A `wake_command` is configured.
    pub has_wake_command: bool,
    /// What the wake command is: a launcher, or the agent itself (`run`).
    pub wake_mode: WakeMode,
    /// How long a cancelled or timed-out agent has between SIGTERM (Windows:
    /// Ctrl-Break) and being killed; also how long a cancelled task's files
    /// (its cancel marker) stay after it is let go: its agent's time to
    /// notice and stop.
    pub cancel_grace: Duration,
    /// `restart_sidecar` starts the update (an `update_command` or an
    /// `update_url`) instead of exiting.
    pub has_update_command: bool,
    /// The connection's timers and the hub's rate budget.
    pub link: LinkSettings,
    pub confirmation_timeout: Duration,
    pub wake_retry_delays: Vec<Duration>,
    pub task_timeout: Option<Duration>,
    /// How long a result file that does not parse yet may keep changing
    /// before it is judged final (agents that do not rename atomically).
    pub result_settle: Duration,
    /// Minimum time between two `task_progress` frames for one task.
    pub progress_interval: Duration,
    /// How long the files of a task the hub took back (unsettled) are kept
    /// for the hub to hand the same task back (see `past.rs`).
    pub readopt_window: Duration,
    /// How long a task adopted without a wake (its agent had confirmed it)
    /// may show no progress and no result before it is failed (see
    /// `past.rs`).
    pub adopted_silence: Duration,
    /// Send a `task_progress` for the held task when the hub has heard
    /// nothing about it for this long (cbf9c20 takes a task back after 5 min
    /// without one; `keepalive_interval_ms`, 0: never). `None`: never.
    pub keepalive_interval: Option<Duration>,
    /// `hub_features` has `wake_result`: send one after each wake attempt.
    pub send_wake_result: bool,
    /// `hub_features` has `state_report`: send one after each reconnect.
    pub send_state_report: bool,
    /// `results_poll_ms`: how often the results directory is rescanned while
    /// a task is held and nothing watches it, how often a run-mode agent
    /// left running by an earlier run is checked, and (in the shell) how
    /// often a launch-mode command's output files are bounded.
    pub results_poll: Duration,
    /// Nothing watches the results directory (`watch_results` is off, or
    /// the shell's watcher failed to start): rescan it every `results_poll`.
    pub rescan_results: bool,
}

/// What the link (the connection to the hub) is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSettings {
    pub heartbeat_interval: Duration,
    pub pong_timeout: Duration,
    /// `connect_timeout_ms`: how long the socket thread may take to connect
    /// (the link gives up on a silent attempt after twice this), and the hub
    /// to answer `identify`.
    pub connect_timeout: Duration,
    /// The reconnect delays (`reconnect_*`).
    pub backoff: BackoffPolicy,
    /// How long a report or `task_recovering` may wait for its answer
    /// before the connection is given up (and the question asked again on
    /// the next one).
    pub reply_timeout: Duration,
    /// The newer hub's rate budget (`rate_limit_*`), which frames are paced
    /// to once the hub has shown it is that hub (or `hub_features` say so).
    pub rate_limits: RateLimits,
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

/// What the wake command is (config key `wake_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WakeMode {
    /// The command starts or pokes the agent and returns; the agent confirms
    /// with `.started` and writes its result file (the Node sidecar's
    /// behaviour).
    #[default]
    Launch,
    /// The command is the agent (a headless agent CLI): its start is the
    /// confirmation, its end the outcome (see `wake::run::conclude`).
    Run,
}

impl WakeMode {
    pub fn parse(name: &str) -> Option<WakeMode> {
        match name {
            "launch" => Some(WakeMode::Launch),
            "run" => Some(WakeMode::Run),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WakeMode::Launch => "launch",
            WakeMode::Run => "run",
        }
    }

    pub fn is_launch(&self) -> bool {
        *self == WakeMode::Launch
    }
}
