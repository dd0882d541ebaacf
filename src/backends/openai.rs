//! Remote OpenAI-compatible endpoints.
//!
//! Every request goes upstream as a stream (`stream: true`, `stream_options.include_usage: true`)
//! whatever the client asked for: the gateway has one path for responses, a stream of deltas that
//! the handler either forwards as SSE or collects into one JSON document. Fields the gateway does
//! not interpret travel in [`ChatRequest::extra`](crate::api::types::ChatRequest::extra) and reach the upstream unchanged; only `model`
//! is rewritten to the configured upstream name.
//!
//! Each of the four deadlines in [`OpenAiConfig`] maps to its own [`TimeoutPhase`], so a
//! dashboard can tell a dead host (connect) from an overloaded one (first byte) from a stalled
//! generation (idle). Failures before the response headers are `Err` from [`Backend::chat`] (the
//! handler can still answer with a status, and routing can try elsewhere); failures after them are
//! `Err` items that end the stream.
//!
//! An upstream stream is complete once `data: [DONE]` arrived or every choice (`n` of them)
//! delivered a `finish_reason`: after that the answer is whole, and what follows is at most the
//! usage chunk and `[DONE]`. So a stream that then ends, fails or stalls ends cleanly (usage the
//! upstream did not send is counted by the gateway), and once the usage chunk arrived it ends at
//! once, without waiting for a `[DONE]` that may never come. A stream that ends or fails before
//! it is complete is an error, never a clean end: a truncated answer must not look like a whole
//! one.
//!
//! The client's `max_tokens` is held even where the upstream ignores it ([`super::token_cap`]).
//!
//! The stream owns the upstream response body, so dropping it (a client that went away) drops the
//! upstream request at once: hyper closes an HTTP/1 connection whose body was not read to the end,
//! and resets an HTTP/2 stream.
//!
//! The API key lives in a header value marked sensitive, and in a copy kept to take it out of an
//! upstream's error message (an upstream that refuses a key often quotes it); neither `Debug`,
//! logs nor errors ever show it.
//!
//! An error status's body is read up to [`MAX_ERROR_BODY`] and kept only as the `error` object it
//! parses to ([`UpstreamError`]), never as bytes: a body over that size, cut short, or not in
//! OpenAI's shape is dropped, and the client gets the gateway's own error for the status (see
//! [`crate::error`]).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::{Map, Value};
use smallvec::SmallVec;
use tokio::time::{Instant, Sleep};

use super::http1_pool::{DrivenBody, Http1Pool, SendError};
use super::sse_parser::{Event, SseParser, DEFAULT_MAX_EVENT_BYTES};
use super::token_cap::{cap_completion, TokenCap};
use super::wire_chunk::{ChunkReader, WireChunk};
use super::wire_delta::WireDelta;
use super::{Backend, BackendRequest, ChatFuture, EventStream, Readiness};
use crate::api::types::{BackendEvent, ChoiceDelta, StreamOptions};
use crate::config::OpenAiConfig;
use crate::error::{Error, Result, TimeoutPhase, UpstreamError};
use crate::idle_timer::IdleTimer;
use crate::limits::estimate_prompt_tokens;

/// Upstream correlation, built at compile time rather than parsed per request.
const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
/// The most of an upstream error body read; a longer one is not parsed (its end is not seen), and
/// the rest of it is never read.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// The largest non-streaming completion accepted from an upstream that ignored `stream: true`.
const MAX_JSON_BODY: usize = 16 * 1024 * 1024;
/// How long a finished stream may take to deliver the end of its HTTP body, so that its connection
/// goes back to the pool instead of being closed.
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// The longest a readiness probe waits for a TCP connection.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A remote OpenAI-compatible backend.
pub struct OpenAiBackend {
    name: Arc<str>,
    config: OpenAiConfig,
    /// Pooled connections, shared by every request to this backend.
    transport: Transport,
    /// `{base_url}/chat/completions`, built once.
    chat_uri: Uri,
    /// `Bearer <key>`, marked sensitive so it is never printed nor HPACK-indexed.
    auth: Option<HeaderValue>,
    /// The key itself, taken out of upstream error messages.
    key: Option<Arc<str>>,
    /// Host and port probed by [`Backend::readiness`].
    probe: (String, u16),
    max_event_bytes: usize,
}

