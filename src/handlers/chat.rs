//! `POST /v1/chat/completions`.
//!
//! One path for every response: the request is read (bounded), decoded and checked, the backend
//! returns a stream of deltas, and that stream is either framed as SSE as it arrives or collected
//! into one JSON document. Errors before the first byte become a status and an OpenAI error body;
//! errors after it become an SSE error event and the stream ends without `[DONE]`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

use super::output::OutputFilter;
use super::record::{Outcome, RequestRecord};
use crate::api::body::{self, Body};
use crate::api::coalesce::Coalesce;
use crate::api::sse::{ChunkEncoder, Collector, FrameBuffer, DONE, KEEP_ALIVE};
use crate::api::types::{BackendEvent, ChatRequest, ChoiceDelta};
use crate::api::validate;
use crate::auth::Caller;
use crate::backends::EventStream;
use crate::error::Error;
use crate::guardrails::{Ctx, GuardrailsHandle};
use crate::idle_timer::IdleTimer;
use crate::layers::request_id::RequestId;
use crate::limits::estimate_prompt_tokens;
use crate::limits::headers::RateHeaders;
use crate::routing::TargetHeaders;
use crate::state::{AppState, Route};

// Response header names, built at compile time rather than parsed at every insert.
const POLICY_VERSION: HeaderName = HeaderName::from_static("x-sluice-policy-version");
const TARGET: HeaderName = HeaderName::from_static("x-sluice-target");
const MODEL_VERSION: HeaderName = HeaderName::from_static("x-sluice-model-version");
const ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
const PROMPT_ID: HeaderName = HeaderName::from_static("x-sluice-prompt-id");
const PROMPT_VERSION: HeaderName = HeaderName::from_static("x-sluice-prompt-version");

/// A request that passed every check and has a backend stream open.
struct Accepted {
    route: Route,
    request: ChatRequest,
    stream: EventStream,
    /// The gateway's own headers for the response.
    headers: GatewayHeaders,
    /// Output guardrails for this response.
    filter: OutputFilter,
}

/// What an accepted response says about how it was served: `x-ratelimit-*`, the target and the
/// model version. Every value is made once (per request or per target) and shared, not copied.
struct GatewayHeaders {
    rate: RateHeaders,
    target: TargetHeaders,
}

impl GatewayHeaders {
    fn apply_to(&self, h: &mut HeaderMap) {
        self.rate.apply_to(h);
        if let Some(v) = &self.target.name {
            h.insert(TARGET, v.clone());
        }
        if let Some(v) = &self.target.version {
            h.insert(MODEL_VERSION, v.clone());
        }
    }
}

/// Handles one chat request.
pub async fn handle<B>(state: Arc<AppState>, req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let start = Instant::now();
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .cloned()
        .unwrap_or_default();
    let mut record = RequestRecord::new(state.metrics.clone(), request_id.clone(), start);
    let policy = state
        .guardrails
        .as_ref()
        .and_then(GuardrailsHandle::version_header);
    let accepted = accept(&state, req, request_id, &mut record).await;
    // Every answer to a request built from a prompt names it, refusals included: a guardrail
    // block of rendered text is the prompt's to explain.
    let prompt = record.prompt.as_ref().map(|p| {
        (
            HeaderValue::from_str(&p.id).ok(),
            HeaderValue::from_str(&p.version).ok(),
        )
    });
    let mut resp = match accepted {
        Err(err) => {
            record.reject(&err);
            log_rejection(&err);
            err.into_response()
        }
        Ok(accepted) if accepted.request.is_stream() => stream(state, accepted, record),
        Ok(accepted) => collect(state, accepted, record).await,
    };
    if let Some(v) = policy {
        resp.headers_mut().insert(POLICY_VERSION, v);
    }
    if let Some((id, version)) = prompt {
        let h = resp.headers_mut();
        if let Some(id) = id {
            h.insert(PROMPT_ID, id);
        }
        if let Some(version) = version {
            h.insert(PROMPT_VERSION, version);
        }
    }
    resp
}

