//! The promotion gate end to end: a two-target model (stable v1 with evidence, canary v2 at
//! weight 0) on mock upstreams, one of which answers wrongly. Raising the canary without
//! evidence is refused by reload and by the admin API and audited, and traffic stays on stable;
//! `sluice eval run --target canary` on the bad upstream gives a failing record, which is named;
//! on the good upstream a passing one, which admits it; an override with a reason is audited as
//! such; `sluice eval gate`, `GET /admin/models/{model}` and `sluice models show` report it all,
//! and the audit log verifies.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use sluice::config::Config;
use sluice::mock_upstream::{MockConfig, MockUpstream};

use crate::common::*;

const EVAL_KEY: &str = "sk-promotion-eval";
const APP_KEY: &str = "sk-promotion-app";
const ADMIN_KEY: &str = "sk-promotion-admin";

const DATASET: &str = r#"{"id":"fr","messages":[{"role":"user","content":"Capital of France?"}],"reference":"Paris"}
{"id":"pe","messages":[{"role":"user","content":"Capital of Peru?"}],"reference":"Lima"}
"#;
const SUITE: &str = r#"
name = "capitals"
dataset = "capitals.jsonl"
model = "m"
threshold = 0.5
[[scorer]]
type = "contains"
"#;

/// The config with the canary on `canary_backend` at `canary_weight`, version `canary_version`.
fn config_text(canary_backend: &str, canary_weight: u32, canary_version: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[audit]
path = "audit.jsonl"
[validation]
records = "records"

[backends.good]
type = "openai"
base_url = "{good}"
[backends.bad]
type = "openai"
base_url = "{bad}"

[models.m]
owner = "search-team"
approved_by = "alice"
approved_at = "2020-01-01T00:00:00Z"
version = "v1"
retry = {{ attempts = 1 }}
validation = {{ suite = "capitals.toml", min_score = 0.8 }}
targets = [
  {{ name = "stable", backend = "good", version = "v1", weight = 100 }},
  {{ name = "canary", backend = "{canary_backend}", version = "{canary_version}", weight = {canary_weight} }},
]

[keys.eval]
sha256 = "{eval}"
pin_target = true
[keys.app]
sha256 = "{app}"
[admin_keys.ops]
sha256 = "{admin}"
"#,
        good = GOOD_URL.with(|u| u.borrow().clone()),
        bad = BAD_URL.with(|u| u.borrow().clone()),
        eval = sluice::auth::hash_hex(EVAL_KEY),
        app = sluice::auth::hash_hex(APP_KEY),
        admin = sluice::auth::hash_hex(ADMIN_KEY),
    )
}

