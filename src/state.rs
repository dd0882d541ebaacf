//! What every request handler shares: the live routing table and keys, limits, metrics, and the
//! shutdown signal.
//!
//! The parts a reload may change (models and their routers, backends, keys) sit together in one
//! [`Live`] snapshot behind an atomic pointer: a request takes the snapshot once and sees one
//! consistent config for its whole life, while a reload swaps in the next snapshot without
//! blocking anyone. Limiter state lives outside the snapshot so a reload does not reset it.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::IntGauge;
use tokio::sync::{watch, Mutex};

use crate::audit::AuditLog;
use crate::auth::KeyRing;
use crate::backends::Backends;
use crate::config::{Config, ModelConfig, ServerConfig};
use crate::guardrails::{DecisionLog, GuardrailMetrics, GuardrailsHandle};
use crate::limits::RateLimits;
use crate::metrics::Metrics;
use crate::routing::ModelRouter;
use crate::shutdown::ShutdownSignal;

/// A served model and its router.
#[derive(Clone)]
pub struct Route {
    pub model: Arc<ModelConfig>,
    pub router: Arc<ModelRouter>,
}

/// The reloadable part of the state: one consistent config.
pub struct Live {
    /// Client-facing model name → route.
    pub routes: BTreeMap<String, Route>,
    pub backends: Backends,
    pub keys: KeyRing,
    pub config: Config,
}

/// Shared state of one gateway.
pub struct AppState {
    live: ArcSwap<Live>,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<AuditLog>,
    pub limits: RateLimits,
    /// The guardrail policy, when configured. Reloaded on its own (file watch, SIGHUP).
    pub guardrails: Option<GuardrailsHandle>,
    pub in_flight: InFlight,
    pub shutdown: ShutdownSignal,
    /// Fixed at start: sockets and timeouts do not change on reload.
    pub server: ServerConfig,
    /// Whether `/metrics` is served on the API listener (no separate admin listener).
    pub metrics_on_api: bool,
    /// Serialises reloads.
    reloading: Mutex<()>,
}

fn routes(routers: BTreeMap<String, Arc<ModelRouter>>) -> BTreeMap<String, Route> {
    routers
        .into_iter()
        .map(|(name, router)| {
            let model = router.model.clone();
            (name, Route { model, router })
        })
        .collect()
}

// === impl AppState ===

impl AppState {
    /// Builds the state from a checked config and its built backends.
    pub fn new(
        config: &Config,
        backends: Backends,
        metrics: Arc<Metrics>,
        shutdown: ShutdownSignal,
    ) -> anyhow::Result<AppState> {
        let audit = Arc::new(AuditLog::open(config.audit_path.as_deref())?);
        let routers = ModelRouter::build_all(&config.models, &backends, &metrics, &audit)
            .map_err(|e| anyhow::anyhow!(e))?;
        let guardrails = match &config.guardrails {
            None => None,
            Some(g) => {
                let gm = GuardrailMetrics::register(metrics.registry())
                    .map_err(|e| anyhow::anyhow!("guardrail metrics: {e}"))?;
                let log = DecisionLog::forward(audit.clone());
                Some(
                    GuardrailsHandle::load(&g.dir, Some(gm), Some(log))
                        .map_err(|e| anyhow::anyhow!("guardrails: {e}"))?,
                )
            }
        };
        let in_flight = InFlight::new(metrics.in_flight.clone());
        Ok(AppState {
            guardrails,
            live: ArcSwap::from_pointee(Live {
                routes: routes(routers),
                backends,
                keys: KeyRing::new(config),
                config: config.clone(),
            }),
            limits: RateLimits::new(config, metrics.rate_limited.clone()),
            audit,
            metrics,
            in_flight,
            shutdown,
            server: config.server.clone(),
            metrics_on_api: config.admin_listen.is_none(),
            reloading: Mutex::new(()),
        })
    }

    /// The current snapshot.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Reloads the config file the gateway started from: keys, limits, routes and registry data.
    /// The new config is checked first; on any error the running one stays and the error is
    /// returned. Backends already running are kept as they are; new ones are built.
    pub async fn reload(&self, who: &str) -> Result<(), String> {
        let _one_at_a_time = self.reloading.lock().await;
        let current = self.live();
        let result = self.try_reload(&current).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .config_reloads
            .with_label_values(&[outcome])
            .inc();
        let mut f = serde_json::Map::new();
        f.insert("who".into(), who.into());
        f.insert("result".into(), outcome.into());
        if let Err(e) = &result {
            f.insert("error".into(), e.clone().into());
            tracing::error!(error = %e, "config reload refused; the running config stays");
        } else {
            tracing::info!(config = %current.config.source.display(), "config reloaded");
        }
        self.audit.record("config_reload", f);
        result
    }

    async fn try_reload(&self, current: &Live) -> Result<(), String> {
        let config = Config::load(&current.config.source).map_err(|e| e.to_string())?;
        let mut backends = current.backends.clone();
        let mut fresh = config.clone();
        fresh
            .backends
            .retain(|name, _| !current.backends.contains_key(name));
        for name in config
            .backends
            .keys()
            .filter(|n| current.backends.contains_key(*n))
        {
            let before = current.config.backends.get(name).map(|b| format!("{b:?}"));
            let after = config.backends.get(name).map(|b| format!("{b:?}"));
            if before != after {
                tracing::warn!(backend = %name, "backend settings changed; they take effect on restart");
            }
        }
        let built = crate::backends::build(&fresh, &self.metrics)
            .await
            .map_err(|e| format!("building new backends: {e:#}"))?;
        backends.extend(built);
        backends.retain(|name, _| config.backends.contains_key(name));
        self.metrics.model_info.reset();
        let routers =
            ModelRouter::build_all(&config.models, &backends, &self.metrics, &self.audit)?;
        for (name, router) in &routers {
            if let Some(old) = current.routes.get(name) {
                router.carry_over(&old.router);
            }
        }
        self.limits.reload(&config);
        self.live.store(Arc::new(Live {
            routes: routes(routers),
            backends,
            keys: KeyRing::new(&config),
            config,
        }));
        Ok(())
    }
}

/// Counts requests being served, in the gauge and in a watch channel that tests (and shutdown)
/// can await.
#[derive(Clone)]
pub struct InFlight {
    gauge: IntGauge,
    count: Arc<watch::Sender<usize>>,
}

/// Decrements the in-flight count when dropped, wherever the request ends.
pub struct InFlightGuard {
    owner: InFlight,
}

// === impl InFlight ===

impl InFlight {
    /// A tracker reporting into `gauge`.
    pub fn new(gauge: IntGauge) -> Self {
        InFlight {
            gauge,
            count: Arc::new(watch::channel(0).0),
        }
    }

    /// Counts one request until the guard drops.
    pub fn enter(&self) -> InFlightGuard {
        self.gauge.inc();
        self.count.send_modify(|n| *n += 1);
        InFlightGuard {
            owner: self.clone(),
        }
    }

    /// Requests in flight now.
    pub fn current(&self) -> usize {
        *self.count.borrow()
    }

    /// Resolves once no request is in flight.
    pub async fn idle(&self) {
        let mut rx = self.count.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.owner.gauge.dec();
        self.owner.count.send_modify(|n| *n = n.saturating_sub(1));
    }
}
