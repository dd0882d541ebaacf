//! Serving runtimes, one per core.
//!
//! A work-stealing runtime serves a proxy badly: whenever a worker wakes a task it also wakes an
//! idle sibling to steal work (a `futex` per request), and a connection's socket, timers and
//! upstream connection end up polled from whichever thread got there first, so every readiness
//! event may cross cores. Sluice serves the way nginx's worker processes do: each worker is a
//! thread with a single-threaded runtime, and a connection accepted on the control runtime is
//! handed whole to the worker with the fewest open connections, where it lives until it closes.
//! Its socket, its timers, its SSE stream and the upstream connection it drives (the HTTP/1.1
//! pool keeps idle connections per worker, see [`current`]) stay on that one thread. The hand-off
//! costs one wake-up per connection, not per request; the listeners, the admin API's background
//! work, policy reloads and signals stay on the control runtime.
//!
//! A worker never blocks: CPU-heavy work (large input scans, token counting, local model steps)
//! still goes to a blocking pool or a dedicated thread, as on any runtime.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::metrics::Metrics;

/// How long a stopping worker waits for its blocking tasks before it leaves them behind.
const BLOCKING_GRACE: Duration = Duration::from_secs(5);

/// The period of each worker's heartbeat timer, shorter than any timeout a request arms.
///
/// Arming a timer that expires before the runtime's next planned wake-up makes tokio wake its
/// I/O driver (an `eventfd` write), even when the driver is not parked but running the very task
/// that armed the timer (tokio-rs/tokio#5207). Every keep-alive request arms one: hyper's
/// header-read timeout (10 s) for the connection's next request is armed as the response ends,
/// while the runtime last planned its wake-up for the longer upstream timeouts (60 s) that
/// request had armed. With a timer never more than this far away, the planned wake-up is always
/// sooner than a new timeout, and the write (one syscall per request, seen with strace under the
/// overhead scenario) goes away. Its cost is one wake-up per second per worker.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Work run inside a worker's runtime (so it may spawn tasks and register sockets there).
type Job = Box<dyn FnOnce(Open) + Send>;

thread_local! {
    /// The index of the worker this thread runs, when it runs one.
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker the calling thread runs; `None` on any other thread.
pub fn current() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// The serving runtimes.
pub struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    /// `None` once stopping: the worker's loop ends when its channel closes.
    jobs: Option<mpsc::UnboundedSender<(Job, Open)>>,
    /// Connections open on this worker, for the least-loaded pick.
    open: Arc<AtomicUsize>,
    /// The same count as `sluice_worker_connections{worker}`: an uneven spread is visible.
    gauge: IntGauge,
    thread: Option<JoinHandle<()>>,
}

/// One connection counted on a worker until dropped.
pub struct Open {
    open: Arc<AtomicUsize>,
    gauge: IntGauge,
}

/// The worker that should have taken a connection is gone.
#[derive(Debug, thiserror::Error)]
#[error("serving worker {0} has stopped")]
pub struct Stopped(usize);

// === impl Workers ===

