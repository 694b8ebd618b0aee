//! The benchmark executable doubles as the instant agent: the sidecar's
//! wake command is `exec <this executable> agent`, so the first thing that
//! runs after `sh` is a clock read, with no extra fork (`date +%s%N` would
//! add one, and /proc/uptime is too coarse).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use crate::procfs::mono_ns;

/// Where the agent appends `task_id wake_ns rename_ns` lines.
pub const STAMP_FILE_ENV: &str = "BENCH_STAMP_FILE";

/// Runs a helper mode if `args` asks for one; true if it did.
pub fn run_helper(args: &[String]) -> bool {
    match args.get(1).map(String::as_str) {
        Some("agent") => {
            agent();
            true
        }
        Some("stamp") => {
            // The spawn floor: the same path as a wake (sh -c, exec, this
            // process starting) with nothing else.
            println!("{}", mono_ns());
            true
        }
        _ => false,
    }
}

/// The agent a benchmark wants: it confirms and finishes at once, like a
/// well-behaved agent (result written aside, then renamed into place).
fn agent() {
    let woke = mono_ns();
    let task_id = std::env::var("AGENTCOM_TASK_ID").unwrap_or_default();
    let results = PathBuf::from(std::env::var_os("AGENTCOM_RESULTS_DIR").unwrap_or_default());
    let outcome = (|| -> std::io::Result<u64> {
        fs::write(results.join(format!("{task_id}.started")), "")?;
        let temp = results.join(format!(".{task_id}.tmp"));
        fs::write(&temp, r#"{"status":"success","output":"done"}"#)?;
        let renamed = mono_ns();
        fs::rename(&temp, results.join(format!("{task_id}.json")))?;
        Ok(renamed)
    })();
    let renamed = match outcome {
        Ok(renamed) => renamed,
        Err(error) => {
            eprintln!("bench agent: {error}");
            std::process::exit(1);
        }
    };
    if let Some(path) = std::env::var_os(STAMP_FILE_ENV) {
        // One write of one short line to an O_APPEND file: lines never mix.
        let line = format!("{task_id} {woke} {renamed}\n");
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(error) = written {
            eprintln!("bench agent: stamp file: {error}");
            std::process::exit(1);
        }
    }
}
