//! What serving needs beyond a valid file, checked in one place.
//!
//! A file can parse and validate and still not serve: its `[guardrails] dir` is missing or one of
//! its rules fails its tests, its audit log cannot be opened, a backend cannot be built from its
//! settings. Start-up refuses such a config, so `sluice config check` and a reload must refuse it
//! too, or they pass a file that the next restart will not start from. [`prepare`] is the one
//! function all three call, and it hands back what it opened and compiled, so a reload puts to use
//! the very audit file and policy that were checked.

use std::sync::Arc;

use super::{BackendConfig, Config};
use crate::audit::AuditLog;
use crate::backends::openai::OpenAiBackend;
use crate::guardrails::reload::{load_checked, ReloadError};
use crate::guardrails::Policy;
use crate::prompts::PromptSet;
use crate::validation::gate::{self, Decision};

/// A config that will serve, with what serving it needs.
pub struct Prepared {
    /// The audit trail, opened (created, with its directories) as serving opens it.
    pub audit: AuditLog,
    /// The policy in `[guardrails] dir`, compiled, every rule's tests passed.
    pub policy: Option<Arc<Policy>>,
    /// The prompts in `[prompts] dir`, every test case passed.
    pub prompts: Option<PromptSet>,
    /// What will not stop the gateway but will not serve as written: a local model file that is
    /// not there, so its backend answers 503.
    pub warnings: Vec<String>,
    /// The promotion gate's admissions (on evidence or override) of every weighted target of a
    /// gated model, for the audit log.
    pub promotions: Vec<Decision>,
}

/// Why a config will not serve. The message names the key.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("`audit.path`: {path}: {source}")]
    Audit {
        path: String,
        source: std::io::Error,
    },
    #[error("`backends.{name}`: {message}")]
    Backend { name: String, message: String },
    /// The policy's own message names the file (the directory, when it cannot be read).
    #[error("`guardrails.dir`: {source}")]
    Policy { dir: String, source: ReloadError },
    /// The prompts' own message names the file, the prompt and the case.
    #[error("`prompts.dir`: {0}")]
    Prompts(crate::prompts::reload::ReloadError),
    /// A weighted target of a gated model has no evidence (docs/VALIDATION.md).
    #[error("{message}")]
    Promotion {
        message: String,
        refused: Vec<Decision>,
    },
}

/// Checks everything start-up checks before it binds a socket, opening and compiling what it
/// checks. Blocking (file reads, regex compilation).
pub fn prepare(config: &Config) -> Result<Prepared, CheckError> {
    let audit =
        AuditLog::open(config.audit_path.as_deref()).map_err(|source| CheckError::Audit {
            path: config
                .audit_path
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            source,
        })?;
    let mut warnings = Vec::new();
    for (name, backend) in &config.backends {
        match backend {
            // The same constructor start-up builds the backend with; it opens no connection.
            BackendConfig::OpenAi(o) => {
                OpenAiBackend::new(name, o.clone()).map_err(|e| CheckError::Backend {
                    name: name.clone(),
                    message: format!("{e:#}"),
                })?;
            }
            // A local model that does not load leaves its backend answering 503, not the gateway
            // down, so a missing file is worth a warning, not a refusal.
            BackendConfig::Candle(c) => {
                let model = c.model_path();
                let fetched_at_start = c.source.is_some() && c.auto_pull;
                if !fetched_at_start && !model.is_file() {
                    warnings.push(format!(
                        "`backends.{name}.model`: {} does not exist; the backend answers 503 until it does",
                        model.display()
                    ));
                }
                if let Some(t) = c.tokenizer_path().filter(|t| !t.is_file()) {
                    warnings.push(format!(
                        "`backends.{name}.tokenizer`: {} does not exist; the backend answers 503 until it does",
                        t.display()
                    ));
                }
            }
        }
    }
    let policy = match &config.guardrails {
        None => None,
        Some(g) => Some(load_checked(&g.dir).map_err(|source| CheckError::Policy {
            dir: g.dir.display().to_string(),
            source,
        })?),
    };
    let prompts = match &config.prompts {
        None => None,
        Some(p) => Some(crate::prompts::reload::load_checked(&p.dir).map_err(CheckError::Prompts)?),
    };
    for p in prompts.iter().flat_map(|s| s.prompts.values()) {
        if !config.models.contains_key(&p.model) {
            warnings.push(format!(
                "`prompts.dir`: prompt `{}` ({}) is written for the model `{}`, which this config does not serve; requests for it answer 404",
                p.id,
                p.file.display(),
                p.model
            ));
        }
    }
    let promotions = gate::check(config);
    if let Some(message) = gate::refusal_message(&promotions) {
        return Err(CheckError::Promotion {
            message,
            refused: promotions
                .into_iter()
                .filter(Decision::is_refused)
                .collect(),
        });
    }
    Ok(Prepared {
        audit,
        policy,
        prompts,
        warnings,
        promotions,
    })
}

// === impl Prepared ===

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("audit", &self.audit)
            .field("policy", &self.policy.as_ref().map(|p| p.version()))
            .field("prompts", &self.prompts.as_ref().map(PromptSet::versions))
            .field("warnings", &self.warnings)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        let text = format!(
            "[backends.b]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n[models.m]\nbackend = \"b\"\n{extra}"
        );
        Config::from_toml(
            &text,
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("c.toml")
                .as_path(),
            &|_| None,
        )
        .unwrap()
    }

    #[test]
    fn the_shipped_policy_prepares_and_a_missing_dir_is_named() {
        let p = prepare(&config("[guardrails]\ndir = \"guardrails\"\n")).unwrap();
        assert!(p.policy.is_some());
        let e = prepare(&config("[guardrails]\ndir = \"no-such-policy\"\n")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("`guardrails.dir`: "), "{msg}");
        assert!(msg.contains("no-such-policy"), "{msg}");
    }

    #[test]
    fn the_shipped_prompts_prepare_and_a_missing_dir_is_named() {
        let p = prepare(&config("[prompts]\ndir = \"prompts\"\n")).unwrap();
        assert!(p
            .prompts
            .is_some_and(|s| s.prompts.contains_key("summarise")));
        let e = prepare(&config("[prompts]\ndir = \"no-such-prompts\"\n")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("`prompts.dir`: ") && msg.contains("no-such-prompts"),
            "{msg}"
        );
    }

    #[test]
    fn a_header_breaking_api_key_is_refused_like_start_up_refuses_it() {
        let mut c = config("");
        let Some(BackendConfig::OpenAi(o)) = c.backends.get_mut("b") else {
            panic!("openai expected")
        };
        o.api_key = Some("sk-a\nb".into());
        let msg = prepare(&c).unwrap_err().to_string();
        assert!(msg.starts_with("`backends.b`: "), "{msg}");
        assert!(!msg.contains("sk-a"), "{msg}");
    }
}
