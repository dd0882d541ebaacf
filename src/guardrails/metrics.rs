//! The guardrail metric families.
//!
//! Registered in the gateway's registry ([`crate::metrics::Metrics::registry`]) so they are
//! exported with everything else. Labels are rule ids, actions and directions: bounded by the
//! policy, never by request data.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Guardrail metrics.
#[derive(Clone)]
pub struct GuardrailMetrics {
    /// Decisions by rule, action and direction.
    pub triggers: IntCounterVec,
    /// Time spent scanning one request's input or one response's output.
    pub scan_seconds: HistogramVec,
    /// 1 for the policy version being served.
    pub policy_info: IntGaugeVec,
    /// Policy reloads by result (`ok`, `unchanged`, `failed`).
    pub reloads: IntCounterVec,
}

/// 1 µs × 2^k, k = 0..=20 (≈ 1 s).
fn scan_buckets() -> Vec<f64> {
    (0..21).map(|k| 0.000_001 * f64::from(1u32 << k)).collect()
}

// === impl GuardrailMetrics ===

impl GuardrailMetrics {
    /// Declares the families and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = GuardrailMetrics {
            triggers: IntCounterVec::new(
                Opts::new(
                    "sluice_guardrail_triggers_total",
                    "Guardrail decisions by rule, action and direction.",
                ),
                &["rule", "action", "direction"],
            )?,
            scan_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "sluice_guardrail_scan_seconds",
                    "Time spent scanning one request's input or one response's output.",
                )
                .buckets(scan_buckets()),
                &["direction"],
            )?,
            policy_info: IntGaugeVec::new(
                Opts::new(
                    "sluice_policy_info",
                    "The guardrail policy version being served; always 1.",
                ),
                &["version"],
            )?,
            reloads: IntCounterVec::new(
                Opts::new(
                    "sluice_policy_reloads_total",
                    "Guardrail policy reloads by result (ok, unchanged, failed).",
                ),
                &["result"],
            )?,
        };
        registry.register(Box::new(m.triggers.clone()))?;
        registry.register(Box::new(m.scan_seconds.clone()))?;
        registry.register(Box::new(m.policy_info.clone()))?;
        registry.register(Box::new(m.reloads.clone()))?;
        Ok(m)
    }

    /// Marks `version` as the one served.
    pub fn set_version(&self, version: &str) {
        self.policy_info.reset();
        self.policy_info.with_label_values(&[version]).set(1);
    }
}
