//! The sidecar against the development hub playing each real hub version
//! (cbf9c20 and 4718a58): what each hub does to a sidecar and what the
//! sidecar must survive. Tests of behaviours today's sidecar gets wrong
//! (issue 9's defects) are ignored with the issue item that fixes them.

use std::fs;
use std::path::Path;
use std::time::Duration;

use agentcom_sidecar::devhub::{
    AgentState, Bucket, DevHub, DevHubEvent, DevHubOptions, HubVersion, TaskStatus,
};
use serde_json::{json, Value};

use crate::support::*;

/// An agent that confirms, counts its wakes and, with `result`, writes that
/// result at once (temp file, then rename).
#[cfg(unix)]
fn agent(dir: &Path, result: Option<&Value>) -> String {
    let mut command = format!(
        ": > \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.started\"; echo woken >> {wakes}",
        wakes = dir.join("wakes.txt").display()
    );
    if let Some(result) = result {
        let file = dir.join("result.json");
        fs::write(&file, result.to_string()).unwrap();
        command.push_str(&format!(
            "; cp {file} \"$AGENTCOM_RESULTS_DIR/.$AGENTCOM_TASK_ID.tmp\" \
             && mv \"$AGENTCOM_RESULTS_DIR/.$AGENTCOM_TASK_ID.tmp\" \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.json\"",
            file = file.display()
        ));
    }
    command
}

/// The same for `cmd /V:ON /C`.
#[cfg(windows)]
fn agent(dir: &Path, result: Option<&Value>) -> String {
    let mut command = format!(
        "type nul>\"!AGENTCOM_RESULTS_DIR!\\!AGENTCOM_TASK_ID!.started\"& echo woken>>\"{wakes}\"",
        wakes = dir.join("wakes.txt").display()
    );
    if let Some(result) = result {
        let file = dir.join("result.json");
        fs::write(&file, result.to_string()).unwrap();
        command.push_str(&format!(
            "& copy /y \"{file}\" \"!AGENTCOM_RESULTS_DIR!\\.!AGENTCOM_TASK_ID!.tmp\" >nul\
             & move /y \"!AGENTCOM_RESULTS_DIR!\\.!AGENTCOM_TASK_ID!.tmp\" \"!AGENTCOM_RESULTS_DIR!\\!AGENTCOM_TASK_ID!.json\" >nul",
            file = file.display()
        ));
    }
    command
}

fn success() -> Value {
    json!({"status": "success", "output": "done"})
}

fn wakes(dir: &Path) -> usize {
    fs::read_to_string(dir.join("wakes.txt")).unwrap_or_default().lines().count()
}

fn write_result(sidecar: &Sidecar, task_id: &str, result: &Value) {
    let dir = sidecar.results_dir();
    let temp = dir.join(format!(".{task_id}.json.tmp"));
    fs::write(&temp, result.to_string()).unwrap();
    fs::rename(temp, dir.join(format!("{task_id}.json"))).unwrap();
}

fn expect_sent(hub: &DevHub, frame_type: &str) -> Value {
    let mut found = None;
    hub.wait_for(FAILSAFE, |event| match event {
        DevHubEvent::Sent { frame, .. } if frame["type"] == frame_type => {
            found = Some(frame.clone());
            true
        }
        _ => false,
    });
    found.unwrap_or_else(|| panic!("the hub sent no {frame_type}"))
}

/// A hub playing `version` (tuned by `tune`) and a config for a sidecar in a
/// fresh directory, with `wake` as the agent.
fn setup(
    version: HubVersion,
    tune: impl FnOnce(&mut DevHubOptions),
    wake: impl FnOnce(&Path) -> String,
) -> (DevHub, tempfile::TempDir, Value) {
    let mut options = DevHubOptions::for_version(AGENT, TOKEN, version);
    tune(&mut options);
    let hub = DevHub::start(options).expect("the devhub starts");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), &hub.url());
    cfg["wake_command"] = json!(wake(dir.path()));
    cfg["result_settle_ms"] = json!(50);
    (hub, dir, cfg)
}

