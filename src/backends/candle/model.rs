//! Loading a GGUF: hash check, device, weights (requantized where that is faster), tokenizer,
//! chat template.
//!
//! candle multiplies Q4_1, Q5_0 and Q5_1 weights with scalar code, while Q8_0 and Q4_0 have
//! AVX2 kernels; converting the slow types once at load (under a second for a small model) makes
//! every later token about three times faster. The converted tensors are written into an
//! in-memory GGUF that candle's own loader then reads, so the model code stays candle's.

use std::fs::File;
use std::io::{BufReader, Cursor, Read};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use super::chat_template::{ChatTemplate, CHATML};
use super::config::{CandleConfig, DeviceSpec, Requantize};
use super::generate::LanguageModel;
use super::gguf_tokenizer::{self, TokenizerInfo};

/// A model ready to serve.
pub struct LoadedModel {
    /// Shared weights; each generation clones it for its own KV cache.
    pub weights: ModelWeights,
    pub device: Device,
    pub tokenizer: Tokenizer,
    pub info: TokenizerInfo,
    pub template: ChatTemplate,
    /// Longest prompt + completion, in tokens.
    pub max_seq_len: usize,
    /// Tensors converted at load, for the log.
    pub requantized: usize,
}

/// Why a model could not be loaded, split into what a client may see and what only the log may.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file is not the one the config names by hash.
    #[error("the model file's SHA-256 differs from the configured one (expected {expected}, found {found} in {path})")]
    HashMismatch {
        path: String,
        expected: String,
        found: String,
    },
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// One generation's view of the model: a clone of the weights with its own KV cache.
pub struct Session {
    weights: ModelWeights,
    device: Device,
}

// === impl LoadError ===

impl LoadError {
    /// The reason given to clients and `/readyz`: no paths, no internals.
    pub fn public_reason(&self) -> String {
        match self {
            LoadError::HashMismatch { .. } => {
                "the model file's SHA-256 hash differs from the configured one; it was refused"
                    .into()
            }
            LoadError::Other(_) => "the model failed to load; see the server log".into(),
        }
    }
}

// === impl LoadedModel ===

impl LoadedModel {
    /// Loads the model `config` names. Blocking: run it off the async runtime.
    pub fn load(config: &CandleConfig) -> Result<LoadedModel, LoadError> {
        let path = config.model_path();
        if !path.is_file() {
            return Err(anyhow::anyhow!(
                "model file {} does not exist (run `sluice models pull`, or set `source`)",
                path.display()
            )
            .into());
        }
        if let Some(expected) = &config.sha256 {
            let found = sha256_file(&path)?;
            if !found.eq_ignore_ascii_case(expected) {
                return Err(LoadError::HashMismatch {
                    path: path.display().to_string(),
                    expected: expected.clone(),
                    found,
                });
            }
        }
        let device = select_device(config.device_spec().map_err(anyhow::Error::msg)?)?;
        Ok(Self::load_file(config, &path, device)?)
    }

    fn load_file(config: &CandleConfig, path: &Path, device: Device) -> anyhow::Result<Self> {
        let mut file = BufReader::new(
            File::open(path).with_context(|| format!("opening {}", path.display()))?,
        );
        let ct = Content::read(&mut file).with_context(|| format!("reading {}", path.display()))?;
        let arch = ct
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if arch != "llama" {
            bail!("architecture `{arch}` is not supported (only llama-architecture GGUFs are)");
        }
        let context_length = ct
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map_or(MAX_SEQ_LEN, |n| n as usize);

        let tokenizer = match config.tokenizer_path() {
            Some(p) => Tokenizer::from_file(&p)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?,
            None => {
                gguf_tokenizer::from_gguf(&ct).context("building the tokenizer from the GGUF")?
            }
        };
        let info = gguf_tokenizer::info(&ct, &tokenizer);
        anyhow::ensure!(
            !info.eos_ids.is_empty(),
            "the GGUF names no end-of-sequence token"
        );
        let source = match &info.chat_template {
            Some(t) => t.as_str(),
            None => {
                tracing::warn!("the GGUF has no chat template; using ChatML");
                CHATML
            }
        };
        let template =
            ChatTemplate::new(source, info.bos_token.as_deref(), info.eos_token.as_deref())?;

        let (weights, requantized) = match target_dtype(config.requantize) {
            Some(target) if ct.tensor_infos.values().any(|t| is_slow(t.ggml_dtype)) => {
                let started = Instant::now();
                let (w, n) = requantized_weights(ct, &mut file, target, &device)?;
                tracing::info!(
                    tensors = n,
                    to = ?target,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "requantized weights"
                );
                (w, n)
            }
            _ => (ModelWeights::from_gguf(ct, &mut file, &device)?, 0),
        };
        Ok(LoadedModel {
            weights,
            device,
            tokenizer,
            info,
            template,
            max_seq_len: context_length.min(MAX_SEQ_LEN),
            requantized,
        })
    }

