//! Windows: `cmd /V:ON`, `taskkill /T`. Not built or tested here (the
//! development machines run Linux); kept small so it can be checked by eye.

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
