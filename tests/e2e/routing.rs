//! Routing: weighted splits, retries, fallbacks, breakers, canary rollback, the kill switch, the
//! admin API and config reload.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::common::*;
use serde_json::json;
use sluice::audit::AuditLog;
use sluice::auth::hash_hex;
use sluice::backends::Backend;
use sluice::config::Config;
use sluice::metrics::Metrics;
use sluice::mock_upstream::{Fault, MockConfig, MockUpstream};
use sluice::routing::ModelRouter;
use sluice::Error;

fn router_for(config: &str, backends: Vec<Arc<dyn Backend>>) -> (Arc<ModelRouter>, Arc<Metrics>) {
    let config = Config::from_toml(config, Path::new("t.toml"), &|_| None).unwrap();
    let metrics = Arc::new(Metrics::new());
    let map: BTreeMap<String, Arc<dyn Backend>> = backends
        .into_iter()
        .map(|b| (b.name().to_owned(), b))
        .collect();
    let router = ModelRouter::new(
        Arc::new(config.models["m"].clone()),
        &map,
        metrics.clone(),
        Arc::new(AuditLog::default()),
    )
    .unwrap();
    (Arc::new(router), metrics)
}

const TWO_TARGETS: &str = r#"
[backends.a]
type = "openai"
base_url = "http://127.0.0.1:9/v1"
[backends.b]
type = "openai"
base_url = "http://127.0.0.1:9/v1"
[models.m]
targets = [{ backend = "a", weight = 90, version = "v1" }, { backend = "b", weight = 10, version = "v2" }]
"#;

#[tokio::test]
async fn weighted_split_lands_within_tolerance_over_10k_requests() {
    let (router, _) = router_for(
        TWO_TARGETS,
        vec![
            ScriptedBackend::new("a", vec![]),
            ScriptedBackend::new("b", vec![]),
        ],
    );
    let req: sluice::api::types::ChatRequest =
        serde_json::from_value(json!({"model":"m","messages":[{"role":"user","content":"x"}]}))
            .unwrap();
    let mut to_b = 0;
    for _ in 0..10_000 {
        let opened = router.open(&req, &"id".into()).await.unwrap();
        if opened.target.name() == "b" {
            to_b += 1;
        }
    }
    // Binomial(10000, 0.1): mean 1000, sd 30; ±5 sd.
    assert!((850..=1150).contains(&to_b), "b got {to_b}");
}

#[test]
fn plan_is_the_picked_target_then_the_enabled_fallbacks() {
    let config = r#"
[backends.a]
type = "openai"
base_url = "http://127.0.0.1:9/v1"
[backends.b]
type = "openai"
base_url = "http://127.0.0.1:9/v1"
[models.m]
targets = [{ backend = "a", weight = 100 }, { backend = "b", weight = 0 }]
fallbacks = ["b"]
"#;
    let (router, _) = router_for(
        config,
        vec![
            ScriptedBackend::new("a", vec![]),
            ScriptedBackend::new("b", vec![]),
        ],
    );
    let names =
        |r: &ModelRouter| -> Vec<String> { r.plan().iter().map(|t| t.name().to_owned()).collect() };
    assert_eq!(names(&router), ["a", "b"]);
    router.set_target_enabled("a", false, "test").unwrap();
    assert_eq!(names(&router), ["b"]);
    router.set_target_enabled("b", false, "test").unwrap();
    assert!(names(&router).is_empty());
}

