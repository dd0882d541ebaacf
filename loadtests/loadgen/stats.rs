//! What one connection records, merged into the result of a run.
//!
//! Each connection owns its own [`Stats`]; they are added together once the run is over, so the
//! hot path of the generator never shares a cache line with another connection.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// The largest latency recorded: ten minutes, in microseconds. Longer values are clamped.
const MAX_US: u64 = 600_000_000;
/// Error messages kept as samples, so a failed run says why without flooding the output.
const ERROR_SAMPLES: usize = 5;

/// Measurements of one connection, or of a whole run once merged.
pub struct Stats {
    /// Request sent to response body ended.
    pub latency: Histogram<u64>,
    /// Request sent to the first event carrying content (streams only).
    pub ttft: Histogram<u64>,
    /// Between two events carrying content (streams only).
    pub gap: Histogram<u64>,
    /// Responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that failed below HTTP (connect, reset, timeout).
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// Responses completed inside the measured window, for the request rate.
    pub completed_in_window: u64,
    /// 2xx responses completed inside the window, for the admitted rate.
    pub ok_in_window: u64,
    /// 2xx responses per second of the window, by completion time.
    pub timeline: Vec<u64>,
}

/// A histogram's summary in microseconds.
fn summary(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, MAX_US, 3)?)
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_US)
}

// === impl Stats ===

impl Stats {
    /// Empty measurements.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Stats {
            latency: histogram()?,
            ttft: histogram()?,
            gap: histogram()?,
            statuses: BTreeMap::new(),
            errors: 0,
            error_samples: Vec::new(),
            completed_in_window: 0,
            ok_in_window: 0,
            timeline: Vec::new(),
        })
    }

    pub fn latency(&mut self, d: Duration) {
        self.latency.saturating_record(micros(d));
    }

    pub fn ttft(&mut self, d: Duration) {
        self.ttft.saturating_record(micros(d));
    }

    pub fn gap(&mut self, d: Duration) {
        self.gap.saturating_record(micros(d));
    }

    /// A response with `status` that completed `at` into the window (`None`: after it).
    pub fn response(&mut self, status: u16, at: Option<Duration>) {
        *self.statuses.entry(status).or_default() += 1;
        let Some(at) = at else { return };
        self.completed_in_window += 1;
        if (200..300).contains(&status) {
            self.ok_in_window += 1;
            let second = at.as_secs() as usize;
            if self.timeline.len() <= second {
                self.timeline.resize(second + 1, 0);
            }
            self.timeline[second] += 1;
        }
    }

    /// A failure below HTTP.
    pub fn error(&mut self, message: String) {
        self.errors += 1;
        if self.error_samples.len() < ERROR_SAMPLES && !self.error_samples.contains(&message) {
            self.error_samples.push(message);
        }
    }

    /// Adds another connection's measurements.
    pub fn merge(&mut self, other: Stats) {
        let _ = self.latency.add(&other.latency);
        let _ = self.ttft.add(&other.ttft);
        let _ = self.gap.add(&other.gap);
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.errors += other.errors;
        for m in other.error_samples {
            if self.error_samples.len() < ERROR_SAMPLES && !self.error_samples.contains(&m) {
                self.error_samples.push(m);
            }
        }
        self.completed_in_window += other.completed_in_window;
        self.ok_in_window += other.ok_in_window;
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize(other.timeline.len(), 0);
        }
        for (i, n) in other.timeline.into_iter().enumerate() {
            self.timeline[i] += n;
        }
    }

    /// The result line of a run whose window lasted `window`.
    pub fn to_json(&self, window: Duration) -> Value {
        let secs = window.as_secs_f64().max(1e-9);
        let statuses: serde_json::Map<String, Value> = self
            .statuses
            .iter()
            .map(|(s, n)| (s.to_string(), Value::from(*n)))
            .collect();
        json!({
            "window_s": secs,
            "responses": self.statuses.values().sum::<u64>(),
            "statuses": statuses,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "rps": self.completed_in_window as f64 / secs,
            "ok_rps": self.ok_in_window as f64 / secs,
            "latency_us": summary(&self.latency),
            "ttft_us": summary(&self.ttft),
            "gap_us": summary(&self.gap),
            "timeline": self.timeline,
        })
    }
}
