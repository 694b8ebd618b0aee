//! The held task as a type: its [`Stage`] says whether it is at work (its
//! [`Phase`], the deadlines that can end it, its progress) or has an outcome
//! owed to the hub. The stage is what `status` in queue.json is derived
//! from, so the two cannot disagree, and per-phase data lives in its phase:
//! whether the agent confirmed is carried by the phases where it can go
//! either way ([`Task::confirmed`]). [`HubSync`] says what the hub is known
//! to think of the task, and [`Task::deadline`] when it next needs a tick.
//! Its transitions are in the stages: `intake.rs`, `waking.rs`,
//! `working.rs`, `reporting.rs`, and (taken over, let go of) `recovery.rs`
//! and `past.rs`.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{Report, TaskRecord, TaskStatus};
use crate::protocol::TaskAssign;

/// Where the task is: at work (its [`Phase`] and the deadlines that can
/// end it), or ended with its outcome owed to the hub.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Stage {
    Live(Live),
    /// The outcome is known and persisted: it is owed to the hub. `status` is
    /// where the task stood when it ended (kept in queue.json); `sent` is the
    /// generation of the report in flight on the live connection;
    /// `confirmed`: its agent had confirmed it in this run (see
    /// [`Task::confirmed`]).
    Reporting {
        report: Report,
        status: TaskStatus,
        sent: Option<u64>,
        confirmed: bool,
    },
}

/// A task at work, before its outcome.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Live {
    pub phase: Phase,
    /// `task_timeout_ms` ends the task here.
    pub timeout_at: Option<Instant>,
    /// Its result file did not parse when last read (it may be mid-write).
    pub unparsed: Option<Unparsed>,
    /// What the hub has heard of its progress, and the update owed to it
    /// (with the outcome, progress means nothing to the hub).
    pub progress: Progress,
}

impl Stage {
    /// At work in `phase`, no deadline set yet.
    fn live(phase: Phase) -> Stage {
        Stage::Live(Live { phase, timeout_at: None, unparsed: None, progress: Progress::default() })
    }
}

/// How far the work on a task has come.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Phase {
    /// The hub handed back a task it had taken from us: its files are read
    /// before anything else, and its agent is woken only if it never
    /// confirmed (see `past.rs`). `confirmed`: its `.started` is there.
    Adopting { confirmed: bool },
    /// Not woken in this run. `interrupted`: an attempt was started before
    /// (by an earlier run, or cut short by shutdown), so queue.json says
    /// `waking`. `confirmed`: its `.started` is there (seen while the hub
    /// had not yet said the task is still ours): it is never woken again.
    ToWake { interrupted: bool, confirmed: bool },
    /// Wake attempt `Task::wake_attempts` is running. Its agent has not
    /// confirmed: a `.started` (or, in run mode, the released command) moves
    /// the task to `Working`.
    Waking,
    /// An attempt failed (or the executor was busy); the next one,
    /// `Task::wake_attempts + 1`, starts at `at` (or as soon as the executor
    /// is free). Not confirmed: a `.started` now moves the task to `Working`,
    /// and no further attempt starts.
    WakeRetry { at: Instant },
    /// Woken; the agent must confirm (`.started`) by `deadline`, which moves
    /// the task to `Working`. `None` for a task recovered at start until the
    /// hub says it is still ours.
    Confirming { deadline: Option<Instant> },
    /// The agent works on it (or no wake command is configured).
    /// `confirmed`: its `.started` was seen in this run (not yet, for a task
    /// recovered as working or one without a wake command).
    /// `silent_until`: taken over without a wake, unless its agent shows
    /// life (a new progress value, its result) by then, it fails (see
    /// `past.rs`). `exit_failure`: the agent's process ended with this
    /// failure after confirming: the task fails with it unless a result file
    /// is there.
    Working { confirmed: bool, silent_until: Option<Instant>, exit_failure: Option<String> },
}

impl Phase {
    /// Working, its agent not (yet) seen to confirm, nothing to watch for.
    pub const WORKING: Phase = Phase::Working { confirmed: false, silent_until: None, exit_failure: None };
    /// Working, confirmed by its agent.
    pub const CONFIRMED: Phase = Phase::Working { confirmed: true, silent_until: None, exit_failure: None };
    /// Not woken in this run, nor confirmed.
    pub const fn to_wake(interrupted: bool) -> Phase {
        Phase::ToWake { interrupted, confirmed: false }
    }
}

/// What the hub is known to think of the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HubSync {
    /// Found in queue.json at start (persisted as `recovering`): work is not
    /// resumed and nothing is reported until the hub says it is still ours.
    Recovered,
    /// The hub may have taken it back since the last (re)connect: nothing is
    /// reported until it answers `task_recovering`. `readopted`: it pushed
    /// the task again since we asked, so a `task_reassign` is older news.
    Unconfirmed { readopted: bool },
    /// The hub holds it as ours.
    Confirmed,
}

