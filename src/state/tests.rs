//! Unit tests of the pure core: inputs and injected times in, effects out.

use super::*;
use crate::wake::{WakeOutcome, WakeStatus};

const TASK: &str = "task-0123456789abcdef";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn settings() -> Settings {
    Settings {
        agent_id: "a1".into(),
        name: "a1".into(),
        token: Secret::new("s3cret-token"),
        capabilities: vec!["code".into()],
        has_wake_command: true,
        // Long, so pings stay out of the tests that are not about them.
        heartbeat_interval: ms(60_000),
        pong_timeout: ms(500),
        identify_timeout: ms(2_000),
        backoff: BackoffPolicy { initial: ms(100), max: ms(1_600) },
        confirmation_timeout: ms(1_000),
        wake_retry_delays: vec![ms(100), ms(200), ms(300)],
        task_timeout: None,
        result_settle: ms(400),
        progress_interval: ms(1_000),
        send_wake_result: false,
        send_state_report: false,
        results_poll: None,
    }
}

/// Drives a `State` with times relative to `t0`, keeping the last batch of
/// effects.
struct Harness {
    state: State,
    t0: Instant,
    now: Instant,
    fx: Vec<Effect>,
    conn: u64,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(settings(), QueueFile::default())
    }

    fn with(settings: Settings, queue: QueueFile) -> Harness {
        let t0 = Instant::now();
        let mut state = State::new(settings, queue, 7, t0);
        let fx = state.start();
        let conn = connect_id(&fx).expect("start connects");
        Harness { state, t0, now: t0, fx, conn }
    }

    fn at(&mut self, ms_since_start: u64) -> &mut Harness {
        self.now = self.t0 + ms(ms_since_start);
        self
    }

    fn input(&mut self, input: Input) -> &[Effect] {
        self.fx = self.state.handle(input, self.now, 1_700_000_000_000);
        if let Some(conn) = connect_id(&self.fx) {
            self.conn = conn;
        }
        &self.fx
    }

    fn tick(&mut self, at_ms: u64) -> &[Effect] {
        self.at(at_ms);
        self.input(Input::Tick)
    }

    fn frame(&mut self, frame: Value) -> &[Effect] {
        let conn_id = self.conn;
        self.input(Input::Event(Event::Hub(HubEvent::Frame { conn_id, text: frame.to_string() })))
    }

    fn connected(&mut self) -> &[Effect] {
        let conn_id = self.conn;
        self.input(Input::Event(Event::Hub(HubEvent::Connected { conn_id })))
    }

    fn disconnect(&mut self, close_code: Option<u16>, close_reason: Option<&str>) -> &[Effect] {
        let conn_id = self.conn;
        self.input(Input::Event(Event::Hub(HubEvent::Disconnected {
            conn_id,
            reason: "connection reset".into(),
            close_code,
            close_reason: close_reason.map(str::to_owned),
        })))
    }

    fn identify(&mut self) {
        self.connected();
        assert_eq!(self.sent_types(), ["identify"]);
        self.frame(json!({"type":"identified","agent_id":"a1"}));
    }

    fn sent(&self) -> Vec<Value> {
        self.fx
            .iter()
            .filter_map(|e| match e {
                Effect::Send { text, .. } => Some(serde_json::from_str(text).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn sent_types(&self) -> Vec<String> {
        self.sent().iter().map(|f| f["type"].as_str().unwrap().to_owned()).collect()
    }

    fn has(&self, pred: impl Fn(&Effect) -> bool) -> bool {
        self.fx.iter().any(pred)
    }

    fn wake_starts(&self) -> Vec<u32> {
        self.fx
            .iter()
            .filter_map(|e| match e {
                Effect::StartWake(w) => Some(w.attempt),
                _ => None,
            })
            .collect()
    }

    fn persisted(&self) -> Option<QueueFile> {
        self.fx.iter().rev().find_map(|e| match e {
            Effect::Persist(q) => Some((**q).clone()),
            _ => None,
        })
    }

    fn assign(&mut self, task_id: &str, generation: u64) -> &[Effect] {
        self.frame(json!({"type":"task_assign","task_id":task_id,"description":"do it",
                          "metadata":{"k":1},"generation":generation,"assigned_at":5}))
    }

    fn wake_done(&mut self, attempt: u32, status: WakeStatus) -> &[Effect] {
        self.input(Input::Event(Event::Wake(WakeOutcome {
            task_id: TASK.into(),
            attempt,
            status,
            stdout_tail: String::new(),
            stderr_tail: "boom".into(),
            elapsed: ms(3),
        })))
    }

    fn files(&mut self, started: bool, result: ReadResult) -> &[Effect] {
        self.input(Input::Files(TaskFiles {
            task_id: TASK.into(),
            started,
            result,
            progress: ReadResult::Missing,
        }))
    }

    /// Identified, task accepted, woken, confirmed: the agent is working.
    fn working(&mut self, generation: u64) {
        self.identify();
        self.assign(TASK, generation);
        self.wake_done(1, WakeStatus::Success);
        self.files(true, ReadResult::Missing);
    }

    fn deadline_ms(&self) -> Option<u64> {
        // Rounded up, so that ticking at the result is never early.
        self.state.next_deadline().map(|d| d.duration_since(self.t0).as_micros().div_ceil(1_000) as u64)
    }
}

fn connect_id(fx: &[Effect]) -> Option<u64> {
    fx.iter().find_map(|e| match e {
        Effect::Connect { conn_id } => Some(*conn_id),
        _ => None,
    })
}

fn success() -> ReadResult {
    ReadResult::Parsed(json!({"status":"success","output":"done"}))
}

// ----- connection ----------------------------------------------------------

#[test]
fn identify_carries_exactly_the_protocol_fields() {
    let mut h = Harness::new();
    h.connected();
    let identify = &h.sent()[0];
    assert_eq!(
        identify,
        &json!({"type":"identify","agent_id":"a1","token":"s3cret-token","name":"a1","status":"idle",
                "capabilities":["code"],"client_type":"sidecar","protocol_version":1})
    );
}

#[test]
fn reconnect_backoff_doubles_is_capped_and_resets_once_identified() {
    let mut h = Harness::new();
    let mut now = 0;
    // (step) for attempts 0..: 100, 200, 400, 800, 1600, 1600
    for step in [100u64, 200, 400, 800, 1_600, 1_600] {
        h.at(now);
        h.disconnect(None, None);
        let due = h.deadline_ms().unwrap() - now;
        assert!(due >= step / 2 && due <= step, "delay {due} outside [{}, {step}]", step / 2);
        // Nothing happens before the deadline...
        h.tick(now + due - 1);
        assert!(connect_id(&h.fx).is_none());
        // ...and a new connection starts at it.
        now += due;
        h.tick(now);
        assert!(connect_id(&h.fx).is_some(), "reconnects at the deadline");
    }
    h.identify();
    h.disconnect(None, None);
    assert!(h.deadline_ms().unwrap() - now <= 100, "backoff is reset by identified");
}

#[test]
fn stale_connection_events_are_ignored() {
    let mut h = Harness::new();
    let old = h.conn;
    h.disconnect(None, None);
    h.tick(1_000);
    assert_ne!(h.conn, old);
    h.input(Input::Event(Event::Hub(HubEvent::Connected { conn_id: old })));
    assert!(h.sent().is_empty());
    h.input(Input::Event(Event::Hub(HubEvent::Disconnected {
        conn_id: old,
        reason: "x".into(),
        close_code: None,
        close_reason: None,
    })));
    assert!(h.fx.iter().all(|e| !matches!(e, Effect::Record { event: LifecycleEvent::Disconnected, .. })));
}

#[test]
fn heartbeat_pings_on_schedule_and_a_missing_pong_drops_the_connection() {
    let mut h = Harness::with(Settings { heartbeat_interval: ms(1_000), ..settings() }, QueueFile::default());
    h.identify();
    assert_eq!(h.deadline_ms(), Some(1_000));
    h.tick(999);
    assert!(h.sent().is_empty());
    h.tick(1_000);
    assert_eq!(h.sent_types(), ["ping"]);
    assert_eq!(h.deadline_ms(), Some(1_500), "pong deadline");
    h.at(1_200).frame(json!({"type":"pong","timestamp":1}));
    assert_eq!(h.deadline_ms(), Some(2_000), "next ping");
    h.tick(2_000);
    assert_eq!(h.sent_types(), ["ping"]);
    // Half-open: no pong. Detected within interval + timeout of the last pong.
    h.tick(2_499);
    assert!(!h.has(|e| matches!(e, Effect::Close { .. })));
    h.tick(2_500);
    assert!(h.has(|e| matches!(e, Effect::Close { .. })));
    assert!(h.deadline_ms().unwrap() <= 2_600, "reconnect is scheduled");
}

#[test]
fn identify_that_is_never_answered_times_out() {
    let mut h = Harness::new();
    h.connected();
    h.tick(2_000);
    assert!(h.has(|e| matches!(e, Effect::Close { .. })));
}

#[test]
fn an_auth_error_closes_and_backs_off_without_spinning() {
    let mut h = Harness::new();
    let mut attempts = 0;
    let mut now = 0;
    while now < 3_000 {
        h.at(now);
        h.connected();
        h.frame(json!({"type":"error","error":"invalid_token"}));
        assert!(h.has(|e| matches!(e, Effect::Close { .. })));
        assert!(h.has(|e| matches!(e, Effect::Record { event: LifecycleEvent::AuthFailed, .. })));
        attempts += 1;
        now = h.deadline_ms().unwrap();
        h.tick(now);
    }
    // Steps 100,200,400,800,1600,1600: at least 50+100+200+400+800 ms pass
    // before the sixth attempt, so at most 6 fit in 3 s.
    assert!(attempts <= 6, "{attempts} attempts in 3 s");
}

#[test]
fn a_close_with_a_cooldown_is_honoured() {
    let mut h = Harness::new();
    h.identify();
    h.at(10).disconnect(Some(1008), Some("too many violations, retry in 30 s"));
    assert!(h.deadline_ms().unwrap() >= 30_010);
}

// ----- intake --------------------------------------------------------------

#[test]
fn an_idle_sidecar_persists_then_accepts_then_wakes() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    let persist = h.fx.iter().position(|e| matches!(e, Effect::Persist(q) if q.active.is_some())).unwrap();
    let accept =
        h.fx.iter()
            .position(|e| matches!(e, Effect::Send { text, .. } if text.contains("task_accepted")))
            .unwrap();
    assert!(persist < accept, "persisted before acknowledged");
    assert_eq!(h.sent()[0], json!({"type":"task_accepted","task_id":TASK,"protocol_version":1}));
    assert_eq!(h.wake_starts(), [1]);
    let active = h.persisted().unwrap().active.unwrap();
    assert_eq!((active.generation, active.status.as_str(), active.wake_attempts), (3, "waking", 1));
}

#[test]
fn invalid_or_missing_task_ids_are_refused() {
    let long = "a".repeat(200);
    for id in [json!("../x"), json!(""), json!(long), json!("a/b"), json!(".."), json!(5), Value::Null] {
        let mut h = Harness::new();
        h.identify();
        h.frame(json!({"type":"task_assign","task_id":id,"generation":1}));
        assert_eq!(h.sent_types(), ["task_rejected"], "{id}");
        assert!(h.state.held_task_id().is_none());
        assert!(h.persisted().is_none(), "nothing written for {id}");
        assert!(h.wake_starts().is_empty());
    }
}

#[test]
fn a_busy_sidecar_rejects_other_tasks_and_keeps_its_own() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 1);
    h.assign("task-ffffffffffffffff", 1);
    assert_eq!(h.sent()[0]["reason"], "busy");
    assert!(h.persisted().is_none());
    assert_eq!(h.state.held_task_id(), Some(TASK));
}

