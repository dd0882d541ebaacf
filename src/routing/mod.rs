//! Routing: which backend answers a request for a model.
//!
//! A model has one or more targets. A request goes to one picked by weight (a canary split is two
//! targets with weights 95/5); a target with several replicas sends it to the less loaded of two
//! random replicas (power of two choices on outstanding requests). Before the first byte, a
//! retryable failure (connect, timeout, 429, 5xx) is retried on the same target with jittered
//! backoff while the retry budget allows, then the model's ordered fallbacks are tried. A breaker
//! per target takes a failing target out of rotation and probes it back in. A canary target with
//! guard limits is dropped to weight 0 the moment it crosses one. Operators can change weights and
//! switch models or targets off through the admin API; the change applies to the next request.

pub mod breaker;
pub mod canary;
pub mod retry;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use http::HeaderValue;
use rand::Rng;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use self::breaker::Breaker;
use self::canary::CanaryWindow;
use self::retry::Budget;
use crate::api::types::{BackendEvent, ChatRequest};
use crate::audit::AuditLog;
use crate::backends::{Backend, BackendRequest, Backends, EventStream};
use crate::config::{ModelConfig, TargetConfig};
use crate::error::{Error, TimeoutPhase};
use crate::metrics::Metrics;
use crate::request_id::RequestId;

/// One backend of a target, with its load.
struct Replica {
    backend: Arc<dyn Backend>,
    outstanding: Arc<AtomicUsize>,
}

/// One routing target of a model.
pub struct Target {
    pub config: TargetConfig,
    /// The model as this target's backends see it (its own `upstream_model`).
    model: Arc<ModelConfig>,
    replicas: Vec<Replica>,
    weight: AtomicU32,
    enabled: AtomicBool,
    pub breaker: Breaker,
    canary: Option<CanaryWindow>,
    /// The version shown in `x-sluice-model-version`.
    pub version: Option<String>,
    /// `x-sluice-target` and `x-sluice-model-version` values, made once rather than per response.
    headers: TargetHeaders,
}

/// A target's response header values; `None` where the text is not a valid header value.
#[derive(Debug, Clone, Default)]
pub struct TargetHeaders {
    pub name: Option<HeaderValue>,
    pub version: Option<HeaderValue>,
}

/// The routing state of one model.
pub struct ModelRouter {
    pub model: Arc<ModelConfig>,
    targets: Vec<Arc<Target>>,
    budget: Budget,
    enabled: AtomicBool,
    metrics: Arc<Metrics>,
    audit: Arc<AuditLog>,
}

/// A backend stream opened for a request, and where it came from.
pub struct Opened {
    pub target: Arc<Target>,
    /// The backend that answered (a replica's name).
    pub backend: String,
    pub stream: EventStream,
}

/// What the outcome tracker needs to report a finished stream.
struct Outcome {
    router: Arc<ModelRouter>,
    target: Arc<Target>,
    started: Instant,
    _load: LoadGuard,
    reported: bool,
}

