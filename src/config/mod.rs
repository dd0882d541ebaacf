//! Typed configuration.
//!
//! A file is read into [`raw::RawConfig`] (unknown keys are errors that name the key and the file),
//! `${VAR}` references are expanded from the environment, and [`validate`] turns the result into a
//! [`Config`] whose every value is known to be usable: addresses parse, durations have units, every
//! model names a backend that exists. Durations are written with units (`"30s"`, `"250ms"`), sizes
//! in bytes with the unit in the key's name, so no value is ever read in the wrong unit.

pub mod check;
pub mod env;
pub mod raw;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backends::candle::CandleConfig;
use crate::routing::breaker::BreakerConfig;
use crate::routing::canary::CanaryConfig;
use crate::routing::retry::RetryConfig;

use self::raw::{RawBackend, RawConfig, RawLimits};

/// A config that failed to load. The message names the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The file the error is in.
    pub file: String,
    /// What is wrong, naming the key.
    pub message: String,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    /// Where `/metrics` is served; `None` serves it on the main listener.
    pub admin_listen: Option<SocketAddr>,
    pub logging: LoggingConfig,
    pub backends: BTreeMap<String, BackendConfig>,
    pub models: BTreeMap<String, ModelConfig>,
    /// Limits across all callers and models.
    pub rate_limits: RateLimitConfig,
    /// Client API keys; none means the gateway is open.
    pub keys: Vec<KeyConfig>,
    /// Keys for the admin API.
    pub admin_keys: Vec<AdminKeyConfig>,
    /// Where audit records (admin changes, rollbacks, guardrail decisions) are appended as JSONL.
    pub audit_path: Option<PathBuf>,
    /// The guardrail policy, when one is configured.
    pub guardrails: Option<GuardrailsConfig>,
    /// The prompt directory, when one is configured.
    pub prompts: Option<PromptsConfig>,
    /// Where the promotion gate finds eval records (`[validation] records`, default `records`
    /// beside the config file).
    pub validation_records: PathBuf,
    /// The file this came from, for messages.
    pub source: PathBuf,
}

/// `[guardrails]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardrailsConfig {
    /// The policy directory (`*.toml` rule files), relative paths resolved against the config file.
    pub dir: PathBuf,
    /// How often the directory is polled for changes; `None` reloads on SIGHUP only.
    pub watch_interval: Option<Duration>,
}

/// `[prompts]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptsConfig {
    /// The prompt directory (`*.toml` prompt files), relative paths resolved against the config file.
    pub dir: PathBuf,
    /// How often the directory is polled for changes; `None` reloads with the config only.
    pub watch_interval: Option<Duration>,
}

/// Rate limits of one scope (global, a model, a key).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub requests_per_minute: Option<NonZeroU32>,
    pub tokens_per_minute: Option<u64>,
    /// Concurrent requests (keys only).
    pub max_concurrent: Option<usize>,
}

/// A client API key. Only its hash is known to the gateway.
#[derive(Clone)]
pub struct KeyConfig {
    pub name: String,
    pub sha256: [u8; 32],
    /// Models this key may use; `None` allows all.
    pub models: Option<BTreeSet<String>>,
    pub rate_limits: RateLimitConfig,
    /// Whether `x-sluice-target` is honoured for this key.
    pub pin_target: bool,
}

impl std::fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyConfig")
            .field("name", &self.name)
            .field("models", &self.models)
            .field("rate_limits", &self.rate_limits)
            .field("pin_target", &self.pin_target)
            .finish_non_exhaustive()
    }
}

