//! The pure state machine under arbitrary sequences of inputs at arbitrary
//! (monotonic) times: hub frames (valid, odd and garbage), connection events,
//! wake outcomes, results files, listings, failed persists, shutdown.
//!
//! After every step:
//! - no panic;
//! - a deadline is never left in the past of the input just handled: the
//!   ticks the shell then makes at once clear it (else the shell would spin);
//! - a report (`task_complete` / `task_failed`) never names a generation older
//!   than one the hub has given for the task while the state held it (a
//!   fenced generation);
//! - a wake starts only for the task held after the batch, and never while
//!   the previous attempt has not reported (never two wake commands at once);
//! - queue.json never records two tasks;
//! - a wake command is released only after a write of queue.json that
//!   records it;
//! - confirmed work is never started again: once the held task is working
//!   (its agent confirmed; in run mode, its command was released), no wake
//!   starts for it while it is held.
#![no_main]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use agentcom_sidecar::config::Secret;
use agentcom_sidecar::event::Event;
use agentcom_sidecar::hub::HubEvent;
use agentcom_sidecar::queue_store::WakeProcess;
use agentcom_sidecar::queue_store::{self, QueueFile};
use agentcom_sidecar::retry::{BackoffPolicy, JitterStrategy};
use agentcom_sidecar::state::{Effect, Input, LinkSettings, RateLimits, Settings, State, TaskFiles};
use agentcom_sidecar::wake::{WakeIdentity, WakeMode, WakeOutcome, WakeStarted, WakeStatus};
use agentcom_sidecar::watcher::{FileKind, ReadResult, ResultsEvent};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

/// Reads the fuzzer's bytes as choices; zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((first, rest)) => {
                self.0 = rest;
                *first
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) << 8 | u16::from(self.u8())
    }
    fn pick<'t, T>(&mut self, items: &'t [T]) -> &'t T {
        &items[usize::from(self.u8()) % items.len()]
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

const TASKS: [&str; 3] = ["task-a", "task-b", "task-0123456789abcdef"];

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn settings(b: &mut Bytes<'_>) -> Settings {
    // The bytes are read in this order whatever the struct's layout, so a
    // corpus input keeps choosing the same settings.
    let has_wake_command = b.u8() % 4 != 0;
    let wake_mode = *b.pick(&[WakeMode::Launch, WakeMode::Run]);
    let agent_check_interval = ms(1 + u64::from(b.u8()));
    let cancel_grace = ms(u64::from(b.u8()) * 20);
    let has_update_command = b.u8() % 2 == 0;
    let heartbeat_interval = ms(1 + u64::from(b.u8()) * 20);
    let pong_timeout = ms(1 + u64::from(b.u8()) * 10);
    let identify_timeout = ms(1 + u64::from(b.u8()) * 10);
    let backoff = BackoffPolicy {
        initial: ms(1 + u64::from(b.u8())),
        max: ms(1 + u64::from(b.u16())),
        jitter: *b.pick(&[JitterStrategy::Equal, JitterStrategy::Full, JitterStrategy::Decorrelated]),
    };
    let confirmation_timeout = ms(u64::from(b.u8()) * 10);
    let wake_retry_delays = (0..b.u8() % 4).map(|_| ms(u64::from(b.u8()))).collect();
    let task_timeout = (b.u8() % 2 == 0).then(|| ms(u64::from(b.u16())));
    let result_settle = ms(u64::from(b.u8()) * 5);
    let progress_interval = ms(u64::from(b.u8()) * 5);
    let reply_timeout = ms(1 + u64::from(b.u8()) * 20);
    let readopt_window = ms(u64::from(b.u16()));
    let adopted_silence = ms(u64::from(b.u8()) * 20);
    let keepalive_interval = (b.u8() % 2 == 0).then(|| ms(1 + u64::from(b.u8()) * 20));
    let send_wake_result = b.u8() % 2 == 0;
    let send_state_report = b.u8() % 2 == 0;
    let rescan_every = (b.u8() % 3 == 0).then(|| ms(1 + u64::from(b.u8())));
    // A small budget, so that frames wait for tokens and denials meet
    // frames still waiting.
    let rate_limits = RateLimits {
        light: 1 + u32::from(b.u8() % 8),
        normal: 1 + u32::from(b.u8() % 8),
        heavy: 1,
        window: ms(100 + u64::from(b.u8()) * 10),
    };
    Settings {
        agent_id: "fuzz-agent".into(),
        name: "fuzz-agent".into(),
        token: Secret::new("fuzz-token"),
        capabilities: vec![],
        has_wake_command,
        wake_mode,
        cancel_grace,
        has_update_command,
        link: LinkSettings {
            heartbeat_interval,
            pong_timeout,
            connect_timeout: identify_timeout,
            backoff,
            reply_timeout,
            rate_limits,
        },
        confirmation_timeout,
        wake_retry_delays,
        task_timeout,
        result_settle,
        progress_interval,
        readopt_window,
        adopted_silence,
        keepalive_interval,
        send_wake_result,
        send_state_report,
        results_poll: rescan_every.unwrap_or(agent_check_interval),
        rescan_results: rescan_every.is_some(),
    }
}

