//! The config as read: every key optional where a default exists, unknown keys refused.
//!
//! These structs mirror the TOML one to one. They are checked and turned into the types in
//! [`super`] by `validate`, which is the only place that decides whether a value is acceptable.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::backends::candle::CandleConfig;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub logging: RawLogging,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub backends: BTreeMap<String, RawBackend>,
    #[serde(default)]
    pub models: BTreeMap<String, RawModel>,
    #[serde(default)]
    pub rate_limits: RawRateLimits,
    #[serde(default)]
    pub keys: BTreeMap<String, RawKey>,
    #[serde(default)]
    pub admin_keys: BTreeMap<String, RawAdminKey>,
    #[serde(default)]
    pub audit: RawAudit,
    pub guardrails: Option<RawGuardrails>,
    pub prompts: Option<RawPrompts>,
    pub validation: Option<RawValidationDir>,
}

/// `[validation]`: where the promotion gate looks for eval records.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawValidationDir {
    pub records: Option<String>,
}

/// `validation = { ... }` on a model: the suite its targets must pass before they get traffic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModelValidation {
    pub suite: String,
    pub min_score: f64,
}

/// `[guardrails]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuardrails {
    pub dir: String,
    pub watch_interval: Option<String>,
}

/// `[prompts]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrompts {
    pub dir: String,
    pub watch_interval: Option<String>,
}

/// `[rate_limits]`: limits across all callers and models.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimits {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
}

/// `[keys.NAME]`: a client API key, by the SHA-256 of its value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub sha256: String,
    pub models: Option<Vec<String>>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub max_concurrent: Option<usize>,
    /// May send `x-sluice-target` to pin a request to one target (evals of a candidate).
    #[serde(default)]
    pub pin_target: bool,
}

/// `[admin_keys.NAME]`: a key for the admin API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminKey {
    pub sha256: String,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub max_connections: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub body_min_bytes_per_second: Option<u64>,
    pub max_body_bytes: Option<usize>,
    pub shutdown_grace: Option<String>,
    pub sse_keep_alive: Option<String>,
    pub http2: Option<bool>,
    pub workers: Option<usize>,
}

/// `[admin]`: where `/metrics` is served.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
}

/// `[logging]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogging {
    pub format: Option<String>,
    pub level: Option<String>,
}

/// `[limits]` (defaults for every model) and the per-model overrides.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_tokens: Option<u32>,
    pub default_max_tokens: Option<u32>,
    pub max_messages: Option<usize>,
    pub max_prompt_bytes: Option<usize>,
}

/// `[backends.NAME]`, chosen by `type`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RawBackend {
    /// Any OpenAI-compatible HTTP endpoint.
    Openai(RawOpenAi),
    /// A GGUF model run in-process with candle.
    Candle(CandleConfig),
}

/// `type = "openai"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOpenAi {
    pub base_url: String,
    pub api_key: Option<String>,
    pub connect_timeout: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub total_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle_per_host: Option<usize>,
    pub http2_only: Option<bool>,
}

/// `[models.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// Shorthand for one target on this backend.
    pub backend: Option<String>,
    pub upstream_model: Option<String>,
    pub targets: Option<Vec<RawTarget>>,
    /// Target names tried in order on retryable errors before the first byte.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    pub retry: Option<RawRetry>,
    pub breaker: Option<RawBreaker>,
    /// Registry data.
    pub owner: Option<String>,
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
    pub version: Option<String>,
    pub description: Option<String>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    /// The promotion gate: a suite every target with weight above 0 must have passed.
    pub validation: Option<RawModelValidation>,
    #[serde(default, flatten)]
    pub limits: RawLimits,
}

/// One entry of `targets = [...]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub name: Option<String>,
    pub backend: Option<String>,
    /// Several backends serving the same model, balanced by outstanding requests.
    pub replicas: Option<Vec<String>>,
    pub upstream_model: Option<String>,
    pub weight: Option<u32>,
    pub version: Option<String>,
    pub timeout: Option<String>,
    pub canary: Option<RawCanary>,
    /// Why this target serves without evidence: admits it past the promotion gate, audited.
    pub validation_override: Option<String>,
}

/// `canary = { ... }` on a target.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCanary {
    pub window: Option<String>,
    pub min_requests: Option<u32>,
    pub max_error_rate: Option<f64>,
    pub max_p95_latency: Option<String>,
    pub max_guardrail_rate: Option<f64>,
}

/// `retry = { ... }` on a model.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<u32>,
    pub backoff: Option<String>,
    pub max_backoff: Option<String>,
    pub budget_ratio: Option<f64>,
    pub budget_min_per_second: Option<f64>,
}

/// `breaker = { ... }` on a model (applies to each of its targets).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub consecutive_failures: Option<u32>,
    pub error_rate: Option<f64>,
    pub window: Option<String>,
    pub min_requests: Option<u32>,
    pub open_for: Option<String>,
}

/// `[audit]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub path: Option<String>,
}
