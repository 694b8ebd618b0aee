//! Which real hub the development hub plays, and the limits it enforces.
//!
//! Every behaviour that differs between the two real AgentCom hubs
//! (notno/AgentCom) is decided here by [`HubVersion`]; the places that model
//! one name the hub source file, line and version in a comment (files under
//! `lib/agent_com/`). The limits are the real hub's by default and every one
//! is configurable, so tests run in milliseconds.

use std::fmt;
use std::time::Duration;

/// A real AgentCom hub version the devhub reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HubVersion {
    /// cbf9c20 (2026-02-10), the hub the Node sidecar was written for: no
    /// schema validation and no rate limits; any unhandled type (including
    /// `task_rejected`, `wake_result`, `state_report`) is answered
    /// `unknown_message_type`; a `task_failed` at the current generation
    /// crashes its TaskQueue and the socket closes with 1011.
    Cbf9c20,
    /// 4718a58 (2026-02-14), the newest: validates every frame against a
    /// schema with length limits, counts violations and closes with 1008 and
    /// a cooldown after ten in a minute, rate-limits each agent, answers
    /// `wake_result` and `state_report`.
    #[default]
    V4718a58,
}

impl HubVersion {
    pub const ALL: [HubVersion; 2] = [HubVersion::Cbf9c20, HubVersion::V4718a58];

    /// The short commit name: `cbf9c20` or `4718a58`.
    pub fn name(self) -> &'static str {
        match self {
            HubVersion::Cbf9c20 => "cbf9c20",
            HubVersion::V4718a58 => "4718a58",
        }
    }

    /// Parses a commit name (`cbf9c20`, `4718a58`, or a longer prefix of
    /// either full hash).
    pub fn parse(text: &str) -> Option<HubVersion> {
        let text = text.trim().to_ascii_lowercase();
        if text.len() < 7 {
            return None;
        }
        HubVersion::ALL.into_iter().find(|version| {
            let full = match version {
                HubVersion::Cbf9c20 => "cbf9c20e679e",
                HubVersion::V4718a58 => "4718a58e5a3a",
            };
            full.starts_with(&text) || text.starts_with(full)
        })
    }

    /// 4718a58 validates every frame before anything else
    /// ((4718a58) socket.ex:95-101); cbf9c20 has no schema.
    pub(super) fn validates(self) -> bool {
        self == HubVersion::V4718a58
    }

    /// 4718a58 rate-limits identified connections ((4718a58) socket.ex:247-304).
    pub(super) fn rate_limits(self) -> bool {
        self == HubVersion::V4718a58
    }

    /// cbf9c20's `fail_task` updates `last_error`, a key its tasks do not
    /// have, and raises ((cbf9c20) task_queue.ex:202-225, 399-428).
    pub(super) fn crashes_on_task_failed(self) -> bool {
        self == HubVersion::Cbf9c20
    }

    /// 4718a58 handles `wake_result` ((4718a58) socket.ex:522-533) and
    /// `state_report` ((4718a58) socket.ex:537-585); cbf9c20 answers both with
    /// `unknown_message_type` ((cbf9c20) socket.ex:377-379).
    pub(super) fn has_reports(self) -> bool {
        self == HubVersion::V4718a58
    }

    /// The stuck sweep's threshold: an assigned task untouched this long is
    /// taken back. cbf9c20: 5 min ((cbf9c20) scheduler.ex:50-51). 4718a58: 10 min
    /// ((4718a58) scheduler.ex:65-66).
    fn default_stuck_after(self) -> Duration {
        match self {
            HubVersion::Cbf9c20 => Duration::from_secs(5 * 60),
            HubVersion::V4718a58 => Duration::from_secs(10 * 60),
        }
    }
}