fn wait_all_completed(hub: &DevHub, task_ids: &[String]) {
    wait_until("every task completed", || {
        task_ids
            .iter()
            .all(|task_id| hub.task(task_id).is_some_and(|task| task.status == TaskStatus::Completed))
            .then_some(())
    });
}

/// Every 1008 close the hub sent so far (consumes the events).
fn closes_1008(hub: &DevHub) -> Vec<String> {
    hub.events()
        .try_iter()
        .filter_map(|event| match event {
            DevHubEvent::ClosedByHub { code: 1008, reason, .. } => Some(reason),
            _ => None,
        })
        .collect()
}

/// 10 tasks submitted at once; all must complete with no 1008 close and no
/// violation.
fn burst(version: HubVersion, races: u32) {
    let (hub, dir, cfg) = setup(
        version,
        |options| {
            options.second_push_races = races;
            // A second-pushed task comes back through the stuck sweep: 5 or
            // 10 minutes on the real hubs, 2 s here.
            options.limits.stuck_after = Some(Duration::from_secs(2));
        },
        |dir| agent(dir, Some(&success())),
    );
    let sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let task_ids: Vec<String> =
        (0..10).map(|i| hub.push_task(AGENT, &format!("burst {i}"), json!({}))).collect();
    wait_all_completed(&hub, &task_ids);
    assert_eq!(closes_1008(&hub), Vec::<String>::new(), "{version}");
    assert_eq!(hub.violations(AGENT), 0, "{version}: no violation counted");
    assert_eq!(wakes(dir.path()), 10, "{version}: one wake per task");
    drop(sidecar);
}

#[test]
#[cfg_attr(
    windows,
    ignore = "skipped on Windows: under Wine each cmd wake takes about a second, and ten do not fit the failsafe on a loaded machine"
)]
fn a_burst_of_ten_completes_on_the_old_hub() {
    burst(HubVersion::Cbf9c20, 0);
}

#[test]
#[cfg_attr(
    windows,
    ignore = "skipped on Windows: under Wine each cmd wake takes about a second, and ten do not fit the failsafe on a loaded machine"
)]
fn a_burst_of_ten_completes_on_the_newest_hub() {
    burst(HubVersion::V4718a58, 0);
}

#[test]
#[cfg_attr(
    windows,
    ignore = "skipped on Windows: under Wine each cmd wake takes about a second, and ten do not fit the failsafe on a loaded machine"
)]
fn a_burst_of_ten_with_the_second_push_race_completes_on_the_old_hub() {
    burst(HubVersion::Cbf9c20, 2);
}

#[test]
fn a_burst_of_ten_with_the_second_push_race_completes_on_the_newest_hub_without_a_violation() {
    burst(HubVersion::V4718a58, 2);
}

#[test]
fn the_old_hub_closes_with_1011_on_task_failed_and_pushes_the_task_again() {
    let failure = json!({"status": "failure", "reason": "cannot"});
    let (hub, dir, cfg) = setup(HubVersion::Cbf9c20, |_| {}, |dir| agent(dir, Some(&failure)));
    let _sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let task_id = hub.push_task(AGENT, "fails", json!({}));
    let failed = expect_received(&hub, "task_failed");
    assert_eq!(
        (failed["task_id"].as_str(), failed["generation"].as_u64()),
        (Some(task_id.as_str()), Some(1))
    );
    expect_event(&hub, "the 1011 close", |e| matches!(e, DevHubEvent::ClosedByHub { code: 1011, .. }));
    // The failure was not recorded; the task comes back two generations up.
    expect_identified(&hub);
    let again = expect_sent(&hub, "task_assign");
    assert_eq!((again["task_id"].as_str(), again["generation"].as_u64()), (Some(task_id.as_str()), Some(3)));
    assert!(hub.task(&task_id).unwrap().outcomes.is_empty());
    expect_received(&hub, "task_accepted");
}

