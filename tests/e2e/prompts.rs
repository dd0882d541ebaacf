//! Versioned prompts through the gateway: a request that names a prompt by id is rendered, sent
//! on and answered with the prompt's headers; rendered text meets the input guardrails; each
//! refusal is a 400 naming its param; a broken file in the watched directory is refused while the
//! old version keeps serving; and `sluice prompts test` names a wrong case.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice::config::Config;

use crate::common::*;

/// A prompt for the scripted model `m`, with a test case rendering `greeting`.
fn prompt_file(greeting: &str, expected: &str) -> String {
    format!(
        r#"[prompt]
id = "greet"
description = "Greets a customer"
owner = "support"
model = "m"
temperature = 0.25

[[prompt.messages]]
role = "system"
content = "{greeting} {{{{ customer }}}}."

[[prompt.messages]]
role = "user"
content = "Order {{{{ order }}}}: {{{{ note }}}}"

[prompt.variables.customer]
type = "string"
max_length = 20

[prompt.variables.order]
type = "integer"

[prompt.variables.note]
type = "string"
required = false

[[prompt.test]]
name = "plain greeting"
variables = {{ customer = "Ada", order = 7, note = "late" }}
expect = """
system: {expected} Ada.
user: Order 7: late
"""
"#
    )
}

/// A rule blocking AWS access key ids on input.
const POLICY: &str = r#"[[rule]]
id = "aws-key"
description = "AWS access key ids"
kind = "regex"
pattern = "AKIA[0-9A-Z]{16}"
action = "block"
direction = "input"
[[rule.test]]
text = "AKIAIOSFODNN7EXAMPLE"
expect = "block"
"#;

/// A fresh directory for one test, holding `prompts/greet.toml` and `guardrails/policy.toml`.
fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("sluice-e2e-prompts-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("prompts")).unwrap();
    std::fs::create_dir_all(dir.join("guardrails")).unwrap();
    std::fs::write(
        dir.join("prompts/greet.toml"),
        prompt_file("Welcome", "Welcome"),
    )
    .unwrap();
    std::fs::write(dir.join("guardrails/policy.toml"), POLICY).unwrap();
    dir
}

/// Starts the scripted gateway with the audit log, policy and prompts of `root`.
async fn start(root: &Path) -> (TestGateway, Arc<ScriptedBackend>) {
    let text = format!(
        "{}\n[audit]\npath = \"audit.jsonl\"\n\n[guardrails]\ndir = \"guardrails\"\n\n[prompts]\ndir = \"prompts\"\nwatch_interval = \"50ms\"\n",
        scripted_config("")
    );
    let path = root.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let backend = ScriptedBackend::new("b", vec![]);
    let gw = TestGateway::start_config(config, vec![backend.clone()]).await;
    (gw, backend)
}

