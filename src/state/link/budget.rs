//! Our model of the newer hub's rate limiter (4718a58, lib/agent_com/
//! rate_limiter.ex; docs/protocol.md 7.2): one token bucket per tier, refilled
//! continuously, holding one window's worth; every frame we send after
//! identify costs a token of its tier. The link sends a frame only when the
//! model has a token for it, so the hub never has to deny one. What the hub
//! says corrects the model: a `rate_limit_warning` tells how many tokens are
//! left, a `rate_limited` that the bucket is empty and when to try again.
//! Repeated denials back off at least as the hub does. Pure: time is passed
//! in.

use std::time::{Duration, Instant};

use crate::protocol::OutKind;

/// A rate-limit tier of the hub ((4718a58) rate_limiter/config.ex).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// `ping` (and the chat queries the sidecar never sends).
    Light,
    /// Every task frame, and any type the hub does not list.
    Normal,
    /// `identify`, which the hub does not meter before identification: we
    /// never send one after.
    Heavy,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Light, Tier::Normal, Tier::Heavy];

    /// The tier the hub puts a frame of ours in (it also puts its chat
    /// queries, which we never send, in `Light`).
    pub fn of(kind: OutKind) -> Tier {
        match kind {
            OutKind::Ping => Tier::Light,
            OutKind::Identify => Tier::Heavy,
            _ => Tier::Normal,
        }
    }

    /// The hub's name for it (`tier` in its frames).
    pub fn name(self) -> &'static str {
        match self {
            Tier::Light => "light",
            Tier::Normal => "normal",
            Tier::Heavy => "heavy",
        }
    }

    pub fn parse(name: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|tier| tier.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The hub's budget as configured: each tier's tokens per `window`, which is
/// also its bucket's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub light: u32,
    pub normal: u32,
    pub heavy: u32,
    pub window: Duration,
}

impl Default for RateLimits {
    /// 4718a58's: 120, 60 and 10 a minute ((4718a58) rate_limiter/config.ex:66-68).
    fn default() -> Self {
        RateLimits { light: 120, normal: 60, heavy: 10, window: Duration::from_secs(60) }
    }
}

impl RateLimits {
    fn per_window(&self, tier: Tier) -> u32 {
        match tier {
            Tier::Light => self.light,
            Tier::Normal => self.normal,
            Tier::Heavy => self.heavy,
        }
        .max(1)
    }

    /// The hub's backoff after 1, 2, 3, 4, 5+ denials in a row
    /// ((4718a58) rate_limiter.ex:32-34: 1, 2, 5, 10, 30 s), scaled with the
    /// window (60 s: the hub's own).
    pub fn denial_backoff(&self, consecutive: u32) -> Duration {
        const STEPS_OF_60: [u32; 5] = [1, 2, 5, 10, 30];
        let step = STEPS_OF_60[(consecutive.clamp(1, 5) - 1) as usize];
        self.window * step / 60
    }
}

/// The model refills this much slower than the hub (1 in 200: 5 ms a
/// second): the hub counts whole milliseconds, which can make it see a token
/// up to a millisecond later than the exact time.
const SLOWER_BY: i128 = 200;

/// One tier's bucket as a "theoretical empty time": it holds
/// `(now - empty_at) / per_token` tokens, at most `capacity`. Times are
/// nanoseconds since the budget's origin, signed, so that a full bucket
/// (an `empty_at` before the origin) needs no special case.
#[derive(Debug, Clone, PartialEq)]
struct Bucket {
    capacity: u32,
    per_token: i128,
    empty_at: i128,
    /// Nothing of this tier before this (after a denial).
    blocked_until: i128,
}

impl Bucket {
    fn full(capacity: u32, window: Duration, now: i128) -> Bucket {
        let per_token =
            (window.as_nanos() as i128 * (SLOWER_BY + 1) / (SLOWER_BY * i128::from(capacity))).max(1);
        Bucket { capacity, per_token, empty_at: now - per_token * i128::from(capacity), blocked_until: 0 }
    }

    /// Whole tokens now.
    #[cfg(test)]
    fn tokens(&self, now: i128) -> i128 {
        ((now - self.empty_at).div_euclid(self.per_token)).min(i128::from(self.capacity))
    }

    fn set_tokens(&mut self, tokens: i128, now: i128) {
        self.empty_at = now - tokens * self.per_token;
    }

