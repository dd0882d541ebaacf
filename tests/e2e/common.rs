//! Shared test fixtures: a gateway on port 0 with scriptable backends, and a small HTTP client.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice::api::types::{BackendEvent, ChoiceDelta, Usage};
use sluice::backends::{Backend, BackendRequest, ChatFuture, Readiness};
use sluice::config::Config;
use sluice::metrics::Metrics;
use sluice::server::Gateway;
use sluice::state::AppState;
use sluice::Error;
use tokio::sync::{oneshot, Notify};

/// One step of a scripted backend stream.
pub enum Step {
    Event(BackendEvent),
    Fail(Error),
    /// Wait until the notify fires, then go on.
    WaitFor(Arc<Notify>),
    /// Never yield again.
    Hang,
}

/// What one request to a scripted backend does.
pub enum Script {
    Open(Vec<Step>),
    Refuse(Error),
}

pub fn text(s: &str) -> Step {
    Step::Event(BackendEvent::Delta(ChoiceDelta {
        content: Some(s.into()),
        ..Default::default()
    }))
}

pub fn role() -> Step {
    Step::Event(BackendEvent::Delta(ChoiceDelta {
        role: Some("assistant".into()),
        content: Some(String::new()),
        ..Default::default()
    }))
}

pub fn finish(reason: &str) -> Step {
    Step::Event(BackendEvent::Delta(ChoiceDelta {
        finish_reason: Some(reason.into()),
        ..Default::default()
    }))
}

pub fn usage(p: u64, c: u64) -> Step {
    Step::Event(BackendEvent::Usage(Usage::new(p, c)))
}

/// The usual happy answer: role, three words, stop, usage.
pub fn hello_script() -> Script {
    Script::Open(vec![
        role(),
        text("Hello"),
        text(", "),
        text("world"),
        finish("stop"),
        usage(5, 3),
    ])
}

/// A backend that plays scripts, one per request, and reports when a stream is dropped.
pub struct ScriptedBackend {
    name: String,
    scripts: Mutex<VecDeque<Script>>,
    pub requests: Mutex<Vec<BackendRequest>>,
    pub dropped: Arc<Notify>,
    pub drops: Arc<std::sync::atomic::AtomicUsize>,
}

struct DropSignal {
    notify: Arc<Notify>,
    count: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for DropSignal {
    fn drop(&mut self) {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }
}

impl ScriptedBackend {
    pub fn new(name: &str, scripts: Vec<Script>) -> Arc<Self> {
        Arc::new(ScriptedBackend {
            name: name.into(),
            scripts: Mutex::new(scripts.into()),
            requests: Mutex::new(Vec::new()),
            dropped: Arc::new(Notify::new()),
            drops: Arc::default(),
        })
    }

    pub fn push(&self, script: Script) {
        self.scripts.lock().unwrap().push_back(script);
    }

    /// Waits until at least `n` streams have been dropped.
    pub async fn wait_drops(&self, n: usize) {
        loop {
            let notified = self.dropped.notified();
            if self.drops.load(std::sync::atomic::Ordering::SeqCst) >= n {
                return;
            }
            notified.await;
        }
    }
}

impl Backend for ScriptedBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "scripted"
    }

    fn chat(&self, req: BackendRequest) -> ChatFuture {
        self.requests.lock().unwrap().push(req);
        let script = self
            .scripts
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(hello_script);
        let guard = DropSignal {
            notify: self.dropped.clone(),
            count: self.drops.clone(),
        };
        Box::pin(async move {
            let steps = match script {
                Script::Refuse(e) => return Err(e),
                Script::Open(steps) => steps,
            };
            let s = async_stream::stream! {
                let _guard = guard;
                for step in steps {
                    match step {
                        Step::Event(ev) => yield Ok(ev),
                        Step::Fail(e) => { yield Err(e); return; }
                        Step::WaitFor(n) => n.notified().await,
                        Step::Hang => std::future::pending::<()>().await,
                    }
                }
            };
            Ok(Box::pin(s) as sluice::backends::EventStream)
        })
    }

    fn readiness(&self) -> Pin<Box<dyn Future<Output = Readiness> + Send + '_>> {
        Box::pin(async { Readiness::Ready })
    }
}

