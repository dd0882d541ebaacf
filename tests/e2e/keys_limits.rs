//! API keys and rate limits through a real gateway.

use crate::common::*;
use sluice::auth::hash_hex;
use sluice::mock_upstream::{MockConfig, MockUpstream};

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
    // Reads may carry any number of chunks (events that are ready together leave together).
    let mut seen = 0;
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

/// Models `m` and `other` with `m_limits` under `[models.m]`, and keys `alice` and `bob` (any
/// model) with theirs.
fn two_keys(m_limits: &str, alice: &str, bob: &str) -> String {
    let base = scripted_config("").replace(
        "[models.m]",
        "[models.other]\nbackend = \"b\"\n\n[models.m]",
    );
    format!(
        "{base}{m_limits}\n[keys.alice]\nsha256 = \"{}\"\n{alice}\n[keys.bob]\nsha256 = \"{}\"\n{bob}\n",
        hash_hex("sk-alice"),
        hash_hex("sk-bob")
    )
}

/// A chat request by `key` for `model` whose one message is `content`; the prompt estimate is
/// `ceil(len / 4) + 4` tokens.
async fn chat_with(gw: &TestGateway, key: &str, model: &str, content: &str) -> Reply {
    let auth = format!("Bearer {key}");
    let mut body = chat_body(false);
    body["model"] = model.into();
    body["messages"][0]["content"] = content.into();
    send(
        "POST",
        &gw.url("/v1/chat/completions"),
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
        ],
        body.to_string(),
    )
    .await
}

/// The statuses of `replies`, and the limit kind named by each refusal.
fn outcomes(replies: &[Reply]) -> Vec<String> {
    replies
        .iter()
        .map(|r| match r.status {
            200 => "200".to_string(),
            429 => {
                let m = r.json()["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let kind = m.split(['(', ')']).nth(1).unwrap_or("?").to_string();
                format!("429 {kind}")
            }
            s => format!("{s} {}", r.text()),
        })
        .collect()
}

async fn chats(gw: &TestGateway, key: &str, model: &str, content: &str, n: usize) -> Vec<String> {
    let mut replies = Vec::new();
    for _ in 0..n {
        replies.push(chat_with(gw, key, model, content).await);
    }
    outcomes(&replies)
}

// The request limits below refill one cell every 12 s or more; these tests take milliseconds, so
// no cell comes back while they run.

#[tokio::test]
async fn a_model_refusal_leaves_the_key_its_quota() {
    let gw = TestGateway::start(
        &two_keys("requests_per_minute = 2", "requests_per_minute = 5", ""),
        vec![ScriptedBackend::new("b", vec![])],
    )
    .await;
    let got = chats(&gw, "sk-alice", "m", "hi", 5).await;
    let refused = "429 model_requests";
    assert_eq!(got, ["200", "200", refused, refused, refused]);
    // The three the model refused took nothing from the key: three of its five are left.
    let got = chats(&gw, "sk-alice", "other", "hi", 4).await;
    assert_eq!(got, ["200", "200", "200", "429 key_requests"]);
}

#[tokio::test]
async fn a_token_refusal_gives_back_the_request_cell() {
    let gw = TestGateway::start(
        &two_keys("", "requests_per_minute = 2\ntokens_per_minute = 100", ""),
        vec![ScriptedBackend::new("b", vec![])],
    )
    .await;
    // 400 bytes: an estimate of 104 tokens, admitted against the full bucket; the backend's usage
    // (5 prompt, 3 completion) then corrects the account to 8 spent.
    let big = "x".repeat(400);
    assert_eq!(chats(&gw, "sk-alice", "m", &big, 1).await, ["200"]);
    gw.idle().await;
    assert_eq!(
        chats(&gw, "sk-alice", "m", &big, 3).await,
        ["429 key_tokens"; 3]
    );
    // The second request cell is still there for a prompt the bucket covers.
    let got = chats(&gw, "sk-alice", "m", "hi", 2).await;
    assert_eq!(got, ["200", "429 key_requests"]);
}

#[tokio::test]
async fn one_callers_refusals_leave_the_model_quota_to_others() {
    let gw = TestGateway::start(
        &two_keys("requests_per_minute = 3", "tokens_per_minute = 100", ""),
        vec![ScriptedBackend::new("b", vec![])],
    )
    .await;
    let big = "x".repeat(400);
    assert_eq!(chats(&gw, "sk-alice", "m", &big, 1).await, ["200"]);
    gw.idle().await;
    assert_eq!(
        chats(&gw, "sk-alice", "m", &big, 2).await,
        ["429 key_tokens"; 2]
    );
    let got = chats(&gw, "sk-bob", "m", "hi", 3).await;
    assert_eq!(got, ["200", "200", "429 model_requests"]);
}

/// The value of header `name`, as text.
fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", r.headers))
        .to_str()
        .unwrap()
}

