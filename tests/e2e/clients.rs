//! Real clients against the gateway: the official `openai` Python SDK, and `promtool` checking the
//! metrics exposition. Both must be installed (`.ci/run` installs them).

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::*;

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs the SDK script against `base_url` on a blocking thread, returning its JSON report.
pub async fn run_sdk(base_url: String, model: &str) -> serde_json::Value {
    run_sdk_script("openai_client.py", base_url, model).await
}

/// Runs `tests/sdk/SCRIPT BASE_URL MODEL` on a blocking thread, returning its JSON report.
pub async fn run_sdk_script(script: &str, base_url: String, model: &str) -> serde_json::Value {
    let path = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let model = model.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(path)
            .arg(base_url)
            .arg(model)
            .output()
            .expect("python3 must be installed")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "SDK script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn openai_sdk_streams_and_collects() {
    let backend = ScriptedBackend::new("b", vec![hello_script(), hello_script()]);
    let gw = TestGateway::scripted(backend).await;
    let report = run_sdk(gw.url("/v1"), "m").await;
    assert_eq!(report["non_stream"]["text"], "Hello, world");
    assert_eq!(report["non_stream"]["finish_reason"], "stop");
    assert_eq!(report["non_stream"]["usage"]["total_tokens"], 8);
    assert_eq!(report["stream"]["text"], "Hello, world");
    assert_eq!(report["stream"]["finish_reason"], "stop");
    assert_eq!(report["stream"]["usage"]["completion_tokens"], 3);
    assert_eq!(report["not_found"]["status"], 404);
    assert_eq!(report["not_found"]["code"], "model_not_found");
    assert_eq!(report["bad_request"]["status"], 400);
    assert_eq!(report["bad_request"]["param"], "temperature");
    assert_eq!(report["models"][0], "m");
    gw.idle().await;
}

#[tokio::test]
async fn promtool_accepts_the_metrics() {
    let backend = ScriptedBackend::new(
        "b",
        vec![
            hello_script(),
            Script::Refuse(sluice::Error::UpstreamUnreachable {
                backend: "b".into(),
                detail: "x".into(),
            }),
        ],
    );
    let gw = TestGateway::scripted(backend).await;
    assert_eq!(chat(&gw, &chat_body(true)).await.status, 200);
    assert_eq!(chat(&gw, &chat_body(false)).await.status, 502);
    gw.idle().await;
    let text = send("GET", &gw.url("/metrics"), &[], "").await.body;
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool must be installed (Debian package `prometheus`)");
        child.stdin.take().unwrap().write_all(&text).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool failed: {report}");
    assert!(report.trim().is_empty(), "promtool reported: {report}");
}

#[tokio::test]
async fn openai_sdk_retries_a_429_and_succeeds_when_the_window_passes() {
    let config = format!(
        "{}\n[keys.sdk]\nsha256 = \"{}\"\nrequests_per_minute = 6\n",
        scripted_config(""),
        sluice::auth::hash_hex("sk-sdk")
    );
    let gw = TestGateway::start(&config, vec![ScriptedBackend::new("b", vec![])]).await;
    // Spend the whole burst so the SDK's first attempt is refused.
    let mut refused = false;
    for _ in 0..200 {
        let r = send(
            "POST",
            &gw.url("/v1/chat/completions"),
            &[
                ("content-type", "application/json"),
                ("authorization", "Bearer sk-sdk"),
            ],
            chat_body(false).to_string(),
        )
        .await;
        if r.status == 429 {
            refused = true;
            break;
        }
    }
    assert!(refused, "the burst never ran out");
    let refusals = || {
        gw.metrics
            .rate_limited
            .with_label_values(&["key_requests", "sdk"])
            .get()
    };
    assert_eq!(refusals(), 1);
    let base = gw.url("/v1");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/sdk/openai_client.py"
            ))
            .args(["retry", &base, "m", "sk-sdk"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["text"], "Hello, world");
    // The SDK's first attempt was refused, and its own retry, after `retry-after-ms`, succeeded.
    assert!(refusals() >= 2, "the SDK was never refused: {}", refusals());
}

#[tokio::test]
async fn openai_sdk_against_the_local_model() {
    let mut config = sluice::config::Config::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/sluice.toml"
    )))
    .unwrap();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    let gw = TestGateway::start_config(config, vec![]).await;
    let report = run_sdk(gw.url("/v1"), "smollm2").await;
    let text = report["non_stream"]["text"].as_str().unwrap();
    assert!(!text.trim().is_empty(), "{report}");
    // temperature 0: streaming and non-streaming give the same greedy text.
    assert_eq!(
        report["stream"]["text"], report["non_stream"]["text"],
        "{report}"
    );
    assert!(
        report["stream"]["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(report["models"][0], "smollm2");
    gw.idle().await;
}
