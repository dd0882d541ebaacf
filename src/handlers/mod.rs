//! Request handlers and the router that picks one.

pub mod admin;
pub mod chat;
pub mod output;
pub mod record;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::json;

use crate::api::body::{self, Body};
use crate::auth::Caller;
use crate::backends::Readiness;
use crate::error::Error;
use crate::state::AppState;

/// Which listener a router serves: the API, or the admin listener (metrics and probes only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Api,
    Admin,
}

/// The innermost service: maps method and path to a handler.
#[derive(Clone)]
pub struct Router {
    state: Arc<AppState>,
    listener: Listener,
}

impl Router {
    /// A router for `listener`.
    pub fn new(state: Arc<AppState>, listener: Listener) -> Self {
        Router { state, listener }
    }
}

impl<B> tower::Service<Request<B>> for Router
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let state = self.state.clone();
        let listener = self.listener;
        Box::pin(async move { Ok(route(state, listener, req).await) })
    }
}

async fn route<B>(state: Arc<AppState>, listener: Listener, req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let api = listener == Listener::Api;
    let metrics_here = listener == Listener::Admin || state.metrics_on_api;
    if !api && path.starts_with("/admin/") {
        return Box::pin(admin::handle(&state, req)).await;
    }
    let allowed: &[Method] = match path.as_str() {
        "/v1/chat/completions" | "/chat/completions" if api => &[Method::POST],
        "/v1/models" | "/models" if api => &[Method::GET],
        "/healthz" | "/readyz" => &[Method::GET, Method::HEAD],
        "/metrics" if metrics_here => &[Method::GET],
        _ => {
            return Error::NotFound {
                method: method.to_string(),
                path,
            }
            .into_response()
        }
    };
    if !allowed.contains(&method) {
        let mut resp = Error::MethodNotAllowed {
            method: method.to_string(),
            path,
        }
        .into_response();
        let allow = allowed
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        if let Ok(v) = HeaderValue::from_str(&allow) {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        return resp;
    }
    match path.as_str() {
        // Boxed: the chat handler's future is several kilobytes, and inline it would make this
        // future (which the router boxes and moves for every request, whatever its path) as
        // large.
        "/v1/chat/completions" | "/chat/completions" => Box::pin(chat::handle(state, req)).await,
        "/v1/models" | "/models" => {
            let caller = req
                .extensions()
                .get::<Caller>()
                .cloned()
                .unwrap_or(Caller(None));
            models(&state, &caller)
        }
        "/healthz" => body::json_response(StatusCode::OK, r#"{"status":"ok"}"#),
        "/readyz" => readyz(&state).await,
        _ => metrics(&state),
    }
}

fn models(state: &AppState, caller: &Caller) -> Response<Body> {
    let live = state.live();
    let data: Vec<_> = live
        .routes
        .values()
        .filter(|r| caller.may_use(&r.model.name))
        .map(|r| {
            json!({
                "id": r.model.name,
                "object": "model",
                "created": 0,
                "owned_by": "sluice",
                "owner": r.model.registry.owner,
                "approved_by": r.model.registry.approved_by,
                "approved_at": r.model.registry.approved_at,
                "version": r.model.registry.version,
                "description": r.model.registry.description,
                "enabled": r.router.is_enabled(),
                "targets": r.router.targets().iter().map(|t| json!({
                    "name": t.name(),
                    "version": t.version,
                    "weight": t.weight(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let body = json!({ "object": "list", "data": data });
    body::json_response(StatusCode::OK, body.to_string())
}

async fn readyz(state: &AppState) -> Response<Body> {
    if state.shutdown.is_draining() {
        return body::json_response(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#);
    }
    let live = state.live();
    let checks = futures_util::future::join_all(
        live.backends
            .iter()
            .map(|(name, b)| async move { (name.clone(), b.readiness().await) }),
    )
    .await;
    let mut ready = true;
    let mut backends = serde_json::Map::new();
    for (name, r) in checks {
        let v = match r {
            Readiness::Ready => json!({"ready": true}),
            Readiness::NotReady(reason) => {
                ready = false;
                json!({"ready": false, "reason": reason})
            }
        };
        backends.insert(name, v);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "backends": backends,
    });
    body::json_response(status, body.to_string())
}

fn metrics(state: &AppState) -> Response<Body> {
    let mut resp = Response::new(body::full(state.metrics.render()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
