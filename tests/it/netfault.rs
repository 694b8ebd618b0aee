//! Real network faults (Linux, root; ignored by default, run by
//! `.ci/netfault.sh`). Each test creates two network namespaces of its own
//! joined by a veth link with private addresses (10.200.0.1/30 on the hub
//! side, 10.200.0.2/30 on the sidecar side), runs the sidecar binary in one
//! and, in the other, a small forwarding proxy in front of the development
//! hub (which listens on loopback in the test process). Faults are injected
//! on that link only: iptables rules inside the namespaces (silent drops,
//! random loss) and delay with jitter in the proxy (this kernel has no
//! netem). Dropping the lab deletes both namespaces, which removes the link
//! and every rule with them, also when a test fails.
//!
//! Each test prints what it measured.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use agentcom_sidecar::devhub::{redact_token, DevHub, DevHubEvent, DevHubOptions, OutcomeKind};
use crossbeam_channel::{select, unbounded};
use serde_json::json;

use crate::support::*;

const HUB_ADDR: &str = "10.200.0.1";
const SIDECAR_ADDR: &str = "10.200.0.2";
const HEARTBEAT_MS: u64 = 2_000;
const PONG_TIMEOUT_MS: u64 = 2_000;
const RECONNECT_MAX_MS: u64 = 2_000;
const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// The hub takes back a task not accepted within this (real hub: 60 s).
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(15);

// ----- the lab: namespaces, link, rules ---------------------------------------

/// Two namespaces and the veth link between them. Names carry a prefix
/// (`NETFAULT_PREFIX`, set by .ci/netfault.sh so its trap can clean up after
/// a killed run; else `acsnf<pid>`) and the test's own tag.
struct NetLab {
    hub_ns: String,
    sidecar_ns: String,
    hub_if: String,
}

