//! Windows: `cmd /V:ON`, a job object per wake command, and the identity of
//! a wake command that outlived a crashed sidecar. Cross-compiled on Linux;
//! see the README's Windows section for what is tested under Wine.
//!
//! # The job object
//!
//! Each wake command is put in a job object of its own right after it is
//! spawned, with `JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE`, named after the
//! command's pid and creation time. A timeout, a cancel or a shutdown (of a
//! command whose agent has not confirmed) ends the whole job: every process
//! the command started, including one whose parent has already exited
//! (which `taskkill /T` misses). Until queue.json records the command, only
//! the sidecar holds the job's handle, so a sidecar that dies takes the
//! command with it.
//!
//! Once queue.json records it ([`ProcessTree::outlive_sidecar`]),
//! kill-on-close is cleared, so the command works on when the sidecar stops
//! or dies, as on Unix: a run-mode agent, or a synchronous launch-mode
//! script at work on its confirmed task. The gate around it
//! (`windows/gate.rs`) records its exit status in its exit file even if no
//! sidecar runs when it ends. A later sidecar finds it by its identity (and
//! reads its exit code through a handle while it runs, should the gate
//! itself be killed); it ends a launcher left unconfirmed at once, and an
//! agent at work on a cancel or timeout, with its whole tree, by the job's
//! name.
//!
//! When the command exits by itself (successfully or not) the limit is
//! cleared before the handle is closed: what it started (the agent, after a
//! successful wake) keeps running, as on Unix. If the limit cannot be
//! cleared, the handle is deliberately leaked so closing it cannot end the
//! agent.
//!
//! # Graceful ends
//!
//! Every wake command leads a process group of its own. A cancel or a task
//! timeout sends it Ctrl-Break ([`send_break`]) where that can be delivered
//! (not from a sidecar without a console, such as a service; not under
//! Wine), the cancel marker tells it in any case, and whatever is left in
//! the job after `cancel_grace_ms` is ended with it.
//!
//! If the job cannot be created or the command cannot be put in it (for
//! instance inside a job that forbids nesting), the command runs without
//! one and a timeout or cancel ends only the command itself; the log says
//! so. A process the command starts in the microseconds between its spawn
//! and its assignment to the job is not in the job (std cannot spawn it
//! suspended); `cmd.exe` takes far longer than that to start anything.

use std::ffi::c_void;
use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle};
use std::os::windows::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;

use windows_sys::Win32::Foundation::{ERROR_INVALID_PARAMETER, FILETIME, WAIT_OBJECT_0};
use windows_sys::Win32::System::Console::{GenerateConsoleCtrlEvent, CTRL_BREAK_EVENT};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JobObjectBasicAccountingInformation,
    JobObjectExtendedLimitInformation, OpenJobObjectW, QueryInformationJobObject, SetInformationJobObject,
    TerminateJobObject, JOBOBJECT_BASIC_ACCOUNTING_INFORMATION, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
};
use windows_sys::Win32::System::Threading::{
    GetExitCodeProcess, GetProcessTimes, OpenProcess, TerminateProcess, WaitForSingleObject,
    CREATE_NEW_PROCESS_GROUP, PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_SYNCHRONIZE, PROCESS_TERMINATE,
};

use super::{Leftover, WakeIdentity};

mod gate;
pub(super) use gate::shell_command;

/// The job access rights to end its processes and to count them (winnt.h;
/// in windows-sys they are behind a feature this crate does not otherwise
/// need).
const JOB_OBJECT_TERMINATE: u32 = 0x0008;
const JOB_OBJECT_QUERY: u32 = 0x0004;

/// The exit code a process ended by the sidecar gets.
pub(super) const ENDED_EXIT_CODE: u32 = 1;

/// Windows allows 32,767 characters per environment variable and per command
/// line; a template that expands the description and the JSON into one
/// command line must stay within it. Bytes of UTF-8 are never fewer than
/// UTF-16 units, so a byte limit bounds the characters too.
pub(super) const ENV_VALUE_LIMIT_BYTES: usize = 12 * 1024;