struct LoadGuard(Arc<AtomicUsize>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Target ===

impl Target {
    /// The configured name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Its response header values (clones share their bytes).
    pub fn headers(&self) -> &TargetHeaders {
        &self.headers
    }

    /// The weight now (config, admin changes and rollbacks applied).
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Whether an operator has left this target on.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    fn eligible(&self) -> bool {
        self.is_enabled() && self.breaker.state() != breaker::State::Open
    }

    /// Power of two choices on outstanding requests.
    fn pick_replica(&self) -> &Replica {
        let n = self.replicas.len();
        if n == 1 {
            return &self.replicas[0];
        }
        let mut rng = rand::rng();
        let a = rng.random_range(0..n);
        let mut b = rng.random_range(0..n - 1);
        if b >= a {
            b += 1;
        }
        let (ra, rb) = (&self.replicas[a], &self.replicas[b]);
        if rb.outstanding.load(Ordering::Relaxed) < ra.outstanding.load(Ordering::Relaxed) {
            rb
        } else {
            ra
        }
    }
}

// === impl ModelRouter ===

impl ModelRouter {
    /// The router of `model`, with backends looked up by name. Runtime state (weights set by an
    /// operator, breakers) is taken over from `previous` for targets that keep their name.
    pub fn new(
        model: Arc<ModelConfig>,
        backends: &Backends,
        metrics: Arc<Metrics>,
        audit: Arc<AuditLog>,
    ) -> Result<Self, String> {
        let mut targets = Vec::new();
        for t in &model.targets {
            let mut replicas = Vec::new();
            for b in &t.replicas {
                let backend = backends
                    .get(b)
                    .cloned()
                    .ok_or_else(|| format!("model `{}`: backend `{b}` is not built", model.name))?;
                replicas.push(Replica {
                    backend,
                    outstanding: Arc::default(),
                });
            }
            let mut target_model = (*model).clone();
            target_model.upstream_model = t.upstream_model.clone();
            let version = t.version.clone().or_else(|| model.registry.version.clone());
            let headers = TargetHeaders {
                name: HeaderValue::from_str(&t.name).ok(),
                version: version
                    .as_deref()
                    .and_then(|v| HeaderValue::from_str(v).ok()),
            };
            targets.push(Arc::new(Target {
                model: Arc::new(target_model),
                replicas,
                weight: AtomicU32::new(t.weight),
                enabled: AtomicBool::new(true),
                breaker: Breaker::new(model.breaker),
                canary: t.canary.map(CanaryWindow::new),
                version,
                headers,
                config: t.clone(),
            }));
        }
        let r = &model.registry;
        metrics
            .model_info
            .with_label_values(&[
                model.name.as_str(),
                r.version.as_deref().unwrap_or(""),
                r.owner.as_deref().unwrap_or(""),
                r.approved_by.as_deref().unwrap_or(""),
            ])
            .set(1);
        Ok(ModelRouter {
            budget: Budget::new(&model.retry),
            model,
            targets,
            enabled: AtomicBool::new(true),
            metrics,
            audit,
        })
    }

    /// The backend whose tokenizer counts prompts for this model: the first target's first
    /// replica (targets of one model serve the same model family), when it has a tokenizer.
    pub fn counting_backend(&self) -> Option<Arc<dyn Backend>> {
        self.targets
            .first()
            .and_then(|t| t.replicas.first())
            .filter(|r| r.backend.counts_tokens())
            .map(|r| r.backend.clone())
    }

    /// The targets, in config order.
    pub fn targets(&self) -> &[Arc<Target>] {
        &self.targets
    }

    /// Whether the model is switched on.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    fn target(&self, name: &str) -> Option<&Arc<Target>> {
        self.targets.iter().find(|t| t.name() == name)
    }

    /// Picks a target by weight among the eligible ones.
    fn pick(&self) -> Option<Arc<Target>> {
        let eligible: Vec<&Arc<Target>> = self
            .targets
            .iter()
            .filter(|t| t.eligible() && t.weight() > 0)
            .collect();
        let total: u64 = eligible.iter().map(|t| u64::from(t.weight())).sum();
        if total == 0 {
            return None;
        }
        let mut x = rand::rng().random_range(0..total);
        for t in eligible {
            let w = u64::from(t.weight());
            if x < w {
                return Some(t.clone());
            }
            x -= w;
        }
        None
    }

    /// The order in which targets are tried for one request: a target picked by weight, then the
    /// enabled fallbacks. It calls no backend and touches no budget or breaker, so it is public for
    /// the routing benchmark (benches/gateway.rs).
    pub fn plan(&self) -> Vec<Arc<Target>> {
        let mut plan: Vec<Arc<Target>> = self.pick().into_iter().collect();
        for f in &self.model.fallbacks {
            if let Some(t) = self.target(f) {
                if t.is_enabled() && !plan.iter().any(|p| Arc::ptr_eq(p, t)) {
                    plan.push(t.clone());
                }
            }
        }
        plan
    }

    /// Opens a backend stream for `request`, trying targets, retries and fallbacks as configured.
    pub async fn open(
        self: &Arc<Self>,
        request: &ChatRequest,
        request_id: &RequestId,
    ) -> Result<Opened, Error> {
        self.open_pinned(request, request_id, None).await
    }

    /// Opens a backend stream on the target named `pin` alone when one is given
    /// (`x-sluice-target`): whatever its weight, without fallbacks, so what answers is what was
    /// asked for, but not when an operator has switched it off or its breaker is open.
    pub async fn open_pinned(
        self: &Arc<Self>,
        request: &ChatRequest,
        request_id: &RequestId,
        pin: Option<&str>,
    ) -> Result<Opened, Error> {
        if !self.is_enabled() {
            return Err(Error::ModelUnavailable {
                model: self.model.name.clone(),
                reason: "it is switched off by an operator.".into(),
            });
        }
        let plan = match pin {
            None => None,
            Some(name) => {
                let t = self.target(name).ok_or_else(|| {
                    Error::invalid(
                        "x-sluice-target",
                        format!("The model `{}` has no target `{name}`.", self.model.name),
                    )
                })?;
                if !t.is_enabled() {
                    return Err(Error::ModelUnavailable {
                        model: self.model.name.clone(),
                        reason: format!("target `{name}` is switched off by an operator."),
                    });
                }
                Some(vec![t.clone()])
            }
        };
        self.budget.deposit();
        let plan = plan.unwrap_or_else(|| self.plan());
        let mut last: Option<Error> = None;
        for (i, target) in plan.iter().enumerate() {
            if i > 0 {
                self.metrics
                    .fallbacks
                    .with_label_values(&[self.model.name.as_str()])
                    .inc();
            }
            for attempt in 1..=self.model.retry.attempts {
                if attempt > 1 {
                    if !self.budget.withdraw() {
                        break;
                    }
                    self.metrics
                        .retries
                        .with_label_values(&[self.model.name.as_str()])
                        .inc();
                    tokio::time::sleep(self.model.retry.backoff(attempt - 1)).await;
                }
                if !target.breaker.allow() {
                    last.get_or_insert(Error::ModelUnavailable {
                        model: self.model.name.clone(),
                        reason: format!("target `{}` is failing (circuit open).", target.name()),
                    });
                    break;
                }
                let replica = target.pick_replica();
                replica.outstanding.fetch_add(1, Ordering::Relaxed);
                let load = LoadGuard(replica.outstanding.clone());
                self.metrics
                    .target_requests
                    .with_label_values(&[self.model.name.as_str(), target.name()])
                    .inc();
                let started = Instant::now();
                let call = replica.backend.chat(BackendRequest {
                    model: target.model.clone(),
                    request: request.clone(),
                    request_id: request_id.clone(),
                });
                // A stream counts as opened once its first event is in: a failure before that
                // (an upstream that sends headers and then dies) can still fall back.
                let first_event = async {
                    let mut stream = call.await?;
                    match stream.next().await {
                        Some(Err(e)) => Err(e),
                        Some(Ok(ev)) => Ok(Box::pin(
                            futures_util::stream::once(async { Ok(ev) }).chain(stream),
                        ) as EventStream),
                        None => Ok(stream),
                    }
                };
                let result = match target.config.timeout {
                    None => first_event.await,
                    Some(t) => tokio::time::timeout(t, first_event)
                        .await
                        .unwrap_or_else(|_| {
                            Err(Error::UpstreamTimeout {
                                backend: replica.backend.name().to_owned(),
                                phase: TimeoutPhase::FirstByte,
                            })
                        }),
                };
                match result {
                    Ok(stream) => {
                        target.breaker.record(true);
                        self.publish_breaker(target);
                        let outcome = Outcome {
                            router: self.clone(),
                            target: target.clone(),
                            started,
                            _load: load,
                            reported: false,
                        };
                        return Ok(Opened {
                            target: target.clone(),
                            backend: replica.backend.name().to_owned(),
                            stream: Box::pin(track(stream, outcome)),
                        });
                    }
                    Err(e) if e.is_retryable() => {
                        // Every retryable failure is counted here, including the one that may
                        // end the request (the handler does not count it again).
                        if let Some(kind) = e.upstream_kind() {
                            self.metrics
                                .upstream_errors
                                .with_label_values(&[replica.backend.name(), kind])
                                .inc();
                        }
                        tracing::debug!(model = %self.model.name, target = target.name(), attempt, error = %e, "retryable failure");
                        target.breaker.record(false);
                        self.publish_breaker(target);
                        self.report(target, false, started.elapsed(), false);
                        last = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::ModelUnavailable {
            model: self.model.name.clone(),
            reason: "no target is available.".into(),
        }))
    }

    fn publish_breaker(&self, target: &Target) {
        self.metrics
            .breaker_state
            .with_label_values(&[self.model.name.as_str(), target.name()])
            .set(target.breaker.state().as_gauge());
    }

    /// Feeds a finished request to the target's canary guard; rolls the target back if it trips.
    fn report(&self, target: &Target, ok: bool, latency: Duration, guardrail: bool) {
        let Some(window) = &target.canary else {
            return;
        };
        let Some(reason) = window.record(ok, latency, guardrail) else {
            return;
        };
        if target.weight.swap(0, Ordering::Relaxed) == 0 {
            return;
        }
        tracing::warn!(model = %self.model.name, target = target.name(), %reason, "canary rolled back: weight set to 0");
        self.metrics
            .canary_rollbacks
            .with_label_values(&[self.model.name.as_str(), target.name()])
            .inc();
        self.audit_record(
            "canary_rollback",
            &[
                ("model", Value::from(self.model.name.clone())),
                ("target", Value::from(target.name())),
                ("reason", Value::from(reason)),
                ("who", Value::from("canary_guard")),
            ],
        );
    }

    /// Records an output guardrail trip against the target that served (for its canary guard).
    pub fn guardrail_tripped(&self, target: &Target, latency: Duration) {
        self.report(target, true, latency, true);
    }

    fn audit_record(&self, event: &str, fields: &[(&str, Value)]) {
        let map: Map<String, Value> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        self.audit.record(event, map);
    }

    /// Sets a target's weight (admin API).
    pub fn set_weight(&self, target: &str, weight: u32, who: &str) -> Result<(), String> {
        let t = self
            .target(target)
            .ok_or_else(|| format!("no target `{target}`"))?;
        let old = t.weight.swap(weight, Ordering::Relaxed);
        self.audit_record(
            "weight_set",
            &[
                ("model", Value::from(self.model.name.clone())),
                ("target", Value::from(target)),
                ("from", Value::from(old)),
                ("to", Value::from(weight)),
                ("who", Value::from(who)),
            ],
        );
        Ok(())
    }

    /// Switches a target on or off (admin API).
    pub fn set_target_enabled(&self, target: &str, on: bool, who: &str) -> Result<(), String> {
        let t = self
            .target(target)
            .ok_or_else(|| format!("no target `{target}`"))?;
        t.enabled.store(on, Ordering::Relaxed);
        self.audit_record(
            "target_switched",
            &[
                ("model", Value::from(self.model.name.clone())),
                ("target", Value::from(target)),
                ("enabled", Value::from(on)),
                ("who", Value::from(who)),
            ],
        );
        Ok(())
    }

    /// Switches the whole model on or off: the kill switch (admin API).
    pub fn set_enabled(&self, on: bool, who: &str) {
        self.enabled.store(on, Ordering::Relaxed);
        self.audit_record(
            "model_switched",
            &[
                ("model", Value::from(self.model.name.clone())),
                ("enabled", Value::from(on)),
                ("who", Value::from(who)),
            ],
        );
    }

    /// Takes over what operators and guards changed at runtime on the router this one replaces:
    /// a switched-off model or target stays off, and a weight changed at runtime (an admin
    /// change, a canary rollback) stays — unless the new config itself changes that setting.
    pub fn carry_over(&self, old: &ModelRouter) {
        if !old.is_enabled() {
            self.enabled.store(false, Ordering::Relaxed);
        }
        for t in &self.targets {
            let Some(prev) = old.target(t.name()) else {
                continue;
            };
            if !prev.is_enabled() {
                t.enabled.store(false, Ordering::Relaxed);
            }
            if prev.config.weight == t.config.weight && prev.weight() != prev.config.weight {
                t.weight.store(prev.weight(), Ordering::Relaxed);
            }
        }
    }

    /// The state of every target, for the admin API.
    pub fn snapshot(&self) -> Value {
        let targets: Vec<Value> = self
            .targets
            .iter()
            .map(|t| {
                json!({
                    "name": t.name(),
                    "backends": t.config.replicas,
                    "upstream_model": t.config.upstream_model,
                    "version": t.version,
                    "configured_weight": t.config.weight,
                    "weight": t.weight(),
                    "enabled": t.is_enabled(),
                    "breaker": t.breaker.state().as_str(),
                    "canary": t.canary.is_some(),
                    "outstanding": t.replicas.iter().map(|r| r.outstanding.load(Ordering::Relaxed)).sum::<usize>(),
                })
            })
            .collect();
        json!({
            "model": self.model.name,
            "enabled": self.is_enabled(),
            "fallbacks": self.model.fallbacks,
            "targets": targets,
        })
    }

    /// Names and routers of a set of models, built against `backends`.
    pub fn build_all(
        models: &BTreeMap<String, ModelConfig>,
        backends: &Backends,
        metrics: &Arc<Metrics>,
        audit: &Arc<AuditLog>,
    ) -> Result<BTreeMap<String, Arc<ModelRouter>>, String> {
        models
            .iter()
            .map(|(name, m)| {
                ModelRouter::new(
                    Arc::new(m.clone()),
                    backends,
                    metrics.clone(),
                    audit.clone(),
                )
                .map(|r| (name.clone(), Arc::new(r)))
            })
            .collect()
    }
}

/// Reports a stream's outcome to its target when it ends: a clean end is a success, an error
/// item a failure; a stream dropped early (the client left) reports nothing.
fn track(
    inner: EventStream,
    mut outcome: Outcome,
) -> impl Stream<Item = crate::Result<BackendEvent>> + Send {
    let mut inner = inner;
    futures_util::stream::poll_fn(move |cx| {
        let polled = inner.as_mut().poll_next(cx);
        if !outcome.reported {
            match &polled {
                Poll::Ready(None) => {
                    outcome.reported = true;
                    outcome
                        .router
                        .report(&outcome.target, true, outcome.started.elapsed(), false);
                }
                Poll::Ready(Some(Err(_))) => {
                    outcome.reported = true;
                    outcome.target.breaker.record(false);
                    outcome.router.publish_breaker(&outcome.target);
                    outcome
                        .router
                        .report(&outcome.target, false, outcome.started.elapsed(), false);
                }
                _ => {}
            }
        }
        polled
    })
}
