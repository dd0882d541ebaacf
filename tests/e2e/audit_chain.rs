//! The audit log's hash chain against a real gateway and the real `sluice audit verify`: records
//! of every kind (guardrail decisions from their writer thread, admin changes, a reload) are
//! chained, a restarted gateway goes on with the chain, a cut last line starts a new segment, and
//! an edited or a removed line is named.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice::config::Config;

use crate::common::*;

/// A fresh directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-e2e-audit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The scripted gateway with an admin key, the shipped policy and `root/audit.jsonl`.
async fn start(root: &Path) -> TestGateway {
    let extra = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[audit]\npath = \"audit.jsonl\"\n\n\
         [guardrails]\ndir = \"{}/guardrails\"\n\n[admin_keys.ops]\nsha256 = \"{}\"\n",
        env!("CARGO_MANIFEST_DIR"),
        sluice::auth::hash_hex("sk-admin"),
    );
    let path = root.join("sluice.toml");
    std::fs::write(&path, scripted_config(&extra)).unwrap();
    let config = Config::load(&path).unwrap();
    let backend = ScriptedBackend::new("b", vec![hello_script()]);
    TestGateway::start_config(config, vec![backend]).await
}

/// Switches model `m` off and on again through the admin API: two records.
async fn switch_twice(gw: &TestGateway) {
    for action in ["disable", "enable"] {
        let url = format!("http://{}/admin/models/m/{action}", gw.admin.unwrap());
        let r = send("POST", &url, &[("authorization", "Bearer sk-admin")], "").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits, at most 10 s, until the file holds `n` lines: guardrail records come from a thread.
async fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = std::fs::read_to_string(path).unwrap_or_default();
        let l: Vec<String> = l.lines().map(str::to_owned).collect();
        if l.len() >= n || Instant::now() > deadline {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the built `sluice` with `args`, killed after 30 s.
fn sluice(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sluice {args:?} ran for 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// `audit verify` on `path`, as text and as JSON: (exit code, the text line, the JSON verdict).
fn verify(path: &Path) -> (Option<i32>, String, Value) {
    let p = path.to_str().unwrap();
    let text = sluice(&["audit", "verify", p]);
    let json = sluice(&["audit", "verify", "--json", p]);
    assert_eq!(text.status.code(), json.status.code());
    let said = if text.status.success() {
        String::from_utf8_lossy(&text.stdout).into_owned()
    } else {
        String::from_utf8_lossy(&text.stderr).into_owned()
    };
    assert_eq!(said.lines().count(), 1, "one line: {said}");
    let verdict = serde_json::from_slice(&json.stdout).unwrap();
    (text.status.code(), said, verdict)
}

/// Writes `lines` to a copy beside `path` and returns the copy.
fn copy_with(path: &Path, name: &str, lines: &[String]) -> PathBuf {
    let out = path.with_file_name(name);
    std::fs::write(&out, lines.join("\n") + "\n").unwrap();
    out
}

async fn stop(mut gw: TestGateway) {
    gw.shutdown();
    let handle = gw.handle.take().unwrap();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("the gateway did not stop")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn audit_verify_passes_the_gateways_log_and_names_an_edited_or_removed_line() {
    let root = scratch("verify");
    let audit = root.join("audit.jsonl");
    let gw = start(&root).await;
    let r = chat(
        &gw,
        &json!({"model": "m", "messages": [{"role": "user",
            "content": "pay 4111 1111 1111 1111 owner johnqpublicsecret@corp.example"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let decisions = wait_lines(&audit, 2).await.len();
    assert!(decisions >= 2, "no guardrail records");
    switch_twice(&gw).await;
    gw.state.reload("test").await.unwrap();
    stop(gw).await;

    // A restart appends to the same file and goes on with the chain.
    let gw = start(&root).await;
    switch_twice(&gw).await;
    let all = lines(&audit);
    // Two records per admin switch-round, and a config and a policy reload record.
    let n = all.len();
    assert!(n >= decisions + 5, "{all:#?}");
    let events: Vec<Value> = all
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].clone())
        .collect();
    assert!(events.contains(&json!("guardrail")), "{events:?}");
    assert!(events.contains(&json!("config_reload")), "{events:?}");
    for (i, l) in all.iter().enumerate() {
        assert_eq!(
            serde_json::from_str::<Value>(l).unwrap()["seq"],
            i as u64,
            "{l}"
        );
    }

    let (code, said, v) = verify(&audit);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!("ok: {n} records in 1 segment")),
        "{said}"
    );
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        (v["records"].as_u64(), v["segments"].as_u64()),
        (Some(n as u64), Some(1))
    );
    assert!(
        v["first_time"].is_string() && v["last_time"].is_string(),
        "{v}"
    );

    // One character changed in a middle line: that line is named.
    let at = n / 2;
    let mut edited = all.clone();
    let i = edited[at].find("\"event\":\"").unwrap() + "\"event\":\"".len();
    let upper = edited[at][i..=i].to_uppercase();
    edited[at].replace_range(i..=i, &upper);
    assert_ne!(edited[at], all[at]);
    let (code, said, v) = verify(&copy_with(&audit, "edited.jsonl", &edited));
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(&format!("line {} was altered", at + 1)),
        "{said}"
    );
    assert_eq!(
        (v["line"].as_u64(), v["kind"].as_str()),
        (Some(at as u64 + 1), Some("altered"))
    );

    // A line removed: the line after it is named.
    let mut removed = all.clone();
    removed.remove(at);
    let (code, said, v) = verify(&copy_with(&audit, "removed.jsonl", &removed));
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains(&format!("line {}", at + 1)), "{said}");
    assert!(said.contains("removed"), "{said}");
    assert_eq!(
        (v["line"].as_u64(), v["kind"].as_str()),
        (Some(at as u64 + 1), Some("seq_gap"))
    );
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn a_gateway_opening_a_cut_log_starts_a_segment_that_verifies() {
    let root = scratch("cut");
    let audit = root.join("audit.jsonl");
    let gw = start(&root).await;
    switch_twice(&gw).await;
    stop(gw).await;
    // A crash in the middle of the third line.
    let third = r#"{"event":"model_switched","enabled":false,"mod"#;
    std::fs::write(&audit, lines(&audit).join("\n") + "\n" + third).unwrap();
    let (code, said, v) = verify(&audit);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("line 3, the last, is cut"), "{said}");
    assert_eq!(v["kind"], "cut", "{v}");

    let gw = start(&root).await;
    switch_twice(&gw).await;
    let all = lines(&audit);
    assert_eq!(all.len(), 6, "{all:#?}");
    assert_eq!(all[2], third);
    let restart: Value = serde_json::from_str(&all[3]).unwrap();
    assert_eq!(restart["event"], "chain_restart", "{restart}");
    assert!(
        restart["reason"].as_str().unwrap().contains("cut"),
        "{restart}"
    );
    let (code, said, v) = verify(&audit);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("5 records in 2 segments (restarted at line 4)"),
        "{said}"
    );
    assert_eq!(v["restarts"][0]["line"], 4, "{v}");
    let _ = std::fs::remove_dir_all(root);
}