fn log_rejection(err: &Error) {
    match err {
        Error::Internal(detail) => tracing::error!(%detail, "internal error"),
        Error::UpstreamUnreachable { backend, detail } => {
            tracing::warn!(%backend, %detail, "upstream unreachable")
        }
        _ => {}
    }
}

/// Reads, decodes and checks the request, then opens the backend stream.
async fn accept<B>(
    state: &AppState,
    req: Request<B>,
    request_id: RequestId,
    record: &mut RequestRecord,
) -> Result<Accepted, Error>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        if !ct.starts_with("application/json") {
            return Err(Error::UnsupportedMediaType);
        }
    }
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller(None));
    record.key = caller.name().map(str::to_owned);
    let pin = match req.headers().get(TARGET) {
        None => None,
        Some(v) => Some(v.to_str().map(str::to_owned).map_err(|_| {
            Error::invalid(
                "x-sluice-target",
                "`x-sluice-target` must be a target name.",
            )
        })?),
    };
    if pin.is_some() && !caller.may_pin() {
        return Err(Error::Forbidden {
            message: "This API key may not pin a target: `x-sluice-target` needs `pin_target = true` on the key.".into(),
            code: "permission_denied",
        });
    }
    let limit = state.server.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Error::PayloadTooLarge { limit });
    }
    let pace = body::BodyPace {
        timeout: state.server.body_read_timeout,
        min_rate: state.server.body_min_bytes_per_second,
    };
    let bytes = body::read_request(req.into_body(), limit, pace, record.started())
        .await
        .inspect_err(|e| {
            if let Error::RequestTimeout { .. } = e {
                state
                    .metrics
                    .client_timeouts
                    .with_label_values(&["body"])
                    .inc();
            }
        })?;

    // A `prompt` is rendered into the body before it is decoded, so the rendered messages pass
    // every check below (limits, input guardrails) as the client's own would.
    let (bytes, prompt) = match crate::prompts::request::expand(&state.prompts.current(), &bytes)? {
        Some(e) => (e.body, Some(e.tag)),
        None => (bytes, None),
    };
    if let Some(p) = &prompt {
        state
            .metrics
            .prompt_requests
            .with_label_values(&[p.id.as_str(), p.version.as_str()])
            .inc();
    }
    record.prompt = prompt.clone();
    let mut request = validate::decode(&bytes)?;
    let route = state
        .live()
        .routes
        .get(&request.model)
        .cloned()
        .ok_or_else(|| Error::ModelNotFound(request.model.clone()))?;
    record.model = route.model.name.clone();
    record.stream = request.is_stream();
    if !caller.may_use(&route.model.name) {
        return Err(Error::Forbidden {
            message: format!("This API key may not use the model `{}`.", route.model.name),
            code: "model_not_allowed",
        });
    }
    validate::check(&mut request, &route.model.limits)?;
    let guard_ctx =
        Ctx::new(request_id.clone(), &route.model.name, caller.name()).with_prompt(prompt);
    if let Some(g) = &state.guardrails {
        request = check_input(g, request, &guard_ctx, bytes.len()).await?;
    }
    if state.shutdown.is_draining() {
        return Err(Error::ShuttingDown);
    }
    let prompt_tokens = prompt_tokens(state, &caller, &route, &request).await;
    let mut admission = state
        .limits
        .admit(caller.name(), &route.model.name, prompt_tokens)?;
    // Moved, not cloned: a clone allocates a copy of every header value.
    let rate = std::mem::take(&mut admission.headers);
    record.admission = Some(admission);

    let waited = Instant::now();
    let opened = route
        .router
        .open_pinned(&request, &request_id, pin.as_deref())
        .await;
    record.backend_wait += waited.elapsed();
    let opened = opened.inspect_err(|e| {
        record.upstream_error_counted = e.is_retryable();
        if let Error::UpstreamUnreachable { backend, .. }
        | Error::UpstreamTimeout { backend, .. }
        | Error::UpstreamStatus { backend, .. }
        | Error::UpstreamProtocol { backend, .. }
        | Error::UpstreamClosed { backend } = e
        {
            record.backend = backend.clone();
        }
    });
    let opened = opened.map_err(|e| redact_upstream_error(state, &guard_ctx, e))?;
    record.backend = opened.backend.clone();
    let headers = GatewayHeaders {
        rate,
        target: opened.target.headers().clone(),
    };
    let filter = OutputFilter::new(
        state
            .guardrails
            .as_ref()
            .map(|g| g.output_scanner(&guard_ctx)),
    )
    .report_to(
        route.router.clone(),
        opened.target.clone(),
        record.started(),
    );
    Ok(Accepted {
        route,
        request,
        stream: opened.stream,
        headers,
        filter,
    })
}

