//! `cargo bench` (or `scripts/bench.sh`): the sidecar's footprint and
//! latencies, measured on the real release binary against the development
//! hub on loopback with an instant agent, each latency beside its floor
//! measured in the same run on the same disk. It prints tables; nothing here
//! is a pass/fail test (timed assertions would be flaky on a shared machine).
//!
//! Modes (the first argument that is not an option):
//! - `table` (default): one sidecar; see `single.rs`;
//! - `fleet`: N sidecars through a hub restart, per jitter strategy; see
//!   `fleet.rs`;
//! - `rate`: one sidecar within 4718a58's real rate budget; see `rate.rs`;
//! - `all`: table and fleet.
//!
//! Every knob is an environment variable, listed in docs/benchmarks.md and
//! at the top of `single.rs` / `fleet.rs`.
//!
//! Linux only: it reads /proc.

mod agent;
mod fleet;
mod floors;
mod helpers;
mod procfs;
mod rate;
mod single;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if agent::run_helper(&args) {
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let mode = args.iter().skip(1).find(|a| !a.starts_with('-')).map(String::as_str).unwrap_or("table");
    match mode {
        "table" => single::run(),
        "fleet" => fleet::run(),
        "rate" => rate::run(),
        "all" => {
            single::run();
            fleet::run();
        }
        other => {
            eprintln!("unknown mode {other:?}: expected table, fleet, rate or all");
            std::process::exit(2);
        }
    }
}

/// An environment knob with a default.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            eprintln!("{name}={text:?} is not a non-negative integer");
            std::process::exit(2)
        }),
        Err(_) => default,
    }
}

/// Median, p95 and max of samples in nanoseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub p50: u64,
    pub p95: u64,
    pub max: u64,
    pub count: usize,
}

impl Summary {
    pub fn of(samples: &[u64]) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        Summary { p50: at(0.5), p95: at(0.95), max: at(1.0), count: sorted.len() }
    }

    /// "p50 / p95 / max" in milliseconds.
    pub fn ms(&self) -> String {
        format!("{} / {} / {}", ms(self.p50), ms(self.p95), ms(self.max))
    }
}

/// Nanoseconds as milliseconds with two decimals.
pub fn ms(ns: u64) -> String {
    format!("{:.2}", ns as f64 / 1e6)
}
