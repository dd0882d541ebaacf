//! An upstream `chat.completion.chunk`, reduced to what the gateway reads, and a quick way to read
//! the common shape of it.
//!
//! Every streamed token arrives as about 200 bytes of JSON, most of which (id, object, creation
//! time, model, fingerprint, logprobs) the gateway skips. serde_json spends about 5k instructions
//! on such a chunk, the largest single cost of proxying a stream. [`WireChunk::parse`] first walks
//! the chunk with a small reader that validates what it skips as serde_json would and borrows
//! what it keeps; anything it does not handle itself (an escaped key, a repeated field, a
//! `message`, a non-string role or content, deep nesting, any syntax error) sends the whole chunk
//! to serde_json instead. Both paths therefore give the same answer for every input, errors
//! included, and the reader only decides how quickly. Keys, most of the strings in a chunk, are
//! first compared with the one OpenAI's order puts next, as a literal, before they are scanned.

use serde::Deserialize;
use serde_json::Value;
use smallvec::SmallVec;

use super::wire_delta::WireDelta;
use crate::api::types::Usage;

/// One `chat.completion.chunk` (or a whole `chat.completion`), reduced to what the gateway reads.
#[derive(Debug, Deserialize, PartialEq)]
pub struct WireChunk {
    /// Nearly always one choice: kept inline, not allocated per chunk.
    #[serde(default)]
    pub choices: Choices,
    #[serde(default)]
    pub usage: Option<WireUsage>,
    #[serde(default)]
    pub error: Option<Value>,
}

/// The `choices` of one chunk.
pub type Choices = SmallVec<[WireChoice; 1]>;

/// One entry of `choices`.
#[derive(Debug, Deserialize, PartialEq)]
pub struct WireChoice {
    #[serde(default)]
    pub index: u32,
    /// `delta` in a chunk.
    #[serde(default)]
    pub delta: Option<WireDelta>,
    /// `message` in a non-streaming completion.
    #[serde(default)]
    pub message: Option<WireDelta>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// Usage as upstreams send it: some omit `total_tokens`, newer ones add detail objects.
#[derive(Debug, Deserialize, PartialEq)]
pub struct WireUsage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: Option<u64>,
}

/// Values nested deeper than this are left to serde_json.
const MAX_DEPTH: usize = 64;

/// The keys of a chunk, a choice and a delta in the order OpenAI writes them (see
/// [`Reader::object`]).
const CHUNK_KEYS: &[KeyPattern] = &[
    KeyPattern::new("id"),
    KeyPattern::new("object"),
    KeyPattern::new("created"),
    KeyPattern::new("model"),
    KeyPattern::new("system_fingerprint"),
    KeyPattern::new("choices"),
    KeyPattern::new("usage"),
];
const CHOICE_KEYS: &[KeyPattern] = &[
    KeyPattern::new("index"),
    KeyPattern::new("delta"),
    KeyPattern::new("logprobs"),
    KeyPattern::new("finish_reason"),
];
/// A stream's first delta is `role` then `content`, every later one `content` alone.
const DELTA_KEYS: &[KeyPattern] = &[
    KeyPattern::new("content"),
    KeyPattern::new("role"),
    KeyPattern::new("content"),
];

/// A key as it is written before its value, `"key":`, compared eight bytes at a time: these are
/// short, and a call to `memcmp` costs more than the comparison.
struct KeyPattern {
    key: &'static str,
    /// `"key":`, zero-padded.
    text: [u8; KeyPattern::ROOM],
    len: usize,
}

impl KeyPattern {
    const ROOM: usize = 24;

    const fn new(key: &'static str) -> Self {
        let k = key.as_bytes();
        assert!(k.len() + 3 <= Self::ROOM);
        let mut text = [0u8; Self::ROOM];
        text[0] = b'"';
        let mut i = 0;
        while i < k.len() {
            text[i + 1] = k[i];
            i += 1;
        }
        text[k.len() + 1] = b'"';
        text[k.len() + 2] = b':';
        KeyPattern {
            key,
            text,
            len: k.len() + 3,
        }
    }