/// An admin API key.
#[derive(Clone)]
pub struct AdminKeyConfig {
    pub name: String,
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for AdminKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminKeyConfig")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// `[server]`, checked.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Connections beyond this wait in the kernel's accept queue.
    pub max_connections: usize,
    /// A client must send its request headers within this time.
    pub header_read_timeout: Duration,
    /// The longest a request body may go without sending more, and the time it has before
    /// `body_min_bytes_per_second` applies.
    pub body_read_timeout: Duration,
    /// The average pace a request body must keep after `body_read_timeout`; 0: none.
    pub body_min_bytes_per_second: u64,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long in-flight streams may run on after SIGINT/SIGTERM before they are ended.
    pub shutdown_grace: Duration,
    /// Interval of SSE keep-alive comments while a backend is silent.
    pub sse_keep_alive: Duration,
    /// Accept HTTP/2 with prior knowledge (h2c) beside HTTP/1.1.
    pub http2: bool,
    /// Serving runtimes (threads), each serving the connections handed to it.
    pub workers: usize,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// `[logging]`, checked.
#[derive(Debug, Clone)]
pub struct LoggingConfig {
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive; `RUST_LOG` overrides it.
    pub level: String,
}

/// A backend, checked.
#[derive(Debug, Clone)]
pub enum BackendConfig {
    OpenAi(OpenAiConfig),
    Candle(CandleConfig),
}

impl BackendConfig {
    /// The `type` key.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendConfig::OpenAi(_) => "openai",
            BackendConfig::Candle(_) => "candle",
        }
    }
}

/// `type = "openai"`, checked.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// Base URL up to and including `/v1`, without a trailing slash.
    pub base_url: http::Uri,
    /// Sent as `Authorization: Bearer …` when non-empty. Never logged.
    pub api_key: Option<String>,
    pub connect_timeout: Duration,
    /// Until the response headers arrive.
    pub first_byte_timeout: Duration,
    /// Longest silence between two stream events.
    pub idle_timeout: Duration,
    /// The whole exchange.
    pub total_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Speak HTTP/2 only (h2 over TLS is negotiated by ALPN regardless).
    pub http2_only: bool,
}

impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("total_timeout", &self.total_timeout)
            .finish_non_exhaustive()
    }
}

/// Operating limits on input for one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelLimits {
    /// Largest `max_tokens` a client may ask for.
    pub max_tokens: u32,
    /// Completion budget when the client gives none.
    pub default_max_tokens: u32,
    pub max_messages: usize,
    /// Total bytes of message text.
    pub max_prompt_bytes: usize,
}

/// `[models.NAME]`, checked.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The name clients send as `model`.
    pub name: String,
    /// The first target's first backend.
    pub backend: String,
    /// The model name sent upstream (per target: the target's own).
    pub upstream_model: String,
    pub limits: ModelLimits,
    pub rate_limits: RateLimitConfig,
    /// Where requests go: one or more weighted targets.
    pub targets: Vec<TargetConfig>,
    /// Target names tried in order on retryable errors before the first byte.
    pub fallbacks: Vec<String>,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub registry: Registry,
    /// The promotion gate's suite, when the model has one.
    pub validation: Option<ModelValidation>,
}

/// `validation = { suite, min_score }` on a model, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelValidation {
    /// The suite file, resolved against the config file's directory.
    pub suite: PathBuf,
    /// The pass rate a record must reach to count as evidence, 0..=1.
    pub min_score: f64,
}

/// Who owns a model and who approved which version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    pub owner: Option<String>,
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
    pub version: Option<String>,
    pub description: Option<String>,
}

/// One routing target of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetConfig {
    /// Unique within the model; defaults to the backend name.
    pub name: String,
    /// Backend names; more than one are balanced as replicas.
    pub replicas: Vec<String>,
    pub upstream_model: String,
    pub weight: u32,
    /// Shown in `x-sluice-model-version`; defaults to the model's version.
    pub version: Option<String>,
    /// Deadline for the backend to start answering, per attempt.
    pub timeout: Option<Duration>,
    pub canary: Option<CanaryConfig>,
    /// `validation_override`: the stated reason this target may serve without evidence.
    pub validation_override: Option<String>,
}

