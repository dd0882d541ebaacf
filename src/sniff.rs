//! Which HTTP version a new connection speaks, found without costing hyper a second buffer.
//!
//! h2c by prior knowledge opens with a fixed 24-byte preface; anything else is HTTP/1.1.
//! hyper-util's auto builder reads those bytes and then hands hyper a reader whose first read
//! returns them alone. hyper parses the 24-byte fragment, finds the head incomplete, and grows its read buffer
//! from 8 to 16 KiB to read the rest: a buffer every connection keeps for as long as it is open,
//! which for a gateway holding thousands of idle streams is a third of what a stream costs. Here
//! the first read returns the sniffed bytes together with whatever the socket already holds, so a
//! request that arrived in one piece is parsed from one read into one 8 KiB buffer.
//!
//! The same wrapper closes connections the way a client can read: when the server ends a
//! connection while the client is still sending (a body refused with 413 before it was read, a
//! 401 ahead of a large upload), closing a socket with unread bytes makes the kernel answer with a
//! reset, which may destroy the response the client has not read yet. So a shutdown first ends
//! the write side (FIN after the response), then reads and discards what the client still sends
//! until it closes, for at most [`LINGER_TIME`] and [`LINGER_BYTES`] (nginx's lingering close).
//!
//! On HTTP/1.1 the wrapper also follows the request framing on every byte it hands hyper
//! ([`framing`]), because it is the one place a head's bytes are seen: heads that hyper accepts
//! but RFC 9112 lets a server refuse (bare-LF line ends, a `Transfer-Encoding` other than one
//! `chunked`) are reported to the connection's service, which refuses them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

mod framing;

use framing::Framing;
pub use framing::{HeadReport, Verdict};

/// How long a closing connection keeps reading what its client still sends.
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// How much a closing connection reads and discards at most.
pub const LINGER_BYTES: usize = 32 * 1024 * 1024;

/// What an h2c client sends first (RFC 9113, section 3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// What the first bytes of a connection told.
#[derive(Debug)]
pub enum Sniff {
    /// The protocol is known; the bytes read to tell it are read again first.
    Known(Protocol, Sniffed),
    /// The deadline passed before the bytes could tell. What came, perhaps nothing, is in the
    /// stream ([`Sniffed::is_empty`]): a client that began a head and stalled is owed a 408.
    Stalled(Sniffed),
}

/// A connection whose first bytes were read to sniff its protocol, and are read again first.
#[derive(Debug)]
pub struct Sniffed {
    inner: TcpStream,
    head: [u8; H2_PREFACE.len()],
    pos: usize,
    len: usize,
    /// An error met while reading ahead behind the sniffed bytes, reported by the next read.
    deferred: Option<io::Error>,
    /// Set once the write side was shut down: the lingering read's deadline and count.
    linger: Option<Linger>,
    /// On HTTP/1.1: the request framing, followed on every byte handed to hyper.
    framing: Option<Framing>,
}

#[derive(Debug)]
struct Linger {
    until: Pin<Box<Sleep>>,
    discarded: usize,
}

/// Reads until the bytes can no longer be the h2c preface (HTTP/1.1), are the whole preface
/// (h2c), the peer stops sending (HTTP/1.1: hyper sees the end and closes), or `within` passes.
pub async fn sniff(mut stream: TcpStream, within: Duration) -> io::Result<Sniff> {
    let mut head = [0u8; H2_PREFACE.len()];
    let mut len = 0;
    let deadline = tokio::time::sleep(within);
    tokio::pin!(deadline);
    let protocol = loop {
        let n = tokio::select! {
            biased;
            n = stream.read(&mut head[len..]) => n?,
            () = &mut deadline => break None,
        };
        if n == 0 {
            break Some(Protocol::Http1);
        }
        len += n;
        if head[..len] != H2_PREFACE[..len] {
            break Some(Protocol::Http1);
        }
        if len == H2_PREFACE.len() {
            break Some(Protocol::Http2);
        }
    };
    let io = Sniffed {
        inner: stream,
        head,
        pos: 0,
        len,
        deferred: None,
        linger: None,
        framing: None,
    };
    Ok(match protocol {
        Some(protocol) => Sniff::Known(protocol, io),
        None => Sniff::Stalled(io),
    })
}

// === impl Sniffed ===

impl Sniffed {
    /// Whether nothing at all was read from the connection before it was handed on.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Follows the HTTP/1.1 request heads read from here on (the sniffed bytes included), and
    /// reports what they hold that must be refused ([`framing`]).
    pub fn follow_heads(&mut self) -> Arc<HeadReport> {
        let (framing, report) = Framing::new();
        self.framing = Some(framing);
        report
    }

    /// Whether part of an HTTP/1.1 request head has been read and its end has not: a client
    /// that stalls then is owed a 408, one idle between requests is not. Unknown (false) where
    /// heads are not followed.
    pub fn head_begun(&self) -> bool {
        self.framing.as_ref().is_some_and(Framing::head_begun)
    }

