//! The whole stack against a real (in-process) OpenAI-compatible upstream with fault modes:
//! every fault ends in the right status or SSE error event, and nothing stays in flight.

use std::time::Duration;

use crate::common::*;
use serde_json::json;
use sluice::mock_upstream::{MockConfig, MockUpstream, INTERNAL_ADDRESS, PLANTED_SECRET};

const ANSWER: &str = "The quick brown fox jumps over the lazy dog, twice: é ü 漢字 🦀.";

async fn setup() -> (MockUpstream, TestGateway) {
    let mock = MockUpstream::start(MockConfig::with_text(ANSWER))
        .await
        .unwrap();
    let base = mock.base_url();
    let model = |name: &str, backend: &str, upstream: &str| {
        format!("[models.{name}]\nbackend = \"{backend}\"\nupstream_model = \"{upstream}\"\nretry = {{ attempts = 1 }}\n")
    };
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[backends.up]
type = "openai"
base_url = "{base}"

[backends.impatient]
type = "openai"
base_url = "{base}"
first_byte_timeout = "300ms"
idle_timeout = "300ms"

[backends.down]
type = "openai"
base_url = "http://127.0.0.1:1/v1"

{}{}{}{}{}{}{}{}{}{}{}"#,
        model("mock", "up", "mock"),
        model("e500", "up", "fault:status:500"),
        model("e422", "up", "fault:status:422"),
        model("slow", "impatient", "fault:slow:5000"),
        model("stall", "impatient", "fault:stall:2"),
        model("reset", "up", "fault:reset:2"),
        model("malformed", "up", "fault:malformed:2"),
        model("nodone", "up", "fault:no-done"),
        model("cut", "up", "fault:cut:2"),
        model("json", "up", "fault:json"),
        model("down", "down", "mock"),
    );
    let gw = TestGateway::start(&config, vec![]).await;
    (mock, gw)
}

fn body(model: &str, stream: bool) -> serde_json::Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

