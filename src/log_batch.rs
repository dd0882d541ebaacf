//! Access lines written after the response, one `write(2)` for all the requests a worker
//! finished in one pass of its scheduler.
//!
//! A request's access line is rendered when its response body ends, which is before hyper
//! flushes the last bytes of that response: written there, the line's syscall sits between the
//! upstream's last event and the client's. On a serving worker (a single-threaded runtime) the
//! line is instead appended to the thread's batch, and the first line of a batch spawns a task
//! that writes the batch. The task runs once the connection task has yielded, so after the
//! response has gone out; lines of every request that finished in between share its one write.
//!
//! Nothing is lost on the way out: the batch is written when its task is dropped unrun (a
//! runtime shutting down), and when its thread ends. A batch that reaches [`MAX_BATCH`] bytes is
//! written at once, so memory stays bounded even if its task never ran. Anywhere but a worker's
//! own thread (no runtime, a multi-threaded one or a blocking pool, where the task would run on
//! another thread than the batch it should write) a line is written at once.

use std::cell::RefCell;
use std::io::Write;

use tokio::runtime::{Handle, RuntimeFlavor};

use crate::telemetry::LineWriter;

/// A batch this large is written without waiting for its task.
const MAX_BATCH: usize = 64 * 1024;
/// A batch buffer grown beyond this is released after its write rather than kept.
const KEEP: usize = 8 * 1024;

