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
//! | POST | `/admin/models/{model}/enable` · `/disable` | |
//! | POST | `/admin/models/{model}/targets/{target}/enable` · `/disable` | |
//! | POST | `/admin/models/{model}/targets/{target}/weight` | `{"weight": 0..=1000000}` |
//! | POST | `/admin/reload` | |

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::json;

use crate::api::body::{self, Body};
use crate::error::Error;
use crate::state::AppState;

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
                    let weight = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("weight").and_then(serde_json::Value::as_u64))
                        .filter(|w| *w <= 1_000_000);
                    match weight {
                        Some(w) => route.router.set_weight(target, w as u32, &who),
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
