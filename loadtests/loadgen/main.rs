//! `loadgen`: the load generator of the scenarios in `loadtests/`.
//!
//! A gateway is judged by what it adds to a request, so the generator must add as little as it can
//! and measure the same way whatever it talks to: the mock upstream directly, nginx in front of it,
//! or Sluice. Each connection is one hyper HTTP/1.1 client connection kept alive for the whole run,
//! driven by its own task, so the generator measures what a pool of keep-alive clients sees and
//! never waits on a shared pool. Latencies go into HDR histograms (microseconds, three significant
//! digits) per connection and are merged at the end, so recording takes no lock.
//!
//! Every run is bounded: by a duration, a request count, or both, and each request by a timeout.
//! Results are one JSON line per run (appended to `--out`), and `loadgen report` turns a file of
//! them into the tables of docs/BENCHMARKS.md.
//!
//! ```text
//! loadgen run --url http://127.0.0.1:8080/v1/chat/completions --connections 32 --duration 5s \
//!     --stream --label sluice --out results.jsonl
//! loadgen report --file results.jsonl --baseline direct --reference nginx
//! ```

mod report;
mod run;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Load generator and report tables for the Sluice load tests.
#[derive(Parser)]
#[command(name = "loadgen", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sends chat requests over N keep-alive connections and records latencies.
    Run(Box<run::RunArgs>),
    /// Prints the tables for a file of results.
    Report(ReportArgs),
}

/// `loadgen report`.
#[derive(clap::Args)]
struct ReportArgs {
    /// A file of result lines written by `loadgen run --out`.
    #[arg(long)]
    file: PathBuf,
    /// The label whose latency is the floor (the upstream measured directly).
    #[arg(long, default_value = "direct")]
    baseline: String,
    /// The label every other is compared with (the plain reverse proxy).
    #[arg(long, default_value = "nginx")]
    reference: String,
    /// Which table: `overhead`, `stream` or `limits`.
    #[arg(long, default_value = "overhead")]
    kind: report::Kind,
    /// For `limits`: the configured requests per minute of the key.
    #[arg(long)]
    configured_per_minute: Option<f64>,
}

/// Parses `250ms`, `5s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::main(*args),
        Command::Report(args) => report::print(
            &args.file,
            &args.baseline,
            &args.reference,
            args.kind,
            args.configured_per_minute,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
