//! The wake executor: runs one wake attempt at a time, the operator's
//! `wake_command` through the platform shell, and reports exactly one
//! [`WakeOutcome`] per [`WakeHandle::run`]. It never retries and keeps no
//! schedule; the event loop decides both (STYLE.md section 4).
//!
//! # The hub's text never becomes shell code
//!
//! The task's id, description and metadata come from the hub and are
//! untrusted. Pasting them into the command line, quoted or not, is unsafe: a
//! description containing `"; rm -rf ~; echo "` escapes the operator's double
//! quotes. Instead every value is handed to the child as an environment
//! variable (`AGENTCOM_TASK_DESCRIPTION`, ...), and [`render_command`]
//! replaces each placeholder with a *reference* to that variable
//! (`${AGENTCOM_TASK_DESCRIPTION}` for `sh -c`, `!AGENTCOM_TASK_DESCRIPTION!`
//! for `cmd /V:ON /C`). The shell expands a variable's value as data after it
//! has parsed the command, so no value can add commands, whatever quotes
//! surround the placeholder. The rendered command contains only the
//! operator's template; it is the same for every task.
//!
//! What the operator should know: inside double quotes the agent gets the
//! exact text. Bare, the shell splits it into words and expands globs (data
//! still, never code). Inside single quotes the shell does not expand at all,
//! so the agent receives the literal reference text, e.g.
//! `${AGENTCOM_TASK_DESCRIPTION}`; the Node sidecar pasted the text there. A
//! template that passes a placeholder to `eval` (or `sh -c` again) runs it as
//! code by the operator's own choice. The whole task is also written as JSON
//! to a task file (`AGENTCOM_TASK_FILE`, `${TASK_FILE}`), which avoids the
//! command line altogether.
//!
//! # Process handling
//!
//! On Unix the child leads its own process group, so a timeout or a cancel
//! kills the wake command together with everything it started
//! (`killpg(SIGKILL)`); on Windows `taskkill /T /F` kills the tree. A wake
//! command that exits 0 is never killed, nor is anything it left running:
//! wake commands commonly start the agent in the background and exit.
//!
//! The outcome is reported when the child exits, not when its output pipes
//! close: a background agent often inherits stdout and keeps it open for
//! hours. The output readers get at most [`OUTPUT_GRACE`] to finish, then
//! they are detached and keep draining the pipe (discarding it) so the agent
//! never blocks on a full pipe or dies of SIGPIPE.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{after, at, bounded, never, select, Receiver, Sender};

/// One wake attempt, as the event loop asks for it.
#[derive(Clone)]
pub struct WakeRequest {
    pub task_id: String,
    pub generation: u64,
    /// 1 for the first attempt; only reported back.
    pub attempt: u32,
    /// The operator's `wake_command`, with `${TASK_ID}`, `${TASK_JSON}`,
    /// `${TASK_DESCRIPTION}` and `${TASK_FILE}` placeholders.
    pub command_template: String,
    pub description: String,
    /// The whole task as JSON; written to `task_file` before each attempt.
    pub task_json: String,
    pub task_file: PathBuf,
    pub results_dir: PathBuf,
    /// Kill the command's process tree if it has not exited by then.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeStatus {
    /// The command exited with status 0.
    Success,
    /// The command exited non-zero; `exit_code` is `None` when a signal
    /// ended it.
    Failed { exit_code: Option<i32> },
    /// The command did not exit within the timeout; its tree was killed.
    TimedOut,
    /// The command could not be started (or its task file not written); the
    /// text says why.
    SpawnFailed(String),
    /// [`WakeHandle::cancel`] (or dropping the handle) killed the running
    /// attempt, or dropped it before it started.
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct WakeOutcome {
    pub task_id: String,
    pub attempt: u32,
    pub status: WakeStatus,
    /// The last [`TAIL_LIMIT_BYTES`] of stdout, as lossy UTF-8.
    pub stdout_tail: String,
    /// The last [`TAIL_LIMIT_BYTES`] of stderr, as lossy UTF-8.
    pub stderr_tail: String,
    /// From the start of the attempt to the outcome.
    pub elapsed: Duration,
}

/// The executor thread and its inbox. Every [`run`](WakeHandle::run) gets
/// exactly one outcome through the callback given to
/// [`spawn`](WakeHandle::spawn), on the executor thread, even when the
/// attempt is cancelled or the handle is dropped.
pub struct WakeHandle {
    // Drop order matters (as in rust-analyzer's FlycheckHandle): the sender
    // goes first so the executor sees its inbox disconnect, kills any
    // running attempt and returns; only then can the join finish. `Drop`
    // does this explicitly.
    sender: Sender<WakeCommand>,
    thread: Option<JoinHandle<()>>,
}

/// How much of each output stream an outcome keeps.
pub const TAIL_LIMIT_BYTES: usize = 4096;

/// How long, after the child exited, the outcome waits for the output
/// readers to reach end of file. A grandchild that inherited the pipes can
/// hold them open indefinitely; we must not wait for it.
pub const OUTPUT_GRACE: Duration = Duration::from_millis(100);

/// How long to wait for a killed child to be reported as exited before giving
/// up on it. SIGKILL is not instant only for a process stuck in the kernel
/// (e.g. on a dead network file system); we report the outcome anyway.
const KILL_FAILSAFE: Duration = Duration::from_secs(5);

/// Environment variables set for every wake command.
pub const ENV_TASK_ID: &str = "AGENTCOM_TASK_ID";
pub const ENV_GENERATION: &str = "AGENTCOM_GENERATION";
pub const ENV_RESULTS_DIR: &str = "AGENTCOM_RESULTS_DIR";
pub const ENV_TASK_DESCRIPTION: &str = "AGENTCOM_TASK_DESCRIPTION";
pub const ENV_TASK_JSON: &str = "AGENTCOM_TASK_JSON";
pub const ENV_TASK_FILE: &str = "AGENTCOM_TASK_FILE";

/// Each placeholder and the variable that carries its value.
const PLACEHOLDERS: [(&str, &str); 4] = [
    ("${TASK_ID}", ENV_TASK_ID),
    ("${TASK_JSON}", ENV_TASK_JSON),
    ("${TASK_DESCRIPTION}", ENV_TASK_DESCRIPTION),
    ("${TASK_FILE}", ENV_TASK_FILE),
];

impl WakeHandle {
    /// Starts the executor thread ("wake-executor"). `on_outcome` runs on it
    /// and should only forward the outcome (e.g. `let _ = tx.send(..)`).
    pub fn spawn(on_outcome: Box<dyn Fn(WakeOutcome) + Send>) -> io::Result<WakeHandle> {
        let (sender, receiver) = crossbeam_channel::unbounded();
        let thread = thread::Builder::new()
            .name("wake-executor".to_string())
            .spawn(move || Executor::new(receiver, on_outcome).run())?;
        Ok(WakeHandle { sender, thread: Some(thread) })
    }

