//! The agent as it really runs (`recovery.rs`, `waking.rs`): confirmed work is never
//! started again, run mode, and a run-mode agent an earlier run left.

use super::*;
use crate::state::WakeProcess;
use crate::state::{WakeIdentity, WakeMode};

fn run_settings() -> Settings {
    Settings { wake_mode: WakeMode::Run, ..settings() }
}

fn process(mode: WakeMode, exit_code: Option<i32>) -> WakeProcess {
    WakeProcess {
        task_id: TASK.into(),
        attempt: 1,
        identity: WakeIdentity { pid: 4242, process_group: Some(4242), start_time: Some(7) },
        mode,
        exit_code,
    }
}

#[test]
fn a_wake_command_that_confirmed_then_fails_fails_the_task_once_without_a_retry() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    transcript(
        &mut h,
        vec![
            (Step::WakeStarted(1), &["persist active waking gen=3", "release wake 1"]),
            (Step::Files(true, ReadResult::Missing), &["record confirmed", "persist active working gen=3"]),
            // The executor's wake timeout no longer applies; it ends on its
            // own. Never started again: its result file decides first.
            (at(100, Step::WakeDone(1, WakeStatus::Failed { exit_code: Some(4) })), &["record wake_finished", "read files", "persist active working gen=3"]),
            (Step::Files(true, ReadResult::Missing), &["record task_failed_here", "persist active working gen=3 report=failed(agent_failed: the agent exited with status 4 after confirming the task; last line of stderr: boom)", "record report_sent", "send task_failed"]),
        ],
    );
    let reason = h.sent()[0]["reason"].as_str().unwrap().to_owned();
    assert!(reason.starts_with("agent_failed: the agent exited with status 4"), "{reason}");
    assert!(reason.ends_with("last line of stderr: boom"), "{reason}");
    // Any later tick or retry deadline starts nothing.
    transcript(&mut h, vec![(Step::Tick(60_000), &["send ping", "close", "record disconnected"])]);
}

#[test]
fn a_confirmed_wake_command_killed_at_the_timeout_is_not_retried_and_its_result_wins() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    transcript(
        &mut h,
        vec![
            (Step::Files(true, ReadResult::Missing), &["record confirmed", "persist active working gen=3"]),
            (Step::WakeDone(1, WakeStatus::TimedOut), &["record wake_finished", "read files"]),
            (
                Step::Files(true, success()),
                &[
                    "record result_received",
                    "persist active working gen=3 report=complete",
                    "record report_sent",
                    "send task_complete",
                ],
            ),
        ],
    );
}

#[test]
fn a_wake_command_that_confirmed_and_exits_0_leaves_the_task_working() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    transcript(
        &mut h,
        vec![
            (Step::Files(true, ReadResult::Missing), &["record confirmed", "persist active working gen=3"]),
            (Step::WakeDone(1, WakeStatus::Success), &["record wake_finished", "read files"]),
            (Step::Files(true, ReadResult::Missing), &[]),
        ],
    );
    assert_eq!(h.state.queue_file().active.unwrap().status.as_str(), "working");
}

#[test]
fn run_mode_the_start_is_the_confirmation_and_the_end_reads_the_result() {
    let mut h = Harness::with(run_settings(), QueueFile::default());
    h.identify();
    h.assign(TASK, 3);
    let result = ReadResult::Parsed(json!({"status":"failed","error":"agent_failed: exit status 2"}));
    transcript(
        &mut h,
        vec![
            // Recorded as working before it runs.
            (Step::WakeStarted(1), &["record confirmed", "persist active working gen=3", "release wake 1"]),
            // No confirmation timeout: it works for as long as it needs.
            (Step::Tick(600_000), &["send ping"]),
            (
                Step::WakeDone(1, WakeStatus::Failed { exit_code: Some(2) }),
                &["record wake_finished", "read files", "persist active working gen=3"],
            ),
            // The executor wrote the result file from the run.
            (
                Step::Files(true, result),
                &[
                    "record task_failed_here",
                    "persist active working gen=3 report=failed(agent_failed: exit status 2)",
                    "record report_sent",
                    "send task_failed",
                ],
            ),
        ],
    );
    assert_eq!(h.sent()[0]["reason"], "agent_failed: exit status 2");
}

