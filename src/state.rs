//! The pure core: everything the sidecar decides, as a state machine.
//!
//! [`State::handle`] takes one [`Input`] and the current time and returns the
//! [`Effect`]s to carry out; [`State::next_deadline`] says when it next wants
//! a [`Input::Tick`]. There are no channels, files, sockets or clocks in here,
//! so every transition is unit-tested with injected times (see the tests at
//! the bottom). `main_loop.rs` is the shell that carries the effects out.
//!
//! The task slot holds at most one task (PROTOCOL.md section 9). A task the
//! hub gave us is never lost and never reported twice under one generation:
//! its outcome (the report) is persisted before it is sent, resent after every
//! reconnect until the hub settles it, and after any reconnect nothing is
//! reported before the hub has said, in answer to `task_recovering`, whether
//! the task is still ours.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::config::{Config, Secret};
use crate::protocol::{self, ErrorKind, Incoming, TaskAssign};
use crate::queue_store::{QueueFile, Report, TaskRecord};
use crate::retry::{backoff, BackoffPolicy, Jitter};
use crate::wake::{WakeOutcome, WakeStatus};
use crate::watcher::{is_valid_task_id, ReadResult};

/// The part of [`Config`] the core needs, as plain values.
#[derive(Debug, Clone)]
pub struct Settings {
    pub agent_id: String,
    pub name: String,
    pub token: Secret,
    pub capabilities: Vec<String>,
    pub has_wake_command: bool,
    pub heartbeat_interval: Duration,
    pub pong_timeout: Duration,
    pub identify_timeout: Duration,
    pub backoff: BackoffPolicy,
    pub confirmation_timeout: Duration,
    pub wake_retry_delays: Vec<Duration>,
    pub task_timeout: Option<Duration>,
    pub result_settle: Duration,
    pub progress_interval: Duration,
    pub send_wake_result: bool,
    pub send_state_report: bool,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            agent_id: config.agent_id.clone(),
            name: config.name.clone(),
            token: config.token.clone(),
            capabilities: config.capabilities.clone(),
            has_wake_command: config.wake_command.is_some(),
            heartbeat_interval: config.heartbeat_interval,
            pong_timeout: config.pong_timeout,
            identify_timeout: config.connect_timeout,
            backoff: BackoffPolicy {
                initial: config.reconnect_initial,
                max: config.reconnect_max,
                jitter: config.reconnect_jitter,
            },
            confirmation_timeout: config.confirmation_timeout,
            wake_retry_delays: config.wake_retry_delays.clone(),
            task_timeout: config.task_timeout,
            result_settle: config.result_settle,
            progress_interval: config.progress_interval,
            send_wake_result: config.has_hub_feature("wake_result"),
            send_state_report: config.has_hub_feature("state_report"),
        }
    }
}

/// Something that happened, as the core sees it.
#[derive(Debug, Clone)]
pub enum Input {
    HubConnected {
        conn_id: u64,
    },
    HubFrame {
        conn_id: u64,
        text: String,
    },
    HubDisconnected {
        conn_id: u64,
        reason: String,
        close_code: Option<u16>,
        close_reason: Option<String>,
    },
    WakeFinished(WakeOutcome),
    /// What the results directory holds for one task (read by the shell).
    Files(TaskFiles),
    /// A deadline may be due.
    Tick,
    Shutdown,
}

/// The results-directory files of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFiles {
    pub task_id: String,
    pub started: bool,
    pub result: ReadResult,
    pub progress: ReadResult,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Open connection `conn_id` (identify follows on `HubConnected`).
    Connect {
        conn_id: u64,
    },
    Send {
        conn_id: u64,
        text: String,
    },
    /// Close gracefully; no events from this connection matter any more.
    Close {
        conn_id: u64,
    },
    /// Write queue.json. A failure must stop the `Send`s that follow in the
    /// same batch: they acknowledge what the file records.
    Persist(Box<QueueFile>),
    StartWake(WakeStart),
    CancelWake {
        task_id: String,
    },
    /// Read the results-directory files of this task and feed `Input::Files`.
    ScanResults {
        task_id: String,
    },
    RemoveTaskFiles {
        task_id: String,
    },
    /// A lifecycle-log record.
    Record {
        event: &'static str,
        fields: Value,
    },
    /// Leave the loop (shutdown or `restart_sidecar`).
    Exit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WakeStart {
    pub task_id: String,
    pub generation: u64,
    pub attempt: u32,
    pub description: String,
    pub task_json: String,
}

/// Node's task statuses (PROTOCOL.md section 9).
pub mod status {
    pub const ACCEPTED: &str = "accepted";
    pub const WAKING: &str = "waking";
    pub const WAKING_CONFIRMATION: &str = "waking_confirmation";
    pub const WORKING: &str = "working";
}

