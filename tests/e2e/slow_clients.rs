//! Clients that send slowly or send malformed framing, driven over raw TCP against a real gateway:
//! a body trickled or cut short (408), a head that stalls (408), and request heads that RFC 9112
//! lets a server refuse (400).

use std::time::Duration;

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every wait on the gateway is bounded by this; the timeouts under test are far shorter.
const PATIENCE: Duration = Duration::from_secs(10);

/// Short body deadlines: a body must keep coming every 200 ms and average 1000 bytes/s after that.
const SLOW_BODY: &str = "body_read_timeout = \"200ms\"\nbody_min_bytes_per_second = 1000";

fn chat_json() -> String {
    serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

fn post_head(content_length: usize) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {content_length}\r\n\r\n"
    )
}

/// One response as read off the socket.
struct RawReply {
    status: u16,
    /// The head, header names lowercased as hyper writes them.
    head: String,
    body: Vec<u8>,
}

impl RawReply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} / {:?}",
                self.head,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn closes(&self) -> bool {
        self.head.contains("\r\nconnection: close\r\n")
    }

    /// Asserts an OpenAI error body with this type and code.
    fn assert_error(&self, status: u16, kind: &str, code: &str) {
        assert_eq!(self.status, status, "{}", self.head);
        let v = self.json();
        assert_eq!(v["error"]["type"], kind, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"].is_string(), "{v}");
        assert!(v["error"].get("param").is_some(), "{v}");
    }
}

/// One connection to the gateway, read one response at a time: what arrives past a response
/// (the next pipelined one) is kept for the next read.
struct Wire<R> {
    io: R,
    buf: Vec<u8>,
}

impl<R: AsyncReadExt + Unpin> Wire<R> {
    fn new(io: R) -> Self {
        Wire {
            io,
            buf: Vec::new(),
        }
    }

    /// Reads more into the buffer; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = self.io.read(&mut chunk).await.unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Reads one response (head, then a `content-length` body), failing after [`PATIENCE`].
    async fn reply(&mut self) -> RawReply {
        tokio::time::timeout(PATIENCE, async {
            let head_end = loop {
                if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                assert!(
                    self.fill().await,
                    "connection closed before a response: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            };
            let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
            let status = head[9..12].parse().expect("a status code");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().expect("a content length"));
            while self.buf.len() < head_end + len {
                assert!(self.fill().await, "connection closed inside the body");
            }
            let body = self.buf[head_end..head_end + len].to_vec();
            self.buf.drain(..head_end + len);
            RawReply { status, head, body }
        })
        .await
        .expect("no response in time")
    }

    /// Waits until the gateway has closed its side of the connection, discarding what arrives.
    async fn closed(&mut self) {
        tokio::time::timeout(PATIENCE, async { while self.fill().await {} })
            .await
            .expect("the gateway kept the connection open");
    }
}

impl Wire<TcpStream> {
    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.io.write_all(bytes.as_ref()).await.unwrap();
    }
}

async fn connect(gw: &TestGateway) -> Wire<TcpStream> {
    Wire::new(TcpStream::connect(gw.addr).await.unwrap())
}

fn metric(gw: &TestGateway, line: &str) -> bool {
    String::from_utf8(gw.metrics.render())
        .unwrap()
        .lines()
        .any(|l| l == line)
}

async fn slow_body_gateway(extra: &str) -> TestGateway {
    TestGateway::start(
        &scripted_config(&format!("{SLOW_BODY}\n{extra}")),
        vec![ScriptedBackend::new("b", vec![])],
    )
    .await
}

// === body deadlines ===

#[tokio::test]
async fn a_trickled_body_is_answered_408_and_the_connection_closed() {
    let gw = slow_body_gateway("").await;
    let (rx, mut tx) = connect(&gw).await.io.into_split();
    let mut rx = Wire::new(rx);
    let len = 200;
    tx.write_all(post_head(len).as_bytes()).await.unwrap();
    // One byte every 50 ms: each gap is well inside the 200 ms between reads, so only the
    // minimum rate can stop it.
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for sent in 0..len {
            tick.tick().await;
            if tx.write_all(b" ").await.is_err() {
                return sent;
            }
        }
        len
    });
    let reply = rx.reply().await;
    reply.assert_error(408, "invalid_request_error", "request_timeout");
    assert!(reply.closes(), "{}", reply.head);
    rx.closed().await;
    drop(rx);
    let sent = trickle.await.unwrap();
    assert!(sent < len, "the answer came only after the whole body");
    gw.idle().await;
    assert!(metric(
        &gw,
        "sluice_client_read_timeouts_total{phase=\"body\"} 1"
    ));
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_answered_408() {
    let gw = slow_body_gateway("").await;
    let mut s = connect(&gw).await;
    let body = chat_json();
    s.send(post_head(body.len() + 10)).await;
    s.send(body).await;
    let reply = s.reply().await;
    reply.assert_error(408, "invalid_request_error", "request_timeout");
    assert!(reply.closes(), "{}", reply.head);
    s.closed().await;
    gw.idle().await;
    assert!(metric(
        &gw,
        "sluice_client_read_timeouts_total{phase=\"body\"} 1"
    ));
}