#[test]
fn the_same_assign_again_is_accepted_idempotently_without_a_second_wake() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    h.assign(TASK, 3);
    assert_eq!(h.sent_types(), ["task_accepted"]);
    assert!(h.wake_starts().is_empty());
    assert!(h.persisted().is_none());
}

// ----- waking --------------------------------------------------------------

#[test]
fn failed_wakes_retry_at_the_configured_delays_then_fail_the_task() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    let mut now = 0;
    for (attempt, delay) in [(1u32, 100u64), (2, 200), (3, 300)] {
        h.at(now).wake_done(attempt, WakeStatus::Failed { exit_code: Some(1) });
        assert_eq!(h.deadline_ms(), Some(now + delay));
        h.tick(now + delay - 1);
        assert!(h.wake_starts().is_empty());
        now += delay;
        h.tick(now);
        assert_eq!(h.wake_starts(), [attempt + 1]);
    }
    h.at(now).wake_done(4, WakeStatus::TimedOut);
    let failed = &h.sent()[0];
    assert_eq!(failed["type"], "task_failed");
    assert_eq!(failed["generation"], 3);
    assert!(failed["reason"].as_str().unwrap().contains("after 4 attempts"), "{failed}");
    assert_eq!(failed["reason"], failed["error"]);
}

#[test]
fn without_a_wake_command_the_task_goes_straight_to_working() {
    let mut s = settings();
    s.has_wake_command = false;
    let mut h = Harness::with(s, QueueFile::default());
    h.identify();
    h.assign(TASK, 1);
    assert!(h.wake_starts().is_empty());
    assert_eq!(h.persisted().unwrap().active.unwrap().status.as_str(), "working");
    assert!(h.has(|e| matches!(e, Effect::ReadTaskFiles { .. })));
}

