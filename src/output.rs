//! A command's answer on stdout. A reader that has gone away
//! (`agentcom-sidecar check | head -1`) is not an error: the rest of the
//! output is dropped and the command ends as it would have, with its own
//! exit code, where `println!` would panic on the broken pipe.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// The reader of stdout has gone: nothing more is written.
static READER_GONE: AtomicBool = AtomicBool::new(false);

/// Stdout as a writer that drops what it is given once the reader has gone.
/// Any other failure is returned.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        unless_gone(buf.len(), || io::stdout().write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        unless_gone((), || io::stdout().flush())
    }
}

fn unless_gone<T>(dropped: T, write: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    if READER_GONE.load(Ordering::Relaxed) {
        return Ok(dropped);
    }
    match write() {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            READER_GONE.store(true, Ordering::Relaxed);
            Ok(dropped)
        }
        other => other,
    }
}

/// One line on stdout (see [`outln!`](crate::outln)). A failure other than
/// a reader that has gone is reported on stderr.
pub fn print_line(args: fmt::Arguments<'_>) {
    let mut out = Stdout;
    let written = out.write_fmt(args).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush());
    if let Err(e) = written {
        eprintln!("agentcom-sidecar: cannot write to stdout: {e}");
    }
}

/// `println!` for a command's output, quiet when the reader has gone (see
/// [`output`](crate::output)).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::print_line(format_args!($($arg)*))
    };
}