#[tokio::test]
async fn slow_bodies_do_not_hold_the_connection_slots() {
    let gw = slow_body_gateway("max_connections = 2").await;
    // Two stalled uploads take both slots and never close on their own.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = connect(&gw).await;
        s.send(post_head(100)).await;
        s.send(b"{\"model\"").await;
        stalled.push(s);
    }
    // Both are accepted and their requests in flight before the well-behaved client comes.
    tokio::time::timeout(PATIENCE, async {
        while gw.metrics.in_flight.get() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the stalled requests never started");
    let served = tokio::time::timeout(PATIENCE, chat(&gw, &chat_body(false)))
        .await
        .expect("a well-behaved client waited behind stalled uploads");
    assert_eq!(served.status, 200, "{}", served.text());
    for s in &mut stalled {
        s.reply()
            .await
            .assert_error(408, "invalid_request_error", "request_timeout");
    }
    gw.idle().await;
    assert!(metric(
        &gw,
        "sluice_client_read_timeouts_total{phase=\"body\"} 2"
    ));
}

#[tokio::test]
async fn a_body_sent_in_pieces_at_a_fair_pace_is_served() {
    let gw = slow_body_gateway("").await;
    let mut s = connect(&gw).await;
    let body = chat_json();
    s.send(post_head(body.len())).await;
    let (a, b) = body.as_bytes().split_at(body.len() / 2);
    s.send(a).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.send(b).await;
    let reply = s.reply().await;
    assert_eq!(
        reply.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(!reply.closes());
    gw.idle().await;
}

// === head deadline ===

async fn slow_head_gateway() -> TestGateway {
    TestGateway::start(
        &scripted_config("header_read_timeout = \"100ms\""),
        vec![ScriptedBackend::new("b", vec![])],
    )
    .await
}

#[tokio::test]
async fn a_stalled_head_is_answered_408_before_the_close() {
    let gw = slow_head_gateway().await;
    let mut s = connect(&gw).await;
    s.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await;
    let reply = s.reply().await;
    reply.assert_error(408, "invalid_request_error", "request_timeout");
    assert!(reply.closes(), "{}", reply.head);
    s.closed().await;
    assert!(metric(
        &gw,
        "sluice_client_read_timeouts_total{phase=\"head\"} 1"
    ));
}

#[tokio::test]
async fn a_stalled_second_head_on_a_kept_alive_connection_is_answered_408() {
    let gw = slow_head_gateway().await;
    let mut s = connect(&gw).await;
    s.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(s.reply().await.status, 200);
    s.send(b"GET /healthz HTTP/1.1\r\nHo").await;
    let reply = s.reply().await;
    reply.assert_error(408, "invalid_request_error", "request_timeout");
    assert!(reply.closes(), "{}", reply.head);
    s.closed().await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_without_a_408() {
    let gw = slow_head_gateway().await;
    let mut s = connect(&gw).await;
    s.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(s.reply().await.status, 200);
    // Nothing more is sent: hyper's header timer runs between requests too, and a 408 here
    // would be read by a client as the answer to the request it sends next.
    s.closed().await;
    assert!(s.buf.is_empty(), "{:?}", String::from_utf8_lossy(&s.buf));
    assert!(!metric(
        &gw,
        "sluice_client_read_timeouts_total{phase=\"head\"} 1"
    ));
}

#[tokio::test]
async fn a_head_stalled_within_its_first_bytes_is_answered_408() {
    let gw = slow_head_gateway().await;
    let mut s = connect(&gw).await;
    // "P" could still be the h2c preface: the stall comes while the protocol is being told.
    s.send(b"P").await;
    s.reply()
        .await
        .assert_error(408, "invalid_request_error", "request_timeout");
    s.closed().await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_without_an_answer() {
    let gw = slow_head_gateway().await;
    let mut s = connect(&gw).await;
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, s.io.read_to_end(&mut got))
        .await
        .expect("the silent connection was kept open")
        .unwrap();
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(!metric(
        &gw,
        "sluice_client_read_timeouts_total{phase=\"head\"} 1"
    ));
}

// === framing refused ===

/// A chunked body of `json` in two chunks.
fn chunked_body(json: &str) -> String {
    let (a, b) = json.split_at(json.len() / 2);
    format!("{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n", a.len(), b.len())
}

/// Sends `request` on a fresh connection and expects a 400 with `code` that closes it.
async fn assert_refused(gw: &TestGateway, request: &str, code: &str) {
    let mut s = connect(gw).await;
    s.send(request).await;
    let reply = s.reply().await;
    reply.assert_error(400, "invalid_request_error", code);
    assert!(reply.closes(), "{request:?}: {}", reply.head);
    s.closed().await;
}

fn chunked_post(transfer_encoding: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         {transfer_encoding}\r\n\r\n{}",
        chunked_body(&chat_json())
    )
}

#[tokio::test]
async fn transfer_encodings_other_than_one_chunked_are_refused() {
    let gw = TestGateway::scripted(ScriptedBackend::new("b", vec![])).await;
    for te in [
        "transfer-encoding: identity, chunked",
        "Transfer-Encoding: chunked, chunked",
        "transfer-encoding: chunked\r\ntransfer-encoding: chunked",
    ] {
        assert_refused(&gw, &chunked_post(te), "invalid_transfer_encoding").await;
    }
    gw.idle().await;
}

#[tokio::test]
async fn transfer_encoding_beside_content_length_is_refused() {
    let gw = TestGateway::scripted(ScriptedBackend::new("b", vec![])).await;
    let body = chunked_body(&chat_json());
    for te_cl in [
        format!(
            "transfer-encoding: chunked\r\ncontent-length: {}",
            body.len()
        ),
        format!(
            "content-length: {}\r\ntransfer-encoding: chunked",
            body.len()
        ),
    ] {
        assert_refused(&gw, &chunked_post(&te_cl), "invalid_transfer_encoding").await;
    }
}

#[tokio::test]
async fn a_head_with_a_bare_lf_is_refused() {
    let gw = TestGateway::scripted(ScriptedBackend::new("b", vec![])).await;
    let body = chat_json();
    let bare = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_refused(&gw, &bare, "invalid_line_ending").await;
    assert_refused(
        &gw,
        "GET /healthz HTTP/1.1\nhost: x\n\n",
        "invalid_line_ending",
    )
    .await;
}

#[tokio::test]
async fn a_bare_lf_in_a_later_head_on_a_kept_alive_connection_is_refused() {
    let gw = TestGateway::scripted(ScriptedBackend::new("b", vec![])).await;
    let mut s = connect(&gw).await;
    // The first body holds bare LFs of its own (pretty-printed JSON): bytes of a body are not a
    // head, and the reader must know where the body ends.
    let pretty = serde_json::to_string_pretty(&serde_json::json!({
        "model": "m", "messages": [{"role": "user", "content": "hi"}],
    }))
    .unwrap();
    assert!(pretty.contains('\n'));
    s.send(format!("{}{pretty}", post_head(pretty.len()))).await;
    let first = s.reply().await;
    assert_eq!(
        first.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&first.body)
    );
    assert!(!first.closes());
    s.send(b"GET /healthz HTTP/1.1\r\nhost: x\n\r\n").await;
    let second = s.reply().await;
    second.assert_error(400, "invalid_request_error", "invalid_line_ending");
    assert!(second.closes());
    s.closed().await;
}

#[tokio::test]
async fn chunked_and_sized_requests_pipelined_on_one_connection_are_all_served() {
    let gw = TestGateway::scripted(ScriptedBackend::new("b", vec![])).await;
    let mut s = connect(&gw).await;
    let json = chat_json();
    let with_trailer = chunked_body(&json).replace("0\r\n\r\n", "0\r\nx-trailer: 1\r\n\r\n");
    let pipeline = format!(
        "{}{}{json}{}GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
        chunked_post("Transfer-Encoding: chunked"),
        post_head(json.len()),
        chunked_post("transfer-encoding: chunked").replace(&chunked_body(&json), &with_trailer),
    );
    s.send(pipeline).await;
    for i in 0..4 {
        let reply = s.reply().await;
        assert_eq!(
            reply.status,
            200,
            "request {i}: {:?}",
            String::from_utf8_lossy(&reply.body)
        );
        assert!(!reply.closes(), "request {i}: {}", reply.head);
    }
    // And the connection is still good for more.
    s.send(chunked_post("transfer-encoding: chunked")).await;
    let reply = s.reply().await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["object"], "chat.completion");
    gw.idle().await;
}