/// A process group of its own (`CREATE_NEW_PROCESS_GROUP`), which Ctrl-Break
/// can be sent to ([`ProcessTree::terminate`]); it also keeps a Ctrl-C in
/// the sidecar's console from reaching the command. The job object is made
/// right after the spawn ([`ProcessTree::track`]).
pub(super) fn isolate(command: &mut Command) {
    command.creation_flags(CREATE_NEW_PROCESS_GROUP);
}

pub(super) fn env_reference(variable: &str) -> String {
    format!("!{variable}!")
}

/// `Child::wait` leaves the process handle open (it closes when the
/// `Child` is dropped), which keeps the pid from being reused while the
/// fallback of [`ProcessTree::kill`] may still use it. The exit code
/// (Windows always has one).
pub(super) fn wait_until_exited(child: &mut Child) -> io::Result<Option<i32>> {
    child.wait().map(|status| status.code())
}

/// The wake command's process tree: its job object, or only the command
/// itself when it could not be put in one.
pub(super) struct ProcessTree {
    pid: u32,
    /// Dropping it closes the job, which ends its processes unless
    /// [`release`](ProcessTree::release) cleared the limit first.
    job: Option<OwnedHandle>,
}

impl ProcessTree {
    /// Puts the command in a new job object; on failure, logs it and goes on
    /// without one (never an error: the command still runs). The job is
    /// named after the command's identity (`job_name`), so that a later
    /// sidecar can end its whole tree.
    pub(super) fn track(child: &Child) -> io::Result<ProcessTree> {
        let pid = child.id();
        let name = creation_time(child.as_raw_handle()).ok().map(|t| job_name(pid, t));
        let job = new_job(name.as_deref()).and_then(|job| {
            // SAFETY: both handles are valid and open for the call.
            let assigned = unsafe { AssignProcessToJobObject(raw(&job), child.as_raw_handle()) };
            if assigned == 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(job)
        });
        match job {
            Ok(job) => Ok(ProcessTree { pid, job: Some(job) }),
            Err(error) => {
                log::warn!(
                    "cannot put the wake command (pid {pid}) in a job object ({error}); \
                     a timeout or cancel will end only the command itself, not what it started"
                );
                Ok(ProcessTree { pid, job: None })
            }
        }
    }

