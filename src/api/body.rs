//! The one response body type the server sends, constructors for it, and the read of a request
//! body, bounded in size and in time.
//!
//! A client that sends its head and then trickles the body (a byte a second), or declares a
//! `content-length` it never sends, would otherwise hold its connection and an in-flight slot for
//! as long as it likes: twenty of them fill `max_connections = 20`. So a body must keep pace
//! ([`BodyPace`]), or it is answered 408 ([`Error::RequestTimeout`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use tokio::time::{Instant, Sleep};

use crate::error::Error;

/// Every response body. Errors never travel inside the body: a failed stream ends with an SSE error
/// event, so the body itself is infallible.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// How fast a client must send a request body (`server.body_read_timeout`,
/// `server.body_min_bytes_per_second`). Two rules, both needed:
/// - the body may not go quiet for longer than `timeout`, before its first bytes or between two
///   reads (nginx's `client_body_timeout`): this ends a body cut short of its `content-length`;
/// - after a grace of `timeout`, the body must average `min_rate` bytes a second, that is arrive
///   whole by `start + timeout + received / min_rate` (Apache's `mod_reqtimeout` `MinRate`): this
///   ends a trickle, each of whose gaps is short. The rate counts from `start`, so a body that
///   came quickly has earned time it may later spend waiting, but never more than `timeout` at once.
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    pub timeout: Duration,
    /// Bytes per second; 0 leaves only the gap rule.
    pub min_rate: u64,
}

/// The body read so far: the first chunk as it came, later ones gathered behind it.
struct Gathered {
    first: Bytes,
    more: Option<BytesMut>,
    len: usize,
    /// What the body said its size is, to size the gathering buffer once.
    hint: usize,
}

/// A body holding one buffer.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A JSON response with the given status.
pub fn json_response(status: http::StatusCode, json: impl Into<Bytes>) -> http::Response<Body> {
    let mut resp = http::Response::new(full(json));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Reads a whole request body that began at `started`: more than `limit` bytes is a 413, a body
/// that does not keep `pace` a 408, a failed read a 400.
///
/// A body that is already there when it is read (the usual case: it came with the head) costs no
/// timer and no clock read; the timer is armed the first time the read has to wait, and moved
/// only when it fires before the deadline the body has earned since.
pub async fn read_request<B>(
    body: B,
    limit: usize,
    pace: BodyPace,
    started: std::time::Instant,
) -> Result<Bytes, Error>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let started = Instant::from_std(started);
    let mut body = std::pin::pin!(body);
    let mut timer = std::pin::pin!(None::<Sleep>);
    let hint = usize::try_from(body.size_hint().lower()).unwrap_or(limit);
    let mut read = Gathered {
        first: Bytes::new(),
        more: None,
        len: 0,
        hint: hint.min(limit),
    };
    // When the body last went quiet: unset while it is delivering.
    let mut quiet_since = None;
    std::future::poll_fn(|cx| loop {
        match body.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue; // trailers say nothing a chat request needs
                };
                if data.is_empty() {
                    continue;
                }
                if data.len() > limit - read.len {
                    return Poll::Ready(Err(Error::PayloadTooLarge { limit }));
                }
                read.push(data);
                quiet_since = None;
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Error::BodyRead(e.to_string()))),
            Poll::Ready(None) => return Poll::Ready(Ok(read.take())),
            Poll::Pending => {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                let deadline = pace.deadline(started, since, read.len);
                return poll_deadline(timer.as_mut(), cx, deadline);
            }
        }
    })
    .await
}

/// Pending until `deadline`, arming `timer` the first time; a timer armed for an earlier deadline
/// (the body has made progress since) is moved instead of answering.
fn poll_deadline<T>(
    mut timer: Pin<&mut Option<Sleep>>,
    cx: &mut Context<'_>,
    deadline: Instant,
) -> Poll<Result<T, Error>> {
    if timer.is_none() {
        timer.set(Some(tokio::time::sleep_until(deadline)));
    }
    let Some(mut sleep) = timer.as_pin_mut() else {
        return Poll::Pending;
    };
    loop {
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if Instant::now() >= deadline {
            return Poll::Ready(Err(Error::RequestTimeout { part: "body" }));
        }
        sleep.as_mut().reset(deadline);
    }
}

// === impl BodyPace ===

impl BodyPace {
    /// When a body that has delivered `received` bytes and has been quiet since `quiet_since`
    /// times out. It only ever moves later as the body goes on.
    fn deadline(&self, started: Instant, quiet_since: Instant, received: usize) -> Instant {
        let gap = quiet_since + self.timeout;
        if self.min_rate == 0 {
            return gap;
        }
        let earned_ns = received as u128 * 1_000_000_000 / u128::from(self.min_rate);
        let earned = Duration::from_nanos(u64::try_from(earned_ns).unwrap_or(u64::MAX));
        match (started + self.timeout).checked_add(earned) {
            Some(rate) => gap.min(rate),
            None => gap,
        }
    }
}

