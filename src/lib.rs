//! Sluice: a low-latency LLM inference gateway.
//!
//! A request passes through [`stack`] (request ids, metrics), is decoded and checked against the
//! model's operating limits in [`api::validate`], is answered by a [`backends::Backend`] as a stream
//! of deltas, and goes back to the client as SSE or as one JSON document rendered from the same
//! deltas. [`server`] owns the sockets, the connection cap and graceful shutdown.

pub mod access_log;
pub mod api;
pub mod audit;
pub mod auth;
pub mod backends;
pub mod config;
pub mod error;
pub mod eval;
pub mod guardrails;
pub mod handlers;
pub mod heap;
pub mod idle_timer;
pub mod json_text;
pub mod layers;
pub mod limits;
pub mod log_batch;
pub mod metrics;
pub mod mock_upstream;
pub mod prompts;
pub mod request_id;
pub mod routing;
pub mod server;
pub mod shutdown;
pub mod sniff;
pub mod stack;
pub mod state;
pub mod telemetry;
pub mod validation;
pub mod workers;

pub use error::{Error, Result};