#[test]
fn the_newest_hubs_warning_makes_the_report_wait_for_a_token_instead_of_being_denied() {
    let (hub, dir, cfg) = setup(
        HubVersion::V4718a58,
        // One normal token: task_accepted takes it, with a warning that
        // none is left of 1; the report waits the second the next one takes.
        |options| options.limits.normal = Bucket { capacity: 1, refill_every: Duration::from_secs(1) },
        |dir| agent(dir, Some(&success())),
    );
    let _sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let task_id = hub.push_task(AGENT, "limited", json!({}));
    let warning = expect_sent(&hub, "rate_limit_warning");
    assert_eq!((warning["remaining"].as_u64(), warning["capacity"].as_u64()), (Some(0), Some(1)));
    let mut denied = 0;
    hub.wait_for(FAILSAFE, |event| match event {
        DevHubEvent::Sent { frame, .. } if frame["type"] == "rate_limited" => {
            denied += 1;
            false
        }
        DevHubEvent::Received { frame, .. } => frame["type"] == "task_complete",
        _ => false,
    })
    .expect("the report reaches the hub");
    assert_eq!(denied, 0, "the hub had to deny a frame");
    wait_all_completed(&hub, &[task_id]);
    assert_eq!(hub.violations(AGENT), 0);
}

#[test]
fn every_denied_frame_is_resent_in_order() {
    let (hub, dir, mut cfg) = setup(HubVersion::V4718a58, |_| {}, |dir| agent(dir, Some(&success())));
    cfg["hub_features"] = json!(["wake_result"]);
    for frame_type in ["task_accepted", "wake_result", "task_complete"] {
        hub.rate_limit_next(frame_type, 300);
    }
    let _sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let task_id = hub.push_task(AGENT, "three denials", json!({}));
    wait_all_completed(&hub, std::slice::from_ref(&task_id));
    assert!(hub.task(&task_id).unwrap().accepted, "task_accepted was resent");
    assert_eq!(hub.agent(AGENT).map(|agent| agent.state), Some(AgentState::Idle));
}

#[test]
fn a_long_failure_reason_is_cut_and_settled_on_the_newest_hub() {
    let failure = json!({"status": "failure", "reason": "x".repeat(3000)});
    let (hub, dir, cfg) = setup(HubVersion::V4718a58, |_| {}, |dir| agent(dir, Some(&failure)));
    let _sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let task_id = hub.push_task(AGENT, "long failure", json!({}));
    expect_event(
        &hub,
        "the failure settled",
        |e| matches!(e, DevHubEvent::Sent { frame, .. } if frame["type"] == "task_ack" && frame["status"] == "retried"),
    );
    let outcome = &hub.task(&task_id).unwrap().outcomes[0];
    assert!(outcome.reason.as_ref().is_some_and(|reason| reason.chars().count() <= 2000));
    assert_eq!(hub.violations(AGENT), 0);
}

#[test]
fn a_busy_sidecar_is_never_banned_by_the_newest_hub() {
    let (hub, dir, cfg) = setup(HubVersion::V4718a58, |_| {}, |dir| agent(dir, None));
    let sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let first = hub.push_task(AGENT, "first", json!({}));
    wait_until("the agent to confirm", || {
        sidecar.results_dir().join(format!("{first}.started")).exists().then_some(())
    });
    // Forget what was seen so far: the barrier below must be a new answer.
    hub.events().try_iter().for_each(drop);
    for i in 0..12 {
        hub.push_task_now(AGENT, &format!("task-00000000000000{i:02x}"), "while busy", json!({}));
    }
    // A barrier: the first task again at its generation is answered
    // task_accepted, after whatever the sidecar said to the twelve pushes.
    let generation = hub.task(&first).unwrap().generation;
    let again = json!({"type": "task_assign", "task_id": first, "description": "first", "metadata": {},
                       "generation": generation});
    assert!(hub.send_raw(AGENT, again));
    let (mut refused, mut closes) = (Vec::new(), Vec::new());
    expect_event(&hub, "the barrier's task_accepted", |event| match event {
        DevHubEvent::Received { frame, .. } if frame["type"] == "task_rejected" => {
            refused.push(frame.clone());
            false
        }
        DevHubEvent::ClosedByHub { code, reason, .. } => {
            closes.push(format!("{code} {reason}"));
            false
        }
        DevHubEvent::Received { frame, .. } => {
            frame["type"] == "task_accepted" && frame["task_id"] == first.as_str()
        }
        _ => false,
    });
    assert_eq!(refused, Vec::<Value>::new(), "task_rejected is not in the newest hub's schema");
    assert_eq!(closes, Vec::<String>::new());
    assert_eq!(hub.violations(AGENT), 0);
    assert_eq!(wakes(dir.path()), 1, "never woken for a second push");
    write_result(&sidecar, &first, &success());
    wait_all_completed(&hub, std::slice::from_ref(&first));
}

