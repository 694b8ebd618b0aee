//! Unix: `sh -c`, a process group per wake command, `killpg`.

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