impl fmt::Display for HubVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A token bucket: `capacity` tokens, one more every `refill_every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub capacity: u32,
    pub refill_every: Duration,
}

/// The limits a hub enforces. Defaults are the real hubs'.
#[derive(Debug, Clone, PartialEq)]
pub struct HubLimits {
    /// 4718a58: violations are counted in a fixed window that starts at the
    /// first one ((4718a58) validation/violation_tracker.ex:27-28, 46-62). 60 s.
    pub violation_window: Duration,
    /// 4718a58: the violation that makes the count reach this closes the
    /// socket with 1008 ((4718a58) socket.ex:720-734). 10.
    pub max_violations: u32,
    /// 4718a58: the cooldown after the 1st, 2nd and 3rd-or-later 1008 close
    /// of an agent; it never decays ((4718a58) violation_tracker.ex:30-33,
    /// 103-120). 30 s, 60 s, 300 s.
    pub cooldowns: [Duration; 3],
    /// 4718a58: `light` tier (ping): 120 tokens, 2 per second
    /// ((4718a58) rate_limiter/config.ex:15, 66-68).
    pub light: Bucket,
    /// 4718a58: `normal` tier (every task frame, and any type not listed):
    /// 60 tokens, 1 per second ((4718a58) rate_limiter/config.ex:15-31, 66-68).
    pub normal: Bucket,
    /// 4718a58: `heavy` tier (`identify` on an identified connection): 10
    /// tokens, one every 6 s ((4718a58) rate_limiter/config.ex:17, 66-68).
    pub heavy: Bucket,
    /// 4718a58: after a denial the scheduler skips the agent until this long
    /// after the first denial of the window ((4718a58) rate_limiter.ex:69-129,
    /// scheduler.ex:293). 60 s.
    pub rate_limited_for: Duration,
    /// The stuck sweep's threshold. `None`: the version's own (5 min on
    /// cbf9c20; 10 min on 4718a58, 20 min while the agent is working,
    /// (4718a58) scheduler.ex:193-247).
    pub stuck_after: Option<Duration>,
}

impl Default for HubLimits {
    fn default() -> Self {
        HubLimits {
            violation_window: Duration::from_secs(60),
            max_violations: 10,
            cooldowns: [Duration::from_secs(30), Duration::from_secs(60), Duration::from_secs(300)],
            light: Bucket { capacity: 120, refill_every: Duration::from_millis(500) },
            normal: Bucket { capacity: 60, refill_every: Duration::from_secs(1) },
            heavy: Bucket { capacity: 10, refill_every: Duration::from_secs(6) },
            rate_limited_for: Duration::from_secs(60),
            stuck_after: None,
        }
    }
}

impl HubLimits {
    /// The stuck threshold for a task whose agent is (or is not) working.
    pub(super) fn stuck_after(&self, version: HubVersion, agent_working: bool) -> Duration {
        let base = self.stuck_after.unwrap_or_else(|| version.default_stuck_after());
        match version {
            HubVersion::V4718a58 if agent_working => base.saturating_mul(2),
            _ => base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_short_and_long_hashes() {
        assert_eq!(HubVersion::parse("cbf9c20"), Some(HubVersion::Cbf9c20));
        assert_eq!(HubVersion::parse("4718A58"), Some(HubVersion::V4718a58));
        assert_eq!(HubVersion::parse("4718a58e5a3a"), Some(HubVersion::V4718a58));
        assert_eq!(HubVersion::parse("4718a58e5a3a0000"), Some(HubVersion::V4718a58));
        assert_eq!(HubVersion::parse("4718"), None);
        assert_eq!(HubVersion::parse("deadbee"), None);
        assert_eq!(HubVersion::default(), HubVersion::V4718a58);
        for version in HubVersion::ALL {
            assert_eq!(HubVersion::parse(version.name()), Some(version));
        }
    }

    #[test]
    fn the_stuck_threshold_follows_the_version() {
        let limits = HubLimits::default();
        assert_eq!(limits.stuck_after(HubVersion::Cbf9c20, true), Duration::from_secs(300));
        assert_eq!(limits.stuck_after(HubVersion::V4718a58, false), Duration::from_secs(600));
        assert_eq!(limits.stuck_after(HubVersion::V4718a58, true), Duration::from_secs(1200));
        let short = HubLimits { stuck_after: Some(Duration::from_millis(100)), ..HubLimits::default() };
        assert_eq!(short.stuck_after(HubVersion::Cbf9c20, true), Duration::from_millis(100));
    }
}
