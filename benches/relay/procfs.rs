//! What the benchmark reads about a process from /proc (Linux only).

use std::fs;

/// CLOCK_MONOTONIC in nanoseconds: the one clock every timestamp of the
/// benchmark uses, including the ones the agent helper writes from another
/// process (Rust's `Instant` is the same clock but cannot be exported).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, exclusively borrowed timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One line of /proc/<pid>/status, e.g. `field(pid, "VmRSS:")` -> "4908 kB".
pub fn status_kb(pid: u32, name: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Proportional set size (shared pages divided among their users), in kB.
pub fn pss_kb(pid: u32) -> u64 {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One thread: name, CPU time on its clock (ns, from schedstat) and context
/// switches (voluntary + involuntary).
#[derive(Debug, Clone)]
pub struct ThreadSample {
    pub tid: String,
    pub name: String,
    pub cpu_ns: u64,
    pub switches: u64,
}

/// Every live thread of `pid` (`"self"` works too).
pub fn threads(pid: &str) -> Vec<ThreadSample> {
    let mut threads = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let status = fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let schedstat = fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        let mut sample = ThreadSample {
            tid: task.file_name().to_string_lossy().into_owned(),
            name: String::new(),
            cpu_ns: schedstat.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0),
            switches: 0,
        };
        for line in status.lines() {
            if let Some(n) = line.strip_prefix("Name:") {
                sample.name = n.trim().to_string();
            }
            let count = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"));
            if let Some(v) = count {
                sample.switches += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
        threads.push(sample);
    }
    threads
}

/// utime + stime of the whole process (exited threads included), in clock
/// ticks of 10 ms (USER_HZ).
pub fn process_cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    // Fields 14 and 15 of stat; after the name, the state is index 0.
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}