#[derive(Debug)]
pub struct State {
    settings: Settings,
    jitter: Jitter,
    conn: Conn,
    last_conn_id: u64,
    /// Failed connection attempts since the last `identified`.
    reconnect_attempt: u32,
    /// The last backoff drawn (before any cooldown); decorrelated jitter
    /// grows from it. Zero after identified.
    last_backoff: Duration,
    /// Frames sent on the live connection that await an answer, oldest
    /// first. Error frames carry no task id; they answer the oldest entry of
    /// their kind (PROTOCOL.md section 6).
    awaiting: VecDeque<Awaiting>,
    /// The last frame sent that a `rate_limited` may refer to.
    last_sent: Option<Resendable>,
    /// The last frame sent was a heartbeat ping (so a `rate_limited` drops
    /// the ping, not `last_sent`).
    ping_was_last: bool,
    /// A frame the hub dropped with `rate_limited`, and when to resend it.
    resend: Option<(Instant, Resendable)>,
    slot: Option<Slot>,
    /// The task whose wake attempt the executor is running, if any. The
    /// executor runs one attempt at a time, whichever task it belongs to.
    wake_running: Option<String>,
    /// Top-level queue.json fields we do not know, kept on every save.
    queue_extra: Map<String, Value>,
    shutting_down: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Conn {
    Backoff { retry_at: Instant },
    Connecting { conn_id: u64 },
    Identifying { conn_id: u64, deadline: Instant },
    Ready { conn_id: u64, next_ping_at: Instant, pong_deadline: Option<Instant> },
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyKind {
    Accepted,
    Complete,
    Failed,
    Recovering,
    StateReport,
    /// `task_rejected`, `wake_result`: older hubs answer
    /// `unknown_message_type`, newer ones nothing we need.
    Unhandled,
}

#[derive(Debug, Clone, PartialEq)]
struct Awaiting {
    kind: ReplyKind,
    task_id: String,
    generation: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct Resendable {
    text: String,
    awaiting: Option<Awaiting>,
}

#[derive(Debug)]
struct Slot {
    record: TaskRecord,
    /// Found in queue.json at start; persisted as `recovering` until the hub
    /// says the task is still ours.
    crash_recovered: bool,
    /// The hub's view is unknown (we started, or the socket dropped since
    /// we last heard about it): nothing is reported until it answers
    /// `task_recovering`.
    needs_reconcile: bool,
    /// The hub re-pushed this task after we sent `task_recovering`, so a
    /// `task_reassign` answer is older news than the re-push.
    readopted_since_recovering: bool,
    wake: Wake,
    started_seen: bool,
    confirm_deadline: Option<Instant>,
    task_deadline: Option<Instant>,
    /// When the result file was first seen not to parse (it may be mid-write).
    result_unparseable_since: Option<Instant>,
    rescan_at: Option<Instant>,
    /// Generation of the report in flight on the live connection.
    report_sent_generation: Option<u64>,
    progress: Progress,
}

#[derive(Debug, Clone, PartialEq)]
enum Wake {
    NotStarted,
    Running { attempt: u32 },
    RetryAt { attempt: u32, at: Instant },
    Done,
}

#[derive(Debug, Default)]
struct Progress {
    last_sent_at: Option<Instant>,
    last_value: Option<(u64, Option<String>)>,
    pending: Option<(u64, Option<String>)>,
}

impl State {
    pub fn new(settings: Settings, queue: QueueFile, jitter_seed: u64, now: Instant) -> State {
        let QueueFile { active, recovering, extra } = queue;
        // A task that was active when we died is recovering now; one that was
        // already recovering stays so. If a file somehow holds both, the
        // recovering one is older news: keep the active one, which is the
        // task the hub most recently gave us, and log the other.
        if let (Some(a), Some(r)) = (&active, &recovering) {
            log::warn!(
                "queue.json holds both an active ({}) and a recovering ({}) task; keeping the active one",
                a.task_id,
                r.task_id
            );
        }
        let slot = active.or(recovering).map(|record| {
            let wake = match record.status.as_str() {
                status::ACCEPTED | status::WAKING => Wake::NotStarted,
                _ => Wake::Done,
            };
            Slot::new(record, true, wake)
        });
        State {
            settings,
            jitter: Jitter::new(jitter_seed),
            conn: Conn::Backoff { retry_at: now },
            last_conn_id: 0,
            reconnect_attempt: 0,
            last_backoff: Duration::ZERO,
            awaiting: VecDeque::new(),
            last_sent: None,
            ping_was_last: false,
            resend: None,
            slot,
            wake_running: None,
            queue_extra: extra,
            shutting_down: false,
        }
    }

    /// The first effects: persist the recovered task as `recovering`, look at
    /// its files, and connect.
    pub fn start(&mut self) -> Vec<Effect> {
        let mut fx = Vec::new();
        if let Some(slot) = &self.slot {
            log::info!(
                "recovering task {} (generation {}, status {}) from queue.json",
                slot.record.task_id,
                slot.record.generation,
                slot.record.status
            );
            fx.push(record("task_recovered_from_disk", task_fields(&slot.record)));
            fx.push(Effect::ScanResults { task_id: slot.record.task_id.clone() });
            fx.push(Effect::Persist(Box::new(self.queue_file())));
        }
        self.connect(&mut fx);
        fx
    }

    pub fn handle(&mut self, input: Input, now: Instant, wall_ms: u64) -> Vec<Effect> {
        let mut fx = Vec::new();
        match input {
            Input::HubConnected { conn_id } => self.on_connected(conn_id, now, &mut fx),
            Input::HubFrame { conn_id, text } => {
                if self.live_conn_id() == Some(conn_id) {
                    self.on_frame(&text, now, wall_ms, &mut fx);
                }
            }
            Input::HubDisconnected { conn_id, reason, close_code, close_reason } => {
                if self.live_conn_id() == Some(conn_id) {
                    self.on_connection_lost(&reason, close_code, close_reason.as_deref(), now, &mut fx);
                }
            }
            Input::WakeFinished(outcome) => self.on_wake_finished(outcome, now, &mut fx),
            Input::Files(files) => self.on_files(files, now, &mut fx),
            Input::Tick => {}
            Input::Shutdown => self.shut_down("shutdown requested", &mut fx),
        }
        if !self.shutting_down {
            self.on_tick(now, &mut fx);
        }
        fx
    }

    /// When the core next needs a `Tick`, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.shutting_down {
            return None;
        }
        let mut deadlines: Vec<Instant> = Vec::new();
        match &self.conn {
            Conn::Backoff { retry_at } => deadlines.push(*retry_at),
            Conn::Identifying { deadline, .. } => deadlines.push(*deadline),
            Conn::Ready { next_ping_at, pong_deadline, .. } => {
                deadlines.push(pong_deadline.unwrap_or(*next_ping_at));
                if let Some((at, _)) = &self.resend {
                    deadlines.push(*at);
                }
            }
            Conn::Connecting { .. } | Conn::Stopped => {}
        }
        if let Some(slot) = &self.slot {
            if let Wake::RetryAt { at, .. } = slot.wake {
                if self.wake_running.is_none() {
                    deadlines.push(at);
                }
            }
            deadlines.extend(slot.confirm_deadline);
            deadlines.extend(slot.task_deadline);
            deadlines.extend(slot.rescan_at);
            if slot.progress.pending.is_some() && self.is_ready() && !slot.needs_reconcile {
                if let Some(last) = slot.progress.last_sent_at {
                    deadlines.push(last + self.settings.progress_interval);
                }
            }
        }
        deadlines.into_iter().min()
    }

    /// The task whose result files we care about.
    pub fn held_task_id(&self) -> Option<&str> {
        self.slot.as_ref().map(|s| s.record.task_id.as_str())
    }

    /// queue.json as it should be on disk now.
    pub fn queue_file(&self) -> QueueFile {
        let mut queue = QueueFile { active: None, recovering: None, extra: self.queue_extra.clone() };
        if let Some(slot) = &self.slot {
            if slot.crash_recovered {
                queue.recovering = Some(slot.record.clone());
            } else {
                queue.active = Some(slot.record.clone());
            }
        }
        queue
    }

    // ----- connection -------------------------------------------------------

    fn live_conn_id(&self) -> Option<u64> {
        match self.conn {
            Conn::Connecting { conn_id }
            | Conn::Identifying { conn_id, .. }
            | Conn::Ready { conn_id, .. } => Some(conn_id),
            Conn::Backoff { .. } | Conn::Stopped => None,
        }
    }

    fn is_ready(&self) -> bool {
        matches!(self.conn, Conn::Ready { .. })
    }

    fn connect(&mut self, fx: &mut Vec<Effect>) {
        self.last_conn_id += 1;
        let conn_id = self.last_conn_id;
        self.conn = Conn::Connecting { conn_id };
        fx.push(Effect::Connect { conn_id });
        fx.push(record("connecting", json!({ "attempt": self.reconnect_attempt + 1 })));
    }

    fn on_connected(&mut self, conn_id: u64, now: Instant, fx: &mut Vec<Effect>) {
        if self.conn != (Conn::Connecting { conn_id }) {
            return;
        }
        log::info!("connected to hub; identifying as {}", self.settings.agent_id);
        fx.push(record("connected", json!({})));
        let s = &self.settings;
        let text = protocol::out_identify(&s.agent_id, s.token.expose(), &s.name, &s.capabilities);
        fx.push(Effect::Send { conn_id, text });
        self.conn = Conn::Identifying { conn_id, deadline: now + self.settings.identify_timeout };
    }

    /// The connection is gone, by the hub's doing or ours.
    fn on_connection_lost(
        &mut self,
        reason: &str,
        close_code: Option<u16>,
        close_reason: Option<&str>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        // Old hubs crash on task_failed and close with 1011 instead of
        // answering; they re-queue the task (PROTOCOL.md section 6). Resending
        // would crash them again, so the report counts as settled ("retried").
        if close_code == Some(1011) {
            if let Some(entry) = self.awaiting.iter().find(|a| a.kind == ReplyKind::Failed).cloned() {
                log::warn!(
                    "hub closed with 1011 after task_failed for {}; treating the report as settled (retried)",
                    entry.task_id
                );
                self.settle(&entry, "retried (hub closed with 1011)", fx);
            }
        }
        self.awaiting.clear();
        self.last_sent = None;
        self.ping_was_last = false;
        self.resend = None;
        if let Some(slot) = &mut self.slot {
            slot.needs_reconcile = true;
            slot.report_sent_generation = None;
        }
        let drawn = backoff(
            self.reconnect_attempt,
            self.last_backoff,
            &self.settings.backoff,
            self.jitter.next_unit(),
        );
        self.last_backoff = drawn;
        let mut delay = drawn;
        if let Some(cooldown) = close_reason.and_then(parse_retry_in) {
            delay = delay.max(cooldown);
        }
        self.reconnect_attempt = self.reconnect_attempt.saturating_add(1);
        log::warn!("disconnected from hub: {reason}; reconnecting in {} ms", delay.as_millis());
        fx.push(record(
            "disconnected",
            json!({ "reason": reason, "close_code": close_code, "reconnect_in_ms": delay.as_millis() as u64 }),
        ));
        self.conn = Conn::Backoff { retry_at: now + delay };
    }

    /// We give up on the live connection (heartbeat, identify timeout, auth).
    fn drop_connection(&mut self, reason: &str, now: Instant, fx: &mut Vec<Effect>) {
        if let Some(conn_id) = self.live_conn_id() {
            fx.push(Effect::Close { conn_id });
            self.on_connection_lost(reason, None, None, now, fx);
        }
    }

    fn send(&mut self, text: String, awaiting: Option<Awaiting>, fx: &mut Vec<Effect>) {
        let Some(conn_id) = self.live_conn_id() else {
            return;
        };
        if let Some(entry) = &awaiting {
            self.awaiting.push_back(entry.clone());
        }
        self.last_sent = Some(Resendable { text: text.clone(), awaiting });
        self.ping_was_last = false;
        fx.push(Effect::Send { conn_id, text });
    }

    fn send_expecting(
        &mut self,
        text: String,
        kind: ReplyKind,
        task_id: &str,
        generation: u64,
        fx: &mut Vec<Effect>,
    ) {
        let entry = Awaiting { kind, task_id: task_id.to_owned(), generation };
        self.send(text, Some(entry), fx);
    }

    /// Removes and returns the oldest awaiting entry of `kind`.
    fn take_awaiting(&mut self, kinds: &[ReplyKind]) -> Option<Awaiting> {
        let index = self.awaiting.iter().position(|a| kinds.contains(&a.kind))?;
        self.awaiting.remove(index)
    }

    // ----- frames -----------------------------------------------------------

    fn on_frame(&mut self, text: &str, now: Instant, wall_ms: u64, fx: &mut Vec<Effect>) {
        let incoming = match protocol::parse(text) {
            Ok(incoming) => incoming,
            Err(e) => {
                log::warn!("ignoring a frame from the hub ({} bytes): {e}", text.len());
                return;
            }
        };
        log::debug!("hub frame: {incoming:?}");
        match incoming {
            Incoming::Identified => self.on_identified(now, fx),
            Incoming::Error(error) => self.on_error(&error, now, fx),
            Incoming::Pong => {
                if let Conn::Ready { pong_deadline, .. } = &mut self.conn {
                    *pong_deadline = None;
                }
            }
            Incoming::TaskAssign(assign) => self.on_assign(assign, now, wall_ms, fx),
            Incoming::TaskAck { task_id, status } => self.on_ack(&task_id, &status, fx),
            Incoming::TaskContinue { task_id, generation } => {
                self.take_awaiting(&[ReplyKind::Recovering]);
                self.on_continue(&task_id, generation, now, fx);
            }
            Incoming::TaskReassign { task_id } => {
                self.take_awaiting(&[ReplyKind::Recovering]);
                self.on_reassign(&task_id, fx);
            }
            Incoming::StateReportAck { task_id, action } => {
                self.take_awaiting(&[ReplyKind::StateReport]);
                if action == "abort" && self.held_task_id() == Some(task_id.as_str()) {
                    log::info!("hub answered state_report with abort for {task_id}; dropping it");
                    self.drop_task("aborted by hub (state_report_ack)", fx);
                }
            }
            Incoming::TaskCancelled { task_id } => {
                if self.held_task_id() == Some(task_id.as_str()) {
                    log::info!("task {task_id} cancelled by hub; stopping it");
                    self.drop_task("cancelled by hub", fx);
                } else {
                    log::debug!("task_cancelled for {task_id}, which we do not hold");
                }
            }
            Incoming::RestartSidecar { reason } => {
                log::info!("hub asked us to restart: {reason}");
                self.shut_down("restart requested by hub", fx);
            }
            Incoming::RateLimited { retry_after_ms } => self.on_rate_limited(retry_after_ms, now),
            Incoming::RateLimitWarning => log::info!("hub warns that we approach its rate limit"),
            Incoming::Ignored { kind } => log::debug!("ignoring hub frame of type {kind}"),
        }
    }

    fn on_identified(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let Conn::Identifying { conn_id, .. } = self.conn else {
            log::debug!("unexpected identified frame");
            return;
        };
        self.conn = Conn::Ready {
            conn_id,
            next_ping_at: now + self.settings.heartbeat_interval,
            pong_deadline: None,
        };
        self.reconnect_attempt = 0;
        self.last_backoff = Duration::ZERO;
        log::info!("identified with hub as {}", self.settings.agent_id);
        fx.push(record("identified", json!({})));
        let Some(slot) = &mut self.slot else { return };
        // After any (re)connect the hub may have taken the task back: ask
        // before reporting anything about it.
        slot.needs_reconcile = true;
        slot.readopted_since_recovering = false;
        let r = slot.record.clone();
        log::info!("asking the hub about task {} (generation {})", r.task_id, r.generation);
        fx.push(record("recovering_sent", task_fields(&r)));
        let text = protocol::out_task_recovering(&r.task_id, &r.description, &r.metadata, &r.status);
        self.send_expecting(text, ReplyKind::Recovering, &r.task_id, r.generation, fx);
        if self.settings.send_state_report {
            let text = protocol::out_state_report(&r.task_id, r.generation, &r.status, r.assigned_at);
            self.send_expecting(text, ReplyKind::StateReport, &r.task_id, r.generation, fx);
        }
    }

    fn on_error(&mut self, error: &str, now: Instant, fx: &mut Vec<Effect>) {
        match ErrorKind::of(error) {
            ErrorKind::Auth => {
                if matches!(self.conn, Conn::Identifying { .. }) {
                    log::error!(
                        "the hub refused identify for agent {}: {error} (check agent_id and token in the config)",
                        self.settings.agent_id
                    );
                    fx.push(record("auth_failed", json!({ "error": error })));
                    self.drop_connection(&format!("identify refused: {error}"), now, fx);
                } else {
                    log::warn!("hub error: {error}");
                }
            }
            ErrorKind::CompleteFailed(why) => match self.take_awaiting(&[ReplyKind::Complete]) {
                Some(entry) => self.on_report_refused(&entry, &why, fx),
                None => log::warn!("hub error {error:?} answers no task_complete we sent"),
            },
            ErrorKind::FailFailed(why) => match self.take_awaiting(&[ReplyKind::Failed]) {
                Some(entry) => self.on_report_refused(&entry, &why, fx),
                None => log::warn!("hub error {error:?} answers no task_failed we sent"),
            },
            ErrorKind::UnknownMessageType => {
                let answered = self.take_awaiting(&[ReplyKind::Unhandled, ReplyKind::StateReport]);
                log::debug!("hub has no handler for a frame we sent ({answered:?})");
            }
            ErrorKind::NotIdentified => log::warn!("hub says we are not identified"),
            ErrorKind::Other => log::warn!("hub error: {error}"),
        }
    }

    fn on_rate_limited(&mut self, retry_after_ms: u64, now: Instant) {
        let retry_after = Duration::from_millis(retry_after_ms);
        if self.ping_was_last {
            // A dropped ping gets no pong: that is not a dead connection.
            if let Conn::Ready { next_ping_at, pong_deadline, .. } = &mut self.conn {
                log::warn!("hub rate-limited our ping; pinging again in {retry_after_ms} ms");
                *pong_deadline = None;
                *next_ping_at = now + retry_after;
            }
            self.ping_was_last = false;
            return;
        }
        // "The last frame was dropped: resend after N ms" (PROTOCOL.md
        // section 7). It will get no other answer, so it no longer awaits one.
        let Some(dropped) = self.last_sent.take() else {
            log::warn!("hub rate-limited us, but we sent nothing that could be resent");
            return;
        };
        if let Some(entry) = &dropped.awaiting {
            if let Some(index) = self.awaiting.iter().rposition(|a| a == entry) {
                self.awaiting.remove(index);
            }
        }
        log::warn!("hub rate-limited our last frame; resending in {retry_after_ms} ms");
        self.resend = Some((now + retry_after, dropped));
    }

    // ----- tasks: intake ----------------------------------------------------

    fn on_assign(&mut self, assign: TaskAssign, now: Instant, wall_ms: u64, fx: &mut Vec<Effect>) {
        let Some(task_id) = assign.task_id.clone() else {
            log::warn!("refusing a task_assign without a task_id");
            self.reject(None, "invalid task_assign: missing task_id", fx);
            return;
        };
        if !is_valid_task_id(&task_id) {
            let shown: String = task_id.chars().take(64).collect();
            log::warn!("refusing task_assign with an invalid task_id {shown:?}");
            self.reject(Some(&task_id), "invalid task_id", fx);
            return;
        }
        match &mut self.slot {
            Some(slot) if slot.record.task_id == task_id => {
                if assign.generation <= slot.record.generation {
                    log::debug!(
                        "task {task_id} assigned again at generation {}: a resend",
                        assign.generation
                    );
                    self.accept(&task_id, assign.generation, fx);
                    return;
                }
                // The hub hands the same work back at a higher generation
                // (PROTOCOL.md section 5): adopt it, do not wake again.
                log::info!(
                    "task {task_id} handed back at generation {} (was {}); adopting it",
                    assign.generation,
                    slot.record.generation
                );
                slot.record.generation = assign.generation;
                if slot.needs_reconcile {
                    slot.readopted_since_recovering = true;
                }
                fx.push(record("task_readopted", task_fields(&slot.record)));
                let resume = slot.crash_recovered;
                slot.crash_recovered = false;
                fx.push(Effect::Persist(Box::new(self.queue_file())));
                self.accept(&task_id, assign.generation, fx);
                if resume {
                    self.resume_work(now, fx);
                }
                self.try_send_report(fx);
            }
            Some(slot) => {
                log::info!("refusing task {task_id}: busy with {}", slot.record.task_id);
                self.reject(Some(&task_id), "busy", fx);
            }
            None if self.shutting_down => self.reject(Some(&task_id), "busy", fx),
            None => {
                let task = TaskRecord {
                    task_id: task_id.clone(),
                    description: assign.description,
                    metadata: assign.metadata,
                    status: status::ACCEPTED.into(),
                    assigned_at: assign.assigned_at.unwrap_or(wall_ms),
                    generation: assign.generation,
                    wake_attempts: 0,
                    report: None,
                    extra: Map::new(),
                };
                log::info!("accepted task {task_id} (generation {})", task.generation);
                fx.push(record("task_accepted", task_fields(&task)));
                self.slot = Some(Slot::new(task, false, Wake::NotStarted));
                // Persist before acknowledging: the ack promises we hold it.
                fx.push(Effect::Persist(Box::new(self.queue_file())));
                self.accept(&task_id, assign.generation, fx);
                self.resume_work(now, fx);
            }
        }
    }

    fn accept(&mut self, task_id: &str, generation: u64, fx: &mut Vec<Effect>) {
        let text = protocol::out_task_accepted(task_id);
        self.send_expecting(text, ReplyKind::Accepted, task_id, generation, fx);
    }

    fn reject(&mut self, task_id: Option<&str>, reason: &str, fx: &mut Vec<Effect>) {
        fx.push(record("task_rejected", json!({ "task_id": task_id, "reason": reason })));
        let entry =
            Awaiting { kind: ReplyKind::Unhandled, task_id: task_id.unwrap_or("").into(), generation: 0 };
        self.send(protocol::out_task_rejected(task_id, reason), Some(entry), fx);
    }

    /// Starts or resumes work on the held task according to its status: wake
    /// it if it was never woken, otherwise wait for its files.
    fn resume_work(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let has_wake_command = self.settings.has_wake_command;
        let Some(slot) = &mut self.slot else { return };
        if slot.task_deadline.is_none() {
            slot.task_deadline = self.settings.task_timeout.map(|t| now + t);
        }
        if slot.record.report.is_some() {
            return;
        }
        let task_id = slot.record.task_id.clone();
        match slot.record.status.as_str() {
            status::ACCEPTED | status::WAKING if slot.wake == Wake::NotStarted => {
                if has_wake_command {
                    self.start_wake_attempt(1, now, fx);
                } else {
                    log::info!("no wake_command configured: task {task_id} goes straight to working");
                    slot.wake = Wake::Done;
                    slot.record.status = status::WORKING.into();
                    fx.push(Effect::Persist(Box::new(self.queue_file())));
                }
            }
            status::WAKING_CONFIRMATION => {
                slot.confirm_deadline = Some(now + self.settings.confirmation_timeout);
            }
            _ => {}
        }
        fx.push(Effect::ScanResults { task_id });
    }

    // ----- tasks: waking ----------------------------------------------------

    fn start_wake_attempt(&mut self, attempt: u32, now: Instant, fx: &mut Vec<Effect>) {
        let busy = self.wake_running.is_some();
        let Some(slot) = &mut self.slot else { return };
        if busy {
            // The executor is still finishing another attempt (one being
            // cancelled); start as soon as it reports.
            slot.wake = Wake::RetryAt { attempt, at: now };
            return;
        }
        slot.wake = Wake::Running { attempt };
        slot.record.status = status::WAKING.into();
        slot.record.wake_attempts = attempt;
        let r = &slot.record;
        let task_json = json!({
            "task_id": r.task_id,
            "description": r.description,
            "metadata": r.metadata,
            "generation": r.generation,
            "assigned_at": r.assigned_at,
        })
        .to_string();
        let start = WakeStart {
            task_id: r.task_id.clone(),
            generation: r.generation,
            attempt,
            description: r.description.clone(),
            task_json,
        };
        log::info!("waking the agent for task {} (attempt {attempt})", r.task_id);
        fx.push(record("wake_attempt", json!({ "task_id": r.task_id, "attempt": attempt })));
        self.wake_running = Some(r.task_id.clone());
        fx.push(Effect::Persist(Box::new(self.queue_file())));
        fx.push(Effect::StartWake(start));
    }

    fn on_wake_finished(&mut self, outcome: WakeOutcome, now: Instant, fx: &mut Vec<Effect>) {
        if self.wake_running.as_deref() == Some(outcome.task_id.as_str()) {
            self.wake_running = None;
        }
        let (status_word, error) = match &outcome.status {
            WakeStatus::Success => ("success", None),
            WakeStatus::Failed { exit_code: Some(code) } => ("failed", Some(format!("exit code {code}"))),
            WakeStatus::Failed { exit_code: None } => ("failed", Some("killed by a signal".to_string())),
            WakeStatus::TimedOut => ("timeout", Some("timed out".to_string())),
            WakeStatus::SpawnFailed(e) => ("failed", Some(format!("could not start: {e}"))),
            WakeStatus::Cancelled => ("cancelled", None),
        };
        fx.push(record(
            "wake_finished",
            json!({
                "task_id": outcome.task_id,
                "attempt": outcome.attempt,
                "status": status_word,
                "error": error,
                "elapsed_ms": outcome.elapsed.as_millis() as u64,
                "stdout": outcome.stdout_tail,
                "stderr": outcome.stderr_tail,
            }),
        ));
        let Some(slot) = &mut self.slot else { return };
        if slot.record.task_id != outcome.task_id
            || slot.wake != (Wake::Running { attempt: outcome.attempt })
            || outcome.status == WakeStatus::Cancelled
        {
            return;
        }
        if self.settings.send_wake_result && status_word != "cancelled" {
            let text =
                protocol::out_wake_result(&outcome.task_id, status_word, outcome.attempt, error.as_deref());
            self.send_expecting(text, ReplyKind::Unhandled, &outcome.task_id, 0, fx);
        }
        let Some(slot) = &mut self.slot else { return };
        if outcome.status == WakeStatus::Success {
            slot.wake = Wake::Done;
            if slot.record.report.is_none() {
                if slot.started_seen {
                    slot.record.status = status::WORKING.into();
                } else {
                    slot.record.status = status::WAKING_CONFIRMATION.into();
                    slot.confirm_deadline = Some(now + self.settings.confirmation_timeout);
                }
                log::info!("agent woken for task {} (now {})", outcome.task_id, slot.record.status);
                fx.push(Effect::Persist(Box::new(self.queue_file())));
                fx.push(Effect::ScanResults { task_id: outcome.task_id });
            }
            return;
        }
        let error = error.unwrap_or_default();
        let attempt = outcome.attempt;
        if slot.record.report.is_some() {
            slot.wake = Wake::Done;
        } else if let Some(delay) = self.settings.wake_retry_delays.get(attempt as usize - 1) {
            log::warn!(
                "wake attempt {attempt} for task {} failed ({error}); retrying in {} ms",
                outcome.task_id,
                delay.as_millis()
            );
            slot.wake = Wake::RetryAt { attempt: attempt + 1, at: now + *delay };
        } else {
            log::error!("wake command failed {attempt} times for task {}; giving up", outcome.task_id);
            slot.wake = Wake::Done;
            let reason = format!("wake_failed: wake command failed after {attempt} attempts (last: {error})");
            self.set_outcome(Report::Failed { reason }, fx);
        }
    }

    // ----- tasks: results ---------------------------------------------------

    fn on_files(&mut self, files: TaskFiles, now: Instant, fx: &mut Vec<Effect>) {
        let settle = self.settings.result_settle;
        let Some(slot) = &mut self.slot else { return };
        if slot.record.task_id != files.task_id || slot.record.report.is_some() {
            return;
        }
        let task_id = files.task_id;
        if files.started && !slot.started_seen {
            slot.started_seen = true;
            log::info!("agent confirmed task {task_id}");
            fx.push(record("confirmed", json!({ "task_id": task_id })));
            if slot.record.status == status::WAKING_CONFIRMATION {
                slot.record.status = status::WORKING.into();
                slot.confirm_deadline = None;
                fx.push(Effect::Persist(Box::new(self.queue_file())));
            }
        }
        let Some(slot) = &mut self.slot else { return };
        if let ReadResult::Parsed(value) = &files.progress {
            match parse_progress(value) {
                Some(progress) => {
                    if slot.progress.last_value.as_ref() != Some(&progress) {
                        slot.progress.pending = Some(progress);
                    }
                }
                None => log::debug!("ignoring a progress file for {task_id} without a 0..100 `progress`"),
            }
        }
        match files.result {
            ReadResult::Missing => slot.result_unparseable_since = None,
            ReadResult::Parsed(result) => {
                slot.result_unparseable_since = None;
                slot.rescan_at = None;
                let report = report_from_result(result);
                self.set_outcome(report, fx);
            }
            ReadResult::TooLarge { len } => {
                log::warn!("result file of task {task_id} is too large ({len} bytes)");
                self.set_outcome(Report::Failed { reason: "result_too_large".into() }, fx);
            }
            ReadResult::Unparseable { len, error } => {
                // It may be caught mid-write. Look again shortly (a watcher
                // event usually comes first); give up once it has not
                // parsed for `result_settle`.
                let since = *slot.result_unparseable_since.get_or_insert(now);
                if now.duration_since(since) >= settle {
                    log::warn!("result file of task {task_id} does not parse ({len} bytes): {error}");
                    self.set_outcome(Report::Failed { reason: "result_parse_error".into() }, fx);
                } else {
                    let step = (settle / 8).max(Duration::from_millis(10));
                    slot.rescan_at = Some((now + step).min(since + settle));
                }
            }
        }
    }

    /// Records the outcome durably, then reports it when allowed.
    fn set_outcome(&mut self, report: Report, fx: &mut Vec<Effect>) {
        let Some(slot) = &mut self.slot else { return };
        if slot.record.report.is_some() {
            return;
        }
        let (event, detail) = match &report {
            Report::Complete { .. } => ("result_received", json!("success")),
            Report::Failed { reason } => ("task_failed_here", json!(reason)),
        };
        log::info!("task {} finished: {}", slot.record.task_id, detail);
        fx.push(record(event, json!({ "task_id": slot.record.task_id, "generation": slot.record.generation, "outcome": detail })));
        slot.record.report = Some(report);
        slot.confirm_deadline = None;
        slot.task_deadline = None;
        slot.rescan_at = None;
        if let Wake::RetryAt { .. } | Wake::NotStarted = slot.wake {
            slot.wake = Wake::Done;
        }
        fx.push(Effect::Persist(Box::new(self.queue_file())));
        self.try_send_report(fx);
    }

    fn try_send_report(&mut self, fx: &mut Vec<Effect>) {
        if !self.is_ready() {
            return;
        }
        let Some(slot) = &mut self.slot else { return };
        let Some(report) = &slot.record.report else {
            return;
        };
        if slot.needs_reconcile || slot.report_sent_generation.is_some() {
            return;
        }
        let (task_id, generation) = (slot.record.task_id.clone(), slot.record.generation);
        let (text, kind, frame_type) = match report {
            Report::Complete { result } => (
                protocol::out_task_complete(&task_id, generation, result),
                ReplyKind::Complete,
                "task_complete",
            ),
            Report::Failed { reason } => {
                (protocol::out_task_failed(&task_id, generation, reason), ReplyKind::Failed, "task_failed")
            }
        };
        slot.report_sent_generation = Some(generation);
        log::info!("reporting task {task_id} (generation {generation})");
        fx.push(record(
            "report_sent",
            json!({ "task_id": task_id, "generation": generation, "type": frame_type }),
        ));
        self.send_expecting(text, kind, &task_id, generation, fx);
    }

    fn on_ack(&mut self, task_id: &str, ack_status: &str, fx: &mut Vec<Effect>) {
        let kind = match ack_status {
            "accepted" => ReplyKind::Accepted,
            "complete" => ReplyKind::Complete,
            "retried" | "dead_letter" => ReplyKind::Failed,
            other => {
                log::warn!("task_ack for {task_id} with unknown status {other:?}");
                return;
            }
        };
        let Some(entry) = self.take_awaiting(&[kind]) else {
            log::debug!("task_ack {ack_status} for {task_id} answers nothing we sent");
            return;
        };
        if kind != ReplyKind::Accepted {
            self.settle(&entry, ack_status, fx);
        }
    }

    fn on_report_refused(&mut self, entry: &Awaiting, why: &str, fx: &mut Vec<Effect>) {
        let Some(slot) = &mut self.slot else { return };
        if slot.record.task_id == entry.task_id && entry.generation < slot.record.generation {
            // We adopted a newer generation while this report was in flight;
            // the refusal is of the old one. Report again under the new one.
            log::info!(
                "report of {} under old generation {} refused ({why}); resending",
                entry.task_id,
                entry.generation
            );
            slot.report_sent_generation = None;
            self.try_send_report(fx);
            return;
        }
        if protocol::is_final_refusal(why) {
            log::warn!("hub refused the report of task {} ({why}); dropping it", entry.task_id);
            self.settle(entry, &format!("refused: {why}"), fx);
        } else {
            log::warn!(
                "hub refused the report of task {} ({why}); will resend after reconnecting",
                entry.task_id
            );
        }
    }

    /// The hub has answered the report in `entry` for good: forget the task.
    fn settle(&mut self, entry: &Awaiting, how: &str, fx: &mut Vec<Effect>) {
        let Some(slot) = &self.slot else { return };
        if slot.record.task_id != entry.task_id || slot.record.report.is_none() {
            log::debug!("settlement of {} for a task we no longer hold", entry.task_id);
            return;
        }
        log::info!("report of task {} settled: {how}", entry.task_id);
        fx.push(record(
            "report_settled",
            json!({ "task_id": entry.task_id, "generation": entry.generation, "how": how }),
        ));
        self.forget_task(fx);
    }

    fn on_continue(&mut self, task_id: &str, generation: Option<u64>, now: Instant, fx: &mut Vec<Effect>) {
        let Some(slot) = &mut self.slot else { return };
        if slot.record.task_id != task_id {
            log::debug!("task_continue for {task_id}, which we do not hold");
            return;
        }
        if let Some(generation) = generation {
            slot.record.generation = slot.record.generation.max(generation);
        }
        log::info!("hub says task {task_id} is still ours (generation {})", slot.record.generation);
        fx.push(record("task_continued", task_fields(&slot.record)));
        slot.needs_reconcile = false;
        let resume = slot.crash_recovered;
        slot.crash_recovered = false;
        fx.push(Effect::Persist(Box::new(self.queue_file())));
        if resume {
            self.resume_work(now, fx);
        }
        self.try_send_report(fx);
        self.flush_progress(now, fx);
    }

    fn on_reassign(&mut self, task_id: &str, fx: &mut Vec<Effect>) {
        let Some(slot) = &mut self.slot else { return };
        if slot.record.task_id != task_id {
            log::debug!("task_reassign for {task_id}, which we do not hold");
            return;
        }
        if slot.readopted_since_recovering {
            log::info!("ignoring task_reassign for {task_id}: the hub handed it back since");
            slot.needs_reconcile = false;
            self.try_send_report(fx);
            return;
        }
        if let Some(report) = &slot.record.report {
            log::warn!("task {task_id} was taken back by the hub; its result is withheld (kept in the lifecycle log)");
            fx.push(record(
                "result_withheld",
                json!({ "task_id": task_id, "generation": slot.record.generation, "report": report }),
            ));
        }
        self.drop_task("taken back by hub (task_reassign)", fx);
    }

    /// Stops working on the held task without reporting anything.
    fn drop_task(&mut self, why: &str, fx: &mut Vec<Effect>) {
        let Some(slot) = &self.slot else { return };
        log::info!("dropping task {}: {why}", slot.record.task_id);
        fx.push(record("task_dropped", json!({ "task_id": slot.record.task_id, "why": why })));
        self.forget_task(fx);
    }

    fn forget_task(&mut self, fx: &mut Vec<Effect>) {
        let Some(slot) = self.slot.take() else { return };
        let task_id = slot.record.task_id;
        if self.wake_running.as_deref() == Some(task_id.as_str()) {
            fx.push(Effect::CancelWake { task_id: task_id.clone() });
        }
        fx.push(Effect::Persist(Box::new(self.queue_file())));
        fx.push(Effect::RemoveTaskFiles { task_id });
    }

    fn flush_progress(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if !self.is_ready() {
            return;
        }
        let interval = self.settings.progress_interval;
        let Some(slot) = &mut self.slot else { return };
        if slot.needs_reconcile || slot.record.report.is_some() {
            return;
        }
        if let Some(last) = slot.progress.last_sent_at {
            if now < last + interval {
                return;
            }
        }
        let Some((progress, message)) = slot.progress.pending.take() else {
            return;
        };
        slot.progress.last_sent_at = Some(now);
        slot.progress.last_value = Some((progress, message.clone()));
        let text = protocol::out_task_progress(&slot.record.task_id, progress, message.as_deref());
        self.send(text, None, fx);
    }

    // ----- time -------------------------------------------------------------

    fn on_tick(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        match self.conn.clone() {
            Conn::Backoff { retry_at } if now >= retry_at => self.connect(fx),
            Conn::Identifying { deadline, .. } if now >= deadline => {
                let ms = self.settings.identify_timeout.as_millis();
                self.drop_connection(&format!("the hub did not answer identify within {ms} ms"), now, fx);
            }
            Conn::Ready { pong_deadline: Some(deadline), .. } if now >= deadline => {
                let ms = self.settings.pong_timeout.as_millis();
                self.drop_connection(
                    &format!("no pong within {ms} ms; the connection is presumed dead"),
                    now,
                    fx,
                );
            }
            Conn::Ready { conn_id, next_ping_at, pong_deadline: None } if now >= next_ping_at => {
                fx.push(Effect::Send { conn_id, text: protocol::out_ping() });
                self.ping_was_last = true;
                self.conn = Conn::Ready {
                    conn_id,
                    next_ping_at: now + self.settings.heartbeat_interval,
                    pong_deadline: Some(now + self.settings.pong_timeout),
                };
            }
            _ => {}
        }
        if self.is_ready() {
            if let Some((at, _)) = &self.resend {
                if now >= *at {
                    let (_, frame) = self.resend.take().expect("checked just above");
                    self.send(frame.text, frame.awaiting, fx);
                }
            }
        }
        let idle_executor = self.wake_running.is_none();
        let Some(slot) = &mut self.slot else { return };
        if let Wake::RetryAt { attempt, at } = slot.wake {
            if now >= at && idle_executor && slot.record.report.is_none() {
                self.start_wake_attempt(attempt, now, fx);
            }
        }
        let Some(slot) = &mut self.slot else { return };
        if slot.rescan_at.is_some_and(|at| now >= at) {
            slot.rescan_at = None;
            fx.push(Effect::ScanResults { task_id: slot.record.task_id.clone() });
        }
        if slot.confirm_deadline.is_some_and(|at| now >= at) {
            log::warn!("the agent did not confirm task {} in time", slot.record.task_id);
            self.set_outcome(Report::Failed { reason: "confirmation_timeout".into() }, fx);
        }
        let Some(slot) = &mut self.slot else { return };
        if slot.task_deadline.is_some_and(|at| now >= at) {
            log::warn!("task {} produced no result in time", slot.record.task_id);
            if self.wake_running.as_deref() == Some(slot.record.task_id.as_str()) {
                fx.push(Effect::CancelWake { task_id: slot.record.task_id.clone() });
            }
            self.set_outcome(Report::Failed { reason: "task_timeout".into() }, fx);
        }
        self.flush_progress(now, fx);
    }

    fn shut_down(&mut self, why: &str, fx: &mut Vec<Effect>) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        log::info!("shutting down: {why}");
        fx.push(record("shutdown", json!({ "why": why })));
        if let Some(task_id) = self.wake_running.take() {
            fx.push(Effect::CancelWake { task_id });
        }
        if let Some(slot) = &mut self.slot {
            // An attempt cut short by shutdown is not a failed attempt; the
            // next run wakes again once the hub confirms the task.
            if let Wake::Running { .. } = slot.wake {
                slot.wake = Wake::NotStarted;
            }
        }
        fx.push(Effect::Persist(Box::new(self.queue_file())));
        if let Some(conn_id) = self.live_conn_id() {
            fx.push(Effect::Close { conn_id });
        }
        self.conn = Conn::Stopped;
        fx.push(Effect::Exit);
    }
}

