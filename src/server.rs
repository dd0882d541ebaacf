//! Sockets: the accept loops, the connection cap, and graceful shutdown.
//!
//! Connections are accepted on the calling (control) runtime and each is handed to a serving
//! worker ([`crate::workers`]), where it is sniffed for the h2c preface ([`crate::sniff`]) and
//! served by hyper: HTTP/1.1 with keep-alive, or h2c by prior knowledge when enabled. A semaphore caps open
//! connections: when it is exhausted the loop stops accepting and further clients wait in the
//! kernel's backlog rather than being served badly. On shutdown the listeners close first, in-flight requests run on for the grace period,
//! then every stream still open is ended with an SSE error event and the connections close.
//!
//! An HTTP/1.1 connection is lent to hyper, not given, so that a client whose head stalled past
//! `server.header_read_timeout` can still be answered a 408 on it; its requests go through the
//! service in `server/h1.rs`, which refuses the heads the connection's reader found unsound and
//! closes the connection where the next head could not be found.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus::IntCounter;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::backends::Backends;
use crate::config::Config;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::shutdown::{Shutdown, ShutdownSignal};
use crate::sniff::{sniff, Protocol, Sniff, Sniffed, LINGER_TIME};
use crate::stack;
use crate::state::AppState;
use crate::workers::Workers;

mod h1;

use h1::H1Service;

/// How long connections get to close after the hard stop, before the server returns anyway.
const CLOSE_AFTER_HARD_STOP: Duration = Duration::from_secs(5);

/// A bound, not yet serving, gateway.
pub struct Gateway {
    api: TcpListener,
    admin: Option<TcpListener>,
    state: Arc<AppState>,
    shutdown: Shutdown,
}

// === impl Gateway ===

impl Gateway {
    /// Binds the listeners. Port 0 picks a free port; read it back with [`Gateway::local_addr`].
    pub async fn bind(
        config: &Config,
        backends: Backends,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Gateway> {
        let (shutdown, signal) = Shutdown::new();
        let state = Arc::new(AppState::new(config, backends, metrics, signal)?);
        let api = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding {}", config.server.listen))?;
        let admin = match config.admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding admin listener {addr}"))?,
            ),
            None => None,
        };
        Ok(Gateway {
            api,
            admin,
            state,
            shutdown,
        })
    }

    /// The API listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.api
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The admin listener's address, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The shared state (for tests and embedding).
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `signal` resolves, then shuts down gracefully.
    pub async fn serve(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Gateway {
            api,
            admin,
            state,
            shutdown,
        } = self;
        let server = state.server.clone();
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(server.header_read_timeout)
            .keep_alive(true);
        let h2 = server.http2.then(|| {
            let mut h2 = http2::Builder::new(TokioExecutor::new());
            h2.timer(TokioTimer::new());
            h2
        });
        let protocols = Arc::new(Protocols {
            h1,
            h2,
            sniff_timeout: server.header_read_timeout,
            head_timeouts: state.metrics.client_timeouts.with_label_values(&["head"]),
        });
        let graceful = GracefulShutdown::new();
        let cap = Arc::new(Semaphore::new(server.max_connections));
        let workers = Workers::start(server.workers, &state.metrics)
            .context("starting the serving workers")?;
        tracing::debug!(workers = workers.len(), "serving workers started");

        let api_loop = accept_loop(
            api,
            TowerToHyperService::new(stack::api(state.clone())),
            &protocols,
            &workers,
            &graceful,
            &state.shutdown,
            cap.clone(),
        );
        let admin_loop = async {
            match admin {
                Some(listener) => {
                    accept_loop(
                        listener,
                        TowerToHyperService::new(stack::admin(state.clone())),
                        &protocols,
                        &workers,
                        &graceful,
                        &state.shutdown,
                        cap.clone(),
                    )
                    .await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = signal => {}
            _ = api_loop => {}
            _ = admin_loop => {}
        }

        // The listeners were dropped with the loops: no new connections from here on.
        shutdown.drain();
        tracing::info!(
            in_flight = state.in_flight.current(),
            grace_s = server.shutdown_grace.as_secs_f64(),
            "shutting down: draining in-flight requests"
        );
        let closing = graceful.shutdown();
        tokio::pin!(closing);
        if tokio::time::timeout(server.shutdown_grace, &mut closing)
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = state.in_flight.current(),
                "grace period over: ending open streams"
            );
            shutdown.hard_stop();
            if tokio::time::timeout(CLOSE_AFTER_HARD_STOP, &mut closing)
                .await
                .is_err()
            {
                tracing::warn!("connections still open after the hard stop; closing them");
            }
        }
        // Joining the worker threads blocks; the control runtime may be serving other tasks.
        if tokio::task::spawn_blocking(move || workers.stop())
            .await
            .is_err()
        {
            tracing::warn!("stopping the serving workers failed");
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// Serves HTTP/1.1 on `io` until the connection ends, shutting it down gracefully once the server
/// drains.
async fn serve_h1<S>(
    h1: &http1::Builder,
    io: &mut Sniffed,
    service: S,
    signal: &ShutdownSignal,
) -> hyper::Result<()>
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<crate::api::body::Body>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let report = io.follow_heads();
    let conn = h1.serve_connection(TokioIo::new(io), H1Service::new(service, report));
    tokio::pin!(conn);
    tokio::select! {
        biased;
        result = conn.as_mut() => return result,
        () = signal.drained() => {}
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}

/// Answers a client whose request head did not arrive in time with a 408 it can read, then closes
/// the connection the lingering way. Bounded: a client that does not read gets at most
/// [`LINGER_TIME`] for the answer to leave.
async fn answer_head_timeout(io: &mut Sniffed, peer: SocketAddr) {
    let json = Error::RequestTimeout { part: "headers" }.to_json();
    let mut answer = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n",
        json.len()
    )
    .into_bytes();
    answer.extend_from_slice(&json);
    tracing::debug!(%peer, "request head not received in time");
    let sent = tokio::time::timeout(LINGER_TIME, io.write_all(&answer)).await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = io.shutdown().await;
    }
}

