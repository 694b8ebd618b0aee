//! systemd's notify protocol (sd_notify(3)), by hand: one datagram per
//! message on the Unix socket named by `NOTIFY_SOCKET` (a path, or `@name`
//! for Linux's abstract namespace). Nothing is sent when it is unset.
//!
//! The watchdog interval is `WATCHDOG_USEC` (set by systemd from
//! `WatchdogSec=`), honoured only when `WATCHDOG_PID` is unset or is this
//! process; the loop beats (`WATCHDOG=1`) every half interval, as
//! sd_watchdog_enabled(3) advises. The variables are read, not removed:
//! systemd ignores what a wake command might send there (`NotifyAccess=main`,
//! the default), and removing variables from a process that already runs
//! threads is not sound.

use std::time::Duration;

/// The `WATCHDOG_USEC`/`WATCHDOG_PID` pair as a beat interval: half the
/// watchdog timeout. `Ok(None)`: no watchdog for this process.
pub fn beat_interval(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Result<Option<Duration>, String> {
    let Some(usec) = usec.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    if let Some(pid) = pid.filter(|p| !p.is_empty()) {
        let pid: u32 = pid.parse().map_err(|_| format!("WATCHDOG_PID is not a process id: {pid:?}"))?;
        if pid != own_pid {
            return Ok(None);
        }
    }
    match usec.parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(usec) => Ok(Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))),
        Err(_) => Err(format!("WATCHDOG_USEC is not a number of microseconds: {usec:?}")),
    }
}

#[cfg(unix)]
pub use unix::Notifier;

#[cfg(unix)]
mod unix {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    use std::time::{Duration, Instant};

    use super::super::Supervisor;

    /// Talks to systemd's notify socket.
    pub struct Notifier {
        socket: UnixDatagram,
        addr: SocketAddr,
        beat_every: Option<Duration>,
        next_beat: Option<Instant>,
        stopping: bool,
        /// A failed send is logged once, not on every beat.
        warned: bool,
    }

    impl Notifier {
        /// `None` when `NOTIFY_SOCKET` is unset or empty, or unusable (logged).
        pub fn from_env() -> Option<Notifier> {
            let socket = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty())?;
            let usec = std::env::var("WATCHDOG_USEC").ok();
            let pid = std::env::var("WATCHDOG_PID").ok();
            let beat_every = match super::beat_interval(usec.as_deref(), pid.as_deref(), std::process::id()) {
                Ok(interval) => interval,
                Err(e) => {
                    log::warn!("{e}; not sending watchdog pings");
                    None
                }
            };
            match Notifier::new(socket.as_encoded_bytes(), beat_every) {
                Ok(notifier) => Some(notifier),
                Err(e) => {
                    log::warn!("cannot use NOTIFY_SOCKET {}: {e}", socket.to_string_lossy());
                    None
                }
            }
        }

