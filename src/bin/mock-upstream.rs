//! A stand-alone mock OpenAI-compatible upstream, for trying the gateway by hand and for load
//! tests: `mock-upstream --listen 127.0.0.1:9101 --ttft-ms 50 --gap-ms 10 --tokens 128`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use sluice::mock_upstream::{Fault, MockConfig, MockUpstream};

/// Serves `POST /v1/chat/completions` and `GET /v1/models` with a fixed answer.
#[derive(Debug, Parser)]
#[command(name = "mock-upstream", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9101")]
    listen: SocketAddr,
    /// Time from the response headers to the first token, in milliseconds.
    #[arg(long, default_value_t = 0)]
    ttft_ms: u64,
    /// Time between two tokens, in milliseconds.
    #[arg(long, default_value_t = 0)]
    gap_ms: u64,
    /// Answer with exactly this many tokens (cycling through the text).
    #[arg(long)]
    tokens: Option<usize>,
    /// The answer text.
    #[arg(long)]
    text: Option<String>,
    /// A fault for every request: `status:<code>`, `slow:<ms>`, `stall:<n>`, `reset:<n>`,
    /// `malformed:<n>`, `no-done`, `json`.
    #[arg(long)]
    fault: Option<Fault>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = MockConfig {
        tokens: args.tokens,
        ttft: Duration::from_millis(args.ttft_ms),
        gap: Duration::from_millis(args.gap_ms),
        fault: args.fault,
        ..MockConfig::default()
    };
    if let Some(text) = args.text {
        config.text = text;
    }
    let mock = MockUpstream::bind(args.listen, config).await?;
    println!("mock upstream listening on {}", mock.base_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
