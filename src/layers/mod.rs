//! Tower layers, one per file. Their order is decided in [`crate::stack`] alone.

pub mod auth;
pub mod in_flight;
pub mod request_id;
