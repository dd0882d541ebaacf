//! Tokens per minute, as a bucket that can go into debt.
//!
//! Prompt tokens are known (or estimated) before a request is admitted, but completion tokens are
//! only known when the stream ends. GCRA cannot charge after the fact, so tokens use a bucket that
//! refills continuously at `per_minute / 60` a second, admits a request only while its balance
//! covers the prompt, and takes the completion afterwards even when that drives the balance below
//! zero. A client that overspends waits until the debt is paid back.

use std::sync::Mutex;
use std::time::Duration;

use governor::clock::Clock;

use super::clock::TokioClock;
use super::{Denied, Granted};

/// A tokens-per-minute limit.
pub struct TokenLimiter {
    per_minute: u64,
    clock: TokioClock,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Tokens available; negative while in debt.
    balance: f64,
    last: Duration,
}

impl TokenLimiter {
    /// A full bucket of `per_minute` tokens.
    pub fn new(per_minute: u64) -> Self {
        TokenLimiter {
            per_minute,
            clock: TokioClock::new(),
            state: Mutex::new(Bucket {
                balance: per_minute as f64,
                last: Duration::ZERO,
            }),
        }
    }

    fn rate(&self) -> f64 {
        self.per_minute as f64 / 60.0
    }

    fn refill(&self, b: &mut Bucket) {
        let now = self.clock.now();
        let dt = now.saturating_sub(b.last).as_secs_f64();
        b.last = now;
        b.balance = (b.balance + dt * self.rate()).min(self.per_minute as f64);
    }

    fn granted(&self, b: &Bucket) -> Granted {
        let remaining = b.balance.max(0.0) as u64;
        let missing = self.per_minute as f64 - b.balance;
        Granted {
            limit: self.per_minute,
            remaining,
            reset: Duration::from_secs_f64((missing / self.rate()).max(0.0)),
        }
    }

    /// Admits a request whose prompt is `tokens`, taking them from the bucket. A prompt larger
    /// than the whole minute's budget is admitted against a full bucket, so it is not refused
    /// forever.
    pub fn reserve(&self, tokens: u64) -> Result<Granted, Denied> {
        let Ok(mut b) = self.state.lock() else {
            return Err(Denied {
                state: Granted {
                    limit: self.per_minute,
                    remaining: 0,
                    reset: Duration::from_secs(1),
                },
                retry_after: Duration::from_secs(1),
            });
        };
        self.refill(&mut b);
        let needed = (tokens as f64).min(self.per_minute as f64);
        if b.balance + 1e-9 < needed {
            let wait = (needed - b.balance) / self.rate();
            // What is left is reported as it is: more than 0 when the prompt needs more still.
            return Err(Denied {
                state: self.granted(&b),
                retry_after: Duration::from_secs_f64(wait),
            });
        }
        b.balance -= tokens as f64;
        Ok(self.granted(&b))
    }

    /// Takes `tokens` after the fact (completion tokens; a prompt estimate's correction when
    /// positive). May drive the balance negative.
    pub fn charge(&self, tokens: i64) {
        if let Ok(mut b) = self.state.lock() {
            self.refill(&mut b);
            b.balance = (b.balance - tokens as f64).min(self.per_minute as f64);
        }
    }

    /// Gives back a prompt reserved by [`reserve`](Self::reserve) for a request that was not
    /// admitted after all. Exact: the refill between the two is capped at the same full bucket
    /// either way.
    pub fn give_back(&self, tokens: u64) {
        if let Ok(mut b) = self.state.lock() {
            self.refill(&mut b);
            b.balance = (b.balance + tokens as f64).min(self.per_minute as f64);
        }
    }

    /// The state for response headers, without taking anything.
    pub fn peek(&self) -> Granted {
        match self.state.lock() {
            Ok(mut b) => {
                self.refill(&mut b);
                self.granted(&b)
            }
            Err(_) => Granted {
                limit: self.per_minute,
                remaining: 0,
                reset: Duration::ZERO,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn admits_the_configured_tokens_per_minute() {
        let l = TokenLimiter::new(6000);
        let mut admitted = 0u64;
        // 100-token prompts offered every 100 ms for 5 minutes (10x the limit).
        for _ in 0..3000 {
            if l.reserve(100).is_ok() {
                admitted += 100;
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        // The full bucket, then 6000 a minute for 5 minutes.
        assert!((35_900..=36_100).contains(&admitted), "admitted {admitted}");
    }

    #[tokio::test(start_paused = true)]
    async fn completion_debt_delays_the_next_request() {
        let l = TokenLimiter::new(600); // 10 tokens a second
        l.reserve(100).unwrap();
        l.charge(1000); // a long completion: balance 500 - 1000 = -500
        let denied = l.reserve(10).unwrap_err();
        assert_eq!(denied.retry_after.as_secs(), 51); // (10 + 500) / 10
        let state = (denied.state.remaining, denied.state.reset.as_secs());
        assert_eq!(state, (0, 110)); // (600 + 500) / 10
        tokio::time::advance(Duration::from_secs(52)).await;
        assert!(l.reserve(10).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn headers_show_remaining_and_reset() {
        let l = TokenLimiter::new(600);
        let g = l.reserve(300).unwrap();
        assert_eq!((g.limit, g.remaining), (600, 300));
        assert_eq!(g.reset.as_secs(), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_reports_what_is_left() {
        let l = TokenLimiter::new(600);
        l.reserve(500).unwrap();
        let denied = l.reserve(200).unwrap_err();
        assert_eq!((denied.state.limit, denied.state.remaining), (600, 100));
        assert_eq!(denied.state.reset, Duration::from_secs(50));
        assert_eq!(denied.retry_after, Duration::from_secs(10));
    }
}
