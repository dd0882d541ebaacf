//! HTTP/1.1 connections to one upstream, each driven by the request that holds it.
//!
//! hyper's pooled client runs every upstream connection as a task of its own and hands the
//! response body to the request through a channel, one HTTP chunk at a time: each upstream event
//! costs two task hand-offs (the request asks for more, the connection task reads and answers),
//! and the request's response to its client goes pending in between, so the events leave in
//! separate writes. Under the overhead scenario those hand-offs and writes were the largest cost
//! the gateway added that a byte-copying proxy does not have.
//!
//! Here a connection is a value, not a task. The request that checks it out polls hyper's
//! connection state machine itself, inside [`DrivenBody::poll_frame`], before it polls the body:
//! reading the socket, decoding the next chunk and taking it are function calls in one task, and
//! an upstream burst is read, decoded and forwarded in one pass. When the body ends the connection
//! goes back to the pool; dropping the body before its end closes the connection (hyper cannot
//! reuse a connection with an unread response), which is how a client that went away cancels the
//! upstream generation.
//!
//! An idle connection in the pool is polled by nobody, so an upstream that closes it is noticed
//! at checkout: the connection is polled once there, and one that has ended is dropped. A request
//! that a reused connection could not send (the upstream closed it in the meantime) goes out on
//! another connection; a request that was sent is never retried here, as with hyper's client. Idle
//! connections older than the idle timeout are dropped at checkout.
//!
//! Used for plain-HTTP upstreams that speak HTTP/1.1 (in-cluster inference servers); TLS and
//! HTTP/2 upstreams keep hyper's pooled client, whose HTTP/2 connections are shared by many
//! requests at once.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::workers;

type Io = TokioIo<TcpStream>;

/// Rounds of "drive the connection, then poll the body" in one [`DrivenBody::poll_frame`]. The
/// body asks for more when it finds nothing; the second round lets the connection answer from
/// what it has already read, without a reschedule.
const DRIVE_ROUNDS: usize = 2;

/// Why a request got no response head.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened (`TimedOut` when the connect timeout passed).
    Connect(io::Error),
    /// The connection failed or closed before the response head.
    Http(hyper::Error),
    /// The connection closed with the request unanswered and no error from hyper.
    Closed,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::Http(e) => write!(f, "{e}"),
            SendError::Closed => f.write_str("the connection closed before the response"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(e),
            SendError::Http(e) => Some(e),
            SendError::Closed => None,
        }
    }
}

