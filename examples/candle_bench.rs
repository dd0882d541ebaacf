//! Measures a local model's prefill and decode speed.
//!
//! ```text
//! SLUICE_MODEL_DIR=/work/models cargo run --release --example candle_bench -- \
//!     --model SmolLM2-135M-Instruct.Q4_1.gguf --threads 1 --requantize q8_0 --device cpu
//! ```
//!
//! Prints one line per round and the median of the rounds after the first.

use sluice::backends::candle::{bench, CandleConfig, Requantize};

fn main() -> anyhow::Result<()> {
    let mut config = CandleConfig::new("SmolLM2-135M-Instruct.Q4_1.gguf");
    let (mut prompt, mut gen, mut runs) = (128usize, 128usize, 4usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--model" => config.model = value()?,
            "--threads" => config.threads = value()?.parse()?,
            "--device" => config.device = value()?,
            "--prompt-tokens" => prompt = value()?.parse()?,
            "--gen-tokens" => gen = value()?.parse()?,
            "--runs" => runs = value()?.parse()?,
            "--requantize" => {
                config.requantize = match value()?.as_str() {
                    "q8_0" => Requantize::Q8_0,
                    "q4_0" => Requantize::Q4_0,
                    "none" => Requantize::None,
                    other => anyhow::bail!("unknown requantize `{other}`"),
                }
            }
            other => anyhow::bail!("unknown flag `{other}`"),
        }
    }
    let results = bench::run(&config, prompt, gen, runs)?;
    println!(
        "model={} device={} threads={} requantize={:?} load={:.2}s",
        config.model, config.device, config.threads, config.requantize, results[0].load_secs
    );
    for (i, r) in results.iter().enumerate() {
        println!(
            "round {i}: prefill {} tok in {:.3}s = {:.1} tok/s; decode {} tok in {:.3}s = {:.1} tok/s",
            r.prompt_tokens,
            r.prefill_secs,
            r.prefill_tokens_per_sec(),
            r.generated_tokens,
            r.decode_secs,
            r.decode_tokens_per_sec()
        );
    }
    let rest = if results.len() > 1 {
        &results[1..]
    } else {
        &results[..]
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "median: prefill {:.1} tok/s, decode {:.1} tok/s",
        median(rest.iter().map(|r| r.prefill_tokens_per_sec()).collect()),
        median(rest.iter().map(|r| r.decode_tokens_per_sec()).collect())
    );
    Ok(())
}
