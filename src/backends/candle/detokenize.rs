//! Turning generated tokens into text one token at a time.
//!
//! A token is not a unit of text: a byte-level BPE token can hold half of a UTF-8 character
//! (emoji and CJK often take two or three tokens), and decoders that strip a leading space give
//! different text for a token alone than in context. Decoding each token on its own would send
//! U+FFFD or lose spaces. So this keeps a short window of recent tokens, decodes the window with
//! and without the new token, and releases only the difference, and only once it does not end in
//! an incomplete character (the decoder renders those as U+FFFD).

use tokenizers::Tokenizer;

/// Incremental decoder state for one generation.
#[derive(Debug, Default)]
pub struct Detokenizer {
    /// Tokens from `prefix` on; earlier ones are no longer needed.
    ids: Vec<u32>,
    /// Tokens in `ids` already released as text; they give the next piece its context.
    read: usize,
}

// === impl Detokenizer ===

impl Detokenizer {
    pub fn new() -> Self {
        Detokenizer::default()
    }

    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> anyhow::Result<Option<String>> {
        self.ids.push(id);
        let before = self.decode(tokenizer, &self.ids[..self.read])?;
        let after = self.decode(tokenizer, &self.ids)?;
        if after.ends_with('\u{FFFD}') {
            // An incomplete character: wait for the rest of its bytes.
            return Ok(None);
        }
        if after.len() <= before.len() {
            // The token adds no text (a skipped special token): nothing to wait for either, so
            // the window moves on instead of growing with every such token.
            self.release();
            return Ok(None);
        }
        let Some(piece) = after.get(before.len()..) else {
            return Ok(None);
        };
        let piece = piece.to_owned();
        self.release();
        Ok(Some(piece))
    }

    /// Marks every token as released: they stay as context for the next piece, older ones go.
    fn release(&mut self) {
        self.ids.drain(..self.read);
        self.read = self.ids.len();
    }

    /// Text of tokens not yet released (an incomplete character at the very end, rendered as
    /// U+FFFD): sent when generation stops so nothing generated is lost.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> anyhow::Result<String> {
        let before = self.decode(tokenizer, &self.ids[..self.read])?;
        let after = self.decode(tokenizer, &self.ids)?;
        self.ids.clear();
        self.read = 0;
        Ok(after.get(before.len()..).unwrap_or_default().to_owned())
    }

    fn decode(&self, tokenizer: &Tokenizer, ids: &[u32]) -> anyhow::Result<String> {
        if ids.is_empty() {
            return Ok(String::new());
        }
        tokenizer
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("decoding tokens: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;

    /// A byte-level tokenizer with one token per byte, so every multibyte character is split.
    fn byte_tokenizer() -> Tokenizer {
        // Ids by byte value, so a test can name the bytes it feeds.
        let vocab: ahash::AHashMap<String, u32> = byte_char_table()
            .into_iter()
            .enumerate()
            .map(|(b, c)| (c.to_string(), b as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, vec![])
            .build()
            .unwrap();
        let mut t = Tokenizer::new(bpe);
        t.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        t.with_decoder(Some(ByteLevelDecoder::default()));
        t
    }

    fn byte_char_table() -> Vec<char> {
        crate::backends::candle::gguf_tokenizer::tests::byte_chars()
    }

    fn stream(t: &Tokenizer, text: &str) -> Vec<String> {
        let mut d = Detokenizer::new();
        let mut out = Vec::new();
        for b in text.bytes() {
            if let Some(p) = d.push(t, u32::from(b)).unwrap() {
                out.push(p);
            }
        }
        let rest = d.finish(t).unwrap();
        if !rest.is_empty() {
            out.push(rest);
        }
        out
    }

    #[test]
    fn split_multibyte_characters_are_released_whole() {
        let t = byte_tokenizer();
        for text in ["a😀b", "日本", "café", "🎉🎉"] {
            let pieces = stream(&t, text);
            assert_eq!(pieces.concat(), text);
            assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        }
        // The emoji (4 byte tokens) arrives as one piece, after its last byte.
        assert_eq!(stream(&t, "a😀b"), vec!["a", "😀", "b"]);
    }

    #[test]
    fn tokens_without_text_do_not_pile_up() {
        let mut t = byte_tokenizer();
        t.add_special_tokens(&[tokenizers::AddedToken::from("<sp>", true)]);
        let sp = t.token_to_id("<sp>").unwrap();
        let mut d = Detokenizer::new();
        for _ in 0..100 {
            assert_eq!(d.push(&t, sp).unwrap(), None);
        }
        assert!(d.ids.len() <= 2, "{}", d.ids.len());
        assert_eq!(d.push(&t, u32::from(b'z')).unwrap().as_deref(), Some("z"));
    }

    #[test]
    fn a_cut_off_character_is_flushed_at_finish() {
        let t = byte_tokenizer();
        let mut d = Detokenizer::new();
        assert_eq!(d.push(&t, u32::from(b'x')).unwrap().as_deref(), Some("x"));
        // First two bytes of "é" (0xC3 0xA9) → only 0xC3 arrives before the end.
        assert_eq!(d.push(&t, 0xC3).unwrap(), None);
        assert_eq!(d.finish(&t).unwrap(), "\u{FFFD}");
    }
}