#[test]
fn a_woken_agent_must_confirm_in_time() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    h.at(10).wake_done(1, WakeStatus::Success);
    assert_eq!(h.persisted().unwrap().active.unwrap().status.as_str(), "waking_confirmation");
    h.tick(1_009);
    assert!(h.sent().is_empty());
    h.tick(1_010);
    assert_eq!(h.sent()[0]["reason"], "confirmation_timeout");
}

#[test]
fn a_confirmation_moves_the_task_to_working() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    h.wake_done(1, WakeStatus::Success);
    h.files(true, ReadResult::Missing);
    assert_eq!(h.persisted().unwrap().active.unwrap().status.as_str(), "working");
    h.tick(5_000);
    assert!(!h.sent_types().contains(&"task_failed".to_string()));
}

#[test]
fn a_started_file_seen_before_the_wake_exits_counts() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    h.files(true, ReadResult::Missing);
    h.wake_done(1, WakeStatus::Success);
    assert_eq!(h.persisted().unwrap().active.unwrap().status.as_str(), "working");
}

// ----- results and reports -------------------------------------------------

#[test]
fn a_result_is_persisted_then_reported_then_settled_by_the_ack() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, success());
    let persist =
        h.fx.iter()
            .position(|e| matches!(e, Effect::Persist(q) if q.active.as_ref().unwrap().report.is_some()));
    let send = h.fx.iter().position(|e| matches!(e, Effect::Send { .. }));
    assert!(persist.unwrap() < send.unwrap());
    assert_eq!(
        h.sent()[0],
        json!({"type":"task_complete","task_id":TASK,"generation":3,
               "result":{"status":"success","output":"done"},"protocol_version":1})
    );
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"complete"}));
    assert!(h.has(|e| matches!(e, Effect::RemoveTaskFiles { task_id } if task_id == TASK)));
    assert_eq!(h.persisted().unwrap(), QueueFile::default());
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn a_failure_result_is_reported_with_its_reason() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, ReadResult::Parsed(json!({"status":"failure","reason":"tests fail"})));
    assert_eq!(h.sent()[0]["type"], "task_failed");
    assert_eq!(h.sent()[0]["reason"], "tests fail");
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"dead_letter"}));
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn a_result_caught_mid_write_is_read_again_and_reported_once() {
    let mut h = Harness::new();
    h.working(3);
    h.at(100).files(true, ReadResult::Unparseable { len: 10, error: "EOF".into() });
    assert!(h.sent().is_empty());
    let rescan = h.deadline_ms().unwrap();
    assert!(rescan > 100 && rescan <= 500, "{rescan}");
    h.tick(rescan);
    assert!(h.has(|e| matches!(e, Effect::ReadTaskFiles { .. })));
    h.at(rescan).files(true, success());
    assert_eq!(h.sent_types(), ["task_complete"]);
    h.files(true, success());
    assert!(h.sent().is_empty(), "reported once");
}

