//! `sluice eval gate` and `sluice models show`: the gate and the four answers from the command
//! line, offline (a config, its records directory and its audit file; no gateway is asked).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::evidence::Stored;
use super::gate::{decide, Verdict};
use crate::config::Config;

/// `sluice eval gate`'s arguments.
#[derive(clap::Args)]
pub struct GateArgs {
    /// The config to be released.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Only this model.
    #[arg(long)]
    pub model: Option<String>,
    /// Only this target (of `--model`, or of every model that has it), whatever its weight:
    /// may it be promoted?
    #[arg(long)]
    pub target: Option<String>,
}

/// Exit 0 when every target asked about has evidence, 1 naming what is missing, 2 when the config
/// cannot be read or names nothing to check. An override is not evidence: it is reported, and
/// fails the gate, since a pipeline asks whether the release was validated.
pub fn gate(args: &GateArgs) -> ExitCode {
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(m) = &args.model {
        if !config.models.contains_key(m) {
            eprintln!("error: {}: no model `{m}`", args.config.display());
            return ExitCode::from(2);
        }
    }
    let records = Stored::read_dir(&config.validation_records);
    let mut asked = 0;
    let mut failed = false;
    for model in config.models.values() {
        if args.model.as_ref().is_some_and(|m| *m != model.name) {
            continue;
        }
        for t in &model.targets {
            let named = args.target.as_ref().map(|n| *n == t.name);
            if named == Some(false) || (named.is_none() && t.weight == 0) {
                continue;
            }
            asked += 1;
            // A named target is asked about at the weight it would get: at least 1.
            let weight = t.weight.max(u32::from(named.is_some()));
            let Some(d) = decide(&config, model, t, weight, &records, None) else {
                if named.is_some() {
                    println!(
                        "FAIL model `{}` target `{}`: the model declares no `validation`, so there is nothing to promote it on",
                        model.name, t.name
                    );
                    failed = true;
                } else {
                    println!("skip model `{}` target `{}`: not gated", model.name, t.name);
                }
                continue;
            };
            match &d.verdict {
                Verdict::Admitted { .. } => println!("ok   {}", d.message()),
                _ => {
                    failed = true;
                    println!("FAIL {}", d.message());
                    if let Some(reason) = &t.validation_override {
                        println!(
                            "     (the config overrides it: {reason}; an override is not evidence)"
                        );
                    }
                }
            }
        }
    }
    if asked == 0 {
        eprintln!("error: no target matches");
        return ExitCode::from(2);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `sluice models show MODEL`: exit 0 with the four answers, 2 when the config or model is not
/// there.
pub fn show(config: &Path, model: &str, json: bool) -> ExitCode {
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(m) = config.models.get(model) else {
        eprintln!(
            "error: no model `{model}` (declared: {})",
            config.models.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        return ExitCode::from(2);
    };
    let v = super::show::view(&config, m, super::show::configured_snapshot(m));
    if json {
        println!("{v}");
    } else {
        print!("{}", super::show::render(&v));
    }
    ExitCode::SUCCESS
}
