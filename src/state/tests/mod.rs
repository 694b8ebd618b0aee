//! The harness of the core's unit tests: inputs and injected times in,
//! effects out. Each stage's tests sit beside it, in
//! `src/state/<stage>_tests.rs`, as transcripts: inputs, then the whole batch
//! of effects expected (see [`Harness::steps`] and [`transcript`]).

use std::time::Duration;

use super::dispatch::parse_retry_in;
use super::*;
use crate::retry::{BackoffPolicy, JitterStrategy};
use crate::state::{WakeOutcome, WakeStatus};

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
        wake_mode: WakeMode::Launch,
        cancel_grace: ms(2_000),
        has_update_command: false,
        link: LinkSettings {
            // Long, so pings stay out of the tests that are not about them.
            heartbeat_interval: ms(60_000),
            pong_timeout: ms(500),
            connect_timeout: ms(2_000),
            backoff: BackoffPolicy { initial: ms(100), max: ms(1_600), jitter: JitterStrategy::Equal },
            reply_timeout: ms(30_000),
            // The hub's buckets and backoff at a tenth of its window: a token
            // every 100 ms (100.5 in the model), denials back off 100 ms, 200 ms,
            // 500 ms...
            rate_limits: RateLimits { window: ms(6_000), ..RateLimits::default() },
        },
        confirmation_timeout: ms(1_000),
        wake_retry_delays: vec![ms(100), ms(200), ms(300)],
        task_timeout: None,
        result_settle: ms(400),
        progress_interval: ms(1_000),
        readopt_window: ms(10_000),
        adopted_silence: ms(20_000),
        keepalive_interval: None,
        send_wake_result: false,
        send_state_report: false,
        results_poll: ms(1_000),
        rescan_results: false,
    }
}

/// Settings with the link's `heartbeat_interval` set.
fn with_heartbeat(heartbeat_interval: Duration) -> Settings {
    let base = settings();
    Settings { link: LinkSettings { heartbeat_interval, ..base.link }, ..base }
}

/// Drives a `State` with times relative to `t0`, keeping the last batch of
/// effects.
struct Harness {
    state: State,
    t0: Instant,
    now: Instant,
    fx: Vec<Effect>,
    /// The log lines of the last batch (kept out of `fx`).
    logs: Vec<String>,
    conn: u64,
    /// A transcript printed its batches (`TRANSCRIPT_PRINT`).
    printed: bool,
}

/// The batch without its log lines, and the lines.
fn split_logs(batch: Vec<Effect>) -> (Vec<Effect>, Vec<String>) {
    let mut logs = Vec::new();
    let fx = batch
        .into_iter()
        .filter(|effect| match effect {
            Effect::Log { text, .. } => {
                logs.push(text.clone());
                false
            }
            _ => true,
        })
        .collect();
    (fx, logs)
}

impl Harness {
    fn new() -> Harness {
        Harness::with(settings(), QueueFile::default())
    }

    fn with(settings: Settings, queue: QueueFile) -> Harness {
        Harness::starting(settings, queue, false)
    }

    /// As the shell starts it when it found the recorded run-mode agent
    /// still running.
    fn with_running_agent(settings: Settings, queue: QueueFile) -> Harness {
        Harness::starting(settings, queue, true)
    }

    fn starting(settings: Settings, queue: QueueFile, agent_running: bool) -> Harness {
        let t0 = Instant::now();
        let mut state = State::new(settings, queue, 7, t0);
        if agent_running {
            state.agent_still_running();
        }
        let (fx, logs) = split_logs(state.start());
        let conn = connect_id(&fx).expect("start connects");
        Harness { state, t0, now: t0, fx, logs, conn, printed: false }
    }

    fn at(&mut self, ms_since_start: u64) -> &mut Harness {
        self.now = self.t0 + ms(ms_since_start);
        self
    }

