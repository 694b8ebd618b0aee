//! The identity a started command reports, and ending a leftover by it.

use super::*;

#[test]
fn each_attempt_reports_its_identity_when_it_starts() {
    let fixture = Fixture::new();
    let mut request = fixture.request("echo $$ > \"$AGENTCOM_RESULTS_DIR/pid\"");
    request.attempt = 2;
    fixture.handle().run(request);
    let started = fixture.started.recv_timeout(FAILSAFE).expect("no start report");
    assert_eq!(fixture.outcome().status, WakeStatus::Success);
    let pid: u32 = fs::read_to_string(fixture.dir().join("pid")).unwrap().trim().parse().unwrap();
    assert_eq!((started.task_id.as_str(), started.attempt), ("task-00000000000000ff", 2));
    assert_eq!(started.identity.pid, pid);
    assert_eq!(started.identity.process_group, Some(pid));
    assert!(started.identity.start_time.is_some(), "{started:?}");
    // The core persists it as JSON.
    let json = serde_json::to_string(&started.identity).unwrap();
    assert_eq!(serde_json::from_str::<WakeIdentity>(&json).unwrap(), started.identity);
    // A command that cannot start reports no start.
    fixture.handle().run(fixture.request("echo a\0b"));
    assert!(matches!(fixture.outcome().status, WakeStatus::SpawnFailed(_)));
    assert!(fixture.started.try_recv().is_err());
}

#[test]
fn a_leftover_is_ended_with_its_group_only_when_its_start_time_matches() {
    let fixture = Fixture::new();
    let pids = fixture.pid_fifo("pid.fifo");
    fixture
        .handle()
        .run(fixture.request(r#"sleep 30 & echo $! > "$AGENTCOM_RESULTS_DIR/pid.fifo"; sleep 30; wait"#));
    let identity = fixture.started.recv_timeout(FAILSAFE).expect("no start report").identity;
    let grandchild = pids.recv_timeout(FAILSAFE).expect("no grandchild pid");

    // The same pid with another start time is another process: left alone.
    let reused = WakeIdentity { start_time: identity.start_time.map(|time| time + 1), ..identity.clone() };
    assert_eq!(end_leftover(&reused), Leftover::Gone);
    let unverifiable = WakeIdentity { start_time: None, ..identity.clone() };
    assert_eq!(end_leftover(&unverifiable), Leftover::Unverifiable);
    assert!(is_alive(identity.pid) && is_alive(grandchild), "a mismatched identity ended something");

    // The real one: the command and everything in its group end.
    assert_eq!(end_leftover(&identity), Leftover::Ended);
    assert_eq!(fixture.outcome().status, WakeStatus::Failed { exit_code: None });
    let gone = wait_until_gone(grandchild);
    kill_leftover_sleep(grandchild);
    assert!(gone, "grandchild {grandchild} survived end_leftover");
    assert_eq!(end_leftover(&identity), Leftover::Gone);
}