/// Input guardrails. Small requests are scanned in place (microseconds); large ones on a blocking
/// thread so a long scan never stalls the async workers. The size is the body's (`body_len`):
/// every text of the request is scanned, tool definitions and metadata included, and the body
/// bounds them all without a walk to count them.
async fn check_input(
    g: &GuardrailsHandle,
    mut request: ChatRequest,
    ctx: &Ctx,
    body_len: usize,
) -> Result<ChatRequest, Error> {
    const INLINE_BYTES: usize = 64 * 1024;
    if body_len <= INLINE_BYTES {
        g.check_input(&mut request, ctx)?;
        return Ok(request);
    }
    let (g, ctx) = (g.clone(), ctx.clone());
    tokio::task::spawn_blocking(move || g.check_input(&mut request, &ctx).map(|_| request))
        .await
        .map_err(|e| Error::Internal(format!("input guardrail task: {e}")))?
}

/// An upstream's own error message reaches the client only through the output policy: redacted
/// as an answer would be, or replaced by the gateway's own message when a rule blocks it.
fn redact_upstream_error(state: &AppState, ctx: &Ctx, mut err: Error) -> Error {
    let Some(g) = &state.guardrails else {
        return err;
    };
    err.redact_upstream_message(|message| {
        let mut scanner = g.output_scanner(ctx);
        let mut out = scanner.push(message);
        if out.blocked {
            return None;
        }
        let end = scanner.finish();
        if end.blocked {
            return None;
        }
        out.release.push_str(&end.release);
        Some(out.release)
    });
    err
}

/// Prompt tokens for admission: counted with the model's own tokenizer when a token limit applies
/// and the backend has one (on a blocking thread), estimated otherwise.
async fn prompt_tokens(
    state: &AppState,
    caller: &Caller,
    route: &Route,
    request: &ChatRequest,
) -> u64 {
    let estimate = estimate_prompt_tokens(request);
    if !state.limits.counts_tokens(caller.name(), &route.model.name) {
        return estimate;
    }
    let Some(backend) = route.router.counting_backend() else {
        return estimate;
    };
    let req = request.clone();
    tokio::task::spawn_blocking(move || backend.count_prompt_tokens(&req))
        .await
        .ok()
        .flatten()
        .unwrap_or(estimate)
}

fn new_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn carries_output(d: &ChoiceDelta) -> bool {
    d.content.as_deref().is_some_and(|c| !c.is_empty()) || !d.extra.is_empty()
}

