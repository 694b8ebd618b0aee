use super::*;

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

#[test]
fn install_takes_a_config_a_name_and_an_account() {
    let parsed = parse(None, &args(&["install", "--config", "c.json", "--name=box", "--account", ".\\ops"]));
    assert_eq!(
        parsed,
        Ok(ServiceCommand::Install {
            config: PathBuf::from("c.json"),
            name: "box".into(),
            account: Some(".\\ops".into())
        })
    );
    let before = parse(Some(PathBuf::from("x.json")), &args(&["install"])).unwrap();
    assert!(matches!(before, ServiceCommand::Install { config, name, account: None }
        if config == Path::new("x.json") && name == DEFAULT_NAME));
}

#[test]
fn the_other_commands_take_a_name_only() {
    for (verb, expected) in [
        ("uninstall", ServiceCommand::Uninstall { name: "n".into() }),
        ("start", ServiceCommand::Start { name: "n".into() }),
        ("stop", ServiceCommand::Stop { name: "n".into() }),
        ("status", ServiceCommand::Status { name: "n".into() }),
    ] {
        assert_eq!(parse(None, &args(&[verb, "--name", "n"])), Ok(expected));
        let err = parse(None, &args(&[verb, "--config", "c.json"])).unwrap_err();
        assert_eq!(err, format!("--config goes with install and run, not {verb}"));
    }
    assert_eq!(
        parse(None, &args(&["run", "-c", "c.json"])),
        Ok(ServiceCommand::Run { config: "c.json".into(), name: DEFAULT_NAME.into() })
    );
}

#[test]
fn bad_service_command_lines_say_what_is_wrong() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "service needs a command: install, uninstall, start, stop, status"),
        (&["restart"], "unknown service command \"restart\""),
        (&["install", "--name"], "--name needs a value"),
        (&["install", "--name", ""], "bad service name \"\": 1 to 256 characters, no slashes"),
        (&["install", "--name", "a\\b"], "bad service name \"a\\\\b\": 1 to 256 characters, no slashes"),
        (&["start", "--account", "x"], "--account goes with install, not start"),
        (&["install", "--verbose"], "unexpected argument \"--verbose\""),
    ];
    for (line, expected) in cases {
        assert_eq!(parse(None, &args(line)).unwrap_err(), *expected, "{line:?}");
    }
}

#[test]
fn the_service_runs_this_binary_on_its_config_and_logs_beside_it() {
    let config = Path::new("C:\\agentcom\\config.json");
    assert_eq!(
        launch_arguments(config, "box"),
        args(&["service", "run", "--config", "C:\\agentcom\\config.json", "--name", "box"])
    );
    let dir = Path::new("/srv/agentcom");
    assert_eq!(log_path(&dir.join("config.json"), "box"), dir.join("box.log"));
    assert_eq!(log_path(Path::new("config.json"), "box"), Path::new(".").join("box.log"));
}

#[test]
fn the_service_log_is_rotated_once_it_is_large() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("box.log");
    open_log(&path, 8).unwrap().write_all(b"1234").unwrap();
    open_log(&path, 8).unwrap().write_all(b"5678").unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "12345678");
    open_log(&path, 8).unwrap().write_all(b"9").unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "9");
    assert_eq!(std::fs::read_to_string(dir.path().join("box.log.1")).unwrap(), "12345678");
}

#[test]
fn failures_exit_non_zero_so_recovery_restarts_and_stops_have_time() {
    use crate::error::Error;
    assert_eq!(exit_code(&Ok(()), true), 0);
    assert_eq!(exit_code(&Ok(()), false), RESTART_EXIT_CODE, "restart_sidecar: restarted by recovery");
    assert_eq!(exit_code(&Err(Error::Config("x".into())), true), 2);
    assert_eq!(exit_code(&Err(Error::io("x", std::io::Error::other("y"))), false), 1);
    assert_eq!(stop_wait_hint(Duration::from_secs(2)), Duration::from_secs(14));
    assert!(RECOVERY_DELAYS.windows(2).all(|w| w[0] < w[1]), "growing delays");
    assert!(RECOVERY_DELAYS.iter().all(|d| *d > Duration::ZERO), "a restart never at once");
}