    /// Whether `b` holds exactly this at `at`.
    fn is_at(&self, b: &[u8], at: usize) -> bool {
        let Some(have) = b.get(at..at + self.len) else {
            return false;
        };
        let word = |s: &[u8], i: usize| {
            s.get(i..i + 8)
                .and_then(|w| <[u8; 8]>::try_from(w).ok())
                .map(u64::from_le_bytes)
        };
        if self.len < 8 {
            return have == &self.text[..self.len];
        }
        // Whole words, then the last eight bytes (overlapping the words before them).
        let mut i = 0;
        while i + 8 <= self.len {
            if word(have, i) != word(&self.text, i) {
                return false;
            }
            i += 8;
        }
        i == self.len || word(have, self.len - 8) == word(&self.text, self.len - 8)
    }
}

/// The bytes that end a run of plain string text: the closing quote, a backslash, and the
/// control characters JSON forbids inside a string.
const STRING_STOP: [bool; 256] = {
    let mut stop = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        stop[c] = true;
        c += 1;
    }
    stop[b'"' as usize] = true;
    stop[b'\\' as usize] = true;
    stop
};

// === impl WireChunk ===

impl WireChunk {
    /// Decodes one event's data.
    pub fn parse(data: &str) -> serde_json::Result<WireChunk> {
        match Reader::new(data).chunk(false) {
            Some((chunk, _)) => Ok(chunk),
            None => serde_json::from_str(data),
        }
    }
}

/// Decodes the chunks of one stream, remembering the bytes its chunks repeat.
///
/// Every chunk of a stream starts with the same id, object, creation time, model and
/// fingerprint, and only then the `choices` that differ. Once a chunk has been read, the bytes
/// before its `choices` value are kept; a later chunk that starts with exactly those bytes is read
/// from there, in the state the reader had reached at that point of the first one (nothing kept
/// yet), so the result is the same as reading it whole.
///
/// The bytes are kept from the second chunk on: a stream waiting for its first token has had
/// only the role chunk, and thousands of such streams may be open at once.
#[derive(Debug, Default)]
pub struct ChunkReader {
    prefix: Vec<u8>,
    /// A chunk was read whole already.
    read_one: bool,
}

/// Longer repeated beginnings are not kept (each open stream holds its copy).
const MAX_PREFIX: usize = 512;

// === impl ChunkReader ===

impl ChunkReader {
    /// Decodes one event's data, as [`WireChunk::parse`] would.
    pub fn parse(&mut self, data: &str) -> serde_json::Result<WireChunk> {
        if !self.prefix.is_empty() && data.as_bytes().starts_with(&self.prefix) {
            let mut r = Reader {
                text: data,
                at: self.prefix.len(),
            };
            if let Some((chunk, _)) = r.chunk(true) {
                return Ok(chunk);
            }
        }
        match Reader::new(data).chunk(false) {
            Some((chunk, at)) => {
                self.prefix.clear();
                if let Some(at) = at.filter(|&at| at <= MAX_PREFIX && self.read_one) {
                    self.prefix.extend_from_slice(&data.as_bytes()[..at]);
                }
                self.read_one = true;
                Ok(chunk)
            }
            None => serde_json::from_str(data),
        }
    }
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u
                .total_tokens
                .unwrap_or(u.prompt_tokens + u.completion_tokens),
        }
    }
}

