//! The in-flight gauge. A request counts from the moment it enters until its response body is
//! finished or dropped — for a stream that is when the last event is sent or the client goes away,
//! not when the headers leave — so the gauge shows the streams actually open.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::api::body::Body;
use crate::state::{InFlight, InFlightGuard};

/// Counts requests in [`InFlight`] until their bodies end.
#[derive(Clone)]
pub struct InFlightLayer {
    in_flight: InFlight,
}

/// The service made by [`InFlightLayer`].
#[derive(Clone)]
pub struct InFlightService<S> {
    inner: S,
    in_flight: InFlight,
}

pin_project! {
    /// Moves the guard into the response body once the response is ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlightGuard>,
    }
}

pin_project! {
    /// A body that holds the in-flight guard until it is dropped.
    pub struct GuardedBody {
        #[pin]
        inner: Body,
        guard: InFlightGuard,
    }
}

// === impl InFlightLayer ===

impl InFlightLayer {
    /// A layer counting into `in_flight`.
    pub fn new(in_flight: InFlight) -> Self {
        InFlightLayer { in_flight }
    }
}

impl<S> Layer<S> for InFlightLayer {
    type Service = InFlightService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlightService {
            inner,
            in_flight: self.in_flight.clone(),
        }
    }
}

// === impl InFlightService ===

impl<S, B> Service<Request<B>> for InFlightService<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let guard = self.in_flight.enter();
        ResponseFuture {
            inner: self.inner.call(req),
            guard: Some(guard),
        }
    }
}

// === impl ResponseFuture ===

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        Poll::Ready(resp.map(|resp| match this.guard.take() {
            Some(guard) => resp.map(|inner| GuardedBody { inner, guard }.boxed_unsync()),
            None => resp,
        }))
    }
}

// === impl GuardedBody ===

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
