//! splitmix64: small, fast, and the same sequence for the same seed on every
//! platform, so a schedule replays from its seed alone.

pub struct Rng(u64);

/// The reference splitmix64's first output for seed 0 (checked at start: a
/// harness-less target has no `#[test]`).
pub const FIRST_OF_SEED_0: u64 = 0xE220_A839_7B1D_CDAF;

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (the modulo bias is irrelevant at these ranges).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// One of `choices`, each with its weight.
    pub fn weighted<T: Copy>(&mut self, choices: &[(u64, T)]) -> T {
        let total: u64 = choices.iter().map(|(weight, _)| weight).sum();
        let mut roll = self.next_u64() % total;
        for (weight, choice) in choices {
            if roll < *weight {
                return *choice;
            }
            roll -= weight;
        }
        choices[choices.len() - 1].1
    }
}
