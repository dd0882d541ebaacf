//! One record per chat request: metrics and the access log line, written once, when the request
//! really ends.
//!
//! The record travels with the response body, so it is finished when the last byte is handed to
//! the connection, when the stream fails, or when the client goes away and the body is dropped —
//! whichever comes first. Durations recorded at header time would make every stream look instant.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Histogram;

use crate::access_log::{self, Entry};
use crate::api::types::{ChoiceDelta, Usage};
use crate::error::Error;
use crate::limits::Admission;
use crate::metrics::Metrics;
use crate::request_id::RequestId;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered in full.
    Ok,
    /// Refused or failed before the first byte.
    Rejected,
    /// Failed after the first byte; the stream ended with an error event.
    StreamError,
    /// The client went away before the end.
    ClientClosed,
    /// Ended by shutdown after the grace period.
    Shutdown,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Rejected => "rejected",
            Outcome::StreamError => "stream_error",
            Outcome::ClientClosed => "client_closed",
            Outcome::Shutdown => "shutdown",
        }
    }
}

/// The measurements of one request.
pub struct RequestRecord {
    metrics: Arc<Metrics>,
    request_id: RequestId,
    start: Instant,
    /// The configured model name, or `unknown` before the model is resolved.
    pub model: String,
    /// The backend name, or empty before routing.
    pub backend: String,
    pub status: u16,
    pub outcome: Outcome,
    pub stream: bool,
    /// Time waiting on the backend (its answer and each event); the rest is gateway overhead.
    pub backend_wait: Duration,
    pub ttft: Option<Duration>,
    last_token: Option<Instant>,
    /// The inter-token histogram of this model and backend, looked up at the second token
    /// instead of at every token.
    inter_token: Option<Histogram>,
    pub usage: Option<Usage>,
    error_code: Option<String>,
    /// The key's name (never the key).
    pub key: Option<String>,
    /// Rate-limit account to settle when the request ends.
    pub admission: Option<Admission>,
    /// Bytes of content sent, to estimate completion tokens when a stream is cut short.
    content_bytes: usize,
    /// Content events sent, the lower bound of completion tokens for a cut stream.
    content_events: u64,
    /// The router already counted this request's upstream error.
    pub upstream_error_counted: bool,
    /// The prompt the request was built from.
    pub prompt: Option<crate::prompts::PromptTag>,
}

// === impl RequestRecord ===

impl RequestRecord {
    /// Starts a record at `start`.
    pub fn new(metrics: Arc<Metrics>, request_id: RequestId, start: Instant) -> Self {
        RequestRecord {
            metrics,
            request_id,
            start,
            model: "unknown".into(),
            backend: String::new(),
            status: 200,
            outcome: Outcome::ClientClosed,
            stream: false,
            backend_wait: Duration::ZERO,
            ttft: None,
            last_token: None,
            inter_token: None,
            usage: None,
            error_code: None,
            key: None,
            admission: None,
            content_bytes: 0,
            content_events: 0,
            upstream_error_counted: false,
            prompt: None,
        }
    }

    /// When the request started.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// Records an error answered before the first byte.
    pub fn reject(&mut self, err: &Error) {
        self.status = err.status().as_u16();
        self.outcome = Outcome::Rejected;
        self.note_error(err);
    }

    /// Records an error that ended a started stream.
    pub fn stream_error(&mut self, err: &Error) {
        self.outcome = if matches!(err, Error::ShuttingDown) {
            Outcome::Shutdown
        } else {
            Outcome::StreamError
        };
        self.note_error(err);
    }

    fn note_error(&mut self, err: &Error) {
        self.error_code = err.code().map(str::to_owned);
        if let Some(kind) = err.upstream_kind().filter(|_| !self.upstream_error_counted) {
            let backend = if self.backend.is_empty() {
                "unknown"
            } else {
                &self.backend
            };
            self.metrics
                .upstream_errors
                .with_label_values(&[backend, kind])
                .inc();
        }
    }

    /// Marks content sent to the client now: TTFT the first time, inter-token gap after.
    pub fn token(&mut self, now: Instant, delta: &ChoiceDelta) {
        self.content_bytes += delta.content.as_ref().map_or(0, String::len);
        self.content_events += 1;
        match self.last_token {
            None => self.ttft = Some(now - self.start),
            Some(prev) => {
                let (metrics, labels) = (&self.metrics, [&self.model, &self.backend]);
                self.inter_token
                    .get_or_insert_with(|| metrics.inter_token_latency.with_label_values(&labels))
                    .observe((now - prev).as_secs_f64())
            }
        }
        self.last_token = Some(now);
    }

    /// Completion tokens: the backend's count, or for a stream cut short an estimate (one token
    /// per four bytes, and at least one per content event).
    fn completion_tokens(&self) -> u64 {
        match self.usage {
            Some(u) => u.completion_tokens,
            None => (self.content_bytes as u64)
                .div_ceil(4)
                .max(self.content_events),
        }
    }

    fn finish(&mut self) {
        let total = self.start.elapsed();
        if let Some(a) = &self.admission {
            a.settle(
                self.usage.map(|u| u.prompt_tokens),
                self.completion_tokens(),
            );
        }
        let m = &self.metrics;
        let status = self.status.to_string();
        m.requests.with_label_values(&[&self.model, &status]).inc();
        if !self.backend.is_empty() {
            let labels = [self.model.as_str(), self.backend.as_str()];
            m.request_duration
                .with_label_values(&labels)
                .observe(total.as_secs_f64());
            m.gateway_overhead
                .with_label_values(&labels)
                .observe(total.saturating_sub(self.backend_wait).as_secs_f64());
            if let Some(ttft) = self.ttft {
                m.time_to_first_token
                    .with_label_values(&labels)
                    .observe(ttft.as_secs_f64());
            }
            if let Some(u) = self.usage {
                m.prompt_tokens
                    .with_label_values(&labels)
                    .inc_by(u.prompt_tokens);
                m.completion_tokens
                    .with_label_values(&labels)
                    .inc_by(u.completion_tokens);
            }
        }
        if matches!(
            self.outcome,
            Outcome::StreamError | Outcome::ClientClosed | Outcome::Shutdown
        ) {
            m.streams_aborted
                .with_label_values(&[&self.model, self.outcome.as_str()])
                .inc();
        }
        access_log::write(&Entry {
            request_id: self.request_id.as_str(),
            key: self.key.as_deref(),
            model: &self.model,
            backend: &self.backend,
            status: self.status,
            outcome: self.outcome.as_str(),
            stream: self.stream,
            duration: total,
            ttft: self.ttft,
            overhead: total.saturating_sub(self.backend_wait),
            prompt_tokens: self.usage.map(|u| u.prompt_tokens),
            completion_tokens: self.usage.map(|u| u.completion_tokens),
            error: self.error_code.as_deref(),
            prompt: self
                .prompt
                .as_ref()
                .map(|p| (p.id.as_str(), p.version.as_str())),
        });
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        self.finish();
    }
}
