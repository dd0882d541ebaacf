//! Guardrails: policy-driven checks on what goes into a model and what comes out.
//!
//! A policy is a directory of TOML files (`guardrails/` by default; the schema is in
//! `guardrails/README.md`). It compiles into one engine per direction that scans a text in a
//! single pass, whatever the number of rules ([`engine`]). Input is checked before a request
//! reaches a backend: a block answers 400 `content_filter`, a redaction rewrites the message text.
//! Output is checked as it streams: the [`OutputScanner`] holds back only the bytes that could
//! still become part of a match, releases the rest at once, and applies redaction before release,
//! so neither a leak nor a buffered answer is the price of checking.
//!
//! The gateway holds a [`GuardrailsHandle`]: a cheap clone pointing at the current policy, which
//! [`reload`] swaps atomically, and only after the new policy's own tests pass.
//!
//! ```
//! use sluice::guardrails::{Ctx, GuardrailsHandle, Policy};
//!
//! let policy = Policy::from_toml(r#"
//! [[rule]]
//! id = "email"
//! kind = "pii"
//! entities = ["email"]
//! action = "redact"
//! "#).unwrap();
//! let guard = GuardrailsHandle::new(policy);
//! let ctx = Ctx::new("req-1", "my-model", None);
//! let mut scanner = guard.output_scanner(&ctx);
//! let mut sent = String::new();
//! for piece in ["Write to bob@exa", "mple.com today."] {
//!     sent.push_str(&scanner.push(piece).release);
//! }
//! sent.push_str(&scanner.finish().release);
//! assert_eq!(sent, "Write to [EMAIL] today.");
//! ```

pub mod audit;
pub mod compile;
pub(crate) mod engine;
pub(crate) mod excerpt;
pub mod handle;
pub mod injection;
mod local;
pub mod metrics;
pub(crate) mod occurs;
pub mod pii;
pub mod policy;
pub mod prefix;
pub mod probe;
pub mod reload;
pub mod scan;
pub mod secrets;
pub mod tools;
pub(crate) mod viable;

pub use audit::DecisionLog;
pub use compile::{Kind, Mode, Policy, Rule};
pub use handle::{Ctx, GuardrailsHandle, InputOutcome, OutputScanner};
pub use metrics::GuardrailMetrics;
pub use occurs::Footprint;
pub use policy::PolicyError;
pub use scan::{Finding, Pushed};

/// Which way text is flowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Request messages, before a backend sees them.
    Input,
    /// The model's answer, before the client sees it.
    Output,
}

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Refuse the request, or end the answer with `finish_reason: "content_filter"`.
    Block,
    /// Replace the span with a label or a mask.
    Redact,
    /// Log and count only.
    Flag,
}

// === impl Direction ===

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Input => "input",
            Direction::Output => "output",
        }
    }
}

// === impl Action ===

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Block => "block",
            Action::Redact => "redact",
            Action::Flag => "flag",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "block" => Action::Block,
            "redact" => Action::Redact,
            "flag" => Action::Flag,
            _ => return None,
        })
    }
}
