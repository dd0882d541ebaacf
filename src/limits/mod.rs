//! Rate limits: requests and tokens per minute, globally, per model and per key, and a concurrency
//! cap per key.
//!
//! Every limiter that applies to a request is checked before the backend is called. A refusal is a
//! 429 (`rate_limit_exceeded`, [`Error::RateLimited`]) with `retry-after` and OpenAI's `x-ratelimit-*` headers; an
//! admission carries the same headers (for the tightest limit of each kind) and settles the
//! completion tokens when the response ends, however it ends. Limiters are kept by name and quota,
//! so a config reload that leaves a limit unchanged keeps its state.

pub mod clock;
pub mod headers;
pub mod requests;
pub mod tokens;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use prometheus::IntCounterVec;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use self::headers::RateHeaders;
use self::requests::RequestLimiter;
use self::tokens::TokenLimiter;
use crate::api::types::ChatRequest;
use crate::config::{Config, RateLimitConfig};
use crate::error::Error;

/// What an admitting limiter reports, for headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    pub limit: u64,
    pub remaining: u64,
    /// Until the limiter is full again.
    pub reset: Duration,
}

/// What a refusing limiter reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    pub limit: u64,
    pub retry_after: Duration,
}

/// A request admitted by every limit that applies to it.
pub struct Admission {
    /// `x-ratelimit-*` headers for the response.
    pub headers: RateHeaders,
    /// Token limiters to charge when the response ends.
    token_limiters: Vec<Arc<TokenLimiter>>,
    /// The prompt tokens charged at admission (an estimate when the real count is unknown).
    charged_prompt: u64,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// Settles the account when the response has ended: adds the completion tokens and corrects
    /// the prompt estimate once the real count is known.
    pub fn settle(&self, prompt_tokens: Option<u64>, completion_tokens: u64) {
        let correction = prompt_tokens.map_or(0, |p| p as i64 - self.charged_prompt as i64);
        let charge = completion_tokens as i64 + correction;
        for l in &self.token_limiters {
            l.charge(charge);
        }
    }
}

/// The limits that apply to one caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Quotas {
    pub requests_per_minute: Option<NonZeroU32>,
    pub tokens_per_minute: Option<u64>,
    pub max_concurrent: Option<usize>,
}

impl From<RateLimitConfig> for Quotas {
    fn from(c: RateLimitConfig) -> Self {
        Quotas {
            requests_per_minute: c.requests_per_minute,
            tokens_per_minute: c.tokens_per_minute,
            max_concurrent: c.max_concurrent,
        }
    }
}

#[derive(Default)]
struct Scope {
    requests: Option<Arc<RequestLimiter>>,
    tokens: Option<Arc<TokenLimiter>>,
    concurrency: Option<Arc<Semaphore>>,
    quotas: Quotas,
}

impl Scope {
    fn new(q: Quotas, previous: Option<&Scope>) -> Scope {
        let same = previous.filter(|p| p.quotas == q);
        if let Some(p) = same {
            return Scope {
                requests: p.requests.clone(),
                tokens: p.tokens.clone(),
                concurrency: p.concurrency.clone(),
                quotas: q,
            };
        }
        Scope {
            requests: q
                .requests_per_minute
                .map(|n| Arc::new(RequestLimiter::new(n))),
            tokens: q.tokens_per_minute.map(|n| Arc::new(TokenLimiter::new(n))),
            concurrency: q.max_concurrent.map(|n| Arc::new(Semaphore::new(n))),
            quotas: q,
        }
    }

    fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none() && self.concurrency.is_none()
    }
}

#[derive(Default)]
struct Scopes {
    global: Scope,
    models: HashMap<String, Scope>,
    keys: HashMap<String, Scope>,
}

/// Every limiter of the gateway.
pub struct RateLimits {
    scopes: Mutex<Arc<Scopes>>,
    refusals: IntCounterVec,
}

/// The estimate of prompt tokens used when the backend has no tokenizer at hand (remote
/// endpoints): one token per four bytes of
/// text, plus four per message for the chat template's framing. It errs high for English and low
/// for scripts that tokenize densely; the real count corrects it when the response ends.
pub fn estimate_prompt_tokens(req: &ChatRequest) -> u64 {
    req.messages
        .iter()
        .map(|m| (m.text_len() as u64).div_ceil(4) + 4)
        .sum()
}

fn put(h: &mut HeaderMap, name: HeaderName, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(name, v);
    }
}

// Built at compile time rather than parsed at each refusal.
const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");

/// Keeps, for each kind, the grant with the least remaining.
#[derive(Default)]
struct Tightest {
    requests: Option<Granted>,
    tokens: Option<Granted>,
}

impl Tightest {
    fn keep(slot: &mut Option<Granted>, g: Granted) {
        if slot.is_none_or(|cur| g.remaining < cur.remaining) {
            *slot = Some(g);
        }
    }

    fn headers(&self) -> RateHeaders {
        RateHeaders::new(self.requests, self.tokens)
    }
}

// === impl RateLimits ===