    fn input(&mut self, input: Input) -> &[Effect] {
        (self.fx, self.logs) = split_logs(self.state.handle(input, self.now, 1_700_000_000_000));
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
                Effect::Send { frame, .. } => Some(serde_json::from_str(&frame.to_text()).unwrap()),
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

    /// The last batch, one short line per effect.
    fn steps(&self) -> Vec<String> {
        self.fx.iter().map(describe).collect()
    }

    fn deadline_ms(&self) -> Option<u64> {
        // Rounded up, so that ticking at the result is never early.
        self.state.next_deadline().map(|d| d.duration_since(self.t0).as_micros().div_ceil(1_000) as u64)
    }
}

/// An input of a transcript, in the harness's terms.
enum Step {
    /// A frame from the hub on the live connection.
    Frame(Value),
    /// The hub's `task_assign` of this task at this generation.
    Assign(&'static str, u64),
    /// The live connection opened.
    Connected,
    /// The live connection dropped (close code and reason).
    Disconnected(Option<u16>, Option<&'static str>),
    /// The executor's report that attempt `n` started (its identity made up).
    WakeStarted(u32),
    /// The executor's outcome of attempt `n`.
    WakeDone(u32, WakeStatus),
    /// What the task's files hold: `.started` there, and the result.
    Files(bool, ReadResult),
    /// A tick at this many ms after the start.
    Tick(u64),
    /// Any other input.
    Input(Input),
    /// The step, at this many ms after the start.
    At(u64, Box<Step>),
    /// Not an input: the core's next deadline must be this (ms after the
    /// start); its row expects no effects.
    Deadline(Option<u64>),
}

/// `step` at `ms` after the start.
fn at(ms: u64, step: Step) -> Step {
    Step::At(ms, Box::new(step))
}

/// The hub's `task_ack` of the held task with this status.
fn ack(status: &str) -> Step {
    Step::Frame(json!({"type":"task_ack","task_id":TASK,"status":status}))
}

/// The hub's `task_continue` of the held task at this generation.
fn resume(generation: u64) -> Step {
    Step::Frame(json!({"type":"task_continue","task_id":TASK,"generation":generation}))
}

/// The transcript's rows: each input with the whole batch it must give.
type Rows<'a> = Vec<(Step, &'a [&'a str])>;

/// Runs `steps` in order, each followed by the whole batch of effects it
/// must give (see [`describe`]); fails at the first batch that differs.
/// The harness keeps the last batch, for finer asserts after. With
/// `TRANSCRIPT_PRINT` set, it prints each batch instead, and the test fails
/// at its end (a way to write a new transcript).
fn transcript(h: &mut Harness, steps: Rows<'_>) {
    for (number, (step, expected)) in steps.into_iter().enumerate() {
        h.step(step);
        if printing() {
            h.printed = true;
            eprintln!("TRANSCRIPT {} {:?}", number + 1, h.steps());
            continue;
        }
        assert_eq!(h.steps(), expected, "step {} of the transcript", number + 1);
    }
}

/// Never a pass that checked nothing: with `TRANSCRIPT_PRINT` set, a test
/// that ran a transcript fails at its end.
fn printing() -> bool {
    std::env::var_os("TRANSCRIPT_PRINT").is_some()
}

impl Drop for Harness {
    fn drop(&mut self) {
        if printing() && self.printed && !std::thread::panicking() {
            panic!("TRANSCRIPT_PRINT: the batches were printed, not checked");
        }
    }
}

impl Harness {
    /// Feeds one transcript step; its batch is the harness's last.
    fn step(&mut self, step: Step) {
        match step {
            Step::Frame(frame) => {
                self.frame(frame);
            }
            Step::Assign(task_id, generation) => {
                self.assign(task_id, generation);
            }
            Step::Connected => {
                self.connected();
            }
            Step::Disconnected(code, reason) => {
                self.disconnect(code, reason);
            }
            Step::WakeStarted(attempt) => {
                let identity =
                    crate::state::WakeIdentity { pid: 4242, process_group: Some(4242), start_time: Some(1) };
                let started = crate::state::WakeStarted { task_id: TASK.into(), attempt, identity };
                self.input(Input::Event(Event::WakeStarted(started)));
            }
            Step::WakeDone(attempt, status) => {
                self.wake_done(attempt, status);
            }
            Step::Files(started, result) => {
                self.files(started, result);
            }
            Step::Tick(at) => {
                self.tick(at);
            }
            Step::Input(input) => {
                self.input(input);
            }
            Step::At(ms, step) => {
                self.at(ms);
                self.step(*step);
            }
            Step::Deadline(expected) => {
                assert_eq!(self.deadline_ms(), expected, "the next deadline");
                self.fx.clear();
                self.logs.clear();
            }
        }
    }
}

/// One effect as short text, so a test can assert a whole batch and an
/// unexpected extra effect fails it.
fn describe(effect: &Effect) -> String {
    let task = |kind: &str, t: &TaskRecord| {
        let report = match &t.report {
            None => String::new(),
            Some(Report::Complete { .. }) => " report=complete".into(),
            Some(Report::Failed { reason }) => format!(" report=failed({reason})"),
        };
        format!("persist {kind} {} gen={}{report}", t.status, t.generation)
    };
    match effect {
        Effect::Connect { .. } => "connect".into(),
        Effect::Send { frame, .. } => format!("send {}", frame.kind()),
        Effect::Close { .. } => "close".into(),
        Effect::Persist(q) => {
            let held = match (&q.active, &q.recovering) {
                (Some(t), _) => task("active", t),
                (None, Some(t)) => task("recovering", t),
                (None, None) => "persist idle".into(),
            };
            match &q.past {
                None => held,
                Some(past) => {
                    let fate = serde_json::to_value(past.fate).expect("serializes");
                    format!("{held} past={}", fate.as_str().unwrap_or("?"))
                }
            }
        }
        Effect::StartWake(w) => format!("start wake {}", w.attempt),
        Effect::ReleaseWake { attempt, .. } => format!("release wake {attempt}"),
        Effect::CancelWake { .. } => "cancel wake".into(),
        Effect::MarkCancelled { reason, .. } => format!("mark cancelled ({reason})"),
        Effect::CheckAgent { .. } => "check agent".into(),
        Effect::EndAgent { .. } => "end agent".into(),
        Effect::ReadTaskFiles { .. } => "read files".into(),
        Effect::ListResults => "list results".into(),
        Effect::RemoveTaskFiles { .. } => "remove files".into(),
        Effect::DiscardTaskFiles { .. } => "discard files".into(),
        Effect::Record { event, .. } => format!("record {event}"),
        Effect::Log { level, text } => format!("log {level}: {text}"),
        Effect::StartUpdate => "start update".into(),
        Effect::Exit => "exit".into(),
    }
}

fn connect_id(fx: &[Effect]) -> Option<u64> {
    fx.iter().find_map(|e| match e {
        Effect::Connect { conn_id } => Some(*conn_id),
        _ => None,
    })
}

fn node_queue(status: &str) -> QueueFile {
    crate::queue_store::parse(
        json!({"active":{"task_id":TASK,"description":"d","metadata":{},"status":status,
                         "assigned_at":1,"generation":3,"wake_attempts":1},"recovering":null})
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

fn success() -> ReadResult {
    ReadResult::Parsed(json!({"status":"success","output":"done"}))
}

// Each stage's tests sit beside it (`src/state/<stage>_tests.rs`).
#[path = "../agent_run_tests.rs"]
mod agent_run;
#[path = "../busy_tests.rs"]
mod busy;
#[path = "../dispatch_tests.rs"]
mod dispatch;
#[path = "../intake_tests.rs"]
mod intake;
#[path = "../past_tests.rs"]
mod past;
#[path = "../recovery_tests.rs"]
mod recovery;
#[path = "../reporting_tests.rs"]
mod reporting;
#[path = "../waking_tests.rs"]
mod waking;
#[path = "../working_tests.rs"]
mod working;