#[test]
fn a_result_that_never_parses_fails_the_task() {
    let mut h = Harness::new();
    h.working(3);
    h.at(100).files(true, ReadResult::Unparseable { len: 0, error: "EOF".into() });
    h.at(499).files(true, ReadResult::Unparseable { len: 0, error: "EOF".into() });
    assert!(h.sent().is_empty());
    h.at(500).files(true, ReadResult::Unparseable { len: 0, error: "EOF".into() });
    assert_eq!(h.sent()[0]["reason"], "result_parse_error");
}

#[test]
fn a_result_too_large_fails_the_task() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, ReadResult::TooLarge { len: 1 << 30 });
    assert_eq!(h.sent()[0]["reason"], "result_too_large");
}

#[test]
fn error_frames_answer_the_oldest_report_of_their_kind() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    h.assign("task-ffffffffffffffff", 1); // rejected: awaits unknown_message_type
    h.wake_done(1, WakeStatus::Success);
    h.files(true, success());
    assert_eq!(h.sent_types(), ["task_complete"]);
    // The old hub's answer to task_rejected must not settle the completion.
    h.frame(json!({"type":"error","error":"unknown_message_type"}));
    assert_eq!(h.state.held_task_id(), Some(TASK));
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"accepted"}));
    assert_eq!(h.state.held_task_id(), Some(TASK));
    h.frame(json!({"type":"error","error":"task_complete_failed: stale_generation"}));
    assert!(h.state.held_task_id().is_none(), "a final refusal settles the report");
    assert!(h.has(|e| matches!(e, Effect::Record { event: LifecycleEvent::ReportSettled, .. })));
}

