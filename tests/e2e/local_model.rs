//! The embedded default through the whole stack: `config/sluice.toml` served on port 0 with the
//! real SmolLM2 model (fetched once into `SLUICE_MODEL_DIR` when missing).

use std::path::Path;

use crate::common::*;
use serde_json::json;
use sluice::config::Config;

async fn default_gateway() -> TestGateway {
    let mut config = Config::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/sluice.toml"
    )))
    .unwrap();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    TestGateway::start_config(config, vec![]).await
}

fn greedy(stream: bool) -> serde_json::Value {
    json!({
        "model": "smollm2",
        "stream": stream,
        "temperature": 0,
        "max_tokens": 24,
        "messages": [{"role": "user", "content": "Name three colours."}],
    })
}

#[tokio::test]
async fn streaming_and_collected_answers_are_the_same_text() {
    let gw = default_gateway().await;
    let r = send("GET", &gw.url("/readyz"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());

    let streamed = chat(&gw, &greedy(true)).await;
    assert_eq!(streamed.status, 200);
    let events = streamed.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let text: String = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            let v: serde_json::Value = serde_json::from_str(e).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(text.split_whitespace().count() >= 3, "{text:?}");

    let collected = chat(&gw, &greedy(false)).await;
    let v = collected.json();
    assert_eq!(v["choices"][0]["message"]["content"], text);
    let usage = &v["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 10);
    assert!(usage["completion_tokens"].as_u64().unwrap() <= 24);
    gw.idle().await;
}

#[tokio::test]
async fn operating_limits_of_the_local_model() {
    let gw = default_gateway().await;
    let mut body = greedy(false);
    body["max_tokens"] = json!(5000);
    let r = chat(&gw, &body).await;
    assert_eq!(
        (r.status, r.json()["error"]["param"].as_str()),
        (400, Some("max_tokens"))
    );
    let v = send("GET", &gw.url("/v1/models"), &[], "").await.json();
    assert_eq!(v["data"][0]["id"], "smollm2");
    assert_eq!(v["data"][0]["version"], "smollm2-135m-instruct-q4_1");
}

#[tokio::test]
async fn token_limits_count_the_prompt_with_the_models_tokenizer() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/sluice.toml"));
    let text = std::fs::read_to_string(path).unwrap().replace(
        "default_max_tokens = 256",
        "default_max_tokens = 256\ntokens_per_minute = 100000",
    );
    let mut config = Config::from_toml(&text, path, &|k| std::env::var(k).ok()).unwrap();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    let gw = TestGateway::start_config(config, vec![]).await;
    // Dense scripts make the bytes/4 estimate far from the real count.
    let mut body = greedy(false);
    body["max_tokens"] = json!(4);
    body["messages"][0]["content"] = json!("東京タワーは何色ですか？ 🗼🗼🗼 Ünïcödé ñandú");
    let r = chat(&gw, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let prompt = r.json()["usage"]["prompt_tokens"].as_u64().unwrap();
    let remaining: u64 = r.headers["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        remaining,
        100_000 - prompt,
        "admission charged the tokenizer's count"
    );
    assert_ne!(
        prompt,
        sluice::limits::estimate_prompt_tokens(&serde_json::from_value(body).unwrap())
    );
}