// === impl Gathered ===

impl Gathered {
    fn push(&mut self, data: Bytes) {
        self.len += data.len();
        if self.first.is_empty() && self.more.is_none() {
            self.first = data;
            return;
        }
        let first = &self.first;
        let hint = self.hint;
        let more = self.more.get_or_insert_with(|| {
            let mut more = BytesMut::with_capacity(hint.max(first.len() + data.len()));
            more.extend_from_slice(first);
            more
        });
        more.extend_from_slice(&data);
    }

    fn take(&mut self) -> Bytes {
        match self.more.take() {
            Some(more) => more.freeze(),
            None => std::mem::take(&mut self.first),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    const PACE: BodyPace = BodyPace {
        timeout: Duration::from_millis(100),
        min_rate: 1000,
    };

    /// A body whose frames the test hands over one at a time.
    fn channel_body() -> (
        tokio::sync::mpsc::Sender<Bytes>,
        impl http_body::Body<Data = Bytes, Error = Infallible>,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let frames = async_stream::stream! {
            while let Some(b) = rx.recv().await {
                yield Ok::<_, Infallible>(http_body::Frame::data(b));
            }
        };
        (tx, StreamBody::new(frames))
    }

    #[tokio::test]
    async fn a_body_that_is_there_is_read_whole_across_frames() {
        let (tx, body) = channel_body();
        let reading = tokio::spawn(read_request(body, 1024, PACE, std::time::Instant::now()));
        for part in ["{\"a\":", "1", "}"] {
            tx.send(Bytes::from(part)).await.unwrap();
        }
        drop(tx);
        assert_eq!(reading.await.unwrap().unwrap(), "{\"a\":1}");
    }

    #[tokio::test]
    async fn more_than_the_limit_is_413() {
        let (tx, body) = channel_body();
        let reading = tokio::spawn(read_request(body, 4, PACE, std::time::Instant::now()));
        tx.send(Bytes::from("abc")).await.unwrap();
        tx.send(Bytes::from("de")).await.unwrap();
        let err = reading.await.unwrap().unwrap_err();
        assert!(
            matches!(err, Error::PayloadTooLarge { limit: 4 }),
            "{err:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_goes_quiet_times_out_after_the_gap() {
        let (tx, body) = channel_body();
        let started = std::time::Instant::now();
        let t0 = Instant::now();
        let reading = tokio::spawn(read_request(body, 1 << 20, PACE, started));
        tx.send(Bytes::from(vec![b' '; 500])).await.unwrap();
        // 500 bytes earned 500 ms at 1000 B/s, but no wait may be longer than 100 ms.
        let err = reading.await.unwrap().unwrap_err();
        assert!(
            matches!(err, Error::RequestTimeout { part: "body" }),
            "{err:?}"
        );
        let waited = t0.elapsed();
        assert!(
            waited >= PACE.timeout && waited < PACE.timeout * 2,
            "{waited:?}"
        );
        assert_eq!(err.status(), http::StatusCode::REQUEST_TIMEOUT);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_with_short_gaps_times_out_on_the_rate() {
        let (tx, body) = channel_body();
        let t0 = Instant::now();
        let reading = tokio::spawn(read_request(body, 1 << 20, PACE, std::time::Instant::now()));
        // 10 bytes every 50 ms is 200 B/s: each gap is half the timeout, the rate a fifth of the
        // minimum. The deadline is 100 ms + received / 1000 B/s: passed after about 105 ms.
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if tx.send(Bytes::from_static(b"0123456789")).await.is_err() {
                    return;
                }
            }
        });
        let err = reading.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::RequestTimeout { .. }), "{err:?}");
        let waited = t0.elapsed();
        assert!(waited < Duration::from_millis(200), "{waited:?}");
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_body_above_the_rate_is_read() {
        let (tx, body) = channel_body();
        let reading = tokio::spawn(read_request(body, 1 << 20, PACE, std::time::Instant::now()));
        // 100 bytes every 50 ms is 2000 B/s for a second: above the rate, each gap within 100 ms.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send(Bytes::from(vec![b' '; 100])).await.unwrap();
        }
        drop(tx);
        assert_eq!(reading.await.unwrap().unwrap().len(), 2000);
    }

    #[test]
    fn the_deadline_only_moves_later() {
        let start = Instant::now();
        let mut last = PACE.deadline(start, start, 0);
        for step in 1..50u64 {
            let quiet = start + Duration::from_millis(step * 7);
            let d = PACE.deadline(start, quiet, (step * 3) as usize);
            assert!(d >= last);
            last = d;
        }
        let unlimited = BodyPace {
            min_rate: 0,
            ..PACE
        };
        assert_eq!(
            unlimited.deadline(start, start, usize::MAX),
            start + PACE.timeout
        );
        assert_eq!(
            BodyPace {
                min_rate: 1,
                ..PACE
            }
            .deadline(start, start, usize::MAX),
            start + PACE.timeout
        );
    }
}