#[test]
fn a_1008_cooldown_is_waited_out_and_the_sidecar_comes_back() {
    let (hub, dir, cfg) = setup(
        HubVersion::V4718a58,
        |options| options.limits.cooldowns = [Duration::from_millis(1500); 3],
        |dir| agent(dir, None),
    );
    let _sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    hub.close_for_violations(AGENT);
    // An identify within the cooldown is closed with "cooldown active: retry
    // in 2s"; a sidecar that waits that long is refused at most once (one
    // that kept its 100-400 ms backoff would be refused about four times).
    let mut refusals = Vec::new();
    expect_event(&hub, "identified after the cooldown", |event| match event {
        DevHubEvent::ClosedByHub { code: 1008, reason, .. } if reason.starts_with("cooldown active") => {
            refusals.push(reason.clone());
            false
        }
        DevHubEvent::Identified { .. } => true,
        _ => false,
    });
    assert!(refusals.len() <= 1, "the sidecar did not wait out the cooldown: {refusals:?}");
    assert_eq!(hub.violation_closes(AGENT), 1);
    assert_eq!(hub.violations(AGENT), 0, "the sidecar itself sent nothing refused");
}

#[test]
#[cfg_attr(
    windows,
    ignore = "skipped on Windows: under Wine the hub misses the killed sidecar's socket close about one run in three (not understood yet)"
)]
fn a_sidecar_crash_while_the_agent_works_wakes_it_once() {
    for version in HubVersion::ALL {
        // As issue 9 saw it: task_recovering is answered task_reassign, then
        // the task is pushed again.
        let (hub, dir, cfg) = setup(version, |options| options.late_join_push = true, |dir| agent(dir, None));
        let mut sidecar = Sidecar::start(dir.path(), &cfg);
        expect_identified(&hub);
        let task_id = hub.push_task(AGENT, "long work", json!({}));
        wait_until("the agent to confirm", || {
            sidecar.results_dir().join(format!("{task_id}.started")).exists().then_some(())
        });
        sidecar.kill9();
        // Both hubs take the task back at once and, after the restart's
        // identify, push it again two generations higher.
        expect_event(&hub, "the take-back", |e| matches!(e, DevHubEvent::TaskTakenBack { .. }));
        let sidecar = Sidecar::start(dir.path(), &cfg);
        expect_identified(&hub);
        assert_eq!(expect_sent(&hub, "task_reassign")["task_id"], task_id.as_str());
        let again = expect_sent(&hub, "task_assign");
        assert_eq!(
            (again["task_id"].as_str(), again["generation"].as_u64()),
            (Some(task_id.as_str()), Some(3))
        );
        write_result(&sidecar, &task_id, &success());
        wait_all_completed(&hub, std::slice::from_ref(&task_id));
        assert_eq!(hub.task(&task_id).unwrap().outcomes[0].generation, 3, "{version}");
        assert_eq!(wakes(dir.path()), 1, "{version}: the agent was woken once");
    }
}

