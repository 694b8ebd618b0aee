//! The foundation: identify, reconnect, heartbeat, auth backoff, shutdown,
//! TLS, and bad configs, against the real binary and the development hub.

use std::process::Command;
use std::time::{Duration, Instant};

use agentcom_sidecar::devhub::{DevHub, DevHubEvent, DevHubOptions};
use serde_json::{json, Value};

use crate::support::*;

#[test]
fn identify_has_exactly_the_protocol_fields() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path(), &config(dir.path(), &hub.url()));
    let identify = expect_received(&hub, "identify");
    let mut keys: Vec<&str> = identify.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["agent_id", "capabilities", "client_type", "name", "protocol_version", "status", "token", "type"]
    );
    assert_eq!(identify["client_type"], "sidecar");
    assert_eq!(identify["agent_id"], AGENT);
    expect_identified(&hub);
    sidecar.wait_output("identified with hub");
    sidecar.assert_no_token_anywhere();
}

#[test]
fn a_restarted_hub_is_reconnected_within_the_backoff() {
    let hub = start_hub();
    let addr = hub.addr();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &hub.url());
    let sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    hub.stop();

    let mut options = DevHubOptions::new(AGENT, TOKEN);
    options.bind = addr;
    // The port is free again once the old hub's listener is closed, but on
    // a busy machine another test's socket may hold it for a moment.
    let restarted = wait_until("the hub to restart on the same port", || DevHub::start(options.clone()).ok());
    let started = Instant::now();
    expect_identified(&restarted);
    // reconnect_max_ms is 400: any retry lands within one capped step of
    // the restart. The slack absorbs a loaded 2-core machine.
    let took = started.elapsed();
    assert!(took < Duration::from_millis(400) + Duration::from_secs(3), "took {took:?}");
    drop(sidecar);
}

#[test]
fn a_silent_hub_is_detected_and_reconnected() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    cfg["heartbeat_interval_ms"] = json!(300);
    cfg["pong_timeout_ms"] = json!(300);
    let sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    // Keep TCP open, answer nothing: a half-open connection.
    hub.set_silent(true);
    let silent_since = Instant::now();
    expect_event(&hub, "the sidecar to drop the silent connection", |e| {
        matches!(e, DevHubEvent::Disconnected { .. })
    });
    let took = silent_since.elapsed();
    assert!(took < Duration::from_millis(600) + Duration::from_secs(3), "detected after {took:?}");
    hub.set_silent(false);
    expect_identified(&hub);
    sidecar.wait_output("no pong within 300 ms");
}

#[test]
fn a_wrong_token_is_retried_with_backoff_not_in_a_hot_loop() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    cfg["token"] = json!("wrong-token-value");
    cfg["reconnect_initial_ms"] = json!(100);
    cfg["reconnect_max_ms"] = json!(1_000);
    let sidecar = Sidecar::start(dir.path(), &cfg);
    let window = Duration::from_secs(3);
    let started = Instant::now();
    let mut attempts = 0;
    while started.elapsed() < window {
        let left = window.saturating_sub(started.elapsed());
        if hub.wait_for(left, |e| matches!(e, DevHubEvent::Connected { .. })).is_some() {
            attempts += 1;
        }
    }
    // Delays are at least half of 100, 200, 400, 800, 1000, 1000 ... ms:
    // cumulative 50, 150, 350, 750, 1250, 1750, 2250, 2750. So at most 8
    // retries plus the first attempt fit in 3 s; a hot loop makes hundreds.
    assert!((2..=9).contains(&attempts), "{attempts} connection attempts in 3 s");
    let out = sidecar.wait_output("invalid_token");
    assert!(out.contains("check agent_id and token"), "{out}");
    assert!(!out.contains("wrong-token-value"), "the token leaked into the log");
}

fn assert_quick_clean_exit(sidecar: &mut Sidecar, signal: &str) {
    let sent = Instant::now();
    sidecar.signal(signal);
    let status = sidecar.wait_exit(Duration::from_secs(10)).expect("the sidecar exits");
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(1), "shutdown took {took:?}");
}

#[test]
#[cfg_attr(windows, ignore = "skipped on Windows: these send Unix signals with kill(1)")]
fn sigterm_while_connected_exits_zero_within_a_second() {
    let hub = start_hub();
    let dir = tempfile::tempdir().unwrap();
    let mut sidecar = Sidecar::start(dir.path(), &config(dir.path(), &hub.url()));
    expect_identified(&hub);
    assert_quick_clean_exit(&mut sidecar, "TERM");
    assert!(sidecar.lifecycle().contains("\"event\":\"stopped\""));
}

#[test]
#[cfg_attr(windows, ignore = "skipped on Windows: these send Unix signals with kill(1)")]
fn sigint_while_backing_off_exits_zero_within_a_second() {
    // A port with nothing listening: the sidecar fails and backs off.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &format!("ws://127.0.0.1:{port}/ws"));
    cfg["reconnect_initial_ms"] = json!(10_000);
    cfg["reconnect_max_ms"] = json!(60_000);
    let mut sidecar = Sidecar::start(dir.path(), &cfg);
    wait_until("a failed connection attempt", || {
        sidecar.lifecycle().contains("\"disconnected\"").then_some(())
    });
    assert_quick_clean_exit(&mut sidecar, "INT");
}