/// Frames the backend's events as SSE while they arrive.
fn stream(state: Arc<AppState>, accepted: Accepted, mut record: RequestRecord) -> Response<Body> {
    let Accepted {
        route,
        request,
        stream: mut events,
        headers: gateway_headers,
        mut filter,
    } = accepted;
    let include_usage = request.include_usage();
    // The backend has what it needs of the request; a stream may stay open for minutes, and the
    // prompt need not stay in memory with it.
    drop(request);
    let encoder = ChunkEncoder::new(&new_id(), unix_now(), &route.model.name, include_usage);
    let keep_alive = state.server.sse_keep_alive;
    let shutdown = state.shutdown.clone();
    record.outcome = Outcome::ClientClosed;

    let frames = async_stream::stream! {
        let mut record = record;
        let stop = shutdown.hard_stopped();
        tokio::pin!(stop);
        let mut quiet = IdleTimer::new(keep_alive);
        let mut usage = None;
        let mut out = FrameBuffer::default();
        loop {
            let waited = Instant::now();
            let next = tokio::select! {
                biased;
                _ = &mut stop => {
                    let err = Error::ShuttingDown;
                    record.stream_error(&err);
                    yield err.to_sse_event();
                    break;
                }
                ev = events.next() => ev,
                _ = quiet.idle() => {
                    record.backend_wait += waited.elapsed();
                    yield Bytes::from_static(KEEP_ALIVE);
                    continue;
                }
            };
            // One clock read serves the keep-alive timer and the wait account.
            let now = Instant::now();
            quiet.touch_at(now);
            record.backend_wait += now.duration_since(waited);
            match next {
                Some(Ok(BackendEvent::Delta(d))) => {
                    let mut sent = now;
                    for d in filter.filter(d, &mut sent) {
                        if carries_output(&d) {
                            record.token(sent, &d);
                        }
                        encoder.delta_into(&d, out.room());
                        yield out.take();
                    }
                    if filter.blocked() {
                        // The answer ends here; the backend stream is dropped below, which
                        // stops the generation.
                        record.outcome = Outcome::Ok;
                        yield Bytes::from_static(DONE);
                        break;
                    }
                }
                Some(Ok(BackendEvent::Usage(u))) => usage = Some(u),
                Some(Err(err)) => {
                    record.stream_error(&err);
                    yield err.to_sse_event();
                    break;
                }
                None => {
                    for d in filter.end() {
                        encoder.delta_into(&d, out.room());
                        yield out.take();
                    }
                    record.usage = usage;
                    record.outcome = Outcome::Ok;
                    if let (true, Some(u)) = (include_usage, usage) {
                        encoder.usage_into(&u, out.room());
                        yield out.take();
                    }
                    yield Bytes::from_static(DONE);
                    break;
                }
            }
        }
        // Dropping the backend stream here (or when the client goes away and this generator is
        // dropped) cancels the upstream request or the local generation.
        drop(events);
    };

    // Events that are ready together (an upstream burst) leave in one write.
    let frames = Coalesce::new(frames).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(ACCEL_BUFFERING, HeaderValue::from_static("no"));
    gateway_headers.apply_to(h);
    resp
}

/// Collects the backend's events into one `chat.completion`.
async fn collect(
    state: Arc<AppState>,
    accepted: Accepted,
    mut record: RequestRecord,
) -> Response<Body> {
    let Accepted {
        route,
        request,
        stream: mut events,
        headers: gateway_headers,
        mut filter,
    } = accepted;
    // Not needed while the answer is collected (see `stream`).
    drop(request);
    let mut collector = Collector::new();
    let stop = state.shutdown.hard_stopped();
    tokio::pin!(stop);
    loop {
        let waited = Instant::now();
        let next = tokio::select! {
            biased;
            _ = &mut stop => Some(Err(Error::ShuttingDown)),
            ev = events.next() => ev,
        };
        let now = Instant::now();
        record.backend_wait += now.duration_since(waited);
        match next {
            Some(Ok(BackendEvent::Delta(d))) => {
                let mut sent = now;
                for d in filter.filter(d, &mut sent) {
                    if carries_output(&d) {
                        record.token(sent, &d);
                    }
                    collector.push(d);
                }
                if filter.blocked() {
                    break;
                }
            }
            Some(Ok(BackendEvent::Usage(u))) => collector.set_usage(u),
            Some(Err(err)) => {
                record.reject(&err);
                let mut resp = err.into_response();
                gateway_headers.apply_to(resp.headers_mut());
                return resp;
            }
            None => {
                for d in filter.end() {
                    collector.push(d);
                }
                break;
            }
        }
    }
    drop(events);
    record.usage = collector.usage();
    record.outcome = Outcome::Ok;
    let json = collector.finish(&new_id(), unix_now(), &route.model.name);
    let mut resp = body::json_response(StatusCode::OK, json);
    gateway_headers.apply_to(resp.headers_mut());
    resp
}