/// How requests reach the upstream.
#[derive(Clone)]
enum Transport {
    /// hyper's pooled client, each connection a task of its own: TLS (with ALPN) and HTTP/2.
    Shared(Box<HttpClient>),
    /// Plain HTTP/1.1, each connection driven by the request that holds it.
    Driven(Http1Pool),
}

/// Why an upstream body could not be read, from either transport.
type UpstreamBodyError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream response body from either transport.
enum UpstreamBody {
    Shared(Incoming),
    Driven(DrivenBody),
}

/// The events of one upstream SSE response.
struct SseEvents {
    backend: Arc<str>,
    /// The response body; `None` once the stream ended or failed (dropping it aborts the request).
    body: Option<UpstreamBody>,
    parser: SseParser,
    /// Decodes each event's chunk, skipping the beginning the stream's chunks repeat.
    chunks: ChunkReader,
    /// Events decoded but not yet handed out.
    pending: VecDeque<BackendEvent>,
    /// The failure to report once `pending` is empty.
    failure: Option<Error>,
    /// `data: [DONE]` was seen, or the answer is complete (see the module doc): the stream ends
    /// cleanly after `pending`.
    done: bool,
    /// How many choices the answer has (`n`).
    choices: u32,
    /// The choices below `choices` that delivered a finish reason, each once.
    choices_finished: SmallVec<[u32; 1]>,
    /// Nothing more will be yielded.
    finished: bool,
    idle: IdleTimer,
    total: Pin<Box<Sleep>>,
}

/// Why reading a whole body failed.
enum ReadError {
    Timeout(TimeoutPhase),
    TooLarge,
    Read(UpstreamBodyError),
}

// === impl OpenAiBackend ===

impl OpenAiBackend {
    /// Builds the pooled client. Fails on a config no request could use (an API key that is not
    /// a valid header value); the message never contains the key.
    pub fn new(name: &str, config: OpenAiConfig) -> anyhow::Result<Self> {
        let chat_uri = chat_uri(&config.base_url)
            .with_context(|| format!("backend `{name}`: base_url cannot be extended"))?;
        let auth = match config.api_key.as_deref() {
            None => None,
            Some(key) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                    anyhow::anyhow!(
                        "backend `{name}`: api_key holds characters not allowed in a header"
                    )
                })?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let https = config.base_url.scheme_str() == Some("https");
        let host = config
            .base_url
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            .ok_or_else(|| anyhow::anyhow!("backend `{name}`: base_url has no host"))?;
        let port = config
            .base_url
            .port_u16()
            .unwrap_or(if https { 443 } else { 80 });

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let builder = HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .context("TLS setup")?
            .https_or_http();
        // ALPN offers h2 (and http/1.1 unless h2 is forced); over plain http, `http2_only`
        // means h2c with prior knowledge.
        let connector = if config.http2_only {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.enable_http1().enable_http2().wrap_connector(http)
        };
        let transport = if !https && !config.http2_only {
            Transport::Driven(Http1Pool::new(
                host.clone(),
                port,
                config.connect_timeout,
                config.pool_idle_timeout,
                config.pool_max_idle_per_host,
            ))
        } else {
            Transport::Shared(Box::new(
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(config.pool_idle_timeout)
                    .pool_max_idle_per_host(config.pool_max_idle_per_host)
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .http2_only(config.http2_only)
                    .build(connector),
            ))
        };

