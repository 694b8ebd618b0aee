//! Reading the release: `https://` (and plain `http://` to loopback) through
//! ureq on native-tls, `file://` from a share. Redirects are followed only
//! to the same scheme, host and port; every read is bounded in size and
//! waits at most the configured timeout for data.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

/// Redirects followed (same origin only) before giving up.
const MAX_REDIRECTS: usize = 5;

/// Whether `url` may be read: https, file, or http to loopback only.
pub fn check_url(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "file" => {
            url.to_file_path().map(|_| ()).map_err(|()| "a file:// URL must name an absolute path".into())
        }
        "http" => match url.host() {
            Some(url::Host::Ipv4(ip)) if ip.is_loopback() => Ok(()),
            Some(url::Host::Ipv6(ip)) if ip.is_loopback() => Ok(()),
            Some(url::Host::Domain("localhost")) => Ok(()),
            _ => {
                Err("plain http:// is allowed only to loopback (127.0.0.1, ::1, localhost); use https://"
                    .into())
            }
        },
        other => Err(format!("unsupported scheme {other}:// (expected https://, or file:// for a share)")),
    }
}

pub struct Fetcher {
    agent: ureq::Agent,
    timeout: Duration,
}

impl Fetcher {
    /// `ca_file`: an extra root certificate (the config's `tls_ca_file`).
    pub fn new(
        timeout: Duration,
        connect_timeout: Duration,
        ca_file: Option<&PathBuf>,
    ) -> Result<Fetcher, String> {
        let mut tls = native_tls::TlsConnector::builder();
        if let Some(path) = ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read tls_ca_file {}: {e}", path.display()))?;
            let cert = native_tls::Certificate::from_pem(&pem)
                .map_err(|e| format!("tls_ca_file {} is not usable PEM: {e}", path.display()))?;
            tls.add_root_certificate(cert);
        }
        let tls = tls.build().map_err(|e| format!("cannot set up TLS: {e}"))?;
        let agent = ureq::AgentBuilder::new()
            .tls_connector(Arc::new(tls))
            .timeout_connect(connect_timeout)
            .timeout_read(timeout)
            .timeout_write(timeout)
            .redirects(0)
            .user_agent(concat!("agentcom-sidecar/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Fetcher { agent, timeout })
    }

    /// Opens `url` for reading. The reader's errors say what failed.
    pub fn open(&self, url: &Url) -> Result<Box<dyn Read + Send>, String> {
        check_url(url)?;
        if url.scheme() == "file" {
            let path = url.to_file_path().map_err(|()| format!("{url}: not a local path"))?;
            let file = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            return Ok(Box::new(file));
        }
        let mut current = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let response = match self.agent.request_url("GET", &current).call() {
                Ok(response) => response,
                Err(ureq::Error::Status(code, response)) => {
                    return Err(format!("{}: HTTP {code} {}", redact(&current), response.status_text()))
                }
                Err(ureq::Error::Transport(t)) => {
                    return Err(format!("{}: {}", redact(&current), transport(&t)))
                }
            };
            if (300..400).contains(&response.status()) {
                let location = response.header("location").ok_or_else(|| {
                    format!("{}: HTTP {} without a Location", redact(&current), response.status())
                })?;
                let next = current
                    .join(location)
                    .map_err(|e| format!("{}: bad redirect Location {location:?}: {e}", redact(&current)))?;
                if next.origin() != current.origin() {
                    return Err(format!(
                        "{}: redirect to another host ({}) refused",
                        redact(&current),
                        redact(&next)
                    ));
                }
                current = next;
                continue;
            }
            let timeout = self.timeout;
            let reader = response.into_reader();
            return Ok(Box::new(TimeoutNamed { inner: reader, timeout }));
        }
        Err(format!("{}: more than {MAX_REDIRECTS} redirects", redact(url)))
    }

    /// Reads all of `url`, refusing more than `max` bytes.
    pub fn read_small(&self, url: &Url, max: u64) -> Result<Vec<u8>, String> {
        let reader = self.open(url)?;
        let mut bytes = Vec::new();
        reader.take(max + 1).read_to_end(&mut bytes).map_err(|e| format!("{}: {e}", redact(url)))?;
        if bytes.len() as u64 > max {
            return Err(format!("{}: larger than {max} bytes", redact(url)));
        }
        Ok(bytes)
    }
}

/// A URL for an error message: no user info, no query.
pub fn redact(url: &Url) -> String {
    crate::config::redact_url(url.as_str())
}

fn transport(t: &ureq::Transport) -> String {
    // ureq's Display repeats the URL; the kind and the source say it.
    let mut text = t.kind().to_string().to_lowercase();
    if let Some(message) = t.message() {
        text = format!("{text}: {message}");
    }
    if let Some(source) = std::error::Error::source(t) {
        text = format!("{text}: {source}");
    }
    text
}

/// The body reader, whose read timeout reads as such.
struct TimeoutNamed<R> {
    inner: R,
    timeout: Duration,
}

impl<R: Read> Read for TimeoutNamed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no data for {} ms (update_timeout_ms)", self.timeout.as_millis()),
            ),
            _ => e,
        })
    }
}
