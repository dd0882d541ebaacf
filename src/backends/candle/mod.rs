//! Local GGUF models served in-process with candle.
//!
//! A request goes through four steps, each on the thread that suits it:
//!
//! 1. [`Backend::chat`] reserves a place in the model's bounded queue, synchronously, so a full
//!    queue is a 429 before any work is done ([`worker`]).
//! 2. The chat template is rendered and the prompt tokenized on a blocking thread, and the prompt
//!    plus `max_tokens` is checked against the context window (a 400 when it does not fit).
//! 3. A generation thread runs the model inside a compute pool of `threads` ([`generate`]),
//!    streaming deltas back through a channel; dropping the stream closes the channel, which
//!    stops the generation at its next token.
//! 4. `chat` resolves once the first event arrives, so a failure in prefill is still an error
//!    before the first byte.
//!
//! A model that cannot be loaded (missing, wrong hash, broken) leaves the backend up but
//! refusing: `chat` answers 503 `model_unavailable` with the reason, `/readyz` reports it, and
//! `sluice_local_model_loaded` is 0.

mod chat_template;
mod config;
mod detokenize;
mod fetch;
mod generate;
mod gguf_tokenizer;
mod model;
mod sampler;
mod stop;
mod worker;

pub mod bench;

pub use config::{model_dir, CandleConfig, DeviceSpec, Requantize, Source, MODEL_DIR_ENV};
pub use fetch::pull;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use self::generate::{Generator, Job, Stats};
use self::model::{LoadError, LoadedModel};
use self::sampler::SamplingParams;
use self::worker::{QueueMetrics, Refused, WorkQueue};
use super::{Backend, BackendRequest, ChatFuture, EventStream, Readiness};
use crate::api::types::BackendEvent;
use crate::api::types::ChatRequest;
use crate::error::Error;
use crate::metrics::Metrics;

/// A local model backend.
pub struct CandleBackend {
    name: String,
    state: State,
}

enum State {
    Serving(Arc<Serving>),
    /// Load failed or was refused; the reason is safe to show to clients.
    Refused(String),
}

/// What a serving backend shares between `chat` calls and its generation threads.
struct Serving {
    model: Arc<LoadedModel>,
    queue: WorkQueue<Job>,
    stats: Arc<Stats>,
    retry_after: Duration,
    repeat_last_n: usize,
}

/// Counters of a backend's generations since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenerationStats {
    /// Tokens sampled (prompt tokens not included).
    pub tokens_generated: u64,
    /// Generations stopped because their stream was dropped.
    pub cancelled: u64,
    /// Generations that reached a finish reason.
    pub completed: u64,
}

// === impl CandleBackend ===

impl CandleBackend {
    /// Loads the model (fetching it if missing and `source` is set) and starts its generation
    /// threads. Never fails: a model that cannot be served makes a backend that refuses.
    pub async fn start(name: &str, config: CandleConfig, metrics: Arc<Metrics>) -> Self {
        let loaded = metrics.local_model_loaded.with_label_values(&[name]);
        loaded.set(0.0);
        let state = match Self::load(name, config, &metrics).await {
            Ok(serving) => {
                loaded.set(1.0);
                State::Serving(Arc::new(serving))
            }
            Err(e) => {
                tracing::error!(backend = name, error = %e, "local model refused; the backend answers 503 until it is fixed");
                State::Refused(e.public_reason())
            }
        };
        CandleBackend {
            name: name.to_owned(),
            state,
        }
    }

    async fn load(
        name: &str,
        config: CandleConfig,
        metrics: &Metrics,
    ) -> Result<Serving, LoadError> {
        if !config.model_path().is_file() && config.source.is_some() && config.auto_pull {
            pull(&config).await?;
        }
        model::configure_threads(config.threads);
        let cfg = config.clone();
        let model = tokio::task::spawn_blocking(move || LoadedModel::load(&cfg))
            .await
            .map_err(|e| anyhow::anyhow!("the load task failed: {e}"))??;
        tracing::info!(
            backend = name,
            path = %config.model_path().display(),
            device = ?model.device,
            requantized_tensors = model.requantized,
            context = model.max_seq_len,
            "local model loaded"
        );
        let model = Arc::new(model);
        let stats = Arc::new(Stats::default());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads)
            .thread_name({
                let name = name.to_owned();
                move |i| format!("sluice-compute-{name}-{i}")
            })
            .build()
            .map_err(|e| anyhow::anyhow!("building the compute pool: {e}"))?;
        let handler = {
            let model = model.clone();
            let stats = stats.clone();
            let prefill = metrics.local_prefill_rate.with_label_values(&[name]);
            let decode = metrics.local_decode_rate.with_label_values(&[name]);
            move |job: Job| {
                let gen = Generator {
                    tokenizer: &model.tokenizer,
                    eos_ids: &model.info.eos_ids,
                    stats: &stats,
                    prefill_rate: &prefill,
                    decode_rate: &decode,
                };
                let mut session = model.session();
                pool.install(|| gen.run(&mut session, job));
            }
        };
        let queue = WorkQueue::start(
            name,
            config.workers,
            config.queue_depth,
            QueueMetrics {
                wait: metrics.local_queue_wait.with_label_values(&[name]),
                depth: metrics.local_queue_depth.with_label_values(&[name]),
            },
            handler,
        )
        .map_err(|e| anyhow::anyhow!("starting generation threads: {e}"))?;
        Ok(Serving {
            model,
            queue,
            stats,
            retry_after: Duration::from_secs(config.retry_after_secs.max(1)),
            repeat_last_n: config.repeat_last_n,
        })
    }

    /// Counters since start; zero for a backend that is not serving.
    pub fn stats(&self) -> GenerationStats {
        match &self.state {
            State::Serving(s) => GenerationStats {
                tokens_generated: s.stats.tokens_generated.load(Ordering::Relaxed),
                cancelled: s.stats.cancelled.load(Ordering::Relaxed),
                completed: s.stats.completed.load(Ordering::Relaxed),
            },
            State::Refused(_) => GenerationStats::default(),
        }
    }
}

