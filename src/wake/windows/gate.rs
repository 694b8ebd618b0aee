//! The wake command's shell on Windows, and the gate around it that
//! records its exit status (see [`GATE_SCRIPT`]).

use std::io::{self, PipeWriter};
use std::os::windows::ffi::OsStringExt;
use std::os::windows::process::CommandExt;
use std::process::{Command, Stdio};

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
///
/// Gated, an outer `cmd` runs the batch file [`GATE_SCRIPT`] (written
/// next to the exit file) around that command line; it finds the rendered
/// command in [`GATE_COMMAND_VAR`], escaped for it ([`escape_for_gate`]),
/// and the exit file's path in [`GATE_EXIT_FILE_VAR`]; stdin is the gate's
/// pipe. Ungated, the command runs at once with stdin from NUL.
pub(in crate::wake) fn shell_command(
    rendered: &str,
    gated: bool,
    exit_file: &std::path::Path,
) -> io::Result<(Command, Option<PipeWriter>)> {
    let mut command = Command::new("cmd.exe");
    if !gated {
        command.args(["/D", "/V:ON", "/S", "/C"]).raw_arg(format!("\"{rendered}\"")).stdin(Stdio::null());
        return Ok((command, None));
    }
    let gate = exit_file.with_file_name(GATE_FILE_NAME);
    if std::fs::read(&gate).ok().as_deref() != Some(GATE_SCRIPT.as_bytes()) {
        crate::queue_store::write_atomic_unsynced(&gate, GATE_SCRIPT.as_bytes(), ".gate.")?;
    }
    // The read end is inherited by the gate's cmd only (std duplicates it
    // for the child); the write end stays with the sidecar alone.
    let (reader, writer) = std::io::pipe()?;
    command
        .args(["/D", "/V:OFF", "/S", "/C"])
        .raw_arg(format!("\"\"{}\"\"", gate.display()))
        .env(GATE_SHELL_VAR, system_cmd())
        .env(GATE_COMMAND_VAR, escape_for_gate(rendered))
        .env(GATE_EXIT_FILE_VAR, exit_file)
        .stdin(reader);
    Ok((command, Some(writer)))
}

/// Where the gate finds the `cmd.exe` to run the command with (by its path:
/// a service's environment may have no PATH), the command, and the exit
/// file. Inherited by the command (harmless, and documented).
const GATE_SHELL_VAR: &str = "AGENTCOM_WAKE_SHELL";
const GATE_COMMAND_VAR: &str = "AGENTCOM_WAKE_COMMAND";
const GATE_EXIT_FILE_VAR: &str = "AGENTCOM_WAKE_EXIT_FILE";
/// The gate's batch file, in the results directory's `.tasks`.
const GATE_FILE_NAME: &str = "wake-gate.cmd";

/// The batch file a gated wake command's outer `cmd` runs, the Windows twin
/// of the Unix gate script (`unix.rs`). It waits for one line on its stdin,
/// a pipe only the sidecar writes to, which it writes only once queue.json
/// records the command's identity. A sidecar killed before that closes the
/// pipe with its death: `set /p` meets end of file, the line is not `go`,
/// and the gate exits 75 without running anything. Released, it runs the
/// command line exactly as an ungated wake command (`cmd /D /V:ON /S /C
/// "..."`), then records its exit status in the exit file atomically (a
/// `.tmp`, then `move`): whoever starts next finds it there even if no
/// sidecar was running when the command ended. It exits with the command's
/// status. The gate's `cmd` stays in the job and is the process whose pid
/// and creation time were recorded. The cost: one more `cmd.exe`, waiting,
/// for as long as the command runs (a few MB of private memory; not
/// measured on Windows).
///
/// Delayed expansion is off here: each line's `%VAR%` is expanded when the
/// line runs, and an expanded value is never expanded again (`!VAR!` in the
/// command is left for the command's own `cmd`). Only constructs Wine's
/// `cmd` runs as Windows' does: no `||`, no redirection before a command or
/// after a block.
const GATE_SCRIPT: &str = "@echo off\r
set AGENTCOM_WAKE_GATE=\r
set /p AGENTCOM_WAKE_GATE=\r
if not \"%AGENTCOM_WAKE_GATE%\"==\"go\" exit 75\r
\"%AGENTCOM_WAKE_SHELL%\" /D /V:ON /S /C \"%AGENTCOM_WAKE_COMMAND%\"\r
set AGENTCOM_WAKE_STATUS=%ERRORLEVEL%\r
echo exit %AGENTCOM_WAKE_STATUS% >\"%AGENTCOM_WAKE_EXIT_FILE%.tmp\"\r
move /Y \"%AGENTCOM_WAKE_EXIT_FILE%.tmp\" \"%AGENTCOM_WAKE_EXIT_FILE%\" >NUL\r
exit %AGENTCOM_WAKE_STATUS%\r
";

/// The system's `cmd.exe`, the one `Command::new("cmd.exe")` finds when
/// PATH does not name it (plain `cmd.exe` if the system directory is
/// unknown).
fn system_cmd() -> std::path::PathBuf {
    let mut buffer = [0u16; 260];
    // SAFETY: the buffer is valid for writes of the length given.
    let len = unsafe {
        windows_sys::Win32::System::SystemInformation::GetSystemDirectoryW(
            buffer.as_mut_ptr(),
            buffer.len() as u32,
        )
    } as usize;
    if len == 0 || len >= buffer.len() {
        return "cmd.exe".into();
    }
    std::path::PathBuf::from(std::ffi::OsString::from_wide(&buffer[..len])).join("cmd.exe")
}

/// The rendered command as the gate's line must hold it so that the
/// command's `cmd` gets it unchanged. The gate's `cmd` parses its line
/// after expanding the variable: the gate's quotes around the command put
/// what the command itself quotes outside quotes for the gate, where `^ & |
/// < > ( )` are syntax; each gets a caret there, which the gate's `cmd`
/// removes.
fn escape_for_gate(rendered: &str) -> String {
    let mut escaped = String::with_capacity(rendered.len() + 8);
    // Inside the gate's quotes until the command's own first quote.
    let mut quoted_for_gate = true;
    for c in rendered.chars() {
        if c == '"' {
            quoted_for_gate = !quoted_for_gate;
        } else if !quoted_for_gate && matches!(c, '^' | '&' | '|' | '<' | '>' | '(' | ')') {
            escaped.push('^');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    #[test]
    fn what_the_command_quotes_is_escaped_for_the_gate() {
        let rendered = r#""C:\a b\x.cmd" & echo "p & (q) | r^" > "o.txt""#;
        assert_eq!(
            super::escape_for_gate(rendered),
            r#""C:\a b\x.cmd" & echo "p ^& ^(q^) ^| r^^" > "o.txt""#
        );
        assert_eq!(super::escape_for_gate("echo a & b"), "echo a & b");
    }
}
