//! `sluice eval run SUITE`: a suite against a gateway, from the command line.
//!
//! The cases go to a running gateway (`--url`), or to one this command starts from a config file
//! on `127.0.0.1:0` and stops when the run ends (`--config`, the default), so a suite can gate a
//! config or model change before it is deployed, through the same path production requests
//! take. The API key is read from an environment variable (`--key-env`), never from the command
//! line, where other users of the machine could read it. The record's path is printed on
//! standard output and a summary on standard error; the exit status is 0 when the suite's
//! threshold is met, 1 when it is not, and 2 when the suite or the config cannot be used or the
//! in-process gateway does not start (an unreachable `--url` fails every case instead).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, DEFAULT_PATH};
use crate::metrics::Metrics;
use crate::server::Gateway;

use super::record::Record;
use super::runner::{self, RunOptions};
use super::{GatewayClient, Suite};

/// `sluice eval …`.
#[derive(clap::Subcommand)]
pub enum EvalCommand {
    /// Run a suite's golden set through a gateway, score it and write a record; exit 1 when the
    /// suite's threshold is not met.
    Run(RunArgs),
    /// Compare a candidate record with a baseline, case by case, with significance tests; exit 1
    /// when the candidate is significantly worse.
    Compare(super::compare::CompareArgs),
    /// Render a record as a Markdown file and a self-contained HTML page.
    Report(super::report::ReportArgs),
    /// Check that every weighted target (or the one named) has passing eval evidence; exit 1
    /// naming what is missing. For release pipelines (docs/VALIDATION.md).
    Gate(crate::validation::cli::GateArgs),
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The suite file (`evals/*.toml`).
    pub suite: PathBuf,
    /// A running gateway (`http://host:port`); without it one is started in this process.
    #[arg(long, conflicts_with = "config")]
    pub url: Option<String>,
    /// The config the in-process gateway is started from [default: $SLUICE_CONFIG, else
    /// config/sluice.toml].
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The environment variable that holds the API key to send.
    #[arg(long, default_value = "SLUICE_API_KEY")]
    pub key_env: String,
    /// Cases in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Further attempts of a case after a transport failure (connect refused or reset, 502,
    /// 503, 504).
    #[arg(long, default_value_t = 2)]
    pub retries: u32,
    /// How long one request may take, to its last byte.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// The directory records are written to [default: in-process, the config's
    /// `[validation] records`, where the promotion gate looks; with `--url`, `records`].
    #[arg(long)]
    pub records: Option<PathBuf>,
    /// Who runs the suite, written into the record [default: $SLUICE_RUN_BY, else the login
    /// name].
    #[arg(long)]
    pub run_by: Option<String>,
    /// Draw no progress bar (there is none when standard error is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Pin every case to this target of the model (`x-sluice-target`), whatever its weight, to
    /// gather a candidate's evidence; the key must have `pin_target = true`.
    #[arg(long)]
    pub target: Option<String>,
}