        Ok(OpenAiBackend {
            name: Arc::from(name),
            key: config.api_key.as_deref().map(Arc::from),
            config,
            transport,
            chat_uri,
            auth,
            probe: (host, port),
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
        })
    }

    /// Changes the bound on one upstream SSE event (default 1 MiB).
    pub fn with_max_event_bytes(mut self, max: usize) -> Self {
        self.max_event_bytes = max;
        self
    }

    /// The upstream request: the client's body with `model` and streaming rewritten.
    fn upstream_request(&self, req: BackendRequest) -> Result<Request<Bytes>> {
        let BackendRequest {
            model,
            mut request,
            request_id,
        } = req;
        request.model = model.upstream_model.clone();
        request.stream = Some(true);
        let mut options = request.stream_options.take().unwrap_or(StreamOptions {
            include_usage: None,
            extra: Map::new(),
        });
        options.include_usage = Some(true);
        request.stream_options = Some(options);
        let body = serde_json::to_vec(&request)
            .map_err(|e| Error::Internal(format!("serialising the upstream request: {e}")))?;

        let mut builder = Request::post(self.chat_uri.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(ACCEPT, HeaderValue::from_static("text/event-stream"));
        if let Some(auth) = &self.auth {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        if !request_id.as_str().is_empty() {
            builder = builder.header(X_REQUEST_ID, request_id.header_value().clone());
        }
        builder
            .body(Bytes::from(body))
            .map_err(|e| Error::Internal(format!("building the upstream request: {e}")))
    }
}

impl fmt::Debug for OpenAiBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiBackend")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Backend for OpenAiBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "openai"
    }

    fn chat(&self, req: BackendRequest) -> ChatFuture {
        let choices = req.request.n.unwrap_or(1).max(1);
        let cap = req
            .request
            .requested_max_tokens()
            .map(|limit| (limit, estimate_prompt_tokens(&req.request)));
        let request = self.upstream_request(req);
        let transport = self.transport.clone();
        let backend = self.name.clone();
        let config = &self.config;
        let (first_byte, idle, total) = (
            config.first_byte_timeout,
            config.idle_timeout,
            config.total_timeout,
        );
        let max_event_bytes = self.max_event_bytes;
        let key = self.key.clone();
        Box::pin(async move {
            let request = request?;
            let started = Instant::now();
            let total_deadline = started + total;
            let (head_deadline, head_phase) = if first_byte < total {
                (started + first_byte, TimeoutPhase::FirstByte)
            } else {
                (total_deadline, TimeoutPhase::Total)
            };
            let response = tokio::time::timeout_at(head_deadline, transport.send(request)).await;
            let (parts, body) = match response {
                Err(_) => return Err(timeout(&backend, head_phase)),
                Ok(Err(e)) => return Err(e.into_error(&backend)),
                Ok(Ok(response)) => response.into_parts(),
            };
            let content_type = parts.headers.get(CONTENT_TYPE).cloned();

            if !parts.status.is_success() {
                return Err(status_error(
                    &backend,
                    parts.status,
                    body,
                    key.as_deref(),
                    idle,
                    total_deadline,
                )
                .await);
            }
            if is_json(content_type.as_ref()) {
                let bytes = read_body(body, MAX_JSON_BODY, idle, total_deadline)
                    .await
                    .map_err(|e| match e {
                        ReadError::Timeout(phase) => timeout(&backend, phase),
                        ReadError::TooLarge => protocol(&backend, "the completion is too large"),
                        ReadError::Read(e) => body_error(&backend, &e),
                    })?;
                let mut events = completion_events(&bytes)
                    .ok_or_else(|| protocol(&backend, "the completion is not valid JSON"))?;
                if let Some((limit, _)) = cap {
                    cap_completion(&mut events, limit);
                }
                let stream: EventStream = Box::pin(futures_util::stream::iter(
                    events.into_iter().map(Ok::<_, Error>),
                ));
                return Ok(stream);
            }
            let stream: EventStream = Box::pin(SseEvents::new(
                backend,
                Some(body),
                max_event_bytes,
                choices,
                idle,
                total_deadline,
            ));
            Ok(match cap {
                Some((limit, prompt_estimate)) => {
                    Box::pin(TokenCap::new(stream, limit, choices, prompt_estimate))
                }
                None => stream,
            })
        })
    }

    fn readiness(&self) -> Pin<Box<dyn Future<Output = Readiness> + Send + '_>> {
        Box::pin(async move {
            let (host, port) = (&self.probe.0, self.probe.1);
            let wait = self.config.connect_timeout.min(READINESS_TIMEOUT);
            match tokio::time::timeout(wait, tokio::net::TcpStream::connect((host.as_str(), port)))
                .await
            {
                Ok(Ok(_)) => Readiness::Ready,
                Ok(Err(e)) => Readiness::NotReady(format!("upstream unreachable ({})", e.kind())),
                Err(_) => Readiness::NotReady("upstream unreachable (connect timed out)".into()),
            }
        })
    }
}

