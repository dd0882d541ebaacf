//! Canary guards: limits a new target must stay within, checked over a sliding window.
//!
//! A canary that crosses one (error rate, p95 latency, output guardrail trip rate) has its weight
//! dropped to 0 at once by the router — before a human has read a dashboard. Reversal is the
//! default; putting traffic back is an explicit admin action.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Limits for one canary target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CanaryConfig {
    pub window: Duration,
    /// Outcomes needed in the window before any limit is judged.
    pub min_requests: u32,
    pub max_error_rate: Option<f64>,
    pub max_p95_latency: Option<Duration>,
    pub max_guardrail_rate: Option<f64>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    ok: bool,
    latency: Duration,
    guardrail: bool,
}

/// The sliding window of one canary.
#[derive(Debug)]
pub struct CanaryWindow {
    config: CanaryConfig,
    samples: Mutex<VecDeque<Sample>>,
}

impl CanaryWindow {
    /// An empty window.
    pub fn new(config: CanaryConfig) -> Self {
        CanaryWindow {
            config,
            samples: Mutex::new(VecDeque::new()),
        }
    }

    /// Records one finished request; returns the crossed limit, if any.
    pub fn record(&self, ok: bool, latency: Duration, guardrail: bool) -> Option<String> {
        let Ok(mut s) = self.samples.lock() else {
            return None;
        };
        let now = Instant::now();
        s.push_back(Sample {
            at: now,
            ok,
            latency,
            guardrail,
        });
        while s
            .front()
            .is_some_and(|x| now.duration_since(x.at) > self.config.window)
        {
            s.pop_front();
        }
        let n = s.len();
        if n < self.config.min_requests as usize || n == 0 {
            return None;
        }
        let rate =
            |f: &dyn Fn(&Sample) -> bool| s.iter().filter(|x| f(x)).count() as f64 / n as f64;
        if let Some(max) = self.config.max_error_rate {
            let r = rate(&|x| !x.ok);
            if r > max {
                return Some(format!("error rate {r:.3} > {max}"));
            }
        }
        if let Some(max) = self.config.max_guardrail_rate {
            let r = rate(&|x| x.guardrail);
            if r > max {
                return Some(format!("guardrail trip rate {r:.3} > {max}"));
            }
        }
        if let Some(max) = self.config.max_p95_latency {
            let mut lat: Vec<Duration> = s.iter().map(|x| x.latency).collect();
            lat.sort_unstable();
            let idx = ((n as f64 * 0.95).ceil() as usize).clamp(1, n) - 1;
            if lat[idx] > max {
                return Some(format!("p95 latency {:?} > {max:?}", lat[idx]));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CanaryConfig {
        CanaryConfig {
            window: Duration::from_secs(60),
            min_requests: 10,
            max_error_rate: Some(0.2),
            max_p95_latency: Some(Duration::from_millis(500)),
            max_guardrail_rate: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn error_rate_trips_only_after_min_requests() {
        let w = CanaryWindow::new(cfg());
        for _ in 0..5 {
            assert!(w.record(false, Duration::from_millis(1), false).is_none());
        }
        for _ in 0..4 {
            assert!(w.record(true, Duration::from_millis(1), false).is_none());
        }
        let tripped = w.record(true, Duration::from_millis(1), false).unwrap();
        assert!(tripped.starts_with("error rate"), "{tripped}");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_p95_trips_and_old_samples_leave_the_window() {
        let w = CanaryWindow::new(cfg());
        for _ in 0..9 {
            w.record(true, Duration::from_secs(2), false);
        }
        tokio::time::advance(Duration::from_secs(61)).await;
        // The slow ones have left the window; fast traffic is fine.
        for _ in 0..19 {
            assert!(w.record(true, Duration::from_millis(10), false).is_none());
        }
        assert!(
            w.record(true, Duration::from_secs(3), false).is_none(),
            "1 slow of 20 is the p100, not the p95"
        );
        assert!(w
            .record(true, Duration::from_secs(3), false)
            .unwrap()
            .starts_with("p95"));
    }
}
