//! `[backends.NAME] type = "candle"`.

use std::path::Path;

use serde::Deserialize;

/// A local model's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandleConfig {
    /// Path to the GGUF file.
    pub model: String,
    /// Expected SHA-256 of the GGUF file (hex).
    pub sha256: Option<String>,
    /// Optional tokenizer.json; without it the tokenizer is built from the GGUF metadata.
    pub tokenizer: Option<String>,
    /// `cpu`, `cuda:N` or `auto`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Compute threads; 0 lets candle decide.
    #[serde(default)]
    pub threads: usize,
    /// Requests that may wait for a generation slot before new ones are refused with 429.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
}

fn default_device() -> String {
    "cpu".into()
}

fn default_queue_depth() -> usize {
    8
}

impl CandleConfig {
    /// Checks values; `key` is the table's dotted name for messages.
    pub fn validate(self, key: &str, _base_dir: &Path) -> Result<Self, String> {
        if self.queue_depth == 0 {
            return Err(format!("`{key}.queue_depth` must be at least 1"));
        }
        Ok(self)
    }
}