#[tokio::test(start_paused = true)]
async fn retry_then_breaker_then_half_open_probe_then_closed() {
    let config = r#"
[backends.a]
type = "openai"
base_url = "http://127.0.0.1:9/v1"
[backends.b]
type = "openai"
base_url = "http://127.0.0.1:9/v1"
[models.m]
targets = [{ backend = "a", weight = 100 }, { backend = "b", weight = 0 }]
fallbacks = ["b"]
retry = { attempts = 2, backoff = "10ms", budget_min_per_second = 100 }
breaker = { consecutive_failures = 2, open_for = "5s" }
"#;
    let down = || {
        Script::Refuse(Error::UpstreamUnreachable {
            backend: "a".into(),
            detail: "refused".into(),
        })
    };
    let a = ScriptedBackend::new("a", vec![down(), hello_script(), down(), down()]);
    let b = ScriptedBackend::new("b", vec![]);
    let (router, metrics) = router_for(config, vec![a.clone(), b.clone()]);
    let req: sluice::api::types::ChatRequest =
        serde_json::from_value(json!({"model":"m","messages":[{"role":"user","content":"x"}]}))
            .unwrap();

    // 1. One failure, then the retry on the same target succeeds.
    let o = router.open(&req, &"1".into()).await.unwrap();
    assert_eq!(o.target.name(), "a");
    assert_eq!(metrics.retries.with_label_values(&["m"]).get(), 1);
    drop(o);
    // 2. Two failures in a row: the breaker opens and the fallback answers.
    let o = router.open(&req, &"2".into()).await.unwrap();
    assert_eq!(o.target.name(), "b");
    assert_eq!(metrics.fallbacks.with_label_values(&["m"]).get(), 1);
    assert_eq!(router.targets()[0].breaker.state().as_str(), "open");
    drop(o);
    // 3. While open, `a` is not even tried.
    let tried = a.requests.lock().unwrap().len();
    let o = router.open(&req, &"3".into()).await.unwrap();
    assert_eq!(o.target.name(), "b");
    assert_eq!(a.requests.lock().unwrap().len(), tried);
    drop(o);
    // 4. After open_for, one probe goes to `a`; it succeeds and the breaker closes.
    tokio::time::advance(std::time::Duration::from_secs(6)).await;
    assert_eq!(router.targets()[0].breaker.state().as_str(), "half_open");
    let o = router.open(&req, &"4".into()).await.unwrap();
    assert_eq!(o.target.name(), "a");
    assert_eq!(router.targets()[0].breaker.state().as_str(), "closed");
    let text = String::from_utf8(metrics.render()).unwrap();
    assert!(
        text.contains("sluice_breaker_state{model=\"m\",target=\"a\"} 0"),
        "{text}"
    );
}

async fn two_mocks_gateway(
    extra_model: &str,
    extra: &str,
) -> (MockUpstream, MockUpstream, TestGateway) {
    let primary = MockUpstream::start(MockConfig::with_text("from primary"))
        .await
        .unwrap();
    let backup = MockUpstream::start(MockConfig::with_text("from backup"))
        .await
        .unwrap();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
{extra}
[backends.primary]
type = "openai"
base_url = "{}"
[backends.backup]
type = "openai"
base_url = "{}"
[admin_keys.ops]
sha256 = "{}"
[models.m]
version = "2026-11"
owner = "ml-platform"
approved_by = "risk-committee"
approved_at = "2026-11-01"
{extra_model}
"#,
        primary.base_url(),
        backup.base_url(),
        hash_hex("sk-admin"),
    );
    let gw = TestGateway::start(&config, vec![]).await;
    (primary, backup, gw)
}

