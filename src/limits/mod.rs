//! Rate limits: requests and tokens per minute, globally, per model and per key, and a concurrency
//! cap per key.
//!
//! Every limiter that applies to a request is checked before the backend is called, and a request
//! takes from all of them or from none: when a later scope refuses, what the earlier ones took is
//! given back (a caller's refused requests would otherwise spend its own quota, and a model's or
//! the gateway's, which other callers share). See [`requests`] for why giving a GCRA cell back is
//! sound with requests racing.
//!
//! A refusal of any kind (requests, tokens, concurrency) is a 429 (`rate_limit_exceeded`,
//! [`Error::RateLimited`]) with `retry-after` and OpenAI's `x-ratelimit-*` headers for every kind
//! of limit that applies: the refusing limit for its kind, the tightest as it stands for the
//! other, so a client learns its whole budget from any 429. An admission carries the same headers
//! (for the tightest limit of each kind) and settles the completion tokens when the response
//! ends, however it ends. Limiters are kept by name and quota,
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
use self::requests::{RequestLimiter, Taken};
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
    /// The limiter as it is (nothing was taken), for headers.
    pub state: Granted,
    /// Until this limiter would admit the request.
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

/// The refusal kinds of each scope, in the order scopes are taken: (requests, tokens).
const KINDS: [(&str, &str); 3] = [
    ("key_requests", "key_tokens"),
    ("model_requests", "model_tokens"),
    ("global_requests", "global_tokens"),
];

