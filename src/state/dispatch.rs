//! The one dispatch: [`State::handle`] hands each input to the stage that
//! owns it (a hub frame by its type, a wake's start and end to `waking.rs`,
//! the results directory's file names and the agent's files to
//! `working.rs`, a tick to every deadline), and what a lost connection or a
//! hub error means.

use std::time::{Duration, Instant};

use serde_json::json;

use super::link::{ReplyKind, Timeout};
use super::{record, Effect, Event, HubEvent, Input, LifecycleEvent, PastFate, ResultsEvent, State};
use crate::protocol::{self, ErrorKind, Incoming, Outgoing, ReportAction};

impl State {
    /// What to do about `input`. Once the core has said `Exit`, nothing: the
    /// shell leaves the loop then, and an input it still hands over (the
    /// files of a read, a wake's outcome) must not start new work.
    pub fn handle(&mut self, input: Input, now: Instant, wall_ms: u64) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.link.is_stopped() {
            say!(fx, Debug, "shutting down: ignoring {input:?}");
            return fx;
        }
        self.now = now;
        self.link.set_now(now);
        match input {
            Input::Event(event) => self.on_event(event, now, wall_ms, &mut fx),
            Input::Files(files) => {
                if self.holds(&files.task_id) {
                    self.on_files(files, now, &mut fx);
                }
            }
            Input::Listing(Ok(entries)) => {
                let names = entries.into_iter().map(|(id, kind)| format!("{id}.{}", kind.extension()));
                self.on_result_names(names, true, &mut fx);
            }
            Input::Listing(Err(error)) => {
                say!(fx, Warn, "cannot list the results directory: {error}");
                // Look at the held task's files directly instead.
                if let Some(task_id) = self.held_task_id() {
                    fx.push(Effect::ReadTaskFiles { task_id: task_id.to_owned() });
                }
            }
            Input::PersistFailed { error, withheld } => {
                // The sends after a failed persist would acknowledge something
                // the disk does not record, and a settled task's files may
                // only go once the disk records it settled: withhold those,
                // do the rest (the next start removes the files).
                say!(fx, Error, "cannot write queue.json: {error}");
                fx.push(record(LifecycleEvent::PersistFailed, json!({ "error": error })));
                for effect in withheld {
                    match effect {
                        Effect::Send { .. } => {
                            say!(fx, Error, "not sending a frame: queue.json could not be written")
                        }
                        Effect::RemoveTaskFiles { task_id } | Effect::DiscardTaskFiles { task_id } => {
                            say!(fx, Error, "keeping the files of {task_id}: queue.json could not be written")
                        }
                        // A wake command's release goes ahead, as a
                        // wake's start does: neither tells the hub anything.
                        // (Unrecorded, a crash now could leave it running
                        // unseen; a disk that refuses queue.json has already
                        // voided that promise for everything else.)
                        other => fx.push(other),
                    }
                }
            }
            Input::UpdateFailed { error } => {
                // The hub still wants a restart: the old way, by exiting.
                say!(
                    fx,
                    Error,
                    "cannot start update_command ({error}); exiting so that the supervisor restarts us"
                );
                self.shut_down("restart requested by hub (update_command failed to start)", &mut fx);
            }
            Input::AgentEnded { task_id } => self.on_agent_ended(&task_id, &mut fx),
            Input::Tick => {}
        }
        if !self.link.is_stopped() {
            self.on_tick(now, &mut fx);
        }
        fx
    }

    fn on_event(&mut self, event: Event, now: Instant, wall_ms: u64, fx: &mut Vec<Effect>) {
        match event {
            Event::Hub(HubEvent::Connected { conn_id }) => {
                if self.link.on_connected(conn_id, now) {
                    let s = &self.settings;
                    say!(fx, Info, "connected to hub; identifying as {}", s.agent_id);
                    fx.push(record(LifecycleEvent::Connected, json!({})));
                    let frame = Outgoing::Identify {
                        agent_id: s.agent_id.clone(),
                        token: s.token.clone(),
                        name: s.name.clone(),
                        capabilities: s.capabilities.clone(),
                    };
                    fx.push(Effect::Send { conn_id, frame });
                }
            }
            Event::Hub(HubEvent::Frame { conn_id, text }) => {
                if self.link.live_conn_id() == Some(conn_id) {
                    self.on_frame(&text, now, wall_ms, fx);
                }
            }
            Event::Hub(HubEvent::Disconnected { conn_id, reason, close_code, close_reason }) => {
                if self.link.live_conn_id() == Some(conn_id) {
                    self.on_connection_lost(&reason, close_code, close_reason.as_deref(), now, fx);
                }
            }
            Event::WakeStarted(started) => self.on_wake_started(started, fx),
            Event::Wake(outcome) => self.on_wake_finished(outcome, now, fx),
            Event::Results(ResultsEvent::Changed(paths)) => {
                let names =
                    paths.iter().filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned));
                self.on_result_names(names.collect::<Vec<_>>(), false, fx);
            }
            Event::Results(ResultsEvent::Rescan) => fx.push(Effect::ListResults),
            Event::Shutdown => self.shut_down("shutdown requested", fx),
            Event::UpdateInstalled { version } => {
                self.shut_down(&format!("restart requested by hub (version {version} installed)"), fx)
            }
        }
    }

    fn on_tick(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        match self.link.tick(now, fx) {
            Some(Timeout::Connect) => {
                let ms = (self.link.identify_timeout() * 2).as_millis();
                self.drop_connection(
                    &format!("the connection attempt reported nothing within {ms} ms"),
                    now,
                    fx,
                );
            }
            Some(Timeout::Identify) => {
                let ms = self.link.identify_timeout().as_millis();
                self.drop_connection(&format!("the hub did not answer identify within {ms} ms"), now, fx);
            }
            Some(Timeout::Reply(kind)) => {
                let ms = self.settings.link.reply_timeout.as_millis();
                self.drop_connection(&format!("the hub did not answer {kind} within {ms} ms"), now, fx);
            }
            Some(Timeout::Pong) => {
                let ms = self.link.pong_timeout().as_millis();
                self.drop_connection(
                    &format!("no pong within {ms} ms; the connection is presumed dead"),
                    now,
                    fx,
                );
            }
            None => {}
        }
        let timed_out = self
            .task
            .as_ref()
            .filter(|t| t.live().is_some_and(|live| live.timeout_at.is_some_and(|at| now >= at)));
        if let Some(task_id) = timed_out.map(|t| t.id.clone()) {
            self.stop_agent(&task_id, Some("task_timeout"), fx);
        }
        if self.task.is_some() {
            self.on_retry_tick(now, fx);
            self.on_task_tick(now, fx);
        }
        self.on_past_tick(now, fx);
        self.take_up_busy_pushes(now, fx);
        self.check_agent_outside(now, fx);
        match (self.settings.rescan_results.then_some(self.settings.results_poll), &self.task) {
            (Some(poll), Some(_)) => {
                if self.next_poll_at.is_some_and(|at| now >= at) {
                    self.next_poll_at = None;
                    fx.push(Effect::ListResults);
                }
                self.next_poll_at.get_or_insert(now + poll);
            }
            _ => self.next_poll_at = None,
        }
    }

    // ----- connection -------------------------------------------------------

    /// The connection is gone, by the hub's doing or ours.
    pub(super) fn on_connection_lost(
        &mut self,
        reason: &str,
        close_code: Option<u16>,
        close_reason: Option<&str>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        // Old hubs crash on task_failed and close with 1011 instead of
        // answering; they re-queue the task (docs/protocol.md 6.4). Resending
        // would crash them again, so the report counts as settled ("retried").
        if close_code == Some(1011) {
            if let Some(entry) = self.link.find_awaiting(ReplyKind::Failed).cloned() {
                say!(
                    fx,
                    Warn,
                    "hub closed with 1011 after task_failed for {}; treating the report as settled (retried)",
                    entry.task_id
                );
                self.settle(&entry, "retried (hub closed with 1011)", fx);
            }
        }
        let delay = self.link.on_lost(close_reason.and_then(parse_retry_in), now, fx);
        if let Some(task) = &mut self.task {
            task.on_link_lost();
        }
        say!(fx, Warn, "disconnected from hub: {reason}; reconnecting in {} ms", delay.as_millis());
        fx.push(record(
            LifecycleEvent::Disconnected,
            json!({ "reason": reason, "close_code": close_code, "reconnect_in_ms": delay.as_millis() as u64 }),
        ));
    }

    /// We give up on the live connection (heartbeat, identify timeout, auth).
    pub(super) fn drop_connection(&mut self, reason: &str, now: Instant, fx: &mut Vec<Effect>) {
        if let Some(conn_id) = self.link.live_conn_id() {
            fx.push(Effect::Close { conn_id });
            self.on_connection_lost(reason, None, None, now, fx);
        }
    }

    // ----- frames -----------------------------------------------------------

    pub(super) fn on_frame(&mut self, text: &str, now: Instant, wall_ms: u64, fx: &mut Vec<Effect>) {
        let incoming = match protocol::parse(text) {
            Ok(incoming) => incoming,
            Err(e) => {
                say!(fx, Warn, "ignoring a frame from the hub ({} bytes): {e}", text.len());
                return;
            }
        };
        say!(fx, Debug, "hub frame: {incoming:?}");
        match incoming {
            Incoming::Identified => self.on_identified(now, fx),
            Incoming::Error(error) => self.on_error(&error, now, fx),
            Incoming::ValidationFailed { message_type, kind, unknown_type, errors } => {
                self.mark_newer_hub();
                say!(fx, Warn, "the hub refused our {message_type} (validation_failed): {errors}");
                let answered = kind.and_then(|kind| self.link.refused(kind, unknown_type, fx));
                if let Some(entry) =
                    answered.filter(|a| matches!(a.kind, ReplyKind::Complete | ReplyKind::Failed))
                {
                    // Everything we send is cut to the hub's limits, so this
                    // report can never pass: settle it, keeping it whole in
                    // the lifecycle log, rather than wait for an answer that
                    // will not come.
                    self.on_report_invalid(&entry, &errors, fx);
                }
            }
            Incoming::Pong => self.link.on_pong(),
            Incoming::TaskAssign(assign) => self.on_assign(assign, now, wall_ms, fx),
            Incoming::TaskAck { task_id, status } => self.on_ack(&task_id, &status, fx),
            Incoming::TaskContinue { task_id, generation } => {
                self.link.take_awaiting(&[ReplyKind::Recovering]);
                if self.holds(&task_id) {
                    self.on_continue(generation, now, fx);
                } else {
                    say!(fx, Debug, "task_continue for {task_id}, which we do not hold");
                }
            }
            Incoming::TaskReassign { task_id } => {
                self.link.take_awaiting(&[ReplyKind::Recovering]);
                self.on_reassign(&task_id, fx);
            }
            Incoming::StateReportAck { task_id, action } => {
                self.mark_newer_hub();
                // The ack names no generation: it answers the oldest report
                // in flight, and applies only if that report was of the
                // generation we hold now.
                let Some(entry) = self.link.take_awaiting(&[ReplyKind::StateReport]) else {
                    say!(fx, Debug, "state_report_ack for {task_id} answers no state_report we sent");
                    return;
                };
                let current = self
                    .task
                    .as_ref()
                    .is_some_and(|t| t.id == entry.task_id && t.generation == entry.generation);
                if action != ReportAction::Abort || entry.task_id != task_id {
                    return;
                }
                if current {
                    say!(fx, Info, "hub answered state_report with abort for {task_id}; dropping it");
                    self.drop_task("aborted by hub (state_report_ack)", PastFate::TakenBack, fx);
                } else {
                    say!(
                        fx, Info,
                        "ignoring state_report_ack abort for {task_id}: it answers generation {}, we hold a newer one",
                        entry.generation
                    );
                }
            }
            Incoming::TaskCancelled { task_id } => {
                if self.held_task_id() == Some(task_id.as_str()) {
                    say!(fx, Info, "task {task_id} cancelled by hub; stopping it");
                    // Its agent learns it from the marker; `let_go` ends
                    // its process.
                    fx.push(Effect::MarkCancelled {
                        task_id: task_id.clone(),
                        reason: "task_cancelled".into(),
                    });
                    if let Some(task) = self.task.as_mut() {
                        task.cancel_marked = true;
                    }
                    self.drop_task("cancelled by hub", PastFate::Settled, fx);
                } else if self.forget_busy_push(&task_id) {
                    say!(
                        fx,
                        Info,
                        "task {task_id}, pushed while we were busy, cancelled by hub; forgetting it"
                    );
                } else {
                    say!(fx, Debug, "task_cancelled for {task_id}, which we do not hold");
                }
            }
            Incoming::RestartSidecar { reason } if self.settings.has_update_command => {
                // Stay connected while the update builds; it restarts us.
                say!(fx, Info, "hub asked us to restart: {reason}; starting the update (update_url or update_command), which restarts us once the new binary is ready");
                fx.push(record(LifecycleEvent::UpdateStarted, json!({ "reason": reason })));
                fx.push(Effect::StartUpdate);
            }
            Incoming::RestartSidecar { reason } => {
                say!(fx, Info, "hub asked us to restart: {reason}");
                self.shut_down("restart requested by hub", fx);
            }
            Incoming::RateLimited { retry_after_ms, tier } => {
                self.mark_newer_hub();
                self.link.on_rate_limited(Duration::from_millis(retry_after_ms), tier.as_deref(), now, fx);
                // The frames taken back may hold a report sent before its task
                // was let go of, or before the hub gave the held task a newer
                // generation, or progress about a task that has an outcome.
                for task_id in self.kept.past.ids().map(str::to_owned).collect::<Vec<_>>() {
                    super::reporting::withdraw_stale_reports(&mut self.link, &task_id, None, fx);
                    self.link.forget_info(&task_id);
                }
                if let Some(task) = &mut self.task {
                    if task.report().is_some() {
                        self.link.forget_info(&task.id);
                    }
                    let below = Some(task.generation);
                    if super::reporting::withdraw_stale_reports(&mut self.link, &task.id, below, fx) {
                        task.report_withdrawn();
                        self.try_send_report(fx);
                    }
                }
            }
            Incoming::RateLimitWarning { tier, remaining, capacity } => {
                self.mark_newer_hub();
                self.link.on_rate_limit_warning(tier.as_deref(), remaining, capacity, fx);
            }
            Incoming::Ignored { kind } => say!(fx, Debug, "ignoring hub frame of type {kind}"),
        }
    }

    fn on_identified(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if !self.link.on_identified(now) {
            say!(fx, Debug, "unexpected identified frame");
            return;
        }
        say!(fx, Info, "identified with hub as {}", self.settings.agent_id);
        fx.push(record(LifecycleEvent::Identified, json!({})));
        if self.task.is_some() {
            self.ask_hub_about_task(fx);
        }
    }

    fn on_error(&mut self, error: &str, now: Instant, fx: &mut Vec<Effect>) {
        match ErrorKind::of(error) {
            ErrorKind::Auth => {
                if self.link.is_identifying() {
                    say!(
                        fx, Error,
                        "the hub refused identify for agent {}: {error} (check agent_id and token in the config)",
                        self.settings.agent_id
                    );
                    fx.push(record(LifecycleEvent::AuthFailed, json!({ "error": error })));
                    self.drop_connection(&format!("identify refused: {error}"), now, fx);
                } else {
                    say!(fx, Warn, "hub error: {error}");
                }
            }
            ErrorKind::CompleteFailed(why) => match self.link.take_awaiting(&[ReplyKind::Complete]) {
                Some(entry) => self.on_report_refused(&entry, &why, fx),
                None => say!(fx, Warn, "hub error {error:?} answers no task_complete we sent"),
            },
            ErrorKind::FailFailed(why) => match self.link.take_awaiting(&[ReplyKind::Failed]) {
                Some(entry) => self.on_report_refused(&entry, &why, fx),
                None => say!(fx, Warn, "hub error {error:?} answers no task_failed we sent"),
            },
            ErrorKind::UnknownMessageType => {
                let refused = self.link.unknown_type(&[ReplyKind::Unhandled, ReplyKind::StateReport], fx);
                say!(fx, Debug, "hub has no handler for a frame we sent ({refused:?})");
            }
            ErrorKind::NotIdentified => say!(fx, Warn, "hub says we are not identified"),
            ErrorKind::Other => say!(fx, Warn, "hub error: {error}"),
        }
    }
}

/// "retry in 30 s" (the hub's 1008 close reason) as a duration.
pub(super) fn parse_retry_in(reason: &str) -> Option<Duration> {
    let rest = &reason[reason.find("retry in")? + "retry in".len()..];
    let number: String = rest.trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let seconds: f64 = number.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(3600.0)))
}
