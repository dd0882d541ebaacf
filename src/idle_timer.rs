//! A timer that fires after a period without activity, at the cost of one clock read per event.
//!
//! A stream that must act after `period` of silence (an SSE keep-alive comment, an upstream idle
//! timeout) could re-arm a [`Sleep`] on every event. Each re-arm takes the timer wheel's lock, and
//! arming one earlier than the runtime's next wake-up also wakes the I/O driver (an `eventfd`
//! write): a syscall per token, measured with strace under the overhead scenario. [`IdleTimer`]
//! arms its sleep once per period instead: [`IdleTimer::touch`] only records the time, and when the
//! sleep fires early (there was activity since it was armed) it is moved to the real deadline.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Fires once `period` has passed since the last [`IdleTimer::touch`] (or since it was made).
#[derive(Debug)]
pub struct IdleTimer {
    sleep: Pin<Box<Sleep>>,
    period: Duration,
    last: Instant,
}

// === impl IdleTimer ===

impl IdleTimer {
    pub fn new(period: Duration) -> Self {
        let now = Instant::now();
        IdleTimer {
            sleep: Box::pin(tokio::time::sleep_until(now + period)),
            period,
            last: now,
        }
    }

    /// Records activity now: the timer fires `period` after this.
    pub fn touch(&mut self) {
        self.last = Instant::now();
    }

    /// Records activity at `now`, a time the caller has just read anyway.
    pub fn touch_at(&mut self, now: std::time::Instant) {
        self.last = Instant::from_std(now);
    }

    /// Ready once `period` has passed without a touch; it then restarts from now, so a stream
    /// that stays silent gets one firing per period.
    pub fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = self.last + self.period;
            let now = Instant::now();
            if deadline <= now {
                self.last = now;
                self.sleep.as_mut().reset(now + self.period);
                return Poll::Ready(());
            }
            // Touched since the sleep was armed: wait out the rest of the period.
            self.sleep.as_mut().reset(deadline);
        }
    }

    /// Waits until the timer fires.
    pub async fn idle(&mut self) {
        std::future::poll_fn(|cx| self.poll_idle(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_after_a_silent_period() {
        let started = Instant::now();
        let mut t = IdleTimer::new(Duration::from_secs(10));
        t.idle().await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        // And again one period later, not at once.
        t.idle().await;
        assert_eq!(started.elapsed(), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_touch_pushes_the_deadline_back() {
        let started = Instant::now();
        let mut t = IdleTimer::new(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(7)).await;
        t.touch();
        t.idle().await;
        assert_eq!(started.elapsed(), Duration::from_secs(17));
    }

    #[tokio::test(start_paused = true)]
    async fn touches_keep_it_quiet() {
        let mut t = IdleTimer::new(Duration::from_secs(10));
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            t.touch();
            let waker = futures_util::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            assert!(t.poll_idle(&mut cx).is_pending(), "fired despite activity");
        }
    }
}
