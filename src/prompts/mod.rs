//! Versioned prompts: templates the operator owns, which clients reference by id.
//!
//! A prompt lives in a `prompts/*.toml` file beside the config: its messages as minijinja
//! templates, the schema of the variables a client fills in, default sampling parameters, the
//! model it was written for, and test cases with the exact text they must render. Clients send
//! `"prompt": {"id", "version"?, "variables"}` beside (or instead of) `messages`, so the wording
//! that a product depends on is reviewed, tested and versioned in one place instead of being
//! copied into every client.
//!
//! A prompt's version is a hash of its file's bytes, so two gateways serving the same file report
//! the same version, and a client may pin it: a reply then always comes from the text it was
//! tested against. The rendered messages are put into the request body before it is decoded, so
//! the input guardrails, the limits and the backend see them as if the client had sent them.
//!
//! - [`file`]: one file read, parsed and checked into a [`Prompt`]; a directory into a
//!   [`PromptSet`].
//! - [`schema`]: the variables' types, checked against what a client sends.
//! - [`render`]: the template environment, rendering and each prompt's test cases.
//! - [`request`]: a chat request body with a `prompt` turned into one with messages.
//! - [`reload`]: hot reload, as for the guardrail policy: a set is served only once every file
//!   parses and every test passes.

pub mod file;
pub mod reload;
pub mod render;
pub mod request;
pub mod schema;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use self::file::{Prompt, PromptError};
pub use self::reload::PromptReloads;
pub use self::render::{run_tests, TestFailure};

/// Which prompt (and which version of it) a request was built from: for the response headers,
/// the access log line and guardrail audit records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTag {
    pub id: String,
    pub version: String,
}

/// Every prompt of one directory, by id.
#[derive(Debug, Default)]
pub struct PromptSet {
    /// Where the set was read from; `None` for the empty set of a gateway without `[prompts]`.
    pub dir: Option<PathBuf>,
    pub prompts: BTreeMap<String, Arc<Prompt>>,
}

// === impl PromptSet ===

impl PromptSet {
    /// `id → version` of every prompt, for reload records.
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.prompts
            .iter()
            .map(|(id, p)| (id.clone(), p.version.clone()))
            .collect()
    }
}