        pub fn new(socket: &[u8], beat_every: Option<Duration>) -> std::io::Result<Notifier> {
            let addr = match socket.strip_prefix(b"@") {
                #[cfg(any(target_os = "linux", target_os = "android"))]
                Some(name) => {
                    #[cfg(target_os = "android")]
                    use std::os::android::net::SocketAddrExt;
                    #[cfg(target_os = "linux")]
                    use std::os::linux::net::SocketAddrExt;
                    SocketAddr::from_abstract_name(name)?
                }
                #[cfg(not(any(target_os = "linux", target_os = "android")))]
                Some(_) => {
                    return Err(std::io::Error::other("abstract socket names are Linux-only"));
                }
                None => {
                    use std::os::unix::ffi::OsStrExt;
                    SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(socket))?
                }
            };
            let socket = UnixDatagram::unbound()?;
            // A full queue at systemd's end drops the message (logged once)
            // rather than blocking the loop.
            socket.set_nonblocking(true)?;
            Ok(Notifier { socket, addr, beat_every, next_beat: None, stopping: false, warned: false })
        }

        fn send(&mut self, message: &str) {
            if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.addr) {
                if !self.warned {
                    self.warned = true;
                    log::warn!("cannot notify systemd ({e}); later failures are not logged");
                }
            }
        }
    }

    impl Supervisor for Notifier {
        fn ready(&mut self) {
            let now = Instant::now();
            self.send("READY=1");
            log::info!("told systemd we are ready");
            if let Some(every) = self.beat_every {
                log::info!("sending watchdog pings every {} ms", every.as_millis());
                // The loop's first turn sends the first ping.
                self.next_beat = Some(now);
            }
        }

        fn status(&mut self, line: &str) {
            // One line: a newline would start another assignment.
            let line = line.replace('\n', " ");
            self.send(&format!("STATUS={line}"));
        }

        fn stopping(&mut self) {
            if !std::mem::replace(&mut self.stopping, true) {
                self.send("STOPPING=1");
            }
        }

        fn next_beat(&self) -> Option<Instant> {
            self.next_beat
        }

        fn beat(&mut self, now: Instant) -> bool {
            match (self.next_beat, self.beat_every) {
                (Some(due), Some(every)) if now >= due => {
                    self.send("WATCHDOG=1");
                    self.next_beat = Some(now + every);
                    true
                }
                _ => false,
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn messages_arrive_as_datagrams_and_beats_wait_for_their_time() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify.sock");
            let listener = UnixDatagram::bind(&path).unwrap();
            let mut notifier =
                Notifier::new(path.as_os_str().as_encoded_bytes(), Some(Duration::from_secs(3600))).unwrap();
            notifier.ready();
            notifier.status("connecting to the hub\nx");
            let first = notifier.next_beat().expect("a watchdog is set");
            assert!(notifier.beat(first), "the first beat is due at once");
            let due = notifier.next_beat().unwrap();
            assert!(!notifier.beat(due - Duration::from_millis(1)), "a beat before its time");
            assert!(notifier.beat(due));
            assert_eq!(notifier.next_beat(), Some(due + Duration::from_secs(3600)));
            notifier.stopping();
            notifier.stopping();
            drop(notifier);
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            listener.set_nonblocking(true).unwrap();
            while let Ok(n) = listener.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            assert_eq!(
                got,
                ["READY=1", "STATUS=connecting to the hub x", "WATCHDOG=1", "WATCHDOG=1", "STOPPING=1"]
            );
        }

        #[test]
        fn without_a_watchdog_nothing_beats() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify.sock");
            let _listener = UnixDatagram::bind(&path).unwrap();
            let mut notifier = Notifier::new(path.as_os_str().as_encoded_bytes(), None).unwrap();
            notifier.ready();
            assert_eq!(notifier.next_beat(), None);
            assert!(!notifier.beat(Instant::now() + Duration::from_secs(3600)));
        }

        #[cfg(target_os = "linux")]
        #[test]
        fn abstract_socket_names_are_understood() {
            use std::os::linux::net::SocketAddrExt;
            let name = format!("agentcom-sidecar-test-{}", std::process::id());
            let listener = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
            let mut notifier = Notifier::new(format!("@{name}").as_bytes(), None).unwrap();
            notifier.ready();
            let mut buf = [0u8; 64];
            let n = listener.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"READY=1");
        }
    }
}

/// Not Unix: there is no systemd to notify.
#[cfg(not(unix))]
pub struct Notifier;

#[cfg(not(unix))]
impl Notifier {
    pub fn from_env() -> Option<Notifier> {
        None
    }
}

/// Off Unix there is no notify socket: every message is the trait's no-op.
#[cfg(not(unix))]
impl super::Supervisor for Notifier {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_beat_interval_is_half_the_watchdog_for_this_process_only() {
        let ms = |n| Ok(Some(Duration::from_millis(n)));
        assert_eq!(beat_interval(None, None, 7), Ok(None));
        assert_eq!(beat_interval(Some(""), None, 7), Ok(None));
        assert_eq!(beat_interval(Some("0"), None, 7), Ok(None));
        assert_eq!(beat_interval(Some("30000000"), None, 7), ms(15_000));
        assert_eq!(beat_interval(Some("200000"), Some("7"), 7), ms(100));
        assert_eq!(beat_interval(Some("200000"), Some("8"), 7), Ok(None));
        assert_eq!(beat_interval(Some("1"), None, 7), ms(1));
        assert!(beat_interval(Some("30s"), None, 7).unwrap_err().contains("WATCHDOG_USEC"));
        assert!(beat_interval(Some("200000"), Some("x"), 7).unwrap_err().contains("WATCHDOG_PID"));
    }
}
