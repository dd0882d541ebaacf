//! A governor clock on tokio's time, so tests can drive limiters with `tokio::time::pause()` and
//! `advance()` instead of sleeping.

use std::time::Duration;

use governor::clock::Clock;

/// Time since the clock was made, read from tokio's clock.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose zero is now.
    pub fn new() -> Self {
        TokioClock {
            base: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        tokio::time::Instant::now().saturating_duration_since(self.base)
    }
}
