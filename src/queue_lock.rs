//! One sidecar per queue: an exclusive advisory OS lock on
//! `<queue_file>.lock`, held for the life of `run`.
//!
//! Two sidecars on one `queue.json` (pm2 plus a manual run) would both take
//! the hub's tasks and wake the agent twice. The lock is the operating
//! system's (`flock` on Unix, `LockFile` on Windows), so it goes with the
//! process however that ends, `kill -9` included: there is no stale lock to
//! clean up. The file is never deleted (deleting it would let a third
//! process lock a new file while the second still waits on the old one); it
//! holds the holder's pid as text, for the error a second instance prints.
//!
//! `status` and `check` only read and never take it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::Error;

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct QueueLock {
    _file: File,
    path: PathBuf,
}

/// The lock file that guards `queue_file`.
pub fn lock_path(queue_file: &Path) -> PathBuf {
    let mut name = queue_file.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl QueueLock {
    /// Takes the lock of `queue_file` without waiting. Held by another
    /// process: an error naming the lock file and, if it wrote it yet, the
    /// holder's pid.
    pub fn acquire(queue_file: &Path) -> Result<QueueLock, Error> {
        let path = lock_path(queue_file);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot open the lock file {}", path.display()), e))?;
        match sys::try_lock(&file) {
            Ok(true) => {}
            Ok(false) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("pid {pid}"),
                    Err(_) => "a process that has not written its pid yet".to_owned(),
                };
                return Err(Error::io(
                    format!(
                        "another sidecar already runs on {} ({holder} holds the lock file {})",
                        queue_file.display(),
                        path.display()
                    ),
                    io::Error::new(io::ErrorKind::WouldBlock, "one sidecar per queue"),
                ));
            }
            Err(e) => return Err(Error::io(format!("cannot lock {}", path.display()), e)),
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.flush());
        if let Err(e) = written {
            // The lock holds all the same; only the message of a second
            // instance loses the pid.
            log::warn!("cannot write our pid to {}: {e}", path.display());
        }
        Ok(QueueLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(unix)]
mod sys {
    use std::fs::File;
    use std::io;
    use std::os::unix::io::AsRawFd;

    /// `Ok(false)`: another open file description holds it.
    pub(super) fn try_lock(file: &File) -> io::Result<bool> {
        loop {
            // SAFETY: flock on a file descriptor we own; no memory involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(true);
            }
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(false),
                _ => return Err(error),
            }
        }
    }
}

#[cfg(windows)]
mod sys {
    use std::fs::File;
    use std::io;
    use std::os::windows::io::AsRawHandle;

    use windows_sys::Win32::Foundation::{ERROR_LOCK_VIOLATION, HANDLE};
    use windows_sys::Win32::Storage::FileSystem::LockFile;

    /// Locks one byte far past the pid text: a locked range cannot be read
    /// by others on Windows, and the second instance reads the pid.
    pub(super) fn try_lock(file: &File) -> io::Result<bool> {
        // SAFETY: LockFile on a handle we own; no memory involved.
        if unsafe { LockFile(file.as_raw_handle() as HANDLE, 0, 0x4000_0000, 1, 0) } != 0 {
            return Ok(true);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(ERROR_LOCK_VIOLATION as i32) {
            return Ok(false);
        }
        Err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_queue_is_refused_naming_the_file_and_pid() {
        let dir = tempfile::tempdir().unwrap();
        let queue = dir.path().join("queue.json");
        let held = QueueLock::acquire(&queue).unwrap();
        assert_eq!(held.path(), dir.path().join("queue.json.lock"));
        // flock locks belong to the open file description, so a second
        // open in the same process conflicts as another process would.
        let error = QueueLock::acquire(&queue).unwrap_err().to_string();
        assert!(error.contains(&held.path().display().to_string()), "{error}");
        assert!(error.contains(&format!("pid {}", std::process::id())), "{error}");
        assert!(error.starts_with("another sidecar already runs on"), "{error}");
        drop(held);
        QueueLock::acquire(&queue).expect("released on drop");
    }
}
