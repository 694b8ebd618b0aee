//! `supervisors` mode: what a supervisor adds to the sidecar's memory. The
//! release sidecar idles connected to the dev hub under each supervisor
//! found on this machine, and the table gives the resident memory (VmRSS and
//! PSS) of the supervisor's own processes and of the sidecar:
//!
//! - none: the sidecar alone;
//! - systemd (`Type=notify`, `WatchdogSec=30s`): the sidecar with a
//!   NOTIFY_SOCKET of the benchmark's own and a 30 s watchdog; systemd
//!   itself adds nothing (PID 1 runs whether or not it supervises the
//!   sidecar);
//! - pm2: `pm2 start <sidecar> --interpreter none` in a PM2_HOME of its own
//!   (its God daemon is the supervisor), if `pm2` is on the PATH;
//! - Windows service, under Wine: `agentcom-sidecar.exe service install`
//!   and `start` in Wine (`BENCH_WINDOWS_EXE`, the .exe built by
//!   .ci/windows.sh, and `WINEPREFIX`), if both are set. These are Wine's
//!   numbers (its services.exe, and the .exe's process with Wine's DLLs),
//!   not Windows' own.
//!
//! Knob: `BENCH_SUPERVISOR_IDLE_SECS` (3), the idle time before reading.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use agentcom_sidecar::devhub::{DevHub, DevHubEvent, DevHubOptions};
use serde_json::json;

use crate::env_u64;
use crate::procfs;

const FAILSAFE: Duration = Duration::from_secs(60);

/// One setup, measured while it ran: (what, (VmRSS, PSS) in KiB).
struct Row {
    setup: String,
    supervisor: Vec<(String, (u64, u64))>,
    sidecar: (u64, u64),
    note: String,
}

pub fn run() {
    let idle = Duration::from_secs(env_u64("BENCH_SUPERVISOR_IDLE_SECS", 3));
    let binary =
        std::env::var("BENCH_SIDECAR").unwrap_or_else(|_| env!("CARGO_BIN_EXE_agentcom-sidecar").into());
    let dir = tempfile::tempdir().expect("temporary directory");
    let hub = DevHub::start(DevHubOptions::new("bench", "bench-token")).expect("hub");
    let config = dir.path().join("config.json");
    let body =
        json!({"agent_id": "bench", "token": "bench-token", "hub_url": hub.url(), "log_level": "warn"});
    fs::write(&config, body.to_string()).unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).unwrap();
    // Each setup's sidecar identifies on a connection newer than the last
    // one seen: an older connection's event is not its.
    let last_conn = std::cell::Cell::new(0);
    let identified = || {
        let seen = hub.wait_for(
            FAILSAFE,
            |e| matches!(e, DevHubEvent::Identified { conn, .. } if *conn > last_conn.get()),
        );
        if let Some(DevHubEvent::Identified { conn, .. }) = seen {
            last_conn.set(conn);
        } else {
            panic!("the sidecar did not identify");
        }
        std::thread::sleep(idle); // the benchmark idles on purpose
    };
    println!("agentcom-sidecar under its supervisors: memory after {} s idle, connected", idle.as_secs());
    println!(
        "{:<44} {:>22} {:>22} {:>10}",
        "setup", "supervisor RSS / PSS", "sidecar RSS / PSS", "total RSS"
    );
    println!("{}", "-".repeat(101));
    let mut notes = Vec::new();
    let mut print = |row: Row| {
        print_row(&row);
        if !row.note.is_empty() {
            notes.push(format!("{}: {}", row.setup, row.note));
        }
    };

    let mut child = Command::new(&binary)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    identified();
    print(Row {
        setup: "none (the sidecar alone)".into(),
        supervisor: vec![],
        sidecar: kb(child.id()),
        note: String::new(),
    });
    stop(&mut child);

    let socket = UnixDatagram::bind(dir.path().join("notify.sock")).unwrap();
    let mut child = Command::new(&binary)
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", dir.path().join("notify.sock"))
        .env("WATCHDOG_USEC", "30000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    identified();
    print(Row {
        setup: "systemd (Type=notify, WatchdogSec=30s)".into(),
        supervisor: vec![],
        sidecar: kb(child.id()),
        note: "systemd adds no process: PID 1 runs anyway".into(),
    });
    stop(&mut child);
    drop(socket);

    match pm2(&binary, dir.path(), &identified) {
        Ok(row) => print(row),
        Err(why) => println!("{:<44} skipped: {why}", "pm2"),
    }
    match wine_service(&hub.url(), dir.path(), &identified) {
        Ok(row) => print(row),
        Err(why) => println!("{:<44} skipped: {why}", "Windows service (under Wine)"),
    }
    println!("{}", "-".repeat(101));
    println!("KiB; PSS divides shared pages among the processes that share them.");
    for note in notes {
        println!("  {note}");
    }
}

fn kb(pid: u32) -> (u64, u64) {
    (procfs::status_kb(pid, "VmRSS:"), procfs::pss_kb(pid))
}