#[test]
fn a_stale_state_report_ack_does_not_drop_the_readopted_task() {
    let (hub, dir, mut cfg) = setup(HubVersion::V4718a58, |_| {}, |dir| agent(dir, None));
    cfg["hub_features"] = json!(["state_report"]);
    let sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let task_id = hub.push_task(AGENT, "d", json!({}));
    wait_until("the agent to confirm", || {
        sidecar.results_dir().join(format!("{task_id}.started")).exists().then_some(())
    });
    hub.drop_connection(AGENT);
    expect_identified(&hub);
    // The re-push (generation 3) goes out right after identified; the
    // sidecar's state_report names generation 1 and is answered abort.
    assert_eq!(expect_sent(&hub, "task_assign")["generation"], 3);
    assert_eq!(expect_sent(&hub, "state_report_ack")["action"], "abort");
    write_result(&sidecar, &task_id, &success());
    wait_all_completed(&hub, std::slice::from_ref(&task_id));
    assert_eq!(hub.task(&task_id).unwrap().outcomes[0].generation, 3);
}

#[test]
fn after_task_continue_the_hub_sees_the_agent_working() {
    for version in HubVersion::ALL {
        let (hub, dir, cfg) = setup(version, |_| {}, |dir| agent(dir, None));
        let task_id = "task-1f2e3d4c5b6a7980";
        fs::write(
            dir.path().join("queue.json"),
            json!({"active": {"task_id": task_id, "description": "d", "metadata": {}, "status": "working",
                              "assigned_at": 1707500000000u64, "generation": 4, "wake_attempts": 1},
                   "recovering": null})
            .to_string(),
        )
        .unwrap();
        // The hub still holds the task for this agent: its new state machine
        // starts assigned with it, with an acceptance window.
        hub.seed_task(task_id, 4, AGENT);
        let _sidecar = Sidecar::start(dir.path(), &cfg);
        expect_received(&hub, "task_recovering");
        assert_eq!(expect_sent(&hub, "task_continue")["generation"], 4);
        wait_until("the hub's agent working", || {
            hub.agent(AGENT).filter(|agent| agent.state == AgentState::Working)
        });
    }
}

#[test]
fn every_task_assign_field_reaches_the_agent() {
    let (hub, dir, cfg) = setup(
        HubVersion::V4718a58,
        |_| {},
        |dir| {
            let copy = if cfg!(windows) {
                "copy /y \"!AGENTCOM_TASK_FILE!\" \"{}\" >nul&"
            } else {
                "cp \"$AGENTCOM_TASK_FILE\" {};"
            };
            format!(
                "{} {}",
                copy.replace("{}", &dir.join("task-file").display().to_string()),
                agent(dir, None)
            )
        },
    );
    let _sidecar = Sidecar::start(dir.path(), &cfg);
    expect_identified(&hub);
    let extra =
        json!({"repo": "git@example:r.git", "file_hints": [{"path": "src/a.rs"}], "future_field": {"x": 1}});
    hub.push_task_with(AGENT, "d", json!({}), extra);
    let task: Value = wait_until("the agent's copy of the task file", || {
        fs::read(dir.path().join("task-file")).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok())
    });
    assert_eq!(task["repo"], "git@example:r.git");
    assert_eq!(task["file_hints"], json!([{"path": "src/a.rs"}]));
    assert_eq!(task["future_field"], json!({"x": 1}));
    assert_eq!(task["skip_verification"], false);
    assert_eq!(task["max_verification_retries"], 0);
}