/// queue.json at start: empty, or one task in one of its states.
fn queue(b: &mut Bytes<'_>) -> QueueFile {
    if b.u8() % 2 == 0 {
        return QueueFile::default();
    }
    let status = *b.pick(&["accepted", "waking", "waking_confirmation", "working", "bogus"]);
    let mut record = json!({
        "task_id": *b.pick(&TASKS),
        "description": "d",
        "metadata": {},
        "status": status,
        "assigned_at": 1,
        "generation": u64::from(b.u8() % 8),
        "wake_attempts": u32::from(b.u8() % 4),
    });
    match b.u8() % 3 {
        0 => record["report"] = json!({"type": "complete", "result": {"status": "success"}}),
        1 => record["report"] = json!({"type": "failed", "reason": "r"}),
        _ => {}
    }
    let key = if b.u8() % 2 == 0 { "active" } else { "recovering" };
    let text = json!({ key: record }).to_string();
    let mut queue: QueueFile = queue_store::parse(text.as_bytes()).unwrap_or_default();
    // The wake command the last run recorded, as the shell found it.
    if b.u8() % 2 == 0 {
        queue.wake_process = Some(WakeProcess {
            task_id: b.pick(&TASKS).to_string(),
            attempt: u32::from(b.u8() % 4),
            identity: WakeIdentity { pid: 77, process_group: Some(77), start_time: Some(1) },
            mode: *b.pick(&[WakeMode::Launch, WakeMode::Run]),
            exit_code: *b.pick(&[None, Some(0), Some(1)]),
        });
    }
    queue
}

/// A frame from the hub: mostly well-formed, sometimes odd, sometimes junk.
fn frame(b: &mut Bytes<'_>) -> String {
    let task = *b.pick(&TASKS);
    let generation = json!(b.u8() % 10);
    let value = match b.u8() % 16 {
        0 => json!({"type": "identified", "agent_id": "fuzz-agent"}),
        1 => json!({"type": "pong"}),
        2 | 3 => {
            json!({"type": "task_assign", "task_id": task, "description": "d", "metadata": {}, "generation": generation, "assigned_at": 5})
        }
        4 => {
            let status = *b.pick(&["accepted", "complete", "retried", "dead_letter", "odd"]);
            json!({"type": "task_ack", "task_id": task, "status": status})
        }
        5 => json!({"type": "task_continue", "task_id": task, "generation": generation}),
        6 => json!({"type": "task_reassign", "task_id": task}),
        7 => {
            let error = *b.pick(&[
                "task_complete_failed: stale_generation",
                "task_complete_failed: not_found",
                "task_fail_failed: invalid_state",
                "unknown_message_type",
                "invalid_token",
                "not_identified",
            ]);
            json!({"type": "error", "error": error})
        }
        8 => json!({"type": "rate_limited", "retry_after_ms": u64::from(b.u16()), "tier": "normal"}),
        9 => {
            let action = *b.pick(&["continue", "abort", "odd"]);
            json!({"type": "state_report_ack", "task_id": task, "action": action})
        }
        10 => json!({"type": "task_cancelled", "task_id": task}),
        11 => {
            let message_type =
                *b.pick(&["task_complete", "task_failed", "wake_result", "state_report", "ping"]);
            json!({"type": "error", "error": "validation_failed", "message_type": message_type, "errors": []})
        }
        12 => json!({"type": "restart_sidecar", "reason": "r"}),
        13 => {
            json!({"type": "task_assign", "task_id": task, "generation": *b.pick(&[json!("7"), json!(-1), json!(1e30), Value::Null])})
        }
        14 => json!({"type": "rate_limit_warning", "tier": "normal", "remaining": 1, "capacity": 60}),
        _ => {
            let len = usize::from(b.u8() % 16);
            let raw: Vec<u8> = (0..len).map(|_| b.u8()).collect();
            return String::from_utf8_lossy(&raw).into_owned();
        }
    };
    value.to_string()
}

