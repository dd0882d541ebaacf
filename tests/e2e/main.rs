//! The end-to-end suite, as one test binary: every module here drives real gateways on port 0,
//! the in-process mock upstream, real clients or the real local model.
//!
//! One binary instead of one per file: each test binary links the whole dependency tree (candle,
//! tokenizers, hyper, rustls), so a binary per file multiplied link time and disk use for nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod audit_chain;
mod candle_model;
mod clients;
mod eval;
mod gateway;
mod guardrails;
mod guardrails_fields;
mod guardrails_gateway;
mod guardrails_policy;
mod guardrails_stream;
mod keys_limits;
mod local_model;
mod promotion;
mod prompts;
mod reload;
mod remote_backend;
mod routing;
mod slow_clients;
mod upstream_faults;