/// The path used when `--config` is not given.
pub const DEFAULT_PATH: &str = "config/sluice.toml";

// === impl Config ===

impl Config {
    /// Reads, interpolates and validates a file, using the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Self::from_toml(&text, path, &|k| std::env::var(k).ok())
    }

    /// Parses a config from text; `path` is used in messages and to resolve relative paths.
    pub fn from_toml(
        text: &str,
        path: &Path,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let err = |message: String| ConfigError {
            file: file.clone(),
            message,
        };
        let mut value: toml::Value = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        env::interpolate_value(&mut value, &mut Vec::new(), lookup)
            .map_err(|(key, e)| err(format!("`{key}`: {e}")))?;
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            if key == "." || key.is_empty() {
                err(e.inner().to_string())
            } else {
                err(format!("`{key}`: {}", e.inner()))
            }
        })?;
        validate(raw, path).map_err(err)
    }
}

fn duration(key: &str, value: Option<&str>, default: Duration) -> Result<Duration, String> {
    match value {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s).map_err(|e| {
            format!(
                "`{key}`: `{s}` is not a duration with a unit, such as \"30s\" or \"250ms\" ({e})"
            )
        }),
    }
}

fn socket_addr(key: &str, value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("`{key}`: `{value}` is not an address like 127.0.0.1:8080"))
}

fn limits(key: &str, base: &RawLimits, over: &RawLimits) -> Result<ModelLimits, String> {
    let max_tokens = over.max_tokens.or(base.max_tokens).unwrap_or(4096);
    let default_max_tokens = over
        .default_max_tokens
        .or(base.default_max_tokens)
        .unwrap_or(max_tokens.min(1024));
    let max_messages = over.max_messages.or(base.max_messages).unwrap_or(256);
    let max_prompt_bytes = over
        .max_prompt_bytes
        .or(base.max_prompt_bytes)
        .unwrap_or(512 * 1024);
    if max_tokens == 0 {
        return Err(format!("`{key}.max_tokens` must be at least 1"));
    }
    if default_max_tokens == 0 || default_max_tokens > max_tokens {
        return Err(format!(
            "`{key}.default_max_tokens` must be between 1 and max_tokens ({max_tokens})"
        ));
    }
    if max_messages == 0 || max_prompt_bytes == 0 {
        return Err(format!(
            "`{key}`: max_messages and max_prompt_bytes must be at least 1"
        ));
    }
    Ok(ModelLimits {
        max_tokens,
        default_max_tokens,
        max_messages,
        max_prompt_bytes,
    })
}

/// More serving threads than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

