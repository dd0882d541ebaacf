//! An in-process OpenAI-compatible upstream, for tests and load tests.
//!
//! The remote backend's hard cases are the ones a real provider produces rarely and on no
//! schedule: an error status, headers that take too long, a stream that stalls or is cut, a chunk
//! that is not JSON, a stream that ends without `[DONE]`. This server produces each of them on
//! demand, with timing driven by `tokio::time` so tests can pause the clock, and it records what
//! it received and how many requests are still open, so tests can assert passthrough and that a
//! client going away really released the upstream request.
//!
//! Faults are chosen per instance ([`MockConfig::fault`], [`MockUpstream::set_fault`]) or per
//! request, with the `x-mock-fault` header or a model name `fault:<spec>`, in that order of
//! precedence. The spec syntax is described on [`Fault`].
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use sluice::mock_upstream::{MockConfig, MockUpstream};
//! let mock = MockUpstream::start(MockConfig::default()).await?;
//! let base_url = mock.base_url(); // http://127.0.0.1:PORT/v1
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

/// The request header that selects a fault for one request.
pub const FAULT_HEADER: &str = "x-mock-fault";
/// Per-request override of [`MockConfig::ttft`], in milliseconds.
pub const TTFT_HEADER: &str = "x-mock-ttft-ms";
/// Per-request override of [`MockConfig::gap`], in milliseconds.
pub const GAP_HEADER: &str = "x-mock-gap-ms";
/// Per-request override of [`MockConfig::tokens`].
pub const TOKENS_HEADER: &str = "x-mock-tokens";
/// The model-name prefix that selects a fault for one request: `fault:status:503`.
pub const FAULT_MODEL_PREFIX: &str = "fault:";

/// The secret planted in an `error-key` message, as an upstream that leaks its internals would.
pub const PLANTED_SECRET: &str = "AKIAIOSFODNN7EXAMPLE";
/// The internal address an `error-html` page names.
pub const INTERNAL_ADDRESS: &str = "10.20.30.40:8443";
/// The size of an `error-huge` body.
pub const HUGE_ERROR_BYTES: usize = 20 * 1024 * 1024;

/// The largest request body the mock reads.
const MAX_REQUEST_BODY: usize = 16 * 1024 * 1024;

type MockBody = UnsyncBoxBody<Bytes, io::Error>;

/// How the mock answers.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// The answer text. It is cut into tokens after each space, so the streamed pieces joined
    /// give the text back exactly.
    pub text: String,
    /// When set, the answer is exactly this many tokens, cycling through the pieces of `text`.
    pub tokens: Option<usize>,
    /// Time from the response headers to the first token (for non-streaming answers, added before
    /// the headers together with the gaps).
    pub ttft: Duration,
    /// Time between two tokens.
    pub gap: Duration,
    /// A fault applied to every request that does not choose its own.
    pub fault: Option<Fault>,
    /// Names listed by `GET /v1/models`.
    pub models: Vec<String>,
}

/// A failure the mock produces on purpose.
///
/// Spec syntax (for [`FromStr`], the `x-mock-fault` header and `fault:<spec>` model names):
///
/// | spec | behaviour |
/// | --- | --- |
/// | `status:<code>` | answers `<code>` with an OpenAI error body (`application/json`) |
/// | `slow:<ms>` | waits `<ms>` before sending the response headers, then answers normally |
/// | `stall:<n>` | streams `<n>` tokens, then sends nothing more and never ends |
/// | `reset:<n>` | streams `<n>` tokens, then aborts the connection (no terminating chunk) |
/// | `malformed:<n>` | streams `<n>` tokens, then an event whose data is not JSON, then ends |
/// | `no-done` | streams the whole answer (and usage) and ends cleanly without `data: [DONE]` |
/// | `json` | answers a non-streaming `chat.completion` even when `stream: true` was asked |
/// | `planted:<field>` | carries the answer text in another field, three characters per delta: `tool-call` (a tool call's `function.arguments`), `refusal`, `reasoning` (`reasoning_content`), or `choice1` (the content of a second choice, beside a first that says `ok`) |
/// | `error-key:<code>` | answers `<code>` with an OpenAI error whose message quotes the request's bearer token and [`PLANTED_SECRET`] |
/// | `error-html:<code>` | answers `<code>` with an HTML page (`text/html`) naming [`INTERNAL_ADDRESS`] |
/// | `error-huge:<code>` | answers `<code>` with a [`HUGE_ERROR_BYTES`] `application/json` body: an error whose message goes on and on |
/// | `cut:<n>` | streams `<n>` tokens, then ends the body cleanly: no finishing chunk, no usage, no `[DONE]` |
/// | `ignore-max-tokens` | streams (or answers) the whole answer whatever `max_tokens` asked for |
///
/// `<n>` counts token chunks; the role chunk that precedes the first token is not counted. An
/// `<n>` at or beyond the answer's length applies the fault after the last token, before the
/// finishing chunk. For non-streaming requests `stall` hangs before the headers, `reset` aborts
/// the body, `malformed` sends a body that is not JSON, and `cut` answers in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Status(u16),
    SlowFirstByte(Duration),
    Stall { after: usize },
    Reset { after: usize },
    Malformed { after: usize },
    NoDone,
    Json,
    ErrorWithKey(u16),
    ErrorHtml(u16),
    ErrorHuge(u16),
    Cut { after: usize },
    IgnoreMaxTokens,
    Planted(Planted),
}

