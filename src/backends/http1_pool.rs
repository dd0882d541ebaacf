//! HTTP/1.1 connections to one upstream, each driven by the request that holds it.
//!
//! A connection is a value, not a task: the request that checks it out writes its head and body
//! itself, and reads and decodes the response inside [`DrivenBody::poll_frame`], so an upstream
//! burst is read, decoded and forwarded in one pass with no hand-off between tasks. When the body
//! ends the connection goes back to the pool; dropping the body before its end closes the
//! connection, which is how a client that went away cancels the upstream generation.
//!
//! The client is ours rather than hyper's because of what a held stream costs. hyper's client
//! connection keeps an 8 KiB read buffer, an 8 KiB header buffer and a request channel (8.8 KiB)
//! for as long as a stream is open: three quarters of what an idle stream costs the gateway.
//! Here an idle connection holds its socket and nothing else. Reads go through a buffer on the
//! stack and only what arrived is copied out, the response head is decoded into the
//! [`Response`] and dropped, and the request head is written from a buffer freed once sent. The
//! wire format (heads, chunked coding, body framing) lives in [`super::http1_codec`].
//!
//! An idle connection in the pool is polled by nobody, so an upstream that closes it is noticed
//! at checkout: a connection with anything to read (the close, or bytes it should not have sent)
//! is dropped. A request the upstream refused before reading any of it (the write failed on a
//! reused connection) goes out on another connection; a request that was written is never
//! retried here: the router decides. Idle connections older than the idle timeout are dropped at
//! checkout.
//!
//! Idle connections are kept per serving worker ([`workers::current`]): a socket is registered
//! with one worker's runtime, and a request on another worker would get each of its readiness
//! events through a cross-thread wake-up.
//!
//! Used for plain-HTTP upstreams that speak HTTP/1.1 (in-cluster inference servers); TLS and
//! HTTP/2 upstreams keep hyper's pooled client, whose HTTP/2 connections are shared by many
//! requests at once.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::HOST;
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::http1_codec::{self, Decoded, Decoder, Malformed};
use crate::workers;