/// Turns the as-read config into the checked one.
pub fn validate(raw: RawConfig, path: &Path) -> Result<Config, String> {
    let s = raw.server;
    let server = ServerConfig {
        listen: socket_addr(
            "server.listen",
            s.listen.as_deref().unwrap_or("127.0.0.1:8080"),
        )?,
        max_connections: s.max_connections.unwrap_or(10_000),
        header_read_timeout: duration(
            "server.header_read_timeout",
            s.header_read_timeout.as_deref(),
            Duration::from_secs(10),
        )?,
        body_read_timeout: duration(
            "server.body_read_timeout",
            s.body_read_timeout.as_deref(),
            Duration::from_secs(10),
        )?,
        body_min_bytes_per_second: s.body_min_bytes_per_second.unwrap_or(1024),
        max_body_bytes: s.max_body_bytes.unwrap_or(4 * 1024 * 1024),
        shutdown_grace: duration(
            "server.shutdown_grace",
            s.shutdown_grace.as_deref(),
            Duration::from_secs(30),
        )?,
        sse_keep_alive: duration(
            "server.sse_keep_alive",
            s.sse_keep_alive.as_deref(),
            Duration::from_secs(15),
        )?,
        http2: s.http2.unwrap_or(true),
        workers: s.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        }),
    };
    if server.workers == 0 || server.workers > MAX_WORKERS {
        return Err(format!(
            "`server.workers` must be between 1 and {MAX_WORKERS} (default: the CPUs this process may use)"
        ));
    }
    if server.max_connections == 0 {
        return Err("`server.max_connections` must be at least 1".into());
    }
    if server.max_body_bytes < 1024 {
        return Err("`server.max_body_bytes` must be at least 1024".into());
    }
    if server.body_read_timeout.is_zero() {
        return Err("`server.body_read_timeout` must be above zero".into());
    }
    if server.sse_keep_alive.is_zero() || server.header_read_timeout.is_zero() {
        return Err(
            "`server.sse_keep_alive` and `server.header_read_timeout` must be above zero".into(),
        );
    }
    let admin_listen = raw
        .admin
        .listen
        .as_deref()
        .map(|a| socket_addr("admin.listen", a))
        .transpose()?;

    let logging = LoggingConfig {
        format: match raw.logging.format.as_deref() {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(format!(
                    "`logging.format`: `{other}` is not one of \"pretty\", \"json\""
                ))
            }
        },
        level: raw.logging.level.unwrap_or_else(|| "info".into()),
    };

    let base_dir = path.parent().unwrap_or(Path::new("."));
    let mut backends = BTreeMap::new();
    for (name, b) in raw.backends {
        let key = format!("backends.{name}");
        let checked = match b {
            RawBackend::Openai(o) => BackendConfig::OpenAi(openai(&key, o)?),
            RawBackend::Candle(c) => BackendConfig::Candle(c.validate(&key, base_dir)?),
        };
        backends.insert(name, checked);
    }

    let mut models = BTreeMap::new();
    for (name, m) in raw.models {
        let key = format!("models.{name}");
        let known = |b: &str, at: &str| -> Result<(), String> {
            if backends.contains_key(b) {
                Ok(())
            } else {
                Err(format!(
                    "`{at}`: no backend named `{b}` (declared: {})",
                    backends.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            }
        };
        let targets = targets(&key, &name, &m, &known)?;
        for f in &m.fallbacks {
            if !targets.iter().any(|t| &t.name == f) {
                return Err(format!("`{key}.fallbacks`: no target named `{f}`"));
            }
        }
        let limits = limits(&key, &raw.limits, &m.limits)?;
        let rate_limits = rate_limits(&key, m.requests_per_minute, m.tokens_per_minute, None)?;
        let first = &targets[0];
        let validation = match m.validation {
            None => None,
            Some(v) => {
                if !(0.0..=1.0).contains(&v.min_score) {
                    return Err(format!(
                        "`{key}.validation.min_score` must be between 0 and 1"
                    ));
                }
                Some(ModelValidation {
                    suite: base_dir.join(&v.suite),
                    min_score: v.min_score,
                })
            }
        };
        models.insert(
            name.clone(),
            ModelConfig {
                backend: first.replicas[0].clone(),
                upstream_model: first.upstream_model.clone(),
                name,
                limits,
                rate_limits,
                fallbacks: m.fallbacks,
                retry: retry(&key, m.retry)?,
                breaker: breaker(&key, m.breaker)?,
                registry: Registry {
                    owner: m.owner,
                    approved_by: m.approved_by,
                    approved_at: m.approved_at,
                    version: m.version,
                    description: m.description,
                },
                validation,
                targets,
            },
        );
    }
    let global = rate_limits(
        "rate_limits",
        raw.rate_limits.requests_per_minute,
        raw.rate_limits.tokens_per_minute,
        None,
    )?;
    let mut keys = Vec::new();
    let mut seen = BTreeMap::new();
    for (name, k) in raw.keys {
        let key = format!("keys.{name}");
        let sha256 = sha256_hex(&format!("{key}.sha256"), &k.sha256)?;
        if let Some(other) = seen.insert(sha256, name.clone()) {
            return Err(format!("`{key}.sha256` is the same key as `keys.{other}`"));
        }
        let allowed = match k.models {
            None => None,
            Some(list) => {
                for m in &list {
                    if !models.contains_key(m) {
                        return Err(format!("`{key}.models`: no model named `{m}`"));
                    }
                }
                Some(list.into_iter().collect())
            }
        };
        keys.push(KeyConfig {
            rate_limits: rate_limits(
                &key,
                k.requests_per_minute,
                k.tokens_per_minute,
                k.max_concurrent,
            )?,
            name,
            sha256,
            models: allowed,
            pin_target: k.pin_target,
        });
    }
    let mut admin_keys = Vec::new();
    for (name, k) in raw.admin_keys {
        let key = format!("admin_keys.{name}");
        let sha256 = sha256_hex(&format!("{key}.sha256"), &k.sha256)?;
        if seen.contains_key(&sha256) {
            return Err(format!(
                "`{key}.sha256` is also a client key; admin keys must differ"
            ));
        }
        admin_keys.push(AdminKeyConfig { name, sha256 });
    }
    if models.is_empty() {
        return Err("no `[models.NAME]` declared: the gateway would serve nothing".into());
    }

    Ok(Config {
        server,
        admin_listen,
        logging,
        backends,
        models,
        rate_limits: global,
        keys,
        admin_keys,
        audit_path: raw.audit.path.map(|p| base_dir.join(p)),
        guardrails: match raw.guardrails {
            None => None,
            Some(g) => Some(GuardrailsConfig {
                dir: base_dir.join(&g.dir),
                watch_interval: match g.watch_interval.as_deref() {
                    None | Some("off") => None,
                    Some(d) => Some(duration(
                        "guardrails.watch_interval",
                        Some(d),
                        Duration::ZERO,
                    )?),
                },
            }),
        },
        prompts: match raw.prompts {
            None => None,
            Some(p) => Some(PromptsConfig {
                dir: base_dir.join(&p.dir),
                watch_interval: match p.watch_interval.as_deref() {
                    None | Some("off") => None,
                    Some(d) => Some(duration("prompts.watch_interval", Some(d), Duration::ZERO)?),
                },
            }),
        },
        validation_records: base_dir.join(
            raw.validation
                .and_then(|v| v.records)
                .unwrap_or_else(|| "records".into()),
        ),
        source: path.to_path_buf(),
    })
}

fn targets(
    key: &str,
    model: &str,
    m: &raw::RawModel,
    known: &dyn Fn(&str, &str) -> Result<(), String>,
) -> Result<Vec<TargetConfig>, String> {
    let raw_targets = match (&m.backend, &m.targets) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "`{key}`: give either `backend` or `targets`, not both"
            ))
        }
        (None, None) => return Err(format!("`{key}`: needs `backend` or `targets`")),
        (Some(b), None) => {
            known(b, &format!("{key}.backend"))?;
            return Ok(vec![TargetConfig {
                name: b.clone(),
                replicas: vec![b.clone()],
                upstream_model: m.upstream_model.clone().unwrap_or_else(|| model.to_owned()),
                weight: 100,
                version: None,
                timeout: None,
                canary: None,
                validation_override: None,
            }]);
        }
        (None, Some(t)) => t,
    };
    if raw_targets.is_empty() {
        return Err(format!("`{key}.targets` must not be empty"));
    }
    let mut out: Vec<TargetConfig> = Vec::new();
    for (i, t) in raw_targets.iter().enumerate() {
        let at = format!("{key}.targets[{i}]");
        let replicas = match (&t.backend, &t.replicas) {
            (Some(b), None) => vec![b.clone()],
            (None, Some(r)) if !r.is_empty() => r.clone(),
            _ => return Err(format!("`{at}`: give `backend` or a non-empty `replicas`")),
        };
        for b in &replicas {
            known(b, &at)?;
        }
        let name = t.name.clone().unwrap_or_else(|| replicas[0].clone());
        if out.iter().any(|o| o.name == name) {
            return Err(format!("`{at}`: two targets named `{name}`; set `name`"));
        }
        let canary = match &t.canary {
            None => None,
            Some(c) => {
                for (k, v) in [
                    ("max_error_rate", c.max_error_rate),
                    ("max_guardrail_rate", c.max_guardrail_rate),
                ] {
                    if v.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
                        return Err(format!("`{at}.canary.{k}` must be between 0 and 1"));
                    }
                }
                Some(CanaryConfig {
                    window: duration(
                        &format!("{at}.canary.window"),
                        c.window.as_deref(),
                        Duration::from_secs(60),
                    )?,
                    min_requests: c.min_requests.unwrap_or(20),
                    max_error_rate: c.max_error_rate,
                    max_p95_latency: c
                        .max_p95_latency
                        .as_deref()
                        .map(|d| {
                            duration(
                                &format!("{at}.canary.max_p95_latency"),
                                Some(d),
                                Duration::ZERO,
                            )
                        })
                        .transpose()?,
                    max_guardrail_rate: c.max_guardrail_rate,
                })
            }
        };
        out.push(TargetConfig {
            name,
            replicas,
            upstream_model: t
                .upstream_model
                .clone()
                .or_else(|| m.upstream_model.clone())
                .unwrap_or_else(|| model.to_owned()),
            weight: t.weight.unwrap_or(100),
            version: t.version.clone(),
            timeout: t
                .timeout
                .as_deref()
                .map(|d| duration(&format!("{at}.timeout"), Some(d), Duration::ZERO))
                .transpose()?,
            canary,
            validation_override: match &t.validation_override {
                Some(r) if r.trim().is_empty() => {
                    return Err(format!(
                        "`{at}.validation_override` must state the reason, not be empty"
                    ))
                }
                other => other.clone(),
            },
        });
    }
    if out.iter().all(|t| t.weight == 0) {
        return Err(format!(
            "`{key}.targets`: at least one target needs a weight above 0"
        ));
    }
    Ok(out)
}

