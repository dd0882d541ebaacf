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

/// Reads one response (head, then a `content-length` body), failing after [`PATIENCE`].
async fn read_reply(s: &mut (impl AsyncReadExt + Unpin)) -> RawReply {
    tokio::time::timeout(PATIENCE, async {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.expect("reading the response");
            assert!(
                n > 0,
                "connection closed before a response: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status = head[9..12].parse().expect("a status code");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().expect("a content length"));
        let mut body = buf[head_end..].to_vec();
        while body.len() < len {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.expect("reading the body");
            assert!(n > 0, "connection closed inside the body");
            body.extend_from_slice(&chunk[..n]);
        }
        RawReply { status, head, body }
    })
    .await
    .expect("no response in time")
}

/// Waits until the gateway has closed its side of the connection, discarding what arrives.
async fn assert_closed(s: &mut (impl AsyncReadExt + Unpin)) {
    tokio::time::timeout(PATIENCE, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the gateway kept the connection open");
}

async fn connect(gw: &TestGateway) -> TcpStream {
    TcpStream::connect(gw.addr).await.unwrap()
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
    let (mut rx, mut tx) = connect(&gw).await.into_split();
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
    let reply = read_reply(&mut rx).await;
    reply.assert_error(408, "invalid_request_error", "request_timeout");
    assert!(reply.closes(), "{}", reply.head);
    assert_closed(&mut rx).await;
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
    s.write_all(post_head(body.len() + 10).as_bytes())
        .await
        .unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let reply = read_reply(&mut s).await;
    reply.assert_error(408, "invalid_request_error", "request_timeout");
    assert!(reply.closes(), "{}", reply.head);
    assert_closed(&mut s).await;
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
        s.write_all(post_head(100).as_bytes()).await.unwrap();
        s.write_all(b"{\"model\"").await.unwrap();
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
        read_reply(s)
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
    s.write_all(post_head(body.len()).as_bytes()).await.unwrap();
    let (a, b) = body.as_bytes().split_at(body.len() / 2);
    s.write_all(a).await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b).await.unwrap();
    let reply = read_reply(&mut s).await;
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
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let reply = read_reply(&mut s).await;
    reply.assert_error(408, "invalid_request_error", "request_timeout");
    assert!(reply.closes(), "{}", reply.head);
    assert_closed(&mut s).await;
    assert!(metric(
        &gw,
        "sluice_client_read_timeouts_total{phase=\"head\"} 1"
    ));
}

#[tokio::test]
async fn a_stalled_second_head_on_a_kept_alive_connection_is_answered_408() {
    let gw = slow_head_gateway().await;
    let mut s = connect(&gw).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut s).await.status, 200);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.unwrap();
    let reply = read_reply(&mut s).await;
    reply.assert_error(408, "invalid_request_error", "request_timeout");
    assert!(reply.closes(), "{}", reply.head);
    assert_closed(&mut s).await;
}

#[tokio::test]
async fn a_head_stalled_within_its_first_bytes_is_answered_408() {
    let gw = slow_head_gateway().await;
    let mut s = connect(&gw).await;
    // "P" could still be the h2c preface: the stall comes while the protocol is being told.
    s.write_all(b"P").await.unwrap();
    read_reply(&mut s)
        .await
        .assert_error(408, "invalid_request_error", "request_timeout");
    assert_closed(&mut s).await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_without_an_answer() {
    let gw = slow_head_gateway().await;
    let mut s = connect(&gw).await;
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut got))
        .await
        .expect("the silent connection was kept open")
        .unwrap();
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(!metric(
        &gw,
        "sluice_client_read_timeouts_total{phase=\"head\"} 1"
    ));
}
