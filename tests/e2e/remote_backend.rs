//! The remote backend against the in-process mock upstream: content, usage, passthrough,
//! authorization, every fault mode, timeouts, and cancellation on drop.

// Helpers outside `#[test]` functions are test code too.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use http::StatusCode;
use serde_json::{json, Value};
use sluice::api::types::{BackendEvent, ChoiceDelta, Usage};
use sluice::backends::openai::OpenAiBackend;
use sluice::backends::{Backend, BackendRequest, EventStream, Readiness};
use sluice::config::{ModelConfig, OpenAiConfig};
use sluice::error::TimeoutPhase;
use sluice::mock_upstream::{Fault, MockConfig, MockUpstream};
use sluice::Error;

/// A bound for waits that should finish at once; hitting it means the test failed, it is not a
/// timing assertion.
const NEVER: Duration = Duration::from_secs(20);

fn config(base_url: &str) -> OpenAiConfig {
    OpenAiConfig {
        base_url: base_url.parse().unwrap(),
        api_key: None,
        connect_timeout: Duration::from_secs(5),
        first_byte_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        total_timeout: Duration::from_secs(60),
        pool_idle_timeout: Duration::from_secs(90),
        pool_max_idle_per_host: 8,
        http2_only: false,
    }
}

fn backend(config: OpenAiConfig) -> OpenAiBackend {
    OpenAiBackend::new("upstream", config).unwrap()
}

/// The model as the gateway would configure it: `gateway-name` served as `mock` upstream.
fn gateway_model() -> ModelConfig {
    let text = r#"
[backends.upstream]
type = "openai"
base_url = "http://127.0.0.1:9/v1"

[models.gateway-name]
backend = "upstream"
upstream_model = "mock"
max_messages = 16
max_prompt_bytes = 1048576
"#;
    let config =
        sluice::config::Config::from_toml(text, std::path::Path::new("t.toml"), &|_| None).unwrap();
    config.models["gateway-name"].clone()
}

fn request(body: Value) -> BackendRequest {
    BackendRequest {
        model: Arc::new(gateway_model()),
        request: serde_json::from_value(body).unwrap(),
        request_id: "req-42".into(),
    }
}

fn hello() -> BackendRequest {
    request(json!({
        "model": "gateway-name",
        "messages": [{"role": "user", "content": "say hello"}],
    }))
}

/// Every event, and the error that ended the stream if one did.
async fn drain(mut stream: EventStream) -> (Vec<BackendEvent>, Option<Error>) {
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(ev) => events.push(ev),
            Err(e) => {
                assert!(
                    stream.next().await.is_none(),
                    "nothing may follow an error item"
                );
                return (events, Some(e));
            }
        }
    }
    (events, None)
}

fn deltas(events: &[BackendEvent]) -> Vec<&ChoiceDelta> {
    events
        .iter()
        .filter_map(|e| match e {
            BackendEvent::Delta(d) => Some(d),
            BackendEvent::Usage(_) => None,
        })
        .collect()
}

fn text(events: &[BackendEvent]) -> String {
    deltas(events)
        .iter()
        .filter_map(|d| d.content.as_deref())
        .collect()
}

fn usage(events: &[BackendEvent]) -> Option<Usage> {
    events.iter().find_map(|e| match e {
        BackendEvent::Usage(u) => Some(*u),
        BackendEvent::Delta(_) => None,
    })
}

/// A request whose upstream model name selects a mock fault (`fault:<spec>`).
fn faulty(fault: &str) -> BackendRequest {
    let mut req = hello();
    req.model = Arc::new(ModelConfig {
        upstream_model: format!("fault:{fault}"),
        ..(*req.model).clone()
    });
    req
}

async fn with_fault(fault: &str, cfg: OpenAiConfig) -> (Vec<BackendEvent>, Option<Error>) {
    let req = faulty(fault);
    let stream = backend(cfg).chat(req).await.unwrap();
    drain(stream).await
}

