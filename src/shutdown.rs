//! Graceful shutdown, told through watch channels.
//!
//! Shutdown has two steps. *Draining*: the listeners close, `/readyz` reports not ready, and
//! in-flight requests run on. *Hard stop*: when the grace period has passed, every stream still
//! open ends with an SSE error event (`shutting_down`) instead of being cut mid-frame, so a client
//! always knows its answer is incomplete.

use tokio::sync::watch;

/// The sending side, owned by the server.
#[derive(Debug)]
pub struct Shutdown {
    draining: watch::Sender<bool>,
    hard_stop: watch::Sender<bool>,
}

/// The receiving side, cloned into every request.
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    draining: watch::Receiver<bool>,
    hard_stop: watch::Receiver<bool>,
}

// === impl Shutdown ===

impl Shutdown {
    /// A new pair.
    pub fn new() -> (Shutdown, ShutdownSignal) {
        let (d_tx, d_rx) = watch::channel(false);
        let (h_tx, h_rx) = watch::channel(false);
        (
            Shutdown {
                draining: d_tx,
                hard_stop: h_tx,
            },
            ShutdownSignal {
                draining: d_rx,
                hard_stop: h_rx,
            },
        )
    }

    /// Stop taking new work.
    pub fn drain(&self) {
        self.draining.send_replace(true);
    }

    /// End every open stream now.
    pub fn hard_stop(&self) {
        self.draining.send_replace(true);
        self.hard_stop.send_replace(true);
    }
}

// === impl ShutdownSignal ===

impl ShutdownSignal {
    /// Whether the server is draining.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Resolves when draining begins (or the server is gone).
    pub async fn drained(&self) {
        let mut rx = self.draining.clone();
        let _ = rx.wait_for(|draining| *draining).await;
    }

    /// Resolves when the hard stop is given (or the server is gone).
    pub async fn hard_stopped(&self) {
        let mut rx = self.hard_stop.clone();
        // An error means the sender is gone, which is a stop as well.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn os_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hard_stop_wakes_waiters_and_sets_draining() {
        let (tx, rx) = Shutdown::new();
        assert!(!rx.is_draining());
        let waiter = tokio::spawn({
            let rx = rx.clone();
            async move { rx.hard_stopped().await }
        });
        tx.hard_stop();
        waiter.await.unwrap();
        assert!(rx.is_draining());
    }

    #[tokio::test]
    async fn dropped_sender_counts_as_stop() {
        let (tx, rx) = Shutdown::new();
        drop(tx);
        rx.hard_stopped().await;
    }
}
