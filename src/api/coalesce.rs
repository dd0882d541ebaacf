//! SSE frames that are ready together leave in one write.
//!
//! hyper writes a response body's frames into its buffer for as long as the body has them ready,
//! and flushes (one `writev`) as soon as the body is pending. A proxied stream is pending between
//! every upstream event even when the upstream sent the whole answer at once: hyper's client
//! hands the upstream body over one HTTP chunk at a time from its connection task, so without
//! help every event becomes a write of its own, with a task hand-off before the next one.
//!
//! [`Coalesce`] gives the producer a few more turns before it lets the body go pending: when the
//! inner stream is pending with frames in hand, it reschedules itself. If the producer had more
//! ready (the next chunk of an upstream burst), it is gathered and the turns start again; after
//! [`MAX_IDLE_TURNS`] turns with nothing new, the gathered frames go out together. (hyper's client
//! connection task needs two scheduler passes to hand over its next buffered chunk, measured with
//! the overhead scenario; three leaves a margin.) When tokens really are apart (a model generating,
//! an upstream streaming), the cost is those few reschedules per write, microseconds; the added
//! latency is bounded by [`MAX_TURNS`] turns and [`MAX_BYTES`] bytes.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use pin_project_lite::pin_project;

/// Turns in a row without a new frame before what is gathered goes out.
pub const MAX_IDLE_TURNS: u8 = 3;
/// Most turns offered to the producer before what is gathered goes out.
pub const MAX_TURNS: u8 = 16;
/// Gathered bytes that go out at once, whatever else is ready.
pub const MAX_BYTES: usize = 16 * 1024;

pin_project! {
    /// A stream of byte frames that yields, in one frame, all the frames of its inner stream that
    /// are ready within a few scheduler turns.
    pub struct Coalesce<S> {
        #[pin]
        inner: S,
        // The first frame gathered, while it is the only one: moved, not copied.
        first: Option<Bytes>,
        // Every frame gathered, once there are two (the first copied in with the second); it
        // goes out as a slice, so the buffer is reused once the connection has written it.
        merged: BytesMut,
        // Turns offered since the last frame was gathered.
        turns: u8,
        // Turns offered since the first frame was gathered.
        turns_total: u8,
        done: bool,
    }
}

impl<S> Coalesce<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            first: None,
            merged: BytesMut::new(),
            turns: 0,
            turns_total: 0,
            done: false,
        }
    }
}

// === impl Coalesce ===

impl<S: Stream<Item = Bytes>> Stream for Coalesce<S> {
    type Item = Bytes;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut this = self.project();
        loop {
            if *this.done {
                return Poll::Ready(take(this.first, this.merged));
            }
            match this.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(frame)) => {
                    *this.turns = 0;
                    gather(this.first, this.merged, frame);
                    let held = this.first.as_ref().map_or(0, Bytes::len) + this.merged.len();
                    if held >= MAX_BYTES {
                        *this.turns_total = 0;
                        return Poll::Ready(take(this.first, this.merged));
                    }
                }
                Poll::Ready(None) => *this.done = true,
                Poll::Pending => {
                    if this.first.is_none() && this.merged.is_empty() {
                        // Going quiet: a stream that waits keeps no merge buffer (the last merged
                        // frame owns its bytes until it is written).
                        if this.merged.capacity() != 0 {
                            *this.merged = BytesMut::new();
                        }
                        return Poll::Pending;
                    }
                    if *this.turns < MAX_IDLE_TURNS && *this.turns_total < MAX_TURNS {
                        // The producer gets another turn: the reschedule puts this task behind
                        // the ones already woken (an upstream connection with more buffered).
                        *this.turns += 1;
                        *this.turns_total += 1;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    *this.turns = 0;
                    *this.turns_total = 0;
                    return Poll::Ready(take(this.first, this.merged));
                }
            }
        }
    }
}

/// Room reserved for merged frames: a burst of chunk events in one allocation.
const MERGED_CAPACITY: usize = 2048;

/// Adds `frame` to what is gathered.
fn gather(first: &mut Option<Bytes>, merged: &mut BytesMut, frame: Bytes) {
    if first.is_none() && merged.is_empty() {
        *first = Some(frame);
        return;
    }
    let earlier = first.take();
    let need = earlier.as_ref().map_or(0, Bytes::len) + frame.len();
    if merged.capacity() - merged.len() < need {
        merged.reserve(need.max(MERGED_CAPACITY));
    }
    if let Some(f) = earlier {
        merged.extend_from_slice(&f);
    }
    merged.extend_from_slice(&frame);
}