    /// One token spent. The hub's bucket never goes below empty (it denies
    /// instead), so neither does the model: frames sent before the sidecar
    /// knew the hub rate-limits leave no debt behind.
    fn take(&mut self, now: i128) {
        let full = now - self.per_token * i128::from(self.capacity);
        self.empty_at = (self.empty_at.max(full) + self.per_token).min(now);
    }

    /// When a frame of this tier may go: its token is there and no denial
    /// holds the tier.
    fn ready_at(&self) -> i128 {
        (self.empty_at + self.per_token).max(self.blocked_until)
    }
}

/// The model of all tiers, plus the hub's count of denials in a row.
#[derive(Debug, Clone)]
pub struct Budget {
    limits: RateLimits,
    origin: Instant,
    buckets: [Bucket; 3],
    /// Denials in a row, counted as the hub counts them: reset by the first
    /// denial more than a window after the one that started the count
    /// ((4718a58) rate_limiter.ex:68-99).
    consecutive: u32,
    streak_start: i128,
}

impl Budget {
    /// Full buckets, as the hub starts an agent's.
    pub fn new(limits: RateLimits, now: Instant) -> Budget {
        let buckets = Tier::ALL.map(|tier| Bucket::full(limits.per_window(tier), limits.window, 0));
        Budget { limits, origin: now, buckets, consecutive: 0, streak_start: 0 }
    }

    fn at(&self, now: Instant) -> i128 {
        now.saturating_duration_since(self.origin).as_nanos() as i128
    }

    fn instant(&self, at: i128) -> Instant {
        self.origin + Duration::from_nanos(u64::try_from(at.max(0)).unwrap_or(u64::MAX))
    }

    /// Whole tokens of `tier` now.
    #[cfg(test)]
    pub fn tokens(&self, tier: Tier, now: Instant) -> i128 {
        self.buckets[tier.index()].tokens(self.at(now))
    }

    /// When a frame of `tier` may go next.
    pub fn ready_at(&self, tier: Tier) -> Instant {
        self.instant(self.buckets[tier.index()].ready_at())
    }

    pub fn can_send(&self, tier: Tier, now: Instant) -> bool {
        self.at(now) >= self.buckets[tier.index()].ready_at()
    }

    /// A denial still holds back some tier.
    pub fn is_blocked(&self, now: Instant) -> bool {
        let now = self.at(now);
        self.buckets.iter().any(|bucket| bucket.blocked_until > now)
    }

    /// A frame of `tier` went out (also when not pacing: the hub counted it).
    pub fn spend(&mut self, tier: Tier, now: Instant) {
        let now = self.at(now);
        self.buckets[tier.index()].take(now);
    }

    /// `rate_limit_warning`: `remaining` whole tokens of `capacity` are left
    /// (the caller has taken off what was sent after the frame it answers).
    /// The hub may hold up to a token more than it says, never less, so a
    /// model above `remaining` exactly comes down to it; one below stays.
    pub fn on_warning(&mut self, tier: Tier, remaining: Option<u64>, capacity: Option<u64>, now: Instant) {
        let now = self.at(now);
        let bucket = &mut self.buckets[tier.index()];
        if let Some(capacity) = capacity.and_then(|c| u32::try_from(c).ok()).filter(|&c| c > 0) {
            bucket.capacity = bucket.capacity.min(capacity);
        }
        if let Some(remaining) = remaining {
            let remaining = i128::from(remaining.min(u64::from(u32::MAX)));
            let level = (now - bucket.empty_at).min(bucket.per_token * i128::from(bucket.capacity));
            if level > remaining * bucket.per_token {
                bucket.set_tokens(remaining, now);
            }
        }
    }

    /// `rate_limited`: the bucket of `tier` is empty. Nothing of that tier
    /// goes before the hub's `retry_after`, nor before the hub's own backoff
    /// for this many denials in a row. Returns the wait and the count.
    pub fn on_denied(&mut self, tier: Tier, retry_after: Duration, now: Instant) -> (Duration, u32) {
        let at = self.at(now);
        let window = self.limits.window.as_nanos() as i128;
        if self.consecutive == 0 || at - self.streak_start > window {
            self.consecutive = 1;
            self.streak_start = at;
        } else {
            self.consecutive = self.consecutive.saturating_add(1);
        }
        let wait = retry_after.max(self.limits.denial_backoff(self.consecutive));
        let bucket = &mut self.buckets[tier.index()];
        bucket.set_tokens(0, at);
        bucket.blocked_until = bucket.blocked_until.max(at + wait.as_nanos() as i128);
        (wait, self.consecutive)
    }
}

#[cfg(test)]
mod tests;