impl Workers {
    /// Starts `count` workers (at least one), each on a thread of its own.
    pub fn start(count: usize, metrics: &Metrics) -> io::Result<Workers> {
        let mut workers = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, mut rx) = mpsc::unbounded_channel::<(Job, Open)>();
            let thread = std::thread::Builder::new()
                .name(format!("sluice-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(Some(index)));
                    runtime.block_on(async move {
                        // Dropped with the runtime, as every task still running here.
                        tokio::spawn(async {
                            let mut beat = tokio::time::interval(HEARTBEAT);
                            beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
                            loop {
                                beat.tick().await;
                            }
                        });
                        while let Some((job, open)) = rx.recv().await {
                            job(open);
                        }
                    });
                    // Connections still open here were ended by the server's shutdown sequence
                    // (or its caller gave up on them): their tasks are dropped with the runtime.
                    runtime.shutdown_timeout(BLOCKING_GRACE);
                })?;
            let gauge = metrics
                .worker_connections
                .with_label_values(&[&index.to_string()]);
            gauge.set(0);
            workers.push(Worker {
                jobs: Some(tx),
                open: Arc::new(AtomicUsize::new(0)),
                gauge,
                thread: Some(thread),
            });
        }
        Ok(Workers { workers })
    }

    /// How many workers serve.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Always false: there is at least one worker.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Runs `job` on the worker with the fewest open connections (the lowest index on a tie),
    /// which counts one more connection until the job drops the [`Open`] it is given.
    pub fn dispatch(&self, job: impl FnOnce(Open) + Send + 'static) -> Result<(), Stopped> {
        let (index, worker) = self
            .workers
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.open.load(Ordering::Relaxed))
            .ok_or(Stopped(0))?;
        let open = Open::new(worker);
        let jobs = worker.jobs.as_ref().ok_or(Stopped(index))?;
        jobs.send((Box::new(job), open)).map_err(|_| Stopped(index))
    }

    /// Stops every worker: each drops what it still runs and its thread is joined. Blocking;
    /// call it when the server has finished its shutdown sequence.
    pub fn stop(mut self) {
        for w in &mut self.workers {
            w.jobs = None;
        }
        for w in &mut self.workers {
            if let Some(thread) = w.thread.take() {
                if thread.join().is_err() {
                    tracing::error!("a serving worker panicked");
                }
            }
        }
    }
}

// === impl Open ===

impl Open {
    fn new(worker: &Worker) -> Open {
        worker.open.fetch_add(1, Ordering::Relaxed);
        worker.gauge.inc();
        Open {
            open: worker.open.clone(),
            gauge: worker.gauge.clone(),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_on(workers: &Workers) -> (usize, Open) {
        let (tx, rx) = std::sync::mpsc::channel();
        workers
            .dispatch(move |open| {
                let _ = tx.send((current().unwrap_or(usize::MAX), open));
            })
            .unwrap();
        rx.recv().unwrap()
    }

    #[test]
    fn jobs_go_to_the_least_loaded_worker_and_run_on_its_thread() {
        let metrics = Metrics::new();
        let workers = Workers::start(3, &metrics).unwrap();
        assert_eq!(current(), None);
        let (a, open_a) = run_on(&workers);
        let (b, open_b) = run_on(&workers);
        let (c, _open_c) = run_on(&workers);
        assert_eq!((a, b, c), (0, 1, 2));
        // Worker 1's connection closes: it is now the least loaded.
        drop(open_b);
        let (d, _open_d) = run_on(&workers);
        assert_eq!(d, 1);
        assert_eq!(
            metrics.worker_connections.with_label_values(&["0"]).get(),
            1
        );
        drop(open_a);
        assert_eq!(
            metrics.worker_connections.with_label_values(&["0"]).get(),
            0
        );
        workers.stop();
    }

    #[test]
    fn a_job_can_spawn_tasks_on_its_worker() {
        let metrics = Metrics::new();
        let workers = Workers::start(1, &metrics).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        workers
            .dispatch(move |open| {
                tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    let _ = tx.send(current());
                    drop(open);
                });
            })
            .unwrap();
        assert_eq!(rx.recv().unwrap(), Some(0));
        workers.stop();
    }

    #[test]
    fn stop_drops_what_a_worker_still_runs() {
        let metrics = Metrics::new();
        let workers = Workers::start(2, &metrics).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        workers
            .dispatch(move |open| {
                tokio::spawn(async move {
                    let _keep = (tx, open);
                    std::future::pending::<()>().await;
                });
            })
            .unwrap();
        workers.stop();
        // The pending task was dropped with its runtime, and its sender with it.
        assert!(rx.recv().is_err());
        assert_eq!(
            metrics.worker_connections.with_label_values(&["0"]).get(),
            0
        );
    }
}