fn read_result(b: &mut Bytes<'_>, progress: bool) -> ReadResult {
    match b.u8() % 5 {
        0 | 1 => ReadResult::Missing,
        2 if progress => ReadResult::Parsed(json!({"progress": b.u8(), "message": "m"})),
        2 => ReadResult::Parsed(json!({"status": *b.pick(&["success", "failure", "odd"]), "reason": "r"})),
        3 => ReadResult::Unparseable { len: 3, error: "eof".into() },
        _ => ReadResult::TooLarge { len: 1 << 30 },
    }
}

/// Which task each running wake attempt belongs to, and the fences.
#[derive(Default)]
struct Model {
    /// The attempt the executor is running (started, not yet reported).
    running: Option<(String, u32)>,
    /// Per task, the highest generation the hub has given for it.
    fence: HashMap<String, u64>,
    /// The last connection the state asked for.
    conn: u64,
    /// A generation the frame being handled gives; a fence once handled.
    fence_pending: Option<(String, u64)>,
    /// The held task once it is working (confirmed): never woken again
    /// while held.
    confirmed: Option<String>,
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let t0 = Instant::now();
    let mut now = t0;
    let mut wall = 1_700_000_000_000u64;
    let mut state = State::new(settings(&mut b), queue(&mut b), u64::from(b.u8()), t0);
    if b.u8() % 2 == 0 {
        // The shell found the recorded run-mode agent still running.
        state.agent_still_running();
    }
    let mut model = Model::default();
    let fx = state.start();
    note_confirmed(&state, &mut model);
    check(&state, &mut model, &fx, "start");
    no_spin(&mut state, &mut model, now, wall, "start");
    // STATE_FUZZ_TRACE=1 prints every input and its effects (to replay a
    // finding: `cargo fuzz run state_machine <input>`).
    let trace = std::env::var_os("STATE_FUZZ_TRACE").is_some();
    let mut steps = 0;
    while !b.is_empty() && steps < 2_000 {
        steps += 1;
        // Time only moves forward; sometimes straight to the next deadline.
        match b.u8() % 4 {
            0 => {}
            1 => now += ms(u64::from(b.u8())),
            2 => now += ms(u64::from(b.u16())),
            _ => {
                if let Some(deadline) = state.next_deadline() {
                    now = now.max(deadline);
                }
            }
        }
        wall += 1;
        let held = state.held_task_id().map(str::to_owned);
        let some_task = |b: &mut Bytes<'_>| match (&held, b.u8() % 3) {
            (Some(id), 0 | 1) => id.clone(),
            _ => b.pick(&TASKS).to_string(),
        };
        let conn = if b.u8() % 8 == 0 { u64::from(b.u8() % 4) } else { model.conn };
        let input = match b.u8() % 12 {
            0 | 1 => Input::Tick,
            2 => Input::Event(Event::Hub(HubEvent::Connected { conn_id: conn })),
            3 | 4 | 5 => {
                let text = frame(&mut b);
                // The hub fences older generations of a task it (re)assigns,
                // as far as the sidecar can know: a frame from a connection
                // it no longer considers live is ignored by it, rightly.
                let live = state.live_conn_id() == Some(conn);
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    if live && matches!(v["type"].as_str(), Some("task_assign" | "task_continue")) {
                        if let (Some(id), Some(g)) = (v["task_id"].as_str(), v["generation"].as_u64()) {
                            model.fence_pending = Some((id.to_owned(), g));
                        }
                    }
                }
                Input::Event(Event::Hub(HubEvent::Frame { conn_id: conn, text }))
            }
            6 => {
                let code = *b.pick(&[None, Some(1000), Some(1002), Some(1008), Some(1011)]);
                let reason = *b.pick(&[None, Some("cooldown active: retry in 2s"), Some("x")]);
                Input::Event(Event::Hub(HubEvent::Disconnected {
                    conn_id: conn,
                    reason: "gone".into(),
                    close_code: code,
                    close_reason: reason.map(str::to_owned),
                }))
            }
            7 if model.running.is_some() && b.u8() % 3 == 0 => {
                // The running attempt's command has started (at its gate).
                let (task_id, attempt) = model.running.clone().expect("checked");
                Input::Event(Event::WakeStarted(WakeStarted {
                    task_id,
                    attempt,
                    identity: WakeIdentity { pid: 4242, process_group: Some(4242), start_time: Some(1) },
                }))
            }
            7 => {
                // The outcome of the running attempt, or a stray one.
                let (task_id, attempt) = match (&model.running, b.u8() % 4) {
                    (Some((task, attempt)), 0..=2) => (task.clone(), *attempt),
                    _ => ("task-stray".to_string(), 1),
                };
                let status = match b.u8() % 7 {
                    0 | 1 => WakeStatus::Success,
                    2 => WakeStatus::Failed { exit_code: Some(1) },
                    3 => WakeStatus::TimedOut,
                    4 => WakeStatus::SpawnFailed("no".into()),
                    5 => WakeStatus::LeftRunning,
                    _ => WakeStatus::Cancelled,
                };
                if model.running.as_ref().is_some_and(|(t, _)| *t == task_id) {
                    model.running = None;
                }
                Input::Event(Event::Wake(WakeOutcome {
                    task_id,
                    attempt,
                    status,
                    stdout_tail: String::new(),
                    stderr_tail: String::new(),
                    elapsed: ms(1),
                }))
            }
            8 => {
                let task_id = some_task(&mut b);
                Input::Files(TaskFiles {
                    task_id,
                    started: b.u8() % 2 == 0,
                    result: read_result(&mut b, false),
                    progress: read_result(&mut b, true),
                })
            }
            9 => {
                let task_id = some_task(&mut b);
                let kind = *b.pick(&[FileKind::Started, FileKind::Result, FileKind::Progress]);
                match b.u8() % 3 {
                    0 => Input::Listing(Ok(vec![(task_id, kind)])),
                    1 => Input::Listing(Err("denied".into())),
                    _ => Input::Event(Event::Results(ResultsEvent::Changed(vec![PathBuf::from(format!(
                        "/r/{task_id}.{}",
                        kind.extension()
                    ))]))),
                }
            }
            10 if b.u8() % 4 == 0 => Input::UpdateFailed { error: "no such command".into() },
            10 if b.u8() % 3 == 0 => Input::AgentEnded { task_id: some_task(&mut b) },
            10 => Input::PersistFailed { error: "disk full".into(), withheld: Vec::new() },
            _ => {
                if b.u8() % 8 == 0 {
                    Input::Event(Event::Shutdown)
                } else {
                    Input::Event(Event::Results(ResultsEvent::Rescan))
                }
            }
        };
        let what = format!("{input:?}");
        let fx = state.handle(input, now, wall);
        if trace {
            eprintln!("{what}\n  -> {fx:?}");
        }
        if let Some((id, g)) = model.fence_pending.take() {
            let fence = model.fence.entry(id).or_insert(0);
            *fence = (*fence).max(g);
        }
        check(&state, &mut model, &fx, &what);
        no_spin(&mut state, &mut model, now, wall, &what);
        // A fence is what the state was told about the task it holds; once
        // it holds something else it cannot know (a later push of the same
        // id is new work to it).
        let held = state.held_task_id().map(str::to_owned);
        model.fence.retain(|id, _| held.as_deref() == Some(id.as_str()));
        note_confirmed(&state, &mut model);
    }
});