// === impl Transport ===

/// A failure before the response head, from either transport.
enum SendFailure {
    Shared(hyper_util::client::legacy::Error),
    Driven(SendError),
}

impl Transport {
    async fn send(
        self,
        request: Request<Bytes>,
    ) -> std::result::Result<Response<UpstreamBody>, SendFailure> {
        match self {
            Transport::Shared(client) => client
                .request(request.map(Full::new))
                .await
                .map(|r| r.map(UpstreamBody::Shared))
                .map_err(SendFailure::Shared),
            Transport::Driven(pool) => pool
                .send(request)
                .await
                .map(|r| r.map(UpstreamBody::Driven))
                .map_err(SendFailure::Driven),
        }
    }
}

impl SendFailure {
    fn into_error(self, backend: &str) -> Error {
        match self {
            SendFailure::Shared(e) => request_error(backend, &e, e.is_connect()),
            SendFailure::Driven(SendError::Malformed(e)) => {
                tracing::debug!(backend, error = %e, "upstream response is not HTTP/1.1");
                protocol(backend, "the upstream sent an invalid HTTP response")
            }
            SendFailure::Driven(e) => {
                let connect = matches!(e, SendError::Connect(_));
                request_error(backend, &e, connect)
            }
        }
    }
}

// === impl UpstreamBody ===

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Bytes>, UpstreamBodyError>>> {
        match self.get_mut() {
            UpstreamBody::Shared(b) => Pin::new(b).poll_frame(cx).map_err(UpstreamBodyError::from),
            UpstreamBody::Driven(b) => Pin::new(b).poll_frame(cx).map_err(UpstreamBodyError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Shared(b) => b.is_end_stream(),
            UpstreamBody::Driven(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamBody::Shared(b) => b.size_hint(),
            UpstreamBody::Driven(b) => b.size_hint(),
        }
    }
}

// === impl SseEvents ===

impl SseEvents {
    fn new(
        backend: Arc<str>,
        body: Option<UpstreamBody>,
        max_event_bytes: usize,
        choices: u32,
        idle: Duration,
        total_deadline: Instant,
    ) -> Self {
        SseEvents {
            backend,
            body,
            parser: SseParser::new(max_event_bytes),
            chunks: ChunkReader::default(),
            // Room for one: a stream that trickles (or idles) decodes one event per read, and
            // the default first growth (four) would hold memory per open stream for nothing.
            // A burst grows it once.
            pending: VecDeque::with_capacity(1),
            failure: None,
            done: false,
            choices,
            choices_finished: SmallVec::new(),
            finished: false,
            idle: IdleTimer::new(idle),
            total: Box::pin(tokio::time::sleep_until(total_deadline)),
        }
    }

    /// Records a failure: it is reported after the events already decoded, and ends the stream.
    /// After a complete answer it only ends the stream.
    fn fail(&mut self, err: Error) {
        if self.failure.is_none() && !self.done {
            if self.complete() {
                tracing::debug!(backend = %self.backend, error = %err, "upstream stream failed after a complete answer");
                self.done = true;
            } else {
                self.failure = Some(err);
            }
        }
        self.body = None;
    }

    /// Every choice delivered a finish reason.
    fn complete(&self) -> bool {
        self.choices_finished.len() >= self.choices as usize
    }

    /// Notes the finish reasons and usage of a chunk; the answer is done once it is complete and
    /// the usage (asked for upstream, and sent after every finish reason) has arrived.
    fn on_chunk(&mut self, chunk: &WireChunk) {
        for c in &chunk.choices {
            if c.finish_reason.is_some()
                && c.index < self.choices
                && !self.choices_finished.contains(&c.index)
            {
                self.choices_finished.push(c.index);
            }
        }
        if chunk.usage.is_some() && self.complete() {
            self.done = true;
        }
    }

    /// Decodes one body chunk into `pending`.
    fn on_bytes(&mut self, bytes: &[u8]) {
        // Out of `self` while it hands over events, which borrow from it or from `bytes`.
        let mut parser = std::mem::take(&mut self.parser);
        let fed = parser.feed_with(bytes, |event| {
            if !self.done && self.failure.is_none() {
                self.on_event(event);
            }
        });
        self.parser = parser;
        if let Err(e) = fed {
            let detail = e.to_string();
            self.fail(protocol(&self.backend, &detail));
        }
    }

    fn on_event(&mut self, event: Event<'_>) {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return;
        }
        if event.event == Some("error") {
            tracing::warn!(backend = %self.backend, "upstream sent an error event mid-stream");
            return self.fail(protocol(&self.backend, "the upstream reported an error"));
        }
        if data.is_empty() {
            return;
        }
        match self.chunks.parse(data) {
            Ok(chunk) if chunk.error.is_some() => {
                tracing::warn!(backend = %self.backend, "upstream sent an error object mid-stream");
                self.fail(protocol(&self.backend, "the upstream reported an error"));
            }
            Ok(chunk) => {
                self.on_chunk(&chunk);
                chunk_events(chunk, &mut self.pending);
            }
            Err(e) => {
                tracing::debug!(backend = %self.backend, error = %e, "malformed upstream chunk");
                self.fail(protocol(&self.backend, "malformed JSON in an event"));
            }
        }
    }

    /// At end of body: `[DONE]` must have been seen (a server that omits only the blank line after
    /// it is forgiven), or the answer be complete; anything else is a truncated answer.
    fn on_eof(&mut self) {
        self.body = None;
        match self.parser.finish() {
            Some(event) if event.data.trim() == "[DONE]" => self.done = true,
            _ if self.done => {}
            _ => self.fail(Error::UpstreamClosed {
                backend: self.backend.to_string(),
            }),
        }
    }

    /// After `[DONE]`, reads the end of the HTTP body (usually already buffered) so the connection
    /// can be pooled again, without making the consumer wait for it.
    fn release_body(&mut self, cx: &mut Context<'_>) {
        let Some(mut body) = self.body.take() else {
            return;
        };
        match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {}
            _ if body.is_end_stream() => {}
            _ => {
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move {
                        let drain = async {
                            let mut seen = 0usize;
                            while let Some(Ok(frame)) = body.frame().await {
                                seen += frame.data_ref().map_or(0, Bytes::len);
                                if seen > MAX_ERROR_BODY {
                                    break;
                                }
                            }
                        };
                        let _ = tokio::time::timeout(DRAIN_GRACE, drain).await;
                    });
                }
            }
        }
    }
}