/// How connections are served once their protocol is known.
struct Protocols {
    h1: http1::Builder,
    /// `None` when h2c is off: a preface is then answered as a malformed HTTP/1.1 request.
    h2: Option<http2::Builder<TokioExecutor>>,
    /// How long a new connection has to send its first bytes.
    sniff_timeout: Duration,
    /// `sluice_client_read_timeouts_total{phase="head"}`, resolved once.
    head_timeouts: IntCounter,
}

/// Accepts connections until the future is dropped, and hands each to a worker.
async fn accept_loop<S>(
    listener: TcpListener,
    service: S,
    protocols: &Arc<Protocols>,
    workers: &Workers,
    graceful: &GracefulShutdown,
    signal: &ShutdownSignal,
    cap: Arc<Semaphore>,
) where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<crate::api::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    loop {
        let Ok(permit) = cap.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and similar: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Out of this runtime's reactor, into the worker's.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand over a connection");
                continue;
            }
        };
        let watcher = graceful.watcher();
        let protocols = Arc::clone(protocols);
        let service = service.clone();
        let signal = signal.clone();
        let handed = workers.dispatch(move |open| {
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot register a connection");
                    return;
                }
            };
            tokio::spawn(async move {
                serve_connection(stream, peer, service, &protocols, watcher, &signal).await;
                drop(open);
                drop(permit);
            });
        });
        if let Err(e) = handed {
            // Only after a worker thread died; the connection is closed unanswered.
            tracing::error!(%peer, error = %e, "connection dropped");
        }
    }
}

/// Serves one connection on the worker it was handed to.
async fn serve_connection<S>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    service: S,
    protocols: &Protocols,
    watcher: hyper_util::server::graceful::Watcher,
    signal: &ShutdownSignal,
) where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<crate::api::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let sniffed = tokio::select! {
        s = sniff(stream, protocols.sniff_timeout) => s,
        // Nothing was asked on it yet, so closing it loses nothing.
        () = signal.drained() => return,
    };
    let result = match sniffed {
        Err(e) => {
            tracing::debug!(%peer, error = %e, "connection ended before its first request");
            Ok(())
        }
        Ok(Sniff::Stalled(io)) if io.is_empty() => {
            tracing::debug!(%peer, "connection sent nothing in time");
            Ok(())
        }
        Ok(Sniff::Stalled(mut io)) => {
            protocols.head_timeouts.inc();
            answer_head_timeout(&mut io, peer).await;
            Ok(())
        }
        Ok(Sniff::Known(protocol, mut io)) => match (protocol, &protocols.h2) {
            (Protocol::Http2, Some(h2)) => {
                let conn = h2.serve_connection(TokioIo::new(io), service);
                watcher.watch(conn).await
            }
            _ => {
                // The connection is lent to hyper rather than given, so that a head hyper gave
                // up on can still be answered on it. Being borrowed, it cannot go through the
                // watcher, which takes only connections that own their IO: the watcher is held
                // (the server's shutdown waits for it) and the drain is watched in `serve_h1`.
                let _counted = watcher;
                match serve_h1(&protocols.h1, &mut io, service, signal).await {
                    // hyper's `header_read_timeout` also runs between requests, from the end
                    // of a response. A client that began a head and stalled can read why it is
                    // cut off; one that sent nothing more would read a 408 as the answer to the
                    // request it sends next, so it is only closed.
                    Err(e) if e.is_timeout() && io.head_begun() => {
                        protocols.head_timeouts.inc();
                        answer_head_timeout(&mut io, peer).await;
                        Ok(())
                    }
                    Err(e) if e.is_timeout() => {
                        tracing::debug!(%peer, "idle connection closed");
                        Ok(())
                    }
                    other => other,
                }
            }
        },
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
