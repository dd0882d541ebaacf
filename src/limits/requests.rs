//! Requests per minute, with governor's GCRA.
//!
//! GCRA keeps one timestamp per limiter (the theoretical arrival time, TAT), admits a burst of up
//! to the per-minute quota, and then exactly one request per `60 s / quota` — the configured rate,
//! with no window edges to game.
//!
//! A request is admitted only when every scope (key, model, global) admits it, so a cell taken
//! from an earlier scope must be given back when a later one refuses. governor has no "give back",
//! but it takes its state from any [`StateStore`]; this one wraps governor's own
//! [`InMemoryState`] (the same atomic compare-and-swap) and keeps a handle to it, so a cell can be
//! returned by moving the TAT back. governor still makes every decision; replacing it with a GCRA
//! of our own would need a measurement showing it pays, and this costs nothing on the admit path.
//!
//! Why giving back is sound, with requests racing: taking a cell pushes the TAT forward by the
//! cell's weight `t`; as time passes, the part of that weight already in the past has been paid
//! for. Giving back subtracts only `t` less the time since the cell was taken, which is never more
//! than the part of the cell still in the future, so the TAT never falls below what the cells that
//! stay taken account for: no scope is ever overspent. (Between the take and the give-back, a
//! matter of microseconds, a racing request may see one cell fewer than there will be: a refusal
//! that errs on the safe side.) Scopes are taken key first, so a caller refused by its own key
//! never touches the quotas it shares with others.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

use super::clock::TokioClock;
use super::{Denied, Granted};

type Gcra = RateLimiter<NotKeyed, SharedState, TokioClock, StateInformationMiddleware>;

/// governor's in-memory state, shared between the rate limiter and [`RequestLimiter`] so a cell
/// can be given back.
#[derive(Clone, Default)]
struct SharedState(Arc<InMemoryState>);

/// A requests-per-minute limit.
pub struct RequestLimiter {
    gcra: Gcra,
    /// The state `gcra` decides on.
    state: SharedState,
    per_minute: NonZeroU32,
    /// The weight of one cell: `60 s / per_minute`.
    interval: Duration,
    clock: TokioClock,
}

/// One request taken from a [`RequestLimiter`], until it is kept or given back.
#[derive(Debug, Clone, Copy)]
pub struct Taken {
    /// The limiter's state after the take, for headers.
    pub granted: Granted,
    /// When it was taken (read before governor reads the clock, so never later than governor's).
    at: Duration,
}

// === impl SharedState ===

impl StateStore for SharedState {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, key: &NotKeyed, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

// === impl RequestLimiter ===

impl RequestLimiter {
    /// A limiter admitting `per_minute` requests a minute.
    pub fn new(per_minute: NonZeroU32) -> Self {
        let clock = TokioClock::new();
        let state = SharedState::default();
        let quota = Quota::per_minute(per_minute);
        RequestLimiter {
            gcra: Gcra::new(quota, state.clone(), clock),
            state,
            per_minute,
            interval: quota.replenish_interval(),
            clock,
        }
    }

    /// The configured rate.
    pub fn per_minute(&self) -> u32 {
        self.per_minute.get()
    }

    /// Takes one request from the quota, or says how long until one is free.
    pub fn take(&self) -> Result<Taken, Denied> {
        let limit = u64::from(self.per_minute.get());
        let at = self.clock.now();
        match self.gcra.check() {
            Ok(snapshot) => {
                let remaining = u64::from(snapshot.remaining_burst_capacity());
                Ok(Taken {
                    granted: Granted {
                        limit,
                        remaining,
                        reset: self.cells(limit - remaining),
                    },
                    at,
                })
            }
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(self.clock.now());
                Err(Denied {
                    state: Granted {
                        limit,
                        remaining: 0,
                        // Full again once the next cell is free and the other `limit - 1` too.
                        reset: retry_after + self.cells(limit - 1),
                    },
                    retry_after,
                })
            }
        }
    }

