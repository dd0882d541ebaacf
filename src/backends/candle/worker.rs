//! Generation threads fed by a bounded queue.
//!
//! A model step is tens of milliseconds of CPU; run on the async workers it would stall every
//! other connection. So each generation runs on a dedicated thread, and requests wait for one in
//! a queue of fixed depth. A request that finds the queue full is refused at once (429 with
//! `Retry-After`) rather than waiting without bound: under overload the client, or the router's
//! fallback, can do better than a queue that only grows.
//!
//! A place in the queue is reserved before the prompt is tokenized ([`WorkQueue::try_reserve`]),
//! so the refusal costs nothing and a reserved request can never be refused later.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus::{Histogram, IntGauge};
use tokio::sync::mpsc;

/// Why a place in the queue could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every place is taken.
    Full,
    /// The worker threads are gone.
    Closed,
}

/// Metrics of one queue.
#[derive(Clone)]
pub struct QueueMetrics {
    /// Time from reservation to a worker taking the job.
    pub wait: Histogram,
    /// Jobs reserved or queued and not yet taken.
    pub depth: IntGauge,
}

/// The sending side of the queue.
pub struct WorkQueue<J> {
    tx: mpsc::Sender<Queued<J>>,
    metrics: QueueMetrics,
}

/// A reserved place in the queue.
pub struct Slot<J> {
    permit: Option<mpsc::OwnedPermit<Queued<J>>>,
    reserved: Instant,
    depth: IntGauge,
}

struct Queued<J> {
    job: J,
    reserved: Instant,
}

// === impl WorkQueue ===

impl<J: Send + 'static> WorkQueue<J> {
    /// Starts `workers` threads that take jobs from a queue of `depth` places and hand each to
    /// `handler`. The threads end when the queue is dropped.
    pub fn start<H>(
        name: &str,
        workers: usize,
        depth: usize,
        metrics: QueueMetrics,
        handler: H,
    ) -> std::io::Result<Self>
    where
        H: Fn(J) + Send + Sync + 'static,
    {
        let (tx, rx) = mpsc::channel::<Queued<J>>(depth.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let handler = Arc::new(handler);
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            let handler = handler.clone();
            let m = metrics.clone();
            std::thread::Builder::new()
                .name(format!("sluice-gen-{name}-{i}"))
                .spawn(move || worker_loop(&rx, &*handler, &m))?;
        }
        Ok(WorkQueue { tx, metrics })
    }

    /// Reserves a place, or says why there is none. Never waits.
    pub fn try_reserve(&self) -> Result<Slot<J>, Refused> {
        match self.tx.clone().try_reserve_owned() {
            Ok(permit) => {
                self.metrics.depth.inc();
                Ok(Slot {
                    permit: Some(permit),
                    reserved: Instant::now(),
                    depth: self.metrics.depth.clone(),
                })
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(Refused::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Refused::Closed),
        }
    }
}

// === impl Slot ===

impl<J> Slot<J> {
    /// Queues the job in the reserved place.
    pub fn send(mut self, job: J) {
        if let Some(permit) = self.permit.take() {
            permit.send(Queued {
                job,
                reserved: self.reserved,
            });
        }
    }
}

impl<J> Drop for Slot<J> {
    fn drop(&mut self) {
        // Unused (the request failed before it was queued): it no longer waits.
        if self.permit.is_some() {
            self.depth.dec();
        }
    }
}

fn worker_loop<J>(
    rx: &Mutex<mpsc::Receiver<Queued<J>>>,
    handler: &(dyn Fn(J) + Send + Sync),
    metrics: &QueueMetrics,
) {
    loop {
        // Only idle workers wait on the lock, and only a dedicated thread ever holds it.
        let next = match rx.lock() {
            Ok(mut rx) => rx.blocking_recv(),
            Err(_) => return,
        };
        let Some(queued) = next else { return };
        metrics.depth.dec();
        metrics
            .wait
            .observe(queued.reserved.elapsed().as_secs_f64());
        // A panic in a model step must not take the thread with it: the queue would stop
        // draining. The job's channel is dropped, which its stream reports as an error.
        if std::panic::catch_unwind(AssertUnwindSafe(|| handler(queued.job))).is_err() {
            tracing::error!("a local generation panicked; the worker continues");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::HistogramOpts;
    use std::sync::mpsc as std_mpsc;

    fn metrics() -> QueueMetrics {
        QueueMetrics {
            wait: Histogram::with_opts(HistogramOpts::new("w", "w")).unwrap(),
            depth: IntGauge::new("d", "d").unwrap(),
        }
    }

    #[test]
    fn full_queue_refuses_without_waiting() {
        // Each job reports that it started, then blocks until released.
        let (started_tx, started) = std_mpsc::channel::<u32>();
        let (release, release_rx) = std_mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let m = metrics();
        let q = WorkQueue::start("t", 1, 1, m.clone(), move |job: u32| {
            started_tx.send(job).unwrap();
            release_rx.lock().unwrap().recv().unwrap();
        })
        .unwrap();

        q.try_reserve().unwrap().send(1);
        assert_eq!(started.recv().unwrap(), 1); // the worker is busy with job 1
        q.try_reserve().unwrap().send(2); // job 2 waits in the one place
        assert_eq!(m.depth.get(), 1);
        assert_eq!(q.try_reserve().err(), Some(Refused::Full));

        release.send(()).unwrap();
        assert_eq!(started.recv().unwrap(), 2);
        // Job 2 left the queue: there is room again.
        let slot = q.try_reserve().unwrap();
        assert_eq!(m.depth.get(), 1);
        drop(slot);
        assert_eq!(m.depth.get(), 0);
        release.send(()).unwrap();
        assert_eq!(m.wait.get_sample_count(), 2);
    }

    #[test]
    fn a_panicking_job_does_not_stop_the_worker() {
        let (done_tx, done) = std_mpsc::channel::<u32>();
        let q = WorkQueue::start("p", 1, 2, metrics(), move |job: u32| {
            if job == 0 {
                panic!("boom");
            }
            done_tx.send(job).unwrap();
        })
        .unwrap();
        q.try_reserve().unwrap().send(0);
        q.try_reserve().unwrap().send(7);
        assert_eq!(done.recv().unwrap(), 7);
    }
}