/// The tokenizer a GGUF carries, built as the backend builds it (for tools and tests).
pub fn gguf_tokenizer(path: &std::path::Path) -> anyhow::Result<tokenizers::Tokenizer> {
    use anyhow::Context;
    let mut f = std::io::BufReader::new(
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
    );
    let ct = candle_core::quantized::gguf_file::Content::read(&mut f)?;
    gguf_tokenizer::from_gguf(&ct)
}

impl Backend for CandleBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "candle"
    }

    fn chat(&self, req: BackendRequest) -> ChatFuture {
        let model_name = req.model.name.clone();
        let serving = match &self.state {
            State::Serving(s) => s.clone(),
            State::Refused(reason) => {
                let err = Error::ModelUnavailable {
                    model: model_name,
                    reason: reason.clone(),
                };
                return Box::pin(async move { Err(err) });
            }
        };
        // Reserved here, not in the future: the caller learns at once whether there is room.
        let slot = match serving.queue.try_reserve() {
            Ok(slot) => slot,
            Err(Refused::Full) => {
                let err = Error::Overloaded {
                    model: model_name,
                    retry_after: serving.retry_after,
                };
                return Box::pin(async move { Err(err) });
            }
            Err(Refused::Closed) => {
                let err = Error::ModelUnavailable {
                    model: model_name,
                    reason: "the generation threads have stopped".into(),
                };
                return Box::pin(async move { Err(err) });
            }
        };
        Box::pin(async move {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let prep = serving.clone();
            let job = tokio::task::spawn_blocking(move || prep.prepare(&req, tx))
                .await
                .map_err(|e| Error::Internal(format!("prompt preparation task: {e}")))??;
            slot.send(job);
            let first = match rx.recv().await {
                Some(Ok(ev)) => ev,
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(Error::Internal(
                        "generation ended before its first event".into(),
                    ))
                }
            };
            Ok(event_stream(first, rx))
        })
    }

    fn counts_tokens(&self) -> bool {
        matches!(self.state, State::Serving(_))
    }

    fn count_prompt_tokens(&self, request: &ChatRequest) -> Option<u64> {
        let State::Serving(s) = &self.state else {
            return None;
        };
        let text = s.model.template.render(&request.messages).ok()?;
        let encoded = s.model.tokenizer.encode(text.as_str(), false).ok()?;
        Some(encoded.get_ids().len() as u64)
    }

    fn readiness(&self) -> Pin<Box<dyn Future<Output = Readiness> + Send + '_>> {
        let r = match &self.state {
            State::Serving(_) => Readiness::Ready,
            State::Refused(reason) => Readiness::NotReady(reason.clone()),
        };
        Box::pin(async move { r })
    }
}

// === impl Serving ===

impl Serving {
    /// Renders and tokenizes the prompt and checks that the answer fits. Blocking.
    fn prepare(&self, req: &BackendRequest, events: generate::EventSender) -> Result<Job, Error> {
        let r = &req.request;
        let prompt_text = self.model.template.render(&r.messages)?;
        let prompt = self
            .model
            .tokenizer
            .encode(prompt_text.as_str(), false)
            .map_err(|e| Error::Internal(format!("tokenizing the prompt: {e}")))?
            .get_ids()
            .to_vec();
        let max_tokens = r
            .requested_max_tokens()
            .unwrap_or(req.model.limits.default_max_tokens) as usize;
        let window = self.model.max_seq_len;
        if prompt.len() >= window {
            return Err(Error::invalid(
                "messages",
                format!(
                    "The prompt is {} tokens; this model's context window is {window} tokens.",
                    prompt.len()
                ),
            ));
        }
        if prompt.len() + max_tokens > window {
            return Err(Error::invalid(
                "max_tokens",
                format!(
                    "The prompt ({} tokens) plus max_tokens ({max_tokens}) exceeds this model's context window of {window} tokens; ask for at most {} tokens.",
                    prompt.len(),
                    window - prompt.len()
                ),
            ));
        }
        Ok(Job {
            prompt,
            max_tokens,
            params: SamplingParams {
                temperature: r.temperature.unwrap_or(1.0),
                top_p: r.top_p.unwrap_or(1.0),
                top_k: r.top_k.unwrap_or(0) as usize,
                repetition_penalty: r.repetition_penalty.unwrap_or(1.0) as f32,
                repeat_last_n: self.repeat_last_n,
                seed: r.seed,
            },
            stops: r.stop_sequences(),
            events,
        })
    }
}

/// The events after the first, ending with an error if the generation thread went away without
/// finishing (a panic in a model step).
fn event_stream(
    first: BackendEvent,
    mut rx: mpsc::UnboundedReceiver<crate::Result<BackendEvent>>,
) -> EventStream {
    let s = async_stream::stream! {
        yield Ok(first);
        loop {
            match rx.recv().await {
                Some(Ok(ev)) => {
                    let last = matches!(ev, BackendEvent::Usage(_));
                    yield Ok(ev);
                    if last {
                        return;
                    }
                }
                Some(Err(e)) => {
                    yield Err(e);
                    return;
                }
                None => {
                    yield Err(Error::Internal("the local generation stopped unexpectedly".into()));
                    return;
                }
            }
        }
    };
    s.boxed()
}
