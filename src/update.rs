//! The hub's `restart_sidecar` with `update_command` set: instead of exiting
//! at once (and being offline while the supervisor's start script pulls and
//! builds), the sidecar starts the update command and keeps running. The
//! command (normally `scripts/update.sh`) builds the new binary and then
//! restarts the sidecar through the supervisor.
//!
//! The command is detached: its shell is orphaned at once, so it is not in
//! the sidecar's process tree (pm2 kills that whole tree on restart, which
//! would kill the update mid-way), and it runs in a process group of its own
//! (a Ctrl-C meant for the sidecar does not reach it). Its output is
//! appended to `update_log`. It runs in the directory of `config.json`, like
//! the wake command: a relative `scripts/update.sh` means the same file
//! however the sidecar was started, as every relative path of the config.

use std::io;
use std::path::Path;

/// The variable that carries the command to the detached shell, so the
/// command text is never spliced into another command line.
#[cfg(unix)]
const COMMAND_VAR: &str = "AGENTCOM_UPDATE_COMMAND";

/// Starts `command` through `sh -c` in `work_dir`, detached, output
/// appended to `log`.
/// Returns once it is started; `Err` if the log cannot be opened or the
/// shell cannot be started.
#[cfg(unix)]
pub fn start_detached(command: &str, work_dir: &Path, log: &Path) -> io::Result<()> {
    use std::fs::OpenOptions;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    let log = OpenOptions::new().create(true).append(true).open(log)?;
    let mut outer = Command::new("sh");
    outer
        // The outer shell starts the command in the background and exits:
        // the command's shell is then a child of init, not of the sidecar.
        .args(["-c", &format!("sh -c \"${COMMAND_VAR}\" &")])
        .env(COMMAND_VAR, command)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .current_dir(work_dir)
        .process_group(0);
    let status = outer.spawn()?.wait()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("the shell starting the update command failed: {status}")))
    }
}

/// Not supported here (Windows: the supervisor there is pm2 with
/// `cmd /c start.bat`; an update is `pm2 restart`). The caller falls back to
/// exiting, as without `update_command`.
#[cfg(not(unix))]
pub fn start_detached(_command: &str, _work_dir: &Path, _log: &Path) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "update_command is supported on Unix only"))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::fs;
    use std::time::{Duration, Instant};

    fn wait_for_file(path: &Path) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(text) = fs::read_to_string(path) {
                if text.ends_with('\n') {
                    return text;
                }
            }
            assert!(Instant::now() < deadline, "timed out waiting for {}", path.display());
            std::thread::park_timeout(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_command_runs_detached_with_its_output_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("update.log");
        let report = dir.path().join("report");
        // The command reports its parent and process group, and writes to
        // stdout and stderr; quotes in it stay the command's own.
        let command = format!(
            "echo 'to \"stdout\"'; echo to stderr >&2; \
             ps -o ppid= -o pgid= -p $$ > '{}.tmp' && mv '{0}.tmp' '{0}'",
            report.display()
        );
        start_detached(&command, dir.path(), &log).unwrap();
        let report = wait_for_file(&report);
        let mut fields = report.split_whitespace().map(|f| f.parse::<u32>().unwrap());
        let (ppid, pgid) = (fields.next().unwrap(), fields.next().unwrap());
        assert_ne!(ppid, std::process::id(), "the update is not our child");
        let our_pgid = unsafe { libc::getpgrp() } as u32;
        assert_ne!(pgid, our_pgid, "the update has a process group of its own");
        let text = fs::read_to_string(&log).unwrap();
        assert!(text.contains("to \"stdout\"\n") && text.contains("to stderr\n"), "{text}");
    }

    #[test]
    fn an_unopenable_log_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let error = start_detached("true", dir.path(), &dir.path().join("missing/update.log")).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn the_command_runs_in_the_config_directory() {
        // Relative to config.json's directory, like every other path.
        let dir = tempfile::tempdir().unwrap();
        let config_dir = dir.path().join("box");
        fs::create_dir(&config_dir).unwrap();
        fs::write(config_dir.join("update.sh"), "pwd > where.tmp && mv where.tmp where\n").unwrap();
        start_detached("sh update.sh", &config_dir, &dir.path().join("update.log")).unwrap();
        let shown = wait_for_file(&config_dir.join("where"));
        assert_eq!(Path::new(shown.trim()).canonicalize().unwrap(), config_dir.canonicalize().unwrap());
    }
}
