//! A `tokenizers::Tokenizer` rebuilt from a GGUF's `tokenizer.ggml.*` metadata.
//!
//! A GGUF carries its tokenizer, so a single file is enough to serve a model. candle's own helper
//! for this gives ids that differ from llama.cpp's for `tokenizer.ggml.pre = "smollm"`, and a
//! wrong id is a quiet quality loss, so this module builds the HF pipeline itself: byte-level BPE
//! over the stored tokens and merges, the pre-tokenizer the `pre` name stands for, the ByteLevel
//! decoder, token types 3 (control) and 4 (user-defined) as special tokens, and no BOS added.
//! A `pre` name it does not know is an error asking for a tokenizer.json, never a guess.

use ahash::AHashMap;
use anyhow::{bail, Context};
use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

/// GGUF token type of control tokens (`<|im_start|>`, `<|endoftext|>`).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of user-defined tokens, which must never be split either.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// What the GGUF says about its tokenizer besides the tokenizer itself.
#[derive(Debug, Clone)]
pub struct TokenizerInfo {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Ids that end a generation: the EOS id and `<|im_end|>`-style end-of-turn tokens.
    pub eos_ids: Vec<u32>,
    /// `tokenizer.chat_template`, when present.
    pub chat_template: Option<String>,
}

/// Builds the tokenizer stored in a GGUF.
pub fn from_gguf(ct: &Content) -> anyhow::Result<Tokenizer> {
    let model = md_str(ct, "tokenizer.ggml.model")?;
    if model != "gpt2" {
        bail!("tokenizer model `{model}` is not byte-level BPE; configure `tokenizer` = a tokenizer.json");
    }
    let pre = md_str(ct, "tokenizer.ggml.pre").unwrap_or_else(|_| "default".into());
    let tokens = tokens(ct)?;
    let types = token_types(ct, tokens.len())?;
    let merges = ct
        .metadata
        .get("tokenizer.ggml.merges")
        .context("GGUF has no tokenizer.ggml.merges")?
        .to_vec()?
        .iter()
        .map(|m| {
            let s = m.to_string()?;
            let (a, b) = s
                .split_once(' ')
                .with_context(|| format!("merge `{s}` is not two tokens"))?;
            Ok((a.to_owned(), b.to_owned()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let vocab: AHashMap<String, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| anyhow::anyhow!("building BPE: {e}"))?;

    let byte_level = ByteLevel::new(false, true, true);
    let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        "gpt2" | "gpt-2" | "default" => byte_level.into(),
        other => bail!(
            "tokenizer.ggml.pre = `{other}` is not supported for building a tokenizer from the \
             GGUF; configure `tokenizer` = a tokenizer.json"
        ),
    };
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, t)| matches!(**t, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
        .map(|(tok, _)| AddedToken::from(tok.clone(), true))
        .collect();
    tokenizer.add_special_tokens(&special);
    Ok(tokenizer)
}

/// BOS/EOS, end-of-turn ids and the chat template. `tokenizer` resolves token strings to ids, so
/// this works with a tokenizer.json as well as with the GGUF's own tokenizer.
pub fn info(ct: &Content, tokenizer: &Tokenizer) -> TokenizerInfo {
    let name_of = |key: &str| -> Option<String> {
        let id = ct.metadata.get(key)?.to_u32().ok()?;
        tokenizer.id_to_token(id)
    };
    let bos_token = name_of("tokenizer.ggml.bos_token_id");
    let eos_token = name_of("tokenizer.ggml.eos_token_id");
    let mut eos_ids: Vec<u32> = Vec::new();
    if let Some(id) = ct
        .metadata
        .get("tokenizer.ggml.eos_token_id")
        .and_then(|v| v.to_u32().ok())
    {
        eos_ids.push(id);
    }
    if let Some(id) = ct
        .metadata
        .get("tokenizer.ggml.eot_token_id")
        .and_then(|v| v.to_u32().ok())
    {
        eos_ids.push(id);
    }
    // Chat models end a turn with a token that is not always the GGUF's EOS; a template that
    // closes turns with one of these would otherwise let the model run on into a new turn. The
    // list is the end-of-generation names llama.cpp recognises.
    for end in [
        "<|im_end|>",
        "<|endoftext|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<|end|>",
        "<end_of_turn>",
        "<EOT>",
    ] {
        if let Some(id) = tokenizer.token_to_id(end) {
            eos_ids.push(id);
        }
    }
    eos_ids.sort_unstable();
    eos_ids.dedup();
    let chat_template = ct
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned();
    TokenizerInfo {
        bos_token,
        eos_token,
        eos_ids,
        chat_template,
    }
}

fn md_str(ct: &Content, key: &str) -> anyhow::Result<String> {
    match ct.metadata.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => bail!("GGUF metadata `{key}` is not a string"),
        None => bail!("GGUF has no `{key}`"),
    }
}

fn tokens(ct: &Content) -> anyhow::Result<Vec<String>> {
    ct.metadata
        .get("tokenizer.ggml.tokens")
        .context("GGUF has no tokenizer.ggml.tokens")?
        .to_vec()?
        .iter()
        .map(|t| Ok(t.to_string()?.clone()))
        .collect()
}

fn token_types(ct: &Content, n: usize) -> anyhow::Result<Vec<i32>> {
    let Some(v) = ct.metadata.get("tokenizer.ggml.token_type") else {
        return Ok(vec![1; n]);
    };
    let types = v
        .to_vec()?
        .iter()
        .map(|t| t.to_i32().or_else(|_| t.to_u32().map(|u| u as i32)))
        .collect::<Result<Vec<_>, _>>()?;
    if types.len() != n {
        bail!(
            "tokenizer.ggml.token_type has {} entries for {n} tokens",
            types.len()
        );
    }
    Ok(types)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::VersionedMagic;
    use std::collections::HashMap;

    /// A GGUF header with a tiny byte-level vocabulary: every single byte, one merge ("h" + "i")
    /// and one control token.
    fn tiny() -> Content {
        let mut tokens: Vec<Value> = byte_chars()
            .into_iter()
            .map(|c| Value::String(c.to_string()))
            .collect();
        tokens.push(Value::String("hi".into()));
        tokens.push(Value::String("<|im_end|>".into()));
        let n = tokens.len();
        let mut types = vec![Value::I32(1); n];
        types[n - 1] = Value::I32(TOKEN_TYPE_CONTROL);
        let mut metadata = HashMap::new();
        metadata.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
        metadata.insert("tokenizer.ggml.pre".into(), Value::String("smollm".into()));
        metadata.insert("tokenizer.ggml.tokens".into(), Value::Array(tokens));
        metadata.insert("tokenizer.ggml.token_type".into(), Value::Array(types));
        metadata.insert(
            "tokenizer.ggml.merges".into(),
            Value::Array(vec![Value::String("h i".into())]),
        );
        metadata.insert(
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(n as u32 - 1),
        );
        Content {
            magic: VersionedMagic::GgufV3,
            metadata,
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        }
    }

    /// The GPT-2 byte-to-char table, in byte order.
    pub(crate) fn byte_chars() -> Vec<char> {
        let mut out = Vec::with_capacity(256);
        let mut extra = 0u32;
        for b in 0u32..256 {
            let printable =
                (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            if printable {
                out.push(char::from_u32(b).unwrap());
            } else {
                out.push(char::from_u32(256 + extra).unwrap());
                extra += 1;
            }
        }
        out
    }

    #[test]
    fn merges_digits_and_special_tokens() {
        let ct = tiny();
        let tok = from_gguf(&ct).unwrap();
        let hi = tok.token_to_id("hi").unwrap();
        let end = tok.token_to_id("<|im_end|>").unwrap();
        let ids = tok
            .encode("hi<|im_end|>", false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(ids, vec![hi, end]);
        // Digits are split one by one before byte-level pre-tokenization.
        let ids = tok.encode("12", false).unwrap().get_ids().to_vec();
        assert_eq!(ids, vec![u32::from(b'1'), u32::from(b'2')]);
        let info = info(&ct, &tok);
        assert_eq!(info.eos_ids, vec![end]);
        assert_eq!(info.eos_token.as_deref(), Some("<|im_end|>"));
    }

    #[test]
    fn round_trips_multibyte_text() {
        let tok = from_gguf(&tiny()).unwrap();
        for s in [
            "plain ascii",
            "café naïve",
            "日本語のテキスト",
            "emoji 😀🎉 mix",
        ] {
            let ids = tok.encode(s, false).unwrap().get_ids().to_vec();
            assert_eq!(tok.decode(&ids, true).unwrap(), s);
        }
    }

    #[test]
    fn unknown_pre_tokenizer_is_refused() {
        let mut ct = tiny();
        ct.metadata
            .insert("tokenizer.ggml.pre".into(), Value::String("qwen2".into()));
        let e = from_gguf(&ct).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
    }
}