/// A gateway started for one run.
struct InProcess {
    url: String,
    config: Config,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Runs an `eval` command.
pub fn main(command: EvalCommand) -> ExitCode {
    match command {
        EvalCommand::Run(args) => run(args),
        EvalCommand::Compare(args) => super::compare::main(args),
        EvalCommand::Report(args) => super::report::main(args),
        EvalCommand::Gate(args) => crate::validation::cli::gate(&args),
    }
}

fn run(args: RunArgs) -> ExitCode {
    let suite = match Suite::load(&args.suite) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let (record, config_records) = match runtime.block_on(run_suite(&suite, &args)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let records = args
        .records
        .clone()
        .or(config_records)
        .unwrap_or_else(|| PathBuf::from("records"));
    let path = match record.write(&records) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "error: cannot write the record to {}: {e}",
                records.display()
            );
            return ExitCode::from(2);
        }
    };
    eprint!("{}", summary(&record));
    println!("{}", path.display());
    if record.summary.threshold_met {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The record, and the in-process config's records directory.
async fn run_suite(suite: &Suite, args: &RunArgs) -> anyhow::Result<(Record, Option<PathBuf>)> {
    let key = std::env::var(&args.key_env).ok();
    let (url, target, gateway, weights_sha256) = match &args.url {
        Some(url) => (url.clone(), None, None, None),
        None => {
            // Read here rather than by clap, where a value from the environment would
            // conflict with `--url`.
            let path = args
                .config
                .clone()
                .or_else(|| std::env::var_os("SLUICE_CONFIG").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
            let g = start(&path).await?;
            let weights = args.target.as_deref().and_then(|t| {
                let model = g.config.models.get(&suite.model)?;
                let target = model.targets.iter().find(|x| x.name == t)?;
                crate::validation::weights_sha256(&g.config, target)
            });
            (
                g.url.clone(),
                Some(format!("in-process:{}", path.display())),
                Some(g),
                weights,
            )
        }
    };
    let mut client =
        GatewayClient::new(&url, key.as_deref(), args.timeout).map_err(anyhow::Error::msg)?;
    if let Some(t) = &args.target {
        client = client.pin_target(t).map_err(anyhow::Error::msg)?;
    }
    let opts = RunOptions {
        concurrency: usize::from(args.concurrency),
        retries: args.retries,
        backoff: Duration::from_millis(200),
        progress: !args.no_progress,
        target: target.unwrap_or_else(|| client.target()),
        weights_sha256,
        run_by: args
            .run_by
            .clone()
            .or_else(|| std::env::var("SLUICE_RUN_BY").ok())
            .or_else(|| std::env::var("USER").ok())
            .or_else(|| std::env::var("LOGNAME").ok())
            .filter(|s| !s.trim().is_empty()),
    };
    let record = runner::run(suite, &client, &opts).await;
    let config_records = gateway
        .as_ref()
        .map(|g| g.config.validation_records.clone());
    if let Some(g) = gateway {
        // Every case has finished, so nothing is in flight and the drain is immediate.
        let _ = g.stop.send(());
        if let Ok(Err(e)) = g.serving.await {
            eprintln!("warning: the in-process gateway stopped with an error: {e:#}");
        }
    }
    Ok((record, config_records))
}

/// Starts the gateway of `path` on `127.0.0.1:0` (and its admin listener, when it has one).
async fn start(path: &Path) -> anyhow::Result<InProcess> {
    let mut config = Config::load(path)?;
    // This gateway serves the suite's requests only, so the promotion gate, which guards
    // traffic, does not apply: a candidate has to be measurable before it has evidence.
    for m in config.models.values_mut() {
        m.validation = None;
    }
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.server.listen = loopback;
    if config.admin_listen.is_some() {
        config.admin_listen = Some(loopback);
    }
    let metrics = Arc::new(Metrics::new());
    let backends = crate::backends::build(&config, &metrics).await?;
    let gateway = Gateway::bind(&config, backends, metrics).await?;
    let url = format!("http://{}", gateway.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(gateway.serve(async move {
        let _ = stopped.await;
    }));
    Ok(InProcess {
        url,
        config,
        stop,
        serving,
    })
}

/// The lines printed after a run: the figures, then each failed case's first failing score.
pub fn summary(record: &Record) -> String {
    let s = &record.summary;
    let n = s.passed + s.failed;
    let pct = |x: f64| x * 100.0;
    let mut out = format!(
        "{}: {}/{n} passed ({:.1} %, 95 % CI {:.1}-{:.1} %), threshold {:.1} %: {}\n",
        record.suite.name,
        s.passed,
        pct(s.pass_rate),
        pct(s.pass_rate_ci95.low),
        pct(s.pass_rate_ci95.high),
        pct(s.threshold),
        if s.threshold_met { "met" } else { "NOT met" },
    );
    const SHOWN: usize = 20;
    let failed: Vec<_> = record.cases.iter().filter(|c| !c.passed).collect();
    for c in failed.iter().take(SHOWN) {
        let why = c
            .scores
            .iter()
            .find(|s| !s.passed)
            .map(|s| format!("{}: {}", s.scorer, s.detail.as_deref().unwrap_or("failed")))
            .unwrap_or_else(|| "failed".into());
        out.push_str(&format!("  FAIL {}: {why}\n", c.id));
    }
    if failed.len() > SHOWN {
        out.push_str(&format!("  … and {} more\n", failed.len() - SHOWN));
    }
    out
}