impl Stream for SseEvents {
    type Item = Result<BackendEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(event) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some(err) = this.failure.take() {
                this.finished = true;
                return Poll::Ready(Some(Err(err)));
            }
            if this.done {
                this.finished = true;
                this.release_body(cx);
                return Poll::Ready(None);
            }
            if this.total.as_mut().poll(cx).is_ready() {
                this.fail(timeout(&this.backend, TimeoutPhase::Total));
                continue;
            }
            let Some(body) = this.body.as_mut() else {
                // Unreachable in practice: the body is only dropped with a failure or `done` set.
                this.finished = true;
                return Poll::Ready(None);
            };
            match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.idle.touch();
                        this.on_bytes(&data);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let err = body_error(&this.backend, &e);
                    this.fail(err);
                }
                Poll::Ready(None) => this.on_eof(),
                Poll::Pending => {
                    if this.idle.poll_idle(cx).is_ready() {
                        this.fail(timeout(&this.backend, TimeoutPhase::Idle));
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

// === wire conversion ===

/// The deltas and usage of one chunk.
fn chunk_events(chunk: WireChunk, out: &mut VecDeque<BackendEvent>) {
    for choice in chunk.choices {
        let delta = delta_from(choice.index, choice.delta, choice.finish_reason);
        if delta.role.is_some()
            || delta.content.is_some()
            || delta.finish_reason.is_some()
            || !delta.extra.is_empty()
        {
            out.push_back(BackendEvent::Delta(delta));
        }
    }
    if let Some(u) = chunk.usage {
        out.push_back(BackendEvent::Usage(u.into()));
    }
}

/// A delta from a wire object: `role` and `content` are read, every other non-null field is
/// passed through (`null` carries no increment).
fn delta_from(index: u32, fields: Option<WireDelta>, finish_reason: Option<String>) -> ChoiceDelta {
    let fields = fields.unwrap_or_default();
    ChoiceDelta {
        index,
        role: fields.role,
        content: fields.content,
        finish_reason,
        extra: fields.extra,
    }
}

/// The events of a non-streaming `chat.completion`: per choice, one delta with the message and
/// one with the finish reason (the shape a stream would have had), then usage.
fn completion_events(bytes: &[u8]) -> Option<Vec<BackendEvent>> {
    let completion: WireChunk = serde_json::from_slice(bytes).ok()?;
    let mut out = Vec::with_capacity(completion.choices.len() * 2 + 1);
    for choice in completion.choices {
        let mut delta = delta_from(choice.index, choice.message, None);
        // Streamed tool calls are fragments keyed by `index`; a whole message's calls get theirs
        // from their position, so the collector merges them the same way.
        if let Some(Value::Array(calls)) = delta.extra.get_mut("tool_calls") {
            for (i, call) in calls.iter_mut().enumerate() {
                if let Some(obj) = call.as_object_mut() {
                    obj.entry("index").or_insert(Value::from(i));
                }
            }
        }
        out.push(BackendEvent::Delta(delta));
        if let Some(reason) = choice.finish_reason {
            out.push(BackendEvent::Delta(ChoiceDelta {
                index: choice.index,
                finish_reason: Some(reason),
                ..ChoiceDelta::default()
            }));
        }
    }
    if let Some(u) = completion.usage {
        out.push(BackendEvent::Usage(u.into()));
    }
    Some(out)
}

// === helpers ===

/// `{base_url}/chat/completions`, keeping scheme and authority.
fn chat_uri(base: &Uri) -> anyhow::Result<Uri> {
    let path = base.path().trim_end_matches('/');
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(format!("{path}/chat/completions"))?);
    Ok(Uri::from_parts(parts)?)
}

fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

fn timeout(backend: &str, phase: TimeoutPhase) -> Error {
    Error::UpstreamTimeout {
        backend: backend.to_owned(),
        phase,
    }
}

/// A protocol error. `detail` reaches the client, so it is always a fixed description, never
/// upstream content.
fn protocol(backend: &str, detail: &str) -> Error {
    Error::UpstreamProtocol {
        backend: backend.to_owned(),
        detail: detail.to_owned(),
    }
}

/// The error chain as one line, for logs and `UpstreamUnreachable::detail` (never shown to
/// clients). Connection errors carry no headers, so the key cannot appear here.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Whether any error in the chain is an I/O error of this kind.
fn has_io_kind(e: &(dyn std::error::Error + 'static), kind: std::io::ErrorKind) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == kind)
        {
            return true;
        }
        current = err.source();
    }
    false
}

/// Maps a failure before the response headers; `connect` when no connection could be opened.
fn request_error(backend: &str, e: &(dyn std::error::Error + 'static), connect: bool) -> Error {
    tracing::debug!(backend, error = %chain(e), "upstream request failed");
    if connect {
        if has_io_kind(e, std::io::ErrorKind::TimedOut) {
            return timeout(backend, TimeoutPhase::Connect);
        }
        return Error::UpstreamUnreachable {
            backend: backend.to_owned(),
            detail: chain(e),
        };
    }
    let hyper_error = {
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
        let mut found = None;
        while let Some(err) = current {
            if let Some(h) = err.downcast_ref::<hyper::Error>() {
                found = Some(h);
                break;
            }
            current = err.source();
        }
        found
    };
    match hyper_error {
        Some(h) if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() => {
            protocol(backend, "the upstream sent an invalid HTTP response")
        }
        _ => Error::UpstreamClosed {
            backend: backend.to_owned(),
        },
    }
}

/// Maps a failure while reading a body: the connection went away (reset, truncated chunked
/// encoding, HTTP/2 reset) before the answer was complete.
fn body_error(backend: &str, e: &UpstreamBodyError) -> Error {
    tracing::debug!(backend, error = %chain(e.as_ref()), "upstream body failed");
    Error::UpstreamClosed {
        backend: backend.to_owned(),
    }
}

/// An `UpstreamStatus` with the upstream's error object, when its body (read within the idle and
/// total deadlines) was whole, at most [`MAX_ERROR_BODY`] and OpenAI-shaped; `key` is taken out of
/// it. A body that cannot be read whole is no error object: the status is what matters.
async fn status_error(
    backend: &str,
    status: StatusCode,
    body: UpstreamBody,
    key: Option<&str>,
    idle: Duration,
    total_deadline: Instant,
) -> Error {
    let deadline = (Instant::now() + idle).min(total_deadline);
    let whole = match read_body(body, MAX_ERROR_BODY, idle, deadline).await {
        Ok(bytes) => Some(bytes),
        Err(ReadError::TooLarge) => {
            tracing::debug!(
                backend,
                "upstream error body over the size kept; not parsed"
            );
            None
        }
        Err(ReadError::Timeout(_) | ReadError::Read(_)) => None,
    };
    let upstream = whole
        .as_deref()
        .and_then(UpstreamError::parse)
        .map(|u| Box::new(u.without(key.unwrap_or_default())));
    tracing::debug!(
        backend,
        status = status.as_u16(),
        openai_shaped = upstream.is_some(),
        "upstream answered with an error status"
    );
    Error::UpstreamStatus {
        backend: backend.to_owned(),
        status,
        upstream,
    }
}

/// Reads a whole body of at most `limit` bytes, with the idle gap applying between frames.
async fn read_body(
    mut body: UpstreamBody,
    limit: usize,
    idle: Duration,
    total_deadline: Instant,
) -> Result<Bytes, ReadError> {
    let mut out = BytesMut::new();
    loop {
        let deadline = (Instant::now() + idle).min(total_deadline);
        let phase = if deadline == total_deadline {
            TimeoutPhase::Total
        } else {
            TimeoutPhase::Idle
        };
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(ReadError::Timeout(phase)),
            Ok(None) => return Ok(out.freeze()),
            Ok(Some(Err(e))) => return Err(ReadError::Read(e)),
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if out.len() + data.len() > limit {
                        return Err(ReadError::TooLarge);
                    }
                    out.extend_from_slice(data);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::Usage;

    #[test]
    fn chat_uri_appends_to_the_base_path() {
        let uri = |s: &str| chat_uri(&s.parse().unwrap()).unwrap().to_string();
        assert_eq!(
            uri("http://127.0.0.1:9101/v1"),
            "http://127.0.0.1:9101/v1/chat/completions"
        );
        assert_eq!(
            uri("https://api.example.com"),
            "https://api.example.com/chat/completions"
        );
        assert_eq!(
            uri("https://h/openai/v1/"),
            "https://h/openai/v1/chat/completions"
        );
    }

    #[test]
    fn chunk_becomes_deltas_with_extra_fields_and_usage() {
        let chunk: WireChunk = serde_json::from_str(
            r#"{"choices":[{"index":1,"delta":{"role":"assistant","content":"hi","refusal":null,
                "tool_calls":[{"index":0,"id":"c1"}]},"finish_reason":null},
                {"index":0,"delta":{},"finish_reason":"stop"},
                {"index":2,"delta":{"content":null}}],
                "usage":{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":{}}}"#,
        )
        .unwrap();
        let mut out = VecDeque::new();
        chunk_events(chunk, &mut out);
        let out: Vec<_> = out.into_iter().collect();
        assert_eq!(out.len(), 3, "{out:?}");
        let BackendEvent::Delta(d) = &out[0] else {
            panic!("delta expected")
        };
        assert_eq!(d.index, 1);
        assert_eq!(d.role.as_deref(), Some("assistant"));
        assert_eq!(d.content.as_deref(), Some("hi"));
        assert!(!d.extra.contains_key("refusal"));
        assert_eq!(d.extra["tool_calls"][0]["id"], "c1");
        let BackendEvent::Delta(d) = &out[1] else {
            panic!("delta expected")
        };
        assert_eq!(d.finish_reason.as_deref(), Some("stop"));
        assert_eq!(out[2], BackendEvent::Usage(Usage::new(3, 4)));
    }

    #[test]
    fn completion_becomes_message_delta_finish_and_usage() {
        let events = completion_events(
            br#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":
            {"role":"assistant","content":null,"tool_calls":[{"id":"a","type":"function",
            "function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}],
            "usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
        )
        .unwrap();
        assert_eq!(events.len(), 3);
        let BackendEvent::Delta(d) = &events[0] else {
            panic!("delta expected")
        };
        assert_eq!(d.content, None);
        assert_eq!(d.extra["tool_calls"][0]["index"], 0);
        assert_eq!(events[2], BackendEvent::Usage(Usage::new(1, 2)));
        assert!(completion_events(b"not json").is_none());
    }

    #[test]
    fn connect_timeout_is_told_apart_from_refusal() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let timed_out = Outer(std::io::Error::new(std::io::ErrorKind::TimedOut, "x"));
        let refused = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "x",
        ));
        assert!(has_io_kind(&timed_out, std::io::ErrorKind::TimedOut));
        assert!(!has_io_kind(&refused, std::io::ErrorKind::TimedOut));
        assert_eq!(chain(&refused), "outer: x");
    }

    /// The events of `bytes` for an answer of `choices`, and whether its end was clean.
    fn events_at_eof(choices: u32, bytes: &str) -> (usize, bool) {
        let far = Instant::now() + Duration::from_secs(60);
        let mut s = SseEvents::new(
            Arc::from("b"),
            None,
            1 << 20,
            choices,
            far - Instant::now(),
            far,
        );
        s.on_bytes(bytes.as_bytes());
        if !s.done {
            s.on_eof();
        }
        (s.pending.len(), s.failure.is_none() && s.done)
    }

    #[tokio::test]
    async fn a_stream_is_complete_once_every_choice_finished() {
        let text = |i: u32| {
            format!("data: {{\"choices\":[{{\"index\":{i},\"delta\":{{\"content\":\"a\"}}}}]}}\n\n")
        };
        let finish = |i: u32| {
            format!("data: {{\"choices\":[{{\"index\":{i},\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\n")
        };
        let usage =
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n";
        // One choice: its finish reason completes the answer, with or without usage after it.
        assert_eq!(events_at_eof(1, &(text(0) + &finish(0))), (2, true));
        assert_eq!(events_at_eof(1, &(text(0) + &finish(0) + usage)), (3, true));
        assert_eq!(events_at_eof(1, &text(0)), (1, false));
        // Two choices: both must finish; the same choice finishing twice, or a choice beyond
        // `n`, does not count for another.
        let both = text(0) + &text(1) + &finish(0) + &finish(1);
        assert_eq!(events_at_eof(2, &both), (4, true));
        assert!(!events_at_eof(2, &(text(0) + &finish(0) + &finish(0))).1);
        assert!(!events_at_eof(2, &(finish(0) + &finish(2))).1);
        // Usage before every choice finished does not end the stream.
        let (_, clean) = events_at_eof(2, &(finish(0).clone() + usage));
        assert!(!clean);
        // Usage after a complete answer ends it at once: later events are not read.
        let (n, clean) = events_at_eof(1, &(finish(0) + usage + &text(0)));
        assert_eq!((n, clean), (2, true));
    }

    #[test]
    fn json_content_type_detection() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(is_json(Some(&v("application/json"))));
        assert!(is_json(Some(&v("Application/JSON; charset=utf-8"))));
        assert!(!is_json(Some(&v("text/event-stream"))));
        assert!(!is_json(None));
    }
}