    /// Ends every process in the job; without a job, only the command.
    pub(super) fn kill(&self) -> io::Result<()> {
        let Some(job) = &self.job else {
            log::warn!("ending only the wake command (pid {}): it is in no job object", self.pid);
            return terminate_pid(self.pid);
        };
        // SAFETY: the job handle is valid and open.
        if unsafe { TerminateJobObject(raw(job), ENDED_EXIT_CODE) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Recorded in queue.json, the command may outlive the sidecar: its job
    /// no longer ends it when the sidecar's handle closes (a later sidecar
    /// finds it by its identity and ends it, or its tree by the job's name,
    /// as on Unix). Until then, a sidecar that dies takes the unrecorded
    /// command with it.
    pub(super) fn outlive_sidecar(&self) {
        if let Some(job) = &self.job {
            if let Err(error) = set_kill_on_close(job, false) {
                log::warn!("cannot let the wake command (pid {}) outlive the sidecar: {error}", self.pid);
            }
        }
    }

    /// Whether any process of the job still runs (without a job: none is
    /// known to).
    pub(super) fn any_left(&self) -> bool {
        self.job.as_ref().is_some_and(|job| active_processes(job).unwrap_or(0) > 0)
    }

    /// The start of a graceful end: Ctrl-Break to the command's process
    /// group, where it can be delivered (see [`send_break`]). Where it
    /// cannot, the agent still has the grace: the sidecar's cancel marker
    /// (`<task_id>.cancel`) tells it too, and the caller ends the job once
    /// the grace is over.
    pub(super) fn terminate(&self) -> io::Result<()> {
        if let Err(error) = send_break(self.pid) {
            log::info!(
                "cannot send Ctrl-Break to the wake command (pid {}): {error}; its job is ended after the grace",
                self.pid
            );
        }
        Ok(())
    }

    /// The command exited: clears kill-on-close, then closes the job, so
    /// whatever the command started keeps running.
    pub(super) fn release(mut self) {
        let Some(job) = self.job.take() else { return };
        if let Err(error) = set_kill_on_close(&job, false) {
            log::warn!(
                "cannot release the wake command's job object ({error}); keeping it open so that \
                 what the command started keeps running"
            );
            std::mem::forget(job);
        }
    }
}

/// Ctrl-Break to the process group `pid` leads. Windows delivers it only to
/// processes attached to the caller's console: the command shares the
/// sidecar's console when the sidecar has one (started from a console, or
/// by pm2, whose Node starts it with a hidden console), as it inherits it.
/// A sidecar without a console (a Windows service) cannot deliver it (an
/// error), nor can Wine (its console server implements only Ctrl-C).
fn send_break(pid: u32) -> io::Result<()> {
    // SAFETY: no memory-safety preconditions.
    if unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, pid) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How many processes of the job still run.
fn active_processes(job: &OwnedHandle) -> io::Result<u32> {
    // SAFETY: the struct holds only integers, for which zero is valid.
    let mut info: JOBOBJECT_BASIC_ACCOUNTING_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is valid for writes of the size given; the handle is
    // open with JOB_OBJECT_QUERY.
    let queried = unsafe {
        QueryInformationJobObject(
            raw(job),
            JobObjectBasicAccountingInformation,
            (&mut info as *mut JOBOBJECT_BASIC_ACCOUNTING_INFORMATION).cast::<c_void>(),
            std::mem::size_of::<JOBOBJECT_BASIC_ACCOUNTING_INFORMATION>() as u32,
            std::ptr::null_mut(),
        )
    };
    if queried == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.ActiveProcesses)
}

/// The name of a wake command's job: its pid and creation time, so that a
/// reused pid never names it.
fn job_name(pid: u32, created: u64) -> Vec<u16> {
    format!("Local\\agentcom-sidecar-wake-{pid}-{created}").encode_utf16().chain([0]).collect()
}

/// A new job object that ends its processes when its last handle closes;
/// named if `name` is given (NUL-terminated UTF-16).
fn new_job(name: Option<&[u16]>) -> io::Result<OwnedHandle> {
    let name_ptr = name.map_or(std::ptr::null(), <[u16]>::as_ptr);
    // SAFETY: null attributes are allowed (default security, a handle
    // children do not inherit); the name is null or NUL-terminated.
    let handle = unsafe { CreateJobObjectW(std::ptr::null(), name_ptr) };
    if handle.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh handle that nothing else owns.
    let job = unsafe { OwnedHandle::from_raw_handle(handle as RawHandle) };
    set_kill_on_close(&job, true)?;
    Ok(job)
}

fn set_kill_on_close(job: &OwnedHandle, kill_on_close: bool) -> io::Result<()> {
    // SAFETY: the struct holds only integers, for which zero is valid (no
    // limits at all).
    let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
    if kill_on_close {
        info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
    }
    // SAFETY: `info` is valid for reads of the size given; the handle is open.
    let set = unsafe {
        SetInformationJobObject(
            raw(job),
            JobObjectExtendedLimitInformation,
            (&info as *const JOBOBJECT_EXTENDED_LIMIT_INFORMATION).cast::<c_void>(),
            std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
        )
    };
    if set == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ends one process by pid. Used only while the waiter still holds the
/// command's `Child` (whose open handle keeps the pid from being reused).
fn terminate_pid(pid: u32) -> io::Result<()> {
    // SAFETY: OpenProcess has no memory-safety preconditions.
    let handle = unsafe { OpenProcess(PROCESS_TERMINATE, 0, pid) };
    if handle.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh handle that nothing else owns.
    let process = unsafe { OwnedHandle::from_raw_handle(handle as RawHandle) };
    // SAFETY: the handle is open with PROCESS_TERMINATE.
    if unsafe { TerminateProcess(raw(&process), ENDED_EXIT_CODE) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The started command's pid and creation time (no process group).
pub(super) fn identity(child: &Child) -> WakeIdentity {
    WakeIdentity {
        pid: child.id(),
        process_group: None,
        start_time: creation_time(child.as_raw_handle()).ok(),
    }
}

fn creation_time(process: RawHandle) -> io::Result<u64> {
    let zero = FILETIME { dwLowDateTime: 0, dwHighDateTime: 0 };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    // SAFETY: the handle is open; the four out-pointers are valid FILETIMEs.
    if unsafe { GetProcessTimes(process, &mut created, &mut exited, &mut kernel, &mut user) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((u64::from(created.dwHighDateTime) << 32) | u64::from(created.dwLowDateTime))
}

/// Ends the leftover only if its pid still names the process created at
/// the recorded time and it has not exited: its whole job, found by its
/// name (the command, once recorded, outlives the sidecar, and with it
/// whatever it started); without the job, the process itself. Then waits up
/// to `wait` for the process to exit. A command that has exited is left
/// alone, and so is what it started (a launcher's agent).
pub(super) fn end_leftover(identity: &WakeIdentity, wait: Duration) -> Leftover {
    let Some(expected) = identity.start_time else {
        return Leftover::Unverifiable;
    };
    let access = PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_TERMINATE | PROCESS_SYNCHRONIZE;
    // SAFETY: OpenProcess has no memory-safety preconditions.
    let handle = unsafe { OpenProcess(access, 0, identity.pid) };
    if handle.is_null() {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(ERROR_INVALID_PARAMETER as i32) {
            // No process has that pid.
            return Leftover::Gone;
        }
        return Leftover::Failed(format!("cannot open process {}: {error}", identity.pid));
    }
    // SAFETY: a fresh handle that nothing else owns.
    let process = unsafe { OwnedHandle::from_raw_handle(handle as RawHandle) };
    match creation_time(raw(&process)) {
        Ok(created) if created == expected => {}
        Ok(_) => return Leftover::Gone,
        Err(error) => {
            return Leftover::Failed(format!("cannot read the times of process {}: {error}", identity.pid))
        }
    }
    // SAFETY: the handle is open with PROCESS_SYNCHRONIZE.
    if unsafe { WaitForSingleObject(raw(&process), 0) } == WAIT_OBJECT_0 {
        // It has exited; only a handle somewhere keeps its pid.
        return Leftover::Gone;
    }
    let (ended, what) = match open_job(identity) {
        // SAFETY: the handle is open with JOB_OBJECT_TERMINATE.
        Some(job) => (unsafe { TerminateJobObject(raw(&job), ENDED_EXIT_CODE) }, "the job of process"),
        // SAFETY: the handle is open with PROCESS_TERMINATE.
        None => (unsafe { TerminateProcess(raw(&process), ENDED_EXIT_CODE) }, "process"),
    };
    if ended == 0 {
        return Leftover::Failed(format!(
            "cannot end {what} {}: {}",
            identity.pid,
            io::Error::last_os_error()
        ));
    }
    let millis = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX - 1);
    // SAFETY: the handle is open with PROCESS_SYNCHRONIZE.
    match unsafe { WaitForSingleObject(raw(&process), millis) } {
        WAIT_OBJECT_0 => Leftover::Ended,
        _ => Leftover::StillExiting,
    }
}

/// The job of a recorded command, by its name (to end it and count its
/// processes), if it still exists.
fn open_job(identity: &WakeIdentity) -> Option<OwnedHandle> {
    let name = job_name(identity.pid, identity.start_time?);
    // SAFETY: the name is NUL-terminated.
    let handle = unsafe { OpenJobObjectW(JOB_OBJECT_TERMINATE | JOB_OBJECT_QUERY, 0, name.as_ptr()) };
    // SAFETY: a fresh handle that nothing else owns.
    (!handle.is_null()).then(|| unsafe { OwnedHandle::from_raw_handle(handle as RawHandle) })
}

fn raw(handle: &OwnedHandle) -> RawHandle {
    handle.as_raw_handle()
}

/// The recorded process, opened if it is still the one started (same
/// creation time) and has not exited.
fn open_leftover(identity: &WakeIdentity) -> Option<OwnedHandle> {
    let expected = identity.start_time?;
    // SAFETY: OpenProcess has no memory-safety preconditions.
    let handle =
        unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_SYNCHRONIZE, 0, identity.pid) };
    if handle.is_null() {
        return None;
    }
    // SAFETY: a fresh handle that nothing else owns.
    let process = unsafe { OwnedHandle::from_raw_handle(handle as RawHandle) };
    if creation_time(raw(&process)).ok()? != expected {
        return None;
    }
    Some(process)
}

/// Whether the recorded command (a run-mode agent, which outlives the
/// sidecar) still runs.
pub(super) fn leftover_running(identity: &WakeIdentity) -> bool {
    // SAFETY: the handle is open with PROCESS_SYNCHRONIZE.
    open_leftover(identity).is_some_and(|p| unsafe { WaitForSingleObject(raw(&p), 0) } != WAIT_OBJECT_0)
}

/// Whether any process of the command's tree lives: of its job, found by
/// its name; without one, the command itself.
pub(super) fn tree_alive(identity: &WakeIdentity) -> bool {
    match open_job(identity) {
        Some(job) => !matches!(active_processes(&job), Ok(0)),
        None => leftover_running(identity),
    }
}

/// A handle on the recorded command while it runs, to read its exit code
/// when it ends (should its gate have been ended before it could record
/// the status).
pub(super) struct Watch(OwnedHandle);

pub(super) fn watch_leftover(identity: &WakeIdentity) -> Option<Watch> {
    open_leftover(identity).map(Watch)
}

impl Watch {
    /// `None` while it runs; its exit code once it has ended.
    pub(super) fn exit_code(&self) -> Option<i32> {
        // SAFETY: the handle is open with PROCESS_SYNCHRONIZE.
        if unsafe { WaitForSingleObject(raw(&self.0), 0) } != WAIT_OBJECT_0 {
            return None;
        }
        let mut code = 0u32;
        // SAFETY: the handle is open with PROCESS_QUERY_LIMITED_INFORMATION.
        if unsafe { GetExitCodeProcess(raw(&self.0), &mut code) } == 0 {
            return Some(-1);
        }
        Some(code as i32)
    }
}

/// Ends a run-mode agent an earlier sidecar left, gracefully: Ctrl-Break
/// to its process group (delivered only if it shares this sidecar's
/// console, see [`send_break`]; the cancel marker tells it in any case),
/// then, if any process of its job is left after `grace`, the whole job,
/// found by its name. Without the job, only
/// the process itself ([`end_leftover`]). Blocks up to `grace` (call it on a
/// thread of its own).
pub(super) fn terminate_leftover(identity: &WakeIdentity, grace: Duration) -> Leftover {
    let Some(job) = open_job(identity) else {
        return end_leftover(identity, super::LEFTOVER_WAIT);
    };
    if !leftover_running(identity) && active_processes(&job).unwrap_or(1) == 0 {
        return Leftover::Gone;
    }
    if let Err(error) = send_break(identity.pid) {
        log::info!(
            "cannot send Ctrl-Break to the agent (pid {}): {error}; its job is ended after the grace",
            identity.pid
        );
    }
    // The cancel marker tells it too: the grace holds either way.
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if active_processes(&job).unwrap_or(1) == 0 {
            return Leftover::Ended;
        }
        // Not ours to wait on: a short bounded poll, as on Unix.
        std::thread::sleep(Duration::from_millis(20));
    }
    log::warn!(
        "the agent (pid {}) did not end within {} ms of being asked to; ending its job",
        identity.pid,
        grace.as_millis()
    );
    // SAFETY: the handle is open with JOB_OBJECT_TERMINATE.
    if unsafe { TerminateJobObject(raw(&job), ENDED_EXIT_CODE) } == 0 {
        return Leftover::Failed(format!(
            "cannot end the job of process {}: {}",
            identity.pid,
            io::Error::last_os_error()
        ));
    }
    Leftover::Ended
}