/// What one request has taken so far. Unless the request is admitted ([`Pending::keep`]), all of
/// it goes back, also on an early return.
struct Pending<'a> {
    /// Request cells, by scope.
    cells: [Option<(&'a RequestLimiter, Taken)>; 3],
    /// Token limiters the prompt was reserved from.
    tokens: Vec<Arc<TokenLimiter>>,
    prompt: u64,
}

/// The tightest token limit of `scoped` as it is, taking nothing: the token headers of a refusal
/// for requests or concurrency.
fn tokens_now(scoped: &[Option<&Scope>; 3]) -> Option<Granted> {
    let mut tightest = None;
    for l in scoped.iter().flatten().filter_map(|s| s.tokens.as_ref()) {
        Tightest::keep(&mut tightest, l.peek());
    }
    tightest
}

// === impl Pending ===

impl Pending<'_> {
    /// Gives back everything taken; returns the tightest request limit as it now is, for headers.
    fn give_back(&mut self) -> Option<Granted> {
        let mut tightest = None;
        for (l, taken) in self.cells.iter_mut().filter_map(Option::take) {
            Tightest::keep(&mut tightest, l.give_back(taken));
        }
        for l in self.tokens.drain(..) {
            l.give_back(self.prompt);
        }
        tightest
    }

    /// Keeps everything taken; returns the token limiters to settle the response with.
    fn keep(mut self) -> Vec<Arc<TokenLimiter>> {
        self.cells = [None; 3];
        std::mem::take(&mut self.tokens)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.give_back();
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
    /// `prompt_tokens`, and takes from all of them or from none: what earlier limits took for a
    /// request that a later one refuses is given back.
    ///
    /// Request cells are taken key, then model, then global (a caller refused by its own key
    /// touches nothing it shares), then prompt tokens in the same order, then the key's
    /// concurrency slot, so only an admitted request ever holds one.
    pub fn admit(
        &self,
        key: Option<&str>,
        model: &str,
        prompt_tokens: u64,
    ) -> Result<Admission, Error> {
        let scopes = self.current();
        let key_scope = key.and_then(|k| scopes.keys.get(k));
        let scoped: [Option<&Scope>; 3] =
            [key_scope, scopes.models.get(model), Some(&scopes.global)];
        let key_label = key.unwrap_or("");
        let mut tight = Tightest::default();
        let mut pending = Pending {
            cells: [None; 3],
            tokens: Vec::new(),
            prompt: prompt_tokens,
        };

        for (i, scope) in scoped.iter().enumerate() {
            let Some(l) = scope.and_then(|s| s.requests.as_deref()) else {
                continue;
            };
            match l.take() {
                Ok(taken) => {
                    Tightest::keep(&mut tight.requests, taken.granted);
                    pending.cells[i] = Some((l, taken));
                }
                Err(d) => {
                    pending.give_back();
                    tight.requests = Some(d.state);
                    tight.tokens = tokens_now(&scoped);
                    return Err(self.refuse(KINDS[i].0, key_label, d.retry_after, &tight));
                }
            }
        }
        for (i, scope) in scoped.iter().enumerate() {
            let Some(l) = scope.and_then(|s| s.tokens.as_ref()) else {
                continue;
            };
            match l.reserve(prompt_tokens) {
                Ok(g) => {
                    Tightest::keep(&mut tight.tokens, g);
                    pending.tokens.push(l.clone());
                }
                Err(d) => {
                    tight.requests = pending.give_back();
                    tight.tokens = Some(d.state);
                    return Err(self.refuse(KINDS[i].1, key_label, d.retry_after, &tight));
                }
            }
        }
        let permit = match key_scope.and_then(|s| s.concurrency.clone()) {
            None => None,
            Some(sem) => match sem.try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    tight.requests = pending.give_back();
                    tight.tokens = tokens_now(&scoped);
                    // When a request in flight will end is unknown: one second is a hint.
                    return Err(self.refuse(
                        "key_concurrency",
                        key_label,
                        Duration::from_secs(1),
                        &tight,
                    ));
                }
            },
        };
        Ok(Admission {
            headers: tight.headers(),
            token_limiters: pending.keep(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Limits for keys `alice` and `bob` on models `m` and `other`; each `*_limits` is TOML lines
    /// for that table.
    fn limits(global: &str, m: &str, alice: &str, bob: &str) -> RateLimits {
        let hash = "0".repeat(64);
        let text = format!(
            "[rate_limits]\n{global}\n\
             [backends.b]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             [models.m]\nbackend = \"b\"\n{m}\n\
             [models.other]\nbackend = \"b\"\n\
             [keys.alice]\nsha256 = \"{hash}\"\n{alice}\n\
             [keys.bob]\nsha256 = \"{}\"\n{bob}\n",
            "1".repeat(64)
        );
        let config = Config::from_toml(&text, Path::new("t.toml"), &|_| None).unwrap();
        let refusals =
            IntCounterVec::new(prometheus::Opts::new("r", "r"), &["kind", "key"]).unwrap();
        RateLimits::new(&config, refusals)
    }

    /// The refusing limit's kind, or `"admitted"`.
    fn outcome(r: &Result<Admission, Error>) -> &'static str {
        match r {
            Ok(_) => "admitted",
            Err(Error::RateLimited { kind, .. }) => kind,
            Err(_) => "other error",
        }
    }

    fn run(l: &RateLimits, key: &str, model: &str, prompt: u64, n: usize) -> Vec<&'static str> {
        (0..n)
            .map(|_| outcome(&l.admit(Some(key), model, prompt)))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_model_refusal_gives_back_the_key_cell() {
        let l = limits("", "requests_per_minute = 2", "requests_per_minute = 5", "");
        let got = run(&l, "alice", "m", 1, 5);
        assert_eq!(
            got,
            [
                "admitted",
                "admitted",
                "model_requests",
                "model_requests",
                "model_requests"
            ]
        );
        let got = run(&l, "alice", "other", 1, 4);
        assert_eq!(got, ["admitted", "admitted", "admitted", "key_requests"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_refusal_gives_back_request_cells() {
        let l = limits(
            "",
            "",
            "requests_per_minute = 2\ntokens_per_minute = 100",
            "",
        );
        assert_eq!(run(&l, "alice", "m", 100, 1), ["admitted"]);
        assert_eq!(run(&l, "alice", "m", 100, 3), ["key_tokens"; 3]);
        // A prompt of nothing fits the empty bucket: only the request limit is left to say no.
        assert_eq!(run(&l, "alice", "m", 0, 2), ["admitted", "key_requests"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_global_refusal_gives_back_key_and_model_cells() {
        // One global cell a second; one key and one model cell every 30 s.
        let l = limits(
            "requests_per_minute = 60",
            "requests_per_minute = 2",
            "requests_per_minute = 2",
            "",
        );
        assert_eq!(run(&l, "bob", "other", 1, 60), ["admitted"; 60]);
        assert_eq!(run(&l, "alice", "m", 1, 2), ["global_requests"; 2]);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(run(&l, "alice", "m", 1, 2), ["admitted"; 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn one_callers_refusals_leave_the_model_quota_to_others() {
        let l = limits("", "requests_per_minute = 3", "tokens_per_minute = 100", "");
        assert_eq!(
            run(&l, "alice", "m", 100, 3),
            ["admitted", "key_tokens", "key_tokens"]
        );
        assert_eq!(
            run(&l, "bob", "m", 1, 3),
            ["admitted", "admitted", "model_requests"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_global_token_refusal_gives_back_key_and_model_tokens() {
        let l = limits(
            "tokens_per_minute = 100",
            "tokens_per_minute = 100",
            "tokens_per_minute = 100",
            "",
        );
        assert_eq!(run(&l, "bob", "other", 60, 1), ["admitted"]);
        assert_eq!(run(&l, "alice", "m", 60, 2), ["global_tokens"; 2]);
        // The global bucket refills 100 tokens a minute: 36 s brings back the 60 bob took.
        tokio::time::advance(Duration::from_secs(36)).await;
        assert_eq!(run(&l, "alice", "m", 100, 1), ["admitted"]);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_slots_are_held_only_by_admitted_requests() {
        let l = limits("", "", "requests_per_minute = 3\nmax_concurrent = 1", "");
        let held = l.admit(Some("alice"), "m", 1).unwrap();
        assert_eq!(run(&l, "alice", "m", 1, 2), ["key_concurrency"; 2]);
        drop(held);
        // The refusals for concurrency took no request cells: two are left.
        assert_eq!(
            run(&l, "alice", "m", 1, 3),
            ["admitted", "admitted", "key_requests"]
        );
        // A request refused by its rate held no slot either.
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(run(&l, "alice", "m", 1, 1), ["admitted"]);
    }

    #[test]
    fn racing_requests_never_overspend_and_refusals_spend_nothing() {
        // Eight threads as two keys on one model; the global limit refuses after the key and the
        // model admitted. Real time: a global cell comes back every 1.5 s and a model cell every
        // 0.6 s, so the test's milliseconds refill at most a few.
        let l = Arc::new(limits(
            "requests_per_minute = 40",
            "requests_per_minute = 100",
            "requests_per_minute = 1000",
            "requests_per_minute = 1000",
        ));
        let started = std::time::Instant::now();
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let l = l.clone();
                std::thread::spawn(move || {
                    let key = if i % 2 == 0 { "alice" } else { "bob" };
                    (0..200)
                        .filter(|_| l.admit(Some(key), "m", 1).is_ok())
                        .count() as u64
                })
            })
            .collect();
        let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        let elapsed = started.elapsed().as_secs_f64();
        let refill = |interval: f64| (elapsed / interval).ceil() as u64;
        assert!(total <= 40 + refill(1.5), "admitted {total}");
        assert!(total >= 40, "admitted only {total}");
        // The model gave up a cell only for each admitted request.
        let s = l.current();
        let model = s.models["m"].requests.as_ref().unwrap();
        let left = model.take().unwrap().granted.remaining + 1;
        assert!(
            left + 1 >= 100 - total && left <= 100 - total + refill(0.6),
            "{left} left after {total} admitted"
        );
    }

    /// The headers of a refusal, as text.
    fn refusal_headers(r: Result<Admission, Error>) -> Vec<(String, String)> {
        let Err(Error::RateLimited { headers, .. }) = r else {
            panic!("not a rate-limit refusal");
        };
        let mut h: Vec<_> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        h.sort();
        h
    }

    fn expect(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut h: Vec<_> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        h.sort();
        h
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_refusal_carries_the_token_headers() {
        let l = limits(
            "",
            "",
            "requests_per_minute = 1\ntokens_per_minute = 600",
            "",
        );
        l.admit(Some("alice"), "m", 100).unwrap();
        let h = refusal_headers(l.admit(Some("alice"), "m", 100));
        assert_eq!(
            h,
            expect(&[
                ("retry-after", "60"),
                ("retry-after-ms", "60000"),
                ("x-ratelimit-limit-requests", "1"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "1m0s"),
                ("x-ratelimit-limit-tokens", "600"),
                ("x-ratelimit-remaining-tokens", "500"),
                ("x-ratelimit-reset-tokens", "10.000s"),
            ])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_has_headers_only_for_the_kinds_limited() {
        let l = limits("", "", "requests_per_minute = 1", "");
        l.admit(Some("alice"), "m", 100).unwrap();
        let h = refusal_headers(l.admit(Some("alice"), "m", 100));
        assert!(h.iter().all(|(k, _)| !k.ends_with("-tokens")), "{h:?}");
        assert_eq!(h.len(), 5, "{h:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_refusal_carries_the_request_headers_as_given_back() {
        let l = limits(
            "",
            "",
            "requests_per_minute = 3\ntokens_per_minute = 600",
            "",
        );
        l.admit(Some("alice"), "m", 500).unwrap();
        let h = refusal_headers(l.admit(Some("alice"), "m", 200));
        assert_eq!(
            h,
            expect(&[
                ("retry-after", "10"),
                ("retry-after-ms", "10000"),
                ("x-ratelimit-limit-requests", "3"),
                ("x-ratelimit-remaining-requests", "2"),
                ("x-ratelimit-reset-requests", "20.000s"),
                ("x-ratelimit-limit-tokens", "600"),
                ("x-ratelimit-remaining-tokens", "100"),
                ("x-ratelimit-reset-tokens", "50.000s"),
            ])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_concurrency_refusal_carries_both_kinds_as_given_back() {
        let l = limits(
            "",
            "",
            "requests_per_minute = 3\ntokens_per_minute = 600\nmax_concurrent = 1",
            "",
        );
        let _held = l.admit(Some("alice"), "m", 100).unwrap();
        let h = refusal_headers(l.admit(Some("alice"), "m", 50));
        assert_eq!(
            h,
            expect(&[
                ("retry-after", "1"),
                ("retry-after-ms", "1000"),
                ("x-ratelimit-limit-requests", "3"),
                ("x-ratelimit-remaining-requests", "2"),
                ("x-ratelimit-reset-requests", "20.000s"),
                ("x-ratelimit-limit-tokens", "600"),
                ("x-ratelimit-remaining-tokens", "500"),
                ("x-ratelimit-reset-tokens", "10.000s"),
            ])
        );
    }
}