    /// Starts one attempt. The caller never overlaps attempts; if it does,
    /// the second request waits until the first has its outcome.
    pub fn run(&self, request: WakeRequest) {
        if self.sender.send(WakeCommand::Run(Box::new(request))).is_err() {
            // Only possible if the executor panicked; Drop re-raises that.
            log::error!("wake executor is gone; wake request dropped");
        }
    }

    /// Kills the running attempt for `task_id` with its whole process tree
    /// and reports it as [`WakeStatus::Cancelled`]. A queued request for the
    /// task is dropped and reported as cancelled too. If the attempt has
    /// already exited, its real outcome is reported and nothing is killed;
    /// if there is no attempt for the task, nothing happens.
    pub fn cancel(&self, task_id: &str) {
        if self.sender.send(WakeCommand::Cancel(task_id.to_string())).is_err() {
            log::error!("wake executor is gone; cancel of {task_id} dropped");
        }
    }
}

impl Drop for WakeHandle {
    /// Kills a running attempt's tree (reported as `Cancelled`) and joins the
    /// executor thread.
    fn drop(&mut self) {
        // Replace our sender with one whose receiver is already gone: this
        // drops the real sender, and the executor's inbox disconnects.
        let (disconnected, _) = bounded(0);
        drop(std::mem::replace(&mut self.sender, disconnected));
        if let Some(thread) = self.thread.take() {
            if let Err(panic) = thread.join() {
                // Re-raise the worker's panic (STYLE.md section 5), unless we
                // are already unwinding, where a second panic would abort.
                if !thread::panicking() {
                    std::panic::resume_unwind(panic);
                }
                log::error!("wake executor thread panicked");
            }
        }
    }
}

impl fmt::Debug for WakeRequest {
    /// Leaves out the description and JSON, which can be large and are the
    /// hub's text; their sizes are enough to debug with.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WakeRequest")
            .field("task_id", &self.task_id)
            .field("generation", &self.generation)
            .field("attempt", &self.attempt)
            .field("command_template", &self.command_template)
            .field("description_len", &self.description.len())
            .field("task_json_len", &self.task_json.len())
            .field("task_file", &self.task_file)
            .field("results_dir", &self.results_dir)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Replaces each known placeholder in the operator's template with a
/// reference to the environment variable carrying its value, in the syntax of
/// the platform shell: `${AGENTCOM_TASK_ID}` on Unix (braces, so that
/// `${TASK_ID}abc` keeps meaning the id followed by "abc"), and
/// `!AGENTCOM_TASK_ID!` on Windows (delayed expansion). Any other `${...}`
/// text is left as it is. Pure: the task's values never enter the result.
pub fn render_command(template: &str) -> String {
    let mut rendered = String::with_capacity(template.len() + 64);
    let mut rest = template;
    // One left-to-right pass, so a replacement is never scanned again.
    while let Some(index) = rest.find("${") {
        rendered.push_str(&rest[..index]);
        let candidate = &rest[index..];
        match PLACEHOLDERS.iter().find(|(placeholder, _)| candidate.starts_with(placeholder)) {
            Some((placeholder, variable)) => {
                rendered.push_str(&sys::env_reference(variable));
                rest = &candidate[placeholder.len()..];
            }
            None => {
                rendered.push_str("${");
                rest = &candidate[2..];
            }
        }
    }
    rendered.push_str(rest);
    rendered
}

/// Writes the task file atomically: a temporary file in the same directory,
/// written and synced, then renamed over `path`. The agent never sees a
/// half-written file.
pub fn write_task_file(path: &Path, task_json: &str) -> io::Result<()> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(task_json.as_bytes())?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|error| error.error)?;
    Ok(())
}

enum WakeCommand {
    Run(Box<WakeRequest>),
    Cancel(String),
}

/// The executor thread's state: its inbox, the outcome callback, and requests
/// that arrived while an attempt was running.
struct Executor {
    commands: Receiver<WakeCommand>,
    on_outcome: Box<dyn Fn(WakeOutcome) + Send>,
    pending: VecDeque<WakeRequest>,
    /// The inbox disconnected (the handle was dropped): finish up and return.
    shutting_down: bool,
}

/// Why an attempt stops waiting for its child.
enum Stop {
    Exited(ChildExited),
    Kill(WakeStatus),
}

/// Sent by the waiter thread once the child has exited. On Unix the child is
/// not reaped yet: its pid, and so its process group id, stay reserved until
/// the executor reaps it, so a `killpg` never hits a recycled group.
type ChildExited = (Child, io::Result<()>);

/// Which pipe a chunk of output came from.
#[derive(Clone, Copy, Debug)]
enum Stream {
    Stdout,
    Stderr,
}

