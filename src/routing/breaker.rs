//! A circuit breaker per target.
//!
//! Closed: requests flow; it opens after `consecutive_failures` failures in a row, or when the
//! error rate over the last `window` exceeds `error_rate` with at least `min_requests` seen. Open:
//! the target is skipped (fallbacks take over) for `open_for`. Half-open: one probe request is let
//! through; its success closes the breaker, its failure opens it again.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub error_rate: f64,
    pub window: Duration,
    pub min_requests: u32,
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            error_rate: 0.5,
            window: Duration::from_secs(30),
            min_requests: 20,
            open_for: Duration::from_secs(10),
        }
    }
}

/// The state, as shown to operators and in metrics (0 closed, 1 half-open, 2 open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    /// A label for the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }

    /// The gauge value.
    pub fn as_gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive: u32,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
    /// (when, ok) of recent outcomes, oldest first.
    recent: VecDeque<(Instant, bool)>,
}

/// One target's breaker.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

// === impl Breaker ===

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive: 0,
                opened_at: None,
                probe_in_flight: false,
                recent: VecDeque::new(),
            }),
        }
    }

    /// The current state (an open breaker whose time is up reads as half-open).
    pub fn state(&self) -> State {
        let Ok(mut g) = self.inner.lock() else {
            return State::Closed;
        };
        self.expire(&mut g);
        g.state
    }

    fn expire(&self, g: &mut Inner) {
        if g.state == State::Open
            && g.opened_at
                .is_some_and(|t| t.elapsed() >= self.config.open_for)
        {
            g.state = State::HalfOpen;
            g.probe_in_flight = false;
        }
    }

    /// Whether a request may go to this target now. In half-open state only one probe is let
    /// through at a time.
    pub fn allow(&self) -> bool {
        let Ok(mut g) = self.inner.lock() else {
            return true;
        };
        self.expire(&mut g);
        match g.state {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen if g.probe_in_flight => false,
            State::HalfOpen => {
                g.probe_in_flight = true;
                true
            }
        }
    }

    /// Records an outcome.
    pub fn record(&self, ok: bool) {
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        let now = Instant::now();
        g.recent.push_back((now, ok));
        while g
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > self.config.window)
        {
            g.recent.pop_front();
        }
        match (g.state, ok) {
            (State::HalfOpen, true) => {
                g.state = State::Closed;
                g.consecutive = 0;
                g.probe_in_flight = false;
                g.recent.clear();
            }
            (State::HalfOpen, false) => self.open(&mut g, now),
            (State::Closed, true) => g.consecutive = 0,
            (State::Closed, false) => {
                g.consecutive += 1;
                let seen = g.recent.len() as u32;
                let failed = g.recent.iter().filter(|(_, ok)| !ok).count() as f64;
                let rate_trips = seen >= self.config.min_requests
                    && failed / f64::from(seen) > self.config.error_rate;
                if g.consecutive >= self.config.consecutive_failures || rate_trips {
                    self.open(&mut g, now);
                }
            }
            (State::Open, _) => {}
        }
    }

    fn open(&self, g: &mut Inner, now: Instant) {
        g.state = State::Open;
        g.opened_at = Some(now);
        g.probe_in_flight = false;
        g.consecutive = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            consecutive_failures: 3,
            error_rate: 0.5,
            window: Duration::from_secs(10),
            min_requests: 10,
            open_for: Duration::from_secs(5),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_consecutive_failures_then_probes_then_closes() {
        let b = breaker();
        for _ in 0..2 {
            b.record(false);
        }
        assert_eq!(b.state(), State::Closed);
        b.record(false);
        assert_eq!(b.state(), State::Open);
        assert!(!b.allow());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.state(), State::HalfOpen);
        assert!(b.allow(), "one probe");
        assert!(!b.allow(), "only one probe at a time");
        b.record(true);
        assert_eq!(b.state(), State::Closed);
        assert!(b.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens() {
        let b = breaker();
        for _ in 0..3 {
            b.record(false);
        }
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(b.allow());
        b.record(false);
        assert_eq!(b.state(), State::Open);
        assert!(!b.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_error_rate_over_the_window() {
        let b = breaker();
        // fail, fail, ok, …: never three failures in a row, but two in three overall.
        for i in 0..9 {
            b.record(i % 3 == 2);
        }
        assert_eq!(b.state(), State::Closed, "below min_requests");
        for i in 9..12 {
            b.record(i % 3 == 2);
        }
        assert_eq!(b.state(), State::Open);
    }
}