#[tokio::test]
async fn content_arrives_whole_and_in_order_with_usage() {
    let mock = MockUpstream::start(MockConfig {
        tokens: Some(40),
        ..MockConfig::with_text("one two three four five six seven")
    })
    .await
    .unwrap();
    let b = backend(config(&mock.base_url()));
    let (events, err) = drain(b.chat(hello()).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text(&events), mock.config().answer_text());
    let d = deltas(&events);
    assert_eq!(d[0].role.as_deref(), Some("assistant"));
    assert_eq!(d.last().unwrap().finish_reason.as_deref(), Some("stop"));
    let u = usage(&events).expect("usage was asked for upstream");
    assert_eq!(u.completion_tokens, 40);
    assert_eq!(u.prompt_tokens, 2);
    assert!(matches!(events.last(), Some(BackendEvent::Usage(_))));
}

#[tokio::test]
async fn unknown_fields_pass_through_and_streaming_is_forced() {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let b = backend(config(&mock.base_url()));
    let req = request(json!({
        "model": "gateway-name",
        "messages": [{"role": "user", "content": "hi", "name": "bob"}],
        "stream": false,
        "stream_options": {"include_usage": false, "future_option": 7},
        "temperature": 0.5,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": true}},
        "logit_bias": {"50256": -100},
        "vendor_field": [1, "two", {"three": null}],
    }));
    let (_, err) = drain(b.chat(req).await.unwrap()).await;
    assert!(err.is_none());

    let seen = mock.last_request().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    let body = seen.json().unwrap();
    assert_eq!(body["model"], "mock");
    assert_eq!(body["stream"], true);
    assert_eq!(
        body["stream_options"],
        json!({"include_usage": true, "future_option": 7})
    );
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(
        body["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true}})
    );
    assert_eq!(body["logit_bias"], json!({"50256": -100}));
    assert_eq!(body["vendor_field"], json!([1, "two", {"three": null}]));
    assert_eq!(body["messages"][0]["name"], "bob");
    assert_eq!(seen.header("x-request-id"), Some("req-42"));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("authorization"), None);
}

#[tokio::test]
async fn authorization_is_sent_only_with_a_key_and_never_printed() {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let mut cfg = config(&mock.base_url());
    cfg.api_key = Some("sk-very-secret".into());
    let b = backend(cfg);
    assert!(!format!("{b:?}").contains("sk-very-secret"));
    drain(b.chat(hello()).await.unwrap()).await;
    assert_eq!(
        mock.last_request().unwrap().header("authorization"),
        Some("Bearer sk-very-secret")
    );

    // An error on the same backend shows no key either.
    mock.set_fault(Some(Fault::Status(401)));
    let err = b.chat(hello()).await.err().unwrap();
    assert!(!format!("{err:?} {err}").contains("sk-very-secret"));
}

