//! 4718a58's protocol guards, with time passed in: the per-connection
//! violation counter, the per-agent cooldown after a 1008 close, and the
//! per-agent token buckets of the rate limiter. cbf9c20 has none of them.

use std::time::{Duration, Instant};

use super::profile::{Bucket, HubLimits};

/// Schema violations of one connection ((4718a58) socket.ex:82: the counter is
/// in the socket's state, so it starts at 0 on every connection).
#[derive(Debug, Default)]
pub(super) struct Violations {
    count: u32,
    window_start: Option<Instant>,
}

impl Violations {
    /// Counts one violation; true when the count reaches the limit and the
    /// socket is to be closed. The window is fixed: it starts at the first
    /// violation and a violation after it starts a new one at 1
    /// ((4718a58) validation/violation_tracker.ex:27-28, 46-62).
    pub(super) fn record(&mut self, now: Instant, limits: &HubLimits) -> bool {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) <= limits.violation_window => {
                self.count += 1;
            }
            _ => {
                self.window_start = Some(now);
                self.count = 1;
            }
        }
        self.count >= limits.max_violations
    }

    pub(super) fn count(&self) -> u32 {
        self.count
    }
}

/// An agent's record of 1008 closes ((4718a58) violation_tracker.ex:82-95: ETS
/// `{agent_id, count, last_disconnect_at}`; nothing ever clears it).
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    pub(super) closes: u32,
    pub(super) last_close: Instant,
}

impl Backoff {
    /// How long identify is still refused: 30 s after the first close, 60 s
    /// after the second, 300 s after any later one, from the last close
    /// ((4718a58) violation_tracker.ex:103-120, 172-175).
    pub(super) fn cooldown_left(&self, now: Instant, limits: &HubLimits) -> Option<Duration> {
        let step = usize::try_from(self.closes.clamp(1, 3)).unwrap_or(3) - 1;
        let until = self.last_close + limits.cooldowns[step];
        let left = until.saturating_duration_since(now);
        (!left.is_zero()).then_some(left)
    }
}

/// The close reason of an identify refused during a cooldown:
/// `div(ms_left, 1000) + 1` whole seconds ((4718a58) violation_tracker.ex:111,
/// socket.ex:325-327).
pub(super) fn cooldown_reason(left: Duration) -> String {
    format!("cooldown active: retry in {}s", left.as_millis() / 1000 + 1)
}

/// A rate-limit tier ((4718a58) rate_limiter/config.ex:15-31).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Tier {
    Light,
    Normal,
    Heavy,
}

impl Tier {
    /// Light: ping and the read-only chat queries; heavy: identify (metered
    /// only on an identified connection, (4718a58) socket.ex:249-252);
    /// anything else a connection can send is normal.
    pub(super) fn of(frame_type: &str) -> Tier {
        match frame_type {
            "ping" | "list_agents" | "list_channels" | "status" | "channel_history" => Tier::Light,
            "identify" => Tier::Heavy,
            _ => Tier::Normal,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Tier::Light => "light",
            Tier::Normal => "normal",
            Tier::Heavy => "heavy",
        }
    }

    pub(super) fn bucket(self, limits: &HubLimits) -> Bucket {
        match self {
            Tier::Light => limits.light,
            Tier::Normal => limits.normal,
            Tier::Heavy => limits.heavy,
        }
    }
}

/// What the rate limiter decides for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    Allow,
    /// Handled, after a `rate_limit_warning` ((4718a58) socket.ex:266-290).
    Warn {
        remaining: u32,
        capacity: u32,
    },
    /// Dropped unhandled, answered `rate_limited` ((4718a58) socket.ex:292-302).
    Deny {
        retry_after_ms: u64,
    },
}

/// The hub's internal units: a token is 1000 ((4718a58) rate_limiter.ex:28).
const TOKEN_COST: u64 = 1000;

