//! The admin API, on the admin listener only, behind an admin key.
//!
//! It exists so that a bad release can be contained in seconds: see every target and its state,
//! move traffic by weight, switch a target or a whole model off (the kill switch) and on again, and
//! reload the config. Every change is written to the audit log with the admin key's name and the
//! time, and applies to the next request.
//!
//! | method | path | body |
//! |---|---|---|
//! | GET | `/admin/models` | |
//! | GET | `/admin/models/{model}` (where it serves, its evidence, registry, changes since approval) | |
//! | POST | `/admin/models/{model}/enable` · `/disable` | |
//! | POST | `/admin/models/{model}/targets/{target}/enable` · `/disable` | |
//! | POST | `/admin/models/{model}/targets/{target}/weight` | `{"weight": 0..=1000000, "override": "reason"}` |
//!
//! A weight above 0 for a target of a model with `validation` needs evidence (docs/VALIDATION.md):
//! without it the change is refused with 409 `promotion_refused`, unless `override` states why.
//! | POST | `/admin/reload` | |

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::json;

use crate::api::body::{self, Body};
use std::sync::Arc;

use crate::config::ModelConfig;
use crate::error::Error;
use crate::state::{AppState, Live};
use crate::validation::evidence::Stored;
use crate::validation::gate::decide;

fn ok(v: serde_json::Value) -> Response<Body> {
    body::json_response(StatusCode::OK, v.to_string())
}

/// A 404 naming what is missing (a model or target of the admin API).
fn not_found(what: String) -> Response<Body> {
    let mut r = Error::invalid_code("not_found", what).into_response();
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

/// Handles `/admin/...`.
pub async fn handle<B>(state: &AppState, req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let live = state.live();
    let who = match live.keys.authenticate_admin(req.headers()) {
        Ok(who) => who,
        Err(e) => return e.into_response(),
    };
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.clone(), parts.as_slice()) {
        (Method::GET, ["admin", "models"]) => ok(json!({
            "models": live.routes.values().map(|r| r.router.snapshot()).collect::<Vec<_>>(),
        })),
        (Method::GET, ["admin", "models", model]) => {
            let Some(route) = live.routes.get(*model) else {
                return not_found(format!("No model `{model}`."));
            };
            let (config, m, serving) = (
                live.config.clone(),
                route.model.clone(),
                route.router.snapshot(),
            );
            // Reads the records directory, the suite and the audit file.
            match tokio::task::spawn_blocking(move || {
                crate::validation::show::view(&config, &m, serving)
            })
            .await
            {
                Ok(v) => ok(v),
                Err(e) => Error::Internal(format!("the view task failed: {e}")).into_response(),
            }
        }
        (Method::POST, ["admin", "reload"]) => match state.reload(&who).await {
            Ok(()) => ok(json!({"reloaded": true})),
            Err(e) => Error::invalid_code("reload_failed", e).into_response(),
        },
        (Method::POST, ["admin", "models", model, action @ ("enable" | "disable")]) => {
            let Some(route) = live.routes.get(*model) else {
                return not_found(format!("No model `{model}`."));
            };
            route.router.set_enabled(*action == "enable", &who);
            ok(route.router.snapshot())
        }
        (Method::POST, ["admin", "models", model, "targets", target, action]) => {
            let Some(route) = live.routes.get(*model) else {
                return not_found(format!("No model `{model}`."));
            };
            let result = match *action {
                "enable" | "disable" => {
                    route
                        .router
                        .set_target_enabled(target, *action == "enable", &who)
                }
                "weight" => {
                    let body = match Limited::new(req.into_body(), 4096).collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(_) => {
                            return Error::invalid("weight", "Unreadable body.").into_response()
                        }
                    };
                    let parsed = serde_json::from_slice::<serde_json::Value>(&body).ok();
                    let weight = parsed
                        .as_ref()
                        .and_then(|v| v.get("weight").and_then(serde_json::Value::as_u64))
                        .filter(|w| *w <= 1_000_000);
                    let reason = match parsed.as_ref().and_then(|v| v.get("override")) {
                        None => None,
                        Some(serde_json::Value::String(r)) if !r.trim().is_empty() => {
                            Some(r.trim().to_owned())
                        }
                        Some(_) => {
                            return Error::invalid(
                                "override",
                                "`override` must be the reason, as a non-empty string.",
                            )
                            .into_response()
                        }
                    };
                    match weight {
                        Some(w) => {
                            if let Some(refused) =
                                gate(state, &live, &route.model, target, w as u32, reason, &who)
                                    .await
                            {
                                return refused;
                            }
                            route.router.set_weight(target, w as u32, &who)
                        }
                        None => {
                            return Error::invalid(
                                "weight",
                                "Send {\"weight\": N} with N from 0 to 1000000.",
                            )
                            .into_response()
                        }
                    }
                }
                _ => return not_found(format!("Unknown action `{action}`.")),
            };
            match result {
                Ok(()) => ok(route.router.snapshot()),
                Err(e) => not_found(e),
            }
        }
        _ => Error::NotFound {
            method: method.to_string(),
            path,
        }
        .into_response(),
    }
}

/// Asks the promotion gate about raising `target` to `weight` and audits its decision; the 409
/// to answer when it refuses. A weight of 0, an ungated model or an unknown target (answered 404
/// by the caller) pass without a decision.
async fn gate(
    state: &AppState,
    live: &Live,
    model: &Arc<ModelConfig>,
    target: &str,
    weight: u32,
    reason: Option<String>,
    who: &str,
) -> Option<Response<Body>> {
    if weight == 0 || model.validation.is_none() {
        return None;
    }
    let t = model.targets.iter().find(|t| t.name == target)?.clone();
    // The admin's reason, else the one the config states for the target.
    let reason = reason.or_else(|| t.validation_override.clone());
    let (config, model) = (live.config.clone(), model.clone());
    let decision = tokio::task::spawn_blocking(move || {
        let records = Stored::read_dir(&config.validation_records);
        decide(&config, &model, &t, weight, &records, reason.as_deref())
    })
    .await;
    let d = match decision {
        Ok(d) => d?,
        Err(e) => {
            return Some(Error::Internal(format!("the gate task failed: {e}")).into_response())
        }
    };
    let (event, fields) = d.audit(who);
    state.audit.record(event, fields);
    if !d.is_refused() {
        return None;
    }
    let mut r = Error::invalid_code("promotion_refused", d.message()).into_response();
    *r.status_mut() = StatusCode::CONFLICT;
    Some(r)
}
