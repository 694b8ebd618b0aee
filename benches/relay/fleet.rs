//! Fleet mode: N sidecars on loopback against one dev hub, each with its own
//! agent id and token; the hub stops, stays down, and comes back on the same
//! port. Printed per reconnect jitter strategy (one fleet after the other,
//! in one run): how long until every sidecar is identified again, the peak
//! number of identify frames the hub received in any 100 ms window, the
//! fleet's summed memory, and the hub's own CPU during the storm.
//!
//! Knobs: `BENCH_FLEET` (sidecars, default 1000), `BENCH_FLEET_DOWN_MS`
//! (how long the hub stays down, default 1000), `BENCH_FLEET_JITTER`
//! (comma-separated strategies, default `equal,full,decorrelated`).
//!
//! Every sidecar runs in one process group led by the first; the fleet is
//! stopped with SIGTERM to the group (SIGKILL after 20 s), every child is
//! reaped, and the group is checked empty. A panic kills the group too.

use std::collections::HashSet;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentcom_sidecar::devhub::{DevHub, DevHubEvent, DevHubOptions};
use crossbeam_channel::{select, Receiver};
use serde_json::json;

use crate::procfs::{self, mono_ns};
use crate::{env_u64, ms, Summary};

const WINDOW_NS: u64 = 100_000_000;

struct Trial {
    strategy: String,
    first_identified_ns: u64,
    back: Summary,
    back_count: usize,
    peak_window: usize,
    identify_frames: usize,
    rss_kb: u64,
    pss_kb: u64,
    hub_cpu_ns: u64,
    storm_ns: u64,
    left_behind: usize,
}

pub fn run() {
    let n = env_u64("BENCH_FLEET", 1000).max(1) as usize;
    let down = Duration::from_millis(env_u64("BENCH_FLEET_DOWN_MS", 1000));
    let strategies = std::env::var("BENCH_FLEET_JITTER").unwrap_or_else(|_| "equal,full,decorrelated".into());
    raise_open_files(n as u64 * 3 + 256);
    let binary = env!("CARGO_BIN_EXE_agentcom-sidecar");
    let trials: Vec<Trial> = strategies
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| trial(binary, n, s, down))
        .collect();

    println!();
    println!(
        "agentcom-sidecar fleet: {n} sidecars on loopback, one dev hub stopped and back after {} ms",
        down.as_millis()
    );
    println!("{:-<100}", "");
    print!("{:<52}", "reconnect_jitter");
    trials.iter().for_each(|t| print!(" {:>15}", t.strategy));
    println!();
    println!("{:-<100}", "");
    let row = |name: &str, cell: &dyn Fn(&Trial) -> String| {
        print!("{name:<52}");
        trials.iter().for_each(|t| print!(" {:>15}", cell(t)));
        println!();
    };
    row("identified again after the hub's return, p50 ms", &|t| ms(t.back.p50));
    row("  p95 ms", &|t| ms(t.back.p95));
    row("  max ms", &|t| ms(t.back.max));
    row("  sidecars back", &|t| format!("{} of {n}", t.back_count));
    row("peak identify frames in any 100 ms (% of fleet)", &|t| {
        format!("{} ({:.0}%)", t.peak_window, t.peak_window as f64 * 100.0 / n as f64)
    });
    row("identify frames the hub read after its return", &|t| t.identify_frames.to_string());
    row("fleet memory, summed VmRSS MiB", &|t| format!("{:.0}", t.rss_kb as f64 / 1024.0));
    row("  summed Pss MiB (shared pages counted once)", &|t| format!("{:.0}", t.pss_kb as f64 / 1024.0));
    row("hub CPU ms during the storm", &|t| ms(t.hub_cpu_ns));
    row("  storm length ms (return -> last identified)", &|t| ms(t.storm_ns));
    row("first start: spawn -> all identified, s", &|t| format!("{:.1}", t.first_identified_ns as f64 / 1e9));
    row("processes left in the fleet's group after stop", &|t| t.left_behind.to_string());
    println!("{:-<100}", "");
}

fn agent(i: usize) -> String {
    format!("fleet-{i:05}")
}

fn token(i: usize) -> String {
    format!("token-{i:05}")
}

fn hub_options(n: usize, bind: Option<std::net::SocketAddr>) -> DevHubOptions {
    let mut options = DevHubOptions::new(&agent(0), &token(0));
    options.tokens = (0..n).map(|i| (agent(i), token(i))).collect();
    if let Some(bind) = bind {
        options.bind = bind;
    }
    options
}

