//! Config and policy reloads against what serving checks: `sluice config check`, a reload that
//! names a missing or a changed `[guardrails] dir`, and the audit records each reload leaves.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sluice::config::Config;

use crate::common::*;

/// A rule blocking `word` on input, with a test that proves it.
fn block_rule(id: &str, word: &str) -> String {
    format!(
        "[[rule]]\nid = \"{id}\"\ndescription = \"x\"\nkind = \"regex\"\npattern = \"{word}\"\naction = \"block\"\ndirection = \"input\"\n[[rule.test]]\ntext = \"{word}\"\nexpect = \"block\"\n"
    )
}

/// A fresh directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-e2e-reload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A policy directory holding the shipped policy plus `extra` rule files.
fn policy_dir(at: &Path, extra: &[(&str, String)]) -> PathBuf {
    let shipped = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/guardrails"));
    std::fs::create_dir_all(at.join("lists")).unwrap();
    for f in ["default.toml", "lists/codenames.txt"] {
        std::fs::copy(shipped.join(f), at.join(f)).unwrap();
    }
    for (name, text) in extra {
        std::fs::write(at.join(name), text).unwrap();
    }
    at.to_path_buf()
}

/// The scripted config with an audit log beside it and the policy in `dir`.
fn config_text(dir: &Path) -> String {
    format!(
        "{}\n[audit]\npath = \"audit.jsonl\"\n\n[guardrails]\ndir = \"{}\"\n",
        scripted_config(""),
        dir.display()
    )
}

/// Writes the config to `root/sluice.toml` and starts a gateway from it.
async fn start(root: &Path, policy: &Path) -> (TestGateway, PathBuf) {
    let path = root.join("sluice.toml");
    std::fs::write(&path, config_text(policy)).unwrap();
    let config = Config::load(&path).unwrap();
    let gw = TestGateway::start_config(config, vec![ScriptedBackend::new("b", vec![])]).await;
    (gw, path)
}

fn ask(text: &str) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": text}]})
}

