//! End-to-end tests of the serving core against a real gateway on port 0 with scripted backends.

use std::sync::Arc;

use crate::common::*;
use serde_json::json;
use sluice::error::{TimeoutPhase, UpstreamError};
use sluice::Error;
use tokio::sync::Notify;

fn chunks(events: &[String]) -> Vec<serde_json::Value> {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

fn content_of(chunks: &[serde_json::Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn streaming_returns_content_unchanged_and_ends_with_done() {
    let backend = ScriptedBackend::new("b", vec![hello_script()]);
    let gw = TestGateway::scripted(backend.clone()).await;
    let r = chat(&gw, &chat_body(true)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    assert_eq!(r.headers["x-request-id"].len(), 32);
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks = chunks(&events);
    assert_eq!(content_of(&chunks), "Hello, world");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert!(chunks
        .iter()
        .all(|c| c["model"] == "m" && c["id"] == chunks[0]["id"]));
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
    gw.idle().await;
}

#[tokio::test]
async fn non_streaming_is_the_same_stream_collected() {
    let backend = ScriptedBackend::new("b", vec![hello_script()]);
    let gw = TestGateway::scripted(backend).await;
    let r = chat(&gw, &chat_body(false)).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello, world");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["total_tokens"], 8);
    gw.idle().await;
}

#[tokio::test]
async fn include_usage_adds_a_final_usage_chunk() {
    let backend = ScriptedBackend::new("b", vec![hello_script()]);
    let gw = TestGateway::scripted(backend).await;
    let mut body = chat_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let events = chat(&gw, &body).await.events();
    let chunks = chunks(&events);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"].as_array().unwrap().len(), 0);
    assert_eq!(last["usage"]["completion_tokens"], 3);
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c["usage"].is_null()));
    let text = gw.metrics.render();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("sluice_completion_tokens_total{backend=\"b\",model=\"m\"} 3"),
        "{text}"
    );
}

#[tokio::test]
async fn unknown_fields_and_resolved_limits_reach_the_backend() {
    let backend = ScriptedBackend::new("b", vec![hello_script()]);
    let gw = TestGateway::scripted(backend.clone()).await;
    let mut body = chat_body(false);
    body["user"] = json!("u-42");
    body["response_format"] = json!({"type": "text"});
    assert_eq!(chat(&gw, &body).await.status, 200);
    let req = backend.requests.lock().unwrap().pop().unwrap();
    assert_eq!(req.request.extra["user"], "u-42");
    assert_eq!(req.request.extra["response_format"]["type"], "text");
    assert_eq!(
        req.request.max_tokens,
        Some(100),
        "default budget is the model's limit here"
    );
    assert_eq!(req.model.upstream_model, "m");
    assert_eq!(req.request_id.as_str().len(), 32);
}

#[tokio::test]
async fn client_request_id_is_echoed() {
    let gw = TestGateway::scripted(ScriptedBackend::new("b", vec![])).await;
    let r = send(
        "POST",
        &gw.url("/v1/chat/completions"),
        &[
            ("content-type", "application/json"),
            ("x-request-id", "my-id-1"),
        ],
        chat_body(false).to_string(),
    )
    .await;
    assert_eq!(r.headers["x-request-id"], "my-id-1");
}

#[tokio::test]
async fn failure_after_first_byte_is_an_error_event_without_done() {
    let backend = ScriptedBackend::new(
        "b",
        vec![Script::Open(vec![
            role(),
            text("partial"),
            Step::Fail(Error::UpstreamClosed {
                backend: "b".into(),
            }),
        ])],
    );
    let gw = TestGateway::scripted(backend).await;
    let r = chat(&gw, &chat_body(true)).await;
    assert_eq!(r.status, 200);
    let events = r.events();
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    let last: serde_json::Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_closed");
    gw.idle().await;
    let text = String::from_utf8(gw.metrics.render()).unwrap();
    assert!(text.contains("sluice_upstream_errors_total{backend=\"b\",kind=\"closed\"} 1"));
}

#[tokio::test]
async fn errors_before_first_byte_map_to_statuses() {
    let cases: Vec<(Error, u16, &str)> = vec![
        (
            Error::UpstreamUnreachable {
                backend: "b".into(),
                detail: "refused".into(),
            },
            502,
            "upstream_unreachable",
        ),
        (
            Error::UpstreamTimeout {
                backend: "b".into(),
                phase: TimeoutPhase::FirstByte,
            },
            504,
            "upstream_timeout",
        ),
        (
            Error::UpstreamStatus {
                backend: "b".into(),
                status: http::StatusCode::INTERNAL_SERVER_ERROR,
                upstream: UpstreamError::parse(br#"{"error":{"message":"secret internals"}}"#)
                    .map(Box::new),
            },
            502,
            "upstream_error",
        ),
    ];
    for (err, status, code) in cases {
        for stream in [true, false] {
            let backend = ScriptedBackend::new("b", vec![]);
            let err = match &err {
                Error::UpstreamUnreachable { backend, detail } => Error::UpstreamUnreachable {
                    backend: backend.clone(),
                    detail: detail.clone(),
                },
                Error::UpstreamTimeout { backend, phase } => Error::UpstreamTimeout {
                    backend: backend.clone(),
                    phase: *phase,
                },
                Error::UpstreamStatus {
                    backend,
                    status,
                    upstream,
                } => Error::UpstreamStatus {
                    backend: backend.clone(),
                    status: *status,
                    upstream: upstream.clone(),
                },
                _ => unreachable!(),
            };
            backend.push(Script::Refuse(err));
            let gw = TestGateway::scripted(backend).await;
            let r = chat(&gw, &chat_body(stream)).await;
            assert_eq!(r.status, status, "{code} stream={stream}");
            let v = r.json();
            assert_eq!(v["error"]["code"], code);
            assert!(!r.text().contains("secret internals") && !r.text().contains("refused"));
            gw.idle().await;
        }
    }
}

#[tokio::test]
async fn upstream_4xx_body_is_passed_through() {
    let backend = ScriptedBackend::new(
        "b",
        vec![Script::Refuse(Error::UpstreamStatus {
            backend: "b".into(),
            status: http::StatusCode::UNPROCESSABLE_ENTITY,
            upstream: UpstreamError::parse(br#"{"error":{"message":"bad tool","type":"invalid_request_error","param":"tools","code":null}}"#).map(Box::new),
        })],
    );
    let gw = TestGateway::scripted(backend).await;
    let r = chat(&gw, &chat_body(true)).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["error"]["param"], "tools");
}

#[tokio::test]
async fn failure_mid_collection_is_a_status_not_partial_json() {
    let backend = ScriptedBackend::new(
        "b",
        vec![Script::Open(vec![
            text("partial"),
            Step::Fail(Error::UpstreamTimeout {
                backend: "b".into(),
                phase: TimeoutPhase::Idle,
            }),
        ])],
    );
    let gw = TestGateway::scripted(backend).await;
    let r = chat(&gw, &chat_body(false)).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    gw.idle().await;
}

#[tokio::test]
async fn operating_limits_each_name_their_param() {
    let gw = TestGateway::scripted(ScriptedBackend::new("b", vec![])).await;
    let user = json!({"role": "user", "content": "hi"});
    let cases = [
        (json!({"model":"m","messages":[]}), "messages"),
        (
            json!({"model":"m","messages":[user, user, user, user, user]}),
            "messages",
        ),
        (
            json!({"model":"m","messages":[{"role":"user","content":"x".repeat(1001)}]}),
            "messages",
        ),
        (
            json!({"model":"m","messages":[user],"max_tokens":101}),
            "max_tokens",
        ),
        (
            json!({"model":"m","messages":[user],"temperature":3}),
            "temperature",
        ),
        (json!({"model":"m","messages":[user],"top_p":1.5}), "top_p"),
        (
            json!({"model":"m","messages":[user],"temperature":"warm"}),
            "temperature",
        ),
        (
            json!({"model":"m","messages":[{"role":"robot","content":"x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model":"m","messages":[{"role":"user","content":7}]}),
            "messages[0].content",
        ),
    ];
    for (body, param) in cases {
        let r = chat(&gw, &body).await;
        assert_eq!(r.status, 400, "{body}");
        let v = r.json();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let got = v["error"]["param"].as_str().unwrap_or_default();
        assert!(
            got.starts_with(param),
            "{body}: param {got:?}, want {param:?}"
        );
    }
    gw.idle().await;
}

#[tokio::test]
async fn unknown_model_is_404_model_not_found() {
    let gw = TestGateway::scripted(ScriptedBackend::new("b", vec![])).await;
    let r = chat(
        &gw,
        &json!({"model":"nope","messages":[{"role":"user","content":"hi"}]}),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    assert_eq!(r.json()["error"]["param"], "model");
}

#[tokio::test]
async fn malformed_bodies_get_clear_4xx() {
    let gw = TestGateway::scripted(ScriptedBackend::new("b", vec![])).await;
    let url = gw.url("/v1/chat/completions");
    let json_ct = [("content-type", "application/json")];
    let r = send("POST", &url, &json_ct, "{\"model\": ").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    let r = send("POST", &url, &json_ct, &b"{\"model\":\"\xc3\x28\"}"[..]).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (400, Some("invalid_encoding"))
    );
    let r = send("POST", &url, &json_ct, "").await;
    assert_eq!(r.status, 400);
    let r = send("POST", &url, &[("content-type", "text/plain")], "hi").await;
    assert_eq!(r.status, 415);
    let big = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(5 * 1024 * 1024)
    );
    let r = send("POST", &url, &json_ct, big).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (413, Some("request_too_large"))
    );
    let r = send("GET", &url, &[], "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "POST");
    let r = send("GET", &gw.url("/v2/nothing"), &[], "").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (404, Some("unknown_url"))
    );
    gw.idle().await;
}

#[tokio::test]
async fn connections_are_spread_over_the_serving_workers() {
    let hang = || Script::Open(vec![role(), text("first"), Step::Hang]);
    let backend = ScriptedBackend::new("b", vec![hang(), hang()]);
    let gw = TestGateway::start(&scripted_config("workers = 2"), vec![backend.clone()]).await;
    // Two streams open at once travel on two client connections.
    let mut a = open_stream(&gw, &chat_body(true)).await.into_body();
    read_until(&mut a, "first").await;
    let mut b = open_stream(&gw, &chat_body(true)).await.into_body();
    read_until(&mut b, "first").await;
    let text = String::from_utf8(gw.metrics.render()).unwrap();
    for worker in ["0", "1"] {
        assert!(
            text.contains(&format!(
                "sluice_worker_connections{{worker=\"{worker}\"}} 1"
            )),
            "{text}"
        );
    }
    drop((a, b));
    backend.wait_drops(2).await;
    gw.idle().await;
}

#[tokio::test]
async fn client_disconnect_drops_the_backend_stream() {
    let backend = ScriptedBackend::new(
        "b",
        vec![Script::Open(vec![role(), text("first"), Step::Hang])],
    );
    let gw = TestGateway::scripted(backend.clone()).await;
    let resp = open_stream(&gw, &chat_body(true)).await;
    let mut body = resp.into_body();
    read_until(&mut body, "first").await;
    assert_eq!(gw.state.in_flight.current(), 1);
    drop(body);
    tokio::time::timeout(std::time::Duration::from_secs(10), backend.wait_drops(1))
        .await
        .expect("backend stream was not dropped after the client left");
    gw.idle().await;
    let text = String::from_utf8(gw.metrics.render()).unwrap();
    assert!(
        text.contains("sluice_streams_aborted_total{model=\"m\",reason=\"client_closed\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn idle_streams_get_keep_alive_comments() {
    let go = Arc::new(Notify::new());
    let backend = ScriptedBackend::new(
        "b",
        vec![Script::Open(vec![
            role(),
            Step::WaitFor(go.clone()),
            text("late"),
            finish("stop"),
        ])],
    );
    let gw = TestGateway::start(&scripted_config("sse_keep_alive = \"20ms\""), vec![backend]).await;
    let mut body = open_stream(&gw, &chat_body(true)).await.into_body();
    let seen = read_until(&mut body, ": keep-alive\n\n").await;
    go.notify_one();
    let rest = read_rest(body).await;
    let all = format!("{seen}{rest}");
    assert!(
        all.contains("late") && all.ends_with("data: [DONE]\n\n"),
        "{all}"
    );
    gw.idle().await;
}

#[tokio::test]
async fn shutdown_lets_streams_finish_within_grace() {
    let go = Arc::new(Notify::new());
    let backend = ScriptedBackend::new(
        "b",
        vec![Script::Open(vec![
            role(),
            text("a"),
            Step::WaitFor(go.clone()),
            text("b"),
            finish("stop"),
        ])],
    );
    let mut gw =
        TestGateway::start(&scripted_config("shutdown_grace = \"60s\""), vec![backend]).await;
    let mut body = open_stream(&gw, &chat_body(true)).await.into_body();
    read_until(&mut body, "\"a\"").await;
    gw.shutdown();
    // Readiness flips while the stream is still open.
    loop {
        let draining = gw.state.shutdown.is_draining();
        if draining {
            break;
        }
        tokio::task::yield_now().await;
    }
    go.notify_one();
    let rest = read_rest(body).await;
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
    gw.handle.take().unwrap().await.unwrap().unwrap();
    // The listener is closed.
    assert!(tokio::net::TcpStream::connect(gw.addr).await.is_err());
}

#[tokio::test]
async fn shutdown_closes_connections_that_never_sent_a_request() {
    use tokio::io::AsyncReadExt;
    let backend = ScriptedBackend::new("b", vec![]);
    // A grace period far longer than the guard below: only closing the silent connection lets
    // the server finish in time.
    let mut gw =
        TestGateway::start(&scripted_config("shutdown_grace = \"600s\""), vec![backend]).await;
    let mut silent = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // A served request first, so the silent connection is surely accepted before the drain.
    assert_eq!(send("GET", &gw.url("/healthz"), &[], "").await.status, 200);
    gw.shutdown();
    let done = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        gw.handle.take().unwrap(),
    )
    .await
    .expect("the server waited on a connection that never asked for anything");
    done.unwrap().unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        silent.read(&mut buf).await.unwrap(),
        0,
        "closed without a response"
    );
}

#[tokio::test]
async fn shutdown_after_grace_ends_streams_with_an_error_event() {
    let backend =
        ScriptedBackend::new("b", vec![Script::Open(vec![role(), text("a"), Step::Hang])]);
    let mut gw = TestGateway::start(
        &scripted_config("shutdown_grace = \"50ms\""),
        vec![backend.clone()],
    )
    .await;
    let mut body = open_stream(&gw, &chat_body(true)).await.into_body();
    read_until(&mut body, "\"a\"").await;
    gw.shutdown();
    let rest = read_rest(body).await;
    assert!(rest.contains("\"code\":\"shutting_down\""), "{rest}");
    assert!(!rest.contains("[DONE]"));
    gw.handle.take().unwrap().await.unwrap().unwrap();
    backend.wait_drops(1).await;
    gw.idle().await;
}

#[tokio::test]
async fn probes_and_models() {
    let gw = TestGateway::scripted(ScriptedBackend::new("b", vec![])).await;
    let r = send("GET", &gw.url("/healthz"), &[], "").await;
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")));
    let r = send("GET", &gw.url("/readyz"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["backends"]["b"]["ready"], true);
    let r = send("GET", &gw.url("/v1/models"), &[], "").await;
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "m");
    assert_eq!(v["data"][0]["object"], "model");
}

#[tokio::test]
async fn metrics_can_live_on_a_separate_admin_listener() {
    let config = scripted_config("").replace(
        "[backends.b]",
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[backends.b]",
    );
    let gw = TestGateway::start(&config, vec![ScriptedBackend::new("b", vec![])]).await;
    let admin = gw.admin.unwrap();
    assert_eq!(chat(&gw, &chat_body(false)).await.status, 200);
    let r = send("GET", &format!("http://{admin}/metrics"), &[], "").await;
    assert_eq!(r.status, 200);
    assert!(
        r.text()
            .contains("sluice_requests_total{model=\"m\",status=\"200\"} 1"),
        "{}",
        r.text()
    );
    assert_eq!(send("GET", &gw.url("/metrics"), &[], "").await.status, 404);
    assert_eq!(
        send(
            "POST",
            &format!("http://{admin}/v1/chat/completions"),
            &[],
            ""
        )
        .await
        .status,
        404
    );
}

#[tokio::test]
async fn metrics_cover_latency_families() {
    let gw = TestGateway::scripted(ScriptedBackend::new("b", vec![hello_script()])).await;
    assert_eq!(chat(&gw, &chat_body(true)).await.status, 200);
    gw.idle().await;
    let text = send("GET", &gw.url("/metrics"), &[], "").await.text();
    for family in [
        "sluice_request_duration_seconds_count{backend=\"b\",model=\"m\"} 1",
        "sluice_time_to_first_token_seconds_count{backend=\"b\",model=\"m\"} 1",
        "sluice_inter_token_latency_seconds_count{backend=\"b\",model=\"m\"} 2",
        "sluice_gateway_overhead_seconds_count{backend=\"b\",model=\"m\"} 1",
        "sluice_prompt_tokens_total{backend=\"b\",model=\"m\"} 5",
        // The scrape itself is the one request in flight.
        "sluice_requests_in_flight 1",
        "sluice_build_info{version=",
    ] {
        assert!(text.contains(family), "missing {family}\n{text}");
    }
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let gw = TestGateway::scripted(ScriptedBackend::new("b", vec![hello_script()])).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::builder()
        .method("POST")
        .uri(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            chat_body(true).to_string(),
        )))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = read_rest(resp.into_body()).await;
    assert!(body.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::start(
        &scripted_config("header_read_timeout = \"100ms\""),
        vec![ScriptedBackend::new("b", vec![])],
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // The server closes the connection (with or without a 408) instead of waiting forever.
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("connection was not closed")
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test]
async fn connection_cap_holds_extra_clients_until_one_leaves() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::start(
        &scripted_config("max_connections = 1"),
        vec![ScriptedBackend::new("b", vec![])],
    )
    .await;
    let first = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // Make sure the first connection holds the only slot: a request on it is answered.
    let mut first = first;
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let second = tokio::spawn({
        let url = gw.url("/healthz");
        async move { send("GET", &url, &[], "").await.status }
    });
    // While the first connection is open, the second is not served.
    let mut second = second;
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), &mut second)
            .await
            .is_err(),
        "second connection was served beyond the cap"
    );
    drop(first);
    assert_eq!(second.await.unwrap(), 200);
}
