//! Putting a verified binary in place, and back: every step is a rename in
//! the binary's own directory, so the file at the binary's path is always
//! either the old binary or the new one, complete.
//!
//! Unix: the current binary is hard-linked aside (copied where links are not
//! possible) and the new one renamed over it (atomic; the running process
//! keeps its inode). Windows does not let a running `.exe` be replaced or
//! deleted, but lets it be renamed: it is renamed aside first, then the new
//! one renamed to its name (and the old one put back if that fails). There
//! the path is empty between the two renames.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the previous binary is kept for `update --rollback`:
/// `agentcom-sidecar.previous` (`agentcom-sidecar.previous.exe`).
pub fn previous_path(exe: &Path) -> PathBuf {
    let stem = exe.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match exe.extension() {
        Some(ext) => format!("{stem}.previous.{}", ext.to_string_lossy()),
        None => format!("{stem}.previous"),
    };
    exe.with_file_name(name)
}

/// A fresh name beside `exe` for the old binary on its way to `previous`.
fn aside_path(exe: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    exe.with_file_name(format!(".agentcom-sidecar-old-{}-{}", std::process::id(), nanos.as_nanos()))
}

/// Puts `new` at `exe`, and what was at `exe` at `previous`. `new` is gone
/// afterwards when this succeeds; on failure `exe` is unchanged.
pub fn replace(exe: &Path, new: &Path, previous: &Path) -> Result<(), String> {
    let aside = aside_path(exe);
    put_aside(exe, &aside).map_err(|e| format!("cannot keep the current binary ({}): {e}", exe.display()))?;
    if let Err(e) = std::fs::rename(new, exe) {
        undo_aside(exe, &aside);
        return Err(format!("cannot put the new binary in place at {}: {e}", exe.display()));
    }
    if let Err(e) = std::fs::rename(&aside, previous) {
        // The new binary is in place; only the rollback copy is missing.
        log::warn!("cannot keep the previous binary as {}: {e}", previous.display());
        let _ = std::fs::remove_file(&aside);
    }
    Ok(())
}

#[cfg(unix)]
fn put_aside(exe: &Path, aside: &Path) -> std::io::Result<()> {
    if std::fs::hard_link(exe, aside).is_ok() {
        return Ok(());
    }
    std::fs::copy(exe, aside).map(|_| ()).inspect_err(|_| {
        let _ = std::fs::remove_file(aside);
    })
}

/// `exe` was never moved: drop the link.
#[cfg(unix)]
fn undo_aside(_exe: &Path, aside: &Path) {
    let _ = std::fs::remove_file(aside);
}

#[cfg(windows)]
fn put_aside(exe: &Path, aside: &Path) -> std::io::Result<()> {
    std::fs::rename(exe, aside)
}

#[cfg(windows)]
fn undo_aside(exe: &Path, aside: &Path) {
    if let Err(e) = std::fs::rename(aside, exe) {
        log::error!("cannot put {} back at {}: {e}", aside.display(), exe.display());
    }
}

/// Runs `binary` once: `--version` must print `agentcom-sidecar ...`, and
/// `check` must accept `config` (when given). Returns the version printed.
pub fn run_once(binary: &Path, config: Option<&Path>, timeout: Duration) -> Result<String, String> {
    let version = run(binary, &["--version".as_ref()], timeout)
        .map_err(|e| format!("the new binary does not run here: {e}"))?;
    let version = version
        .trim()
        .strip_prefix("agentcom-sidecar ")
        .ok_or_else(|| {
            format!("the new binary's --version printed {:?}, not agentcom-sidecar's", version.trim())
        })?
        .to_owned();
    if let Some(config) = config {
        run(binary, &["check".as_ref(), "--config".as_ref(), config.as_os_str()], timeout)
            .map_err(|e| format!("the new binary's check on {}: {e}", config.display()))?;
    }
    Ok(version)
}

/// Runs `binary args`, bounded by `timeout`; stdout on success, the exit
/// status and first stderr line otherwise.
fn run(binary: &Path, args: &[&std::ffi::OsStr], timeout: Duration) -> Result<String, String> {
    // Beside the binary: there may be no /tmp (an empty root).
    let dir = binary.parent().unwrap_or(Path::new("."));
    let temp = || {
        tempfile::tempfile_in(dir)
            .map_err(|e| format!("cannot make a temporary file in {}: {e}", dir.display()))
    };
    let (out_file, err_file) = (temp()?, temp()?);
    let deadline = Instant::now() + timeout;
    let mut child = loop {
        let spawned = Command::new(binary)
            .args(args)
            // A pipe closed at once, not /dev/null: an empty root has no /dev.
            .stdin(Stdio::piped())
            .stdout(out_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(err_file.try_clone().map_err(|e| e.to_string())?)
            .spawn();
        match spawned {
            Ok(mut child) => {
                drop(child.stdin.take());
                break child;
            }
            // "Text file busy": another thread's fork still holds the
            // file we wrote (until its exec closes it). Brief; retry.
            Err(e) if is_text_busy(&e) && Instant::now() < deadline => {
                std::thread::park_timeout(Duration::from_millis(10))
            }
            Err(e) => return Err(format!("cannot start it: {e}")),
        }
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::park_timeout(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "it did not finish within {} ms (update_timeout_ms)",
                    timeout.as_millis()
                ));
            }
            Err(e) => return Err(format!("cannot wait for it: {e}")),
        }
    };
    let read = |mut file: &std::fs::File| {
        use std::io::{Read, Seek};
        let mut text = String::new();
        let _ = file.seek(std::io::SeekFrom::Start(0));
        let _ = file.take(64 * 1024).read_to_string(&mut text);
        text
    };
    if status.success() {
        Ok(read(&out_file))
    } else {
        let stderr = read(&err_file);
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned();
        Err(format!(
            "it exited with {status}{}",
            if first.is_empty() { String::new() } else { format!(": {first}") }
        ))
    }
}

fn is_text_busy(e: &std::io::Error) -> bool {
    #[cfg(target_os = "linux")]
    {
        e.raw_os_error() == Some(libc::ETXTBSY)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = e;
        false
    }
}
