//! What every request handler shares: the live routing table and keys, limits, metrics, and the
//! shutdown signal.
//!
//! The parts a reload may change (models and their routers, backends, keys) sit together in one
//! [`Live`] snapshot behind an atomic pointer: a request takes the snapshot once and sees one
//! consistent config for its whole life, while a reload swaps in the next snapshot without
//! blocking anyone. Limiter state lives outside the snapshot so a reload does not reset it.
//!
//! Start-up and a reload check a config with the same function ([`crate::config::check`]), so a
//! reload never takes a file that a restart would refuse. What a reload cannot change in place it
//! either refuses (adding or removing `[guardrails]`) or names as waiting for a restart (listeners,
//! timeouts, existing backends' settings), in the log and in its audit record.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::IntGauge;
use tokio::sync::{watch, Mutex};

use crate::audit::AuditLog;
use crate::auth::KeyRing;
use crate::backends::Backends;
use crate::config::check::{prepare, CheckError, Prepared};
use crate::config::{Config, ModelConfig, ServerConfig};
use crate::guardrails::reload::PolicyReloads;
use crate::guardrails::{DecisionLog, GuardrailMetrics, GuardrailsHandle};
use crate::limits::RateLimits;
use crate::metrics::Metrics;
use crate::prompts::PromptReloads;
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
    /// The guardrail policy, when configured. Reloaded on its own (file watch) and with the config.
    pub guardrails: Option<GuardrailsHandle>,
    /// How `guardrails` is reloaded: from the directory the running config names.
    pub policy_reloads: Option<Arc<PolicyReloads>>,
    /// The prompts served (an empty set without `[prompts]`), reloaded as the policy is.
    pub prompts: Arc<PromptReloads>,
    pub in_flight: InFlight,
    pub shutdown: ShutdownSignal,
    /// Fixed at start: sockets and timeouts do not change on reload.
    pub server: ServerConfig,
    /// Whether `/metrics` is served on the API listener (no separate admin listener).
    pub metrics_on_api: bool,
    /// Serialises reloads.
    reloading: Mutex<()>,
}