/// The duplicate outcome the 30 % loss test found: after a reconnect the hub
/// pushes the next task at once, while the sidecar still holds its own and
/// awaits the answer to task_recovering; the answer lets its own go. The task
/// pushed meanwhile must be taken then, not failed back ("busy" cost it a
/// retry and a second outcome on 4718a58; cbf9c20 left it for minutes).
/// Forced here without packet loss: with repush_on_identify off, the push
/// after identify is the other queued task, not the one just taken back (the
/// real hubs push the oldest of the highest priority, which may be either).
/// The held task, handed back after that, is adopted without a second wake.
#[test]
fn a_task_pushed_during_a_reconnects_recovery_completes_with_one_outcome() {
    for version in HubVersion::ALL {
        let (hub, dir, cfg) = setup(
            version,
            |options| options.repush_on_identify = false,
            |dir| {
                let wakes = dir.join("woken.txt");
                if cfg!(windows) {
                    format!(
                        "echo !AGENTCOM_TASK_ID!>>\"{}\"& type nul>\"!AGENTCOM_RESULTS_DIR!\\!AGENTCOM_TASK_ID!.started\"",
                        wakes.display()
                    )
                } else {
                    format!(
                        "echo \"$AGENTCOM_TASK_ID\" >> {}; : > \"$AGENTCOM_RESULTS_DIR/$AGENTCOM_TASK_ID.started\"",
                        wakes.display()
                    )
                }
            },
        );
        let sidecar = Sidecar::start(dir.path(), &cfg);
        expect_identified(&hub);
        let held = hub.push_task(AGENT, "held across the reconnect", json!({}));
        wait_until("the agent to confirm", || {
            sidecar.results_dir().join(format!("{held}.started")).exists().then_some(())
        });
        // Queued: the hub's agent is busy.
        let pushed = hub.push_task(AGENT, "pushed during the recovery", json!({}));
        hub.events().try_iter().for_each(drop);
        hub.drop_connection(AGENT);
        expect_identified(&hub);
        // Its push follows identified; the answer about the held task comes
        // after the sidecar's task_recovering, so after the push.
        assert_eq!(expect_sent(&hub, "task_assign")["task_id"], pushed.as_str(), "{version}");
        assert_eq!(expect_sent(&hub, "task_reassign")["task_id"], held.as_str(), "{version}");
        let mut failed = Vec::new();
        expect_event(&hub, "the pushed task taken", |event| match event {
            DevHubEvent::Received { frame, .. } if frame["type"] == "task_failed" => {
                failed.push(frame.clone());
                false
            }
            DevHubEvent::Received { frame, .. } => {
                frame["type"] == "task_accepted" && frame["task_id"] == pushed.as_str()
            }
            _ => false,
        });
        assert_eq!(failed, Vec::<Value>::new(), "{version}: nothing failed back");
        wait_until("the agent to confirm the pushed task", || {
            sidecar.results_dir().join(format!("{pushed}.started")).exists().then_some(())
        });
        write_result(&sidecar, &pushed, &success());
        wait_all_completed(&hub, std::slice::from_ref(&pushed));
        let outcomes = hub.task(&pushed).unwrap().outcomes;
        assert_eq!(outcomes.len(), 1, "{version}: {outcomes:?}");
        assert_eq!(outcomes[0].generation, 1, "{version}: at the generation it was pushed with");
        let woken = fs::read_to_string(dir.path().join("woken.txt")).unwrap_or_default();
        assert_eq!(woken.lines().filter(|line| *line == pushed).count(), 1, "{version}: {woken}");
        // The held task, taken back, comes back to the idle sidecar: nothing
        // lost, and adopted without a second wake (its agent had confirmed),
        // although another task was let go of since.
        assert_eq!(expect_sent(&hub, "task_assign")["task_id"], held.as_str(), "{version}");
        expect_event(&hub, "the held task taken again", |event| {
            matches!(event, DevHubEvent::Received { frame, .. }
                if frame["type"] == "task_accepted" && frame["task_id"] == held.as_str())
        });
        write_result(&sidecar, &held, &success());
        wait_all_completed(&hub, std::slice::from_ref(&held));
        assert_eq!(hub.task(&held).unwrap().outcomes.len(), 1, "{version}");
        let woken = fs::read_to_string(dir.path().join("woken.txt")).unwrap_or_default();
        assert_eq!(woken.lines().filter(|line| *line == held).count(), 1, "{version}: woken once: {woken}");
    }
}