fn retry(key: &str, r: Option<raw::RawRetry>) -> Result<RetryConfig, String> {
    let d = RetryConfig::default();
    let Some(r) = r else { return Ok(d) };
    let c = RetryConfig {
        attempts: r.attempts.unwrap_or(d.attempts),
        backoff: duration(
            &format!("{key}.retry.backoff"),
            r.backoff.as_deref(),
            d.backoff,
        )?,
        max_backoff: duration(
            &format!("{key}.retry.max_backoff"),
            r.max_backoff.as_deref(),
            d.max_backoff,
        )?,
        budget_ratio: r.budget_ratio.unwrap_or(d.budget_ratio),
        budget_min_per_second: r.budget_min_per_second.unwrap_or(d.budget_min_per_second),
    };
    if c.attempts == 0 || c.attempts > 10 {
        return Err(format!("`{key}.retry.attempts` must be between 1 and 10"));
    }
    if !(0.0..=1.0).contains(&c.budget_ratio) || c.budget_min_per_second < 0.0 {
        return Err(format!(
            "`{key}.retry`: budget_ratio must be 0–1 and budget_min_per_second ≥ 0"
        ));
    }
    Ok(c)
}

fn breaker(key: &str, b: Option<raw::RawBreaker>) -> Result<BreakerConfig, String> {
    let d = BreakerConfig::default();
    let Some(b) = b else { return Ok(d) };
    let c = BreakerConfig {
        consecutive_failures: b.consecutive_failures.unwrap_or(d.consecutive_failures),
        error_rate: b.error_rate.unwrap_or(d.error_rate),
        window: duration(
            &format!("{key}.breaker.window"),
            b.window.as_deref(),
            d.window,
        )?,
        min_requests: b.min_requests.unwrap_or(d.min_requests),
        open_for: duration(
            &format!("{key}.breaker.open_for"),
            b.open_for.as_deref(),
            d.open_for,
        )?,
    };
    if c.consecutive_failures == 0 || !(0.0..=1.0).contains(&c.error_rate) {
        return Err(format!(
            "`{key}.breaker`: consecutive_failures ≥ 1 and error_rate 0–1"
        ));
    }
    Ok(c)
}