fn content(events: &[String]) -> String {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            let v: serde_json::Value = serde_json::from_str(e).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

fn last_error_code(events: &[String]) -> String {
    let v: serde_json::Value = serde_json::from_str(events.last().unwrap()).unwrap();
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn content_passes_unchanged_streamed_and_collected() {
    let (mock, gw) = setup().await;
    let mut b = body("mock", true);
    b["stream_options"] = json!({"include_usage": true});
    let r = chat(&gw, &b).await;
    assert_eq!(r.status, 200);
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(content(&events), ANSWER);
    let usage: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    let r = chat(&gw, &body("mock", false)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["choices"][0]["message"]["content"], ANSWER);
    // The upstream saw the upstream model name and a stream request.
    let seen = mock.last_request().unwrap().json().unwrap();
    assert_eq!(seen["model"], "mock");
    assert_eq!(seen["stream"], true);
    gw.idle().await;
    assert_eq!(mock.in_flight(), 0);
}

#[tokio::test]
async fn unknown_fields_reach_the_upstream_unchanged() {
    let (mock, gw) = setup().await;
    let mut b = body("mock", false);
    b["logit_bias"] = json!({"50256": -100});
    b["user"] = json!("end-user-7");
    b["tools"] = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    assert_eq!(chat(&gw, &b).await.status, 200);
    let seen = mock.last_request().unwrap().json().unwrap();
    assert_eq!(seen["logit_bias"], b["logit_bias"]);
    assert_eq!(seen["user"], "end-user-7");
    assert_eq!(seen["tools"], b["tools"]);
}

#[tokio::test]
async fn faults_before_the_first_byte_are_statuses() {
    let (_mock, gw) = setup().await;
    for stream in [true, false] {
        let cases = [
            ("e500", 502, "upstream_error"),
            ("slow", 504, "upstream_timeout"),
            ("down", 502, "upstream_unreachable"),
        ];
        for (model, status, code) in cases {
            let r = chat(&gw, &body(model, stream)).await;
            assert_eq!(r.status, status, "{model} stream={stream}: {}", r.text());
            assert_eq!(r.json()["error"]["code"], code, "{model}");
        }
        let r = chat(&gw, &body("e422", stream)).await;
        assert_eq!(r.status, 422, "an upstream 4xx is passed through");
        assert!(r.json()["error"]["message"].is_string());
    }
    gw.idle().await;
    let text = String::from_utf8(gw.metrics.render()).unwrap();
    assert!(
        text.contains("sluice_upstream_errors_total{backend=\"down\",kind=\"connect\"} 2"),
        "{text}"
    );
    assert!(
        text.contains(
            "sluice_upstream_errors_total{backend=\"impatient\",kind=\"timeout_first_byte\"} 2"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn faults_after_the_first_byte_are_error_events_without_done() {
    let (mock, gw) = setup().await;
    for (model, code) in [
        ("stall", "upstream_timeout"),
        ("reset", "upstream_closed"),
        ("malformed", "upstream_protocol_error"),
        ("cut", "upstream_closed"),
    ] {
        let r = chat(&gw, &body(model, true)).await;
        assert_eq!(r.status, 200, "{model}");
        let events = r.events();
        assert!(!events.iter().any(|e| e == "[DONE]"), "{model}: {events:?}");
        assert_eq!(last_error_code(&events), code, "{model}: {events:?}");
        assert!(
            !content(&events).is_empty(),
            "{model}: content came before the fault"
        );
        // The same fault without streaming is a status, never partial JSON.
        let r = chat(&gw, &body(model, false)).await;
        assert!(r.status >= 500, "{model}: {}", r.status);
        assert!(r.json()["error"]["code"].is_string());
    }
    gw.idle().await;
    mock.wait_in_flight(0).await;
}

#[tokio::test]
async fn a_stream_whose_choice_finished_is_complete_without_done() {
    let (mock, gw) = setup().await;
    let mut b = body("nodone", true);
    b["stream_options"] = json!({"include_usage": true});
    let r = chat(&gw, &b).await;
    assert_eq!(r.status, 200);
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]", "{events:?}");
    assert_eq!(content(&events), ANSWER);
    let usage: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    let r = chat(&gw, &body("nodone", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["message"]["content"], ANSWER);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    gw.idle().await;
    mock.wait_in_flight(0).await;
}

#[tokio::test]
async fn a_stream_cut_before_its_finish_reason_is_an_error() {
    let (mock, gw) = setup().await;
    let r = chat(&gw, &body("cut", true)).await;
    assert_eq!(r.status, 200);
    let events = r.events();
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    assert_eq!(last_error_code(&events), "upstream_closed");
    let r = chat(&gw, &body("cut", false)).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_closed");
    gw.idle().await;
    mock.wait_in_flight(0).await;
}

#[tokio::test]
async fn a_connection_lost_after_the_finish_reason_still_completes_the_answer() {
    // Chunked framing that never ends: the finish chunk and usage, then the socket closes
    // without `[DONE]` and without the terminating chunk.
    let events = [
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n",
    ];
    let mut answer = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    for e in events {
        answer += &format!("{:x}\r\n{e}\r\n", e.len());
    }
    let answer: &'static [u8] = Box::leak(answer.into_bytes().into_boxed_slice());
    let gw = gateway_for(raw_upstream(answer).await).await;
    let r = chat(&gw, &body("m", true)).await;
    let events = r.events();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    assert_eq!(content(&events), "Hi");
    let r = chat(&gw, &body("m", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["message"]["content"], "Hi");
    assert_eq!(r.json()["usage"]["completion_tokens"], 1);
    gw.idle().await;
}

#[tokio::test]
async fn a_json_answer_to_a_stream_request_is_still_streamed() {
    let (_mock, gw) = setup().await;
    let r = chat(&gw, &body("json", true)).await;
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(content(&events), ANSWER);
}

#[tokio::test]
async fn a_client_that_leaves_drops_the_upstream_request() {
    let mock = MockUpstream::start(MockConfig {
        gap: Duration::from_secs(3600),
        ..MockConfig::with_text(ANSWER)
    })
    .await
    .unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[backends.up]\ntype = \"openai\"\nbase_url = \"{}\"\n[models.mock]\nbackend = \"up\"\n",
        mock.base_url()
    );
    let gw = TestGateway::start(&config, vec![]).await;
    let resp = open_stream(&gw, &body("mock", true)).await;
    let mut stream = resp.into_body();
    read_until(&mut stream, "\"role\"").await;
    assert_eq!(mock.in_flight(), 1);
    drop(stream);
    tokio::time::timeout(Duration::from_secs(10), mock.wait_in_flight(0))
        .await
        .expect("the upstream request was not dropped");
    gw.idle().await;
}

#[tokio::test]
async fn readiness_follows_the_upstream() {
    let (_mock, gw) = setup().await;
    let r = send("GET", &gw.url("/readyz"), &[], "").await;
    assert_eq!(r.status, 503, "backend `down` is unreachable");
    let v = r.json();
    assert_eq!(v["backends"]["up"]["ready"], true);
    assert_eq!(v["backends"]["down"]["ready"], false);
}

/// An upstream on a raw socket that reads one request head and writes `answer` on each
/// connection, then closes.
async fn raw_upstream(answer: &'static [u8]) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket.write_all(answer).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    addr
}

async fn gateway_for(addr: std::net::SocketAddr) -> TestGateway {
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[backends.raw]
type = "openai"
base_url = "http://{addr}/v1"

[models.m]
backend = "raw"
retry = {{ attempts = 1 }}
"#
    );
    TestGateway::start(&config, vec![]).await
}

#[tokio::test]
async fn an_upstream_that_does_not_speak_http_is_a_protocol_error() {
    let addr = raw_upstream(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
    let gw = gateway_for(addr).await;
    for stream in [true, false] {
        let r = chat(&gw, &body("m", stream)).await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "upstream_protocol_error");
    }
    gw.idle().await;
}

#[tokio::test]
async fn chunk_extensions_trailers_and_split_chunks_reach_the_client_intact() {
    // Hand-written framing: an informational head first, an extension on a chunk size, one
    // event split over two chunks, and a trailer field at the end.
    let first = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n";
    let (second_a, second_b) = (
        "data: {\"choices\":[{\"index\":",
        "0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n",
    );
    let done = "data: [DONE]\n\n";
    let mut answer = String::from(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    answer += &format!("{:x};ext=1\r\n{first}\r\n", first.len());
    for piece in [second_a, second_b, done] {
        answer += &format!("{:X}\r\n{piece}\r\n", piece.len());
    }
    answer += "0\r\nx-checksum: 1\r\n\r\n";
    let answer: &'static [u8] = Box::leak(answer.into_bytes().into_boxed_slice());
    let addr = raw_upstream(answer).await;
    let gw = gateway_for(addr).await;
    let r = chat(&gw, &body("m", true)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let events = r.events();
    assert_eq!(content(&events), "Hello");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let r = chat(&gw, &body("m", false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["message"]["content"], "Hello");
    gw.idle().await;
}

// === upstream error bodies ===

/// The key the gateway holds for its upstream; the mock's `error-key` fault quotes it back.
const UPSTREAM_KEY: &str = "sk-upstream-0123456789abcdefABCDEF";

/// A gateway whose backend holds [`UPSTREAM_KEY`], over HTTP/1.1 (the driven pool) or h2c
/// (hyper's client), with the shipped guardrails policy when `policy` is set.
async fn error_gateway(http2_only: bool, policy: bool) -> (MockUpstream, TestGateway) {
    let mock = MockUpstream::start(MockConfig::with_text(ANSWER))
        .await
        .unwrap();
    let guardrails = if policy {
        format!(
            "[guardrails]\ndir = \"{}/guardrails\"\n",
            env!("CARGO_MANIFEST_DIR")
        )
    } else {
        String::new()
    };
    let mut models = String::new();
    for (name, fault) in [
        ("key400", "error-key:400"),
        ("key401", "error-key:401"),
        ("key403", "error-key:403"),
        ("key500", "error-key:500"),
        ("html", "error-html:400"),
        ("huge", "error-huge:400"),
    ] {
        models += &format!(
            "[models.{name}]\nbackend = \"keyed\"\nupstream_model = \"fault:{fault}\"\nretry = {{ attempts = 1 }}\n"
        );
    }
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"

{guardrails}
[backends.keyed]
type = "openai"
base_url = "{}"
api_key = "{UPSTREAM_KEY}"
http2_only = {http2_only}

{models}"#,
        mock.base_url()
    );
    let gw = TestGateway::start(&config, vec![]).await;
    (mock, gw)
}

/// Whatever the case, an error body is small, valid JSON, in OpenAI's shape, and free of the
/// upstream's key and of what the upstream leaked.
fn assert_clean_error(r: &Reply, what: &str) -> serde_json::Value {
    assert_eq!(
        r.headers["content-type"],
        "application/json",
        "{what}: {}",
        r.text()
    );
    assert!(r.body.len() < 4096, "{what}: {} bytes", r.body.len());
    let text = r.text();
    for leak in [
        UPSTREAM_KEY,
        INTERNAL_ADDRESS,
        "<html",
        "prod.internal",
        "xxxxxxxx",
    ] {
        assert!(!text.contains(leak), "{what}: {leak:?} in {text}");
    }
    let v = r.json();
    assert!(v["error"]["message"].is_string(), "{what}: {text}");
    assert!(v["error"]["type"].is_string(), "{what}: {text}");
    v
}

async fn a_4xx_json_error_keeps_its_fields_without_the_upstream_key(http2_only: bool) {
    let (_mock, gw) = error_gateway(http2_only, false).await;
    for stream in [true, false] {
        let r = chat(&gw, &body("key400", stream)).await;
        let what = format!("h2={http2_only} stream={stream}");
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        let v = assert_clean_error(&r, &what);
        assert_eq!(v["error"]["type"], "invalid_request_error", "{what}");
        assert_eq!(v["error"]["code"], "invalid_api_key", "{what}");
        assert_eq!(v["error"]["param"], "messages", "{what}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("Incorrect API key provided: [REDACTED]."),
            "{what}: {message}"
        );
        // Without a policy, only the upstream's own key is taken out.
        assert!(message.contains(PLANTED_SECRET), "{what}: {message}");
    }
    gw.idle().await;
}

#[tokio::test]
async fn a_4xx_json_error_keeps_its_fields_without_the_upstream_key_http1() {
    a_4xx_json_error_keeps_its_fields_without_the_upstream_key(false).await;
}

#[tokio::test]
async fn a_4xx_json_error_keeps_its_fields_without_the_upstream_key_h2c() {
    a_4xx_json_error_keeps_its_fields_without_the_upstream_key(true).await;
}

#[tokio::test]
async fn the_output_policy_redacts_secrets_in_an_upstream_error_message() {
    for http2_only in [false, true] {
        let (_mock, gw) = error_gateway(http2_only, true).await;
        for stream in [true, false] {
            let r = chat(&gw, &body("key400", stream)).await;
            let what = format!("h2={http2_only} stream={stream}");
            assert_eq!(r.status, 400, "{what}: {}", r.text());
            assert!(r.headers.contains_key("x-sluice-policy-version"));
            let v = assert_clean_error(&r, &what);
            let message = v["error"]["message"].as_str().unwrap();
            assert!(!message.contains(PLANTED_SECRET), "{what}: {message}");
            assert!(message.contains("[SECRET]"), "{what}: {message}");
            assert_eq!(v["error"]["code"], "invalid_api_key", "{what}");
        }
        gw.idle().await;
    }
}

#[tokio::test]
async fn an_upstream_that_refuses_the_gateways_credentials_is_a_502() {
    for http2_only in [false, true] {
        let (_mock, gw) = error_gateway(http2_only, false).await;
        for model in ["key401", "key403"] {
            for stream in [true, false] {
                let r = chat(&gw, &body(model, stream)).await;
                let what = format!("{model} h2={http2_only} stream={stream}");
                assert_eq!(r.status, 502, "{what}: {}", r.text());
                assert!(
                    !r.headers.contains_key("www-authenticate"),
                    "{what}: the client's own credentials were fine"
                );
                let v = assert_clean_error(&r, &what);
                assert_eq!(v["error"]["code"], "upstream_auth_failed", "{what}");
                assert_eq!(v["error"]["type"], "upstream_error", "{what}");
                assert!(!r.text().contains(PLANTED_SECRET), "{what}");
            }
        }
        gw.idle().await;
    }
}

#[tokio::test]
async fn an_upstream_5xx_error_message_is_not_shown() {
    let (_mock, gw) = error_gateway(false, false).await;
    for stream in [true, false] {
        let r = chat(&gw, &body("key500", stream)).await;
        assert_eq!(r.status, 502, "{}", r.text());
        let v = assert_clean_error(&r, "key500");
        assert_eq!(v["error"]["code"], "upstream_error");
        assert!(!r.text().contains(PLANTED_SECRET));
    }
    gw.idle().await;
}

#[tokio::test]
async fn an_html_error_page_becomes_sluices_own_error_for_its_status() {
    for http2_only in [false, true] {
        let (_mock, gw) = error_gateway(http2_only, false).await;
        for stream in [true, false] {
            let r = chat(&gw, &body("html", stream)).await;
            let what = format!("h2={http2_only} stream={stream}");
            assert_eq!(r.status, 400, "{what}: {}", r.text());
            let v = assert_clean_error(&r, &what);
            assert_eq!(v["error"]["code"], "upstream_error", "{what}");
            assert_eq!(v["error"]["type"], "upstream_error", "{what}");
        }
        gw.idle().await;
    }
}

#[tokio::test]
async fn a_huge_error_body_is_not_read_whole_nor_sent_cut_as_json() {
    for http2_only in [false, true] {
        let (mock, gw) = error_gateway(http2_only, false).await;
        for stream in [true, false] {
            let r = chat(&gw, &body("huge", stream)).await;
            let what = format!("h2={http2_only} stream={stream}");
            assert_eq!(r.status, 400, "{what}: {} bytes", r.body.len());
            let v = assert_clean_error(&r, &what);
            assert_eq!(v["error"]["code"], "upstream_error", "{what}");
        }
        gw.idle().await;
        // The rest of the 20 MiB was never asked for: the upstream response was dropped.
        tokio::time::timeout(Duration::from_secs(10), mock.wait_in_flight(0))
            .await
            .expect("the huge error body was not dropped");
    }
}

// === max_tokens ===

/// A gateway in front of an upstream that ignores `max_tokens` and would go on for 100 000
/// tokens, one a millisecond: only a cut by the gateway ends a request in time.
async fn runaway_gateway() -> (MockUpstream, TestGateway) {
    let mock = MockUpstream::start(MockConfig {
        tokens: Some(100_000),
        gap: Duration::from_millis(1),
        ..MockConfig::with_text(ANSWER)
    })
    .await
    .unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[backends.up]\ntype = \"openai\"\nbase_url = \"{}\"\n\
         [models.runaway]\nbackend = \"up\"\nupstream_model = \"fault:ignore-max-tokens\"\n\
         retry = {{ attempts = 1 }}\n",
        mock.base_url()
    );
    let gw = TestGateway::start(&config, vec![]).await;
    (mock, gw)
}

/// The first `n` tokens of the mock's answer.
fn first_tokens(mock: &MockUpstream, n: usize) -> String {
    mock.config().answer_tokens()[..n].concat()
}

#[tokio::test]
async fn an_upstream_that_ignores_max_tokens_is_cut_at_the_limit_streamed() {
    let (mock, gw) = runaway_gateway().await;
    let mut b = body("runaway", true);
    b["max_tokens"] = json!(5);
    b["stream_options"] = json!({"include_usage": true});
    let r = tokio::time::timeout(Duration::from_secs(20), chat(&gw, &b))
        .await
        .expect("the answer was not cut");
    assert_eq!(r.status, 200);
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]", "{events:?}");
    assert_eq!(content(&events), first_tokens(&mock, 5));
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let finishes: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finishes, ["length"]);
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 5);
    gw.idle().await;
    tokio::time::timeout(Duration::from_secs(10), mock.wait_in_flight(0))
        .await
        .expect("the runaway upstream request was not dropped");
}

#[tokio::test]
async fn an_upstream_that_ignores_max_tokens_is_cut_at_the_limit_collected() {
    let (mock, gw) = runaway_gateway().await;
    for (field, limit) in [("max_tokens", 7), ("max_completion_tokens", 3)] {
        let mut b = body("runaway", false);
        b[field] = json!(limit);
        let r = tokio::time::timeout(Duration::from_secs(20), chat(&gw, &b))
            .await
            .expect("the answer was not cut");
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            first_tokens(&mock, limit),
            "{field}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "length", "{field}");
        assert_eq!(v["usage"]["completion_tokens"], limit as u64, "{field}");
    }
    gw.idle().await;
    tokio::time::timeout(Duration::from_secs(10), mock.wait_in_flight(0))
        .await
        .expect("the runaway upstream request was not dropped");
}

#[tokio::test]
async fn an_upstream_that_honours_max_tokens_is_passed_unchanged() {
    let (_mock, gw) = setup().await;
    for stream in [true, false] {
        let mut b = body("mock", stream);
        b["max_tokens"] = json!(4);
        b["stream_options"] = json!({"include_usage": true});
        let r = chat(&gw, &b).await;
        assert_eq!(r.status, 200);
        let words: Vec<&str> = ANSWER.split_inclusive(' ').collect();
        if stream {
            let events = r.events();
            assert_eq!(content(&events), words[..4].concat());
            let usage: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
            assert_eq!(usage["usage"]["completion_tokens"], 4);
        } else {
            let v = r.json();
            assert_eq!(v["choices"][0]["message"]["content"], words[..4].concat());
            assert_eq!(v["choices"][0]["finish_reason"], "length");
        }
    }
    gw.idle().await;
}

#[tokio::test]
async fn a_whole_completion_past_max_tokens_is_cut_by_its_own_usage() {
    // An upstream that ignores `stream: true` and `max_tokens` alike: 8 tokens for a budget of 2.
    let json = r#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"aaa bbb ccc ddd eee fff ggg hhh "},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":8,"total_tokens":11}}"#;
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
        json.len()
    );
    let answer: &'static [u8] = Box::leak(answer.into_bytes().into_boxed_slice());
    let gw = gateway_for(raw_upstream(answer).await).await;
    let mut b = body("m", false);
    b["max_tokens"] = json!(2);
    let r = chat(&gw, &b).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["message"]["content"], "aaa bbb ");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 2);
    gw.idle().await;
}