    /// A fresh generation context sharing the weights.
    pub fn session(&self) -> Session {
        Session {
            weights: self.weights.clone(),
            device: self.device.clone(),
        }
    }
}

// === impl Session ===

impl LanguageModel for Session {
    fn forward(&mut self, tokens: &[u32], pos: usize) -> anyhow::Result<Vec<f32>> {
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let logits = self.weights.forward(&input, pos)?;
        Ok(logits
            .squeeze(0)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?)
    }
}

/// candle's CPU kernels run on one process-wide pool sized from `CANDLE_NUM_THREADS` when it is
/// first used; this is the only way to size it. An operator's own setting wins.
pub fn configure_threads(threads: usize) {
    if threads > 0 && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
    }
}

/// Quantization types candle multiplies without SIMD on x86.
fn is_slow(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1)
}

fn target_dtype(r: Requantize) -> Option<GgmlDType> {
    match r {
        Requantize::Q8_0 => Some(GgmlDType::Q8_0),
        Requantize::Q4_0 => Some(GgmlDType::Q4_0),
        Requantize::None => None,
    }
}

/// Reads every tensor, converts the slow ones to `target`, and loads the result.
fn requantized_weights<R: std::io::Read + std::io::Seek>(
    ct: Content,
    reader: &mut R,
    target: GgmlDType,
    device: &Device,
) -> anyhow::Result<(ModelWeights, usize)> {
    let cpu = Device::Cpu;
    let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    let mut converted = 0;
    for name in names {
        let q = ct.tensor(reader, name, &cpu)?;
        let fits = q
            .shape()
            .dims()
            .last()
            .is_some_and(|d| d % target.block_size() == 0);
        let q = if is_slow(q.dtype()) && fits {
            converted += 1;
            QTensor::quantize(&q.dequantize(&cpu)?, target)?
        } else {
            q
        };
        tensors.push((name.clone(), q));
    }
    // The model reads only its hyper-parameters; the tokenizer tables stay out of the copy.
    let metadata: Vec<(&str, &Value)> = ct
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("tokenizer."))
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut buf = Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &metadata, &refs)?;
    drop(refs);
    drop(tensors);
    buf.set_position(0);
    let ct2 = Content::read(&mut buf)?;
    Ok((ModelWeights::from_gguf(ct2, &mut buf, device)?, converted))
}

/// Picks the device; `cuda:N` in a build without CUDA is an error that says so.
pub fn select_device(spec: DeviceSpec) -> anyhow::Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto => Ok(Device::cuda_if_available(0)?),
        DeviceSpec::Cuda(n) => {
            if !cfg!(feature = "cuda") {
                bail!("device = \"cuda:{n}\" needs a build with `--features cuda`; this build has no CUDA support");
            }
            Device::new_cuda(n).with_context(|| format!("opening CUDA device {n}"))
        }
    }
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        if cfg!(feature = "cuda") {
            return;
        }
        let e = select_device(DeviceSpec::Cuda(0)).unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
        assert!(select_device(DeviceSpec::Auto).unwrap().is_cpu());
    }

    #[test]
    fn hash_of_known_bytes() {
        let dir = std::env::temp_dir().join(format!("sluice-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
