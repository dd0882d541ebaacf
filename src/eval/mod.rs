//! Validation: golden sets run through the gateway and scored, with a record of each run.
//!
//! A model, a prompt, a route or a guardrail policy changes what callers get back, and a change
//! that looks harmless (a quantisation, a new upstream version, a stricter rule) can break
//! answers nobody is watching. A suite pins down what "working" means as data: a golden set of
//! cases ([`dataset`]), the model under test, [`scorers`] that judge each answer and a pass
//! threshold ([`suite`]). [`runner`] sends every case through the real request path (keys,
//! limits, guardrails, routing) with the [`client`], and [`record`] keeps what the run measured
//! as a content-addressed file, with the [`stats`] a later run is compared against.
//! [`cli`] is `sluice eval run`; [`compare`] tells what changed between two records and
//! [`report`] renders one for people, both through the lenient reader of [`read`].
//!
//! The suite and record formats are described in docs/EVALS.md.

pub mod cli;
pub mod client;
pub mod compare;
pub mod dataset;
pub mod normalise;
pub mod read;
pub mod record;
pub mod report;
pub mod runner;
pub mod scorers;
pub mod stats;
pub mod suite;

pub use client::GatewayClient;
pub use record::Record;
pub use runner::{run, RunOptions};
pub use suite::Suite;
