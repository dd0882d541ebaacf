//! `x-request-id`: taken from the client when it sent a sane one, generated otherwise, stored in the
//! request's extensions for handlers and logs, and echoed on every response — so one id ties a
//! client's report to the gateway's log line and the upstream's.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderName, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

pub use crate::request_id::RequestId;

/// The header name.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Adds [`RequestId`] to requests and echoes it on responses.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

/// The service made by [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

pin_project! {
    /// Sets the header on the inner service's response.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<RequestId>,
    }
}

// === impl RequestIdLayer ===

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

// === impl RequestIdService ===

impl<S, B, R> Service<Request<B>> for RequestIdService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = req
            .headers()
            .get(HEADER)
            .and_then(RequestId::from_client)
            .unwrap_or_else(RequestId::generate);
        req.extensions_mut().insert(id.clone());
        ResponseFuture {
            inner: self.inner.call(req),
            id: Some(id),
        }
    }
}

// === impl ResponseFuture ===

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(resp)) => resp,
        };
        if let Some(id) = this.id.take() {
            resp.headers_mut().insert(HEADER, id.header_value().clone());
        }
        Poll::Ready(Ok(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    async fn echo_ext(req: Request<()>) -> Result<Response<String>, Infallible> {
        let id = req.extensions().get::<RequestId>().cloned().unwrap();
        Ok(Response::new(id.to_string()))
    }

    #[tokio::test]
    async fn keeps_a_sane_client_id() {
        let svc = RequestIdLayer.layer(tower::service_fn(echo_ext));
        let req = Request::builder()
            .header(HEADER, "abc-123")
            .body(())
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.headers()[HEADER], "abc-123");
        assert_eq!(resp.body(), "abc-123");
    }

    #[tokio::test]
    async fn replaces_a_missing_or_hostile_id() {
        for bad in [None, Some("has space"), Some("")] {
            let svc = RequestIdLayer.layer(tower::service_fn(echo_ext));
            let mut b = Request::builder();
            if let Some(v) = bad {
                b = b.header(HEADER, v);
            }
            let resp = svc.oneshot(b.body(()).unwrap()).await.unwrap();
            let got = resp.headers()[HEADER].to_str().unwrap().to_owned();
            assert_eq!(got.len(), 32, "{bad:?} -> {got}");
            assert_eq!(resp.body(), &got);
        }
    }
}
