//! The OpenAI wire contract: request and response types, SSE framing, response bodies and input
//! validation. Everything a client can see is defined here.

pub mod body;
pub mod coalesce;
pub mod sse;
pub mod types;
pub mod validate;