impl Slot {
    fn new(record: TaskRecord, crash_recovered: bool, wake: Wake) -> Slot {
        Slot {
            record,
            crash_recovered,
            needs_reconcile: crash_recovered,
            readopted_since_recovering: false,
            wake,
            started_seen: false,
            confirm_deadline: None,
            task_deadline: None,
            result_unparseable_since: None,
            rescan_at: None,
            report_sent_generation: None,
            progress: Progress::default(),
        }
    }
}

fn record(event: &'static str, fields: Value) -> Effect {
    Effect::Record { event, fields }
}

fn task_fields(r: &TaskRecord) -> Value {
    json!({ "task_id": r.task_id, "generation": r.generation, "status": r.status })
}

/// A result file's object as the report the hub gets (PROTOCOL.md section 8):
/// `status: success` is a completion carrying the whole object; anything else
/// is a failure with its `reason` or `error`.
fn report_from_result(result: Value) -> Report {
    if result.get("status").and_then(Value::as_str) == Some("success") {
        return Report::Complete { result };
    }
    let text = |key: &str| result.get(key).and_then(Value::as_str).map(str::to_owned);
    let reason = text("reason").or_else(|| text("error")).unwrap_or_else(|| match result.get("status") {
        Some(status) => format!("agent reported status {status}"),
        None => "agent result has no status".into(),
    });
    Report::Failed { reason }
}

/// `{"progress": 0..=100, "message": "..."}`; the message is cut to 1 KiB.
fn parse_progress(value: &Value) -> Option<(u64, Option<String>)> {
    let progress = value.get("progress")?.as_f64()?;
    if !(0.0..=100.0).contains(&progress) {
        return None;
    }
    let message = value.get("message").and_then(Value::as_str).map(|m| {
        let mut end = m.len().min(1024);
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        m[..end].to_owned()
    });
    Some((progress.round() as u64, message))
}

/// "retry in 30 s" (the hub's 1008 close reason) as a duration.
fn parse_retry_in(reason: &str) -> Option<Duration> {
    let rest = &reason[reason.find("retry in")? + "retry in".len()..];
    let number: String = rest.trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let seconds: f64 = number.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(3600.0)))
}

#[cfg(test)]
mod tests;