fn rate_limits(
    key: &str,
    rpm: Option<u32>,
    tpm: Option<u64>,
    concurrent: Option<usize>,
) -> Result<RateLimitConfig, String> {
    let requests_per_minute = match rpm {
        None => None,
        Some(n) => Some(
            NonZeroU32::new(n)
                .ok_or_else(|| format!("`{key}.requests_per_minute` must be at least 1"))?,
        ),
    };
    if tpm == Some(0) {
        return Err(format!("`{key}.tokens_per_minute` must be at least 1"));
    }
    if concurrent == Some(0) {
        return Err(format!("`{key}.max_concurrent` must be at least 1"));
    }
    Ok(RateLimitConfig {
        requests_per_minute,
        tokens_per_minute: tpm,
        max_concurrent: concurrent,
    })
}

/// Parses a hex SHA-256 digest.
fn sha256_hex(key: &str, hex: &str) -> Result<[u8; 32], String> {
    let hex = hex.trim();
    let bad = || {
        format!(
            "`{key}` must be 64 hex digits (the SHA-256 of the key, e.g. from `sluice keys hash`)"
        )
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn openai(key: &str, o: raw::RawOpenAi) -> Result<OpenAiConfig, String> {
    let trimmed = o.base_url.trim_end_matches('/');
    let base_url: http::Uri = trimmed
        .parse()
        .map_err(|e| format!("`{key}.base_url`: `{}` is not a URL ({e})", o.base_url))?;
    match base_url.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(format!(
                "`{key}.base_url`: `{}` must start with http:// or https://",
                o.base_url
            ))
        }
    }
    if base_url.host().is_none() {
        return Err(format!("`{key}.base_url`: `{}` has no host", o.base_url));
    }
    Ok(OpenAiConfig {
        base_url,
        api_key: o.api_key.filter(|k| !k.is_empty()),
        connect_timeout: duration(
            &format!("{key}.connect_timeout"),
            o.connect_timeout.as_deref(),
            Duration::from_secs(5),
        )?,
        first_byte_timeout: duration(
            &format!("{key}.first_byte_timeout"),
            o.first_byte_timeout.as_deref(),
            Duration::from_secs(60),
        )?,
        idle_timeout: duration(
            &format!("{key}.idle_timeout"),
            o.idle_timeout.as_deref(),
            Duration::from_secs(60),
        )?,
        total_timeout: duration(
            &format!("{key}.total_timeout"),
            o.total_timeout.as_deref(),
            Duration::from_secs(600),
        )?,
        pool_idle_timeout: duration(
            &format!("{key}.pool_idle_timeout"),
            o.pool_idle_timeout.as_deref(),
            Duration::from_secs(90),
        )?,
        pool_max_idle_per_host: o.pool_max_idle_per_host.unwrap_or(256),
        http2_only: o.http2_only.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT: &str = r#"
[server]
listen = "127.0.0.1:8080"

[backends.upstream]
type = "openai"                      # any OpenAI-compatible endpoint
base_url = "http://127.0.0.1:9101/v1"
api_key = "${UPSTREAM_API_KEY:-}"    # optional; empty sends no Authorization header

[models.mock]
backend = "upstream"
# upstream_model = "mock"            # model name sent upstream; defaults to "mock"
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn contract_file_is_accepted() {
        let c = Config::from_toml(CONTRACT, Path::new("c.toml"), &no_env).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
        let m = &c.models["mock"];
        assert_eq!(m.upstream_model, "mock");
        match &c.backends["upstream"] {
            BackendConfig::OpenAi(o) => {
                assert!(o.api_key.is_none());
                assert_eq!(o.base_url.to_string(), "http://127.0.0.1:9101/v1");
            }
            other => panic!("wrong backend {other:?}"),
        }
    }

    #[test]
    fn api_key_comes_from_env_and_is_not_debug_printed() {
        let env = |k: &str| (k == "UPSTREAM_API_KEY").then(|| "sk-secret".to_string());
        let c = Config::from_toml(CONTRACT, Path::new("c.toml"), &env).unwrap();
        let BackendConfig::OpenAi(o) = &c.backends["upstream"] else {
            panic!("openai expected")
        };
        assert_eq!(o.api_key.as_deref(), Some("sk-secret"));
        assert!(!format!("{c:?}").contains("sk-secret"));
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let text = CONTRACT.replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nlisten_typo = 1",
        );
        let e = Config::from_toml(&text, Path::new("conf/x.toml"), &no_env).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("conf/x.toml"), "{msg}");
        assert!(msg.contains("listen_typo"), "{msg}");
        assert!(msg.contains("server"), "{msg}");
    }

    #[test]
    fn unknown_backend_and_bad_duration_are_named() {
        let text = CONTRACT.replace("backend = \"upstream\"", "backend = \"nope\"");
        let e = Config::from_toml(&text, Path::new("c.toml"), &no_env).unwrap_err();
        assert!(e.to_string().contains("models.mock.backend"), "{e}");
        let text = CONTRACT.replace("[models.mock]", "[server2]\n[models.mock]");
        assert!(Config::from_toml(&text, Path::new("c.toml"), &no_env).is_err());
        let text = CONTRACT.replace("api_key =", "idle_timeout = \"30\"\napi_key =");
        let e = Config::from_toml(&text, Path::new("c.toml"), &no_env).unwrap_err();
        assert!(
            e.to_string().contains("backends.upstream.idle_timeout"),
            "{e}"
        );
    }

    #[test]
    fn model_limits_inherit_and_override() {
        let text = format!("{CONTRACT}\nmax_tokens = 100\n[limits]\nmax_messages = 3\n");
        let c = Config::from_toml(&text, Path::new("c.toml"), &no_env).unwrap();
        let l = c.models["mock"].limits;
        assert_eq!(l.max_tokens, 100);
        assert_eq!(l.default_max_tokens, 100);
        assert_eq!(l.max_messages, 3);
    }

    #[test]
    fn workers_default_to_the_cpus_and_must_be_at_least_one() {
        let c = Config::from_toml(CONTRACT, Path::new("c.toml"), &no_env).unwrap();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.server.workers, cpus);
        let text = CONTRACT.replace("[server]", "[server]\nworkers = 3");
        let c = Config::from_toml(&text, Path::new("c.toml"), &no_env).unwrap();
        assert_eq!(c.server.workers, 3);
        let text = CONTRACT.replace("[server]", "[server]\nworkers = 0");
        let e = Config::from_toml(&text, Path::new("c.toml"), &no_env).unwrap_err();
        assert!(e.to_string().contains("server.workers"), "{e}");
    }
}
#[cfg(test)]
mod unknown_keys {
    use super::*;
    #[test]
    fn unknown_keys_in_models_and_backends_are_refused() {
        let t = "[backends.b]\ntype=\"openai\"\nbase_url=\"http://x/v1\"\n[models.m]\nbackend=\"b\"\nmax_tokenz=3\n";
        let e = Config::from_toml(t, Path::new("c.toml"), &|_| None).unwrap_err();
        assert!(e.to_string().contains("max_tokenz"));
        let t = "[backends.b]\ntype=\"openai\"\nbase_url=\"http://x/v1\"\nbogus=1\n[models.m]\nbackend=\"b\"\n";
        let e = Config::from_toml(t, Path::new("c.toml"), &|_| None).unwrap_err();
        assert!(e.to_string().contains("bogus"));
    }
}