/// The last [`TAIL_LIMIT_BYTES`] of one output stream.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Executor {
    fn new(commands: Receiver<WakeCommand>, on_outcome: Box<dyn Fn(WakeOutcome) + Send>) -> Self {
        Executor { commands, on_outcome, pending: VecDeque::new(), shutting_down: false }
    }

    fn run(mut self) {
        loop {
            if self.shutting_down {
                for request in std::mem::take(&mut self.pending) {
                    (self.on_outcome)(not_started(&request, WakeStatus::Cancelled));
                }
                return;
            }
            let request = match self.pending.pop_front() {
                Some(request) => request,
                None => match self.commands.recv() {
                    Ok(WakeCommand::Run(request)) => *request,
                    Ok(WakeCommand::Cancel(task_id)) => {
                        log::debug!("cancel for task {task_id}: no wake attempt running");
                        continue;
                    }
                    Err(_) => return,
                },
            };
            let outcome = self.run_attempt(request);
            (self.on_outcome)(outcome);
        }
    }

    fn run_attempt(&mut self, request: WakeRequest) -> WakeOutcome {
        let started = Instant::now();
        log::debug!("wake attempt {} for task {}: starting", request.attempt, request.task_id);
        let running = match start_child(&request) {
            Ok(running) => running,
            Err(text) => return finished(&request, WakeStatus::SpawnFailed(text), started),
        };
        let Running { pid, exit_rx, mut output } = running;
        let deadline = match started.checked_add(request.timeout) {
            Some(deadline) => at(deadline),
            None => never(),
        };
        let stop = self.wait_for_stop(&request, &exit_rx, &deadline, &mut output);
        // A kill decided at the same instant as the child exited must not
        // kill the group: after a successful wake it holds the agent.
        let stop = match stop {
            Stop::Kill(status) => match exit_rx.try_recv() {
                Ok(exited) => Stop::Exited(exited),
                Err(_) => Stop::Kill(status),
            },
            exited => exited,
        };
        let status = match stop {
            Stop::Exited((mut child, wait_result)) => exit_status(&request, &mut child, wait_result),
            Stop::Kill(status) => {
                kill_and_reap(&request, pid, &exit_rx, &mut output);
                status
            }
        };
        output.drain_until(Instant::now() + OUTPUT_GRACE);
        let (stdout_tail, stderr_tail) = output.into_tails();
        let outcome = WakeOutcome {
            task_id: request.task_id,
            attempt: request.attempt,
            status,
            stdout_tail,
            stderr_tail,
            elapsed: started.elapsed(),
        };
        log::debug!(
            "wake attempt {} for task {}: {:?} after {:?}",
            outcome.attempt,
            outcome.task_id,
            outcome.status,
            outcome.elapsed
        );
        outcome
    }

    /// Waits for the child to exit, the deadline, or a command that stops
    /// the attempt, collecting output meanwhile. No polling: one `select!`.
    fn wait_for_stop(
        &mut self,
        request: &WakeRequest,
        exit_rx: &Receiver<ChildExited>,
        deadline: &Receiver<Instant>,
        output: &mut Output,
    ) -> Stop {
        loop {
            select! {
                recv(exit_rx) -> exited => return match exited {
                    Ok(exited) => Stop::Exited(exited),
                    // Only if the waiter thread panicked.
                    Err(_) => Stop::Kill(WakeStatus::SpawnFailed(
                        "the wake waiter thread died".to_string(),
                    )),
                },
                recv(self.commands) -> command => match command {
                    Ok(WakeCommand::Run(queued)) => {
                        log::warn!(
                            "wake for task {} requested while task {} is still running; queued",
                            queued.task_id,
                            request.task_id
                        );
                        self.pending.push_back(*queued);
                    }
                    Ok(WakeCommand::Cancel(task_id)) => {
                        self.cancel_pending(&task_id);
                        if task_id == request.task_id {
                            return Stop::Kill(WakeStatus::Cancelled);
                        }
                        log::debug!(
                            "cancel for task {task_id} does not stop the running task {}",
                            request.task_id
                        );
                    }
                    Err(_) => {
                        self.shutting_down = true;
                        return Stop::Kill(WakeStatus::Cancelled);
                    }
                },
                recv(deadline) -> _ => return Stop::Kill(WakeStatus::TimedOut),
                recv(output.receiver()) -> chunk => output.record(chunk),
            }
        }
    }

    /// Drops the queued requests for `task_id`, reporting each as cancelled.
    fn cancel_pending(&mut self, task_id: &str) {
        let (cancelled, kept) =
            std::mem::take(&mut self.pending).into_iter().partition(|queued| queued.task_id == task_id);
        self.pending = kept;
        for queued in cancelled {
            (self.on_outcome)(not_started(&queued, WakeStatus::Cancelled));
        }
    }
}

/// A started child: the pid (which is also its process group id on Unix),
/// the waiter's channel and the output readers' channel.
struct Running {
    pid: u32,
    exit_rx: Receiver<ChildExited>,
    output: Output,
}

/// Writes the task file and starts the wake command with its output readers
/// and exit waiter. An error is the text for [`WakeStatus::SpawnFailed`].
fn start_child(request: &WakeRequest) -> Result<Running, String> {
    write_task_file(&request.task_file, &request.task_json)
        .map_err(|error| format!("cannot write task file {}: {error}", request.task_file.display()))?;
    let mut command = sys::shell_command(&render_command(&request.command_template));
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env(ENV_TASK_ID, env_value(&request.task_id))
        .env(ENV_GENERATION, request.generation.to_string())
        .env(ENV_RESULTS_DIR, &request.results_dir)
        .env(ENV_TASK_DESCRIPTION, env_value(&request.description))
        .env(ENV_TASK_JSON, env_value(&request.task_json))
        .env(ENV_TASK_FILE, &request.task_file);
    sys::isolate(&mut command);
    let mut child = command.spawn().map_err(|error| error.to_string())?;
    let pid = child.id();

    // Output readers first: while we still hold the child, a failure here
    // can kill and reap it cleanly.
    let (output_tx, output_rx) = bounded::<(Stream, Vec<u8>)>(64);
    let readers = [
        child.stdout.take().map(|pipe| spawn_reader(Stream::Stdout, pipe, output_tx.clone())),
        child.stderr.take().map(|pipe| spawn_reader(Stream::Stderr, pipe, output_tx.clone())),
    ];
    // Only the readers hold senders now, so the channel disconnects exactly
    // when both have reached end of file.
    drop(output_tx);
    if let Some(Err(error)) = readers.into_iter().flatten().find(Result::is_err) {
        kill_tree(pid);
        let _ = child.wait();
        return Err(format!("cannot start a wake output reader thread: {error}"));
    }

    let (exit_tx, exit_rx) = bounded::<ChildExited>(1);
    thread::Builder::new()
        .name("wake-waiter".to_string())
        .spawn(move || {
            let result = sys::wait_until_exited(&mut child);
            if let Err(crossbeam_channel::SendError((mut child, _))) = exit_tx.send((child, result)) {
                // The executor gave up on us (KILL_FAILSAFE); reap the child
                // so it does not stay a zombie.
                let _ = child.wait();
            }
        })
        .map_err(|error| {
            // The child went down with the closure; we can still kill its
            // tree by pid, but not reap it.
            kill_tree(pid);
            format!("cannot start the wake waiter thread: {error}")
        })?;
    Ok(Running { pid, exit_rx, output: Output::new(output_rx) })
}

