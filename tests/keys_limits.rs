//! API keys and rate limits through a real gateway.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use sluice::auth::hash_hex;

fn config(extra_keys: &str) -> String {
    let base = scripted_config("").replace(
        "[models.m]",
        "[models.other]\nbackend = \"b\"\n\n[models.m]",
    );
    format!(
        "{base}\n[keys.alice]\nsha256 = \"{}\"\nmodels = [\"m\"]\n{extra_keys}\n[admin_keys.ops]\nsha256 = \"{}\"\n",
        hash_hex("sk-alice"),
        hash_hex("sk-admin")
    )
}

async fn chat_as(gw: &TestGateway, key: Option<&str>, model: &str) -> Reply {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let mut body = chat_body(false);
    body["model"] = model.into();
    send(
        "POST",
        &gw.url("/v1/chat/completions"),
        &headers,
        body.to_string(),
    )
    .await
}

#[tokio::test]
async fn keys_are_checked_and_scoped_to_models() {
    let gw = TestGateway::start(&config(""), vec![ScriptedBackend::new("b", vec![])]).await;
    assert_eq!(chat_as(&gw, Some("sk-alice"), "m").await.status, 200);
    let r = chat_as(&gw, Some("sk-wrong"), "m").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let r = chat_as(&gw, None, "m").await;
    assert_eq!(r.status, 401);
    let r = chat_as(&gw, Some("sk-admin"), "m").await;
    assert_eq!(r.status, 401, "an admin key is not a client key");
    let r = chat_as(&gw, Some("sk-alice"), "other").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (403, Some("model_not_allowed"))
    );
    // Probes stay public; the model list shows only what the key may use.
    assert_eq!(send("GET", &gw.url("/healthz"), &[], "").await.status, 200);
    let r = send(
        "GET",
        &gw.url("/v1/models"),
        &[("authorization", "Bearer sk-alice")],
        "",
    )
    .await;
    let ids: Vec<_> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, vec![serde_json::json!("m")]);
    assert_eq!(
        send("GET", &gw.url("/v1/models"), &[], "").await.status,
        401
    );
}

#[tokio::test]
async fn request_limit_refuses_with_openai_headers() {
    let gw = TestGateway::start(
        &config("requests_per_minute = 2\ntokens_per_minute = 100000"),
        vec![ScriptedBackend::new("b", vec![])],
    )
    .await;
    let first = chat_as(&gw, Some("sk-alice"), "m").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["x-ratelimit-limit-requests"], "2");
    assert_eq!(first.headers["x-ratelimit-remaining-requests"], "1");
    assert_eq!(first.headers["x-ratelimit-limit-tokens"], "100000");
    assert!(first.headers.contains_key("x-ratelimit-reset-requests"));
    assert!(first.headers.contains_key("x-ratelimit-remaining-tokens"));
    assert_eq!(chat_as(&gw, Some("sk-alice"), "m").await.status, 200);
    let refused = chat_as(&gw, Some("sk-alice"), "m").await;
    assert_eq!(refused.status, 429);
    let v = refused.json();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "retry-after {retry}");
    assert_eq!(refused.headers["x-ratelimit-remaining-requests"], "0");
    let text = String::from_utf8(gw.metrics.render()).unwrap();
    assert!(
        text.contains("sluice_rate_limited_total{key=\"alice\",kind=\"key_requests\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn token_limit_counts_completions_of_cut_streams() {
    // 60 tokens a minute: a 5-token prompt estimate is admitted, then a long streamed completion that
    // the client abandons still drains the bucket.
    let long: Vec<Step> = std::iter::once(role())
        .chain((0..40).map(|_| text("abcdefgh")))
        .chain(std::iter::once(Step::Hang))
        .collect();
    let backend = ScriptedBackend::new("b", vec![Script::Open(long)]);
    let gw = TestGateway::start(&config("tokens_per_minute = 60"), vec![backend.clone()]).await;
    let mut body = chat_body(true);
    body["messages"][0]["content"] = "hi".into();
    let req = http::Request::builder()
        .method("POST")
        .uri(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-alice")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.into_body();
    // 40 chunks of 8 bytes: 80 tokens by the estimate, beyond the 55 left after the prompt.
    read_until(&mut stream, "abcdefgh").await;
    let mut seen = 1;
    while seen < 40 {
        let part = read_until(&mut stream, "abcdefgh").await;
        seen += part.matches("abcdefgh").count();
    }
    drop(stream);
    backend.wait_drops(1).await;
    gw.idle().await;
    let r = chat_as(&gw, Some("sk-alice"), "m").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    let text = String::from_utf8(gw.metrics.render()).unwrap();
    assert!(text.contains("kind=\"key_tokens\"} 1"), "{text}");
}

#[tokio::test]
async fn concurrency_cap_per_key() {
    let backend =
        ScriptedBackend::new("b", vec![Script::Open(vec![role(), text("x"), Step::Hang])]);
    let gw = TestGateway::start(&config("max_concurrent = 1"), vec![backend]).await;
    let mut body = chat_body(true);
    body["model"] = "m".into();
    let req = http::Request::builder()
        .method("POST")
        .uri(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-alice")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let open = client().request(req).await.unwrap();
    let mut open_body = open.into_body();
    read_until(&mut open_body, "\"x\"").await;
    let r = chat_as(&gw, Some("sk-alice"), "m").await;
    assert_eq!(r.status, 429);
    drop(open_body);
    gw.idle().await;
    assert_eq!(chat_as(&gw, Some("sk-alice"), "m").await.status, 200);
}

/// Captures every log line of this test binary.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn keys_never_reach_logs_or_metrics() {
    let logs = Captured::default();
    let writer = logs.clone();
    let _ = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .try_init();
    let gw = TestGateway::start(
        &config("requests_per_minute = 1"),
        vec![ScriptedBackend::new("b", vec![])],
    )
    .await;
    chat_as(&gw, Some("sk-alice"), "m").await;
    chat_as(&gw, Some("sk-alice"), "m").await;
    chat_as(&gw, Some("sk-wrong-secret"), "m").await;
    let text = String::from_utf8(gw.metrics.render()).unwrap();
    assert!(
        !text.contains("sk-alice")
            && !text.contains("sk-wrong")
            && !text.contains(&hash_hex("sk-alice"))
    );
}
