//! The crate-wide error type for set-up failures. Inside the running loop
//! failures become events instead (see `src/main_loop/`).

use std::fmt;
use std::io;

#[derive(Debug)]
pub enum Error {
    /// The configuration is unusable. The message names the file and key.
    Config(String),
    /// An I/O operation failed; `context` says what we were doing.
    Io { context: String, source: io::Error },
    /// The sidecar cannot run (a directory it needs, a worker thread that
    /// died); the message says what and where.
    Runtime(String),
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }

    /// Process exit code for this error: 2 for configuration errors (the
    /// operator must fix something), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => 2,
            Error::Io { .. } | Error::Runtime(_) => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(message) => write!(f, "config error: {message}"),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Runtime(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Config(_) | Error::Runtime(_) => None,
        }
    }
}