fn ip(args: &[&str]) {
    run("ip", args);
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl NetLab {
    fn create(tag: &str) -> NetLab {
        let prefix =
            std::env::var("NETFAULT_PREFIX").unwrap_or_else(|_| format!("acsnf{}", std::process::id()));
        let lab = NetLab {
            hub_ns: format!("{prefix}-{tag}-hub"),
            sidecar_ns: format!("{prefix}-{tag}-sc"),
            // Interface names: at most 15 bytes, only inside our namespaces.
            hub_if: "nf-hub".to_string(),
        };
        let sidecar_if = "nf-sc";
        // From here on, Drop removes whatever was created.
        ip(&["netns", "add", &lab.hub_ns]);
        ip(&["netns", "add", &lab.sidecar_ns]);
        // Created inside the hub namespace, so no name ever exists outside.
        ip(&[
            "-n",
            &lab.hub_ns,
            "link",
            "add",
            &lab.hub_if,
            "type",
            "veth",
            "peer",
            "name",
            sidecar_if,
            "netns",
            &lab.sidecar_ns,
        ]);
        ip(&["-n", &lab.hub_ns, "addr", "add", &format!("{HUB_ADDR}/30"), "dev", &lab.hub_if]);
        ip(&["-n", &lab.sidecar_ns, "addr", "add", &format!("{SIDECAR_ADDR}/30"), "dev", sidecar_if]);
        ip(&["-n", &lab.hub_ns, "link", "set", &lab.hub_if, "up"]);
        ip(&["-n", &lab.sidecar_ns, "link", "set", sidecar_if, "up"]);
        lab
    }

    fn iptables(&self, ns: &str, args: &[&str]) {
        let mut full = vec!["netns", "exec", ns, "iptables", "-w"];
        full.extend_from_slice(args);
        run("ip", &full);
    }

    /// Every packet arriving on either end of the link is silently dropped:
    /// both TCP ends believe the connection is open (half-open).
    fn partition(&self) {
        self.iptables(&self.hub_ns, &["-A", "INPUT", "-i", &self.hub_if, "-j", "DROP"]);
        self.iptables(&self.sidecar_ns, &["-A", "INPUT", "-i", "nf-sc", "-j", "DROP"]);
    }

    /// `probability` of each arriving packet is dropped, in both directions.
    fn loss(&self, probability: &str) {
        for (ns, dev) in [(&self.hub_ns, self.hub_if.as_str()), (&self.sidecar_ns, "nf-sc")] {
            let rule = [
                "-A",
                "INPUT",
                "-i",
                dev,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                probability,
                "-j",
                "DROP",
            ];
            self.iptables(ns, &rule);
        }
    }

    /// Packets the INPUT rules dropped so far, on each end (hub, sidecar).
    fn dropped(&self) -> (u64, u64) {
        let count = |ns: &str| {
            let output = Command::new("ip")
                .args(["netns", "exec", ns, "iptables", "-w", "-L", "INPUT", "-n", "-v", "-x"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .filter(|line| line.contains("DROP"))
                .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        };
        (count(&self.hub_ns), count(&self.sidecar_ns))
    }

    /// Removes every rule: the link works again.
    fn heal(&self) {
        self.iptables(&self.hub_ns, &["-F", "INPUT"]);
        self.iptables(&self.sidecar_ns, &["-F", "INPUT"]);
    }

    /// Runs `f` on a thread that has entered the namespace `ns`: sockets it
    /// creates and processes it spawns live there. Other threads are not
    /// affected (a network namespace is per thread).
    fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{ns}");
        thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on a valid namespace fd; it changes only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        // Deleting a namespace removes its end of the veth pair (and so the
        // pair) and its iptables rules.
        for ns in [&self.hub_ns, &self.sidecar_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

// ----- a forwarding proxy with delay ------------------------------------------

/// Listens on the hub side of the link and forwards each connection to the
/// development hub on loopback. Delay (with jitter) is added per chunk in
/// each direction, never reordering bytes.
struct Proxy {
    port: u16,
    delay_ms: Arc<AtomicU64>,
    jitter_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    fn start(lab: &NetLab, upstream: SocketAddr) -> Proxy {
        let listener =
            NetLab::in_ns(&lab.hub_ns, || TcpListener::bind((HUB_ADDR, 0)).expect("bind in the hub ns"));
        listener.set_nonblocking(true).unwrap();
        let proxy = Proxy {
            port: listener.local_addr().unwrap().port(),
            delay_ms: Arc::new(AtomicU64::new(0)),
            jitter_ms: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Arc::new(Mutex::new(Vec::new())),
        };
        let (delay, jitter, stop, threads) =
            (proxy.delay_ms.clone(), proxy.jitter_ms.clone(), proxy.stop.clone(), proxy.threads.clone());
        let accept = thread::spawn(move || {
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
            while !stop.load(Ordering::SeqCst) {
                let downstream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::park_timeout(Duration::from_millis(20));
                        continue;
                    }
                    Err(e) => panic!("proxy accept: {e}"),
                };
                downstream.set_nonblocking(false).unwrap();
                let Ok(upstream) = TcpStream::connect(upstream) else {
                    continue;
                };
                for (from, to) in
                    [(downstream.try_clone().unwrap(), upstream.try_clone().unwrap()), (upstream, downstream)]
                {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let handles = pump(from, to, delay.clone(), jitter.clone(), stop.clone(), seed);
                    threads.lock().unwrap().extend(handles);
                }
            }
        });
        proxy.threads.lock().unwrap().push(accept);
        proxy
    }

    fn set_delay(&self, delay_ms: u64, jitter_ms: u64) {
        self.delay_ms.store(delay_ms, Ordering::SeqCst);
        self.jitter_ms.store(jitter_ms, Ordering::SeqCst);
    }

    fn url(&self) -> String {
        format!("ws://{HUB_ADDR}:{}/ws", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let handles = std::mem::take(&mut *self.threads.lock().unwrap());
        for handle in handles {
            let _ = handle.join();
        }
    }
}

/// Copies `from` to `to`: a reader stamps each chunk with its delivery time
/// (never earlier than the previous chunk's), a writer delivers it then.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    delay_ms: Arc<AtomicU64>,
    jitter_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    mut seed: u64,
) -> [JoinHandle<()>; 2] {
    let (tx, rx) = unbounded::<(Instant, Vec<u8>)>();
    from.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    to.set_write_timeout(Some(Duration::from_millis(100))).unwrap();
    let reader_stop = stop.clone();
    let reader = thread::spawn(move || {
        let mut last = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        while !reader_stop.load(Ordering::SeqCst) {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let jitter = jitter_ms.load(Ordering::SeqCst);
                    let extra = if jitter == 0 { 0 } else { seed % (2 * jitter + 1) };
                    // delay ± jitter
                    let ms = (delay_ms.load(Ordering::SeqCst) + extra).saturating_sub(jitter);
                    last = last.max(Instant::now() + Duration::from_millis(ms));
                    if tx.send((last, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        let _ = from.shutdown(Shutdown::Read);
    });
    let writer = thread::spawn(move || {
        'chunks: for (at, chunk) in rx {
            let _ = crossbeam_channel::at(at).recv();
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                if stop.load(Ordering::SeqCst) {
                    break 'chunks;
                }
                match to.write(rest) {
                    Ok(n) => rest = &rest[n..],
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                    Err(_) => break 'chunks,
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    [reader, writer]
}

// ----- the sidecar in its namespace -------------------------------------------

/// Immediately confirms and writes a success result naming the task.
const AGENT_WAKE: &str = r#"R="$AGENTCOM_RESULTS_DIR"; I="$AGENTCOM_TASK_ID"; echo "$I" >> "$R/../wakes.txt"
: > "$R/$I.started"; printf '{"status":"success","output":"%s"}' "$I" > "$R/.$I.tmp"; mv "$R/.$I.tmp" "$R/$I.json""#;

struct Setup {
    // Field order is drop order: the sidecar and proxy go before the lab.
    sidecar: Sidecar,
    _dir: tempfile::TempDir,
    proxy: Proxy,
    hub: DevHub,
    lab: NetLab,
}

fn setup(tag: &str) -> Setup {
    let lab = NetLab::create(tag);
    let mut options = DevHubOptions::new(AGENT, TOKEN);
    // Under loss and delay a task_accepted may take seconds; still shorter
    // than the real hub's 60 s so a push lost in the outage comes back soon.
    options.accept_timeout = ACCEPT_TIMEOUT;
    let hub = DevHub::start(options).unwrap();
    let proxy = Proxy::start(&lab, hub.addr());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &proxy.url());
    cfg["wake_command"] = json!(AGENT_WAKE);
    cfg["heartbeat_interval_ms"] = json!(HEARTBEAT_MS);
    cfg["pong_timeout_ms"] = json!(PONG_TIMEOUT_MS);
    cfg["reconnect_initial_ms"] = json!(200);
    cfg["reconnect_max_ms"] = json!(RECONNECT_MAX_MS);
    cfg["connect_timeout_ms"] = json!(CONNECT_TIMEOUT_MS);
    cfg["log_level"] = json!("info");
    let (path, sidecar_cfg) = (dir.path().to_path_buf(), cfg.clone());
    // Forked from a thread inside the sidecar namespace, the child lives there.
    let sidecar = NetLab::in_ns(&lab.sidecar_ns, move || Sidecar::start(&path, &sidecar_cfg));
    expect_identified(&hub);
    Setup { sidecar, _dir: dir, proxy, hub, lab }
}

/// User plus system CPU time of `pid`, from /proc/<pid>/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// Pushes `count` tasks one after the other and checks that each has exactly
/// one settled outcome at the hub, a completion carrying its own id.
fn run_tasks_exactly_once(setup: &Setup, count: usize, deadline: Duration) -> Duration {
    let started = Instant::now();
    let ids: Vec<String> =
        (0..count).map(|i| setup.hub.push_task(AGENT, &format!("task {i}"), json!({}))).collect();
    let events = setup.hub.events();
    let end = crossbeam_channel::at(started + deadline);
    let all_settled = || ids.iter().all(|id| setup.hub.task(id).is_some_and(|t| !t.outcomes.is_empty()));
    // What the hub saw, for the explanation of a failure.
    let mut trace = Vec::new();
    while !all_settled() {
        select! {
            recv(events) -> event => trace.extend(event.ok()),
            recv(end) -> _ => break,
        }
    }
    trace.extend(events.try_iter());
    let took = started.elapsed();
    let mut lost = Vec::new();
    let mut duplicated = Vec::new();
    let mut handed_back = 0;
    for id in &ids {
        let task = setup.hub.task(id).unwrap();
        // A task pushed while the sidecar was busy, on a connection that
        // then dropped, is handed back once the sidecar is free (`task_failed`
        // "busy", answered `retried`, docs/protocol.md 5.4): a designed
        // hand-back of a generation no agent worked on, not a second outcome
        // of the work. Any other extra outcome is a duplicate.
        let outcomes: Vec<_> = task
            .outcomes
            .iter()
            .filter(|o| {
                let busy = o.kind == OutcomeKind::Retried
                    && o.reason.as_deref().is_some_and(|r| r.starts_with("busy:"));
                if busy {
                    handed_back += 1;
                }
                !busy
            })
            .collect();
        match outcomes.as_slice() {
            [] => lost.push(id.clone()),
            [one] => {
                assert_eq!(one.kind, OutcomeKind::Completed, "{id}: {one:?}");
                assert_eq!(
                    one.result.as_ref().unwrap()["output"],
                    id.as_str(),
                    "{id}: another task's result"
                );
            }
            _ => duplicated.push((id.clone(), outcomes.len())),
        }
    }
    let wakes = std::fs::read_to_string(setup.sidecar.dir.join("wakes.txt")).unwrap_or_default();
    let woken_twice = ids.iter().filter(|id| wakes.lines().filter(|l| l == id).count() > 1).count();
    println!(
        "{count} tasks in {} ms: {} lost, {} duplicated, {woken_twice} woken more than once, {} (re)connections",
        took.as_millis(),
        lost.len(),
        duplicated.len(),
        setup.sidecar.output().matches("identified with hub as").count()
    );
    let output = setup.sidecar.output();
    println!(
        "pushed while busy: {}, taken once free: {}, handed back: {} (answered retried: {handed_back})",
        output.matches("now: busy with").count(),
        output.matches("pushed while we were busy on this connection").count(),
        output.matches("back to the hub: it was pushed while we were busy").count()
    );
    for (id, _) in lost.iter().map(|id| (id, 0)).chain(duplicated.iter().map(|(id, n)| (id, *n))) {
        explain(setup, id, &trace);
    }
    assert!(lost.is_empty(), "outcomes lost: {lost:?}");
    assert!(duplicated.is_empty(), "outcomes duplicated: {duplicated:?}");
    took
}

/// Prints what happened to a task that was lost or settled more than once:
/// its outcomes at the hub, the hub's events about it (and every connection
/// event, for the order), and the sidecar's log lines naming it.
fn explain(setup: &Setup, id: &str, trace: &[DevHubEvent]) {
    println!("--- {id}");
    for outcome in setup.hub.task(id).map(|t| t.outcomes).unwrap_or_default() {
        println!(
            "outcome: {:?} at generation {}, reason {:?}",
            outcome.kind, outcome.generation, outcome.reason
        );
    }
    for event in trace {
        let line = match event {
            DevHubEvent::Received { conn, frame } if frame["task_id"] == id => {
                format!("hub conn {conn} <- {}", redact_token(frame))
            }
            // Error frames name no task: all of them, for the order.
            DevHubEvent::Sent { conn, frame } if frame["task_id"] == id || frame["type"] == "error" => {
                format!("hub conn {conn} -> {frame}")
            }
            DevHubEvent::TaskTakenBack { task_id, .. } if task_id == id => format!("hub: {event:?}"),
            DevHubEvent::Identified { .. }
            | DevHubEvent::Disconnected { .. }
            | DevHubEvent::ClosedByHub { .. } => {
                format!("hub: {event:?}")
            }
            _ => continue,
        };
        println!("{line}");
    }
    let output = setup.sidecar.output();
    for line in output.lines().filter(|l| l.contains(id) || l.contains("disconnected from hub")) {
        println!("sidecar: {line}");
    }
}

fn outage_seconds() -> u64 {
    std::env::var("NETFAULT_OUTAGE_S").ok().and_then(|s| s.parse().ok()).unwrap_or(90)
}

#[test]
#[ignore = "needs root, ip netns and iptables: run by .ci/netfault.sh"]
fn netfault_partition_is_detected_and_the_link_returns_after_90_s() {
    let setup = setup("part");
    run_tasks_exactly_once(&setup, 1, FAILSAFE);
    let pid = setup.sidecar.pid();
    let identified_before = setup.sidecar.output().matches("identified with hub as").count();

    let outage = Duration::from_secs(outage_seconds());
    let cpu_before = cpu_time(pid);
    let partitioned_at = Instant::now();
    setup.lab.partition();
    setup.sidecar.wait_output("no pong within");
    let detected = partitioned_at.elapsed();
    let bound = Duration::from_millis(HEARTBEAT_MS + PONG_TIMEOUT_MS);
    println!(
        "partition detected after {} ms (bound: heartbeat_interval_ms + pong_timeout_ms = {} ms)",
        detected.as_millis(),
        bound.as_millis()
    );
    // The check runs on the loop's deadline; allow scheduling slack only.
    assert!(detected <= bound + Duration::from_millis(500), "detected after {detected:?}");

    // A task queued during the outage waits at the hub.
    let during = setup.hub.push_task(AGENT, "queued during the outage", json!({}));
    let heal = crossbeam_channel::at(partitioned_at + outage);
    let _ = heal.recv();
    let cpu = cpu_time(pid).saturating_sub(cpu_before);
    let (to_hub, to_sidecar) = setup.lab.dropped();
    println!("packets dropped during the outage: {to_hub} towards the hub, {to_sidecar} towards the sidecar");
    let attempts = setup.sidecar.output().matches("connecting to").count();
    println!(
        "outage of {} s: sidecar CPU time {} ms ({:.3} % of one core), {} connection attempts in all",
        outage.as_secs(),
        cpu.as_millis(),
        cpu.as_secs_f64() * 100.0 / outage.as_secs_f64(),
        attempts
    );
    assert!(cpu < outage / 50, "the sidecar used {cpu:?} of CPU while the link was down: it spins");

    let healed_at = Instant::now();
    setup.lab.heal();
    let bound = Duration::from_millis(RECONNECT_MAX_MS + CONNECT_TIMEOUT_MS) + Duration::from_secs(3);
    let identified = setup.hub.wait_for(bound + FAILSAFE, |e| matches!(e, DevHubEvent::Identified { .. }));
    assert!(identified.is_some(), "no reconnect after the link returned");
    let reconnected = healed_at.elapsed();
    println!("reconnected {} ms after the link returned", reconnected.as_millis());
    assert!(reconnected <= bound, "reconnect took {reconnected:?}");
    wait_until("the sidecar to log its new identification", || {
        (setup.sidecar.output().matches("identified with hub as").count() > identified_before).then_some(())
    });

    // The task queued during the outage went into the dead connection; the
    // hub takes it back (accept timeout, or the old socket's idle close)
    // and pushes it again on the new one. It completes once.
    let end = Instant::now() + ACCEPT_TIMEOUT + FAILSAFE;
    while setup.hub.task(&during).is_some_and(|t| t.outcomes.is_empty()) && Instant::now() < end {
        let _ = setup.hub.wait_for(Duration::from_millis(200), |_| true);
    }
    let outcomes = setup.hub.task(&during).unwrap().outcomes;
    println!("the task pushed during the outage: {} outcome(s)", outcomes.len());
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    run_tasks_exactly_once(&setup, 2, FAILSAFE);
}

#[test]
#[ignore = "needs root, ip netns and iptables: run by .ci/netfault.sh"]
fn netfault_thirty_percent_loss_loses_and_duplicates_no_outcome() {
    let setup = setup("loss");
    setup.lab.loss("0.3");
    println!("30 % random loss on both ends of the link");
    run_tasks_exactly_once(&setup, 20, Duration::from_secs(240));
    let (to_hub, to_sidecar) = setup.lab.dropped();
    println!("packets dropped: {to_hub} towards the hub, {to_sidecar} towards the sidecar");
    assert!(to_hub > 0 && to_sidecar > 0, "the loss rules dropped nothing");
    setup.lab.heal();
    run_tasks_exactly_once(&setup, 1, FAILSAFE);
}

#[test]
#[ignore = "needs root, ip netns and iptables: run by .ci/netfault.sh"]
fn netfault_500_ms_delay_with_jitter_loses_and_duplicates_no_outcome() {
    let setup = setup("delay");
    setup.proxy.set_delay(500, 200);
    println!("500 ms ± 200 ms delay in each direction through the proxy");
    run_tasks_exactly_once(&setup, 10, Duration::from_secs(120));
    println!("pong timeouts under delay: {}", setup.sidecar.output().matches("no pong within").count());
}
