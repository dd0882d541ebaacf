//! Backends: where a chat request is answered.
//!
//! A backend turns one [`BackendRequest`] into a stream of [`BackendEvent`]s. Failing before the
//! first event is an `Err` from [`Backend::chat`] (the handler can still answer with a status);
//! failing after it is an `Err` item inside the stream (the handler ends the SSE stream with an
//! error event). Dropping the stream must cancel the work at once: a remote request is aborted, a
//! local generation stops at its next token.

pub mod candle;
pub mod http1_codec;
pub mod http1_pool;
pub mod openai;
pub mod sse_parser;
pub mod token_cap;
pub mod wire_chunk;
pub mod wire_delta;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;

use crate::api::types::{BackendEvent, ChatRequest};
use crate::config::{BackendConfig, Config, ModelConfig};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::request_id::RequestId;

/// Events of one response, ending after the last event or at the first error.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<BackendEvent>> + Send>>;

/// What [`Backend::chat`] returns.
pub type ChatFuture = Pin<Box<dyn Future<Output = Result<EventStream>> + Send>>;

/// One request as a backend sees it.
#[derive(Debug, Clone)]
pub struct BackendRequest {
    /// The model as configured: client-facing name, upstream name, limits.
    pub model: Arc<ModelConfig>,
    /// The validated request. `max_tokens` is already resolved against the model's limits.
    pub request: ChatRequest,
    /// For logs and upstream correlation (`x-request-id`).
    pub request_id: RequestId,
}

/// Whether a backend can take requests now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady(String),
}

/// A place that answers chat requests.
pub trait Backend: Send + Sync {
    /// The configured name (`[backends.NAME]`).
    fn name(&self) -> &str;
    /// The `type` key (`openai`, `candle`).
    fn kind(&self) -> &'static str;
    /// Starts one request. Errors here happen before anything was sent to the client.
    fn chat(&self, req: BackendRequest) -> ChatFuture;
    /// Whether the backend is usable now, for `/readyz`.
    fn readiness(&self) -> Pin<Box<dyn Future<Output = Readiness> + Send + '_>>;

    /// Whether [`Backend::count_prompt_tokens`] can answer: the admission path moves to a
    /// blocking thread only for backends that can.
    fn counts_tokens(&self) -> bool {
        false
    }

    /// The exact prompt token count of `request`, when the backend has the model's tokenizer.
    /// Blocking and CPU-bound: call it off the async workers.
    fn count_prompt_tokens(&self, _request: &ChatRequest) -> Option<u64> {
        None
    }
}

/// All configured backends, by name.
pub type Backends = BTreeMap<String, Arc<dyn Backend>>;

/// Builds every backend in the config. Local models are loaded here (and fetched if missing);
/// a model that fails to load is kept as a backend that refuses with a clear message.
pub async fn build(config: &Config, metrics: &Arc<Metrics>) -> anyhow::Result<Backends> {
    let mut out: Backends = BTreeMap::new();
    for (name, b) in &config.backends {
        let backend: Arc<dyn Backend> = match b {
            BackendConfig::OpenAi(o) => Arc::new(openai::OpenAiBackend::new(name, o.clone())?),
            BackendConfig::Candle(c) => {
                Arc::new(candle::CandleBackend::start(name, c.clone(), metrics.clone()).await)
            }
        };
        out.insert(name.clone(), backend);
    }
    Ok(out)
}
