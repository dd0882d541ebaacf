//! The layer order, decided here and nowhere else.
//!
//! Outermost first:
//! 1. `request_id` — every later layer and log line can name the request.
//! 2. `in_flight` — counts the request until its body ends, including refusals.
//! 3. the router and its handlers.
//!
//! Layers added later (authentication, rate limits, guardrails) go between 2 and 3, in the order a
//! request should meet them: cheapest refusal first.

use std::sync::Arc;

use tower::ServiceBuilder;

use crate::handlers::{Listener, Router};
use crate::layers::in_flight::InFlightLayer;
use crate::layers::request_id::RequestIdLayer;
use crate::state::AppState;

/// The service for the API listener.
pub fn api(
    state: Arc<AppState>,
) -> crate::layers::request_id::RequestIdService<crate::layers::in_flight::InFlightService<Router>>
{
    ServiceBuilder::new()
        .layer(RequestIdLayer)
        .layer(InFlightLayer::new(state.in_flight.clone()))
        .service(Router::new(state, Listener::Api))
}

/// The service for the admin listener: probes and metrics, no counting.
pub fn admin(state: Arc<AppState>) -> crate::layers::request_id::RequestIdService<Router> {
    ServiceBuilder::new()
        .layer(RequestIdLayer)
        .service(Router::new(state, Listener::Admin))
}