#[test]
fn run_mode_a_task_timeout_stops_the_agent_and_marks_the_cancel() {
    let settings = Settings { task_timeout: Some(ms(5_000)), ..run_settings() };
    let mut h = Harness::with(settings, QueueFile::default());
    h.identify();
    h.assign(TASK, 3);
    transcript(
        &mut h,
        vec![
            (Step::WakeStarted(1), &["record confirmed", "persist active working gen=3", "release wake 1"]),
            // The cancel marker before the agent is stopped.
            (
                Step::Tick(5_000),
                &[
                    "mark cancelled (task_timeout)",
                    "cancel wake",
                    "record task_failed_here",
                    "persist active working gen=3 report=failed(task_timeout)",
                    "record report_sent",
                    "send task_failed",
                ],
            ),
        ],
    );
    assert_eq!(h.sent()[0]["reason"], "task_timeout");
    // The ended agent's outcome changes nothing.
    transcript(
        &mut h,
        vec![(
            Step::WakeDone(1, WakeStatus::Cancelled),
            &["record wake_finished", "persist active working gen=3 report=failed(task_timeout)"],
        )],
    );
}

#[test]
fn run_mode_a_task_taken_back_keeps_its_agent_running() {
    let mut h = Harness::with(run_settings(), QueueFile::default());
    h.identify();
    h.assign(TASK, 3);
    transcript(
        &mut h,
        vec![
            (Step::WakeStarted(1), &["record confirmed", "persist active working gen=3", "release wake 1"]),
            // No cancel.
            (
                Step::Frame(json!({"type":"task_reassign","task_id":TASK})),
                &["persist idle past=taken_back", "record task_dropped"],
            ),
        ],
    );
}

#[test]
fn a_launcher_recorded_as_exited_0_is_waited_for_not_woken_again() {
    let mut queue = node_queue("waking");
    queue.wake_process = Some(process(WakeMode::Launch, Some(0)));
    let mut h = Harness::with(settings(), queue);
    h.input(Input::Listing(Ok(vec![])));
    h.identify();
    transcript(
        &mut h,
        vec![
            (
                resume(3),
                &[
                    "record task_continued",
                    "persist active waking_confirmation gen=3",
                    "send task_accepted",
                    "read files",
                ],
            ),
            // Its agent confirms: working. Had it not, confirmation_timeout
            // fails it.
            (Step::Files(true, ReadResult::Missing), &["record confirmed", "persist active working gen=3"]),
        ],
    );
}

#[test]
fn a_launcher_recorded_as_failed_is_woken_again() {
    let mut queue = node_queue("waking");
    queue.wake_process = Some(process(WakeMode::Launch, Some(1)));
    let mut h = Harness::with(settings(), queue);
    h.input(Input::Listing(Ok(vec![])));
    h.identify();
    transcript(
        &mut h,
        vec![(
            resume(3),
            &[
                "record task_continued",
                "persist active waking gen=3",
                "send task_accepted",
                "record wake_attempt",
                "persist active waking gen=3",
                "start wake 1",
                "read files",
            ],
        )],
    );
}

#[test]
fn a_run_mode_agent_left_running_is_watched_then_its_result_reported() {
    let mut queue = node_queue("working");
    queue.wake_process = Some(process(WakeMode::Run, None));
    let mut h = Harness::with_running_agent(run_settings(), queue);
    // Still recorded: a crash now finds it again.
    assert!(h.persisted().unwrap().wake_process.is_some());
    h.input(Input::Listing(Ok(vec![])));
    h.identify();
    transcript(
        &mut h,
        vec![
            (
                resume(3),
                &[
                    "record task_continued",
                    "persist active working gen=3",
                    "send task_accepted",
                    "read files",
                ],
            ),
            // Checked every results_poll; no silence timer while it runs.
            (Step::Tick(1_000), &["check agent"]),
            (Step::Tick(2_000), &["check agent"]),
            (Step::Tick(30_000), &["check agent"]),
            (
                Step::Input(Input::AgentEnded { task_id: TASK.into() }),
                &["persist active working gen=3", "read files"],
            ),
            (
                Step::Files(true, success()),
                &[
                    "record confirmed",
                    "record result_received",
                    "persist active working gen=3 report=complete",
                    "record report_sent",
                    "send task_complete",
                ],
            ),
        ],
    );
    assert_eq!(h.state.queue_file().wake_process, None);
}

#[test]
fn a_run_mode_agent_left_running_is_ended_when_the_hub_cancels() {
    let mut queue = node_queue("working");
    queue.wake_process = Some(process(WakeMode::Run, None));
    let mut h = Harness::with_running_agent(run_settings(), queue);
    h.input(Input::Listing(Ok(vec![])));
    h.identify();
    h.frame(json!({"type":"task_continue","task_id":TASK,"generation":3}));
    transcript(
        &mut h,
        vec![(
            Step::Frame(json!({"type":"task_cancelled","task_id":TASK})),
            &[
                "mark cancelled (task_cancelled)",
                "end agent",
                "persist idle past=settled",
                "record task_dropped",
            ],
        )],
    );
    assert_eq!(h.state.queue_file().wake_process, None);
}