/// A gateway running in this process.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub state: Arc<AppState>,
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    pub handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A config with one scripted model `m` on backend `b`, plus `extra` TOML.
pub fn scripted_config(extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{extra}

[backends.b]
type = "openai"
base_url = "http://127.0.0.1:9/v1"

[models.m]
backend = "b"
retry = {{ attempts = 1 }}
max_tokens = 100
max_messages = 4
max_prompt_bytes = 1000
"#
    )
}

impl TestGateway {
    /// Starts a gateway from `config`, replacing built backends by `overrides` of the same name.
    pub async fn start(config: &str, overrides: Vec<Arc<dyn Backend>>) -> TestGateway {
        let config = Config::from_toml(config, Path::new("test.toml"), &|_| None).unwrap();
        Self::start_config(config, overrides).await
    }

    /// Starts a gateway from a checked config.
    pub async fn start_config(config: Config, overrides: Vec<Arc<dyn Backend>>) -> TestGateway {
        let metrics = Arc::new(Metrics::new());
        let mut backends = sluice::backends::build(&config, &metrics).await.unwrap();
        for b in overrides {
            backends.insert(b.name().to_owned(), b);
        }
        let gateway = Gateway::bind(&config, backends, metrics.clone())
            .await
            .unwrap();
        let addr = gateway.local_addr();
        let admin = gateway.admin_addr();
        let state = gateway.state();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(gateway.serve(async move {
            let _ = rx.await;
        }));
        TestGateway {
            addr,
            admin,
            state,
            metrics,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    /// Starts the scripted gateway: model `m` served by `backend`.
    pub async fn scripted(backend: Arc<ScriptedBackend>) -> TestGateway {
        Self::start(&scripted_config(""), vec![backend]).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Begins shutdown (as SIGTERM would).
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Waits until no request is in flight, failing the test after 10 s.
    pub async fn idle(&self) {
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.state.in_flight.idle(),
        )
        .await
        .expect("in-flight requests did not return to 0");
        assert_eq!(self.metrics.in_flight.get(), 0);
    }
}

/// A plain HTTP/1.1 client.
pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response read to the end.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `data:` payloads of an SSE body, in order.
    pub fn events(&self) -> Vec<String> {
        sse_data(&self.text())
    }
}

/// Splits an SSE body into its `data:` payloads, asserting the framing on the way.
pub fn sse_data(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "SSE body must end with a blank line: {body:?}"
    );
    body.split("\n\n")
        .filter(|e| !e.is_empty() && !e.starts_with(':'))
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                .to_owned()
        })
        .collect()
}

/// Sends a request and reads the whole response.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client()
        .request(b.body(Full::new(body.into())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// POSTs JSON to the chat endpoint.
pub async fn chat(gw: &TestGateway, body: &serde_json::Value) -> Reply {
    send(
        "POST",
        &gw.url("/v1/chat/completions"),
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

pub fn chat_body(stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "m",
        "stream": stream,
        "messages": [{"role": "user", "content": "Say hello"}],
    })
}

/// Opens a streaming chat request and returns the response with its body unread.
pub async fn open_stream(
    gw: &TestGateway,
    body: &serde_json::Value,
) -> http::Response<hyper::body::Incoming> {
    let req = http::Request::builder()
        .method("POST")
        .uri(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    client().request(req).await.unwrap()
}

/// Reads body frames until `needle` has appeared; returns everything read.
pub async fn read_until(body: &mut hyper::body::Incoming, needle: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(needle) {
        match body.frame().await {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    seen.push_str(&String::from_utf8_lossy(d));
                }
            }
            other => panic!("stream ended before {needle:?}: {other:?}; read {seen:?}"),
        }
    }
    seen
}

/// Reads the rest of a body.
pub async fn read_rest(body: hyper::body::Incoming) -> String {
    let mut out = String::new();
    let mut s = body.into_data_stream();
    while let Some(chunk) = s.next().await {
        out.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    out
}
