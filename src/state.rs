//! What every request handler shares: the model table, backends, metrics, and shutdown signal.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus::IntGauge;
use tokio::sync::watch;

use crate::audit::AuditLog;
use crate::auth::KeyRing;
use crate::backends::Backends;
use crate::config::{Config, ModelConfig, ServerConfig};
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

/// Shared, read-only state of one gateway.
pub struct AppState {
    /// Client-facing model name → route.
    pub routes: BTreeMap<String, Route>,
    pub backends: Backends,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<AuditLog>,
    pub keys: KeyRing,
    pub limits: RateLimits,
    pub in_flight: InFlight,
    pub shutdown: ShutdownSignal,
    pub server: ServerConfig,
    /// Whether `/metrics` is served on the API listener (no separate admin listener).
    pub metrics_on_api: bool,
}

impl AppState {
    /// Builds the route table. Every model's backend exists: config validation checked it.
    pub fn new(
        config: &Config,
        backends: Backends,
        metrics: Arc<Metrics>,
        shutdown: ShutdownSignal,
    ) -> anyhow::Result<AppState> {
        let audit = Arc::new(AuditLog::open(config.audit_path.as_deref())?);
        let routers = ModelRouter::build_all(&config.models, &backends, &metrics, &audit)
            .map_err(|e| anyhow::anyhow!(e))?;
        let routes = routers
            .into_iter()
            .map(|(name, router)| {
                let model = router.model.clone();
                (name, Route { model, router })
            })
            .collect();
        let in_flight = InFlight::new(metrics.in_flight.clone());
        Ok(AppState {
            routes,
            backends,
            audit,
            keys: KeyRing::new(config),
            limits: RateLimits::new(config, metrics.rate_limited.clone()),
            metrics,
            in_flight,
            shutdown,
            server: config.server.clone(),
            metrics_on_api: config.admin_listen.is_none(),
        })
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