/// Everything gathered, as one frame.
fn take(first: &mut Option<Bytes>, merged: &mut BytesMut) -> Option<Bytes> {
    if !merged.is_empty() {
        return Some(merged.split().freeze());
    }
    first.take()
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use futures_util::task::{waker, ArcWake};
    use futures_util::StreamExt;

    use super::*;

    /// Yields its script in order: `Some(frame)` is ready, `None` is one pending poll.
    struct Script(VecDeque<Option<&'static str>>);

    impl Stream for Script {
        type Item = Bytes;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
            match self.0.pop_front() {
                Some(Some(s)) => Poll::Ready(Some(Bytes::from_static(s.as_bytes()))),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                None => Poll::Ready(None),
            }
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl ArcWake for Wakes {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Polls to the end, recording each poll's outcome: a frame's text, or `None` for pending.
    fn drive(script: Vec<Option<&'static str>>) -> Vec<Option<String>> {
        let wakes = Arc::new(Wakes::default());
        let w = waker(wakes.clone());
        let mut cx = Context::from_waker(&w);
        let mut s = Coalesce::new(Script(script.into()));
        let mut out = Vec::new();
        for _ in 0..1000 {
            let before = wakes.0.load(Ordering::SeqCst);
            match s.poll_next_unpin(&mut cx) {
                Poll::Ready(Some(b)) => out.push(Some(String::from_utf8(b.to_vec()).unwrap())),
                Poll::Ready(None) => return out,
                Poll::Pending => {
                    // Every pending poll has arranged to be polled again: nothing hangs.
                    assert!(
                        wakes.0.load(Ordering::SeqCst) > before,
                        "pending without a wake"
                    );
                    out.push(None);
                }
            }
        }
        panic!("the stream did not end");
    }

    fn ready(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn frames_ready_together_leave_as_one() {
        let out = drive(vec![Some("a"), Some("b"), Some("c")]);
        assert_eq!(out, vec![ready("abc")]);
    }

    /// `n` pending polls.
    fn idle(n: u8) -> impl Iterator<Item = Option<&'static str>> {
        std::iter::repeat_n(None, usize::from(n))
    }

    #[test]
    fn a_burst_delivered_one_frame_every_few_turns_is_gathered() {
        // What a pooled upstream connection does: one chunk, then pending polls while its task
        // runs, then the next chunk.
        let mut script = vec![Some("a")];
        script.extend(idle(MAX_IDLE_TURNS - 1));
        script.push(Some("b"));
        script.extend(idle(MAX_IDLE_TURNS - 1));
        script.push(Some("c"));
        script.extend(idle(MAX_IDLE_TURNS + 1));
        let frames: Vec<String> = drive(script).into_iter().flatten().collect();
        assert_eq!(frames, ["abc"]);
    }

    #[test]
    fn a_lone_frame_leaves_after_the_idle_turns() {
        // Tokens apart in time: the pending poll that follows a frame and each idle turn are
        // one reschedule each, then the frame goes out as it is.
        let mut script = vec![Some("a")];
        script.extend(idle(MAX_IDLE_TURNS + 1));
        script.push(Some("b"));
        script.extend(idle(MAX_IDLE_TURNS + 1));
        let turns = usize::from(MAX_IDLE_TURNS);
        let mut expected = vec![None; turns];
        expected.push(ready("a"));
        expected.extend(vec![None; turns]);
        expected.push(ready("b"));
        assert_eq!(drive(script), expected);
    }

    #[test]
    fn the_gathering_is_bounded_in_turns() {
        let mut script = Vec::new();
        for _ in 0..40 {
            script.push(Some("x"));
            script.push(None);
        }
        let out = drive(script);
        let frames: Vec<String> = out.into_iter().flatten().collect();
        assert_eq!(frames.concat(), "x".repeat(40));
        assert!(frames.iter().all(|f| f.len() <= usize::from(MAX_TURNS) + 1));
        assert!(frames.len() > 1, "the gathering stopped at MAX_TURNS");
        assert!(frames.len() >= 40 / (usize::from(MAX_TURNS) + 1));
    }

    #[test]
    fn the_gathering_is_bounded_in_bytes() {
        let big: &'static str = Box::leak("y".repeat(MAX_BYTES / 2 + 1).into_boxed_str());
        let out = drive(vec![Some(big), Some(big), Some(big)]);
        let frames: Vec<String> = out.into_iter().flatten().collect();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].len(), 2 * big.len());
        assert_eq!(frames[1], big);
    }

    #[tokio::test]
    async fn nothing_is_lost_or_reordered() {
        let items: Vec<Bytes> = (0..100).map(|i| Bytes::from(format!("{i},"))).collect();
        let joined: Vec<u8> = items.iter().flat_map(|b| b.to_vec()).collect();
        let out: Vec<Bytes> = Coalesce::new(futures_util::stream::iter(items))
            .collect()
            .await;
        assert_eq!(out.concat(), joined);
    }
}