#[test]
fn a_passing_refusal_keeps_the_report_for_the_next_connection() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, success());
    h.frame(json!({"type":"error","error":"task_complete_failed: database_busy"}));
    assert_eq!(h.state.held_task_id(), Some(TASK));
    h.disconnect(None, None);
    h.tick(1_000);
    h.identify();
    h.frame(json!({"type":"task_continue","task_id":TASK,"generation":3}));
    assert_eq!(h.sent_types(), ["task_complete"]);
}

#[test]
fn after_a_reconnect_nothing_is_reported_before_the_hub_answers_recovering() {
    let mut h = Harness::new();
    h.working(3);
    h.disconnect(None, None);
    h.at(50).files(true, success()); // the result arrives while disconnected
    assert!(h.sent().is_empty());
    assert!(h.persisted().unwrap().active.unwrap().report.is_some(), "persisted while offline");
    h.tick(1_000);
    h.identify();
    assert_eq!(h.sent_types(), ["task_recovering"]);
    assert_eq!(h.sent()[0]["last_status"], "working");
    h.frame(json!({"type":"task_continue","task_id":TASK,"generation":4}));
    assert_eq!(h.sent()[0]["type"], "task_complete");
    assert_eq!(h.sent()[0]["generation"], 4);
}

#[test]
fn a_result_for_a_task_the_hub_took_back_is_withheld() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, success());
    h.disconnect(None, None); // before the ack: not settled
    h.tick(1_000);
    h.identify();
    assert_eq!(h.sent_types(), ["task_recovering"]);
    h.frame(json!({"type":"task_reassign","task_id":TASK}));
    assert!(h.sent().is_empty());
    assert!(h.has(|e| matches!(e, Effect::Record { event: LifecycleEvent::ResultWithheld, .. })));
    assert!(h.state.held_task_id().is_none());
    assert_eq!(h.persisted().unwrap(), QueueFile::default());
}

