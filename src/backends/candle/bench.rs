//! Prefill and decode speed of a local model, measured without the HTTP and queue layers.
//!
//! Used by `examples/candle_bench.rs` (and `loadtests/gpu-check.sh`) to produce the figures in
//! docs/BENCHMARKS.md. It loads the model exactly as the backend does, so requantization and
//! thread settings are measured as served.

use std::time::Instant;

use super::config::CandleConfig;
use super::generate::LanguageModel;
use super::model::LoadedModel;
use super::sampler::argmax;

/// Timings of one measurement.
#[derive(Debug, Clone, Copy)]
pub struct BenchResult {
    pub load_secs: f64,
    pub prompt_tokens: usize,
    pub prefill_secs: f64,
    pub generated_tokens: usize,
    pub decode_secs: f64,
}

impl BenchResult {
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_secs
    }

    pub fn decode_tokens_per_sec(&self) -> f64 {
        self.generated_tokens as f64 / self.decode_secs
    }
}

/// Loads the model, then runs `runs` rounds of a `prompt_tokens` prefill followed by
/// `gen_tokens` greedy decode steps (EOS ignored, so every round does the same work). Returns one
/// result per round; the first includes warm-up effects. Blocking.
pub fn run(
    config: &CandleConfig,
    prompt_tokens: usize,
    gen_tokens: usize,
    runs: usize,
) -> anyhow::Result<Vec<BenchResult>> {
    anyhow::ensure!(
        prompt_tokens > 0 && gen_tokens > 0,
        "token counts must be positive"
    );
    super::model::configure_threads(config.threads);
    let started = Instant::now();
    let model = LoadedModel::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let load_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        prompt_tokens + gen_tokens <= model.max_seq_len,
        "prompt + generated tokens exceed the context of {}",
        model.max_seq_len
    );
    let text = "The quick brown fox jumps over the lazy dog while 12 programmers write Rust code. ";
    let ids = model
        .tokenizer
        .encode(text.repeat(prompt_tokens / 8 + 1).as_str(), false)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .get_ids()
        .to_vec();
    let prompt = &ids[..prompt_tokens.min(ids.len())];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.threads)
        .build()?;
    pool.install(|| {
        (0..runs.max(1))
            .map(|_| {
                let mut s = model.session();
                let t = Instant::now();
                let mut logits = s.forward(prompt, 0)?;
                let prefill_secs = t.elapsed().as_secs_f64();
                let t = Instant::now();
                for i in 0..gen_tokens {
                    let tok = argmax(&logits);
                    logits = s.forward(&[tok], prompt.len() + i)?;
                }
                Ok(BenchResult {
                    load_secs,
                    prompt_tokens: prompt.len(),
                    prefill_secs,
                    generated_tokens: gen_tokens,
                    decode_secs: t.elapsed().as_secs_f64(),
                })
            })
            .collect()
    })
}