#[tokio::test]
async fn upstream_5xx_is_an_upstream_status_before_the_first_event() {
    let mock = MockUpstream::start(MockConfig {
        fault: Some(Fault::Status(500)),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let err = backend(config(&mock.base_url()))
        .chat(hello())
        .await
        .err()
        .unwrap();
    let Error::UpstreamStatus { status, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn upstream_4xx_keeps_its_openai_error_fields() {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let b = backend(config(&mock.base_url()));
    let req = faulty("status:422");
    let err = b.chat(req).await.err().unwrap();
    let Error::UpstreamStatus {
        status, upstream, ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*status, StatusCode::UNPROCESSABLE_ENTITY);
    let upstream = upstream.as_deref().expect("an OpenAI-shaped body");
    assert_eq!(upstream.message, "mock fault: status 422");
    assert_eq!(upstream.kind, "invalid_request_error");
    assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

/// The error a request with `fault` ends in, from a backend holding `key`, over HTTP/1.1 or h2c.
async fn status_error(fault: &str, key: Option<&str>, http2_only: bool) -> Error {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let mut cfg = config(&mock.base_url());
    cfg.api_key = key.map(str::to_owned);
    cfg.http2_only = http2_only;
    let err = tokio::time::timeout(NEVER, backend(cfg).chat(faulty(fault)))
        .await
        .expect("the error body was not read in time")
        .err()
        .unwrap();
    tokio::time::timeout(NEVER, mock.wait_in_flight(0))
        .await
        .expect("the upstream response was not released");
    err
}

fn upstream_of(err: &Error) -> Option<&sluice::error::UpstreamError> {
    match err {
        Error::UpstreamStatus { upstream, .. } => upstream.as_deref(),
        _ => panic!("{err:?}"),
    }
}

#[tokio::test]
async fn the_backend_key_is_taken_out_of_an_upstream_error_on_both_transports() {
    for http2_only in [false, true] {
        let err = status_error("error-key:400", Some("sk-very-secret"), http2_only).await;
        let upstream = upstream_of(&err).expect("an OpenAI-shaped body");
        assert!(
            upstream
                .message
                .starts_with("Incorrect API key provided: [REDACTED]."),
            "{}",
            upstream.message
        );
        assert!(!format!("{err:?}").contains("sk-very-secret"));
        assert!(!String::from_utf8_lossy(&err.to_json()).contains("sk-very-secret"));
    }
}

#[tokio::test]
async fn html_and_oversized_error_bodies_are_not_kept_on_both_transports() {
    for http2_only in [false, true] {
        for fault in ["error-html:400", "error-huge:400"] {
            let err = status_error(fault, None, http2_only).await;
            assert!(upstream_of(&err).is_none(), "{fault} h2={http2_only}");
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
    }
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let b = backend(config(&format!("http://127.0.0.1:{port}/v1")));
    let err = b.chat(hello()).await.err().unwrap();
    assert!(matches!(err, Error::UpstreamUnreachable { .. }), "{err:?}");
    assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
    assert!(matches!(b.readiness().await, Readiness::NotReady(_)));
}

#[tokio::test]
async fn readiness_is_ready_when_the_upstream_listens() {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    assert_eq!(
        backend(config(&mock.base_url())).readiness().await,
        Readiness::Ready
    );
}

#[tokio::test(start_paused = true)]
async fn slow_headers_hit_the_first_byte_timeout() {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let mut cfg = config(&mock.base_url());
    cfg.first_byte_timeout = Duration::from_millis(200);
    let req = faulty("slow:5000");
    let err = backend(cfg).chat(req).await.err().unwrap();
    assert!(
        matches!(
            err,
            Error::UpstreamTimeout {
                phase: TimeoutPhase::FirstByte,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stall_after_some_tokens_is_an_idle_timeout_item() {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let mut cfg = config(&mock.base_url());
    cfg.idle_timeout = Duration::from_millis(200);
    let (events, err) = with_fault("stall:3", cfg).await;
    // The role chunk, then three tokens.
    assert_eq!(deltas(&events).len(), 4, "{events:?}");
    assert_eq!(text(&events), mock.config().answer_tokens()[..3].concat());
    assert!(
        matches!(
            err,
            Some(Error::UpstreamTimeout {
                phase: TimeoutPhase::Idle,
                ..
            })
        ),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_answer_hits_the_total_timeout() {
    let mock = MockUpstream::start(MockConfig {
        tokens: Some(1000),
        gap: Duration::from_millis(10),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut cfg = config(&mock.base_url());
    cfg.total_timeout = Duration::from_millis(300);
    let (events, err) = drain(backend(cfg).chat(hello()).await.unwrap()).await;
    assert!(!events.is_empty());
    assert!(deltas(&events).len() < 1000);
    assert!(
        matches!(
            err,
            Some(Error::UpstreamTimeout {
                phase: TimeoutPhase::Total,
                ..
            })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_reset_mid_stream_is_an_error_item_after_the_first_events() {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let (events, err) = with_fault("reset:2", config(&mock.base_url())).await;
    assert_eq!(text(&events), mock.config().answer_tokens()[..2].concat());
    assert!(matches!(err, Some(Error::UpstreamClosed { .. })), "{err:?}");
}

#[tokio::test]
async fn malformed_json_is_a_protocol_error_item() {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let (events, err) = with_fault("malformed:1", config(&mock.base_url())).await;
    assert_eq!(text(&events), mock.config().answer_tokens()[0]);
    assert!(
        matches!(err, Some(Error::UpstreamProtocol { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_stream_whose_choice_finished_is_complete_without_done() {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    for http2_only in [false, true] {
        let mut cfg = config(&mock.base_url());
        cfg.http2_only = http2_only;
        let (events, err) = with_fault("no-done", cfg).await;
        assert!(err.is_none(), "h2={http2_only}: {err:?}");
        assert_eq!(text(&events), mock.config().answer_text());
        assert!(usage(&events).is_some());
    }
}

#[tokio::test]
async fn a_stream_cut_before_its_finish_reason_is_never_a_clean_end() {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    for http2_only in [false, true] {
        let mut cfg = config(&mock.base_url());
        cfg.http2_only = http2_only;
        let (events, err) = with_fault("cut:2", cfg).await;
        assert!(!text(&events).is_empty());
        assert!(
            matches!(err, Some(Error::UpstreamClosed { .. })),
            "h2={http2_only}: {err:?}"
        );
    }
}

#[tokio::test]
async fn a_json_answer_to_a_stream_request_becomes_deltas() {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let (events, err) = with_fault("json", config(&mock.base_url())).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text(&events), mock.config().answer_text());
    assert_eq!(
        deltas(&events).last().unwrap().finish_reason.as_deref(),
        Some("stop")
    );
    assert!(usage(&events).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_finished_stream_returns_its_connection_to_the_pool() {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let b = backend(config(&mock.base_url()));
    for _ in 0..3 {
        let (_, err) = drain(b.chat(hello()).await.unwrap()).await;
        assert!(err.is_none());
        // With the clock paused this sleep returns only once every task is idle, i.e. once the
        // client has read the end of the body and put the connection back in its pool. It is a
        // barrier, not a guess at a duration.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(mock.requests(), 3);
    assert_eq!(mock.connections(), 1);
}

async fn dropping_the_stream_cancels_upstream(http2_only: bool) {
    let mock = MockUpstream::start(MockConfig {
        tokens: Some(100_000),
        gap: Duration::from_millis(5),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut cfg = config(&mock.base_url());
    cfg.http2_only = http2_only;
    let b = backend(cfg);
    let mut stream = b.chat(hello()).await.unwrap();
    for _ in 0..3 {
        assert!(matches!(stream.next().await, Some(Ok(_))));
    }
    assert_eq!(mock.in_flight(), 1);
    drop(stream);
    tokio::time::timeout(NEVER, mock.wait_in_flight(0))
        .await
        .expect("the upstream response was not dropped");
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_upstream_request_http1() {
    dropping_the_stream_cancels_upstream(false).await;
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_upstream_request_h2c() {
    dropping_the_stream_cancels_upstream(true).await;
}

#[tokio::test]
async fn dropping_a_stalled_stream_releases_the_upstream() {
    let mock = MockUpstream::start(MockConfig {
        fault: Some(Fault::Stall { after: 1 }),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let b = backend(config(&mock.base_url()));
    let mut stream = b.chat(hello()).await.unwrap();
    assert!(matches!(stream.next().await, Some(Ok(_))));
    drop(stream);
    tokio::time::timeout(NEVER, mock.wait_in_flight(0))
        .await
        .expect("the stalled upstream response was not dropped");
}

#[tokio::test]
async fn h2c_streams_the_same_answer() {
    let mock = MockUpstream::start(MockConfig {
        tokens: Some(25),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut cfg = config(&mock.base_url());
    cfg.http2_only = true;
    let (events, err) = drain(backend(cfg).chat(hello()).await.unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text(&events), mock.config().answer_text());
    assert!(usage(&events).is_some());
}

#[tokio::test]
async fn max_tokens_reaches_the_upstream() {
    let mock = MockUpstream::start(MockConfig {
        tokens: Some(50),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let req = request(json!({
        "model": "gateway-name",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
    }));
    let (events, _) = drain(backend(config(&mock.base_url())).chat(req).await.unwrap()).await;
    assert_eq!(usage(&events).unwrap().completion_tokens, 5);
    assert_eq!(
        deltas(&events).last().unwrap().finish_reason.as_deref(),
        Some("length")
    );
}

#[tokio::test]
async fn max_tokens_holds_against_an_upstream_that_ignores_it() {
    let mock = MockUpstream::start(MockConfig {
        tokens: Some(50),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    for http2_only in [false, true] {
        let mut cfg = config(&mock.base_url());
        cfg.http2_only = http2_only;
        let mut req = faulty("ignore-max-tokens");
        req.request.max_tokens = Some(5);
        let (events, err) = drain(backend(cfg).chat(req).await.unwrap()).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(text(&events), mock.config().answer_tokens()[..5].concat());
        let finishes: Vec<_> = deltas(&events)
            .iter()
            .filter_map(|d| d.finish_reason.as_deref())
            .collect();
        assert_eq!(finishes, ["length"]);
        assert_eq!(usage(&events).unwrap().completion_tokens, 5);
        tokio::time::timeout(NEVER, mock.wait_in_flight(0))
            .await
            .expect("the upstream request was not dropped at the cut");
    }
}