/// A result file that did not parse (it may be mid-write).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Unparsed {
    pub since: Instant,
    pub rescan_at: Option<Instant>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Progress {
    /// When the hub last heard about the task from us (`task_accepted` or
    /// `task_progress`): the keep-alive counts from here.
    pub touched_at: Option<Instant>,
    pub last_sent_at: Option<Instant>,
    pub last_value: Option<(u64, Option<String>)>,
    pub pending: Option<(u64, Option<String>)>,
}

/// The held task. Beside its [`Stage`] it has only what holds whatever
/// the stage: what the hub gave (id, generation, assignment), the wake
/// attempts started (persisted), what the hub thinks ([`HubSync`], apart
/// from the stage: a reconnect can put any stage in doubt), and whether its
/// cancel marker was written.
#[derive(Debug)]
pub(crate) struct Task {
    pub id: String,
    pub description: String,
    pub metadata: Value,
    pub assigned_at: u64,
    pub generation: u64,
    /// Wake attempts started (queue.json's `wake_attempts`): the running
    /// one while [`Phase::Waking`], the last one after.
    pub wake_attempts: u32,
    /// The other fields of the hub's `task_assign`, for the agent.
    pub assignment: Map<String, Value>,
    /// Fields of the queue.json record we do not know, kept.
    pub extra: Map<String, Value>,
    pub stage: Stage,
    pub sync: HubSync,
    /// Its cancel marker was written (a cancel, its timeout): once let go,
    /// its files stay for `cancel_grace` before they are removed.
    pub cancel_marked: bool,
}

impl Task {
    pub(super) fn accepted(task_id: String, generation: u64, assign: TaskAssign, wall_ms: u64) -> Task {
        let mut assignment = assign.fields;
        for own in ["task_id", "description", "metadata", "generation", "assigned_at"] {
            assignment.remove(own);
        }
        Task {
            assignment,
            id: task_id,
            description: assign.description,
            metadata: assign.metadata,
            assigned_at: assign.assigned_at.unwrap_or(wall_ms),
            generation,
            wake_attempts: 0,
            extra: Map::new(),
            stage: Stage::live(Phase::to_wake(false)),
            sync: HubSync::Confirmed,
            cancel_marked: false,
        }
    }

    /// A task found in queue.json at start.
    pub fn recovered(record: TaskRecord) -> Task {
        let stage = match (record.report, record.status) {
            (Some(report), status) => Stage::Reporting { report, status, sent: None, confirmed: false },
            (None, TaskStatus::Accepted) => Stage::live(Phase::to_wake(false)),
            (None, TaskStatus::Waking) => Stage::live(Phase::to_wake(true)),
            (None, TaskStatus::WakingConfirmation) => Stage::live(Phase::Confirming { deadline: None }),
            (None, TaskStatus::Working) => Stage::live(Phase::WORKING),
        };
        Task {
            id: record.task_id,
            description: record.description,
            metadata: record.metadata,
            assigned_at: record.assigned_at,
            generation: record.generation,
            wake_attempts: record.wake_attempts,
            assignment: record.assignment,
            extra: record.extra,
            stage,
            sync: HubSync::Recovered,
            cancel_marked: false,
        }
    }

    /// The `status` queue.json and the hub get.
    pub fn status(&self) -> TaskStatus {
        let phase = match &self.stage {
            Stage::Live(live) => &live.phase,
            Stage::Reporting { status, .. } => return *status,
        };
        match phase {
            Phase::ToWake { interrupted: false, .. } | Phase::Adopting { .. } => TaskStatus::Accepted,
            Phase::ToWake { interrupted: true, .. } | Phase::Waking | Phase::WakeRetry { .. } => {
                TaskStatus::Waking
            }
            Phase::Confirming { .. } => TaskStatus::WakingConfirmation,
            Phase::Working { .. } => TaskStatus::Working,
        }
    }

    pub fn report(&self) -> Option<&Report> {
        match &self.stage {
            Stage::Reporting { report, .. } => Some(report),
            Stage::Live(_) => None,
        }
    }

    /// At work: its phase and deadlines (`None` once it has an outcome).
    pub fn live(&self) -> Option<&Live> {
        match &self.stage {
            Stage::Live(live) => Some(live),
            Stage::Reporting { .. } => None,
        }
    }

    pub fn live_mut(&mut self) -> Option<&mut Live> {
        match &mut self.stage {
            Stage::Live(live) => Some(live),
            Stage::Reporting { .. } => None,
        }
    }

    /// Its phase while at work.
    pub fn phase(&self) -> Option<&Phase> {
        self.live().map(|live| &live.phase)
    }

    pub fn phase_mut(&mut self) -> Option<&mut Phase> {
        self.live_mut().map(|live| &mut live.phase)
    }