#[test]
fn the_same_task_handed_back_after_a_reconnect_is_adopted_without_a_second_wake() {
    let mut h = Harness::new();
    h.working(3);
    h.disconnect(None, None);
    h.tick(1_000);
    h.identify();
    // The hub re-pushes before answering task_recovering.
    h.assign(TASK, 5);
    assert_eq!(h.sent_types(), ["task_accepted"]);
    assert!(h.wake_starts().is_empty());
    assert_eq!(h.persisted().unwrap().active.unwrap().generation, 5);
    h.files(true, success());
    assert!(h.sent().is_empty(), "still waiting for the answer to task_recovering");
    h.frame(json!({"type":"task_continue","task_id":TASK,"generation":5}));
    assert_eq!(h.sent()[0]["type"], "task_complete");
    assert_eq!(h.sent()[0]["generation"], 5);
}

#[test]
fn a_report_superseded_by_a_newer_generation_is_resent_under_it() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, success());
    h.assign(TASK, 5); // the hub took it back and re-pushed it meanwhile
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"accepted"}));
    h.frame(json!({"type":"error","error":"task_complete_failed: stale_generation"}));
    assert_eq!(h.sent()[0]["type"], "task_complete");
    assert_eq!(h.sent()[0]["generation"], 5);
    assert_eq!(h.state.held_task_id(), Some(TASK));
}

#[test]
fn a_hub_closing_with_1011_after_task_failed_settles_the_report() {
    let mut h = Harness::new();
    h.working(3);
    h.files(true, ReadResult::Parsed(json!({"status":"failure","reason":"no"})));
    assert_eq!(h.sent_types(), ["task_failed"]);
    h.disconnect(Some(1011), Some("internal error"));
    assert!(h.state.held_task_id().is_none());
    assert!(h.has(|e| matches!(e, Effect::RemoveTaskFiles { .. })));
}

// ----- recovery after our own crash ---------------------------------------