#[test]
#[cfg_attr(windows, ignore = "skipped on Windows: these send Unix signals with kill(1)")]
fn sigterm_while_connecting_exits_zero_within_a_second() {
    // A listener that never accepts: the TCP handshake completes in the
    // kernel backlog but the WebSocket handshake is never answered.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &format!("ws://{}/ws", listener.local_addr().unwrap()));
    cfg["connect_timeout_ms"] = json!(30_000);
    let mut sidecar = Sidecar::start(dir.path(), &cfg);
    wait_until("a connection attempt", || sidecar.lifecycle().contains("\"connecting\"").then_some(()));
    assert_quick_clean_exit(&mut sidecar, "TERM");
}

#[test]
#[cfg_attr(
    windows,
    ignore = "skipped on Windows: the TLS tests mint their CA with OpenSSL, a Unix-only dev-dependency"
)]
fn wss_with_the_private_ca_connects_and_without_it_is_refused_clearly() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = crate::support::tls::TestCa::new(pki_dir.path());
    let mut options = DevHubOptions::new(AGENT, TOKEN);
    options.tls = Some(pki.acceptor());
    let hub = DevHub::start(options).unwrap();
    assert!(hub.url().starts_with("wss://"));

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    cfg["tls_ca_file"] = json!(pki.ca_file);
    let sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    drop(sidecar);

    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(dir.path(), &config(dir.path(), &hub.url()));
    let out = sidecar.wait_output("tls_ca_file");
    assert!(out.to_lowercase().contains("certificate") || out.contains("TLS"), "{out}");
    assert!(hub
        .wait_for(Duration::from_millis(300), |e| matches!(e, DevHubEvent::Identified { .. }))
        .is_none());
}

fn run_binary(args: &[&str], config_text: Option<&str>) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    if let Some(text) = config_text {
        std::fs::write(&path, text).unwrap();
    }
    let output = Command::new(env!("CARGO_BIN_EXE_agentcom-sidecar"))
        .args(args)
        .arg("--config")
        .arg(&path)
        .env_remove("SIDECAR_CONFIG")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_configs_exit_2_naming_the_file_and_key_without_the_token() {
    let good = json!({"agent_id":"a","token":TOKEN,"hub_url":"ws://127.0.0.1:9/ws"});
    let with = |key: &str, value: Value| {
        let mut config = good.clone();
        config[key] = value;
        config.to_string()
    };
    let without = |key: &str| {
        let mut config = good.clone();
        config.as_object_mut().unwrap().remove(key);
        config.to_string()
    };
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "cannot read the config file"),
        (Some("{not json".into()), "not valid JSON"),
        (Some(without("agent_id")), "`agent_id`"),
        (Some(without("token")), "`token`"),
        (Some(without("hub_url")), "`hub_url`"),
        (Some(with("hub_url", json!("http://x/ws"))), "`hub_url`"),
        (Some(with("heartbeat_interval_ms", json!("30s"))), "`heartbeat_interval_ms`"),
        (Some(with("capabilities", json!("code"))), "`capabilities`"),
        (Some(with("confirmation_timeout_ms", json!(-1))), "`confirmation_timeout_ms`"),
        (Some(with("tls_ca_file", json!("missing-ca.pem"))), "`tls_ca_file`"),
    ];
    for (text, expected) in cases {
        for args in [&[][..], &["check"][..]] {
            let (code, stdout, stderr) = run_binary(args, text.as_deref());
            assert_eq!(code, 2, "{expected}: stderr {stderr}");
            assert!(stderr.contains(expected), "{stderr:?} should name {expected}");
            assert!(stderr.contains("config.json"), "{stderr:?} should name the file");
            assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr:?}");
            assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
            assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN), "token leaked");
        }
    }
}

#[test]
fn check_prints_the_effective_config_with_the_token_redacted() {
    let text = json!({"agent_id":"a","token":TOKEN,"hub_url":"ws://127.0.0.1:9/ws","surprise":1}).to_string();
    let (code, stdout, stderr) = run_binary(&["check"], Some(&text));
    assert_eq!(code, 0, "{stderr}");
    let effective: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(effective["token"], "<redacted>");
    assert_eq!(effective["heartbeat_interval_ms"], 30_000);
    assert!(effective["results_dir"].as_str().unwrap().ends_with("results"));
    assert!(stderr.contains("unknown key `surprise`"), "{stderr}");
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));
}

#[test]
fn help_and_version() {
    let output = Command::new(env!("CARGO_BIN_EXE_agentcom-sidecar")).arg("--help").output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("--config"));
    let output = Command::new(env!("CARGO_BIN_EXE_agentcom-sidecar")).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("agentcom-sidecar "));
    let output = Command::new(env!("CARGO_BIN_EXE_agentcom-sidecar")).arg("--bogus").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}