/// Idle HTTP/1.1 connections to one `host:port`, and how to open more.
#[derive(Clone)]
pub struct Http1Pool {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    port: u16,
    /// `Host` for requests that do not carry one.
    host_header: Option<HeaderValue>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// Idle connections kept per worker.
    max_idle: usize,
    /// One queue per serving worker ([`workers::current`]), most recently used at the back. A
    /// connection is driven by the requests that use it, so it must stay with the worker whose
    /// runtime its socket is registered with: a request on another worker would get each of its
    /// readiness events through a cross-thread wake-up.
    idle: Mutex<Vec<VecDeque<Idle>>>,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// One connection: the request half and the connection's state machine.
struct Conn {
    send: SendRequest<Full<Bytes>>,
    io: Connection<Io, Full<Bytes>>,
}

/// A response body that drives its connection as it is read, and returns the connection to
/// the pool at its end.
pub struct DrivenBody {
    body: Incoming,
    /// `None` once the connection ended (the body then only has what hyper already decoded).
    /// Boxed: hyper's connection state is large, and it moves in and out of the pool.
    conn: Option<Box<Conn>>,
    pool: Arc<Inner>,
}

// === impl Http1Pool ===

impl Http1Pool {
    pub fn new(
        host: String,
        port: u16,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Http1Pool {
            inner: Arc::new(Inner {
                host_header: HeaderValue::from_str(&authority).ok(),
                host,
                port,
                connect_timeout,
                idle_timeout,
                max_idle,
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Connections idle in the pool now.
    pub fn idle_count(&self) -> usize {
        self.inner
            .idle
            .lock()
            .map_or(0, |idle| idle.iter().map(VecDeque::len).sum())
    }

    /// Sends `req` on an idle connection or a new one and waits for the response head. The
    /// request goes out in origin form with a `Host` header, as hyper's client sends it.
    pub async fn send(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<DrivenBody>, SendError> {
        origin_form(&mut req);
        if !req.headers().contains_key(HOST) {
            if let Some(host) = &self.inner.host_header {
                req.headers_mut().insert(HOST, host.clone());
            }
        }
        loop {
            let (mut conn, reused) = match self.inner.checkout() {
                Some(conn) => (conn, true),
                None => (self.inner.connect().await?, false),
            };
            let sent = conn.send.try_send_request(req);
            match drive_until_head(&mut conn, sent).await {
                Ok((resp, ended)) => {
                    let pool = self.inner.clone();
                    // A connection that already ended is never polled again.
                    let conn = (!ended).then_some(conn);
                    return Ok(resp.map(|body| DrivenBody { body, conn, pool }));
                }
                Err(Unsent::Back(back)) if reused => {
                    tracing::debug!("pooled upstream connection was closed; retrying on a new one");
                    req = *back;
                }
                Err(Unsent::Back(_)) => return Err(SendError::Closed),
                Err(Unsent::Failed(e)) => return Err(e),
            }
        }
    }
}

/// A request that got no response head.
enum Unsent {
    /// Not written: it may go out on another connection.
    Back(Box<Request<Full<Bytes>>>),
    Failed(SendError),
}

/// Polls the connection and the pending response together until the head arrives; also tells
/// whether the connection ended in the same poll (a bodiless answer before a close).
async fn drive_until_head<F>(conn: &mut Conn, sent: F) -> Result<(Response<Incoming>, bool), Unsent>
where
    F: Future<
        Output = Result<
            Response<Incoming>,
            hyper::client::conn::TrySendError<Request<Full<Bytes>>>,
        >,
    >,
{
    let mut sent = std::pin::pin!(sent);
    std::future::poll_fn(|cx| {
        let io = Pin::new(&mut conn.io).poll(cx);
        if let Poll::Ready(result) = sent.as_mut().poll(cx) {
            let ended = io.is_ready();
            return Poll::Ready(result.map(|resp| (resp, ended)).map_err(|mut e| {
                match e.take_message() {
                    Some(req) => Unsent::Back(Box::new(req)),
                    None => Unsent::Failed(SendError::Http(e.into_error())),
                }
            }));
        }
        match io {
            // hyper answers a pending request before its connection ends; this is a fallback.
            Poll::Ready(Err(e)) => Poll::Ready(Err(Unsent::Failed(SendError::Http(e)))),
            Poll::Ready(Ok(())) => Poll::Ready(Err(Unsent::Failed(SendError::Closed))),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// The calling thread's idle queue: one per worker, and one for every other thread.
fn shard() -> usize {
    workers::current().map_or(0, |w| w + 1)
}

/// Rewrites an absolute URI to its path and query (origin form).
fn origin_form(req: &mut Request<Full<Bytes>>) {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if let Ok(uri) = path.parse::<Uri>() {
        *req.uri_mut() = uri;
    }
}

// === impl Inner ===

impl Inner {
    /// The most recently used idle connection that is still open, if any.
    fn checkout(&self) -> Option<Box<Conn>> {
        let now = Instant::now();
        loop {
            let candidate = {
                let mut shards = self.idle.lock().ok()?;
                let idle = shards.get_mut(shard())?;
                // The oldest are at the front: drop those past the idle timeout.
                while idle
                    .front()
                    .is_some_and(|c| now.duration_since(c.since) >= self.idle_timeout)
                {
                    idle.pop_front();
                }
                idle.pop_back()?
            };
            let mut conn = candidate.conn;
            // Polled by nobody while idle: let it notice a close the upstream sent meanwhile.
            let waker = futures_util::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            if Pin::new(&mut conn.io).poll(&mut cx).is_ready() || !conn.send.is_ready() {
                continue;
            }
            return Some(conn);
        }
    }

    async fn connect(&self) -> Result<Box<Conn>, SendError> {
        let connecting = TcpStream::connect((self.host.as_str(), self.port));
        let stream = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Err(_) => {
                return Err(SendError::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connect timed out",
                )))
            }
            Ok(Err(e)) => return Err(SendError::Connect(e)),
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        let (send, io) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        Ok(Box::new(Conn { send, io }))
    }

    /// Takes back a connection whose response was read to the end.
    fn checkin(&self, mut conn: Box<Conn>, cx: &mut Context<'_>) {
        // Let the state machine finish the response and go idle; one that ended is not kept.
        if Pin::new(&mut conn.io).poll(cx).is_ready() || conn.send.is_closed() {
            return;
        }
        let Ok(mut shards) = self.idle.lock() else {
            return;
        };
        let shard = shard();
        if shards.len() <= shard {
            shards.resize_with(shard + 1, VecDeque::new);
        }
        let idle = &mut shards[shard];
        if idle.len() >= self.max_idle {
            return;
        }
        idle.push_back(Idle {
            conn,
            since: Instant::now(),
        });
    }
}

// === impl DrivenBody ===

impl Body for DrivenBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        for _ in 0..DRIVE_ROUNDS {
            if let Some(conn) = &mut this.conn {
                if Pin::new(&mut conn.io).poll(cx).is_ready() {
                    // Ended (an error or a close): what was decoded is still in the body.
                    this.conn = None;
                }
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(None) => {
                    if let Some(conn) = this.conn.take() {
                        this.pool.checkin(conn, cx);
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(frame) => return Poll::Ready(frame),
                Poll::Pending if this.conn.is_none() => return Poll::Pending,
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for DrivenBody {
    fn drop(&mut self) {
        // A body read to its end already gave its connection back. One that is dropped with its
        // end already decoded can still go back; anything else is closed with the connection.
        if self.body.is_end_stream() {
            if let Some(conn) = self.conn.take() {
                let waker = futures_util::task::noop_waker();
                let mut cx = Context::from_waker(&waker);
                self.pool.checkin(conn, &mut cx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::mock_upstream::{MockConfig, MockUpstream};

    fn pool_for(mock: &MockUpstream) -> Http1Pool {
        let addr = mock.addr();
        Http1Pool::new(
            addr.ip().to_string(),
            addr.port(),
            Duration::from_secs(2),
            Duration::from_secs(60),
            8,
        )
    }

    fn chat(mock: &MockUpstream) -> Request<Full<Bytes>> {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        Request::post(format!("{}/chat/completions", mock.base_url()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    async fn read_all(resp: Response<DrivenBody>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_finished_response_gives_its_connection_back_for_the_next_request() {
        let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
        let pool = pool_for(&mock);
        for _ in 0..3 {
            let resp = pool.send(chat(&mock)).await.unwrap();
            assert_eq!(resp.status(), 200);
            let text = read_all(resp).await;
            assert!(text.contains("data: [DONE]"), "{text}");
            assert_eq!(pool.idle_count(), 1);
        }
        assert_eq!(mock.requests(), 3);
        assert_eq!(mock.connections(), 1, "the connection was not reused");
    }

    #[tokio::test]
    async fn requests_go_out_in_origin_form_with_a_host_header() {
        let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
        let pool = pool_for(&mock);
        read_all(pool.send(chat(&mock)).await.unwrap()).await;
        let seen = mock.last_request().unwrap();
        assert_eq!(seen.header("host"), Some(mock.addr().to_string().as_str()));
        assert_eq!(seen.path, "/v1/chat/completions");
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_its_connection() {
        let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
        let pool = pool_for(&mock);
        let resp = pool.send(chat(&mock)).await.unwrap();
        drop(resp);
        assert_eq!(pool.idle_count(), 0);
        read_all(pool.send(chat(&mock)).await.unwrap()).await;
        assert_eq!(mock.connections(), 2);
    }

    #[tokio::test]
    async fn concurrent_requests_open_their_own_connections_and_all_come_back() {
        let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
        let pool = pool_for(&mock);
        let a = pool.send(chat(&mock)).await.unwrap();
        let b = pool.send(chat(&mock)).await.unwrap();
        assert_eq!(mock.connections(), 2);
        read_all(a).await;
        read_all(b).await;
        assert_eq!(pool.idle_count(), 2);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let pool = Http1Pool::new(
            "127.0.0.1".into(),
            port,
            Duration::from_secs(2),
            Duration::from_secs(60),
            8,
        );
        let req = Request::post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        match pool.send(req).await {
            Err(SendError::Connect(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
            other => panic!(
                "expected a connect error, got {:?}",
                other.map(|r| r.status())
            ),
        }
    }

    #[tokio::test]
    async fn a_pooled_connection_the_upstream_closed_is_replaced() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // An upstream that answers one request per connection and closes it when told to.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (close_tx, close_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        tokio::spawn(async move {
            let close_rx = Arc::new(tokio::sync::Mutex::new(close_rx));
            let mut accepted = 0;
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                accepted += 1;
                let (close_rx, closed_tx) = (close_rx.clone(), closed_tx.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = stream.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    close_rx.lock().await.recv().await;
                    let _ = stream.shutdown().await;
                    drop(stream);
                    let _ = closed_tx.send(accepted);
                });
            }
        });
        let pool = Http1Pool::new(
            "127.0.0.1".into(),
            addr.port(),
            Duration::from_secs(2),
            Duration::from_secs(60),
            8,
        );
        let get = || {
            Request::get(format!("http://{addr}/"))
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        let resp = pool.send(get()).await.unwrap();
        assert_eq!(read_all(resp).await, "ok");
        assert_eq!(pool.idle_count(), 1);
        close_tx.send(()).unwrap();
        assert_eq!(closed_rx.recv().await, Some(1));
        let resp = pool.send(get()).await.unwrap();
        assert_eq!(read_all(resp).await, "ok");
        close_tx.send(()).unwrap();
        assert_eq!(
            closed_rx.recv().await,
            Some(2),
            "a second connection answered"
        );
    }

    #[tokio::test]
    async fn connections_idle_past_the_timeout_are_not_reused() {
        let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
        let addr = mock.addr();
        // Every idle connection is past a zero timeout by the time it is checked out.
        let pool = Http1Pool::new(
            addr.ip().to_string(),
            addr.port(),
            Duration::from_secs(2),
            Duration::ZERO,
            8,
        );
        read_all(pool.send(chat(&mock)).await.unwrap()).await;
        assert_eq!(pool.idle_count(), 1);
        read_all(pool.send(chat(&mock)).await.unwrap()).await;
        assert_eq!(mock.connections(), 2, "an expired connection was reused");
    }

    #[tokio::test]
    async fn idle_connections_stay_with_the_worker_that_opened_them() {
        let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
        let pool = pool_for(&mock);
        let metrics = crate::metrics::Metrics::new();
        let workers = crate::workers::Workers::start(2, &metrics).unwrap();
        // Runs one request on the least-loaded worker and says which worker it ran on; the
        // worker's count stays raised while the returned `Open` is held.
        let on_next_worker = || {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let (pool, req) = (pool.clone(), chat(&mock));
            workers
                .dispatch(move |open| {
                    tokio::spawn(async move {
                        let text = read_all(pool.send(req).await.unwrap()).await;
                        let _ = tx.send((crate::workers::current(), text, open));
                    });
                })
                .unwrap();
            rx
        };
        let (w0, text, open0) = on_next_worker().await.unwrap();
        assert!(text.contains("data: [DONE]"), "{text}");
        // Worker 0 still counts a connection, so the next request runs on worker 1: the idle
        // upstream connection of worker 0 is not taken from another thread.
        let (w1, _, open1) = on_next_worker().await.unwrap();
        assert_eq!((w0, w1), (Some(0), Some(1)));
        assert_eq!(mock.connections(), 2);
        assert_eq!(pool.idle_count(), 2);
        // Back on worker 0, its own idle connection is reused.
        drop(open0);
        let (w, _, _open) = on_next_worker().await.unwrap();
        drop(open1);
        assert_eq!(w, Some(0));
        assert_eq!(
            mock.connections(),
            2,
            "worker 0 did not reuse its connection"
        );
        tokio::task::spawn_blocking(move || workers.stop())
            .await
            .unwrap();
    }
}