fn node_queue(status: &str) -> QueueFile {
    crate::queue_store::parse(
        json!({"active":{"task_id":TASK,"description":"d","metadata":{},"status":status,
                         "assigned_at":1,"generation":3,"wake_attempts":1},"recovering":null})
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

#[test]
fn a_task_found_at_start_is_recovering_until_the_hub_answers() {
    let mut h = Harness::with(settings(), node_queue("working"));
    let queue = h.persisted().unwrap();
    assert!(queue.active.is_none());
    assert_eq!(queue.recovering.unwrap().task_id, TASK);
    assert!(h.has(|e| matches!(e, Effect::ReadTaskFiles { .. })), "results already on disk count");
    h.identify();
    assert_eq!(h.sent()[0]["type"], "task_recovering");
    assert_eq!(h.sent()[0]["task_id"], TASK);
    h.frame(json!({"type":"task_continue","task_id":TASK,"generation":4}));
    let queue = h.persisted().unwrap();
    assert_eq!(queue.active.unwrap().generation, 4);
    assert!(h.wake_starts().is_empty(), "a working agent is not woken again");
    h.files(true, success());
    assert_eq!(h.sent()[0]["generation"], 4);
}

#[test]
fn a_task_never_woken_before_the_crash_is_woken_once_on_continue_and_re_push() {
    let mut h = Harness::with(settings(), node_queue("accepted"));
    h.identify();
    h.frame(json!({"type":"task_continue","task_id":TASK,"generation":4}));
    assert_eq!(h.wake_starts(), [1]);
    h.assign(TASK, 5);
    assert_eq!(h.sent_types(), ["task_accepted"]);
    assert!(h.wake_starts().is_empty(), "woken once");
}

#[test]
fn a_recovered_task_the_hub_reassigned_is_dropped() {
    let mut h = Harness::with(settings(), node_queue("working"));
    h.identify();
    h.frame(json!({"type":"task_reassign","task_id":TASK}));
    assert!(h.state.held_task_id().is_none());
    assert_eq!(h.persisted().unwrap(), QueueFile::default());
}

// ----- newer hub frames ----------------------------------------------------

#[test]
fn a_cancelled_task_is_stopped_and_nothing_is_reported() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    h.frame(json!({"type":"task_cancelled","task_id":TASK,"timestamp":1}));
    assert!(h.has(|e| matches!(e, Effect::CancelWake { .. })));
    assert!(h.has(|e| matches!(e, Effect::RemoveTaskFiles { .. })));
    assert!(h.sent().is_empty());
    h.wake_done(1, WakeStatus::Cancelled);
    assert!(h.sent().is_empty());
    assert!(h.state.held_task_id().is_none());
}

#[test]
fn a_rate_limited_report_is_resent_after_the_delay() {
    let mut h = Harness::new();
    h.working(3);
    h.at(100).files(true, success());
    h.frame(json!({"type":"rate_limited","retry_after_ms":250,"tier":"t"}));
    assert_eq!(h.deadline_ms(), Some(350));
    h.tick(349);
    assert!(h.sent().is_empty());
    h.tick(350);
    assert_eq!(h.sent_types(), ["task_complete"]);
    h.frame(json!({"type":"task_ack","task_id":TASK,"status":"complete"}));
    assert!(h.state.held_task_id().is_none(), "the resent report is settled by its ack");
}

#[test]
fn restart_sidecar_persists_and_exits() {
    let mut h = Harness::new();
    h.working(3);
    h.frame(json!({"type":"restart_sidecar","reason":"update"}));
    assert!(h.persisted().unwrap().active.is_some());
    assert!(h.has(|e| matches!(e, Effect::Close { .. })));
    assert!(matches!(h.fx.last(), Some(Effect::Exit)));
    assert_eq!(h.state.next_deadline(), None);
}

#[test]
fn shutdown_cancels_a_running_wake_and_persists_it_for_the_next_start() {
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    h.input(Input::Event(Event::Shutdown));
    assert!(h.has(|e| matches!(e, Effect::CancelWake { .. })));
    assert_eq!(h.persisted().unwrap().active.unwrap().status.as_str(), "waking");
    assert!(matches!(h.fx.last(), Some(Effect::Exit)));
}

#[test]
fn progress_is_relayed_at_most_once_per_interval() {
    let mut h = Harness::new();
    h.working(3);
    let progress = |h: &mut Harness, at: u64, value: u64| {
        h.at(at).input(Input::Files(TaskFiles {
            task_id: TASK.into(),
            started: true,
            result: ReadResult::Missing,
            progress: ReadResult::Parsed(json!({"progress": value, "message": "m"})),
        }));
        h.sent()
    };
    assert_eq!(
        progress(&mut h, 0, 10)[0],
        json!({"type":"task_progress","task_id":TASK,"progress":10,"message":"m","protocol_version":1})
    );
    assert!(progress(&mut h, 100, 20).is_empty(), "throttled");
    assert!(progress(&mut h, 200, 30).is_empty());
    assert_eq!(h.deadline_ms(), Some(1_000));
    h.tick(1_000);
    assert_eq!(h.sent()[0]["progress"], 30, "the latest value goes out");
    assert!(progress(&mut h, 2_500, 30).is_empty(), "unchanged values are not repeated");
}

#[test]
fn wake_result_is_sent_only_when_the_hub_has_the_feature() {
    let mut s = settings();
    s.send_wake_result = true;
    let mut h = Harness::with(s, QueueFile::default());
    h.identify();
    h.assign(TASK, 3);
    h.wake_done(1, WakeStatus::Failed { exit_code: Some(2) });
    assert_eq!(
        h.sent()[0],
        json!({"type":"wake_result","task_id":TASK,"status":"failed","attempt":1,"error":"exit code 2","protocol_version":1})
    );
    let mut h = Harness::new();
    h.identify();
    h.assign(TASK, 3);
    h.wake_done(1, WakeStatus::Failed { exit_code: Some(2) });
    assert!(h.sent().is_empty());
}

#[test]
fn retry_in_reasons_parse() {
    assert_eq!(parse_retry_in("retry in 30 s"), Some(Duration::from_secs(30)));
    assert_eq!(parse_retry_in("violations; retry in 2.5s"), Some(Duration::from_millis(2_500)));
    assert_eq!(parse_retry_in("bye"), None);
}

#[test]
fn a_task_whose_result_never_comes_fails_at_task_timeout() {
    let mut h = Harness::with(Settings { task_timeout: Some(ms(5_000)), ..settings() }, QueueFile::default());
    h.identify();
    h.at(100).assign(TASK, 3);
    h.wake_done(1, WakeStatus::Success);
    h.files(true, ReadResult::Missing);
    assert_eq!(h.deadline_ms(), Some(5_100));
    h.tick(5_099);
    assert!(h.sent().is_empty());
    h.tick(5_100);
    assert_eq!(h.sent()[0]["reason"], "task_timeout");
}

#[test]
fn a_task_timeout_kills_a_wake_still_running() {
    let mut h = Harness::with(Settings { task_timeout: Some(ms(1_000)), ..settings() }, QueueFile::default());
    h.identify();
    h.assign(TASK, 3);
    h.tick(1_000);
    assert!(h.has(|e| matches!(e, Effect::CancelWake { .. })));
    assert_eq!(h.sent()[0]["reason"], "task_timeout");
}

#[test]
fn a_rate_limited_ping_is_sent_again_later_not_taken_for_a_dead_hub() {
    let mut h = Harness::with(Settings { heartbeat_interval: ms(1_000), ..settings() }, QueueFile::default());
    h.identify();
    h.tick(1_000);
    assert_eq!(h.sent_types(), ["ping"]);
    h.at(1_010).frame(json!({"type":"rate_limited","retry_after_ms":2_000,"tier":"light"}));
    h.tick(1_500);
    assert!(!h.has(|e| matches!(e, Effect::Close { .. })), "no pong is due for a dropped ping");
    assert_eq!(h.deadline_ms(), Some(3_010));
    h.tick(3_010);
    assert_eq!(h.sent_types(), ["ping"]);
}

#[test]
fn state_report_is_sent_with_the_feature_and_an_abort_drops_the_task() {
    let mut h = Harness::with(Settings { send_state_report: true, ..settings() }, node_queue("working"));
    h.identify();
    assert_eq!(h.sent_types(), ["task_recovering", "state_report"]);
    assert_eq!(h.sent()[1]["generation"], 3);
    h.frame(json!({"type":"state_report_ack","task_id":TASK,"action":"continue"}));
    assert_eq!(h.state.held_task_id(), Some(TASK));
    h.frame(json!({"type":"state_report_ack","task_id":TASK,"action":"abort"}));
    assert!(h.state.held_task_id().is_none());
    assert!(h.sent().is_empty(), "nothing is reported for an aborted task");
}

#[test]
fn without_the_feature_no_state_report_is_sent() {
    let mut h = Harness::with(settings(), node_queue("working"));
    h.identify();
    assert_eq!(h.sent_types(), ["task_recovering"]);
}
