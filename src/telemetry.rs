//! Logging setup: pretty lines on a terminal, JSON lines by flag or config.
//!
//! The access log (target `sluice::access`) has one line per finished request. No field anywhere
//! carries message contents, API keys or Authorization headers.
//!
//! Lines go to standard error through a duplicate of its descriptor rather than through
//! `std::io::stderr()`. The formatter renders each line into a buffer first, so a line is one
//! `write(2)` either way; but `Stderr` takes a process-wide lock around that write, and with one
//! serving thread per core writing an access line per request, a thread that finds the lock held
//! sleeps on a futex and is woken by the holder: a context switch per collision, under load many
//! times more costly than the write itself. The kernel keeps each write of a line whole.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::access_log::{self, Style};
use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides `level`. Calling it twice is harmless.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = io::IsTerminal::is_terminal(&io::stderr());
    let writer = LineWriter::stderr();
    if !ansi {
        // On a terminal the access line goes through tracing, coloured like the rest.
        let style = match format {
            LogFormat::Json => Style::Json,
            LogFormat::Pretty => Style::Text,
        };
        access_log::install(style, writer.clone());
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// Writes each formatted line straight to standard error, without `Stderr`'s lock.
#[derive(Clone)]
pub struct LineWriter {
    /// A duplicate of descriptor 2; `None` if it could not be duplicated (then `Stderr` is used).
    file: Option<Arc<File>>,
}

/// The writer for one line.
pub enum Line<'a> {
    File(&'a File),
    Stderr(io::Stderr),
}

// === impl LineWriter ===

impl LineWriter {
    /// A writer to this process's standard error.
    pub fn stderr() -> Self {
        let file = io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(|fd| Arc::new(File::from(fd)));
        LineWriter { file }
    }

    /// The writer for one line.
    pub fn line(&self) -> Line<'_> {
        self.make_writer()
    }

    /// Whether both are clones of one writer.
    pub fn same(&self, other: &LineWriter) -> bool {
        match (&self.file, &other.file) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }

    /// A writer to `file`.
    #[cfg(test)]
    pub(crate) fn to_file(file: File) -> Self {
        LineWriter {
            file: Some(Arc::new(file)),
        }
    }
}

/// A new empty file, readable and writable, whose name is already gone (so nothing is left
/// behind); a name of its own for each call, so tests running side by side never share one.
#[cfg(test)]
pub(crate) fn scratch_file() -> File {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "sluice-log-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let _ = std::fs::remove_file(&path);
    file
}

impl<'a> MakeWriter<'a> for LineWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        match &self.file {
            Some(file) => Line::File(file),
            None => Line::Stderr(io::stderr()),
        }
    }
}

impl io::Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Line::File(f) => f.write(buf),
            Line::Stderr(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Line::File(f) => f.flush(),
            Line::Stderr(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn a_line_reaches_the_descriptor_whole() {
        let mut file = scratch_file();
        let writer = LineWriter {
            file: Some(Arc::new(file.try_clone().unwrap())),
        };
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let line = format!("thread {t} line {i} {}\n", "x".repeat(100));
                        writer.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        file.rewind().unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 800);
        assert!(lines
            .iter()
            .all(|l| l.starts_with("thread ") && l.ends_with(&"x".repeat(100))));
    }
}
