//! systemd's notify protocol, heard on a NOTIFY_SOCKET of the test's own (a
//! Unix datagram socket in a temporary directory), with the watchdog interval
//! in milliseconds through WATCHDOG_USEC as systemd would set it.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

/// WATCHDOG_USEC for the tests: 100 ms, so a beat every 50 ms.
const WATCHDOG_USEC: &str = "100000";
const BEAT: Duration = Duration::from_millis(50);

fn listen(dir: &Path) -> UnixDatagram {
    let socket = UnixDatagram::bind(dir.join("notify.sock")).expect("the notify socket binds");
    socket.set_read_timeout(Some(FAILSAFE)).unwrap();
    socket
}

/// The next message, or `None` when nothing came within the socket's timeout.
fn next(socket: &UnixDatagram) -> Option<String> {
    let mut buf = [0u8; 4096];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => return Some(String::from_utf8(buf[..n].to_vec()).expect("notify messages are UTF-8")),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return None
            }
            // A signal to the test process cuts the wait short: wait again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("cannot read the notify socket: {e} ({:?})", e.kind()),
        }
    }
}

/// Reads messages until `until` matches one; returns all of them.
fn read_until(socket: &UnixDatagram, until: impl Fn(&str) -> bool) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let message = next(socket).unwrap_or_else(|| panic!("timed out on the notify socket after {got:?}"));
        let done = until(&message);
        got.push(message);
        if done {
            return got;
        }
    }
}

fn start(dir: &Path, hub_url: &str, failpoint: Option<&str>) -> Sidecar {
    let socket = dir.join("notify.sock");
    let mut env = vec![("NOTIFY_SOCKET", socket.to_str().unwrap()), ("WATCHDOG_USEC", WATCHDOG_USEC)];
    if let Some(failpoint) = failpoint {
        env.push(("AGENTCOM_FAILPOINT", failpoint));
    }
    Sidecar::start_with_env(dir, &config(dir, hub_url), &env)
}

#[test]
fn systemd_hears_ready_status_watchdog_pings_and_stopping() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    let socket = listen(dir.path());
    let spawned = Instant::now();
    let mut sidecar = start(dir.path(), &hub.url(), None);

    assert_eq!(next(&socket).as_deref(), Some("READY=1"), "READY=1 comes first");
    let mut got = read_until(&socket, |m| m == "STATUS=connected to the hub; idle");
    assert!(got.contains(&"STATUS=connecting to the hub".to_owned()), "{got:?}");
    // The loop keeps beating while idle: five more pings.
    let mut beats = 0;
    while beats < 5 {
        let message = next(&socket).expect("watchdog pings keep coming");
        beats += usize::from(message == "WATCHDOG=1");
        got.push(message);
    }

    sidecar.signal("TERM");
    got.extend(read_until(&socket, |m| m == "STOPPING=1"));
    let stopped = Instant::now();
    let status = sidecar.wait_exit(FAILSAFE).expect("the sidecar exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", sidecar.output());
    while let Some(message) = next_quick(&socket) {
        got.push(message);
    }
    assert!(got.iter().all(|m| m != "READY=1"), "READY=1 twice: {got:?}");
    assert_eq!(got.iter().filter(|m| *m == "STOPPING=1").count(), 1, "{got:?}");
    // Never faster than the configured rate: every ping was sent between the
    // spawn and the STOPPING=1 read here, at least one beat apart.
    let pings = got.iter().filter(|m| *m == "WATCHDOG=1").count() as u32;
    let most = (stopped - spawned).as_micros() / BEAT.as_micros() + 1;
    assert!(u128::from(pings) <= most, "{pings} pings in {:?}", stopped - spawned);
    assert!(sidecar.output().contains("sending watchdog pings every 50 ms"), "{}", sidecar.output());
}

/// What is already there, without waiting for more.
fn next_quick(socket: &UnixDatagram) -> Option<String> {
    socket.set_nonblocking(true).unwrap();
    let message = next(socket);
    socket.set_nonblocking(false).unwrap();
    message
}

#[test]
fn a_stalled_loop_stops_the_watchdog_pings() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    let socket = listen(dir.path());
    let mut sidecar = start(dir.path(), &hub.url(), Some("hang:main_loop"));

    let got = read_until(&socket, |m| m == "STATUS=failpoint hang:main_loop: the loop hangs");
    assert_eq!(got.first().map(String::as_str), Some("READY=1"), "{got:?}");
    assert_eq!(got.iter().filter(|m| *m == "WATCHDOG=1").count(), 3, "{got:?}");
    // The process lives on, and its loop says nothing more: no ping within
    // forty beats (systemd would have killed it after two).
    socket.set_read_timeout(Some(BEAT * 40)).unwrap();
    assert_eq!(next(&socket), None, "a ping from a stalled loop");
    assert!(sidecar.wait_exit(Duration::ZERO).is_none(), "the stalled sidecar still runs");
    sidecar.kill9();
}

/// The example unit, with its paths pointed at this checkout (verify checks
/// that ExecStart exists), passes `systemd-analyze verify` without a single
/// warning (an unknown key is only a warning there). CI installs systemd for
/// it; without systemd-analyze the test fails rather than pass unseen.
#[test]
fn the_example_unit_passes_systemd_analyze_verify() {
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(checkout.join("scripts/agentcom-sidecar.service")).unwrap();
    for line in ["Type=notify", "WatchdogSec=", "Restart=always"] {
        assert!(unit.lines().any(|l| l.starts_with(line)), "the unit lacks {line}");
    }
    // A stop signals the sidecar alone: an agent at work outlives it.
    assert_eq!(service_values(&unit, "KillMode"), ["process"], "systemd would end the agent at work");
    assert_eq!(service_values(&unit, "KillSignal"), ["SIGTERM"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agentcom-sidecar.service");
    std::fs::write(&path, unit.replace("/opt/agentcom-sidecar", checkout.to_str().unwrap())).unwrap();
    let output =
        std::process::Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap_or_else(|e| {
            panic!("systemd-analyze is required (Debian package systemd; CI installs it): {e}")
        });
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
}

/// Every value of `key` in the unit's `[Service]` section, in order.
fn service_values(unit: &str, key: &str) -> Vec<String> {
    let mut section = "";
    let mut values = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if let Some((k, v)) = line.split_once('=') {
            if section == "[Service]" && !line.starts_with('#') && k.trim() == key {
                values.push(v.trim().to_owned());
            }
        }
    }
    values
}

/// Off Windows, `service` says where to look instead, and its help works.
#[test]
fn service_commands_point_to_systemd_off_windows() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_agentcom-sidecar")).args(args).output().unwrap()
    };
    let out = run(&["service", "status"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("scripts/agentcom-sidecar.service"), "{stderr}");
    let help = run(&["service", "--help"]);
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("service install"));
    let bad = run(&["service", "install", "--name"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--name needs a value"));
}
