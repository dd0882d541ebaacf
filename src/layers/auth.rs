//! Client authentication. Every API request except the probes and `/metrics` must carry a known
//! key when keys are configured; the caller is put in the request's extensions for the model
//! permission check, rate limits and logs. A refusal answers here, without calling the inner
//! service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::api::body::Body;
use crate::layers::request_id::RequestId;
use crate::state::AppState;

/// Authenticates API requests against the gateway's key ring.
#[derive(Clone)]
pub struct AuthLayer {
    state: Arc<AppState>,
}

/// The service made by [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    state: Arc<AppState>,
}

pin_project! {
    /// Either the inner service's answer or an immediate refusal.
    #[project = ResponseProj]
    pub enum ResponseFuture<F> {
        Inner { #[pin] inner: F },
        Refused { response: Option<Response<Body>> },
    }
}

/// Paths that answer without a key: orchestrators and scrapers do not hold client keys.
fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

// === impl AuthLayer ===

impl AuthLayer {
    /// A layer checking keys from `state`.
    pub fn new(state: Arc<AppState>) -> Self {
        AuthLayer { state }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            state: self.state.clone(),
        }
    }
}

// === impl AuthService ===

impl<S, B> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if is_public(req.uri().path()) {
            return ResponseFuture::Inner {
                inner: self.inner.call(req),
            };
        }
        match self.state.live().keys.authenticate(req.headers()) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                ResponseFuture::Inner {
                    inner: self.inner.call(req),
                }
            }
            Err(err) => {
                // Which one, never what was sent: the key itself stays out of logs and metrics.
                let reason = if req.headers().contains_key(AUTHORIZATION) {
                    "unknown_key"
                } else {
                    "missing_key"
                };
                self.state
                    .metrics
                    .auth_refused
                    .with_label_values(&[reason])
                    .inc();
                let request_id = req.extensions().get::<RequestId>().map(RequestId::as_str);
                tracing::info!(
                    target: "sluice::access",
                    request_id,
                    path = req.uri().path(),
                    status = 401,
                    outcome = "rejected",
                    error = reason,
                    "request refused"
                );
                ResponseFuture::Refused {
                    response: Some(err.into_response()),
                }
            }
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
        match self.project() {
            ResponseProj::Inner { inner } => inner.poll(cx),
            ResponseProj::Refused { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
        }
    }
}