/// One agent's bucket of one tier, as 4718a58 keeps it: tokens in internal
/// units (a token is 1000, so partial tokens count), refilled lazily on each
/// check by `trunc(elapsed_ms * rate)` with the clock in whole milliseconds
/// ((4718a58) rate_limiter.ex:509-553). Keyed by agent, not by connection,
/// so a reconnect does not refill it.
#[derive(Debug)]
pub(super) struct TokenBucket {
    units: u64,
    /// The hub's `last_refill`, in whole milliseconds since `origin`.
    last_ms: u64,
    origin: Instant,
}

impl TokenBucket {
    /// A fresh bucket starts full (the hub creates it at the first frame,
    /// full minus that frame's cost).
    pub(super) fn full(bucket: &Bucket, now: Instant) -> TokenBucket {
        TokenBucket { units: u64::from(bucket.capacity) * TOKEN_COST, last_ms: 0, origin: now }
    }

    /// Refills, then takes one token. A warning goes with every frame that
    /// leaves less than 20 % of the capacity, naming the whole tokens left
    /// ((4718a58) rate_limiter.ex:29, 518-528). A denial's `retry_after_ms`
    /// is the time until the missing part of a token has refilled, rounded
    /// up to whole seconds ((4718a58) rate_limiter.ex:529-536).
    pub(super) fn take(&mut self, bucket: &Bucket, now: Instant) -> Admit {
        let capacity = u64::from(bucket.capacity) * TOKEN_COST;
        // Internal units per millisecond: (4718a58) config.ex:66-68.
        let refill_ms = (bucket.refill_every.as_secs_f64() * 1000.0).max(1e-3);
        let rate = TOKEN_COST as f64 / refill_ms;
        let now_ms =
            u64::try_from(now.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX);
        let elapsed = now_ms.saturating_sub(self.last_ms);
        let earned = (elapsed as f64 * rate).trunc();
        let refilled =
            if earned >= capacity as f64 { capacity } else { (self.units + earned as u64).min(capacity) };
        self.last_ms = now_ms;
        if refilled < TOKEN_COST {
            self.units = refilled;
            let needed = (TOKEN_COST - refilled) as f64;
            let retry_ms = (needed / rate).ceil() as u64;
            return Admit::Deny { retry_after_ms: retry_ms.div_ceil(1000) * 1000 };
        }
        self.units = refilled - TOKEN_COST;
        if self.units < capacity / 5 {
            let remaining = u32::try_from(self.units / TOKEN_COST).unwrap_or(u32::MAX);
            Admit::Warn { remaining, capacity: bucket.capacity }
        } else {
            Admit::Allow
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_tenth_violation_in_a_window_closes_and_a_later_one_starts_over() {
        let limits = HubLimits { violation_window: ms(1000), ..HubLimits::default() };
        let t0 = Instant::now();
        let mut violations = Violations::default();
        for i in 0..9 {
            assert!(!violations.record(t0 + ms(i * 10), &limits), "violation {}", i + 1);
        }
        assert_eq!(violations.count(), 9);
        // The window is fixed from the first violation: past it, count 1.
        assert!(!violations.record(t0 + ms(1001), &limits));
        assert_eq!(violations.count(), 1);
        for i in 0..8 {
            assert!(!violations.record(t0 + ms(1002 + i), &limits));
        }
        assert!(violations.record(t0 + ms(1500), &limits), "the 10th in the new window");
    }

    #[test]
    fn cooldowns_grow_with_each_close_and_never_reset() {
        let limits = HubLimits::default();
        let t0 = Instant::now();
        let left = |closes: u32, after: Duration| {
            Backoff { closes, last_close: t0 }.cooldown_left(t0 + after, &limits)
        };
        assert_eq!(left(1, ms(0)), Some(Duration::from_secs(30)));
        assert_eq!(left(1, Duration::from_secs(30)), None);
        assert_eq!(left(2, Duration::from_secs(59)), Some(Duration::from_secs(1)));
        assert_eq!(left(3, Duration::from_secs(299)), Some(Duration::from_secs(1)));
        assert_eq!(left(7, Duration::from_secs(100)), Some(Duration::from_secs(200)));
        assert_eq!(cooldown_reason(ms(26_500)), "cooldown active: retry in 27s");
        assert_eq!(cooldown_reason(ms(999)), "cooldown active: retry in 1s");
    }

    #[test]
    fn a_bucket_allows_warns_denies_and_refills() {
        let bucket = Bucket { capacity: 10, refill_every: ms(100) };
        let t0 = Instant::now();
        let mut tokens = TokenBucket::full(&bucket, t0);
        let admits: Vec<Admit> = (0..11).map(|_| tokens.take(&bucket, t0)).collect();
        assert_eq!(admits[..8], [Admit::Allow; 8]);
        // 1 left of 10 is under 20 %; 2 left is not.
        assert_eq!(admits[8], Admit::Warn { remaining: 1, capacity: 10 });
        assert_eq!(admits[9], Admit::Warn { remaining: 0, capacity: 10 });
        assert_eq!(admits[10], Admit::Deny { retry_after_ms: 1000 });
        assert_eq!(tokens.take(&bucket, t0 + ms(99)), Admit::Deny { retry_after_ms: 1000 });
        assert_eq!(tokens.take(&bucket, t0 + ms(100)), Admit::Warn { remaining: 0, capacity: 10 });
        // Refill is capped at the capacity.
        assert_eq!(tokens.take(&bucket, t0 + Duration::from_secs(60)), Admit::Allow);
        let slow = Bucket { capacity: 1, refill_every: ms(2500) };
        let mut tokens = TokenBucket::full(&slow, t0);
        tokens.take(&slow, t0);
        assert_eq!(tokens.take(&slow, t0), Admit::Deny { retry_after_ms: 3000 });
    }

    #[test]
    fn partial_tokens_count_and_a_denial_names_the_time_to_the_next_whole_one() {
        // The hub's normal bucket: 60, one a second.
        let bucket = Bucket { capacity: 60, refill_every: Duration::from_secs(1) };
        let t0 = Instant::now();
        let mut tokens = TokenBucket::full(&bucket, t0);
        let admits: Vec<Admit> = (0..61).map(|_| tokens.take(&bucket, t0)).collect();
        assert_eq!(admits[..48], [Admit::Allow; 48]);
        // 11 left is under 20 % of 60 (12); 12 is not.
        assert_eq!(admits[48], Admit::Warn { remaining: 11, capacity: 60 });
        assert_eq!(admits[60], Admit::Deny { retry_after_ms: 1000 });
        // Half a token after 500 ms: still denied, and the half is kept.
        assert_eq!(tokens.take(&bucket, t0 + ms(500)), Admit::Deny { retry_after_ms: 1000 });
        assert_eq!(tokens.take(&bucket, t0 + ms(999)), Admit::Deny { retry_after_ms: 1000 });
        assert_eq!(tokens.take(&bucket, t0 + ms(1000)), Admit::Warn { remaining: 0, capacity: 60 });
        // 1.5 tokens later: one taken, half of one left, which the next
        // half second completes.
        assert_eq!(tokens.take(&bucket, t0 + ms(2500)), Admit::Warn { remaining: 0, capacity: 60 });
        assert_eq!(tokens.take(&bucket, t0 + ms(3000)), Admit::Warn { remaining: 0, capacity: 60 });
        // Heavy: 10 a minute, a token every 6 s.
        let heavy = Bucket { capacity: 10, refill_every: Duration::from_secs(6) };
        let mut tokens = TokenBucket::full(&heavy, t0);
        for _ in 0..10 {
            tokens.take(&heavy, t0);
        }
        assert_eq!(tokens.take(&heavy, t0), Admit::Deny { retry_after_ms: 6000 });
        assert_eq!(tokens.take(&heavy, t0 + ms(1500)), Admit::Deny { retry_after_ms: 5000 });
    }

    #[test]
    fn tiers_follow_the_hub_config() {
        assert_eq!(Tier::of("ping"), Tier::Light);
        assert_eq!(Tier::of("identify"), Tier::Heavy);
        for frame_type in ["task_accepted", "task_complete", "wake_result", "state_report", "whatever"] {
            assert_eq!(Tier::of(frame_type), Tier::Normal, "{frame_type}");
        }
    }
}