fn audit_records(root: &Path) -> Vec<Value> {
    std::fs::read_to_string(root.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits (at most 20 s) for an audit record that `pred` accepts.
async fn wait_for_record(root: &Path, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = audit_records(root).into_iter().find(&pred) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no such audit record: {:?}",
            audit_records(root)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn greet(vars: Value) -> Value {
    json!({"prompt": {"id": "greet", "variables": vars}})
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

fn version_of(root: &Path) -> String {
    sluice::prompts::file::version(&std::fs::read(root.join("prompts/greet.toml")).unwrap())
}

#[tokio::test]
async fn a_prompt_by_id_renders_first_and_the_reply_names_it() {
    let root = scratch("render");
    let (gw, backend) = start(&root).await;
    let mut body = greet(json!({"customer": "Ada", "order": 42}));
    body["messages"] = json!([{"role": "user", "content": "Where is it?"}]);
    let r = chat(&gw, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(header(&r, "x-sluice-prompt-id"), Some("greet"));
    assert_eq!(
        header(&r, "x-sluice-prompt-version"),
        Some(version_of(&root).as_str())
    );

    let sent = backend.requests.lock().unwrap()[0].request.clone();
    let texts: Vec<(String, String)> = sent
        .messages
        .iter()
        .map(|m| (m.role.as_str().to_owned(), m.text()))
        .collect();
    assert_eq!(
        texts,
        [
            ("system".to_owned(), "Welcome Ada.".to_owned()),
            // An absent optional string renders as the empty string.
            ("user".to_owned(), "Order 42: ".to_owned()),
            ("user".to_owned(), "Where is it?".to_owned()),
        ]
    );
    assert_eq!(sent.model, "m");
    assert_eq!(sent.temperature, Some(0.25));
    assert!(!sent.extra.contains_key("prompt"), "{:?}", sent.extra);

    let v = version_of(&root);
    assert_eq!(
        gw.metrics
            .prompt_requests
            .with_label_values(&["greet", v.as_str()])
            .get(),
        1
    );
    // A plain request names no prompt.
    let plain = chat(&gw, &chat_body(false)).await;
    assert_eq!(plain.status, 200);
    assert!(header(&plain, "x-sluice-prompt-id").is_none());
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn a_secret_in_a_variable_meets_the_input_guardrails_and_the_audit_names_the_prompt() {
    let root = scratch("guard");
    let (gw, backend) = start(&root).await;
    let r = chat(
        &gw,
        &greet(json!({"customer": "Ada", "order": 1, "note": "key AKIAIOSFODNN7EXAMPLE"})),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "content_filter", "{}", r.text());
    assert_eq!(header(&r, "x-sluice-prompt-id"), Some("greet"));
    assert_eq!(
        header(&r, "x-sluice-prompt-version"),
        Some(version_of(&root).as_str())
    );
    assert!(backend.requests.lock().unwrap().is_empty());
    let rec = wait_for_record(&root, |r| r["event"] == "guardrail").await;
    assert_eq!(rec["rule"], "aws-key");
    assert_eq!(
        rec["prompt"],
        json!({"id": "greet", "version": version_of(&root)})
    );
    assert!(!rec.to_string().contains("AKIAIOSFODNN7EXAMPLE"), "{rec}");
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn each_bad_prompt_reference_is_a_400_naming_its_param() {
    let root = scratch("refuse");
    let (gw, backend) = start(&root).await;
    let ok = json!({"customer": "Ada", "order": 1});
    let cases = [
        (
            json!({"prompt": {"id": "nope"}}),
            "prompt.id",
            "no prompt `nope`",
        ),
        (
            json!({"prompt": {"id": "greet", "version": "0123456789abcdef", "variables": ok}}),
            "prompt.version",
            "not `0123456789abcdef`",
        ),
        (
            greet(json!({"order": 1})),
            "prompt.variables.customer",
            "needs the variable `customer`",
        ),
        (
            greet(json!({"customer": "Ada", "order": "one"})),
            "prompt.variables.order",
            "must be of type integer",
        ),
        (
            greet(json!({"customer": "x".repeat(21), "order": 1})),
            "prompt.variables.customer",
            "at most 20",
        ),
        (
            greet(json!({"customer": "Ada", "order": 1, "colour": "red"})),
            "prompt.variables.colour",
            "no variable `colour`",
        ),
        (
            json!({"model": "other", "prompt": {"id": "greet", "variables": ok}}),
            "model",
            "written for the model `m`",
        ),
    ];
    for (body, param, needle) in cases {
        let r = chat(&gw, &body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let e = &r.json()["error"];
        assert_eq!(e["type"], "invalid_request_error", "{e}");
        assert_eq!(e["param"], param, "{body}: {e}");
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{needle:?}: {e}"
        );
    }
    // The pin of the version served is taken.
    let pinned = json!({"prompt": {"id": "greet", "version": version_of(&root), "variables": ok}});
    assert_eq!(chat(&gw, &pinned).await.status, 200);
    assert_eq!(backend.requests.lock().unwrap().len(), 1);
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn a_broken_prompt_file_is_refused_and_the_old_version_keeps_serving() {
    let root = scratch("reload");
    let (gw, _backend) = start(&root).await;
    let old = version_of(&root);
    // The new text no longer renders what its test expects.
    std::fs::write(
        root.join("prompts/greet.toml"),
        prompt_file("Hello", "Welcome"),
    )
    .unwrap();
    let rec = wait_for_record(&root, |r| {
        r["event"] == "prompt_reload" && r["result"] == "error"
    })
    .await;
    let error = rec["error"].as_str().unwrap();
    assert!(error.contains("greet.toml"), "{error}");
    assert!(
        error.contains("prompt `greet` case `plain greeting`"),
        "{error}"
    );
    assert_eq!(rec["who"], "watcher");
    assert_eq!(rec["prompts"]["greet"], old);

    let r = chat(&gw, &greet(json!({"customer": "Ada", "order": 1}))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(header(&r, "x-sluice-prompt-version"), Some(old.as_str()));

    // A fixed file is served.
    std::fs::write(
        root.join("prompts/greet.toml"),
        prompt_file("Hello", "Hello"),
    )
    .unwrap();
    let new = version_of(&root);
    wait_for_record(&root, |r| {
        r["event"] == "prompt_reload" && r["prompts"]["greet"] == new
    })
    .await;
    let r = chat(&gw, &greet(json!({"customer": "Ada", "order": 1}))).await;
    assert_eq!(header(&r, "x-sluice-prompt-version"), Some(new.as_str()));
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn prompts_test_names_the_prompt_and_case_of_a_wrong_test() {
    let root = scratch("cli");
    let dir = root.join("prompts");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["prompts", "test", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::write(dir.join("greet.toml"), prompt_file("Hello", "Welcome")).unwrap();
    let out = run(&["prompts", "test", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("prompt `greet` case `plain greeting`"),
        "{err}"
    );
    assert!(err.contains("  - system: Welcome Ada."), "{err}");
    assert!(err.contains("  + system: Hello Ada."), "{err}");
    assert_eq!(
        run(&["prompts", "check", dir.to_str().unwrap()])
            .status
            .code(),
        Some(1)
    );

    let out = run(&[
        "prompts",
        "render",
        "greet",
        "--dir",
        dir.to_str().unwrap(),
        "--var",
        "customer=Ada",
        "--var",
        "order=3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0], json!({"role": "system", "content": "Hello Ada."}));
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn an_eval_suite_names_a_prompt_and_its_record_the_version_served() {
    let root = scratch("eval");
    let (gw, backend) = start(&root).await;
    std::fs::write(
        root.join("set.jsonl"),
        "{\"id\":\"ada\",\"variables\":{\"customer\":\"Ada\",\"order\":5},\"reference\":\"Hello\"}\n",
    )
    .unwrap();
    std::fs::write(
        root.join("suite.toml"),
        "dataset = \"set.jsonl\"\nmodel = \"m\"\nprompt_id = \"greet\"\nthreshold = 1\n[[scorer]]\ntype = \"contains\"\n",
    )
    .unwrap();
    let suite = sluice::eval::Suite::load(&root.join("suite.toml")).unwrap();
    let client =
        sluice::eval::GatewayClient::new(&gw.url(""), None, Duration::from_secs(10)).unwrap();
    let opts = sluice::eval::RunOptions {
        concurrency: 1,
        retries: 0,
        backoff: Duration::ZERO,
        progress: false,
        target: gw.url(""),
        weights_sha256: None,
        run_by: None,
    };
    let record = sluice::eval::run(&suite, &client, &opts).await;
    assert!(record.summary.threshold_met, "{:?}", record.cases);
    let v = version_of(&root);
    assert_eq!(record.prompts.get("greet"), Some(&v));
    let json = serde_json::to_value(&record).unwrap();
    assert_eq!(json["prompts"], json!({"greet": v}));
    let sent = backend.requests.lock().unwrap()[0].request.messages[0].text();
    assert_eq!(sent, "Welcome Ada.");
    let _ = std::fs::remove_dir_all(root);
}