    /// Gives back a request taken by [`take`](Self::take) and not admitted after all; returns the
    /// limiter's state as it now is, for headers.
    pub fn give_back(&self, taken: Taken) -> Granted {
        let elapsed = self.clock.now().saturating_sub(taken.at);
        let back = u64::try_from(self.interval.saturating_sub(elapsed).as_nanos()).unwrap_or(0);
        if back > 0 {
            // A TAT at or before now means a full bucket, whatever its value; 0 reads as "never
            // used", which is full too.
            let _ = self
                .state
                .measure_and_replace(&NotKeyed::NonKey, |tat| match tat {
                    Some(tat) => Ok(((), Nanos::from(tat.as_u64().saturating_sub(back)))),
                    None => Err(()),
                });
        }
        let g = taken.granted;
        let remaining = (g.remaining + 1).min(g.limit);
        Granted {
            remaining,
            reset: self.cells(g.limit - remaining),
            ..g
        }
    }

    /// The time `n` cells take to come back.
    fn cells(&self, n: u64) -> Duration {
        self.interval * u32::try_from(n).unwrap_or(u32::MAX)
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
            if l.take().is_ok() {
                admitted += 1;
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert!((659..=661).contains(&admitted), "admitted {admitted}");
    }

    #[tokio::test(start_paused = true)]
    async fn denial_says_when_to_retry_and_that_is_true() {
        let l = RequestLimiter::new(NonZeroU32::new(2).unwrap());
        let first = l.take().unwrap().granted;
        assert_eq!((first.limit, first.remaining), (2, 1));
        l.take().unwrap();
        let denied = l.take().unwrap_err();
        assert_eq!(denied.retry_after, Duration::from_secs(30));
        // Full again a minute after both were taken.
        let full = (denied.state.remaining, denied.state.reset);
        assert_eq!(full, (0, Duration::from_secs(60)));
        tokio::time::advance(denied.retry_after).await;
        assert!(l.take().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cell_given_back_at_once_is_whole_again() {
        let l = RequestLimiter::new(NonZeroU32::new(3).unwrap());
        l.take().unwrap();
        let second = l.take().unwrap();
        assert_eq!(second.granted.remaining, 1);
        let back = l.give_back(second);
        assert_eq!((back.remaining, back.reset), (2, Duration::from_secs(20)));
        assert_eq!(l.take().unwrap().granted.remaining, 1);
        assert_eq!(l.take().unwrap().granted.remaining, 0);
        assert!(l.take().is_err());
    }

    /// Takes, keeps and gives back cells at pseudo-random times, then replays the kept ones, at
    /// the same offsets, through a plain governor limiter: every one must conform, so giving back
    /// never lets more through than the quota.
    #[tokio::test(start_paused = true)]
    async fn giving_back_never_lets_more_through_than_governor_would() {
        let per_minute = NonZeroU32::new(10).unwrap();
        for seed in 1..=20u64 {
            let mut rng = seed;
            let mut next = move |n: u64| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (rng >> 33) % n
            };
            let l = RequestLimiter::new(per_minute);
            let t0 = tokio::time::Instant::now();
            let mut pending: Vec<(Taken, Duration)> = Vec::new();
            let mut kept = Vec::new();
            for _ in 0..600 {
                match next(4) {
                    0 | 1 => {
                        if let Ok(t) = l.take() {
                            pending.push((t, t0.elapsed()));
                        }
                    }
                    2 if !pending.is_empty() => {
                        let (t, _) = pending.swap_remove(next(pending.len() as u64) as usize);
                        l.give_back(t);
                    }
                    _ if !pending.is_empty() => {
                        kept.push(pending.swap_remove(0).1);
                    }
                    _ => {}
                }
                // Takes are tried faster than cells come back (one each 6 s), so the bucket is
                // mostly empty; cells wait long enough in `pending` for some to be given back late.
                tokio::time::advance(Duration::from_millis(next(3000))).await;
            }
            kept.extend(pending.into_iter().map(|(_, at)| at));
            kept.sort();
            let plain =
                RateLimiter::direct_with_clock(Quota::per_minute(per_minute), TokioClock::new());
            let start = tokio::time::Instant::now();
            for at in &kept {
                tokio::time::advance(
                    (start + *at).saturating_duration_since(tokio::time::Instant::now()),
                )
                .await;
                assert!(
                    plain.check().is_ok(),
                    "seed {seed}: a kept cell at {at:?} overspends"
                );
            }
            assert!(kept.len() > 20, "seed {seed}: only {} kept", kept.len());
        }
    }
}