/// Kills the child's whole tree, then reaps the child once the waiter sees
/// it exit. Gives up after [`KILL_FAILSAFE`] so the outcome is never held
/// hostage by a process stuck in the kernel.
fn kill_and_reap(request: &WakeRequest, pid: u32, exit_rx: &Receiver<ChildExited>, output: &mut Output) {
    kill_tree(pid);
    let failsafe = after(KILL_FAILSAFE);
    loop {
        select! {
            recv(exit_rx) -> exited => {
                if let Ok((mut child, _)) = exited {
                    // Reap it; its exit status is our kill, nothing to report.
                    let _ = child.wait();
                }
                return;
            }
            recv(failsafe) -> _ => {
                log::error!(
                    "wake command for task {} (pid {pid}) did not exit within {KILL_FAILSAFE:?} of SIGKILL; reporting anyway",
                    request.task_id
                );
                return;
            }
            recv(output.receiver()) -> chunk => output.record(chunk),
        }
    }
}

/// Reaps an exited child and turns its exit status into a [`WakeStatus`].
fn exit_status(request: &WakeRequest, child: &mut Child, wait_result: io::Result<()>) -> WakeStatus {
    if let Err(error) = wait_result {
        log::warn!("waiting for the wake command of task {} failed: {error}", request.task_id);
    }
    match child.wait() {
        Ok(status) if status.success() => WakeStatus::Success,
        Ok(status) => WakeStatus::Failed { exit_code: status.code() },
        Err(error) => {
            log::warn!(
                "cannot read the exit status of the wake command of task {}: {error}",
                request.task_id
            );
            WakeStatus::Failed { exit_code: None }
        }
    }
}

/// The output channel of one attempt and the tails collected from it.
struct Output {
    /// `None` once both readers have finished, so `select!` stops seeing a
    /// disconnected channel (which is always ready) and cannot spin on it.
    receiver: Option<Receiver<(Stream, Vec<u8>)>>,
    idle: Receiver<(Stream, Vec<u8>)>,
    stdout: Tail,
    stderr: Tail,
}

impl Output {
    fn new(receiver: Receiver<(Stream, Vec<u8>)>) -> Output {
        Output { receiver: Some(receiver), idle: never(), stdout: Tail::default(), stderr: Tail::default() }
    }

    fn receiver(&self) -> &Receiver<(Stream, Vec<u8>)> {
        self.receiver.as_ref().unwrap_or(&self.idle)
    }

    fn record(&mut self, chunk: Result<(Stream, Vec<u8>), crossbeam_channel::RecvError>) {
        match chunk {
            Ok((Stream::Stdout, bytes)) => self.stdout.push(&bytes),
            Ok((Stream::Stderr, bytes)) => self.stderr.push(&bytes),
            Err(_) => self.receiver = None,
        }
    }

    /// Collects output until both readers are done or `deadline` passes,
    /// whichever comes first. Readers still running are then detached.
    fn drain_until(&mut self, deadline: Instant) {
        let deadline = at(deadline);
        while self.receiver.is_some() {
            select! {
                recv(self.receiver()) -> chunk => self.record(chunk),
                recv(deadline) -> _ => break,
            }
        }
    }

    fn into_tails(self) -> (String, String) {
        (self.stdout.into_string(), self.stderr.into_string())
    }
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        if chunk.len() >= TAIL_LIMIT_BYTES {
            self.truncated |= !self.bytes.is_empty() || chunk.len() > TAIL_LIMIT_BYTES;
            self.bytes.clear();
            self.bytes.extend_from_slice(&chunk[chunk.len() - TAIL_LIMIT_BYTES..]);
            return;
        }
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > TAIL_LIMIT_BYTES {
            let excess = self.bytes.len() - TAIL_LIMIT_BYTES;
            self.bytes.drain(..excess);
            self.truncated = true;
        }
    }

    /// Lossy UTF-8. When the front was cut off, up to three bytes of a
    /// character split by the cut are dropped, so the tail does not start
    /// with a replacement character that was never in the output.
    fn into_string(self) -> String {
        let mut start = 0;
        if self.truncated {
            while start < 3 && self.bytes.get(start).is_some_and(|byte| byte & 0xC0 == 0x80) {
                start += 1;
            }
        }
        String::from_utf8_lossy(&self.bytes[start..]).into_owned()
    }
}

