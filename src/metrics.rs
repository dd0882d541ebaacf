//! Every metric the gateway exports, declared once.
//!
//! Names carry the `sluice_` prefix and base units (seconds, tokens); labels are bounded by config
//! (model, backend names) or by code (status, error kind), never by request data. Histogram buckets
//! run from 50 µs to about 7 minutes so one family serves both gateway overhead and long
//! generations. Each gateway instance owns its registry, so tests running several gateways in one
//! process see only their own numbers.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Exponential buckets: 50 µs × 2^k, k = 0..=23 (≈ 419 s).
fn latency_buckets() -> Vec<f64> {
    (0..24).map(|k| 0.000_05 * f64::from(1u32 << k)).collect()
}

/// Tokens-per-second buckets: 1 to ~65k.
fn rate_buckets() -> Vec<f64> {
    (0..17).map(|k| f64::from(1u32 << k)).collect()
}

/// The gateway's metrics and the registry that exports them.
pub struct Metrics {
    registry: Registry,
    /// Whole request, from headers read to last byte handed to the connection.
    pub request_duration: HistogramVec,
    /// From request start to the first content byte.
    pub time_to_first_token: HistogramVec,
    /// Between consecutive content events of one stream.
    pub inter_token_latency: HistogramVec,
    /// Time spent in the gateway itself: total minus waiting on the backend and on the client.
    pub gateway_overhead: HistogramVec,
    /// Finished requests by model and HTTP status.
    pub requests: IntCounterVec,
    pub prompt_tokens: IntCounterVec,
    pub completion_tokens: IntCounterVec,
    /// Upstream failures by backend and kind (connect, timeout_*, status_*, protocol, closed).
    pub upstream_errors: IntCounterVec,
    /// Requests being served now (any endpoint of the API listener).
    pub in_flight: IntGauge,
    /// Streams that ended before completing, by reason (error, client_closed, shutdown).
    pub streams_aborted: IntCounterVec,
    /// Requests routed to each target.
    pub target_requests: IntCounterVec,
    /// Times a request moved on to a fallback target.
    pub fallbacks: IntCounterVec,
    /// Retries taken (same target, after backoff).
    pub retries: IntCounterVec,
    /// Breaker state per target: 0 closed, 1 half-open, 2 open.
    pub breaker_state: IntGaugeVec,
    /// Canary targets whose weight was dropped to 0 by a guard.
    pub canary_rollbacks: IntCounterVec,
    /// Registry data: version, owner and approver of each model; always 1.
    pub model_info: IntGaugeVec,
    /// Config reloads by result (ok, error).
    pub config_reloads: IntCounterVec,
    /// Chat requests built from a prompt, by prompt id and version (ids come from the operator's
    /// prompt files, so the label is bounded by config).
    pub prompt_requests: IntCounterVec,
    /// 429s from rate limits, by limit kind and key name.
    pub rate_limited: IntCounterVec,
    /// 401s for API requests, by reason (missing_key, unknown_key): a burst is someone guessing.
    pub auth_refused: IntCounterVec,
    /// Requests answered 408 because the client sent them too slowly, by phase (head, body).
    pub client_timeouts: IntCounterVec,
    /// Local models: time a request waited for a generation slot.
    pub local_queue_wait: HistogramVec,
    /// Local models: requests waiting now.
    pub local_queue_depth: IntGaugeVec,
    pub local_prefill_rate: HistogramVec,
    pub local_decode_rate: HistogramVec,
    /// Local models: whether each loaded (1) or was refused (0).
    pub local_model_loaded: GaugeVec,
    /// Client connections open on each serving worker: an uneven spread shows here first.
    pub worker_connections: IntGaugeVec,
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    // Names and buckets are constants of this module; an invalid one is a bug caught by the tests.
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

// === impl Metrics ===

impl Metrics {
    /// Declares and registers every metric.
    #[allow(clippy::too_many_lines)]
    pub fn new() -> Self {
        let registry = Registry::new();
        let mb = &["model", "backend"];
        let m = Metrics {
            request_duration: histogram(
                "sluice_request_duration_seconds",
                "Chat request duration from headers read to last byte sent.",
                mb,
                latency_buckets(),
            ),
            time_to_first_token: histogram(
                "sluice_time_to_first_token_seconds",
                "Time from request start to the first content sent to the client.",
                mb,
                latency_buckets(),
            ),
            inter_token_latency: histogram(
                "sluice_inter_token_latency_seconds",
                "Gap between consecutive content events of one stream.",
                mb,
                latency_buckets(),
            ),
            gateway_overhead: histogram(
                "sluice_gateway_overhead_seconds",
                "Time spent in the gateway: duration minus time waiting on the backend and the client.",
                mb,
                latency_buckets(),
            ),
            requests: counter(
                "sluice_requests_total",
                "Finished chat requests by model and HTTP status.",
                &["model", "status"],
            ),
            prompt_tokens: counter(
                "sluice_prompt_tokens_total",
                "Prompt tokens reported by backends.",
                mb,
            ),
            completion_tokens: counter(
                "sluice_completion_tokens_total",
                "Completion tokens reported by backends.",
                mb,
            ),
            upstream_errors: counter(
                "sluice_upstream_errors_total",
                "Backend failures by kind.",
                &["backend", "kind"],
            ),
            in_flight: IntGauge::new("sluice_requests_in_flight", "Requests being served now.")
                .unwrap_or_else(|e| panic!("metric in_flight: {e}")),
            streams_aborted: counter(
                "sluice_streams_aborted_total",
                "Streams that ended before completing, by reason.",
                &["model", "reason"],
            ),
            target_requests: counter(
                "sluice_target_requests_total",
                "Requests sent to each routing target.",
                &["model", "target"],
            ),
            fallbacks: counter(
                "sluice_fallbacks_total",
                "Requests that moved on to a fallback target.",
                &["model"],
            ),
            retries: counter(
                "sluice_retries_total",
                "Retries taken after a retryable error.",
                &["model"],
            ),
            breaker_state: IntGaugeVec::new(
                Opts::new(
                    "sluice_breaker_state",
                    "Circuit breaker per target: 0 closed, 1 half-open, 2 open.",
                ),
                &["model", "target"],
            )
            .unwrap_or_else(|e| panic!("metric breaker_state: {e}")),
            canary_rollbacks: counter(
                "sluice_canary_rollbacks_total",
                "Canary targets set to weight 0 by a guard.",
                &["model", "target"],
            ),
            model_info: IntGaugeVec::new(
                Opts::new(
                    "sluice_model_info",
                    "Registry data of each served model; always 1.",
                ),
                &["model", "version", "owner", "approved_by"],
            )
            .unwrap_or_else(|e| panic!("metric model_info: {e}")),
            config_reloads: counter(
                "sluice_config_reloads_total",
                "Config reloads by result.",
                &["result"],
            ),
            prompt_requests: counter(
                "sluice_prompt_requests_total",
                "Chat requests built from a prompt, by prompt id and version.",
                &["prompt", "version"],
            ),
            rate_limited: counter(
                "sluice_rate_limited_total",
                "Requests refused by a rate limit, by limit kind and key name.",
                &["kind", "key"],
            ),
            auth_refused: counter(
                "sluice_auth_refused_total",
                "API requests refused for a missing or unknown key, by reason.",
                &["reason"],
            ),
            client_timeouts: counter(
                "sluice_client_read_timeouts_total",
                "Requests answered 408 because the client sent the head or the body too slowly, by phase.",
                &["phase"],
            ),
            local_queue_wait: histogram(
                "sluice_local_queue_wait_seconds",
                "Time a request waited for a local generation slot.",
                &["backend"],
                latency_buckets(),
            ),
            local_queue_depth: IntGaugeVec::new(
                Opts::new(
                    "sluice_local_queue_depth",
                    "Requests waiting for a local generation slot.",
                ),
                &["backend"],
            )
            .unwrap_or_else(|e| panic!("metric local_queue_depth: {e}")),
            local_prefill_rate: histogram(
                "sluice_local_prefill_tokens_per_second",
                "Prompt processing speed of local models, per request.",
                &["backend"],
                rate_buckets(),
            ),
            local_decode_rate: histogram(
                "sluice_local_decode_tokens_per_second",
                "Generation speed of local models, per request.",
                &["backend"],
                rate_buckets(),
            ),
            local_model_loaded: GaugeVec::new(
                Opts::new(
                    "sluice_local_model_loaded",
                    "1 when a local model is loaded and serving, 0 when it was refused or failed.",
                ),
                &["backend"],
            )
            .unwrap_or_else(|e| panic!("metric local_model_loaded: {e}")),
            worker_connections: IntGaugeVec::new(
                Opts::new(
                    "sluice_worker_connections",
                    "Client connections open on each serving worker.",
                ),
                &["worker"],
            )
            .unwrap_or_else(|e| panic!("metric worker_connections: {e}")),
            registry,
        };
        let build = IntGaugeVec::new(
            Opts::new("sluice_build_info", "Build information; always 1."),
            &["version"],
        )
        .unwrap_or_else(|e| panic!("metric build_info: {e}"));
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(build),
            Box::new(m.request_duration.clone()),
            Box::new(m.time_to_first_token.clone()),
            Box::new(m.inter_token_latency.clone()),
            Box::new(m.gateway_overhead.clone()),
            Box::new(m.requests.clone()),
            Box::new(m.prompt_tokens.clone()),
            Box::new(m.completion_tokens.clone()),
            Box::new(m.upstream_errors.clone()),
            Box::new(m.in_flight.clone()),
            Box::new(m.streams_aborted.clone()),
            Box::new(m.rate_limited.clone()),
            Box::new(m.auth_refused.clone()),
            Box::new(m.client_timeouts.clone()),
            Box::new(m.config_reloads.clone()),
            Box::new(m.prompt_requests.clone()),
            Box::new(m.target_requests.clone()),
            Box::new(m.fallbacks.clone()),
            Box::new(m.retries.clone()),
            Box::new(m.breaker_state.clone()),
            Box::new(m.canary_rollbacks.clone()),
            Box::new(m.model_info.clone()),
            Box::new(m.local_queue_wait.clone()),
            Box::new(m.local_queue_depth.clone()),
            Box::new(m.local_prefill_rate.clone()),
            Box::new(m.local_decode_rate.clone()),
            Box::new(m.local_model_loaded.clone()),
            Box::new(m.worker_connections.clone()),
        ];
        for c in collectors {
            m.registry
                .register(c)
                .unwrap_or_else(|e| panic!("registering a metric: {e}"));
        }
        m
    }

    /// The registry, for components that add their own families.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition of everything registered.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec fails only on a malformed family, which registration rules out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_all_families_with_prefix() {
        let m = Metrics::new();
        m.requests.with_label_values(&["m", "200"]).inc();
        m.request_duration
            .with_label_values(&["m", "b"])
            .observe(0.01);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("sluice_build_info{version="));
        assert!(text.contains("sluice_requests_total{model=\"m\",status=\"200\"} 1"));
        assert!(text.contains("sluice_request_duration_seconds_bucket"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("sluice_"), "{line}");
        }
    }

    #[test]
    fn buckets_span_microseconds_to_minutes() {
        let b = latency_buckets();
        assert!(b[0] <= 0.0001);
        assert!(*b.last().unwrap() >= 300.0);
        assert!(b.windows(2).all(|w| w[0] < w[1]));
    }
}
