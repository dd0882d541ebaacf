//! The service an HTTP/1.1 connection calls, wrapped around the shared one.
//!
//! A request refused before its body was read to the end (408: the body was too slow) leaves the
//! connection with no way to find the next request's head: hyper closes it after the response.
//! The response says so with `Connection: close`, so a client knows not to send another request
//! on it. HTTP/2 gets none of this: a stream ends on its own, and the header is illegal there.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;

/// Wraps the service of one HTTP/1.1 connection.
#[derive(Debug, Clone)]
pub struct H1Service<S> {
    inner: S,
}

pin_project! {
    /// The inner response, marked `Connection: close` when it ends the connection.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
    }
}

// === impl H1Service ===

impl<S> H1Service<S> {
    pub fn new(inner: S) -> Self {
        H1Service { inner }
    }
}

impl<S, B, R> hyper::service::Service<Request<B>> for H1Service<S>
where
    S: hyper::service::Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn call(&self, req: Request<B>) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(req),
        }
    }
}

// === impl ResponseFuture ===

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut resp = std::task::ready!(self.project().inner.poll(cx))?;
        if resp.status() == StatusCode::REQUEST_TIMEOUT {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(resp))
    }
}