/// The value of header `name`, as a number.
fn number(r: &Reply, name: &str) -> u64 {
    header(r, name).parse().unwrap()
}

#[tokio::test]
async fn every_kind_of_429_carries_the_headers_that_apply() {
    // Refused for requests: the token limit's headers come too.
    let gw = TestGateway::start(
        &two_keys("", "requests_per_minute = 1\ntokens_per_minute = 1000", ""),
        vec![ScriptedBackend::new("b", vec![])],
    )
    .await;
    assert_eq!(chats(&gw, "sk-alice", "m", "hi", 1).await, ["200"]);
    gw.idle().await;
    let r = chat_with(&gw, "sk-alice", "m", "hi").await;
    assert_eq!(outcomes(std::slice::from_ref(&r)), ["429 key_requests"]);
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "1");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "0");
    assert!(header(&r, "x-ratelimit-reset-requests").ends_with('s'));
    assert_eq!(header(&r, "x-ratelimit-limit-tokens"), "1000");
    // The first request spent 8 tokens (5 prompt, 3 completion by the backend's usage).
    let left = number(&r, "x-ratelimit-remaining-tokens");
    assert!((992..=1000).contains(&left), "{left}");
    assert!(header(&r, "x-ratelimit-reset-tokens").ends_with('s'));
    assert!((1..=60).contains(&number(&r, "retry-after")));
    assert!(number(&r, "retry-after-ms") > 0);

    // Refused for tokens: the request headers show the cell given back.
    let gw = TestGateway::start(
        &two_keys("", "requests_per_minute = 10\ntokens_per_minute = 100", ""),
        vec![ScriptedBackend::new("b", vec![])],
    )
    .await;
    let big = "x".repeat(400);
    assert_eq!(chats(&gw, "sk-alice", "m", &big, 1).await, ["200"]);
    gw.idle().await;
    let r = chat_with(&gw, "sk-alice", "m", &big).await;
    assert_eq!(outcomes(std::slice::from_ref(&r)), ["429 key_tokens"]);
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "10");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "9");
    assert_eq!(header(&r, "x-ratelimit-reset-requests"), "6.000s");
    assert_eq!(header(&r, "x-ratelimit-limit-tokens"), "100");
    // 92 left (and what refilled since): short of the 100 the prompt needs.
    let left = number(&r, "x-ratelimit-remaining-tokens");
    assert!((92..=99).contains(&left), "{left}");
    assert!(header(&r, "x-ratelimit-reset-tokens").ends_with('s'));
    assert!((1..=5).contains(&number(&r, "retry-after")));

    // Refused for concurrency: both kinds, as the request that holds the slot left them.
    let backend =
        ScriptedBackend::new("b", vec![Script::Open(vec![role(), text("x"), Step::Hang])]);
    let gw = TestGateway::start(
        &two_keys(
            "",
            "requests_per_minute = 10\ntokens_per_minute = 1000\nmax_concurrent = 1",
            "",
        ),
        vec![backend],
    )
    .await;
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
    let r = chat_with(&gw, "sk-alice", "m", "hi").await;
    assert_eq!(outcomes(std::slice::from_ref(&r)), ["429 key_concurrency"]);
    assert_eq!(header(&r, "x-ratelimit-limit-requests"), "10");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "9");
    assert_eq!(header(&r, "x-ratelimit-limit-tokens"), "1000");
    // The open request's prompt estimate ("Say hello": 7 tokens) is taken; this one's is not.
    let left = number(&r, "x-ratelimit-remaining-tokens");
    assert!((993..=1000).contains(&left), "{left}");
    assert!(header(&r, "x-ratelimit-reset-tokens").ends_with('s'));
    assert_eq!(header(&r, "retry-after"), "1");
    assert_eq!(header(&r, "retry-after-ms"), "1000");
    drop(open_body);
}

