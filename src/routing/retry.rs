//! Retries: exponential backoff with full jitter, bounded by a budget.
//!
//! A retry storm turns a brief upstream fault into an outage. The budget allows retries only in
//! proportion to the traffic that succeeded into the budget: each request deposits `ratio`
//! (0.2 = at most one retry per five requests), each retry withdraws one, with a small floor of
//! `min_per_second` so that a quiet gateway can still retry at all.

use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// Retry settings for one model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    /// Tries per target, the first included (1 = no retries).
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub budget_ratio: f64,
    pub budget_min_per_second: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 2,
            backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            budget_ratio: 0.2,
            budget_min_per_second: 5.0,
        }
    }
}

impl RetryConfig {
    /// The pause before retry number `n` (1-based): uniform in `[0, min(max, base·2ⁿ⁻¹)]`.
    pub fn backoff(&self, n: u32) -> Duration {
        let cap = self
            .backoff
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.max_backoff);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

/// The retry budget of one model.
#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    min_per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl Budget {
    /// An empty budget (the floor refills it).
    pub fn new(config: &RetryConfig) -> Self {
        Budget {
            ratio: config.budget_ratio,
            min_per_second: config.budget_min_per_second,
            state: Mutex::new((config.budget_min_per_second, Instant::now())),
        }
    }

    fn cap(&self) -> f64 {
        (self.min_per_second * 10.0).max(10.0)
    }

    /// A request came in.
    pub fn deposit(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.0 = (s.0 + self.ratio).min(self.cap());
        }
    }

    /// Takes one retry from the budget, if there is one.
    pub fn withdraw(&self) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        let now = Instant::now();
        let refill = now.duration_since(s.1).as_secs_f64() * self.min_per_second;
        s.1 = now;
        s.0 = (s.0 + refill).min(self.cap());
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_and_capped() {
        let c = RetryConfig {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            ..RetryConfig::default()
        };
        for n in 1..10 {
            let d = c.backoff(n);
            let cap = Duration::from_millis(100 * (1 << (n - 1))).min(Duration::from_millis(300));
            assert!(d <= cap, "{n}: {d:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn budget_limits_retries_to_the_ratio() {
        let b = Budget::new(&RetryConfig {
            budget_ratio: 0.1,
            budget_min_per_second: 0.0,
            ..RetryConfig::default()
        });
        let mut retries = 0;
        for _ in 0..100 {
            b.deposit();
            if b.withdraw() {
                retries += 1;
            }
        }
        assert!((9..=10).contains(&retries), "{retries}");
    }
}