/// Bytes read from the socket at most per read call (from a buffer on the stack).
const READ_CHUNK: usize = 16 * 1024;

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened (`TimedOut` when the connect timeout passed).
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    /// Writing the request or reading the head failed.
    #[error("{0}")]
    Io(#[source] io::Error),
    /// The connection closed before the response head.
    #[error("the connection closed before the response")]
    Closed,
    /// The upstream's answer is not HTTP/1.1.
    #[error("invalid response: {0}")]
    Malformed(#[source] Malformed),
}

/// Why a response body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the response body: {0}")]
    Io(#[source] io::Error),
    #[error("the connection closed before the end of the response body")]
    Truncated,
    #[error("invalid response body: {0}")]
    Malformed(#[source] Malformed),
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
    /// One queue per serving worker, most recently used at the back.
    idle: Mutex<Vec<VecDeque<Idle>>>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// One connection and the bytes read from it but not yet decoded (usually none: the buffer is
/// released whenever it empties).
struct Conn {
    io: TcpStream,
    buf: BytesMut,
}

/// A response body read from its connection as it is polled; gives the connection back to the
/// pool at its end.
pub struct DrivenBody {
    /// `None` once the body ended or failed.
    conn: Option<Conn>,
    decoder: Decoder,
    /// The connection may carry another request after this body.
    keep_alive: bool,
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
    /// request goes out in origin form with a `Host` header.
    pub async fn send(&self, mut req: Request<Bytes>) -> Result<Response<DrivenBody>, SendError> {
        if !req.headers().contains_key(HOST) {
            if let Some(host) = &self.inner.host_header {
                req.headers_mut().insert(HOST, host.clone());
            }
        }
        let mut head = Vec::with_capacity(256);
        http1_codec::encode_head(&req, &mut head);
        let body = req.into_body();
        loop {
            let (mut conn, reused) = match self.inner.checkout() {
                Some(conn) => (conn, true),
                None => (self.inner.connect().await?, false),
            };
            match write_request(&mut conn.io, &head, &body).await {
                Ok(()) => {}
                Err(Unwritten::Refused) if reused => {
                    tracing::debug!("pooled upstream connection was closed; retrying on a new one");
                    continue;
                }
                Err(Unwritten::Refused) => return Err(SendError::Closed),
                Err(Unwritten::Failed(e)) => return Err(SendError::Io(e)),
            }
            // Written: what the upstream does with it is its answer, not a reason to resend.
            drop(head);
            let parsed = read_head(&mut conn).await?;
            let (parts, ()) = parsed.response.into_parts();
            let decoder = Decoder::new(parsed.body);
            let mut body = DrivenBody {
                conn: Some(conn),
                decoder,
                keep_alive: parsed.keep_alive,
                pool: self.inner.clone(),
            };
            body.release_if_done();
            return Ok(Response::from_parts(parts, body));
        }
    }
}

/// A request that did not go out.
enum Unwritten {
    /// Not one byte was accepted: the upstream had closed the connection.
    Refused,
    Failed(io::Error),
}

/// Writes head and body, in one system call when the socket takes them.
async fn write_request(io: &mut TcpStream, head: &[u8], body: &[u8]) -> Result<(), Unwritten> {
    let (mut head, mut body) = (head, body);
    let mut written = 0usize;
    while !head.is_empty() || !body.is_empty() {
        let slices = [io::IoSlice::new(head), io::IoSlice::new(body)];
        let n = match io.write_vectored(&slices).await {
            Ok(0) if written == 0 => return Err(Unwritten::Refused),
            Ok(0) => return Err(Unwritten::Failed(io::Error::from(io::ErrorKind::WriteZero))),
            Ok(n) => n,
            Err(e) if written == 0 && refused(&e) => return Err(Unwritten::Refused),
            Err(e) => return Err(Unwritten::Failed(e)),
        };
        written += n;
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[n - from_head..];
    }
    Ok(())
}

/// An error that means the peer had closed the connection.
fn refused(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

/// Reads until a final response head is complete.
async fn read_head(conn: &mut Conn) -> Result<http1_codec::Head, SendError> {
    loop {
        if !conn.buf.is_empty() {
            if let Some(head) =
                http1_codec::parse_head(&mut conn.buf).map_err(SendError::Malformed)?
            {
                return Ok(head);
            }
        }
        let n = std::future::poll_fn(|cx| poll_fill(&mut conn.io, &mut conn.buf, cx))
            .await
            .map_err(|e| {
                if refused(&e) {
                    SendError::Closed
                } else {
                    SendError::Io(e)
                }
            })?;
        if n == 0 {
            return Err(SendError::Closed);
        }
    }
}

/// Reads what the socket has (at most [`READ_CHUNK`]) and appends it to `buf`; `Ok(0)` at end
/// of stream. The read goes through the stack so that a connection waiting for its next bytes
/// holds no buffer.
fn poll_fill(
    io: &mut TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let mut scratch = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut read = ReadBuf::uninit(&mut scratch);
    std::task::ready!(Pin::new(io).poll_read(cx, &mut read))?;
    let filled = read.filled();
    buf.extend_from_slice(filled);
    Poll::Ready(Ok(filled.len()))
}

// === impl Inner ===

impl Inner {
    /// The most recently used idle connection of this worker that is still open, if any.
    fn checkout(&self) -> Option<Conn> {
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
            // An idle connection has nothing to say: anything readable is a close (or bytes the
            // upstream should not have sent), and the connection is not used.
            let mut probe = [0u8; 1];
            match candidate.conn.io.try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(candidate.conn),
                _ => continue,
            }
        }
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        let connecting = TcpStream::connect((self.host.as_str(), self.port));
        let io = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Err(_) => {
                return Err(SendError::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connect timed out",
                )))
            }
            Ok(Err(e)) => return Err(SendError::Connect(e)),
            Ok(Ok(io)) => io,
        };
        let _ = io.set_nodelay(true);
        Ok(Conn {
            io,
            buf: BytesMut::new(),
        })
    }

    /// Takes back a connection whose response was read to the end.
    fn checkin(&self, conn: Conn) {
        if !conn.buf.is_empty() {
            // Bytes beyond the response: the connection is out of step with the upstream.
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

/// The calling thread's idle queue: one per worker, and one for every other thread.
fn shard() -> usize {
    workers::current().map_or(0, |w| w + 1)
}

// === impl DrivenBody ===

impl DrivenBody {
    /// At the end of the body: the connection goes back to the pool, or is closed.
    fn release_if_done(&mut self) {
        if !self.decoder.is_done() {
            return;
        }
        if let Some(conn) = self.conn.take() {
            if self.keep_alive {
                self.pool.checkin(conn);
            }
        }
    }
}

impl Body for DrivenBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.decode(&mut conn.buf) {
                Ok(Decoded::Data(data)) => {
                    if conn.buf.is_empty() {
                        // Release the read allocation (the frame keeps what it needs of it).
                        conn.buf = BytesMut::new();
                    }
                    this.release_if_done();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    this.release_if_done();
                    return Poll::Ready(None);
                }
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(BodyError::Malformed(e))));
                }
                Ok(Decoded::More) => {}
            }
            match poll_fill(&mut conn.io, &mut conn.buf, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    this.keep_alive = false;
                    let ended = this.decoder.at_eof();
                    this.conn = None;
                    return Poll::Ready((!ended).then_some(Err(BodyError::Truncated)));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(BodyError::Io(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done() || self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for DrivenBody {
    fn drop(&mut self) {
        // A body dropped with its end already read can still give its connection back: decode
        // what is buffered, without reading the socket.
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        while let Ok(Decoded::Data(_)) = self.decoder.decode(&mut conn.buf) {}
        self.release_if_done();
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

    fn chat(mock: &MockUpstream) -> Request<Bytes> {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        Request::post(format!("{}/chat/completions", mock.base_url()))
            .header("content-type", "application/json")
            .body(Bytes::from_static(body.as_bytes()))
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
        let mut req = chat(&mock);
        // One token, then the stream stays open: the end is never read.
        req.headers_mut()
            .insert("x-mock-fault", HeaderValue::from_static("stall:1"));
        let resp = pool.send(req).await.unwrap();
        drop(resp);
        assert_eq!(pool.idle_count(), 0);
        read_all(pool.send(chat(&mock)).await.unwrap()).await;
        assert_eq!(mock.connections(), 2);
    }

    #[tokio::test]
    async fn a_body_dropped_with_its_end_already_read_gives_its_connection_back() {
        let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
        let pool = pool_for(&mock);
        let mut resp = pool.send(chat(&mock)).await.unwrap();
        // Read until `[DONE]`, as the SSE reader does, then drop without polling for the end.
        let mut seen = Vec::new();
        while !seen.windows(6).any(|w| w == b"[DONE]") {
            let frame = resp.body_mut().frame().await.unwrap().unwrap();
            seen.extend_from_slice(frame.data_ref().unwrap());
        }
        drop(resp);
        assert_eq!(pool.idle_count(), 1);
        read_all(pool.send(chat(&mock)).await.unwrap()).await;
        assert_eq!(mock.connections(), 1);
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
            .body(Bytes::new())
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
                .body(Bytes::new())
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