#[tokio::test]
async fn upstream_5xx_falls_back_and_headers_say_what_served() {
    let (primary, _backup, gw) = two_mocks_gateway(
        r#"targets = [{ backend = "primary", weight = 100, version = "v7" }, { backend = "backup", weight = 0, version = "v6" }]
fallbacks = ["backup"]
retry = { attempts = 1 }"#,
        "",
    )
    .await;
    let r = chat(
        &gw,
        &json!({"model":"m","messages":[{"role":"user","content":"x"}]}),
    )
    .await;
    assert_eq!(r.headers["x-sluice-target"], "primary");
    assert_eq!(r.headers["x-sluice-model-version"], "v7");
    primary.set_fault(Some(Fault::Status(503)));
    let r = chat(
        &gw,
        &json!({"model":"m","messages":[{"role":"user","content":"x"}]}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["choices"][0]["message"]["content"], "from backup");
    assert_eq!(r.headers["x-sluice-target"], "backup");
    assert_eq!(r.headers["x-sluice-model-version"], "v6");
    let text = String::from_utf8(gw.metrics.render()).unwrap();
    assert!(
        text.contains("sluice_fallbacks_total{model=\"m\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("sluice_upstream_errors_total{backend=\"primary\",kind=\"status_5xx\"} 1"),
        "{text}"
    );
    assert!(text.contains(
        "sluice_model_info{approved_by=\"risk-committee\",model=\"m\",owner=\"ml-platform\",version=\"2026-11\"} 1"
    ));
    // The registry is visible to clients.
    let v = send("GET", &gw.url("/v1/models"), &[], "").await.json();
    assert_eq!(v["data"][0]["owner"], "ml-platform");
    assert_eq!(v["data"][0]["approved_by"], "risk-committee");
    assert_eq!(v["data"][0]["version"], "2026-11");
}

#[tokio::test]
async fn a_failing_canary_is_rolled_back_automatically() {
    let dir = std::env::temp_dir().join(format!("sluice-canary-{}", std::process::id()));
    let audit = dir.join("audit.jsonl");
    let (primary, _backup, gw) = two_mocks_gateway(
        r#"targets = [
  { name = "stable", backend = "backup", weight = 50 },
  { name = "canary", backend = "primary", weight = 50, canary = { min_requests = 4, max_error_rate = 0.25 } },
]
retry = { attempts = 1 }"#,
        &format!("[audit]\npath = \"{}\"", audit.display()),
    )
    .await;
    // The canary breaks mid-stream: after its first token the connection resets.
    primary.set_fault(Some(Fault::Reset { after: 1 }));
    let mut canary_served = 0;
    for _ in 0..200 {
        let r = chat(
            &gw,
            &json!({"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}),
        )
        .await;
        if r.headers["x-sluice-target"] == "canary" {
            canary_served += 1;
        }
        if gw
            .metrics
            .canary_rollbacks
            .with_label_values(&["m", "canary"])
            .get()
            == 1
        {
            break;
        }
    }
    assert_eq!(
        gw.metrics
            .canary_rollbacks
            .with_label_values(&["m", "canary"])
            .get(),
        1
    );
    assert!(canary_served >= 1);
    // From now on everything goes to the stable target.
    for _ in 0..20 {
        let r = chat(
            &gw,
            &json!({"model":"m","messages":[{"role":"user","content":"x"}]}),
        )
        .await;
        assert_eq!(r.headers["x-sluice-target"], "stable");
    }
    let log = std::fs::read_to_string(&audit).unwrap();
    let rec: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(rec["event"], "canary_rollback");
    assert_eq!(rec["target"], "canary");
    assert!(rec["reason"].as_str().unwrap().starts_with("error rate"));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn kill_switch_and_weights_through_the_admin_api() {
    let dir = std::env::temp_dir().join(format!("sluice-admin-{}", std::process::id()));
    let audit = dir.join("audit.jsonl");
    let (_p, _b, gw) = two_mocks_gateway(
        r#"targets = [{ backend = "primary", weight = 100 }, { backend = "backup", weight = 0 }]"#,
        &format!("[audit]\npath = \"{}\"", audit.display()),
    )
    .await;
    let admin = |path: &str| format!("http://{}{path}", gw.admin.unwrap());
    let auth = [("authorization", "Bearer sk-admin")];
    let body = json!({"model":"m","messages":[{"role":"user","content":"x"}]});

    assert_eq!(
        send("GET", &admin("/admin/models"), &[], "").await.status,
        401
    );
    assert_eq!(
        send(
            "GET",
            &admin("/admin/models"),
            &[("authorization", "Bearer nope")],
            ""
        )
        .await
        .status,
        401
    );
    let v = send("GET", &admin("/admin/models"), &auth, "").await.json();
    assert_eq!(v["models"][0]["targets"][0]["weight"], 100);

    // Kill switch: the very next request is refused.
    assert_eq!(
        send("POST", &admin("/admin/models/m/disable"), &auth, "")
            .await
            .status,
        200
    );
    let r = chat(&gw, &body).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (503, Some("model_unavailable"))
    );
    assert_eq!(
        send("POST", &admin("/admin/models/m/enable"), &auth, "")
            .await
            .status,
        200
    );
    assert_eq!(chat(&gw, &body).await.status, 200);

    // Move all traffic to the backup.
    let r = send(
        "POST",
        &admin("/admin/models/m/targets/primary/weight"),
        &auth,
        r#"{"weight":0}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send(
        "POST",
        &admin("/admin/models/m/targets/backup/weight"),
        &auth,
        r#"{"weight":100}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(chat(&gw, &body).await.headers["x-sluice-target"], "backup");
    let r = send(
        "POST",
        &admin("/admin/models/m/targets/nope/weight"),
        &auth,
        r#"{"weight":1}"#,
    )
    .await;
    assert_eq!(r.status, 404);
    let r = send(
        "POST",
        &admin("/admin/models/m/targets/backup/weight"),
        &auth,
        r#"{"weight":-1}"#,
    )
    .await;
    assert_eq!(r.status, 400);

    let log = std::fs::read_to_string(&audit).unwrap();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["event"], "model_switched");
    assert_eq!(events[0]["enabled"], false);
    assert!(events
        .iter()
        .all(|e| e["who"] == "ops" && e["time"].is_string()));
    assert!(events
        .iter()
        .any(|e| e["event"] == "weight_set" && e["to"] == 100));
    assert!(!log.contains("sk-admin") && !log.contains(&hash_hex("sk-admin")));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn reload_swaps_valid_config_keeps_last_good_and_limiter_state() {
    let dir = std::env::temp_dir().join(format!("sluice-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sluice.toml");
    let base = format!(
        "{}\n[keys.alice]\nsha256 = \"{}\"\nrequests_per_minute = 2\n[admin_keys.ops]\nsha256 = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        scripted_config(""),
        hash_hex("sk-alice"),
        hash_hex("sk-admin")
    );
    std::fs::write(&path, &base).unwrap();
    let config = Config::load(&path).unwrap();
    let gw = TestGateway::start_config(config, vec![ScriptedBackend::new("b", vec![])]).await;
    let admin = format!("http://{}/admin/reload", gw.admin.unwrap());
    let auth = [("authorization", "Bearer sk-admin")];
    let as_key = |k: &'static str| [("content-type", "application/json"), ("authorization", k)];
    let url = gw.url("/v1/chat/completions");
    let body = chat_body(false).to_string();
    assert_eq!(
        send("POST", &url, &as_key("Bearer sk-alice"), body.clone())
            .await
            .status,
        200
    );
    assert_eq!(
        send("POST", &url, &as_key("Bearer sk-bob"), body.clone())
            .await
            .status,
        401
    );

    // A broken file is refused; the running config keeps serving.
    std::fs::write(
        &path,
        base.replace("[keys.alice]", "[keys.alice]\nbogus = 1"),
    )
    .unwrap();
    let r = send("POST", &admin, &auth, "").await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("bogus"));
    assert_eq!(
        send("POST", &url, &as_key("Bearer sk-alice"), body.clone())
            .await
            .status,
        200
    );

    // A good file adds a key; alice's limiter (2 a minute, both used) is not reset.
    let with_bob = format!("{base}\n[keys.bob]\nsha256 = \"{}\"\n", hash_hex("sk-bob"));
    std::fs::write(&path, with_bob).unwrap();
    assert_eq!(send("POST", &admin, &auth, "").await.status, 200);
    assert_eq!(
        send("POST", &url, &as_key("Bearer sk-bob"), body.clone())
            .await
            .status,
        200
    );
    assert_eq!(
        send("POST", &url, &as_key("Bearer sk-alice"), body.clone())
            .await
            .status,
        429
    );
    let text = String::from_utf8(gw.metrics.render()).unwrap();
    assert!(text.contains("sluice_config_reloads_total{result=\"error\"} 1"));
    assert!(text.contains("sluice_config_reloads_total{result=\"ok\"} 1"));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn mock_faults_drive_retry_fallback_and_breaker() {
    let (primary, backup, gw) = two_mocks_gateway(
        r#"targets = [{ backend = "primary", weight = 100 }, { backend = "backup", weight = 0 }]
fallbacks = ["backup"]
retry = { attempts = 2, backoff = "1ms", budget_min_per_second = 100 }
breaker = { consecutive_failures = 2, open_for = "1h" }"#,
        "",
    )
    .await;
    let body = json!({"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]});
    primary.set_fault(Some(Fault::Status(503)));
    // Attempt, retry (both 503: the breaker opens), then the fallback answers.
    let r = chat(&gw, &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-sluice-target"], "backup");
    assert_eq!(primary.requests(), 2);
    assert_eq!(gw.metrics.retries.with_label_values(&["m"]).get(), 1);
    assert_eq!(gw.metrics.fallbacks.with_label_values(&["m"]).get(), 1);
    // The breaker is open: the primary is not tried at all any more.
    primary.set_fault(None);
    for _ in 0..5 {
        assert_eq!(chat(&gw, &body).await.headers["x-sluice-target"], "backup");
    }
    assert_eq!(primary.requests(), 2);
    assert_eq!(backup.requests(), 6);
    let text = String::from_utf8(gw.metrics.render()).unwrap();
    assert!(
        text.contains("sluice_breaker_state{model=\"m\",target=\"primary\"} 2"),
        "{text}"
    );
    gw.idle().await;
}