/// The index of the first byte at or after `from` that ends plain string text (or the length).
/// Eight bytes at a time: strings here are short (keys, ids, a token), too short for a vector
/// search to pay for its set-up, and a byte loop costs a bounds check and a lookup per byte.
fn plain_run(b: &[u8], from: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES * 0x80;
    let mut i = from;
    if let Some(rest) = b.get(from..) {
        for word in rest.chunks_exact(8) {
            let Ok(word) = <[u8; 8]>::try_from(word) else {
                break;
            };
            let w = u64::from_le_bytes(word);
            let quote = w ^ (ONES * u64::from(b'"'));
            let backslash = w ^ (ONES * u64::from(b'\\'));
            // The lowest byte flagged by each term is exact; higher ones may be false alarms,
            // which only hand the word to the byte loop below.
            let flagged = (quote.wrapping_sub(ONES) & !quote)
                | (backslash.wrapping_sub(ONES) & !backslash)
                | (w.wrapping_sub(ONES * 0x20) & !w);
            if flagged & HIGH != 0 {
                break;
            }
            i += 8;
        }
    }
    while b.get(i).is_some_and(|&c| !STRING_STOP[usize::from(c)]) {
        i += 1;
    }
    i
}

/// A cursor over one chunk's JSON. Every method returns `None` where serde_json should decide.
struct Reader<'a> {
    text: &'a str,
    at: usize,
}

// === impl Reader ===