impl RateLimits {
    /// Limiters for `config`; `refusals` counts 429s by limit kind and key name.
    pub fn new(config: &Config, refusals: IntCounterVec) -> Self {
        let limits = RateLimits {
            scopes: Mutex::new(Arc::new(Scopes::default())),
            refusals,
        };
        limits.reload(config);
        limits
    }

    /// Applies a new config, keeping the state of every limiter whose quota did not change.
    pub fn reload(&self, config: &Config) {
        let Ok(mut slot) = self.scopes.lock() else {
            return;
        };
        let old = slot.clone();
        let mut next = Scopes {
            global: Scope::new(config.rate_limits.into(), Some(&old.global)),
            ..Scopes::default()
        };
        for (name, m) in &config.models {
            let s = Scope::new(m.rate_limits.into(), old.models.get(name));
            if !s.is_empty() {
                next.models.insert(name.clone(), s);
            }
        }
        for k in &config.keys {
            let s = Scope::new(k.rate_limits.into(), old.keys.get(&k.name));
            if !s.is_empty() {
                next.keys.insert(k.name.clone(), s);
            }
        }
        *slot = Arc::new(next);
    }

    fn current(&self) -> Arc<Scopes> {
        match self.scopes.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether a token limit applies to requests by `key` for `model` (only then is the prompt
    /// worth counting exactly).
    pub fn counts_tokens(&self, key: Option<&str>, model: &str) -> bool {
        let s = self.current();
        s.global.tokens.is_some()
            || s.models.get(model).is_some_and(|m| m.tokens.is_some())
            || key
                .and_then(|k| s.keys.get(k))
                .is_some_and(|k| k.tokens.is_some())
    }

    /// Checks every limit that applies to a request by `key` for `model` with a prompt of
    /// `prompt_tokens`.
    pub fn admit(
        &self,
        key: Option<&str>,
        model: &str,
        prompt_tokens: u64,
    ) -> Result<Admission, Error> {
        let scopes = self.current();
        let key_scope = key.and_then(|k| scopes.keys.get(k));
        let scoped: [(&str, Option<&Scope>); 3] = [
            ("key", key_scope),
            ("model", scopes.models.get(model)),
            ("global", Some(&scopes.global)),
        ];
        let key_label = key.unwrap_or("");
        let mut tight = Tightest::default();

        let permit = match key_scope.and_then(|s| s.concurrency.clone()) {
            None => None,
            Some(sem) => match sem.try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    return Err(self.refuse(
                        "key_concurrency",
                        key_label,
                        Duration::from_secs(1),
                        &tight,
                    ))
                }
            },
        };
        for (scope_name, scope) in scoped {
            let Some(l) = scope.and_then(|s| s.requests.as_ref()) else {
                continue;
            };
            match l.check() {
                Ok(g) => Tightest::keep(&mut tight.requests, g),
                Err(d) => {
                    let kind = match scope_name {
                        "key" => "key_requests",
                        "model" => "model_requests",
                        _ => "global_requests",
                    };
                    tight.requests = Some(Granted {
                        limit: d.limit,
                        remaining: 0,
                        reset: d.retry_after,
                    });
                    return Err(self.refuse(kind, key_label, d.retry_after, &tight));
                }
            }
        }
        let mut charged = Vec::new();
        for (scope_name, scope) in scoped {
            let Some(l) = scope.and_then(|s| s.tokens.as_ref()) else {
                continue;
            };
            match l.reserve(prompt_tokens) {
                Ok(g) => {
                    Tightest::keep(&mut tight.tokens, g);
                    charged.push(l.clone());
                }
                Err(d) => {
                    // Give back what earlier scopes took for this request.
                    for c in &charged {
                        c.charge(-(prompt_tokens as i64));
                    }
                    let kind = match scope_name {
                        "key" => "key_tokens",
                        "model" => "model_tokens",
                        _ => "global_tokens",
                    };
                    tight.tokens = Some(Granted {
                        limit: d.limit,
                        remaining: 0,
                        reset: d.retry_after,
                    });
                    return Err(self.refuse(kind, key_label, d.retry_after, &tight));
                }
            }
        }
        Ok(Admission {
            headers: tight.headers(),
            token_limiters: charged,
            charged_prompt: prompt_tokens,
            _permit: permit,
        })
    }

    fn refuse(
        &self,
        kind: &'static str,
        key: &str,
        retry_after: Duration,
        tight: &Tightest,
    ) -> Error {
        self.refusals.with_label_values(&[kind, key]).inc();
        let mut headers = HeaderMap::new();
        tight.headers().apply_to(&mut headers);
        put(
            &mut headers,
            http::header::RETRY_AFTER,
            retry_after.as_secs_f64().ceil().max(1.0).to_string(),
        );
        // Clients that read it (the OpenAI SDKs do) retry at the exact moment instead of rounding up.
        put(
            &mut headers,
            RETRY_AFTER_MS,
            retry_after.as_millis().max(1).to_string(),
        );
        Error::RateLimited {
            kind,
            retry_after,
            headers: Box::new(headers),
        }
    }
}