/// The `sluice` binary serving `config` with JSON logs at every level (`RUST_LOG=trace`); its
/// log lines arrive on the returned channel.
struct ServeProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    listen: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl ServeProcess {
    fn start(config: &str) -> ServeProcess {
        use std::io::BufRead;
        let dir = std::env::temp_dir().join(format!("sluice-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sluice.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--log-format", "json", "--config"])
            .arg(&path)
            .env("RUST_LOG", "trace")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = ServeProcess {
            child,
            lines,
            listen: String::new(),
            _dir: TempDir(dir),
        };
        let serving = p.wait_for(|l| l.contains("sluice is serving"));
        let v: serde_json::Value = serde_json::from_str(&serving).unwrap();
        p.listen = v["listen"]
            .as_str()
            .unwrap_or_else(|| panic!("no listen address in {serving}"))
            .to_string();
        p
    }

    /// Log lines up to and including the first that matches; every line read is also kept in
    /// `seen`. Fails after 30 s without one, or when the process ends.
    fn wait_for(&mut self, matches: impl Fn(&str) -> bool) -> String {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(std::time::Duration::from_secs(30)) {
                Ok(line) if matches(&line) => return line,
                Ok(line) => seen.push(line),
                Err(e) => panic!("no matching log line ({e}); read:\n{}", seen.join("\n")),
            }
        }
    }

    /// Every log line until `n` access lines (one per finished request) have been read.
    fn until_access_lines(&mut self, n: usize) -> String {
        let mut all = String::new();
        let mut access = 0;
        while access < n {
            let line = self.wait_for(|_| true);
            access += usize::from(line.contains("\"sluice::access\""));
            all.push_str(&line);
            all.push('\n');
        }
        all
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn keys_never_reach_logs_or_metrics() {
    // The real binary with its real log setup at trace level, in front of a real upstream: what
    // an operator's log pipeline would receive.
    let upstream = MockUpstream::start(MockConfig::default()).await.unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[backends.up]\ntype = \"openai\"\nbase_url = \"{}\"\n\n\
         [models.m]\nbackend = \"up\"\n\n[keys.alice]\nsha256 = \"{}\"\nrequests_per_minute = 1\n",
        upstream.base_url(),
        hash_hex("sk-alice")
    );
    let mut sluice = ServeProcess::start(&config);
    let url = format!("http://{}/v1/chat/completions", sluice.listen);
    let body = chat_body(true).to_string();
    let mut statuses = Vec::new();
    for key in ["sk-alice", "sk-alice", "sk-wrong-secret"] {
        let auth = format!("Bearer {key}");
        let headers = [
            ("content-type", "application/json"),
            ("authorization", auth.as_str()),
        ];
        statuses.push(send("POST", &url, &headers, body.clone()).await.status);
    }
    assert_eq!(statuses, [200, 429, 401]);
    let logs = sluice.until_access_lines(3);
    let metrics = send(
        "GET",
        &url.replace("/v1/chat/completions", "/metrics"),
        &[],
        "",
    )
    .await
    .text();
    assert!(
        metrics.contains("sluice_auth_refused_total{reason=\"unknown_key\"} 1"),
        "{metrics}"
    );
    for secret in ["sk-alice", "sk-wrong", &hash_hex("sk-alice"), "Bearer"] {
        assert!(
            !logs.contains(secret),
            "{secret:?} reached the logs:\n{logs}"
        );
        assert!(!metrics.contains(secret), "{secret:?} reached the metrics");
    }
}