thread_local! {
    static BATCH: RefCell<Batch> = const { RefCell::new(Batch::new()) };
    /// Where a line written at once is rendered.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The lines of one thread waiting for their write.
struct Batch {
    buf: Vec<u8>,
    writer: Option<LineWriter>,
    /// A task that writes the batch has been spawned and has not run yet.
    scheduled: bool,
}

/// Writes the calling thread's batch when dropped, whether its task ran or was dropped unrun.
struct WriteOnDrop;

/// Renders a line with `render` and writes it to `writer`: after the running task yields when
/// called on a serving worker's thread, at once anywhere else. A line that cannot be written has
/// nowhere to be reported, so write errors are dropped.
pub fn emit(writer: &LineWriter, render: impl Fn(&mut Vec<u8>)) {
    if crate::workers::current().is_some() {
        if let Ok(handle) = Handle::try_current() {
            if handle.runtime_flavor() == RuntimeFlavor::CurrentThread
                && defer(&handle, writer, &render)
            {
                return;
            }
        }
    }
    let _ = LINE.try_with(|line| {
        let Ok(mut line) = line.try_borrow_mut() else {
            return;
        };
        line.clear();
        render(&mut line);
        let _ = writer.line().write_all(&line);
    });
}

/// Appends the line to this thread's batch; `false` where there is no batch to append to.
fn defer(handle: &Handle, writer: &LineWriter, render: &impl Fn(&mut Vec<u8>)) -> bool {
    BATCH
        .try_with(|batch| {
            let Ok(mut batch) = batch.try_borrow_mut() else {
                return false;
            };
            if !batch.writer.as_ref().is_some_and(|w| w.same(writer)) {
                batch.write();
                batch.writer = Some(writer.clone());
            }
            render(&mut batch.buf);
            if batch.buf.len() >= MAX_BATCH {
                batch.write();
            } else if !batch.scheduled {
                batch.scheduled = true;
                // The task owns the guard, which writes the batch when the task has run or when
                // it is dropped unrun.
                let write = WriteOnDrop;
                drop(handle.spawn(async move {
                    let _write = write;
                }));
            }
            true
        })
        .unwrap_or(false)
}

// === impl Batch ===

impl Batch {
    const fn new() -> Self {
        Batch {
            buf: Vec::new(),
            writer: None,
            scheduled: false,
        }
    }

    fn write(&mut self) {
        self.scheduled = false;
        if let Some(writer) = &self.writer {
            if !self.buf.is_empty() {
                let _ = writer.line().write_all(&self.buf);
            }
        }
        self.buf.clear();
        if self.buf.capacity() > KEEP {
            self.buf = Vec::new();
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.write();
    }
}

// === impl WriteOnDrop ===

impl Drop for WriteOnDrop {
    fn drop(&mut self) {
        let _ = BATCH.try_with(|batch| {
            if let Ok(mut batch) = batch.try_borrow_mut() {
                batch.write();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::workers::Workers;
    use std::fs::File;
    use std::io::{Read, Seek};

    fn scratch() -> (File, LineWriter) {
        let file = crate::telemetry::scratch_file();
        let writer = LineWriter::to_file(file.try_clone().unwrap());
        (file, writer)
    }

    fn contents(file: &mut File) -> String {
        file.rewind().unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        text
    }

    fn line(text: &'static str) -> impl Fn(&mut Vec<u8>) {
        move |buf: &mut Vec<u8>| buf.extend_from_slice(text.as_bytes())
    }

    /// Runs `body` as a task on a serving worker (the thread the gateway's connections run on)
    /// and waits for it to end.
    fn on_worker<F>(body: impl FnOnce() -> F + Send + 'static)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let workers = Workers::start(1, &Metrics::new()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        workers
            .dispatch(move |open| {
                tokio::spawn(async move {
                    body().await;
                    let _ = tx.send(());
                    drop(open);
                });
            })
            .unwrap();
        rx.recv().expect("the task panicked");
        workers.stop();
    }

    #[test]
    fn on_a_worker_lines_wait_for_the_task_to_yield() {
        let (mut file, writer) = scratch();
        on_worker(move || async move {
            emit(&writer, line("one\n"));
            emit(&writer, line("two\n"));
            assert_eq!(contents(&mut file), "");
            tokio::task::yield_now().await;
            assert_eq!(contents(&mut file), "one\ntwo\n");
            // The next line starts a new batch.
            emit(&writer, line("three\n"));
            assert_eq!(contents(&mut file), "one\ntwo\n");
            tokio::task::yield_now().await;
            assert_eq!(contents(&mut file), "one\ntwo\nthree\n");
        });
    }

    #[test]
    fn off_a_worker_a_line_is_written_at_once() {
        let (mut file, writer) = scratch();
        emit(&writer, line("outside\n"));
        assert_eq!(contents(&mut file), "outside\n");
        // A single-threaded runtime of its own, and its blocking pool, are not a worker.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            emit(&writer, line("runtime\n"));
            assert_eq!(contents(&mut file), "outside\nruntime\n");
            let (w, mut f) = (writer.clone(), file.try_clone().unwrap());
            tokio::task::spawn_blocking(move || {
                emit(&w, line("blocking\n"));
                assert_eq!(contents(&mut f), "outside\nruntime\nblocking\n");
            })
            .await
            .unwrap();
        });
    }

    #[test]
    fn a_full_batch_is_written_without_waiting() {
        let (mut file, writer) = scratch();
        let long: &'static str = "x".repeat(1023).leak();
        on_worker(move || async move {
            let mut written = 0;
            while contents(&mut file).is_empty() {
                emit(&writer, move |buf: &mut Vec<u8>| {
                    buf.extend_from_slice(long.as_bytes());
                    buf.push(b'\n');
                });
                written += 1024;
                assert!(
                    written <= MAX_BATCH,
                    "nothing written after {written} bytes"
                );
            }
            assert_eq!(contents(&mut file).len(), MAX_BATCH);
        });
    }

    #[test]
    fn a_batch_is_written_when_its_task_is_dropped_unrun() {
        let (mut file, writer) = scratch();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // The future ends without yielding, so the batch's task is still queued when the
        // runtime is dropped, here on this thread (its end would write the batch as well).
        runtime.block_on(async {
            let handle = Handle::current();
            assert!(defer(&handle, &writer, &line("queued\n")));
            assert_eq!(contents(&mut file), "");
        });
        drop(runtime);
        assert_eq!(contents(&mut file), "queued\n");
    }

    #[test]
    fn lines_are_written_when_the_worker_stops() {
        let (mut file, writer) = scratch();
        let workers = Workers::start(1, &Metrics::new()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        workers
            .dispatch(move |open| {
                tokio::spawn(async move {
                    emit(&writer, line("last words\n"));
                    // The connection stays open until the worker stops.
                    let _ = tx.send(());
                    let _open = open;
                    std::future::pending::<()>().await;
                });
            })
            .unwrap();
        rx.recv().unwrap();
        workers.stop();
        assert_eq!(contents(&mut file), "last words\n");
    }
}
