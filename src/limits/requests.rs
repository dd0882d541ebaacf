//! Requests per minute, with governor's GCRA.
//!
//! GCRA keeps one timestamp per limiter, admits a burst of up to the per-minute quota, and then
//! exactly one request per `60 s / quota` — the configured rate, with no window edges to game.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::clock::TokioClock;
use super::{Denied, Granted};

type Gcra = RateLimiter<NotKeyed, InMemoryState, TokioClock, StateInformationMiddleware>;

/// A requests-per-minute limit.
pub struct RequestLimiter {
    gcra: Gcra,
    per_minute: NonZeroU32,
    clock: TokioClock,
}

impl RequestLimiter {
    /// A limiter admitting `per_minute` requests a minute.
    pub fn new(per_minute: NonZeroU32) -> Self {
        let clock = TokioClock::new();
        RequestLimiter {
            gcra: RateLimiter::direct_with_clock(Quota::per_minute(per_minute), clock)
                .with_middleware::<StateInformationMiddleware>(),
            per_minute,
            clock,
        }
    }

    /// The configured rate.
    pub fn per_minute(&self) -> u32 {
        self.per_minute.get()
    }

    /// Takes one request from the quota, or says how long until one is free.
    pub fn check(&self) -> Result<Granted, Denied> {
        let limit = u64::from(self.per_minute.get());
        let interval = Duration::from_secs(60) / self.per_minute.get();
        match self.gcra.check() {
            Ok(snapshot) => {
                let remaining = u64::from(snapshot.remaining_burst_capacity());
                Ok(Granted {
                    limit,
                    remaining,
                    reset: interval * u32::try_from(limit - remaining).unwrap_or(u32::MAX),
                })
            }
            Err(not_until) => Err(Denied {
                limit,
                retry_after: not_until.wait_time_from(self.clock.now()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn admits_burst_then_exactly_the_rate() {
        let l = RequestLimiter::new(NonZeroU32::new(60).unwrap());
        let mut admitted = 0u32;
        // Try every 100 ms for 10 minutes: the burst of 60, then one per second.
        for _ in 0..6000 {
            if l.check().is_ok() {
                admitted += 1;
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert!((659..=661).contains(&admitted), "admitted {admitted}");
    }

    #[tokio::test(start_paused = true)]
    async fn denial_says_when_to_retry_and_that_is_true() {
        let l = RequestLimiter::new(NonZeroU32::new(2).unwrap());
        let first = l.check().unwrap();
        assert_eq!((first.limit, first.remaining), (2, 1));
        l.check().unwrap();
        let denied = l.check().unwrap_err();
        assert!(
            denied.retry_after > Duration::ZERO && denied.retry_after <= Duration::from_secs(30)
        );
        tokio::time::advance(denied.retry_after).await;
        assert!(l.check().is_ok());
    }
}
