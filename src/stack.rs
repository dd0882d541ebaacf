//! The layer order, decided here and nowhere else.
//!
//! Outermost first:
//! 1. `request_id` — every later layer and log line can name the request.
//! 2. `in_flight` — counts the request until its body ends, including refusals.
//! 3. `auth` — refuses unknown keys before any body is read; records the caller.
//! 4. the router and its handlers. Checks that need the decoded body (model permission, rate and
//!    token limits) run in the chat handler right after decoding, cheapest first.

use std::sync::Arc;

use tower::ServiceBuilder;

use crate::handlers::{Listener, Router};
use crate::layers::auth::{AuthLayer, AuthService};
use crate::layers::in_flight::{InFlightLayer, InFlightService};
use crate::layers::request_id::{RequestIdLayer, RequestIdService};
use crate::state::AppState;

/// The service for the API listener.
pub fn api(state: Arc<AppState>) -> RequestIdService<InFlightService<AuthService<Router>>> {
    ServiceBuilder::new()
        .layer(RequestIdLayer)
        .layer(InFlightLayer::new(state.in_flight.clone()))
        .layer(AuthLayer::new(state.clone()))
        .service(Router::new(state, Listener::Api))
}

/// The service for the admin listener: probes and metrics, no counting.
pub fn admin(state: Arc<AppState>) -> RequestIdService<Router> {
    ServiceBuilder::new()
        .layer(RequestIdLayer)
        .service(Router::new(state, Listener::Admin))
}
