//! Unit tests of the pure core: inputs and injected times in, effects out.

use std::time::Duration;

use super::frames::parse_retry_in;
use super::*;
use crate::retry::{BackoffPolicy, JitterStrategy};
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
        wake_mode: WakeMode::Launch,
        cancel_grace: ms(2_000),
        has_update_command: false,
        link: LinkSettings {
            // Long, so pings stay out of the tests that are not about them.
            heartbeat_interval: ms(60_000),
            pong_timeout: ms(500),
            identify_timeout: ms(2_000),
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
    conn: u64,
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

    /// The last batch, one short line per effect.
    fn steps(&self) -> Vec<String> {
        self.fx.iter().map(describe).collect()
    }

    fn deadline_ms(&self) -> Option<u64> {
        // Rounded up, so that ticking at the result is never early.
        self.state.next_deadline().map(|d| d.duration_since(self.t0).as_micros().div_ceil(1_000) as u64)
    }
}

/// One effect as short text, so a test can assert a whole batch and an
/// unexpected extra effect fails it.
fn describe(effect: &Effect) -> String {
    let task = |kind: &str, t: &crate::queue_store::TaskRecord| {
        let report = match &t.report {
            None => String::new(),
            Some(crate::queue_store::Report::Complete { .. }) => " report=complete".into(),
            Some(crate::queue_store::Report::Failed { reason }) => format!(" report=failed({reason})"),
        };
        format!("persist {kind} {} gen={}{report}", t.status, t.generation)
    };
    match effect {
        Effect::Connect { .. } => "connect".into(),
        Effect::Send { text, .. } => {
            let frame: Value = serde_json::from_str(text).expect("frames are JSON");
            format!("send {}", frame["type"].as_str().unwrap_or("?"))
        }
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

mod agent_run;
mod busy;
mod connection;
mod files;
mod intake;
mod readoption;
mod recovery;
mod reports;
mod wake_process;