/// Every record of the audit log, in order.
fn audit_records(root: &Path) -> Vec<Value> {
    std::fs::read_to_string(root.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sluice(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn config_check_refuses_what_serve_refuses() {
    let root = scratch("check");
    let path = root.join("sluice.toml");

    std::fs::write(&path, config_text(&root.join("no-such-dir"))).unwrap();
    let out = sluice(&["config", "check", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a missing policy dir passed: {stderr}"
    );
    assert!(stderr.contains("guardrails.dir"), "{stderr}");
    assert!(stderr.contains("no-such-dir"), "{stderr}");

    // A policy whose own tests fail does not serve either.
    let failing = policy_dir(
        &root.join("failing"),
        &[(
            "bad.toml",
            block_rule("bad", "hello").replace("expect = \"block\"", "expect = \"pass\""),
        )],
    );
    std::fs::write(&path, config_text(&failing)).unwrap();
    let out = sluice(&["config", "check", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a failing policy passed: {stderr}");
    assert!(
        stderr.contains("guardrails.dir") && stderr.contains("`bad`"),
        "{stderr}"
    );

    // An audit log that cannot be opened (its directory is a file) does not serve.
    let good = policy_dir(&root.join("good"), &[]);
    std::fs::write(root.join("taken"), "").unwrap();
    std::fs::write(
        &path,
        config_text(&good).replace("audit.jsonl", "taken/audit.jsonl"),
    )
    .unwrap();
    let out = sluice(&["config", "check", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "an unopenable audit log passed: {stderr}"
    );
    assert!(stderr.contains("audit.path"), "{stderr}");

    // What serves passes.
    std::fs::write(&path, config_text(&good)).unwrap();
    let out = sluice(&["config", "check", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn reload_naming_a_missing_policy_dir_is_refused_and_audited() {
    let root = scratch("missing");
    let first = policy_dir(
        &root.join("first"),
        &[("foo.toml", block_rule("no-foo", "foo"))],
    );
    let (gw, path) = start(&root, &first).await;
    let before = gw.state.guardrails.as_ref().unwrap().version();
    assert_eq!(chat(&gw, &ask("say foo")).await.status, 400);

    std::fs::write(&path, config_text(&root.join("gone"))).unwrap();
    let e = gw.state.reload("test").await.unwrap_err();
    assert!(e.contains("guardrails.dir"), "{e}");

    // The running config and policy keep serving.
    assert_eq!(gw.state.guardrails.as_ref().unwrap().version(), before);
    assert_eq!(chat(&gw, &ask("say foo")).await.status, 400);
    assert_eq!(chat(&gw, &ask("hello")).await.status, 200);
    let records = audit_records(&root);
    let refused = records
        .iter()
        .find(|r| r["event"] == "config_reload")
        .expect("a config_reload record");
    assert_eq!(refused["result"], "error", "{refused}");
    assert_eq!(refused["who"], "test");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("guardrails.dir"),
        "{refused}"
    );
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn reload_naming_a_new_policy_dir_serves_its_policy() {
    let root = scratch("changed");
    let first = policy_dir(&root.join("first"), &[]);
    let second = policy_dir(
        &root.join("second"),
        &[("foo.toml", block_rule("no-foo", "foo"))],
    );
    let (gw, path) = start(&root, &first).await;
    let before = gw.state.guardrails.as_ref().unwrap().version();
    assert_eq!(chat(&gw, &ask("say foo")).await.status, 200);

    std::fs::write(&path, config_text(&second)).unwrap();
    gw.state.reload("test").await.unwrap();

    let after = gw.state.guardrails.as_ref().unwrap().version();
    assert_ne!(after, before);
    let r = chat(&gw, &ask("say foo")).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "content_filter");
    assert_eq!(r.headers["x-sluice-policy-version"], &*after);
    let records = audit_records(&root);
    let applied = records
        .iter()
        .find(|r| r["event"] == "config_reload")
        .expect("a config_reload record");
    assert_eq!(applied["result"], "ok", "{applied}");
    assert_eq!(applied["policy_version"], &*after, "{applied}");
    assert_eq!(
        applied["guardrails_dir"]["to"],
        second.display().to_string(),
        "{applied}"
    );
    let policy = records
        .iter()
        .find(|r| r["event"] == "policy_reload")
        .expect("a policy_reload record");
    assert_eq!(policy["who"], "test");
    assert_eq!(policy["result"], "ok", "{policy}");
    assert_eq!(policy["from"], &*before, "{policy}");
    assert_eq!(policy["to"], &*after, "{policy}");
    assert_eq!(policy["dir"], second.display().to_string(), "{policy}");

    // Later policy reloads read the new directory.
    std::fs::write(second.join("bar.toml"), block_rule("no-bar", "bar")).unwrap();
    let reloads = gw.state.policy_reloads.clone().unwrap();
    tokio::task::spawn_blocking(move || reloads.reload("test"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(chat(&gw, &ask("say bar")).await.status, 400);
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn reload_dropping_guardrails_is_refused_and_the_policy_keeps_serving() {
    let root = scratch("dropped");
    let first = policy_dir(
        &root.join("first"),
        &[("foo.toml", block_rule("no-foo", "foo"))],
    );
    let (gw, path) = start(&root, &first).await;
    let without = config_text(&first);
    let without = &without[..without.find("[guardrails]").unwrap()];
    std::fs::write(&path, without).unwrap();
    let e = gw.state.reload("test").await.unwrap_err();
    assert!(e.contains("`guardrails`") && e.contains("restart"), "{e}");
    assert_eq!(chat(&gw, &ask("say foo")).await.status, 400);
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn policy_reloads_applied_and_refused_are_audited() {
    let root = scratch("policy-audit");
    let dir = policy_dir(&root.join("policy"), &[]);
    let (gw, _) = start(&root, &dir).await;
    let before = gw.state.guardrails.as_ref().unwrap().version().to_string();
    let reloads = gw.state.policy_reloads.clone().unwrap();
    let reload = |r: std::sync::Arc<sluice::guardrails::reload::PolicyReloads>| async move {
        tokio::task::spawn_blocking(move || r.reload("test").map(|_| ()).map_err(|e| e.to_string()))
            .await
            .unwrap()
    };

    // A rule whose own test fails; the case's text is secret-shaped and must not be written.
    let secret = "sk-live-0123456789abcdefSECRET";
    std::fs::write(
        dir.join("bad.toml"),
        block_rule("bad", "hello").replace("text = \"hello\"", &format!("text = \"{secret}\"")),
    )
    .unwrap();
    assert!(reload(reloads.clone()).await.is_err());
    std::fs::remove_file(dir.join("bad.toml")).unwrap();
    std::fs::write(dir.join("foo.toml"), block_rule("no-foo", "foo")).unwrap();
    reload(reloads.clone()).await.unwrap();
    let after = gw.state.guardrails.as_ref().unwrap().version().to_string();

    let log = std::fs::read_to_string(root.join("audit.jsonl")).unwrap();
    assert!(!log.contains(secret), "{log}");
    let records: Vec<Value> = audit_records(&root)
        .into_iter()
        .filter(|r| r["event"] == "policy_reload")
        .collect();
    assert_eq!(records.len(), 2, "{log}");
    let (refused, applied) = (&records[0], &records[1]);
    assert_eq!(refused["who"], "test");
    assert_eq!(refused["result"], "error", "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("`bad`"),
        "{refused}"
    );
    assert_eq!(refused["policy_version"], before.as_str(), "{refused}");
    assert_eq!(applied["who"], "test");
    assert_eq!(applied["result"], "ok", "{applied}");
    assert_eq!(applied["from"], before.as_str(), "{applied}");
    assert_eq!(applied["to"], after.as_str(), "{applied}");
    assert_eq!(applied["policy_version"], after.as_str(), "{applied}");
    assert!(refused["time"].is_string() && applied["time"].is_string());
    let _ = std::fs::remove_dir_all(root);
}