/// Where [`Fault::Planted`] puts the answer text: the fields besides choice 0's content that an
/// upstream's answer may carry text in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planted {
    ToolCall,
    Refusal,
    Reasoning,
    SecondChoice,
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A running mock. Dropping it stops the server and closes every open connection.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Dropping this ends the accept loop, which aborts the connection tasks it owns.
    _stop: oneshot::Sender<()>,
}

/// State shared by the accept loop, every connection and the handle.
struct Shared {
    config: MockConfig,
    /// The instance-wide fault, changeable at run time.
    fault: Mutex<Option<Fault>>,
    last_request: Mutex<Option<RecordedRequest>>,
    /// Chat requests received.
    requests: AtomicU64,
    /// TCP connections accepted, so tests can tell a pooled connection from a new one.
    connections: AtomicU64,
    /// Chat requests whose response is not finished: counted from the moment the request arrives
    /// until its response body ends or is dropped.
    in_flight: watch::Sender<usize>,
    next_id: AtomicU64,
}

/// Counts one request in flight while it lives.
struct InFlight(Arc<Shared>);

/// What one chat request asked for, with the overrides resolved.
struct Plan {
    id: String,
    created: u64,
    model: String,
    stream: bool,
    include_usage: bool,
    tokens: Vec<String>,
    finish_reason: &'static str,
    prompt_tokens: u64,
    ttft: Duration,
    gap: Duration,
    fault: Option<Fault>,
    /// `data: {"id":…,"choices":[{"index":0,"delta":`, shared by every chunk of the answer.
    chunk_prefix: String,
}

// === impl MockConfig ===

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            text: "Hello from the mock upstream.".into(),
            tokens: None,
            ttft: Duration::ZERO,
            gap: Duration::ZERO,
            fault: None,
            models: vec!["mock".into()],
        }
    }
}

impl MockConfig {
    /// A config answering `text`.
    pub fn with_text(text: impl Into<String>) -> Self {
        MockConfig {
            text: text.into(),
            ..Self::default()
        }
    }

    /// The tokens of a full answer, as they are streamed.
    pub fn answer_tokens(&self) -> Vec<String> {
        answer(&self.text, self.tokens)
    }

    /// The full answer text (the tokens joined).
    pub fn answer_text(&self) -> String {
        self.answer_tokens().concat()
    }
}