thread_local! {
    static GOOD_URL: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    static BAD_URL: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` (and the eval key in `SLUICE_API_KEY`), for at most 60 s.
async fn sluice(args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args)
        .env("SLUICE_API_KEY", EVAL_KEY)
        .env_remove("SLUICE_CONFIG")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("sluice did not finish in 60 s")
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `sluice eval run` of the suite pinned to `target`; the record's hash and contents.
async fn eval_run(dir: &Path, target: &str) -> (Run, String, Value) {
    let suite = dir.join("capitals.toml");
    let config = dir.join("gateway.toml");
    let records = dir.join("records");
    let run = sluice(&[
        "eval",
        "run",
        suite.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--records",
        records.to_str().unwrap(),
        "--target",
        target,
    ])
    .await;
    let path = PathBuf::from(run.stdout.trim());
    assert!(path.is_file(), "{} {}", run.stdout, run.stderr);
    let hash = path.file_stem().unwrap().to_str().unwrap().to_owned();
    let record: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    (run, hash, record)
}

fn audit_lines(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn events<'a>(lines: &'a [Value], event: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["event"] == event).collect()
}

async fn admin(gw: &TestGateway, method: &str, path: &str, body: Value) -> Reply {
    send(
        method,
        &format!("http://{}{path}", gw.admin.unwrap()),
        &[
            ("authorization", &format!("Bearer {ADMIN_KEY}")),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await
}

async fn chat_as(gw: &TestGateway, key: &str, pin: Option<&str>) -> Reply {
    let auth = format!("Bearer {key}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(p) = pin {
        headers.push(("x-sluice-target", p));
    }
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "Capital of Peru?"}]});
    send(
        "POST",
        &gw.url("/v1/chat/completions"),
        &headers,
        body.to_string(),
    )
    .await
}

fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
    r.headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

#[tokio::test]
async fn a_release_reaches_traffic_only_on_evidence_or_a_stated_override() {
    let good = MockUpstream::start(MockConfig::with_text("Paris and Lima."))
        .await
        .unwrap();
    let bad = MockUpstream::start(MockConfig::with_text("I do not know."))
        .await
        .unwrap();
    GOOD_URL.with(|u| *u.borrow_mut() = good.base_url());
    BAD_URL.with(|u| *u.borrow_mut() = bad.base_url());
    let dir = std::env::temp_dir().join(format!("sluice-e2e-promotion-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("capitals.jsonl"), DATASET).unwrap();
    std::fs::write(dir.join("capitals.toml"), SUITE).unwrap();
    let config_path = dir.join("gateway.toml");
    let write = |text: String| std::fs::write(&config_path, text).unwrap();
    write(config_text("bad", 0, "v2"));

    // Without evidence for stable, the config does not even start.
    let check = sluice(&["config", "check", config_path.to_str().unwrap()]).await;
    assert_ne!(check.code, Some(0), "{}", check.stdout);
    assert!(check.stderr.contains("target `stable`"), "{}", check.stderr);

    // Stable's evidence, pinned; the record says what served.
    let (run, stable_hash, record) = eval_run(&dir, "stable").await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(record["served"]["target"], "stable");
    assert_eq!(record["served"]["version"], "v1");
    assert_eq!(record["served"]["mixed"], false);
    assert!(record["served"]["weights_sha256"].is_null());

    let gw = TestGateway::start_config(Config::load(&config_path).unwrap(), vec![]).await;
    let started = audit_lines(&dir);
    let admitted = events(&started, "promotion_admitted");
    assert_eq!(admitted.len(), 1, "{started:?}");
    assert_eq!(admitted[0]["target"], "stable");
    assert_eq!(admitted[0]["record"], stable_hash.as_str());

    // Pinning: a key without pin_target is refused; the eval key reaches the weight-0 canary.
    let r = chat_as(&gw, APP_KEY, Some("canary")).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "permission_denied");
    let r = chat_as(&gw, EVAL_KEY, Some("canary")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(header(&r, "x-sluice-target"), "canary");
    assert_eq!(header(&r, "x-sluice-model-version"), "v2");

    // A reload giving the canary weight without a record is refused, audited, and stable serves.
    write(config_text("bad", 10, "v2"));
    let r = admin(&gw, "POST", "/admin/reload", json!({})).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    for part in [
        "model `m`",
        "target `canary`",
        "version v2",
        "capitals.toml",
        "no record",
    ] {
        assert!(msg.contains(part), "{part}: {msg}");
    }
    let lines = audit_lines(&dir);
    let refused = events(&lines, "promotion_refused");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["target"], "canary");
    assert_eq!(refused[0]["who"], "ops");
    for _ in 0..10 {
        let r = chat_as(&gw, APP_KEY, None).await;
        assert_eq!(r.status, 200);
        assert_eq!(header(&r, "x-sluice-target"), "stable");
    }

    // The admin API refuses it too, with 409, and audits it.
    let path = "/admin/models/m/targets/canary/weight";
    let r = admin(&gw, "POST", path, json!({"weight": 10})).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "promotion_refused");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no record"));
    assert_eq!(events(&audit_lines(&dir), "promotion_refused").len(), 2);

    // The canary on the bad upstream: a failing record, named with its score.
    let (run, bad_hash, record) = eval_run(&dir, "canary").await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert_eq!(record["served"]["target"], "canary");
    assert_eq!(record["summary"]["pass_rate"], 0.0);
    let r = admin(&gw, "POST", "/admin/reload", json!({})).await;
    assert_eq!(r.status, 400);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        msg.contains(&bad_hash) && msg.contains("scored 0.000"),
        "{msg}"
    );
    let r = admin(&gw, "POST", path, json!({"weight": 10})).await;
    assert_eq!(r.status, 409);
    assert!(r.text().contains(&bad_hash), "{}", r.text());

    // On the good upstream: a passing record, and the reload is admitted on it.
    write(config_text("good", 10, "v2"));
    let (run, good_hash, _) = eval_run(&dir, "canary").await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let r = admin(&gw, "POST", "/admin/reload", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let lines = audit_lines(&dir);
    let admitted = events(&lines, "promotion_admitted");
    let canary = admitted.iter().find(|l| l["target"] == "canary").unwrap();
    assert_eq!(canary["record"], good_hash.as_str());
    assert_eq!(canary["who"], "ops");
    let r = admin(&gw, "POST", path, json!({"weight": 20})).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A new canary version has no evidence: refused, then let through by a stated override.
    write(config_text("good", 0, "v3"));
    let r = admin(&gw, "POST", "/admin/reload", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin(&gw, "POST", path, json!({"weight": 5})).await;
    assert_eq!(r.status, 409, "{}", r.text());
    let r = admin(
        &gw,
        "POST",
        path,
        json!({"weight": 5, "override": "hotfix for incident 42"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let lines = audit_lines(&dir);
    let o = events(&lines, "promotion_override");
    assert_eq!(o.len(), 1);
    assert_eq!(o[0]["who"], "ops");
    assert_eq!(o[0]["reason"], "hotfix for incident 42");
    assert_eq!(o[0]["version"], "v3");
    let text = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap();
    assert!(!text.contains(ADMIN_KEY) && !text.contains(&sluice::auth::hash_hex(ADMIN_KEY)));

    // The gate for a release pipeline.
    let cfg = config_path.to_str().unwrap();
    let g = sluice(&["eval", "gate", "--config", cfg]).await;
    assert_eq!(g.code, Some(0), "{}{}", g.stdout, g.stderr);
    assert!(g.stdout.contains(&stable_hash), "{}", g.stdout);
    let g = sluice(&[
        "eval", "gate", "--config", cfg, "--model", "m", "--target", "canary",
    ])
    .await;
    assert_eq!(g.code, Some(1), "{}{}", g.stdout, g.stderr);
    assert!(
        g.stdout.contains("target `canary`") && g.stdout.contains("v3"),
        "{}",
        g.stdout
    );

    // The four answers.
    let r = admin(&gw, "GET", "/admin/models/m", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let serving = v["serving"]["targets"].as_array().unwrap();
    let canary = serving.iter().find(|t| t["name"] == "canary").unwrap();
    assert_eq!(canary["weight"], 5);
    assert_eq!(canary["breaker"], "closed");
    let val = v["validation"]["targets"].as_array().unwrap();
    let stable = val.iter().find(|t| t["target"] == "stable").unwrap();
    assert_eq!(stable["verdict"], "admitted");
    assert_eq!(stable["evidence"]["record"], stable_hash.as_str());
    assert_eq!(stable["evidence"]["pass_rate"], 1.0);
    assert!(stable["evidence"]["dataset_sha256"].as_str().unwrap().len() == 64);
    assert_eq!(v["registry"]["owner"], "search-team");
    assert_eq!(v["registry"]["approved_by"], "alice");
    let changes: Vec<&str> = v["changes_since_approval"]["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    for e in [
        "promotion_admitted",
        "promotion_refused",
        "promotion_override",
        "weight_set",
        "config_reload",
    ] {
        assert!(changes.contains(&e), "{e}: {changes:?}");
    }
    let show = sluice(&["models", "show", "m", "--config", cfg, "--json"]).await;
    assert_eq!(show.code, Some(0), "{}", show.stderr);
    let offline: Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(offline["serving"]["live"], false);
    assert_eq!(
        offline["validation"]["targets"][0]["evidence"]["record"],
        stable_hash.as_str()
    );

    let verify = sluice(&["audit", "verify", dir.join("audit.jsonl").to_str().unwrap()]).await;
    assert_eq!(verify.code, Some(0), "{}{}", verify.stdout, verify.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
}