fn print_row(row: &Row) {
    let (sup_rss, sup_pss) = row.supervisor.iter().fold((0, 0), |a, (_, b)| (a.0 + b.0, a.1 + b.1));
    let (car_rss, car_pss) = row.sidecar;
    println!(
        "{:<44} {:>22} {:>22} {:>10}",
        row.setup,
        format!("{sup_rss} / {sup_pss}"),
        format!("{car_rss} / {car_pss}"),
        sup_rss + car_rss
    );
    if row.supervisor.len() > 1 {
        for (what, (rss, pss)) in &row.supervisor {
            println!("  {what:<42} {:>22}", format!("{rss} / {pss}"));
        }
    }
}

fn stop(child: &mut std::process::Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
}

fn pm2(binary: &str, dir: &Path, identified: &dyn Fn()) -> Result<Row, String> {
    let home = dir.join("pm2");
    let pm2 =
        |args: &[&str]| Command::new("pm2").args(args).env("PM2_HOME", &home).stderr(Stdio::null()).output();
    let version = pm2(&["--version"]).map_err(|e| format!("pm2 is not on the PATH ({e})"))?;
    let version =
        String::from_utf8_lossy(&version.stdout).lines().last().unwrap_or_default().trim().to_owned();
    let config = dir.join("config.json");
    let config = config.to_str().unwrap();
    let args =
        ["start", binary, "--name", "bench-sidecar", "--interpreter", "none", "--", "--config", config];
    let started = pm2(&args).map_err(|e| e.to_string())?;
    if !started.status.success() {
        let _ = pm2(&["kill"]);
        return Err(format!("pm2 start failed: {}", String::from_utf8_lossy(&started.stdout)));
    }
    identified();
    let daemon: Option<u32> =
        fs::read_to_string(home.join("pm2.pid")).ok().and_then(|p| p.trim().parse().ok());
    let sidecar: Option<u32> = pm2(&["pid", "bench-sidecar"])
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok());
    let row = Row {
        setup: format!("pm2 {version}"),
        supervisor: daemon.map(|pid| ("pm2 daemon (node)".to_owned(), kb(pid))).into_iter().collect(),
        sidecar: sidecar.map(kb).unwrap_or_default(),
        note: "the pm2 daemon (node); pm2's CLI exits after each command".into(),
    };
    let _ = pm2(&["kill"]);
    Ok(row)
}

/// Linux processes whose command line contains `needle`.
fn pids_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else { continue };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

fn wine_service(hub_url: &str, dir: &Path, identified: &dyn Fn()) -> Result<Row, String> {
    let exe = std::env::var("BENCH_WINDOWS_EXE")
        .map_err(|_| "set BENCH_WINDOWS_EXE and WINEPREFIX to measure it")?;
    let prefix = std::env::var("WINEPREFIX").map_err(|_| "set WINEPREFIX too")?;
    // A wineserver that outlives the last console process by a minute:
    // Wine otherwise ends the services (its "system" processes) 3 s after.
    // Does nothing when one already runs (.ci/windows.sh starts it with -p).
    let _ = Command::new("wineserver").arg("-p60").stdout(Stdio::null()).stderr(Stdio::null()).status();
    let box_dir = dir.join("wine");
    fs::create_dir_all(&box_dir).unwrap();
    let body = json!({"agent_id": "bench", "token": "bench-token", "hub_url": hub_url, "log_level": "warn"});
    fs::write(box_dir.join("config.json"), body.to_string()).unwrap();
    let config = format!("Z:{}", box_dir.join("config.json").display()).replace('/', "\\");
    let service = |args: &[&str]| {
        Command::new("wine")
            .arg(&exe)
            .arg("service")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    };
    let installed =
        service(&["install", "--config", &config, "--name", "bench-sidecar"]).map_err(|e| e.to_string())?;
    if !installed.success() {
        return Err("service install failed under Wine".into());
    }
    let started = service(&["start", "--name", "bench-sidecar"]);
    let row = if started.is_ok_and(|s| s.success()) {
        identified();
        // This prefix's: other Wine prefixes may run their own.
        // Wine shows the Windows command line; looked for a while, as the
        // process is sometimes not listed yet when the hub sees it.
        let deadline = std::time::Instant::now() + FAILSAFE;
        let sidecar = loop {
            let found = pids_with("service\0run\0--config").into_iter().find(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("bench-sidecar"))
            });
            if found.is_some() || std::time::Instant::now() >= deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let scm = pids_with("services.exe").into_iter().find(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|e| e.split(|b| *b == 0).any(|v| v == format!("WINEPREFIX={prefix}").as_bytes()))
        });
        let Some(sidecar) = sidecar else {
            let _ = service(&["uninstall", "--name", "bench-sidecar"]);
            return Err("cannot find the service's process under Wine".into());
        };
        Ok(Row {
            setup: "Windows service (under Wine)".into(),
            supervisor: scm.map(|pid| ("Wine's services.exe".to_owned(), kb(pid))).into_iter().collect(),
            sidecar: kb(sidecar),
            note: "Wine's numbers, not Windows': its services.exe (on Windows the service manager runs anyway), \
                   the .exe with Wine's DLLs; wineserver not counted"
                .into(),
        })
    } else {
        Err("service start failed under Wine".into())
    };
    let _ = service(&["uninstall", "--name", "bench-sidecar"]);
    row
}