impl<'a> Reader<'a> {
    fn new(text: &'a str) -> Self {
        Reader { text, at: 0 }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        let b = self.bytes();
        while let Some(&c) = b.get(self.at) {
            if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(c);
            }
            self.at += 1;
        }
        None
    }

    /// Consumes the next byte after whitespace.
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.at += 1;
        Some(c)
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    /// `literal` at the cursor (after the first byte was peeked).
    fn literal(&mut self, literal: &[u8]) -> Option<()> {
        let end = self.at + literal.len();
        (self.bytes().get(self.at..end)? == literal).then(|| self.at = end)
    }

    /// `null` (consumed) or something else (not consumed).
    fn null(&mut self) -> Option<bool> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(true);
        }
        Some(false)
    }

    /// A string: the text between its quotes, and whether it holds escapes. Checks it as
    /// serde_json checks a string it skips: no raw control characters, valid escapes.
    fn raw_string(&mut self) -> Option<(&'a str, bool)> {
        self.expect(b'"')?;
        let b = self.bytes();
        let start = self.at;
        let mut escaped = false;
        let mut i = self.at;
        loop {
            i = plain_run(b, i);
            match *b.get(i)? {
                b'"' => {
                    self.at = i + 1;
                    return Some((self.text.get(start..i)?, escaped));
                }
                b'\\' => {
                    escaped = true;
                    i += match *b.get(i + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                        b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => 6,
                        _ => return None,
                    };
                }
                // A raw control character.
                _ => return None,
            }
        }
    }

    /// A string value, unescaped.
    fn string(&mut self) -> Option<String> {
        self.peek()?;
        let start = self.at;
        let (text, escaped) = self.raw_string()?;
        if !escaped {
            return Some(text.to_owned());
        }
        // Escapes are rare; serde_json decodes them (surrogate pairs included).
        serde_json::from_str(&self.text[start..self.at]).ok()
    }

    /// An object key: plain keys only (an escaped one is left to serde_json), then the colon.
    fn key(&mut self) -> Option<&'a str> {
        let (key, escaped) = self.raw_string()?;
        self.expect(b':')?;
        (!escaped).then_some(key)
    }

    /// After an entry: `true` at a comma, `false` at the closing `close`.
    fn more(&mut self, close: u8) -> Option<bool> {
        match self.next()? {
            b',' => Some(true),
            c if c == close => Some(false),
            _ => None,
        }
    }

    /// An unsigned integer that fits `u32`, written plainly (no sign, fraction or exponent).
    fn index(&mut self) -> Option<u32> {
        self.peek()?;
        let b = self.bytes();
        let start = self.at;
        while b.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        let digits = &self.text[start..self.at];
        if digits.is_empty()
            || (digits.len() > 1 && digits.starts_with('0'))
            || matches!(b.get(self.at), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        digits.parse().ok()
    }

    /// A number, checked against JSON's grammar.
    fn number(&mut self) -> Option<()> {
        let b = self.bytes();
        let digits = |at: &mut usize| {
            let from = *at;
            while b.get(*at).is_some_and(u8::is_ascii_digit) {
                *at += 1;
            }
            (*at > from).then_some(())
        };
        let mut at = self.at;
        if b.get(at) == Some(&b'-') {
            at += 1;
        }
        if b.get(at) == Some(&b'0') {
            at += 1;
        } else {
            digits(&mut at)?;
        }
        if b.get(at) == Some(&b'.') {
            at += 1;
            digits(&mut at)?;
        }
        if matches!(b.get(at), Some(b'e' | b'E')) {
            at += 1;
            if matches!(b.get(at), Some(b'+' | b'-')) {
                at += 1;
            }
            digits(&mut at)?;
        }
        // A digit right after a leading zero is not JSON.
        if b.get(at).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        self.at = at;
        Some(())
    }

    /// Skips one value, checking it.
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.raw_string().map(drop),
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'-' | b'0'..=b'9' => self.number(),
            b'[' => self.list(b'[', b']', |r| r.skip(depth + 1)),
            b'{' => self.list(b'{', b'}', |r| {
                // A skipped object's keys are only checked, so an escaped one is fine here.
                r.raw_string()?;
                r.expect(b':')?;
                r.skip(depth + 1)
            }),
            _ => None,
        }
    }

    /// The text of the next value, checked.
    fn raw_value(&mut self) -> Option<&'a str> {
        self.peek()?;
        let start = self.at;
        self.skip(1)?;
        Some(&self.text[start..self.at])
    }

    /// An object key that is expected to be `want`: matched with its quotes and colon as a
    /// literal when it is (then no scan is needed, the key has no escape), read as any key
    /// otherwise. Also says whether it was `want`.
    fn key_expecting(&mut self, want: Option<&KeyPattern>) -> Option<(&'a str, bool)> {
        if let Some(want) = want {
            self.peek()?;
            if want.is_at(self.bytes(), self.at) {
                self.at += want.len;
                return Some((want.key, true));
            }
        }
        Some((self.key()?, false))
    }

    /// Entries of an object, handed to `entry` key by key; `entry` must consume the value.
    /// `order` is the order the keys usually come in (OpenAI's own), which makes reading them
    /// cheaper where they do; any order reads the same.
    fn object(
        &mut self,
        order: &'static [KeyPattern],
        mut entry: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        let mut next = 0;
        self.list(b'{', b'}', |r| {
            let (key, expected) = r.key_expecting(order.get(next))?;
            next = if expected {
                next + 1
            } else {
                // Out of the usual order: expect what usually follows this key.
                order
                    .iter()
                    .position(|k| k.key == key)
                    .map_or(next, |i| i + 1)
            };
            entry(r, key)
        })
    }

    /// `open`, then items read by `item` and separated by commas, then `close`.
    fn list(
        &mut self,
        open: u8,
        close: u8,
        item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.expect(open)?;
        if self.peek()? == close {
            self.at += 1;
            return Some(());
        }
        self.items(close, item)
    }

    /// Items up to and including `close`, the reader standing at the first of them.
    fn items(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        loop {
            item(self)?;
            if !self.more(close)? {
                return Some(());
            }
        }
    }

    /// The whole chunk; the text must end after it. With `resume`, the reader stands at the value
    /// of `choices` with nothing read before it (see [`ChunkReader`]). Also returns where the
    /// value of `choices` starts when no field the reader keeps came before it.
    fn chunk(&mut self, resume: bool) -> Option<(WireChunk, Option<usize>)> {
        let mut choices = if resume { Some(self.choices()?) } else { None };
        let more_after_resume = resume && self.more(b'}')?;
        let mut usage = None;
        let mut error_seen = false;
        let mut choices_at = None;
        let mut entry = |r: &mut Self, key: &'a str| -> Option<()> {
            match key {
                "choices" if choices.is_none() => {
                    if usage.is_none() && !error_seen {
                        choices_at = Some(r.at);
                    }
                    choices = Some(r.choices()?);
                }
                "usage" if usage.is_none() => {
                    usage = Some(if r.null()? {
                        None
                    } else {
                        serde_json::from_str::<Option<WireUsage>>(r.raw_value()?).ok()?
                    });
                }
                // An error object is rare and serde_json reads it; `null` is no error.
                "error" if !error_seen => {
                    error_seen = true;
                    if !r.null()? {
                        return None;
                    }
                }
                "choices" | "usage" | "error" => return None,
                _ => r.skip(1)?,
            }
            Some(())
        };
        if !resume {
            self.object(CHUNK_KEYS, &mut entry)?;
        } else if more_after_resume {
            self.items(b'}', |r| {
                let key = r.key()?;
                entry(r, key)
            })?;
        }
        if self.peek().is_some() {
            return None;
        }
        let chunk = WireChunk {
            choices: choices.unwrap_or_default(),
            usage: usage.flatten(),
            error: None,
        };
        Some((chunk, choices_at))
    }

    fn choices(&mut self) -> Option<Choices> {
        let mut out = Choices::new();
        self.list(b'[', b']', |r| {
            out.push(r.choice()?);
            Some(())
        })?;
        Some(out)
    }

    fn choice(&mut self) -> Option<WireChoice> {
        let mut index = None;
        let mut delta = None;
        let mut finish_reason = None;
        self.object(CHOICE_KEYS, |r, key| {
            match key {
                "index" if index.is_none() => index = Some(r.index()?),
                "delta" if delta.is_none() => {
                    delta = Some(if r.null()? { None } else { Some(r.delta()?) });
                }
                "finish_reason" if finish_reason.is_none() => {
                    finish_reason = Some(if r.null()? { None } else { Some(r.string()?) });
                }
                "index" | "delta" | "finish_reason" | "message" => return None,
                _ => r.skip(1)?,
            }
            Some(())
        })?;
        Some(WireChoice {
            index: index.unwrap_or_default(),
            delta: delta.flatten(),
            message: None,
            finish_reason: finish_reason.flatten(),
        })
    }

    /// A delta object, as [`WireDelta`]'s own decoding reads it: `null` fields dropped, a later
    /// field replacing an earlier one of the same name.
    fn delta(&mut self) -> Option<WireDelta> {
        let mut delta = WireDelta::default();
        self.object(DELTA_KEYS, |r, key| {
            if r.null()? {
                return Some(());
            }
            match key {
                "role" | "content" if r.peek()? != b'"' => return None,
                "role" => delta.role = Some(r.string()?),
                "content" => delta.content = Some(r.string()?),
                other => {
                    let value = serde_json::from_str(r.raw_value()?).ok()?;
                    delta.extra.insert(other.to_owned(), value);
                }
            }
            Some(())
        })?;
        Some(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fast(data: &str) -> Option<WireChunk> {
        Reader::new(data).chunk(false).map(|(chunk, _)| chunk)
    }

    /// The fast reader either declines or agrees with serde_json, and never accepts what
    /// serde_json rejects.
    fn agrees(data: &str) -> Result<(), TestCaseError> {
        if let Some(chunk) = fast(data) {
            let slow = serde_json::from_str::<WireChunk>(data);
            prop_assert!(
                slow.is_ok(),
                "fast accepted what serde rejects: {data:?} ({slow:?})"
            );
            prop_assert_eq!(Some(chunk), slow.ok(), "{:?}", data);
        }
        Ok(())
    }

    const MOCK: &str = r#"{"id":"chatcmpl-mock-1","object":"chat.completion.chunk","created":1764720000,"model":"mock-model","system_fingerprint":null,"choices":[{"index":0,"delta":{"content":"Hello "},"logprobs":null,"finish_reason":null}]}"#;

    #[test]
    fn keys_out_of_the_usual_order_or_near_it_read_as_serde_reads_them() {
        for data in [
            // Reordered, so each expected key misses.
            r#"{"choices":[{"finish_reason":"stop","delta":{"role":"assistant","content":"a"},"index":0}],"id":"x"}"#,
            // Whitespace around the colon, where the literal has none.
            r#"{"id" :"x","choices" : [{"index" :0,"delta": {"content" :"b"}}]}"#,
            // Keys the expected ones are prefixes of, or the other way round.
            r#"{"idx":"x","choices2":[],"choices":[{"indexes":1,"index":0,"delt":{},"delta":{"contents":"c","content":"d"}}]}"#,
            // An escaped expected key (the literal does not match it; serde decides).
            r#"{"id":"x","choices":[{"ind\u0065x":0,"delta":{"content":"e"}}]}"#,
            // A repeated expected key.
            r#"{"choices":[],"choices":[]}"#,
            // Cut inside an expected key.
            r#"{"id":"x","choices":[{"ind"#,
        ] {
            agrees(data).map_err(|e| e.to_string()).unwrap();
            assert_eq!(
                WireChunk::parse(data).ok(),
                serde_json::from_str::<WireChunk>(data).ok(),
                "{data}"
            );
        }
        let chunk = fast(r#"{"choices":[{"delta":{"content":"a","role":"assistant"},"index":2}]}"#)
            .expect("reordered keys stay on the fast path");
        assert_eq!(chunk.choices[0].index, 2);
        let delta = chunk.choices[0].delta.as_ref().unwrap();
        assert_eq!(
            (delta.role.as_deref(), delta.content.as_deref()),
            (Some("assistant"), Some("a"))
        );
    }

    #[test]
    fn the_common_shapes_take_the_fast_path() {
        let chunk = fast(MOCK).expect("the mock's chunk is read by the fast path");
        assert_eq!(chunk.choices.len(), 1);
        let delta = chunk.choices[0].delta.as_ref().unwrap();
        assert_eq!(delta.content.as_deref(), Some("Hello "));
        let openai = r#"{"id":"chatcmpl-B","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"x1"}"#;
        let chunk = fast(openai).expect("OpenAI's first chunk");
        let delta = chunk.choices[0].delta.as_ref().unwrap();
        assert_eq!(delta.role.as_deref(), Some("assistant"));
        assert!(delta.extra.is_empty(), "refusal: null is dropped");
        let usage = r#"{"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":0}}}"#;
        let chunk = fast(usage).expect("the usage chunk");
        assert_eq!(Usage::from(chunk.usage.unwrap()), Usage::new(3, 4));
        let escaped = r#"{"choices":[{"index":1,"delta":{"content":"a\n\"b\" \u00e9 \ud83d\ude00","tool_calls":[{"index":0,"function":{"arguments":"{}"}}]},"finish_reason":"stop"}]}"#;
        let chunk = fast(escaped).expect("escapes and pass-through fields");
        assert_eq!(chunk.choices[0].index, 1);
        let delta = chunk.choices[0].delta.as_ref().unwrap();
        assert_eq!(delta.content.as_deref(), Some("a\n\"b\" \u{e9} \u{1f600}"));
        assert!(delta.extra.contains_key("tool_calls"));
        assert_eq!(chunk.choices[0].finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn unusual_input_is_left_to_serde_and_decoded_the_same() {
        let cases = [
            r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"choices":[]}"#,
            r#"{"choices":[{"message":{"content":"whole"}}]}"#,
            r#"{"ch\u006fices":[{"delta":{"content":"x"}}]}"#,
            r#"{"choices":[{"delta":{"content":[{"type":"text"}],"role":7}}]}"#,
            r#"{"error":{"message":"boom"},"choices":[]}"#,
            r#"{"choices":[{"index":1.0,"delta":{}}]}"#,
            r#"{"choices":[{"index":-0,"delta":{}}]}"#,
            r#"{"choices":null}"#,
            r#"{"choices":[],"id":"a"} x"#,
            r#"{"choices":[],"id":"a	b"}"#,
            r#"{"choices":[],"id":"\x"}"#,
            r#"{"choices":[],"n":01}"#,
            r#"{"choices":[],"n":1.}"#,
            r#"{"choices":[],"n":[1,]}"#,
            r#"{"choices":[{"delta":{"content":"\ud800"}}]}"#,
            r#"{"choices":[{"index":4294967296,"delta":{}}]}"#,
        ];
        for case in cases {
            agrees(case).unwrap();
            assert_eq!(
                WireChunk::parse(case).ok(),
                serde_json::from_str::<WireChunk>(case).ok(),
                "{case}"
            );
        }
        let deep = format!(
            r#"{{"choices":[],"x":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(fast(&deep).is_none());
        assert!(WireChunk::parse(&deep).is_ok());
    }

    fn json_text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::from("null")),
            Just(String::from("\"\"")),
            "\"[ -~]{0,6}\"",
            r#""(\\[nt"\\/u]|[a-z\\]){0,6}""#,
            "-?(0|[1-9][0-9]{0,3})(\\.[0-9]{1,2})?([eE][-+]?[0-9])?",
            "[0-9.eE+-]{1,4}",
            Just(String::from("true")),
            Just(String::from("[1, {\"a\": [null]}]")),
            Just(String::from("{}")),
        ]
    }

    fn delta_text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            (
                prop_oneof![
                    Just("role"),
                    Just("content"),
                    Just("refusal"),
                    Just("tool_calls")
                ],
                json_text(),
            ),
            0..4,
        )
        .prop_map(|fields| {
            let body: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("\"{k}\": {v}"))
                .collect();
            format!("{{{}}}", body.join(","))
        })
    }

    fn chunk_text() -> impl Strategy<Value = String> {
        let choice = (
            proptest::option::of(prop_oneof![
                Just(String::from("0")),
                Just(String::from("3")),
                json_text()
            ]),
            proptest::option::of(prop_oneof![delta_text(), json_text()]),
            proptest::option::of(json_text()),
            proptest::option::of(json_text()),
        )
            .prop_map(|(index, delta, finish, logprobs)| {
                let mut f = Vec::new();
                if let Some(i) = index {
                    f.push(format!("\"index\":{i}"));
                }
                if let Some(d) = delta {
                    f.push(format!("\"delta\" : {d}"));
                }
                if let Some(l) = logprobs {
                    f.push(format!("\"logprobs\":{l}"));
                }
                if let Some(r) = finish {
                    f.push(format!("\"finish_reason\":{r}"));
                }
                format!("{{{}}}", f.join(","))
            });
        (
            proptest::collection::vec(choice, 0..3),
            proptest::option::of(prop_oneof![
                Just(String::from(r#"{"prompt_tokens":1,"completion_tokens":2}"#)),
                json_text()
            ]),
            proptest::option::of(json_text()),
            json_text(),
        )
            .prop_map(|(choices, usage, error, id)| {
                let mut f = vec![format!("\"id\":{id}"), "\"object\":\"c\"".to_owned()];
                f.push(format!("\"choices\": [{}]", choices.join(", ")));
                if let Some(u) = usage {
                    f.push(format!("\"usage\":{u}"));
                }
                if let Some(e) = error {
                    f.push(format!("\"error\":{e}"));
                }
                format!("{{ {} }}", f.join(",\n"))
            })
    }

    #[test]
    fn a_stream_s_repeated_beginning_is_read_once() {
        let mut reader = ChunkReader::default();
        let first = reader.parse(MOCK).unwrap();
        assert_eq!(first, WireChunk::parse(MOCK).unwrap());
        assert!(
            reader.prefix.is_empty(),
            "nothing is kept for a stream's first chunk"
        );
        assert_eq!(reader.parse(MOCK).unwrap(), first);
        let at = MOCK.find("[{").unwrap();
        assert_eq!(reader.prefix, MOCK.as_bytes()[..at]);
        let next = MOCK.replace("Hello ", "world");
        assert_eq!(
            reader.parse(&next).unwrap(),
            WireChunk::parse(&next).unwrap()
        );
        // A chunk that repeats the beginning but is broken after it is still refused.
        let broken = MOCK.replace("\"logprobs\":null", "\"logprobs\":nul");
        assert!(reader.parse(&broken).is_err());
        // A repeated `choices` after the kept beginning is still a duplicate field.
        let twice = MOCK.replace("}]}", "}],\"choices\":[]}");
        assert_eq!(
            reader.parse(&twice).is_err(),
            serde_json::from_str::<WireChunk>(&twice).is_err()
        );
        // A usage field before `choices` is state: nothing is kept then.
        let mut reader = ChunkReader::default();
        for _ in 0..2 {
            reader
                .parse(r#"{"usage":null,"choices":[{"delta":{"content":"x"}}]}"#)
                .unwrap();
        }
        assert!(reader.prefix.is_empty());
    }

    proptest! {
        #[test]
        fn a_stream_reader_agrees_with_reading_each_chunk_whole(
            texts in proptest::collection::vec(chunk_text(), 1..6),
            reuse in proptest::collection::vec(any::<bool>(), 6),
        ) {
            let mut reader = ChunkReader::default();
            let mut last = String::new();
            for (i, text) in texts.iter().enumerate() {
                // Often a chunk repeats the previous one's beginning and differs after it.
                let text = if reuse[i] && !last.is_empty() {
                    match (last.find("\"choices\""), text.find("\"choices\"")) {
                        (Some(a), Some(b)) => format!("{}{}", &last[..a], &text[b..]),
                        _ => text.clone(),
                    }
                } else {
                    text.clone()
                };
                let one = reader.parse(&text);
                let whole = serde_json::from_str::<WireChunk>(&text);
                prop_assert_eq!(one.is_ok(), whole.is_ok(), "{:?}", text);
                if let (Ok(a), Ok(b)) = (one, whole) {
                    prop_assert_eq!(a, b);
                }
                last = text;
            }
        }

        #[test]
        fn plain_run_stops_where_a_byte_loop_stops(
            bytes in proptest::collection::vec(prop_oneof![
                1 => Just(b'"'), 1 => Just(b'\\'), 1 => 0u8..0x20, 30 => 0x20u8..=0xff,
            ], 0..40),
            from in 0usize..42,
        ) {
            let want = (from..bytes.len())
                .find(|&i| STRING_STOP[usize::from(bytes[i])])
                .unwrap_or(bytes.len().max(from));
            prop_assert_eq!(plain_run(&bytes, from), want);
        }

        #[test]
        fn fast_reader_agrees_with_serde(text in chunk_text()) {
            agrees(&text)?;
        }

        #[test]
        fn fast_reader_agrees_with_serde_on_cut_and_altered_text(
            text in chunk_text(),
            cut in any::<prop::sample::Index>(),
            at in any::<prop::sample::Index>(),
            byte in prop_oneof![Just(b'"'), Just(b','), Just(b'}'), Just(b']'), Just(b'\\'), Just(b' '), Just(b'0')],
        ) {
            let bytes = text.as_bytes();
            let cut_at = cut.index(bytes.len() + 1);
            if let Ok(prefix) = std::str::from_utf8(&bytes[..cut_at]) {
                agrees(prefix)?;
            }
            let mut altered = bytes.to_vec();
            if !altered.is_empty() {
                let i = at.index(altered.len());
                altered[i] = byte;
                if let Ok(altered) = std::str::from_utf8(&altered) {
                    agrees(altered)?;
                }
            }
        }
    }
}