fn trial(binary: &str, n: usize, strategy: &str, down: Duration) -> Trial {
    eprintln!("fleet: {n} sidecars with {strategy} jitter");
    let dir = tempfile::tempdir().expect("temporary directory");
    let hub = DevHub::start(hub_options(n, None)).expect("hub");
    let addr = hub.addr();
    let url = hub.url();
    let events = hub.events();

    let spawned = mono_ns();
    let mut fleet = Fleet { children: Vec::with_capacity(n), pgid: None };
    for i in 0..n {
        let home = dir.path().join(agent(i));
        fs::create_dir_all(&home).expect("sidecar dir");
        let config = json!({
            "agent_id": agent(i), "token": token(i), "hub_url": url,
            "results_dir": home.join("results"), "log_file": home.join("sidecar.log"),
            "queue_file": home.join("queue.json"), "log_level": "warn",
            // inotify instances are limited (128 per user by default).
            "watch_results": false, "results_poll_ms": 60_000,
            "reconnect_jitter": strategy,
        });
        fs::write(home.join("config.json"), config.to_string()).expect("config");
        fleet.spawn(binary, &home.join("config.json"));
    }
    let first = identified_all(&events, n, Duration::from_secs(600));
    assert_eq!(first.len(), n, "every sidecar identifies at start");
    let first_identified_ns = mono_ns() - spawned;
    // Memory once everyone is connected and idle.
    drain_for(&events, Duration::from_secs(2));
    let (rss_kb, pss_kb) = fleet.memory();

    hub.stop();
    std::thread::sleep(down);
    let returned = mono_ns();
    let hub = DevHub::start(hub_options(n, Some(addr))).expect("the hub comes back on the same port");
    let events = hub.events();
    let mut identify_at = Vec::new();
    let mut back = Vec::new();
    let mut seen = HashSet::new();
    let deadline = crossbeam_channel::at(Instant::now() + Duration::from_secs(300));
    while seen.len() < n {
        select! {
            recv(events) -> event => match event {
                Ok(DevHubEvent::Received { frame, .. }) if frame["type"] == "identify" => identify_at.push(mono_ns()),
                Ok(DevHubEvent::Identified { agent_id, .. }) => {
                    if seen.insert(agent_id) {
                        back.push(mono_ns() - returned);
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            },
            recv(deadline) -> _ => break,
        }
    }
    let storm_ns = mono_ns() - returned;
    let hub_cpu_ns: u64 =
        procfs::threads("self").iter().filter(|t| t.name.starts_with("devhub")).map(|t| t.cpu_ns).sum();
    let left_behind = fleet.stop();
    hub.stop();

    identify_at.sort_unstable();
    let mut peak_window = 0;
    let mut low = 0;
    for high in 0..identify_at.len() {
        while identify_at[high] - identify_at[low] >= WINDOW_NS {
            low += 1;
        }
        peak_window = peak_window.max(high - low + 1);
    }
    Trial {
        strategy: strategy.to_string(),
        first_identified_ns,
        back: Summary::of(&back),
        back_count: back.len(),
        peak_window,
        identify_frames: identify_at.len(),
        rss_kb,
        pss_kb,
        hub_cpu_ns,
        storm_ns,
        left_behind,
    }
}

/// The agents identified within `timeout`.
fn identified_all(events: &Receiver<DevHubEvent>, n: usize, timeout: Duration) -> HashSet<String> {
    let mut seen = HashSet::new();
    let deadline = crossbeam_channel::at(Instant::now() + timeout);
    while seen.len() < n {
        select! {
            recv(events) -> event => match event {
                Ok(DevHubEvent::Identified { agent_id, .. }) => { seen.insert(agent_id); }
                Ok(_) => {}
                Err(_) => break,
            },
            recv(deadline) -> _ => break,
        }
    }
    seen
}

fn drain_for(events: &Receiver<DevHubEvent>, window: Duration) {
    let deadline = crossbeam_channel::at(Instant::now() + window);
    loop {
        select! {
            recv(events) -> event => if event.is_err() { return },
            recv(deadline) -> _ => return,
        }
    }
}

/// The fleet's processes, all in one process group.
struct Fleet {
    children: Vec<Child>,
    pgid: Option<i32>,
}

impl Fleet {
    fn spawn(&mut self, binary: &str, config: &Path) {
        let mut command = Command::new(binary);
        command.arg("--config").arg(config).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        command.process_group(self.pgid.unwrap_or(0));
        let child = command.spawn().expect("a sidecar starts");
        if self.pgid.is_none() {
            self.pgid = Some(child.id() as i32);
        }
        self.children.push(child);
    }

    /// Summed VmRSS and Pss, in KiB.
    fn memory(&self) -> (u64, u64) {
        self.children
            .iter()
            .map(|c| (procfs::status_kb(c.id(), "VmRSS:"), procfs::pss_kb(c.id())))
            .fold((0, 0), |(r, p), (rss, pss)| (r + rss, p + pss))
    }

    /// SIGTERM to the group, reap everyone (SIGKILL after 20 s), and count
    /// what is still alive in the group afterwards (0 when clean).
    fn stop(&mut self) -> usize {
        let Some(pgid) = self.pgid else { return 0 };
        // SAFETY: killpg has no memory-safety preconditions.
        unsafe { libc::killpg(pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut killed = false;
        for child in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() < deadline || killed => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Ok(None) => {
                        eprintln!("fleet: sidecars still running 20 s after SIGTERM; SIGKILL");
                        // SAFETY: as above.
                        unsafe { libc::killpg(pgid, libc::SIGKILL) };
                        killed = true;
                    }
                }
            }
        }
        self.children.clear();
        self.pgid = None;
        group_members(pgid)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            // SAFETY: killpg has no memory-safety preconditions.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
            for child in &mut self.children {
                let _ = child.wait();
            }
        }
    }
}

/// How many processes are in process group `pgid` (from /proc).
fn group_members(pgid: i32) -> usize {
    let mut count = 0;
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // Field 5 (pgrp); after the ")" of the name, state is index 0.
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        if fields.get(2).and_then(|v| v.parse::<i32>().ok()) == Some(pgid) {
            count += 1;
        }
    }
    count
}

/// Raises the soft open-files limit to `wanted` (within the hard limit):
/// the hub holds two descriptors per connection.
fn raise_open_files(wanted: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid, exclusively borrowed rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 || limit.rlim_cur >= wanted {
        return;
    }
    limit.rlim_cur = wanted.min(limit.rlim_max);
    // SAFETY: as above; only the soft limit changes.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        eprintln!("fleet: cannot raise the open-files limit; the hub may run out of descriptors");
    }
}