// === impl Fault ===

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        let number = |what: &str| -> Result<u64, String> {
            arg.and_then(|a| a.trim().parse().ok())
                .ok_or_else(|| format!("fault `{s}`: `{kind}` needs {what}, as in `{kind}:2`"))
        };
        let count = |what: &str| number(what).map(|n| n as usize);
        // The status of the error-body faults (`error-key:401`).
        let status = || -> Result<u16, String> {
            let code = number("a status code")?;
            u16::try_from(code)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .map(|c| c.as_u16())
                .ok_or_else(|| format!("fault `{s}`: {code} is not an HTTP status"))
        };
        match kind.trim() {
            "status" => {
                let code = number("a status code")?;
                u16::try_from(code)
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .map(|c| Fault::Status(c.as_u16()))
                    .ok_or_else(|| format!("fault `{s}`: {code} is not an HTTP status"))
            }
            "slow" => Ok(Fault::SlowFirstByte(Duration::from_millis(number(
                "milliseconds",
            )?))),
            "stall" => Ok(Fault::Stall {
                after: count("a token count")?,
            }),
            "reset" => Ok(Fault::Reset {
                after: count("a token count")?,
            }),
            "malformed" => Ok(Fault::Malformed {
                after: count("a token count")?,
            }),
            "no-done" => Ok(Fault::NoDone),
            "json" => Ok(Fault::Json),
            "planted" => match arg.map(str::trim) {
                Some("tool-call") => Ok(Fault::Planted(Planted::ToolCall)),
                Some("refusal") => Ok(Fault::Planted(Planted::Refusal)),
                Some("reasoning") => Ok(Fault::Planted(Planted::Reasoning)),
                Some("choice1") => Ok(Fault::Planted(Planted::SecondChoice)),
                _ => Err(format!(
                    "fault `{s}`: `planted` needs one of tool-call, refusal, reasoning, choice1"
                )),
            },
            "error-key" => status().map(Fault::ErrorWithKey),
            "error-html" => status().map(Fault::ErrorHtml),
            "error-huge" => status().map(Fault::ErrorHuge),
            "cut" => Ok(Fault::Cut {
                after: count("a token count")?,
            }),
            "ignore-max-tokens" => Ok(Fault::IgnoreMaxTokens),
            _ => Err(format!(
                "fault `{s}`: expected one of status:<code>, slow:<ms>, stall:<n>, reset:<n>, \
                 malformed:<n>, no-done, json, error-key:<code>, error-html:<code>, \
                 error-huge:<code>, cut:<n>, ignore-max-tokens, planted:<field>"
            )),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Status(code) => write!(f, "status:{code}"),
            Fault::SlowFirstByte(d) => write!(f, "slow:{}", d.as_millis()),
            Fault::Stall { after } => write!(f, "stall:{after}"),
            Fault::Reset { after } => write!(f, "reset:{after}"),
            Fault::Malformed { after } => write!(f, "malformed:{after}"),
            Fault::NoDone => f.write_str("no-done"),
            Fault::Json => f.write_str("json"),
            Fault::Planted(p) => write!(f, "planted:{}", p.as_str()),
            Fault::ErrorWithKey(code) => write!(f, "error-key:{code}"),
            Fault::ErrorHtml(code) => write!(f, "error-html:{code}"),
            Fault::ErrorHuge(code) => write!(f, "error-huge:{code}"),
            Fault::Cut { after } => write!(f, "cut:{after}"),
            Fault::IgnoreMaxTokens => f.write_str("ignore-max-tokens"),
        }
    }
}

// === impl RecordedRequest ===

