use super::*;
use crate::retry::JitterStrategy;

fn parse(text: &str) -> Result<(Config, Vec<String>), Error> {
    Config::from_json_str(text, Path::new("/etc/sidecar/config.json"))
}

fn error_of(text: &str) -> String {
    parse(text).expect_err("config should be refused").to_string()
}

const MINIMAL: &str = r#"{"agent_id":"a1","token":"s3cret","hub_url":"ws://127.0.0.1:4000/ws"}"#;

#[test]
fn node_defaults_apply_and_paths_resolve_against_the_config_dir() {
    let (config, warnings) = parse(MINIMAL).unwrap();
    assert!(warnings.len() == 1 && warnings[0].contains("no wake_command"), "{warnings:?}");
    assert_eq!(config.settings.name, "a1");
    assert_eq!(config.settings.confirmation_timeout, Duration::from_secs(30));
    assert_eq!(config.results_dir, Path::new("/etc/sidecar/results"));
    assert_eq!(config.log_file, Path::new("/etc/sidecar/sidecar.log"));
    assert_eq!(config.queue_file, Path::new("/etc/sidecar/queue.json"));
    assert_eq!(config.settings.link.heartbeat_interval, Duration::from_secs(30));
    assert_eq!(config.settings.link.pong_timeout, Duration::from_secs(10));
    assert_eq!(config.settings.wake_retry_delays.len(), 3);
    assert!(config.wake_command.is_none());
    assert_eq!(config.settings.link.backoff.jitter, JitterStrategy::Equal);
    assert_eq!(config.to_redacted_json()["reconnect_jitter"], "equal");
    let (full, _) =
        parse(r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","reconnect_jitter":"full"}"#).unwrap();
    assert_eq!(full.settings.link.backoff.jitter, JitterStrategy::Full);
}

#[test]
fn resolved_paths_display_without_dot_components() {
    let shown = |config_path: &str, log_file: &str| {
        let text = MINIMAL.replace('}', &format!(r#","log_file":"{log_file}"}}"#));
        let (config, _) = Config::from_json_str(&text, Path::new(config_path)).unwrap();
        // Written with `/` whatever the platform's separator.
        config.log_file.display().to_string().replace(std::path::MAIN_SEPARATOR, "/")
    };
    assert_eq!(shown("config.json", "./sidecar.log"), "./sidecar.log");
    assert_eq!(shown("./config.json", "./logs/./sidecar.log"), "./logs/sidecar.log");
    assert_eq!(shown("/etc/sidecar/config.json", "./sidecar.log"), "/etc/sidecar/sidecar.log");
    assert_eq!(shown("/etc/sidecar/config.json", "../var/sidecar.log"), "/etc/sidecar/../var/sidecar.log");
    assert_eq!(shown("/etc/sidecar/config.json", "/var/log/s.log"), "/var/log/s.log");
}

#[test]
fn node_example_config_is_accepted() {
    let text = r#"{
        "agent_id": "my-agent", "token": "tok", "hub_url": "wss://hub.example/ws",
        "wake_command": "openclaw agent --message \"Task: ${TASK_JSON}\"",
        "capabilities": ["code", "review"], "confirmation_timeout_ms": 30000,
        "results_dir": "/var/results", "log_file": "sidecar.log"
    }"#;
    let (config, warnings) = parse(text).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config.settings.capabilities, ["code", "review"]);
    assert_eq!(config.results_dir, Path::new("/var/results"));
}

#[test]
fn every_bad_input_names_the_file_and_the_key() {
    let cases = [
        (r#"{"token":"t","hub_url":"ws://h/ws"}"#, "`agent_id`: missing"),
        (r#"{"agent_id":"a","hub_url":"ws://h/ws"}"#, "`token`: missing"),
        (r#"{"agent_id":"a","token":"t"}"#, "`hub_url`: missing"),
        (r#"{"agent_id":7,"token":"t","hub_url":"ws://h/ws"}"#, "`agent_id`: expected a string"),
        (r#"{"agent_id":"a","token":"t","hub_url":"http://h/ws"}"#, "`hub_url`: scheme"),
        (r#"{"agent_id":"a","token":"t","hub_url":"ws:///ws"}"#, "`hub_url`: the URL has no host"),
        (
            r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","heartbeat_interval_ms":"30"}"#,
            "`heartbeat_interval_ms`: expected a non-negative integer, found a string",
        ),
        (
            r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","heartbeat_interval_ms":0}"#,
            "`heartbeat_interval_ms`: must be at least 1",
        ),
        (
            r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","rate_limit_normal":0}"#,
            "`rate_limit_normal`: must be at least 1",
        ),
        (
            r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","rate_limit_window_ms":10}"#,
            "`rate_limit_window_ms`: must be at least 100",
        ),
        (
            r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","pong_timeout_ms":-5}"#,
            "`pong_timeout_ms`: expected a non-negative integer, found a negative number",
        ),
        (
            r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","capabilities":"code"}"#,
            "`capabilities`: expected an array of strings",
        ),
        (
            r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","reconnect_initial_ms":500,"reconnect_max_ms":100}"#,
            "`reconnect_max_ms`",
        ),
        (
            r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","tls_ca_file":"/nonexistent/ca.pem"}"#,
            "`tls_ca_file`",
        ),
        (
            r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","wake_retry_delays_ms":[1,"x"]}"#,
            "`wake_retry_delays_ms`",
        ),
        (
            r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","hub_features":["teleport"]}"#,
            "`hub_features`",
        ),
        (
            r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","log_keep":4294967297}"#,
            "`log_keep`: must be at most 1000",
        ),
        (
            r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","watch_results":"no"}"#,
            "`watch_results`: expected true or false",
        ),
        (
            r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","reconnect_jitter":"random"}"#,
            "`reconnect_jitter`: expected one of equal, full, decorrelated",
        ),
        (
            &format!(r#"{{"agent_id":"{}","token":"t","hub_url":"ws://h/ws"}}"#, "a".repeat(129)),
            "`agent_id`: must be at most 128 characters",
        ),
        (
            &format!(r#"{{"agent_id":"a","token":"{}","hub_url":"ws://h/ws"}}"#, "t".repeat(257)),
            "`token`: must be at most 256 characters",
        ),
    ];
    for (text, expected) in cases {
        let message = error_of(text);
        assert!(message.contains("/etc/sidecar/config.json"), "{message}");
        assert!(message.contains(expected), "{message:?} should contain {expected:?}");
    }
}

#[test]
fn bad_json_and_non_objects_are_refused() {
    assert!(error_of("{").contains("not valid JSON"));
    assert!(error_of("[]").contains("top level must be a JSON object"));
}

#[test]
fn unknown_keys_warn_but_do_not_fail() {
    let text = r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","wake_command":"w","hub_api_url":"x"}"#;
    let (_, warnings) = parse(text).unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("`hub_api_url`"));
}

#[test]
fn the_token_never_shows_in_debug_or_redacted_json() {
    let (config, _) = parse(MINIMAL).unwrap();
    assert!(!format!("{config:?}").contains("s3cret"));
    assert!(!config.to_redacted_json().to_string().contains("s3cret"));
    assert_eq!(config.settings.token.expose(), "s3cret");
}

#[test]
fn check_shows_every_known_key_and_accepts_its_own_output() {
    let (config, _) = parse(MINIMAL).unwrap();
    let shown = config.to_redacted_json();
    let Value::Object(mut shown) = shown else { panic!("not an object") };
    assert_eq!(shown["token"], "<redacted>");
    // Joined with the platform's separator (`\` on Windows).
    let results_dir = Path::new("/etc/sidecar").join("results");
    assert_eq!(shown["results_dir"], results_dir.display().to_string());
    assert_eq!(shown["heartbeat_interval_ms"], 30_000);
    assert_eq!(shown["wake_retry_delays_ms"], serde_json::json!([5_000, 15_000, 30_000]));
    assert_eq!(shown["log_level"], "info");
    assert_eq!(shown.len(), 47, "the 46 keys and config_path: {shown:?}");
    // Every key `check` shows is one the parser knows: fed back in (with
    // the real token and URL), nothing is warned about.
    shown.remove("config_path");
    shown.insert("token".into(), Value::from("t"));
    shown.insert("hub_url".into(), Value::from("ws://h/ws"));
    shown.insert("wake_command".into(), Value::from("w"));
    shown.retain(|_, v| !v.is_null());
    let (_, warnings) = parse(&Value::Object(shown).to_string()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn urls_lose_credentials_and_queries() {
    assert_eq!(redact_url("wss://u:p@hub:4000/ws?token=x"), "wss://<redacted>@hub:4000/ws?<redacted>");
    assert_eq!(redact_url("ws://127.0.0.1:4000/ws"), "ws://127.0.0.1:4000/ws");
    assert_eq!(redact_url("ws://host"), "ws://host");
}

#[test]
fn hub_urls_with_a_bad_port_host_or_fragment_are_refused_naming_the_key() {
    for (url, expected) in [
        ("ws://127.0.0.1:99999/ws", "invalid port"),
        ("ws://127.0.0.1:65536/ws", "invalid port"),
        ("ws://127.0.0.1:4400abc/ws", "invalid port"),
        ("ws://127.0.0.1:/ws", "no port after `:`"),
        ("ws://user@:4000/ws", "no host"),
        ("ws://h:4000/ws#frag", "fragment"),
        ("ws//h:4000/ws", "expected a ws:// or wss:// URL"),
        ("ws://exa mple/ws", "invalid"),
    ] {
        let message = error_of(&MINIMAL.replace("ws://127.0.0.1:4000/ws", url));
        assert!(message.contains("`hub_url`"), "{url}: {message}");
        assert!(message.contains(expected), "{url}: {message:?} should contain {expected:?}");
    }
    for url in ["ws://127.0.0.1:65535/ws", "wss://hub.example/ws", "ws://[::1]:4000/ws", "ws://h"] {
        parse(&MINIMAL.replace("ws://127.0.0.1:4000/ws", url)).unwrap_or_else(|e| panic!("{url}: {e}"));
    }
}

#[test]
fn an_unknown_key_close_to_a_known_one_is_an_error_with_the_suggestion() {
    let text = r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","wake_comand":"x"}"#;
    let message = error_of(text);
    assert!(message.contains("`wake_comand`") && message.contains("did you mean wake_command?"), "{message}");
    let text = r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","task_timout_ms":5}"#;
    assert!(error_of(text).contains("did you mean task_timeout_ms?"));
    let text = r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","nmae":"x"}"#;
    assert!(error_of(text).contains("did you mean name?"));
    // Far from every known key: a newer config's key, warned about only.
    let text = r#"{"agent_id":"a","token":"t","hub_url":"ws://h/ws","wake_command":"w","telemetry":true}"#;
    let (_, warnings) = parse(text).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}

#[test]
fn no_wake_command_and_no_task_timeout_is_a_loud_warning_saying_what_will_happen() {
    let (_, warnings) = parse(MINIMAL).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("no wake_command and no task_timeout_ms"), "{warnings:?}");
    assert!(warnings[0].contains("for ever"), "{warnings:?}");
    for extra in [r#","wake_command":"w""#, r#","task_timeout_ms":60000"#] {
        let (_, warnings) = parse(&MINIMAL.replace('}', &format!("{extra}}}"))).unwrap();
        assert!(warnings.is_empty(), "{extra}: {warnings:?}");
    }
}

#[cfg(unix)]
#[test]
fn unwritable_or_unusable_directories_are_reported_with_the_path_and_the_os_error() {
    let dir = tempfile::tempdir().unwrap();
    let readonly = crate::test_support::ReadOnlyDir::new(&dir.path().join("ro"));
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let config_with = |key: &str, value: &Path| {
        let text =
            MINIMAL.replace('}', &format!(r#","{key}":{}}}"#, Value::from(value.display().to_string())));
        Config::from_json_str(&text, &dir.path().join("config.json")).unwrap().0
    };
    let fine = config_with("results_dir", &dir.path().join("new/results"));
    assert!(fine.directory_problems().is_empty(), "{:?}", fine.directory_problems());

    let problems = config_with("results_dir", readonly.path()).directory_problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("results_dir") && problems[0].contains(&readonly.path().display().to_string())
    );
    assert!(problems[0].contains("not writable") && problems[0].contains("os error"), "{problems:?}");

    let problems = config_with("results_dir", &readonly.path().join("sub/results")).directory_problems();
    assert!(problems.len() == 1 && problems[0].contains("cannot be created in"), "{problems:?}");
    let problems = config_with("queue_file", &readonly.path().join("queue.json")).directory_problems();
    assert!(problems.len() == 1 && problems[0].contains("queue_file"), "{problems:?}");
    let problems = config_with("log_file", &file.join("sidecar.log")).directory_problems();
    assert!(problems.len() == 1 && problems[0].contains("log_file"), "{problems:?}");
    let problems = config_with("results_dir", &file).directory_problems();
    assert!(problems.len() == 1 && problems[0].contains("not a directory"), "{problems:?}");
}

/// A sidecar killed between the probe's create and its remove leaves the
/// probe behind; the next check reuses that one name and removes it, so
/// kills never pile up stray files beside queue.json (the soak found one).
#[test]
fn the_writability_probe_left_by_a_killed_sidecar_is_removed_by_the_next_check() {
    let dir = tempfile::tempdir().unwrap();
    let left = dir.path().join(super::checks::WRITE_PROBE);
    std::fs::write(&left, "left by a sidecar killed mid-check").unwrap();
    let (config, _) = Config::from_json_str(MINIMAL, &dir.path().join("config.json")).unwrap();
    assert!(config.directory_problems().is_empty(), "{:?}", config.directory_problems());
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.is_empty(), "the check leaves nothing behind: {names:?}");
}