/// What an applied reload changed beyond the snapshot, for its log line and audit record.
#[derive(Default)]
struct Applied {
    /// The policy served after the reload.
    policy_version: Option<String>,
    /// `[guardrails] dir` before and after, when it changed.
    guardrails_dir: Option<(PathBuf, PathBuf)>,
    /// Keys whose new values wait for a restart.
    restart_needed: Vec<String>,
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
    /// Builds the state from a checked config and its built backends, refusing what
    /// [`prepare`] refuses.
    pub fn new(
        config: &Config,
        backends: Backends,
        metrics: Arc<Metrics>,
        shutdown: ShutdownSignal,
    ) -> anyhow::Result<AppState> {
        let Prepared {
            audit,
            warnings,
            prompts,
            promotions,
            ..
        } = prepare(config).map_err(|e| anyhow::anyhow!("{}: {e}", config.source.display()))?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let audit = Arc::new(audit);
        for d in &promotions {
            let (event, fields) = d.audit("start");
            audit.record(event, fields);
        }
        let routers = ModelRouter::build_all(&config.models, &backends, &metrics, &audit)
            .map_err(|e| anyhow::anyhow!(e))?;
        let (guardrails, policy_reloads) = match &config.guardrails {
            None => (None, None),
            Some(g) => {
                let gm = GuardrailMetrics::register(metrics.registry())
                    .map_err(|e| anyhow::anyhow!("guardrail metrics: {e}"))?;
                let log = DecisionLog::forward(audit.clone());
                // The handle loads (and tests) the directory `prepare` has just passed: its
                // constructor takes a directory, not a compiled policy. That costs one more
                // compile of the policy, once, at start.
                let handle = GuardrailsHandle::load(&g.dir, Some(gm), Some(log))
                    .map_err(|e| anyhow::anyhow!("guardrails: {e}"))?;
                let reloads = Arc::new(PolicyReloads::new(
                    handle.clone(),
                    g.dir.clone(),
                    audit.clone(),
                ));
                reloads.watch(g.watch_interval);
                (Some(handle), Some(reloads))
            }
        };
        let prompts = Arc::new(PromptReloads::new(
            prompts.unwrap_or_default(),
            audit.clone(),
        ));
        prompts.watch(config.prompts.as_ref().and_then(|p| p.watch_interval));
        let in_flight = InFlight::new(metrics.in_flight.clone());
        Ok(AppState {
            guardrails,
            policy_reloads,
            prompts,
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

    /// Reloads the config file the gateway started from: keys, limits, routes, registry data, the
    /// audit file and the guardrail policy (from a changed `[guardrails] dir` too). The new config
    /// is checked first, as start-up checks it; on any error the running one stays and the error
    /// is returned. Backends already running are kept as they are; new ones are built.
    pub async fn reload(&self, who: &str) -> Result<(), String> {
        let _one_at_a_time = self.reloading.lock().await;
        let current = self.live();
        let result = self.try_reload(&current, who).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .config_reloads
            .with_label_values(&[outcome])
            .inc();
        let mut f = serde_json::Map::new();
        f.insert("who".into(), who.into());
        f.insert("result".into(), outcome.into());
        match &result {
            Err(e) => {
                f.insert("error".into(), e.clone().into());
                tracing::error!(error = %e, "config reload refused; the running config stays");
            }
            Ok(applied) => {
                if let Some(v) = &applied.policy_version {
                    f.insert("policy_version".into(), v.clone().into());
                }
                if let Some((from, to)) = &applied.guardrails_dir {
                    tracing::info!(from = %from.display(), to = %to.display(), "guardrails.dir changed: the new directory's policy is served and later policy reloads read it");
                    f.insert(
                        "guardrails_dir".into(),
                        serde_json::json!({
                            "from": from.display().to_string(),
                            "to": to.display().to_string(),
                        }),
                    );
                }
                if !applied.restart_needed.is_empty() {
                    tracing::warn!(keys = ?applied.restart_needed, "changed settings take effect on restart");
                    f.insert(
                        "restart_needed".into(),
                        applied.restart_needed.clone().into(),
                    );
                }
                tracing::info!(config = %current.config.source.display(), "config reloaded");
            }
        }
        self.audit.record("config_reload", f);
        result.map(|_| ())
    }

    async fn try_reload(&self, current: &Live, who: &str) -> Result<Applied, String> {
        let source = &current.config.source;
        let config = Config::load(source).map_err(|e| e.to_string())?;
        // The guardrails handle is made at start or not at all, and requests hold it: a policy
        // cannot be added or taken away in place, and taking the file as if it had been would
        // report a config that is not the one enforced.
        match (&current.config.guardrails, &config.guardrails) {
            (None, Some(_)) => {
                return Err(format!(
                    "{}: `guardrails`: a policy cannot be added to a running gateway; restart to serve it",
                    source.display()
                ))
            }
            (Some(_), None) => {
                return Err(format!(
                    "{}: `guardrails`: the policy cannot be removed from a running gateway; restart without it",
                    source.display()
                ))
            }
            _ => {}
        }
        let checking = config.clone();
        let prepared = tokio::task::spawn_blocking(move || prepare(&checking))
            .await
            .map_err(|e| format!("the check task failed: {e}"))?
            .map_err(|e| {
                // Each refusal is its own record, so a search for a model's promotions finds it.
                if let CheckError::Promotion { refused, .. } = &e {
                    for d in refused {
                        let (event, fields) = d.audit(who);
                        self.audit.record(event, fields);
                    }
                }
                format!("{}: {e}", source.display())
            })?;
        for w in &prepared.warnings {
            tracing::warn!("{w}");
        }
        let mut applied = Applied {
            restart_needed: restart_needed(&current.config, &config),
            ..Applied::default()
        };
        let mut backends = current.backends.clone();
        let mut fresh = config.clone();
        fresh
            .backends
            .retain(|name, _| !current.backends.contains_key(name));
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
        // Everything is checked; from here on the reload is applied.
        self.audit.replace(prepared.audit);
        // Only what this reload promotes: a target that had no weight, or another version.
        for d in &prepared.promotions {
            let was = current.config.models.get(&d.model).and_then(|m| {
                m.targets
                    .iter()
                    .find(|t| t.name == d.target)
                    .map(|t| (m, t))
            });
            let promoted = was.is_none_or(|(m, t)| {
                t.weight == 0
                    || t.version.clone().or_else(|| m.registry.version.clone()) != d.version
            });
            if promoted {
                let (event, fields) = d.audit(who);
                self.audit.record(event, fields);
            }
        }
        if let (Some(reloads), Some(g), Some(policy)) =
            (&self.policy_reloads, &config.guardrails, prepared.policy)
        {
            let before = reloads.dir();
            let (r, dir, who) = (reloads.clone(), g.dir.clone(), who.to_owned());
            let moved = before != g.dir;
            // A moved directory serves the policy just checked; the same directory is read
            // again, so an edit made since the check (and taken by the watcher) is not undone.
            let _ = tokio::task::spawn_blocking(move || {
                if moved {
                    Ok(r.install(&who, dir, policy))
                } else {
                    r.reload(&who)
                }
            })
            .await;
            if moved {
                applied.guardrails_dir = Some((before, g.dir.clone()));
            }
            reloads.watch(g.watch_interval);
        }
        // The prompts are read again from the directory the new config names (none: no prompts),
        // so an edit made since the check is served too; a refused set keeps the old one.
        let (r, dir, who) = (
            self.prompts.clone(),
            config.prompts.as_ref().map(|p| p.dir.clone()),
            who.to_owned(),
        );
        let _ = tokio::task::spawn_blocking(move || r.reload_from(&who, dir)).await;
        self.prompts
            .watch(config.prompts.as_ref().and_then(|p| p.watch_interval));
        applied.policy_version = self.guardrails.as_ref().map(|g| g.version().to_string());
        self.limits.reload(&config);
        self.live.store(Arc::new(Live {
            routes: routes(routers),
            backends,
            keys: KeyRing::new(&config),
            config,
        }));
        Ok(applied)
    }
}

/// The keys whose changed values a reload does not apply: they wait for a restart.
fn restart_needed(before: &Config, after: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    if format!("{:?}", before.server) != format!("{:?}", after.server) {
        keys.push("server".to_owned());
    }
    if before.admin_listen != after.admin_listen {
        keys.push("admin.listen".to_owned());
    }
    if format!("{:?}", before.logging) != format!("{:?}", after.logging) {
        keys.push("logging".to_owned());
    }
    for (name, b) in &after.backends {
        let was = before.backends.get(name).map(|b| format!("{b:?}"));
        if was.is_some_and(|was| was != format!("{b:?}")) {
            keys.push(format!("backends.{name}"));
        }
    }
    keys
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