    /// Moves work on to `phase` (nothing once the task has an outcome).
    pub fn set_phase(&mut self, phase: Phase) {
        if let Some(live) = self.live_mut() {
            live.phase = phase;
        }
    }

    /// The outcome is known: the task's work, its deadlines and its
    /// progress end.
    pub fn conclude(&mut self, report: Report) {
        let (status, confirmed) = (self.status(), self.confirmed());
        self.stage = Stage::Reporting { report, status, sent: None, confirmed };
    }

    /// Its agent confirmed it (`.started`, or in run mode its command
    /// released) in this run. Not a field beside the phase: `Waking`,
    /// `WakeRetry` and `Confirming` cannot be confirmed (confirming moves
    /// them on to `Working`); the phases it means something in carry it.
    pub fn confirmed(&self) -> bool {
        match &self.stage {
            Stage::Reporting { confirmed, .. } => *confirmed,
            Stage::Live(live) => match live.phase {
                Phase::Adopting { confirmed }
                | Phase::ToWake { confirmed, .. }
                | Phase::Working { confirmed, .. } => confirmed,
                Phase::Waking | Phase::WakeRetry { .. } | Phase::Confirming { .. } => false,
            },
        }
    }

    /// Its agent has confirmed it. A task not woken in this run stays where
    /// it is, to be taken over without a wake (`begin_work`); a task being
    /// woken, waiting for a retry or for its `.started` is at work now, and
    /// never woken again. `true` if its status changed (queue.json is
    /// due).
    pub fn confirm(&mut self) -> bool {
        let Some(phase) = self.phase_mut() else {
            return false;
        };
        match phase {
            Phase::Adopting { confirmed }
            | Phase::ToWake { confirmed, .. }
            | Phase::Working { confirmed, .. } => {
                *confirmed = true;
                false
            }
            Phase::Waking | Phase::WakeRetry { .. } | Phase::Confirming { .. } => {
                *phase = Phase::CONFIRMED;
                true
            }
        }
    }

    pub fn to_record(&self) -> TaskRecord {
        TaskRecord {
            task_id: self.id.clone(),
            description: self.description.clone(),
            metadata: self.metadata.clone(),
            status: self.status(),
            assigned_at: self.assigned_at,
            generation: self.generation,
            wake_attempts: self.wake_attempts,
            assignment: self.assignment.clone(),
            report: self.report().cloned(),
            extra: self.extra.clone(),
        }
    }

    /// Identifying fields for a lifecycle record.
    pub fn fields(&self) -> Value {
        json!({ "task_id": self.id, "generation": self.generation, "status": self.status().as_str() })
    }

    /// Nothing may be reported until the hub answers `task_recovering`.
    pub fn needs_reconcile(&self) -> bool {
        self.sync != HubSync::Confirmed
    }

    /// Its report, if one was on its way, was taken back before it went out:
    /// it is to be sent again.
    pub fn report_withdrawn(&mut self) {
        if let Stage::Reporting { sent, .. } = &mut self.stage {
            *sent = None;
        }
    }

    /// The connection dropped: the hub may take the task back.
    pub fn on_link_lost(&mut self) {
        self.sync = match self.sync {
            HubSync::Recovered => HubSync::Recovered,
            HubSync::Unconfirmed { readopted } => HubSync::Unconfirmed { readopted },
            HubSync::Confirmed => HubSync::Unconfirmed { readopted: false },
        };
        if let Stage::Reporting { sent, .. } = &mut self.stage {
            *sent = None;
        }
    }

    /// When the task next needs a tick. `executor_idle`: a wake retry can
    /// start; `may_send_progress`: a throttled progress update can go out.
    pub fn deadline(
        &self,
        executor_idle: bool,
        may_send_progress: bool,
        progress_interval: Duration,
        keepalive: Option<Duration>,
    ) -> Option<Instant> {
        let Stage::Live(live) = &self.stage else {
            return None;
        };
        let phase = match live.phase {
            Phase::WakeRetry { at, .. } if executor_idle => Some(at),
            Phase::Confirming { deadline } => deadline,
            Phase::Working { silent_until, .. } => silent_until,
            _ => None,
        };
        let progress = match (&live.progress.pending, live.progress.last_sent_at) {
            (Some(_), Some(last)) if may_send_progress => Some(last + progress_interval),
            _ => None,
        };
        let rescan = live.unparsed.and_then(|u| u.rescan_at);
        // Never before the progress throttle lets a frame out: a keep-alive
        // due earlier could not be sent, and the deadline would stay due.
        let keepalive = match (keepalive, live.progress.touched_at) {
            (Some(every), Some(touched)) if may_send_progress => {
                let throttle = live.progress.last_sent_at.map(|last| last + progress_interval);
                Some(throttle.map_or(touched + every, |open| open.max(touched + every)))
            }
            _ => None,
        };
        [phase, live.timeout_at, rescan, progress, keepalive].into_iter().flatten().min()
    }
}
