//! Unix: `sh -c`, a process group per wake command, `killpg`, and the
//! identity of a wake command that outlived a crashed sidecar.

use std::io::{self, PipeWriter};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use super::{Leftover, WakeIdentity};

/// Half of Linux's `MAX_ARG_STRLEN` (128 KiB per environment or argument
/// string): a command line that expands both the description and the JSON,
/// with the environment holding them too, stays far below the shared total
/// (`ARG_MAX`, a quarter of the stack limit: 2 MiB by default).
pub(super) const ENV_VALUE_LIMIT_BYTES: usize = 64 * 1024;

/// What a gated wake command's shell runs around the operator's command. It
/// waits for one line on its stdin, a pipe only the sidecar writes to, and
/// the sidecar writes it only once queue.json records the command's identity
/// ([`WakeHandle::release`](super::WakeHandle::release)). A sidecar killed
/// before that closes the pipe with its death: `read` meets end of file and
/// the shell exits without running anything, so no wake command ever runs
/// that a restarted sidecar could not find. Released, it runs the operator's
/// command (`$1`, never part of this script) with stdin from /dev/null,
/// waits for it and records its exit status in the exit file (`$2`,
/// atomically): whoever starts next finds it there even if no sidecar was
/// running when the command ended. This shell stays the process group's
/// leader, with the pid and start time that were recorded.
///
/// A signal to the group (a cancel's SIGTERM) reaches the command; this
/// shell only notes it (`trap :`, so that the command does not inherit an
/// ignored signal), records the status, then ends itself with the same
/// signal, so that the sidecar sees what ended the command.
const GATE_SCRIPT: &str = "read -r gate || exit 75
trap : TERM INT HUP
sh -c \"$1\" sh </dev/null
s=$?
printf 'exit %s\\n' \"$s\" >\"$2.tmp\" && mv -f \"$2.tmp\" \"$2\"
trap - TERM INT HUP
if [ \"$s\" -gt 128 ] && [ \"$s\" -lt 160 ]; then kill -$((s - 128)) $$; fi
exit $s";

/// `sh -c <rendered>`, with stdin from /dev/null. Gated, the command waits
/// for a line on the returned pipe first and records its exit status in
/// `exit_file` (see [`GATE_SCRIPT`]).
pub(super) fn shell_command(
    rendered: &str,
    gated: bool,
    exit_file: &std::path::Path,
) -> io::Result<(Command, Option<PipeWriter>)> {
    let mut command = Command::new("sh");
    if !gated {
        command.arg("-c").arg(rendered).stdin(Stdio::null());
        return Ok((command, None));
    }
    // Both ends close on exec: the write end stays with the sidecar alone.
    let (reader, writer) = std::io::pipe()?;
    command.arg("-c").arg(GATE_SCRIPT).arg("agentcom-wake-gate").arg(rendered).arg(exit_file).stdin(reader);
    Ok((command, Some(writer)))
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
/// process group id, so `kill_tree` stays safe to call. The exit code, or
/// `None` when a signal ended it.
pub(super) fn wait_until_exited(child: &mut Child) -> io::Result<Option<i32>> {
    let pid = child.id() as libc::id_t;
    loop {
        // SAFETY: siginfo_t is a plain C struct for which all zeroes is a
        // valid value; waitid only writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, exclusively borrowed siginfo_t.
        let rc = unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc == 0 {
            if info.si_code == libc::CLD_EXITED {
                // SAFETY: for a CLD_EXITED child, waitid filled in si_status.
                return Ok(Some(unsafe { info.si_status() }));
            }
            return Ok(None);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// The wake command's process tree: its process group, which it leads.
pub(super) struct ProcessTree {
    pgid: u32,
}

impl ProcessTree {
    /// Never fails on Unix: the group exists from the spawn on (`isolate`).
    pub(super) fn track(child: &Child) -> io::Result<ProcessTree> {
        Ok(ProcessTree { pgid: child.id() })
    }

    /// Nothing to do on Unix: the group outlives the sidecar anyway.
    pub(super) fn outlive_sidecar(&self) {}

    /// SIGKILL to the whole process group. Safe while the leader is not
    /// reaped (see `wait_until_exited`).
    pub(super) fn kill(&self) -> io::Result<()> {
        signal_group(self.pgid, libc::SIGKILL)
    }

    /// Whether any process of the group is left. Only meaningful once the
    /// leader is reaped (an unreaped leader counts); while a member lives,
    /// the group id cannot be reused.
    pub(super) fn any_left(&self) -> bool {
        group_alive(self.pgid)
    }

    /// SIGTERM to the whole process group: the start of a graceful end.
    pub(super) fn terminate(&self) -> io::Result<()> {
        signal_group(self.pgid, libc::SIGTERM)
    }

    /// The command exited: whatever it left running goes on. Nothing to do
    /// on Unix.
    pub(super) fn release(self) {}
}

/// Whether any process of the command's tree (its process group) lives.
pub(super) fn tree_alive(identity: &WakeIdentity) -> bool {
    identity.process_group.is_some_and(group_alive)
}

/// Whether any process is left in process group `pgid` (an unreaped or
/// zombie leader counts).
fn group_alive(pgid: u32) -> bool {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else { return false };
    // SAFETY: killpg has no memory-safety preconditions; signal 0 only checks.
    unsafe { libc::killpg(pgid, 0) == 0 }
}

fn kill_group(pgid: u32) -> io::Result<()> {
    signal_group(pgid, libc::SIGKILL)
}

fn signal_group(pgid: u32, signal: libc::c_int) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid).map_err(io::Error::other)?;
    // SAFETY: killpg has no memory-safety preconditions.
    if unsafe { libc::killpg(pgid, signal) } == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ESRCH) {
        // Everyone in the group has already exited.
        return Ok(());
    }
    Err(error)
}

/// The started command's pid, its process group (the same number) and, on
/// Linux, its start time. Read right after the spawn, while the child cannot
/// have been reaped, so the start time is the child's.
pub(super) fn identity(child: &Child) -> WakeIdentity {
    let pid = child.id();
    WakeIdentity { pid, process_group: Some(pid), start_time: proc_stat::start_time(pid) }
}

/// Kills the leftover's process group only if its pid still names the same
/// process (same start time): a reused pid is never touched. Then waits up
/// to `wait` for it to go.
pub(super) fn end_leftover(identity: &WakeIdentity, wait: std::time::Duration) -> Leftover {
    let Some(expected) = identity.start_time else {
        return Leftover::Unverifiable;
    };
    let group = match still_running(identity.pid, expected) {
        Ok(Some(group)) => group,
        Ok(None) => return Leftover::Gone,
        Err(error) => return Leftover::Failed(format!("cannot read /proc/{}/stat: {error}", identity.pid)),
    };
    // Still in the group it led: end the group. Otherwise (it moved itself
    // elsewhere) only the process itself is known to be ours.
    let ended =
        if Some(group) == identity.process_group { kill_group(group) } else { kill_process(identity.pid) };
    if let Err(error) = ended {
        return Leftover::Failed(error.to_string());
    }
    let deadline = std::time::Instant::now() + wait;
    loop {
        if !matches!(still_running(identity.pid, expected), Ok(Some(_))) {
            return Leftover::Ended;
        }
        if std::time::Instant::now() >= deadline {
            return Leftover::StillExiting;
        }
        // Not ours to wait on (its parent is init now): a short bounded poll.
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Whether the recorded command still runs (same pid and start time).
pub(super) fn leftover_running(identity: &WakeIdentity) -> bool {
    identity.start_time.is_some_and(|start| matches!(still_running(identity.pid, start), Ok(Some(_))))
}

/// No handle is needed here: the gate script records the exit status.
pub(super) struct Watch;

pub(super) fn watch_leftover(_identity: &WakeIdentity) -> Option<Watch> {
    None
}

impl Watch {
    pub(super) fn exit_code(&self) -> Option<i32> {
        None
    }
}

/// SIGTERM to the leftover's process group (only if its pid still names the
/// recorded process), then, if it has not gone within `grace`, the kill of
/// [`end_leftover`].
pub(super) fn terminate_leftover(identity: &WakeIdentity, grace: std::time::Duration) -> Leftover {
    let Some(expected) = identity.start_time else {
        return Leftover::Unverifiable;
    };
    let signalled = match still_running(identity.pid, expected) {
        Ok(Some(group)) if Some(group) == identity.process_group => signal_group(group, libc::SIGTERM),
        Ok(Some(_)) => signal_process(identity.pid, libc::SIGTERM),
        Ok(None) => return Leftover::Gone,
        Err(error) => return Leftover::Failed(format!("cannot read /proc/{}/stat: {error}", identity.pid)),
    };
    if let Err(error) = signalled {
        return Leftover::Failed(error.to_string());
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if !matches!(still_running(identity.pid, expected), Ok(Some(_))) {
            return Leftover::Ended;
        }
        // Not ours to wait on (its parent is init now): a short bounded poll.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    end_leftover(identity, super::LEFTOVER_WAIT)
}

/// The process group of `pid` if it is still the process started at
/// `start_time` and has not exited (a zombie has: only its reaping is
/// missing).
fn still_running(pid: u32, start_time: u64) -> io::Result<Option<u32>> {
    Ok(proc_stat::read(pid)?
        .filter(|stat| stat.start_time == start_time && !matches!(stat.state, 'Z' | 'X'))
        .map(|stat| stat.process_group))
}

fn kill_process(pid: u32) -> io::Result<()> {
    signal_process(pid, libc::SIGKILL)
}

fn signal_process(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ESRCH) {
        return Ok(());
    }
    Err(error)
}

/// `/proc/<pid>/stat` (Linux; elsewhere there is no start time, and a
/// leftover cannot be verified).
mod proc_stat {
    use std::io;

    pub(super) struct Stat {
        /// Field 3: R, S, D, Z (zombie), X (dead)...
        pub(super) state: char,
        /// Field 5.
        pub(super) process_group: u32,
        /// Field 22: clock ticks after boot.
        pub(super) start_time: u64,
    }

    pub(super) fn start_time(pid: u32) -> Option<u64> {
        read(pid).ok().flatten().map(|stat| stat.start_time)
    }

    /// `None` when there is no such process.
    #[cfg(target_os = "linux")]
    pub(super) fn read(pid: u32) -> io::Result<Option<Stat>> {
        let text = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        parse(&text).map(Some).ok_or_else(|| io::Error::other(format!("unexpected /proc/{pid}/stat")))
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn read(_pid: u32) -> io::Result<Option<Stat>> {
        Err(io::Error::other("no /proc on this system"))
    }

    /// The command name (field 2) is in parentheses and may itself hold
    /// `)` and spaces: the fields that follow start after the last `)`.
    pub(super) fn parse(text: &str) -> Option<Stat> {
        let (_, rest) = text.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // fields[0] is field 3.
        Some(Stat {
            state: fields.first()?.chars().next()?,
            process_group: fields.get(5 - 3)?.parse().ok()?,
            start_time: fields.get(22 - 3)?.parse().ok()?,
        })
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn fields_after_a_command_name_with_parentheses_and_spaces() {
            let text = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
            let stat = super::parse(text).unwrap();
            assert_eq!((stat.state, stat.process_group, stat.start_time), ('S', 42, 987654));
            assert!(super::parse("42 (x) S 1").is_none());
        }
    }
}
