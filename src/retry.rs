//! Reconnect backoff: a pure function of the attempt number, the policy and a
//! random value the caller supplies, plus the tiny PRNG the state uses for it.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
}

/// Delay before reconnect attempt `attempt` (0 for the first retry).
///
/// The schedule is `initial * 2^attempt`, capped at `max` (1 s, 2 s, 4 s ...
/// 60 s by default). Jitter ("equal jitter") takes the delay uniformly from
/// the upper half of that step, so a fleet spreads out after a hub restart
/// while no delay ever exceeds the documented schedule. `unit_random` is in
/// `[0, 1)`.
pub fn backoff(attempt: u32, policy: &BackoffPolicy, unit_random: f64) -> Duration {
    let step = policy.initial.saturating_mul(1u32 << attempt.min(20)).min(policy.max);
    let half = step / 2;
    half + half.mul_f64(unit_random.clamp(0.0, 1.0))
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

    #[test]
    fn schedule_doubles_caps_and_jitters_within_the_step() {
        let policy = BackoffPolicy { initial: ms(1_000), max: ms(60_000) };
        // (attempt, random, expected)
        let table = [
            (0, 0.0, 500),
            (0, 0.999_999, 1_000),
            (1, 0.0, 1_000),
            (1, 0.5, 1_500),
            (2, 1.0, 4_000),
            (5, 1.0, 32_000),
            (6, 1.0, 60_000),
            (6, 0.0, 30_000),
            (40, 1.0, 60_000),
        ];
        for (attempt, random, expected) in table {
            let got = backoff(attempt, &policy, random);
            assert!(
                got.as_millis().abs_diff(expected) <= 1,
                "attempt {attempt} random {random}: {got:?} != {expected} ms"
            );
        }
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