/// The held task is confirmed once queue.json says it is working; a new
/// hold starts unconfirmed.
fn note_confirmed(state: &State, model: &mut Model) {
    let held = state.held_task_id().map(str::to_owned);
    if model.confirmed != held {
        model.confirmed = None;
    }
    let queue = state.queue_file();
    let record = queue.active.as_ref().or(queue.recovering.as_ref());
    if record.is_some_and(|r| {
        Some(&r.task_id) == held.as_ref() && r.status.as_str() == "working" && r.report.is_none()
    }) {
        model.confirmed = held;
    }
}

fn check(state: &State, model: &mut Model, fx: &[Effect], input: &str) {
    // The wake command the last queue.json write of this batch records.
    let mut recorded = None;
    for effect in fx {
        match effect {
            Effect::ReleaseWake { task_id, attempt } => {
                assert_eq!(
                    recorded,
                    Some((task_id.as_str(), *attempt)),
                    "wake command released before queue.json records it, after {input}"
                );
            }
            Effect::Connect { conn_id } => model.conn = *conn_id,
            Effect::Send { frame, .. } => {
                let text = frame.to_text();
                let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                    panic!("the sidecar sent invalid JSON {text:?} after {input}");
                };
                if matches!(frame["type"].as_str(), Some("task_complete" | "task_failed")) {
                    let task = frame["task_id"].as_str().unwrap_or_default();
                    let generation = frame["generation"].as_u64();
                    let fence = model.fence.get(task).copied().unwrap_or(0);
                    assert!(
                        generation.is_some_and(|g| g >= fence),
                        "report {frame} for a fenced generation (the hub has given {fence}) after {input}"
                    );
                }
            }
            Effect::StartWake(start) => {
                assert_ne!(
                    model.confirmed.as_deref(),
                    Some(start.task_id.as_str()),
                    "confirmed work started again, after {input}"
                );
                assert!(
                    model.running.is_none(),
                    "wake for {} started while attempt {:?} runs, after {input}",
                    start.task_id,
                    model.running
                );
                assert_eq!(
                    state.held_task_id(),
                    Some(start.task_id.as_str()),
                    "wake for a task not held, after {input}"
                );
                model.running = Some((start.task_id.clone(), start.attempt));
            }
            Effect::Persist(queue) => {
                recorded = queue.wake_process.as_ref().map(|p| (p.task_id.as_str(), p.attempt));
                assert!(
                    queue.active.is_none() || queue.recovering.is_none(),
                    "queue.json with two tasks after {input}"
                );
            }
            _ => {}
        }
    }
}

/// A deadline at or before `now` makes the shell tick again at once: fine if
/// those ticks clear it, a busy loop if they do not.
fn no_spin(state: &mut State, model: &mut Model, now: Instant, wall: u64, input: &str) {
    let mut last = Vec::new();
    for _ in 0..SPIN_TICKS {
        match state.next_deadline() {
            Some(deadline) if deadline <= now => {
                last = state.handle(Input::Tick, now, wall);
                check(state, model, &last, "Tick");
            }
            _ => return,
        }
    }
    let late = state.next_deadline().map(|deadline| now - deadline);
    panic!(
        "a deadline ({late:?} before now) still due after {SPIN_TICKS} ticks at the same time (a busy loop), \
         after {input}; the last tick did {last:?}; state {state:?}"
    );
}

/// Ticks at one instant that may still leave a deadline due.
const SPIN_TICKS: usize = 8;