/// Reads one pipe on its own thread and forwards the chunks. When the
/// attempt is over (its receiver dropped) the reader keeps reading and
/// discards, until end of file: a background agent that inherited the pipe
/// must neither block on a full pipe nor be killed by SIGPIPE.
fn spawn_reader(
    stream: Stream,
    mut pipe: impl Read + Send + 'static,
    chunks: Sender<(Stream, Vec<u8>)>,
) -> io::Result<()> {
    let name = match stream {
        Stream::Stdout => "wake-stdout",
        Stream::Stderr => "wake-stderr",
    };
    thread::Builder::new().name(name.to_string()).spawn(move || {
        let mut buffer = vec![0u8; 8192];
        let mut forwarding = true;
        loop {
            match pipe.read(&mut buffer) {
                Ok(0) => return,
                Ok(n) => {
                    if forwarding && chunks.send((stream, buffer[..n].to_vec())).is_err() {
                        forwarding = false;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    })?;
    // The reader is detached on purpose (see above); it ends at end of file.
    Ok(())
}

fn kill_tree(pid: u32) {
    if let Err(error) = sys::kill_tree(pid) {
        log::warn!("cannot kill the process tree of wake command pid {pid}: {error}");
    }
}

/// An environment variable cannot hold a NUL byte (spawning would fail). The
/// hub's JSON can carry one in a string, so it is replaced with U+FFFD; the
/// task file still has the exact text (JSON escapes it as `\u0000`).
fn env_value(value: &str) -> String {
    value.replace('\0', "\u{FFFD}")
}

fn not_started(request: &WakeRequest, status: WakeStatus) -> WakeOutcome {
    finished(request, status, Instant::now())
}

fn finished(request: &WakeRequest, status: WakeStatus, started: Instant) -> WakeOutcome {
    log::debug!("wake attempt {} for task {}: {status:?}", request.attempt, request.task_id);
    WakeOutcome {
        task_id: request.task_id.clone(),
        attempt: request.attempt,
        status,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        elapsed: started.elapsed(),
    }
}

#[cfg(unix)]
mod sys {
    use std::io;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};

    pub(super) fn shell_command(rendered: &str) -> Command {
        let mut command = Command::new("sh");
        command.arg("-c").arg(rendered);
        command
    }

    /// A new process group led by the child, so `killpg` reaches everything
    /// the wake command starts (unless it deliberately leaves the group with
    /// `setsid` or `setpgid`).
    pub(super) fn isolate(command: &mut Command) {
        command.process_group(0);
    }

    pub(super) fn env_reference(variable: &str) -> String {
        format!("${{{variable}}}")
    }

    /// Blocks until the child has exited, without reaping it (`WNOWAIT`).
    /// Until it is reaped its pid cannot be reused, and neither can its
    /// process group id, so `kill_tree` stays safe to call.
    pub(super) fn wait_until_exited(child: &mut Child) -> io::Result<()> {
        let pid = child.id() as libc::id_t;
        loop {
            // SAFETY: siginfo_t is a plain C struct for which all zeroes is a
            // valid value; waitid only writes into it.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is a valid, exclusively borrowed siginfo_t.
            let rc = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if rc == 0 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }

    /// SIGKILL to the child's whole process group. The group id is the
    /// child's pid (`process_group(0)`).
    pub(super) fn kill_tree(pid: u32) -> io::Result<()> {
        let pgid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
        // SAFETY: killpg has no memory-safety preconditions.
        if unsafe { libc::killpg(pgid, libc::SIGKILL) } == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ESRCH) {
            // Everyone in the group has already exited.
            return Ok(());
        }
        Err(error)
    }
}

/// Windows. Not built or tested here (the development machines run Linux);
/// kept small so it can be checked by eye.
#[cfg(windows)]
mod sys {
    use std::io;
    use std::os::windows::process::CommandExt;
    use std::process::{Child, Command, Stdio};

    /// `cmd /D /V:ON /S /C "<rendered>"`. `/V:ON` turns on delayed
    /// expansion: `!VAR!` is expanded after cmd has parsed `& | < > ^` and
    /// quotes, so a value is data, never syntax (`%VAR%` would be expanded
    /// before parsing and could inject commands). `/S /C "..."` makes cmd
    /// strip exactly the outer quotes, as Node's `child_process.exec` does,
    /// so templates written for the Node sidecar mean the same here. `/D`
    /// skips AutoRun commands from the registry. `raw_arg` passes the line
    /// verbatim: std's argument quoting follows MSVC rules, which cmd does
    /// not parse. Caveats: a literal `!` in the template is special under
    /// `/V:ON`; and the program cmd starts parses its own command line, so a
    /// `"` in a value can change how that program splits its arguments
    /// (argument splitting, not command execution).
    pub(super) fn shell_command(rendered: &str) -> Command {
        let mut command = Command::new("cmd.exe");
        command.args(["/D", "/V:ON", "/S", "/C"]).raw_arg(format!("\"{rendered}\""));
        command
    }

    /// Nothing to do: `taskkill /T` finds the tree through parent pids.
    pub(super) fn isolate(_command: &mut Command) {}

    pub(super) fn env_reference(variable: &str) -> String {
        format!("!{variable}!")
    }

    /// `Child::wait` leaves the process handle open (it closes when the
    /// `Child` is dropped), which keeps the pid from being reused while
    /// `kill_tree` may still use it.
    pub(super) fn wait_until_exited(child: &mut Child) -> io::Result<()> {
        child.wait().map(drop)
    }

    /// `taskkill /T /F /PID <pid>`: the process and its descendants. A
    /// descendant whose parent already exited is no longer linked to the tree
    /// and survives; a job object would catch it, at the cost of the
    /// windows-sys crate.
    pub(super) fn kill_tree(pid: u32) -> io::Result<()> {
        let status = Command::new("taskkill")
            .args(["/T", "/F", "/PID"])
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("taskkill exited with {status}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn render_command_table_unix() {
        let cases = [
            ("echo ${TASK_ID}", "echo ${AGENTCOM_TASK_ID}"),
            (
                "agent --desc \"${TASK_DESCRIPTION}\" --message \"Task: ${TASK_JSON}\"",
                "agent --desc \"${AGENTCOM_TASK_DESCRIPTION}\" --message \"Task: ${AGENTCOM_TASK_JSON}\"",
            ),
            // Single quotes: the shell will not expand the reference; it is
            // still only the operator's text.
            ("echo '${TASK_FILE}'", "echo '${AGENTCOM_TASK_FILE}'"),
            ("x${TASK_ID}abc", "x${AGENTCOM_TASK_ID}abc"),
            ("${TASK_ID}${TASK_ID}", "${AGENTCOM_TASK_ID}${AGENTCOM_TASK_ID}"),
            ("echo ${HOME} ${TASK_IDX} $TASK_ID", "echo ${HOME} ${TASK_IDX} $TASK_ID"),
            ("${TASK_ID", "${TASK_ID"),
            ("${", "${"),
            ("$${TASK_ID}", "$${AGENTCOM_TASK_ID}"),
            ("", ""),
            ("no placeholders", "no placeholders"),
            ("é ${TASK_DESCRIPTION} ü", "é ${AGENTCOM_TASK_DESCRIPTION} ü"),
        ];
        for (template, expected) in cases {
            assert_eq!(render_command(template), expected, "template {template:?}");
        }
    }

    #[cfg(windows)]
    #[test]
    fn render_command_table_windows() {
        let cases = [
            ("echo ${TASK_ID}", "echo !AGENTCOM_TASK_ID!"),
            (
                "agent --desc \"${TASK_DESCRIPTION}\" --message \"Task: ${TASK_JSON}\"",
                "agent --desc \"!AGENTCOM_TASK_DESCRIPTION!\" --message \"Task: !AGENTCOM_TASK_JSON!\"",
            ),
            ("x${TASK_FILE}abc", "x!AGENTCOM_TASK_FILE!abc"),
            ("echo ${HOME}", "echo ${HOME}"),
        ];
        for (template, expected) in cases {
            assert_eq!(render_command(template), expected, "template {template:?}");
        }
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut tail = Tail::default();
        tail.push(b"hello ");
        tail.push(b"world");
        assert_eq!(tail.into_string(), "hello world");

        let mut tail = Tail::default();
        for _ in 0..1000 {
            tail.push(b"0123456789");
        }
        tail.push(b"END");
        let text = tail.into_string();
        assert_eq!(text.len(), TAIL_LIMIT_BYTES);
        assert!(text.ends_with("789END"));

        let mut tail = Tail::default();
        tail.push(&vec![b'a'; 3 * TAIL_LIMIT_BYTES]);
        assert_eq!(tail.into_string(), "a".repeat(TAIL_LIMIT_BYTES));
    }

    #[test]
    fn tail_does_not_start_with_half_a_character() {
        let mut tail = Tail::default();
        // 'é' is two bytes; 4097 bytes means the cut falls inside the first.
        let text = "é".repeat(TAIL_LIMIT_BYTES / 2) + "x";
        tail.push(text.as_bytes());
        let kept = tail.into_string();
        assert!(!kept.contains('\u{FFFD}'), "{kept:?}");
        assert!(kept.ends_with("éx"));
    }

    #[test]
    fn tail_is_lossy_for_invalid_utf8() {
        let mut tail = Tail::default();
        tail.push(b"ok \xff\xfe done");
        assert_eq!(tail.into_string(), "ok \u{FFFD}\u{FFFD} done");
    }

    #[test]
    fn write_task_file_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("task.json");
        write_task_file(&path, "{\"a\":1}").unwrap();
        write_task_file(&path, "{\"b\":2}").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"b\":2}");
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_task_file(&dir.path().join("missing/task.json"), "{}").is_err());
    }

    #[test]
    fn env_value_replaces_nul() {
        assert_eq!(env_value("a\0b"), "a\u{FFFD}b");
        assert_eq!(env_value("plain"), "plain");
    }

    #[cfg(unix)]
    mod unix {
        //! End-to-end tests with real `sh -c` wake commands. Each test waits
        //! on channels with a generous failsafe and never sleeps; where a
        //! test needs a grandchild's pid before acting, the wake command
        //! sends it through a FIFO.

        use std::ffi::CString;
        use std::fs;
        use std::os::unix::ffi::OsStrExt;

        use crossbeam_channel::{tick, unbounded};
        use serde_json::json;

        use super::super::*;

        const FAILSAFE: Duration = Duration::from_secs(10);

        struct Fixture {
            dir: tempfile::TempDir,
            handle: Option<WakeHandle>,
            outcomes: Receiver<WakeOutcome>,
        }

        impl Fixture {
            fn new() -> Fixture {
                let (tx, outcomes) = unbounded();
                let handle = WakeHandle::spawn(Box::new(move |outcome| {
                    let _ = tx.send(outcome);
                }))
                .unwrap();
                Fixture { dir: tempfile::tempdir().unwrap(), handle: Some(handle), outcomes }
            }

            fn dir(&self) -> &Path {
                self.dir.path()
            }

            fn handle(&self) -> &WakeHandle {
                self.handle.as_ref().unwrap()
            }

            fn request(&self, template: &str) -> WakeRequest {
                WakeRequest {
                    task_id: "task-00000000000000ff".to_string(),
                    generation: 3,
                    attempt: 1,
                    command_template: template.to_string(),
                    description: "do the thing".to_string(),
                    task_json: "{\"task_id\":\"task-00000000000000ff\"}".to_string(),
                    task_file: self.dir().join("task.json"),
                    results_dir: self.dir().to_path_buf(),
                    timeout: FAILSAFE,
                }
            }

            fn run(&self, template: &str) -> WakeOutcome {
                self.handle().run(self.request(template));
                self.outcome()
            }

            fn outcome(&self) -> WakeOutcome {
                self.outcomes.recv_timeout(FAILSAFE).expect("no wake outcome within the failsafe")
            }

            /// Creates a FIFO in the tempdir and returns a channel that
            /// delivers the pid the wake command writes into it. Opening a
            /// FIFO blocks until both ends are open, so the reader runs on
            /// its own thread.
            fn pid_fifo(&self, name: &str) -> Receiver<u32> {
                let path = self.dir().join(name);
                let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
                // SAFETY: c_path is a valid NUL-terminated string.
                assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
                let (tx, rx) = bounded(1);
                thread::spawn(move || {
                    let text = fs::read_to_string(&path).unwrap();
                    let _ = tx.send(text.trim().parse::<u32>().unwrap());
                });
                rx
            }
        }

        /// Whether the process exists and is not a zombie. The test
        /// container's init may not reap orphans, so a killed grandchild can
        /// linger as a zombie; that still counts as gone.
        fn is_alive(pid: u32) -> bool {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // The state follows the parenthesised command name.
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z' | 'X') | None)
        }

        /// Waits (bounded, on a ticker, never sleeping) for a process to go.
        fn wait_until_gone(pid: u32) -> bool {
            let deadline = Instant::now() + FAILSAFE;
            let ticker = tick(Duration::from_millis(10));
            while Instant::now() < deadline {
                if !is_alive(pid) {
                    return true;
                }
                let _ = ticker.recv();
            }
            !is_alive(pid)
        }

        /// Kills a leftover `sleep` we started, if it is still there.
        fn kill_leftover_sleep(pid: u32) {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if is_alive(pid) && cmdline.starts_with(b"sleep") {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }

        #[test]
        fn hostile_text_never_runs_as_shell_code() {
            let fixture = Fixture::new();
            let d = fixture.dir().display().to_string();
            let description = format!(
                "$(touch {d}/pwned-subst) `touch {d}/pwned-backtick` \
                 \"; touch {d}/pwned-dq; echo \" \\\" \\\"; touch {d}/pwned-bs; echo \\\" \
                 '; touch {d}/pwned-sq; echo ' it's\n\
                 touch {d}/pwned-newline\n\
                 ${{IFS}}$HOME %PATH% !x! \\$(touch {d}/pwned-escaped) *"
            );
            let metadata = json!({
                "note": format!("$(touch {d}/pwned-meta) `touch {d}/pwned-meta-bt` \"; touch {d}/pwned-meta-dq; echo \""),
                "quote": format!("'; touch {d}/pwned-meta-sq; echo '"),
            });
            let task_id = format!("task-1$(touch {d}/pwned-id)");
            let task_json = serde_json::to_string(&json!({
                "task_id": task_id,
                "description": description,
                "metadata": metadata,
            }))
            .unwrap();
            // Every placeholder bare, in double quotes and in single quotes,
            // plus the Node example's shape and captures of what the child
            // received.
            let template = r#"
                out="$AGENTCOM_RESULTS_DIR"
                echo ${TASK_ID} ${TASK_JSON} ${TASK_DESCRIPTION} ${TASK_FILE} > /dev/null
                echo "${TASK_ID}" "${TASK_JSON}" "${TASK_DESCRIPTION}" "${TASK_FILE}" > /dev/null
                echo '${TASK_ID}' '${TASK_JSON}' '${TASK_DESCRIPTION}' '${TASK_FILE}' > "$out/single-quoted"
                echo --desc "${TASK_DESCRIPTION}" --message "Task: ${TASK_JSON}" > /dev/null
                printf '%s' "$AGENTCOM_TASK_DESCRIPTION" > "$out/desc.env"
                printf '%s' "${TASK_DESCRIPTION}" > "$out/desc.placeholder"
                printf '%s' "${TASK_JSON}" > "$out/json.placeholder"
                printf '%s' "${TASK_ID}" > "$out/id.placeholder"
                printf '%s' "$AGENTCOM_GENERATION" > "$out/generation"
                cat "${TASK_FILE}" > "$out/task-file.copy"
            "#;
            let mut request = fixture.request(template);
            request.task_id = task_id.clone();
            request.description = description.clone();
            request.task_json = task_json.clone();
            fixture.handle().run(request);
            let outcome = fixture.outcome();

            let pwned: Vec<String> = fs::read_dir(fixture.dir())
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("pwned"))
                .collect();
            assert!(pwned.is_empty(), "hub text ran as shell code: {pwned:?}");
            assert_eq!(outcome.status, WakeStatus::Success, "{outcome:?}");

            let read = |name: &str| fs::read(fixture.dir().join(name)).unwrap();
            assert_eq!(read("desc.env"), description.as_bytes());
            assert_eq!(read("desc.placeholder"), description.as_bytes());
            assert_eq!(read("json.placeholder"), task_json.as_bytes());
            assert_eq!(read("id.placeholder"), task_id.as_bytes());
            assert_eq!(read("task-file.copy"), task_json.as_bytes());
            assert_eq!(read("generation"), b"3");
            assert_eq!(
                read("single-quoted"),
                b"${AGENTCOM_TASK_ID} ${AGENTCOM_TASK_JSON} ${AGENTCOM_TASK_DESCRIPTION} ${AGENTCOM_TASK_FILE}\n"
            );
        }

        #[test]
        fn nul_in_description_does_not_stop_the_wake() {
            let fixture = Fixture::new();
            let mut request =
                fixture.request(r#"printf '%s' "${TASK_DESCRIPTION}" > "$AGENTCOM_RESULTS_DIR/desc""#);
            request.description = "a\0b".to_string();
            fixture.handle().run(request);
            assert_eq!(fixture.outcome().status, WakeStatus::Success);
            assert_eq!(fs::read_to_string(fixture.dir().join("desc")).unwrap(), "a\u{FFFD}b");
        }

        #[test]
        fn exit_zero_is_success() {
            let fixture = Fixture::new();
            let outcome = fixture.run("echo woke");
            assert_eq!(outcome.status, WakeStatus::Success);
            assert_eq!(outcome.stdout_tail, "woke\n");
            assert_eq!(outcome.task_id, "task-00000000000000ff");
            assert_eq!(outcome.attempt, 1);
        }

        #[test]
        fn non_zero_exit_is_failed_with_stderr_tail() {
            let fixture = Fixture::new();
            let outcome = fixture.run("echo oops >&2; exit 3");
            assert_eq!(outcome.status, WakeStatus::Failed { exit_code: Some(3) });
            assert_eq!(outcome.stderr_tail, "oops\n");
        }

        #[test]
        fn missing_program_is_failed_127() {
            let fixture = Fixture::new();
            let outcome = fixture.run("agentcom-no-such-program-7f3a --wake");
            assert_eq!(outcome.status, WakeStatus::Failed { exit_code: Some(127) });
            assert!(outcome.stderr_tail.contains("agentcom-no-such-program-7f3a"), "{outcome:?}");
        }

        #[test]
        fn killed_by_signal_is_failed_without_code() {
            let fixture = Fixture::new();
            let outcome = fixture.run("kill -9 $$");
            assert_eq!(outcome.status, WakeStatus::Failed { exit_code: None });
        }

        #[test]
        fn unspawnable_command_is_spawn_failed() {
            let fixture = Fixture::new();
            // A NUL byte cannot be passed as an argument.
            let outcome = fixture.run("echo a\0b");
            assert!(
                matches!(&outcome.status, WakeStatus::SpawnFailed(text) if text.contains("nul")),
                "{outcome:?}"
            );

            let mut request = fixture.request("true");
            request.task_file = fixture.dir().join("missing-dir/task.json");
            fixture.handle().run(request);
            let outcome = fixture.outcome();
            assert!(
                matches!(&outcome.status, WakeStatus::SpawnFailed(text) if text.starts_with("cannot write task file")),
                "{outcome:?}"
            );

            // The executor is still usable afterwards.
            assert_eq!(fixture.run("true").status, WakeStatus::Success);
        }

        #[test]
        fn timeout_kills_the_whole_tree() {
            let fixture = Fixture::new();
            let pids = fixture.pid_fifo("pid.fifo");
            let mut request =
                fixture.request(r#"sleep 30 & echo $! > "$AGENTCOM_RESULTS_DIR/pid.fifo"; sleep 30; wait"#);
            // Long enough for sh to start its background child and report
            // its pid even on a loaded machine; short enough to keep the
            // test quick.
            request.timeout = Duration::from_millis(500);
            fixture.handle().run(request);
            let outcome = fixture.outcome();
            assert_eq!(outcome.status, WakeStatus::TimedOut);
            assert!(outcome.elapsed >= Duration::from_millis(500));
            let grandchild = pids.recv_timeout(FAILSAFE).expect("no grandchild pid");
            let gone = wait_until_gone(grandchild);
            kill_leftover_sleep(grandchild);
            assert!(gone, "grandchild {grandchild} survived the timeout");
        }

        #[test]
        fn cancel_kills_the_whole_tree() {
            let fixture = Fixture::new();
            let pids = fixture.pid_fifo("pid.fifo");
            fixture.handle().run(
                fixture.request(r#"sleep 30 & echo $! > "$AGENTCOM_RESULTS_DIR/pid.fifo"; sleep 30; wait"#),
            );
            let grandchild = pids.recv_timeout(FAILSAFE).expect("no grandchild pid");
            // A cancel for another task leaves the attempt alone.
            fixture.handle().cancel("task-other");
            fixture.handle().cancel("task-00000000000000ff");
            let outcome = fixture.outcome();
            assert_eq!(outcome.status, WakeStatus::Cancelled);
            let gone = wait_until_gone(grandchild);
            kill_leftover_sleep(grandchild);
            assert!(gone, "grandchild {grandchild} survived the cancel");
        }

        #[test]
        fn drop_kills_the_running_attempt() {
            let mut fixture = Fixture::new();
            let pids = fixture.pid_fifo("pid.fifo");
            fixture.handle().run(
                fixture.request(r#"sleep 30 & echo $! > "$AGENTCOM_RESULTS_DIR/pid.fifo"; sleep 30; wait"#),
            );
            let grandchild = pids.recv_timeout(FAILSAFE).expect("no grandchild pid");
            drop(fixture.handle.take());
            assert_eq!(fixture.outcome().status, WakeStatus::Cancelled);
            let gone = wait_until_gone(grandchild);
            kill_leftover_sleep(grandchild);
            assert!(gone, "grandchild {grandchild} survived dropping the handle");
        }

        #[test]
        fn background_agent_keeps_running_and_does_not_delay_success() {
            let fixture = Fixture::new();
            // The background sleep inherits stdout and stderr and keeps them
            // open for 30 s after the wake command exits.
            let outcome = fixture.run(r#"sleep 30 & echo $! > "$AGENTCOM_RESULTS_DIR/pid"; echo started"#);
            let agent: u32 = fs::read_to_string(fixture.dir().join("pid")).unwrap().trim().parse().unwrap();
            let alive_after_outcome = is_alive(agent);
            // Dropping the executor must not kill a finished attempt's tree.
            let mut fixture = fixture;
            drop(fixture.handle.take());
            let alive_after_drop = is_alive(agent);
            kill_leftover_sleep(agent);

            assert_eq!(outcome.status, WakeStatus::Success);
            assert_eq!(outcome.stdout_tail, "started\n");
            // Without the grace period this would take the full 30 s.
            assert!(outcome.elapsed < Duration::from_secs(3), "outcome took {:?}", outcome.elapsed);
            assert!(alive_after_outcome, "background agent was killed");
            assert!(alive_after_drop, "dropping the handle killed the agent");
        }

        #[test]
        fn huge_output_does_not_deadlock_and_tail_is_bounded() {
            let fixture = Fixture::new();
            let outcome = fixture.run(
                "(yes stdout-line | head -c 3600000) & \
                 (yes stderr-line | head -c 3600000 >&2) & \
                 wait; printf END; printf END2 >&2",
            );
            assert_eq!(outcome.status, WakeStatus::Success);
            assert!(outcome.stdout_tail.len() <= TAIL_LIMIT_BYTES);
            assert!(outcome.stderr_tail.len() <= TAIL_LIMIT_BYTES);
            // 3600000 is a multiple of the 12-byte lines, so the markers
            // follow whole lines.
            assert!(outcome.stdout_tail.ends_with("stdout-line\nEND"));
            assert!(outcome.stderr_tail.ends_with("stderr-line\nEND2"));
        }

        #[test]
        fn cancel_drops_a_queued_request_without_running_it() {
            let fixture = Fixture::new();
            // A cancel with nothing running produces no outcome.
            fixture.handle().cancel("task-idle");
            let mut running = fixture.request("sleep 30");
            running.task_id = "task-running".to_string();
            let mut queued = fixture.request(r#"touch "$AGENTCOM_RESULTS_DIR/queued-ran""#);
            queued.task_id = "task-queued".to_string();
            fixture.handle().run(running);
            fixture.handle().run(queued);
            fixture.handle().cancel("task-queued");
            fixture.handle().cancel("task-running");

            let first = fixture.outcome();
            assert_eq!((first.task_id.as_str(), &first.status), ("task-queued", &WakeStatus::Cancelled));
            let second = fixture.outcome();
            assert_eq!((second.task_id.as_str(), &second.status), ("task-running", &WakeStatus::Cancelled));
            // The executor is idle and usable again; nothing else is pending.
            assert_eq!(fixture.run("true").status, WakeStatus::Success);
            assert!(!fixture.dir().join("queued-ran").exists());
        }

        #[test]
        fn requests_run_one_after_another() {
            let fixture = Fixture::new();
            let mut first = fixture.request("echo one");
            first.attempt = 1;
            let mut second = fixture.request("echo two; exit 1");
            second.attempt = 2;
            fixture.handle().run(first);
            fixture.handle().run(second);
            let first = fixture.outcome();
            let second = fixture.outcome();
            assert_eq!((first.attempt, first.status), (1, WakeStatus::Success));
            assert_eq!((second.attempt, second.status), (2, WakeStatus::Failed { exit_code: Some(1) }));
            assert_eq!(second.stdout_tail, "two\n");
        }
    }
}
