//! Reconnect backoff: a pure function of the attempt number, the previous
//! delay, the policy and a random value the caller supplies, plus the tiny
//! PRNG the state uses for it.

use std::time::Duration;

/// How a reconnect delay is drawn from its step (`reconnect_jitter`).
///
/// The step of attempt `n` is `initial * 2^n`, capped at `max`.
/// - `Equal`: uniform in the upper half of the step, `[step/2, step]`;
/// - `Full`: uniform in the whole step, `[0, step]`;
/// - `Decorrelated`: uniform in `[initial, 3 * previous delay]`, capped at
///   `max` (the previous delay counts as `initial` on the first attempt); it
///   does not follow the doubling steps, so it needs the previous delay.
///
/// The benchmark's fleet mode compares the three after a hub restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JitterStrategy {
    #[default]
    Equal,
    Full,
    Decorrelated,
}

impl JitterStrategy {
    /// The config spellings, in the order of the variants.
    pub const NAMES: [&'static str; 3] = ["equal", "full", "decorrelated"];

    pub fn parse(name: &str) -> Option<JitterStrategy> {
        match name {
            "equal" => Some(JitterStrategy::Equal),
            "full" => Some(JitterStrategy::Full),
            "decorrelated" => Some(JitterStrategy::Decorrelated),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            JitterStrategy::Equal => "equal",
            JitterStrategy::Full => "full",
            JitterStrategy::Decorrelated => "decorrelated",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub jitter: JitterStrategy,
}

/// Delay before reconnect attempt `attempt` (0 for the first retry).
/// `previous` is the delay this function returned for the attempt before
/// (`Duration::ZERO` for attempt 0); only `Decorrelated` uses it.
/// `unit_random` is in `[0, 1)`. No delay ever exceeds `max`.
///
/// With the defaults (1 s, 60 s, equal jitter) the steps are 1 s, 2 s, 4 s
/// ... 60 s and each delay lies in the upper half of its step, so a fleet
/// spreads out after a hub restart while no delay exceeds the schedule.
pub fn backoff(attempt: u32, previous: Duration, policy: &BackoffPolicy, unit_random: f64) -> Duration {
    let unit = unit_random.clamp(0.0, 1.0);
    match policy.jitter {
        JitterStrategy::Equal => {
            let half = step(attempt, policy) / 2;
            half + half.mul_f64(unit)
        }
        JitterStrategy::Full => step(attempt, policy).mul_f64(unit),
        JitterStrategy::Decorrelated => {
            let low = policy.initial.min(policy.max);
            let high = previous.max(low).saturating_mul(3).min(policy.max);
            low + (high - low).mul_f64(unit)
        }
    }
}

fn step(attempt: u32, policy: &BackoffPolicy) -> Duration {
    policy.initial.saturating_mul(1u32 << attempt.min(20)).min(policy.max)
}

/// A xorshift64* generator: enough to spread reconnects, deterministic from
/// its seed so tests can fix it.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    /// A seed that differs between processes and runs, from std's randomly
    /// keyed hasher (no `rand` dependency needed for this).
    pub fn seed_from_entropy() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.finish()
    }

    /// Uniform in `[0, 1)`.
    pub fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy(jitter: JitterStrategy) -> BackoffPolicy {
        BackoffPolicy { initial: ms(1_000), max: ms(60_000), jitter }
    }

    fn check(jitter: JitterStrategy, table: &[(u32, u64, f64, u64)]) {
        for &(attempt, previous, random, expected) in table {
            let got = backoff(attempt, ms(previous), &policy(jitter), random);
            assert!(
                got.as_millis().abs_diff(u128::from(expected)) <= 1,
                "{jitter:?} attempt {attempt} previous {previous} random {random}: {got:?} != {expected} ms"
            );
        }
    }

    #[test]
    fn equal_jitter_doubles_caps_and_stays_in_the_upper_half() {
        // (attempt, previous ms (ignored), random, expected ms)
        check(
            JitterStrategy::Equal,
            &[
                (0, 0, 0.0, 500),
                (0, 0, 0.999_999, 1_000),
                (1, 0, 0.0, 1_000),
                (1, 0, 0.5, 1_500),
                (2, 9_999, 1.0, 4_000),
                (5, 0, 1.0, 32_000),
                (6, 0, 1.0, 60_000),
                (6, 0, 0.0, 30_000),
                (40, 0, 1.0, 60_000),
            ],
        );
    }

    #[test]
    fn full_jitter_spans_the_whole_step() {
        check(
            JitterStrategy::Full,
            &[
                (0, 0, 0.0, 0),
                (0, 0, 0.5, 500),
                (1, 0, 0.25, 500),
                (2, 0, 1.0, 4_000),
                (6, 0, 1.0, 60_000),
                (40, 0, 0.0, 0),
                (40, 0, 0.5, 30_000),
            ],
        );
    }

    #[test]
    fn decorrelated_jitter_grows_from_the_previous_delay_and_caps() {
        check(
            JitterStrategy::Decorrelated,
            &[
                // First attempt: previous counts as `initial`: [1 s, 3 s].
                (0, 0, 0.0, 1_000),
                (0, 0, 1.0, 3_000),
                (0, 0, 0.5, 2_000),
                // The attempt number does not matter, the previous delay does.
                (7, 2_000, 1.0, 6_000),
                (1, 2_000, 0.0, 1_000),
                (3, 30_000, 1.0, 60_000),
                (3, 60_000, 0.5, 30_500),
            ],
        );
    }

    #[test]
    fn no_strategy_exceeds_max_even_with_a_tiny_max() {
        for jitter in [JitterStrategy::Equal, JitterStrategy::Full, JitterStrategy::Decorrelated] {
            let small = BackoffPolicy { initial: ms(300), max: ms(200), jitter };
            for (attempt, previous) in [(0, 0), (3, 150), (30, 10_000)] {
                for random in [0.0, 0.5, 1.0] {
                    let got = backoff(attempt, ms(previous), &small, random);
                    assert!(got <= ms(200), "{jitter:?}: {got:?}");
                }
            }
        }
    }

    #[test]
    fn strategy_names_round_trip_and_equal_is_the_default() {
        for name in JitterStrategy::NAMES {
            assert_eq!(JitterStrategy::parse(name).map(JitterStrategy::name), Some(name));
        }
        assert_eq!(JitterStrategy::parse("Equal"), None);
        assert_eq!(JitterStrategy::default(), JitterStrategy::Equal);
    }

    #[test]
    fn jitter_is_uniform_enough_and_seeded() {
        let mut a = Jitter::new(42);
        let mut b = Jitter::new(42);
        let values: Vec<f64> = (0..1000).map(|_| a.next_unit()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!((0.4..0.6).contains(&mean), "{mean}");
        assert_eq!(values[0], b.next_unit());
    }
}
