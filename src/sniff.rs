//! Which HTTP version a new connection speaks, found without costing hyper a second buffer.
//!
//! h2c by prior knowledge opens with a fixed 24-byte preface; anything else is HTTP/1.1.
//! hyper-util's auto builder reads those bytes and then hands hyper a reader whose first read
//! returns them alone. hyper parses the 24-byte fragment, finds the head incomplete, and grows its read buffer
//! from 8 to 16 KiB to read the rest: a buffer every connection keeps for as long as it is open,
//! which for a gateway holding thousands of idle streams is a third of what a stream costs. Here
//! the first read returns the sniffed bytes together with whatever the socket already holds, so a
//! request that arrived in one piece is parsed from one read into one 8 KiB buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What an h2c client sends first (RFC 9113, section 3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
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
}

/// Reads until the bytes can no longer be the h2c preface (HTTP/1.1), are the whole preface
/// (h2c), or the peer stops sending (HTTP/1.1: hyper sees the end and closes).
pub async fn sniff(mut stream: TcpStream) -> io::Result<(Protocol, Sniffed)> {
    let mut head = [0u8; H2_PREFACE.len()];
    let mut len = 0;
    let protocol = loop {
        let n = stream.read(&mut head[len..]).await?;
        if n == 0 {
            break Protocol::Http1;
        }
        len += n;
        if head[..len] != H2_PREFACE[..len] {
            break Protocol::Http1;
        }
        if len == H2_PREFACE.len() {
            break Protocol::Http2;
        }
    };
    let io = Sniffed {
        inner: stream,
        head,
        pos: 0,
        len,
        deferred: None,
    };
    Ok((protocol, io))
}

// === impl Sniffed ===

impl AsyncRead for Sniffed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.deferred.take() {
            return Poll::Ready(Err(e));
        }
        if this.pos == this.len {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let rest = &this.head[this.pos..this.len];
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        this.pos += n;
        if this.pos == this.len && buf.remaining() > 0 {
            // Whatever has arrived behind the sniffed bytes comes in the same read. Pending only
            // registers the waker; what was copied is returned either way.
            if let Poll::Ready(Err(e)) = Pin::new(&mut this.inner).poll_read(cx, buf) {
                this.deferred = Some(e);
            }
        }
        Poll::Ready(Ok(()))
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
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
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

    #[tokio::test]
    async fn an_http1_request_is_read_back_whole_in_one_read() {
        let (mut client, server) = pair().await;
        let req = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}";
        client.write_all(req).await.unwrap();
        let (protocol, mut io) = sniff(server).await.unwrap();
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
        let (protocol, mut io) = sniff(server).await.unwrap();
        assert_eq!(protocol, Protocol::Http2);
        let mut buf = [0u8; 33];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf[..24], H2_PREFACE);
        assert_eq!(&buf[24..], b"\x00\x00\x00\x04\x00\x00\x00\x00\x00");
    }

    #[tokio::test]
    async fn a_preface_sent_in_pieces_waits_for_the_rest() {
        let (mut client, server) = pair().await;
        let sniffing = tokio::spawn(sniff(server));
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        client.flush().await.unwrap();
        client.write_all(&H2_PREFACE[10..]).await.unwrap();
        let (protocol, _) = sniffing.await.unwrap().unwrap();
        assert_eq!(protocol, Protocol::Http2);
    }

    #[tokio::test]
    async fn a_peer_that_closes_early_is_http1_with_what_it_sent() {
        let (mut client, server) = pair().await;
        client.write_all(b"PRI * HT").await.unwrap();
        client.shutdown().await.unwrap();
        let (protocol, mut io) = sniff(server).await.unwrap();
        assert_eq!(protocol, Protocol::Http1);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"PRI * HT");
    }

    #[tokio::test]
    async fn writes_go_to_the_socket() {
        let (mut client, server) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let (_, mut io) = sniff(server).await.unwrap();
        io.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"HTTP/1.1 204 No Content\r\n\r\n");
    }
}
