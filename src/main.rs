//! The `sluice` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use sluice::config::{BackendConfig, Config, LogFormat, DEFAULT_PATH};
use sluice::metrics::Metrics;
use sluice::server::Gateway;

/// A low-latency LLM inference gateway.
#[derive(Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default when no command is given).
    Serve(ServeArgs),
    /// Work with config files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Work with API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Work with local models.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Work with guardrail policies.
    #[command(subcommand)]
    Guardrails(GuardrailsCommand),
    /// Work with versioned prompts.
    #[command(subcommand)]
    Prompts(PromptsCommand),
    /// Work with audit logs.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Run golden-set suites through the gateway.
    #[command(subcommand)]
    Eval(sluice::eval::cli::EvalCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check an audit file's hash chain from its first line to its last: exit 0 with a summary
    /// (records, segments, first and last time, last hash), or 1 naming the first bad line and
    /// what is wrong with it.
    Verify {
        /// The audit file (`[audit] path`).
        path: PathBuf,
        /// Print the verdict as one JSON object on standard output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum GuardrailsCommand {
    /// Run every rule's test cases; fail with a diff naming each rule whose test fails.
    Test {
        /// The policy directory.
        #[arg(default_value = "guardrails")]
        dir: PathBuf,
    },
    /// Validate and lint a policy (duplicate ids, unbounded output patterns, rules that can
    /// never match, failing tests).
    Check {
        /// The policy directory.
        #[arg(default_value = "guardrails")]
        dir: PathBuf,
    },
    /// Show what a compiled policy weighs: each automaton's NFA and the search cache each
    /// scanning thread keeps for it, and each pattern's states
    Cost {
        /// The policy directory.
        #[arg(default_value = "guardrails")]
        dir: PathBuf,
    },
    /// Read JSONL `{"text": …}` on stdin; write one JSON line per finding
    /// (`line`, `rule`, `kind`, `entity`, `start`, `end`, `action`; byte offsets).
    Scan {
        /// The policy directory.
        #[arg(long, default_value = "guardrails")]
        policy: PathBuf,
        /// Scan as request input or as model output.
        #[arg(long, value_enum, default_value = "input")]
        direction: DirectionArg,
    },
}

#[derive(Subcommand)]
enum PromptsCommand {
    /// Run every prompt's test cases; fail naming each prompt and case that fails, with a diff of
    /// the expected and the rendered text.
    Test {
        /// The prompt directory.
        #[arg(default_value = "prompts")]
        dir: PathBuf,
    },
    /// Parse, lint (unused variables, untested prompts) and test a prompt directory.
    Check {
        /// The prompt directory.
        #[arg(default_value = "prompts")]
        dir: PathBuf,
    },
    /// Render one prompt's messages with the given variables and print them as JSON.
    Render {
        /// The prompt id.
        id: String,
        /// A variable, `NAME=VALUE`, read as the variable's declared type; repeatable.
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
        /// All variables as one JSON object (`--var` entries are added to it).
        #[arg(long = "vars", value_name = "JSON")]
        vars_json: Option<String>,
        /// The prompt directory.
        #[arg(long, default_value = "prompts")]
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DirectionArg {
    Input,
    Output,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Fetch (and verify) every local model file of a config that is missing from the cache.
    Pull {
        /// The config file.
        #[arg(long, short, default_value = DEFAULT_PATH, env = "SLUICE_CONFIG")]
        config: PathBuf,
    },
    /// Where a model serves, what it was validated on, who owns and approved it and what changed
    /// since the approval, from the config, its records and its audit file (offline).
    Show {
        model: String,
        /// The config file.
        #[arg(long, short, default_value = DEFAULT_PATH, env = "SLUICE_CONFIG")]
        config: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print the SHA-256 to put in `[keys.NAME] sha256` for a key read from standard input.
    Hash,
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// The config file.
    #[arg(long, short, default_value = DEFAULT_PATH, env = "SLUICE_CONFIG")]
    config: PathBuf,
    /// Log format; overrides `[logging] format`.
    #[arg(long, value_enum)]
    log_format: Option<LogFormatArg>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Pretty,
    Json,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a config file as `serve` checks it at start (the policy loads and its tests pass, the
    /// audit log opens, the backends build); exit non-zero with the reason when it would not serve.
    Check {
        /// The config file.
        path: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve(ServeArgs {
        config: std::env::var_os("SLUICE_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH)),
        log_format: None,
    }));
    match command {
        Command::Config(ConfigCommand::Check { path }) => check(&path),
        Command::Serve(args) => serve(args),
        Command::Models(ModelsCommand::Pull { config }) => pull(&config),
        Command::Models(ModelsCommand::Show {
            model,
            config,
            json,
        }) => sluice::validation::cli::show(&config, &model, json),
        Command::Guardrails(cmd) => guardrails(cmd),
        Command::Prompts(cmd) => prompts(cmd),
        Command::Audit(AuditCommand::Verify { path, json }) => verify_audit(&path, json),
        Command::Eval(cmd) => sluice::eval::cli::main(cmd),
        Command::Keys(KeysCommand::Hash) => {
            let mut key = String::new();
            if std::io::stdin().read_line(&mut key).is_err() || key.trim().is_empty() {
                eprintln!("error: write the key on standard input");
                return ExitCode::from(2);
            }
            println!("{}", sluice::auth::hash_hex(key.trim()));
            ExitCode::SUCCESS
        }
    }
}

/// `sluice config check`: what start-up checks, without binding a socket or loading a model.
fn check(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match sluice::config::check::prepare(&config) {
        Ok(prepared) => {
            for w in &prepared.warnings {
                eprintln!("warning: {w}");
            }
            let policy = prepared
                .policy
                .map(|p| format!(", policy version {}", p.version()))
                .unwrap_or_default();
            let prompts = prepared
                .prompts
                .map(|s| format!(", {} prompt(s)", s.prompts.len()))
                .unwrap_or_default();
            println!(
                "{}: ok ({} backend(s), {} model(s){policy}{prompts})",
                path.display(),
                config.backends.len(),
                config.models.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

/// `sluice audit verify`: 0 for an intact chain, 1 for a broken one, 2 for a file that cannot be
/// read.
fn verify_audit(path: &std::path::Path, json: bool) -> ExitCode {
    /// The `--json` verdict: where and whether first, then what `verify` found.
    #[derive(serde::Serialize)]
    struct Verdict<'a, T> {
        path: &'a str,
        ok: bool,
        #[serde(flatten)]
        found: T,
    }
    let shown = path.display().to_string();
    let verdict = std::fs::File::open(path)
        .and_then(|f| sluice::audit::verify::verify(std::io::BufReader::new(f)));
    let (code, line, found) = match verdict {
        Err(e) => (
            ExitCode::from(2),
            Err(format!("error: {shown}: {e}")),
            serde_json::to_string(&Verdict {
                path: &shown,
                ok: false,
                found: serde_json::json!({ "error": e.to_string() }),
            }),
        ),
        Ok(Ok(summary)) => (
            ExitCode::SUCCESS,
            Ok(format!("{shown}: ok: {summary}")),
            serde_json::to_string(&Verdict {
                path: &shown,
                ok: true,
                found: &summary,
            }),
        ),
        Ok(Err(broken)) => (
            ExitCode::FAILURE,
            Err(format!("error: {shown}: {}", broken.message)),
            serde_json::to_string(&Verdict {
                path: &shown,
                ok: false,
                found: &broken,
            }),
        ),
    };
    match (json, line) {
        (true, _) => println!("{}", found.unwrap_or_default()),
        (false, Ok(l)) => println!("{l}"),
        (false, Err(l)) => eprintln!("{l}"),
    }
    code
}

fn guardrails(cmd: GuardrailsCommand) -> ExitCode {
    use sluice::guardrails::{tools, Direction};
    match cmd {
        GuardrailsCommand::Test { dir } => {
            let policy = match load_policy(&dir) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let failures = tools::run_tests(&policy);
            let cases: usize = policy.rules.iter().map(|r| r.tests.len()).sum();
            for f in &failures {
                eprintln!("{f}");
            }
            if failures.is_empty() {
                println!(
                    "ok: {} rules, {cases} test cases, policy version {}",
                    policy.rules.len(),
                    policy.version()
                );
                ExitCode::SUCCESS
            } else {
                eprintln!("{} failing test case(s)", failures.len());
                ExitCode::FAILURE
            }
        }
        GuardrailsCommand::Check { dir } => {
            let report = tools::check(&dir);
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            for e in &report.errors {
                eprintln!("error: {e}");
            }
            if report.errors.is_empty() {
                println!(
                    "ok: {} ({} warning(s))",
                    dir.display(),
                    report.warnings.len()
                );
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        GuardrailsCommand::Cost { dir } => {
            let policy = match load_policy(&dir) {
                Ok(p) => p,
                Err(code) => return code,
            };
            // A closed pipe (`| head`) is the reader's choice, not a failure to report.
            let report = tools::cost(&policy).to_string();
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), report.as_bytes());
            ExitCode::SUCCESS
        }
        GuardrailsCommand::Scan { policy, direction } => {
            let policy = match load_policy(&policy) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let dir = match direction {
                DirectionArg::Input => Direction::Input,
                DirectionArg::Output => Direction::Output,
            };
            let stdin = std::io::stdin().lock();
            let stdout = std::io::BufWriter::new(std::io::stdout().lock());
            match tools::scan(&policy, dir, stdin, stdout) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn prompts(cmd: PromptsCommand) -> ExitCode {
    use sluice::prompts::{file, render, PromptSet};
    let load = |dir: &std::path::Path| {
        PromptSet::load(dir).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(2)
        })
    };
    match cmd {
        PromptsCommand::Test { dir } => {
            let set = match load(&dir) {
                Ok(s) => s,
                Err(code) => return code,
            };
            report_tests(&set)
        }
        PromptsCommand::Check { dir } => {
            let set = match load(&dir) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let warnings: Vec<String> = set.prompts.values().flat_map(|p| file::lint(p)).collect();
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            let code = report_tests(&set);
            if code == ExitCode::SUCCESS {
                println!("ok: {} ({} warning(s))", dir.display(), warnings.len());
            }
            code
        }
        PromptsCommand::Render {
            id,
            vars,
            vars_json,
            dir,
        } => {
            let set = match load(&dir) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let Some(prompt) = set.prompts.get(&id) else {
                eprintln!("error: there is no prompt `{id}` in {}", dir.display());
                return ExitCode::from(2);
            };
            let mut given = match vars_json.as_deref().map(serde_json::from_str) {
                None => serde_json::Map::new(),
                Some(Ok(serde_json::Value::Object(m))) => m,
                Some(_) => {
                    eprintln!("error: --vars must be a JSON object");
                    return ExitCode::from(2);
                }
            };
            for v in &vars {
                let Some((name, text)) = v.split_once('=') else {
                    eprintln!("error: --var `{v}` is not NAME=VALUE");
                    return ExitCode::from(2);
                };
                match sluice::prompts::schema::cli_value(prompt.variables.get(name), text) {
                    Ok(value) => {
                        given.insert(name.to_owned(), value);
                    }
                    Err(e) => {
                        eprintln!("error: --var {name}: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            match render::render(prompt, &given) {
                Ok(messages) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&messages).unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs a prompt set's tests for `sluice prompts test` and `check`: each failure with its diff on
/// standard error, exit 1 if any.
fn report_tests(set: &sluice::prompts::PromptSet) -> ExitCode {
    let failures = sluice::prompts::run_tests(set);
    for f in &failures {
        eprint!("{f}");
    }
    if failures.is_empty() {
        let cases: usize = set.prompts.values().map(|p| p.tests.len()).sum();
        println!("ok: {} prompts, {cases} test cases", set.prompts.len());
        ExitCode::SUCCESS
    } else {
        eprintln!("{} failing test case(s)", failures.len());
        ExitCode::FAILURE
    }
}

/// Loads a policy directory for a `guardrails` command; a policy that does not load is reported
/// and exits with status 2.
fn load_policy(dir: &std::path::Path) -> Result<Arc<sluice::guardrails::Policy>, ExitCode> {
    sluice::guardrails::Policy::load(dir)
        .map(Arc::new)
        .map_err(|e| {
            eprintln!("{e}");
            ExitCode::from(2)
        })
}

fn pull(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
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
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for (name, backend) in &config.backends {
        let BackendConfig::Candle(c) = backend else {
            continue;
        };
        match runtime.block_on(sluice::backends::candle::pull(c)) {
            Ok(path) => println!("{name}: {}", path.display()),
            Err(e) => {
                eprintln!("error: {name}: {e:#}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let format = match args.log_format {
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Pretty) => LogFormat::Pretty,
        None => config.logging.format,
    };
    sluice::telemetry::init(format, &config.logging.level);
    // The control runtime: listeners, reloads, signals. Requests are served on the workers
    // (`[server] workers`), each a runtime of its own.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let backends = sluice::backends::build(&config, &metrics).await?;
    let gateway = Gateway::bind(&config, backends, metrics).await?;
    if config.keys.is_empty() {
        tracing::warn!("no [keys] configured: the API is open to anyone who can reach it");
    }
    tracing::info!(
        listen = %gateway.local_addr(),
        admin = ?gateway.admin_addr(),
        models = ?config.models.keys().collect::<Vec<_>>(),
        config = %config.source.display(),
        "sluice is serving"
    );
    let state = gateway.state();
    if let Some(g) = &state.guardrails {
        tracing::info!(policy_version = %g.version(), "guardrail policy loaded");
    }
    // One reload for SIGHUP: the config and, with it, the policy, so the policy served always
    // comes from the directory the running config names.
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                let _ = state.reload("SIGHUP").await;
            }
        }
    });
    gateway.serve(sluice::shutdown::os_signal()).await
}