impl RecordedRequest {
    /// The body as JSON, when it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

// === impl MockUpstream ===

impl MockUpstream {
    /// Starts a mock on `127.0.0.1:0`.
    pub async fn start(config: MockConfig) -> io::Result<MockUpstream> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts a mock on `addr` (port 0 picks a free port; see [`addr`](Self::addr)).
    pub async fn bind(addr: SocketAddr, config: MockConfig) -> io::Result<MockUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            fault: Mutex::new(config.fault),
            config,
            last_request: Mutex::new(None),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            in_flight: watch::channel(0).0,
            next_id: AtomicU64::new(0),
        });
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(accept_loop(listener, shared.clone(), stopped));
        Ok(MockUpstream {
            addr,
            shared,
            _stop: stop,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1`, the value for a backend's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Replaces the instance-wide fault (`None` answers normally).
    pub fn set_fault(&self, fault: Option<Fault>) {
        if let Ok(mut f) = self.shared.fault.lock() {
            *f = fault;
        }
    }

    /// The config the mock was started with.
    pub fn config(&self) -> &MockConfig {
        &self.shared.config
    }

    /// The last chat request received (headers and raw body).
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.shared.last_request.lock().ok().and_then(|r| r.clone())
    }

    /// How many chat requests were received.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// How many TCP connections were accepted.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Chat requests whose response has not finished (or been dropped) yet.
    pub fn in_flight(&self) -> usize {
        *self.shared.in_flight.borrow()
    }

    /// Waits until exactly `n` chat requests are in flight.
    pub async fn wait_in_flight(&self, n: usize) {
        let mut rx = self.shared.in_flight.subscribe();
        // The sender lives in `self.shared`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|v| *v == n).await;
    }
}

impl fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

// === impl InFlight ===

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> Self {
        shared.in_flight.send_modify(|n| *n += 1);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n = n.saturating_sub(1));
    }
}

// === server ===

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    // Owning the connection tasks here means they are aborted when the loop ends.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(shared.clone(), req));
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    // h2c clients (a gateway in front) multiplex every stream on one connection:
                    // no cap on concurrent streams, so load tests can hold thousands open.
                    builder.http2().max_concurrent_streams(None);
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let resp = match (req.method(), path.as_str()) {
        (&Method::GET, "/v1/models" | "/models") => models(&shared),
        (&Method::POST, "/v1/chat/completions" | "/chat/completions") => chat(shared, req).await,
        _ => error_response(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown path",
        ),
    };
    Ok(resp)
}

fn models(shared: &Shared) -> Response<MockBody> {
    let data: Vec<Value> = shared
        .config
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "sluice-mock"}))
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

async fn chat(shared: Arc<Shared>, req: Request<Incoming>) -> Response<MockBody> {
    let guard = InFlight::enter(&shared);
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_REQUEST_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "unreadable body",
            )
        }
    };
    if let Ok(mut last) = shared.last_request.lock() {
        *last = Some(RecordedRequest {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }
    let plan = match Plan::new(&shared, &parts.headers, &body) {
        Ok(plan) => plan,
        Err(message) => {
            return error_response(StatusCode::BAD_REQUEST, "invalid_request_error", &message)
        }
    };

    match plan.fault {
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let kind = if status.is_client_error() {
                "invalid_request_error"
            } else {
                "server_error"
            };
            return error_response(status, kind, &format!("mock fault: status {code}"));
        }
        Some(Fault::ErrorWithKey(code)) => {
            let key = parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("(none)");
            let message = format!(
                "Incorrect API key provided: {key}. Internal trace: aws key {PLANTED_SECRET} \
                 on billing-db."
            );
            return json_response(
                status_or_500(code),
                &json!({"error": {"message": message, "type": "invalid_request_error",
                    "param": "messages", "code": "invalid_api_key"}}),
            );
        }
        Some(Fault::ErrorHtml(code)) => {
            let page = format!(
                "<html><head><title>{code}</title></head><body><h1>Bad Gateway</h1>\
                 <p>upstream {INTERNAL_ADDRESS} (inference-7.prod.internal) refused</p>\
                 </body></html>"
            );
            let mut resp = Response::new(full(Bytes::from(page)));
            *resp.status_mut() = status_or_500(code);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            return resp;
        }
        Some(Fault::ErrorHuge(code)) => return huge_error(status_or_500(code), guard),
        Some(Fault::SlowFirstByte(delay)) => pause(delay).await,
        _ => {}
    }
    if let Some(Fault::Planted(field)) = plan.fault {
        return planted_response(plan, guard, field);
    }
    if plan.stream && plan.fault != Some(Fault::Json) {
        return stream_response(plan, guard);
    }
    complete_response(plan, guard).await
}

/// A non-streaming `chat.completion`, after the time the generation would have taken.
async fn complete_response(plan: Plan, guard: InFlight) -> Response<MockBody> {
    let steps = plan.tokens.len().saturating_sub(1) as u32;
    pause(plan.ttft + plan.gap * steps).await;
    match plan.fault {
        Some(Fault::Stall { .. }) => std::future::pending::<()>().await,
        Some(Fault::Reset { .. }) => {
            let body = futures_util::stream::once(async move {
                let _guard = guard;
                Err::<Frame<Bytes>, _>(io::Error::new(io::ErrorKind::ConnectionReset, "mock reset"))
            });
            return json_headers(StatusCode::OK, StreamBody::new(body).boxed_unsync());
        }
        Some(Fault::Malformed { .. }) => {
            return json_headers(StatusCode::OK, full(Bytes::from_static(b"{\"choices\": [")));
        }
        _ => {}
    }
    let text = plan.tokens.concat();
    json_response(
        StatusCode::OK,
        &json!({
            "id": plan.id,
            "object": "chat.completion",
            "created": plan.created,
            "model": plan.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": null},
                "logprobs": null,
                "finish_reason": plan.finish_reason,
            }],
            "usage": plan.usage(),
        }),
    )
}

/// An SSE answer, one token per event, shaped like OpenAI's.
fn stream_response(plan: Plan, guard: InFlight) -> Response<MockBody> {
    let frames = async_stream::stream! {
        let _guard = guard;
        let after = match plan.fault {
            Some(
                Fault::Stall { after }
                | Fault::Reset { after }
                | Fault::Malformed { after }
                | Fault::Cut { after },
            ) => Some(after),
            _ => None,
        };
        pause(plan.ttft).await;
        yield Ok(plan.chunk(r#"{"role":"assistant","content":""}"#, None));
        for (i, token) in plan.tokens.iter().enumerate() {
            if after == Some(i) {
                break;
            }
            if i > 0 {
                pause(plan.gap).await;
            }
            yield Ok(plan.content_chunk(token));
        }
        match plan.fault {
            Some(Fault::Stall { .. }) => std::future::pending::<()>().await,
            Some(Fault::Reset { .. }) => {
                // Pending once, so hyper flushes the tokens already written; then an error from
                // the body makes it abort the connection mid-body.
                tokio::task::yield_now().await;
                yield Err(io::Error::new(io::ErrorKind::ConnectionReset, "mock reset"));
                return;
            }
            Some(Fault::Malformed { .. }) => {
                yield Ok(Frame::data(Bytes::from_static(b"data: {\"choices\": [{\"delta\":\n\n")));
                return;
            }
            Some(Fault::Cut { .. }) => return,
            _ => {}
        }
        yield Ok(plan.chunk("{}", Some(plan.finish_reason)));
        if plan.include_usage {
            yield Ok(plan.usage_chunk());
        }
        if plan.fault != Some(Fault::NoDone) {
            yield Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n")));
        }
    };
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// An answer whose text is in `field` ([`Fault::Planted`]), streamed three characters per
/// delta or as one `chat.completion`.
fn planted_response(plan: Plan, guard: InFlight, field: Planted) -> Response<MockBody> {
    let text = plan.tokens.concat();
    let finish = match field {
        Planted::ToolCall => "tool_calls",
        _ => "stop",
    };
    let choices = |index: u32, delta: Value, finish: Option<&str>| -> Value {
        json!({
            "id": plan.id, "object": "chat.completion.chunk", "created": plan.created,
            "model": plan.model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        })
    };
    if !plan.stream {
        let mut message = json!({"role": "assistant", "content": null});
        let mut second = None;
        match field {
            Planted::ToolCall => {
                message["tool_calls"] = json!([{"id": "call_1", "type": "function",
                    "function": {"name": "lookup", "arguments": text}}]);
            }
            Planted::Refusal => message["refusal"] = Value::from(text),
            Planted::Reasoning => {
                message["content"] = Value::from("ok");
                message["reasoning_content"] = Value::from(text);
            }
            Planted::SecondChoice => {
                message["content"] = Value::from("ok");
                second = Some(json!({"index": 1, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text}}));
            }
        }
        let mut all = vec![json!({"index": 0, "message": message, "finish_reason": finish})];
        all.extend(second);
        return json_response(
            StatusCode::OK,
            &json!({"id": plan.id, "object": "chat.completion", "created": plan.created,
                "model": plan.model, "choices": all, "usage": plan.usage()}),
        );
    }
    let chars: Vec<char> = text.chars().collect();
    let mut frames = vec![Plan::frame(&choices(
        0,
        json!({"role": "assistant", "content": ""}),
        None,
    ))];
    match field {
        Planted::ToolCall => frames.push(Plan::frame(&choices(
            0,
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "lookup", "arguments": ""}}]}),
            None,
        ))),
        Planted::Reasoning | Planted::SecondChoice => {
            frames.push(Plan::frame(&choices(0, json!({"content": "ok"}), None)))
        }
        Planted::Refusal => {}
    }
    for piece in chars.chunks(3) {
        let piece: String = piece.iter().collect();
        let (index, delta) = match field {
            Planted::ToolCall => (
                0,
                json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
            ),
            Planted::Refusal => (0, json!({"refusal": piece})),
            Planted::Reasoning => (0, json!({"reasoning_content": piece})),
            Planted::SecondChoice => (1, json!({"content": piece})),
        };
        frames.push(Plan::frame(&choices(index, delta, None)));
    }
    if field == Planted::SecondChoice {
        frames.push(Plan::frame(&choices(1, json!({}), Some("stop"))));
    }
    frames.push(Plan::frame(&choices(0, json!({}), Some(finish))));
    if plan.include_usage {
        frames.push(plan.usage_chunk());
    }
    frames.push(Frame::data(Bytes::from_static(b"data: [DONE]\n\n")));
    let body = futures_util::stream::iter(frames.into_iter().map(Ok::<_, io::Error>));
    let body = async_stream::stream! {
        let _guard = guard;
        for await frame in body {
            yield frame;
        }
    };
    let mut resp = Response::new(StreamBody::new(body).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    resp
}

// === impl Planted ===

impl Planted {
    fn as_str(self) -> &'static str {
        match self {
            Planted::ToolCall => "tool-call",
            Planted::Refusal => "refusal",
            Planted::Reasoning => "reasoning",
            Planted::SecondChoice => "choice1",
        }
    }
}

// === impl Plan ===

impl Plan {
    /// Reads the request and the overrides. Errors are messages for a 400.
    fn new(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<Plan, String> {
        let req: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
        let model = req
            .get("model")
            .and_then(Value::as_str)
            .ok_or("`model` is required")?
            .to_owned();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let millis = |name: &str, default: Duration| -> Result<Duration, String> {
            header(name).map_or(Ok(default), |v| {
                v.parse()
                    .map(Duration::from_millis)
                    .map_err(|_| format!("{name}: `{v}` is not a number of milliseconds"))
            })
        };

        let fault = if let Some(spec) = header(FAULT_HEADER) {
            Some(spec.parse()?)
        } else if let Some(spec) = model.strip_prefix(FAULT_MODEL_PREFIX) {
            Some(spec.parse()?)
        } else {
            shared.fault.lock().ok().and_then(|f| *f)
        };
        let count = match header(TOKENS_HEADER) {
            Some(v) => Some(
                v.parse::<usize>()
                    .map_err(|_| format!("{TOKENS_HEADER}: `{v}` is not a count"))?,
            ),
            None => shared.config.tokens,
        };
        let max = req
            .get("max_completion_tokens")
            .or_else(|| req.get("max_tokens"))
            .and_then(Value::as_u64)
            .filter(|_| fault != Some(Fault::IgnoreMaxTokens))
            .map_or(usize::MAX, |m| m as usize);
        let mut tokens = answer(&shared.config.text, count);
        let finish_reason = if tokens.len() > max {
            tokens.truncate(max);
            "length"
        } else {
            "stop"
        };

        let id = format!(
            "chatcmpl-mock-{}",
            shared.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let chunk_prefix = format!(
            "data: {{\"id\":{},\"object\":\"chat.completion.chunk\",\"created\":{created},\
             \"model\":{},\"system_fingerprint\":null,\"choices\":[{{\"index\":0,\"delta\":",
            Value::from(id.as_str()),
            Value::from(model.as_str()),
        );
        Ok(Plan {
            id,
            created,
            chunk_prefix,
            stream: req.get("stream").and_then(Value::as_bool).unwrap_or(false),
            include_usage: req
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            prompt_tokens: prompt_tokens(&req),
            tokens,
            finish_reason,
            ttft: millis(TTFT_HEADER, shared.config.ttft)?,
            gap: millis(GAP_HEADER, shared.config.gap)?,
            fault,
            model,
        })
    }

    fn usage(&self) -> Value {
        let completion = self.tokens.len() as u64;
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        })
    }

    fn frame(value: &Value) -> Frame<Bytes> {
        let mut out = b"data: ".to_vec();
        // Serialising a `Value` into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, value);
        out.extend_from_slice(b"\n\n");
        Frame::data(Bytes::from(out))
    }

    /// One chunk event. Written as text around a prefix built once per request, because a load
    /// test's mock must cost far less per token than the gateway it measures.
    fn chunk(&self, delta_json: &str, finish_reason: Option<&str>) -> Frame<Bytes> {
        let mut out = String::with_capacity(self.chunk_prefix.len() + delta_json.len() + 64);
        out.push_str(&self.chunk_prefix);
        out.push_str(delta_json);
        out.push_str(",\"logprobs\":null,\"finish_reason\":");
        match finish_reason {
            Some(r) => out.push_str(&Value::from(r).to_string()),
            None => out.push_str("null"),
        }
        out.push_str("}]");
        if self.include_usage {
            out.push_str(",\"usage\":null");
        }
        out.push_str("}\n\n");
        Frame::data(Bytes::from(out))
    }

    fn content_chunk(&self, token: &str) -> Frame<Bytes> {
        let delta = format!("{{\"content\":{}}}", Value::from(token));
        self.chunk(&delta, None)
    }

    fn usage_chunk(&self) -> Frame<Bytes> {
        Self::frame(&json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [],
            "usage": self.usage(),
        }))
    }
}

// === helpers ===

/// The answer's tokens: `text` cut after each space, or `count` pieces cycling through them.
fn answer(text: &str, count: Option<usize>) -> Vec<String> {
    let pieces: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
    match count {
        None => pieces,
        Some(n) if pieces.is_empty() => vec!["tok ".to_owned(); n],
        Some(n) => pieces.iter().cycle().take(n).cloned().collect(),
    }
}

/// A rough prompt size: whitespace-separated words of every text in the messages.
fn prompt_tokens(req: &Value) -> u64 {
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return 0;
    };
    let mut words = 0;
    for m in messages {
        match m.get("content") {
            Some(Value::String(s)) => words += s.split_whitespace().count(),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        words += t.split_whitespace().count();
                    }
                }
            }
            _ => {}
        }
    }
    words as u64
}

/// Sleeps on the tokio clock, skipping the timer for zero.
async fn pause(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

fn full(bytes: Bytes) -> MockBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn json_headers(status: StatusCode, body: MockBody) -> Response<MockBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn json_response(status: StatusCode, value: &Value) -> Response<MockBody> {
    json_headers(status, full(Bytes::from(value.to_string())))
}

fn status_or_500(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A [`HUGE_ERROR_BYTES`] error body, streamed in pieces so the mock never holds it whole: the
/// start of an OpenAI error whose message fills the rest.
fn huge_error(status: StatusCode, guard: InFlight) -> Response<MockBody> {
    const PIECE: usize = 64 * 1024;
    let head = Bytes::from_static(br#"{"error":{"type":"invalid_request_error","message":""#);
    let filler = Bytes::from(vec![b'x'; PIECE]);
    let pieces = (HUGE_ERROR_BYTES - head.len()).div_ceil(PIECE);
    let frames = async_stream::stream! {
        let _guard = guard;
        yield Ok::<_, io::Error>(Frame::data(head));
        for _ in 0..pieces {
            yield Ok(Frame::data(filler.clone()));
        }
    };
    json_headers(status, StreamBody::new(frames).boxed_unsync())
}

fn error_response(status: StatusCode, kind: &str, message: &str) -> Response<MockBody> {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": null, "code": "mock_fault"}}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_round_trip() {
        for spec in [
            "status:503",
            "slow:250",
            "stall:2",
            "reset:0",
            "malformed:1",
            "no-done",
            "json",
            "error-key:401",
            "error-html:400",
            "error-huge:422",
            "cut:2",
            "ignore-max-tokens",
        ] {
            let fault: Fault = spec.parse().unwrap();
            assert_eq!(fault.to_string(), spec);
        }
        assert!("status:99".parse::<Fault>().is_err());
        assert!("stall".parse::<Fault>().is_err());
        assert!("nope".parse::<Fault>().is_err());
    }

    #[test]
    fn answer_is_the_text_cut_after_spaces_or_a_fixed_count() {
        assert_eq!(answer("a bc d", None), vec!["a ", "bc ", "d"]);
        assert_eq!(answer("a b", Some(3)), vec!["a ", "b", "a "]);
        assert_eq!(answer("", Some(2)).len(), 2);
        assert_eq!(
            MockConfig::default().answer_text(),
            MockConfig::default().text
        );
    }
}