    fn poll_read_unchecked(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.deferred.take() {
            return Poll::Ready(Err(e));
        }
        if self.pos == self.len {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let rest = &self.head[self.pos..self.len];
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.pos += n;
        if self.pos == self.len && buf.remaining() > 0 {
            // Whatever has arrived behind the sniffed bytes comes in the same read. Pending only
            // registers the waker; what was copied is returned either way.
            if let Poll::Ready(Err(e)) = Pin::new(&mut self.inner).poll_read(cx, buf) {
                self.deferred = Some(e);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Sniffed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = this.poll_read_unchecked(cx, buf);
        if let (Some(framing), Poll::Ready(Ok(()))) = (&mut this.framing, &read) {
            framing.feed(&buf.filled()[before..]);
        }
        read
    }
}

impl AsyncWrite for Sniffed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let linger = match &mut this.linger {
            Some(linger) => linger,
            None => {
                std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                this.linger.insert(Linger {
                    until: Box::pin(tokio::time::sleep(LINGER_TIME)),
                    discarded: 0,
                })
            }
        };
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                // The client closed (or reset) its side: nothing is left to lose.
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    linger.discarded += buf.filled().len();
                    if linger.discarded >= LINGER_BYTES {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Pending => {
                    return match linger.until.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Ok(())),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A connected pair: what the client writes, the server side sniffs.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    /// Sniffs with a deadline no test reaches.
    async fn known(server: TcpStream) -> (Protocol, Sniffed) {
        match sniff(server, Duration::from_secs(60)).await.unwrap() {
            Sniff::Known(protocol, io) => (protocol, io),
            Sniff::Stalled(_) => panic!("stalled"),
        }
    }

    #[tokio::test]
    async fn an_http1_request_is_read_back_whole_in_one_read() {
        let (mut client, server) = pair().await;
        let req = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}";
        client.write_all(req).await.unwrap();
        let (protocol, mut io) = known(server).await;
        assert_eq!(protocol, Protocol::Http1);
        // The whole request is in the socket before the sniff starts (loopback delivers a write
        // at once), so one read returns the sniffed bytes and everything behind them: hyper
        // parses the head from its first read and never grows its buffer.
        assert!(io.len > 0 && io.len <= H2_PREFACE.len());
        let mut buf = vec![0u8; 8192];
        let got = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..got], &req[..]);
    }

    #[tokio::test]
    async fn the_h2c_preface_is_recognised_and_replayed() {
        let (mut client, server) = pair().await;
        client.write_all(H2_PREFACE).await.unwrap();
        client
            .write_all(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        let (protocol, mut io) = known(server).await;
        assert_eq!(protocol, Protocol::Http2);
        let mut buf = [0u8; 33];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf[..24], H2_PREFACE);
        assert_eq!(&buf[24..], b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
    }

    #[tokio::test]
    async fn a_preface_sent_in_pieces_waits_for_the_rest() {
        let (mut client, server) = pair().await;
        let sniffing = tokio::spawn(known(server));
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        client.flush().await.unwrap();
        client.write_all(&H2_PREFACE[10..]).await.unwrap();
        let (protocol, _) = sniffing.await.unwrap();
        assert_eq!(protocol, Protocol::Http2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stalls_is_reported_with_what_it_sent() {
        let (mut client, server) = pair().await;
        client.write_all(b"PRI * ").await.unwrap();
        let (stalled, silent) = {
            let (_quiet, other) = pair().await;
            let a = sniff(server, Duration::from_secs(1)).await.unwrap();
            let b = sniff(other, Duration::from_secs(1)).await.unwrap();
            (a, b)
        };
        let Sniff::Stalled(io) = stalled else {
            panic!("{stalled:?}");
        };
        assert!(!io.is_empty());
        let Sniff::Stalled(io) = silent else {
            panic!("{silent:?}");
        };
        assert!(io.is_empty());
    }

    #[tokio::test]
    async fn a_peer_that_closes_early_is_http1_with_what_it_sent() {
        let (mut client, server) = pair().await;
        client.write_all(b"PRI * HT").await.unwrap();
        client.shutdown().await.unwrap();
        let (protocol, mut io) = known(server).await;
        assert_eq!(protocol, Protocol::Http1);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"PRI * HT");
    }

    #[tokio::test]
    async fn writes_go_to_the_socket() {
        let (mut client, server) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let (_, mut io) = known(server).await;
        io.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let (shut, read) = tokio::join!(io.shutdown(), async {
            let read = client.read_to_end(&mut got).await;
            drop(client);
            read
        });
        shut.unwrap();
        read.unwrap();
        assert_eq!(got, b"HTTP/1.1 204 No Content\r\n\r\n");
    }

    #[tokio::test]
    async fn a_response_sent_before_the_body_is_read_reaches_a_client_still_sending() {
        let (mut client, server) = pair().await;
        client
            .write_all(b"POST / HTTP/1.1\r\ncontent-length: 8388608\r\n\r\n")
            .await
            .unwrap();
        let (_, mut io) = known(server).await;
        let answer = b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\n\r\n";
        let server = async move {
            io.write_all(answer).await.unwrap();
            io.shutdown().await.unwrap();
            drop(io);
        };
        // The client sends all 8 MiB (far beyond the socket buffers) and only then reads: without
        // the lingering read its writes fail, or its read meets a reset instead of the answer.
        let client = async move {
            client.write_all(&vec![b'a'; 8 << 20]).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), got) = tokio::join!(server, client);
        assert_eq!(got, answer);
    }

    #[tokio::test(start_paused = true)]
    async fn the_lingering_read_gives_up_on_a_client_that_never_closes() {
        let (mut client, server) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let (_, mut io) = known(server).await;
        let started = tokio::time::Instant::now();
        io.shutdown().await.unwrap();
        assert!(started.elapsed() >= LINGER_TIME);
        // The write side was shut at once: the client saw the end of the response stream.
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty());
    }
}
