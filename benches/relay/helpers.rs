//! The agent's reporting helpers (`agentcom-sidecar agent ...`), timed as
//! an agent runs them: from spawn to reaped exit, each writing its file
//! atomically (fsync, rename, directory fsync) in the bench's directory.
//! Their floor is the same binary's `--version` (spawn, start, exit) plus
//! the atomic write floor.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::procfs::mono_ns;

/// Samples (ns) of each helper and of the binary's bare start.
#[derive(Default)]
pub struct HelperTimes {
    pub progress: Vec<u64>,
    pub done: Vec<u64>,
    pub version: Vec<u64>,
}

pub fn sample(binary: &str, dir: &Path, count: usize) -> HelperTimes {
    std::fs::create_dir_all(dir).expect("helper dir");
    let mut times = HelperTimes::default();
    for i in 0..count {
        // A result is never replaced: one task id per `done`.
        let task_id = format!("helper-{i}");
        let output = "x".repeat(200);
        times.progress.push(run(binary, dir, &task_id, &["agent", "progress", "50", "halfway"]));
        times.done.push(run(binary, dir, &task_id, &["agent", "done", "--output", &output]));
        times.version.push(run(binary, dir, &task_id, &["--version"]));
    }
    times
}

fn run(binary: &str, dir: &Path, task_id: &str, args: &[&str]) -> u64 {
    let start = mono_ns();
    let status = Command::new(binary)
        .args(args)
        .env("AGENTCOM_TASK_ID", task_id)
        .env("AGENTCOM_RESULTS_DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("the helper runs");
    let took = mono_ns() - start;
    assert!(status.success(), "{binary} {args:?} failed: {status}");
    took
}
