//! SSE framing and non-streaming collection.
//!
//! Both response shapes come from the same deltas: [`ChunkEncoder`] renders each one as an OpenAI
//! `chat.completion.chunk` event (`data: {json}\n\n`), and [`Collector`] folds the same deltas into
//! one `chat.completion` object. The byte shape follows OpenAI's: `"usage":null` on every chunk when
//! usage was asked for, then a last chunk with empty `choices` and the usage, then `data: [DONE]`.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value};

use super::types::{ChoiceDelta, Usage};
use crate::json_text::json_str;

/// The event that ends a successful stream.
pub const DONE: &[u8] = b"data: [DONE]\n\n";
/// An SSE comment sent while the backend is idle, so proxies keep the connection open.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// Renders deltas of one response as SSE chunk events.
///
/// Every chunk of a response repeats its id, creation time and model; that part of the JSON is
/// rendered once, at construction, and each delta writes only what differs (index, delta fields,
/// finish reason). The bytes are exactly what serialising the whole chunk would give.
#[derive(Debug, Clone)]
pub struct ChunkEncoder {
    /// `data: {"id":…,"object":"chat.completion.chunk","created":…,"model":…,
    /// "system_fingerprint":null,"choices":[`
    prefix: Box<[u8]>,
    include_usage: bool,
}

/// What closes a chunk with choices: no `usage` key, or `"usage":null` when usage was asked for.
const CLOSE: &[u8] = b"]}\n\n";
const CLOSE_NULL_USAGE: &[u8] = b"],\"usage\":null}\n\n";

// === impl ChunkEncoder ===

impl ChunkEncoder {
    /// An encoder for one response.
    pub fn new(id: &str, created: u64, model: &str, include_usage: bool) -> Self {
        let mut prefix = Vec::with_capacity(128 + id.len() + model.len());
        prefix.extend_from_slice(b"data: {\"id\":");
        json_str(&mut prefix, id);
        prefix.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        prefix.extend_from_slice(itoa::Buffer::new().format(created).as_bytes());
        prefix.extend_from_slice(b",\"model\":");
        json_str(&mut prefix, model);
        prefix.extend_from_slice(b",\"system_fingerprint\":null,\"choices\":[");
        ChunkEncoder {
            prefix: prefix.into_boxed_slice(),
            include_usage,
        }
    }

    /// `data: {chunk}\n\n` for one delta.
    pub fn delta(&self, d: &ChoiceDelta) -> Bytes {
        let mut out = BytesMut::new();
        self.delta_into(d, &mut out);
        out.freeze()
    }

    /// Appends `data: {chunk}\n\n` for one delta to `out`.
    ///
    /// A stream renders every event into one buffer and hands each out as a slice of it (see
    /// [`FrameBuffer`]), so an event costs no allocation of its own.
    pub fn delta_into(&self, d: &ChoiceDelta, out: &mut BytesMut) {
        let text =
            d.role.as_ref().map_or(0, String::len) + d.content.as_ref().map_or(0, String::len);
        out.reserve(self.prefix.len() + 112 + text + text / 8);
        out.put_slice(&self.prefix);
        out.put_slice(b"{\"index\":");
        out.put_slice(itoa::Buffer::new().format(d.index).as_bytes());
        out.put_slice(b",\"delta\":{");
        let mut first = true;
        let mut field = |out: &mut BytesMut, key: &str| {
            if !std::mem::take(&mut first) {
                out.put_u8(b',');
            }
            json_str(out, key);
            out.put_u8(b':');
        };
        if let Some(role) = &d.role {
            field(out, "role");
            json_str(out, role);
        }
        if let Some(content) = &d.content {
            field(out, "content");
            json_str(out, content);
        }
        for (key, value) in &d.extra {
            field(out, key);
            // Serialising a JSON value into memory cannot fail.
            let _ = serde_json::to_writer(out.writer(), value);
        }
        out.put_slice(b"},\"logprobs\":null,\"finish_reason\":");
        match &d.finish_reason {
            Some(reason) => json_str(out, reason),
            None => out.put_slice(b"null"),
        }
        out.put_u8(b'}');
        out.put_slice(if self.include_usage {
            CLOSE_NULL_USAGE
        } else {
            CLOSE
        });
    }

    /// The last chunk: no choices, only usage. Sent only when usage was asked for.
    pub fn usage(&self, usage: &Usage) -> Bytes {
        let mut out = BytesMut::new();
        self.usage_into(usage, &mut out);
        out.freeze()
    }

    /// Appends the usage chunk to `out`.
    pub fn usage_into(&self, usage: &Usage, out: &mut BytesMut) {
        out.reserve(self.prefix.len() + 112);
        out.put_slice(&self.prefix);
        out.put_slice(b"],\"usage\":");
        // Serialising three integers into memory cannot fail.
        let _ = serde_json::to_writer(out.writer(), usage);
        out.put_slice(b"}\n\n");
    }
}

/// One stream's events, rendered into a shared buffer.
///
/// Each event is written behind the previous one and handed out as a slice
/// ([`BytesMut::split`]): the slices of a burst share one allocation, and once the connection
/// has written them the buffer is whole again and is reused. The first event gets an exact
/// allocation of its own and the buffer comes with the second, so a stream that stops after its
/// first event (an upstream that sent the role, then went quiet) keeps nothing.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    buf: BytesMut,
    /// Whether the first event was handed out.
    started: bool,
}

impl FrameBuffer {
    /// Room for a burst of ordinary chunk events.
    const CAPACITY: usize = 1024;
    /// Less room than this left, and the buffer is renewed (reused when no frame holds on to it).
    const LOW: usize = 384;

    /// The buffer to render the next event into.
    pub fn room(&mut self) -> &mut BytesMut {
        if self.started && self.buf.capacity() < Self::LOW {
            self.buf.reserve(Self::CAPACITY);
        }
        &mut self.buf
    }

    /// What was rendered since the last call, as one frame.
    pub fn take(&mut self) -> Bytes {
        let frame = self.buf.split().freeze();
        if !std::mem::replace(&mut self.started, true) {
            // Not kept: the first frame's allocation goes once it is written.
            self.buf = BytesMut::new();
        }
        frame
    }
}

/// Folds deltas into one non-streaming `chat.completion`.
#[derive(Debug, Default)]
pub struct Collector {
    choices: BTreeMap<u32, CollectedChoice>,
    usage: Option<Usage>,
}

#[derive(Debug, Default)]
struct CollectedChoice {
    role: Option<String>,
    content: Option<String>,
    finish_reason: Option<String>,
    extra: Map<String, Value>,
    /// Streamed tool calls arrive as fragments keyed by their index; they are merged here.
    tool_calls: BTreeMap<u64, Value>,
}

// === impl Collector ===

impl Collector {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one delta.
    pub fn push(&mut self, d: ChoiceDelta) {
        let c = self.choices.entry(d.index).or_default();
        if d.role.is_some() {
            c.role = d.role;
        }
        if let Some(text) = d.content {
            c.content.get_or_insert_with(String::new).push_str(&text);
        }
        if d.finish_reason.is_some() {
            c.finish_reason = d.finish_reason;
        }
        for (k, v) in d.extra {
            if k == "tool_calls" {
                merge_tool_calls(&mut c.tool_calls, v);
                continue;
            }
            match (c.extra.get_mut(&k), v) {
                (Some(Value::String(old)), Value::String(new)) => old.push_str(&new),
                (Some(Value::Object(old)), Value::Object(new)) => merge_fragment(old, new),
                (_, v) => {
                    c.extra.insert(k, v);
                }
            }
        }
    }

    /// Records usage.
    pub fn set_usage(&mut self, usage: Usage) {
        self.usage = Some(usage);
    }

    /// The usage recorded, if any.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The text of choice 0 so far.
    pub fn text(&self) -> &str {
        self.choices
            .get(&0)
            .and_then(|c| c.content.as_deref())
            .unwrap_or("")
    }

    /// The `chat.completion` JSON.
    pub fn finish(self, id: &str, created: u64, model: &str) -> Bytes {
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .map(|(index, c)| {
                let mut message = Map::new();
                message.insert(
                    "role".into(),
                    Value::String(c.role.unwrap_or_else(|| "assistant".into())),
                );
                message.insert(
                    "content".into(),
                    c.content.map(Value::String).unwrap_or(Value::Null),
                );
                for (k, v) in c.extra {
                    message.insert(k, v);
                }
                if !c.tool_calls.is_empty() {
                    message.insert(
                        "tool_calls".into(),
                        Value::Array(c.tool_calls.into_values().collect()),
                    );
                }
                serde_json::json!({
                    "index": index,
                    "message": message,
                    "logprobs": null,
                    "finish_reason": c.finish_reason,
                })
            })
            .collect();
        let body = serde_json::json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": null,
            "choices": choices,
            "usage": self.usage,
        });
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }
}

/// Merges streamed tool-call fragments: the first fragment of each index carries id, type and
/// name; later ones append to `function.arguments` (and fill in what the first lacked).
fn merge_tool_calls(acc: &mut BTreeMap<u64, Value>, fragments: Value) {
    let Value::Array(items) = fragments else {
        return;
    };
    for item in items {
        let idx = item.get("index").and_then(Value::as_u64).unwrap_or(0);
        let Value::Object(mut item) = item else {
            continue;
        };
        item.remove("index");
        match acc.get_mut(&idx) {
            Some(Value::Object(existing)) => merge_fragment(existing, item),
            _ => {
                acc.insert(idx, Value::Object(item));
            }
        }
    }
}

/// Merges a later fragment of a nested field (a tool call, `function_call`, `audio`) into what
/// came before: the streamed texts (`arguments`, `transcript`) are appended; anything else is
/// set by its first fragment (an upstream that repeats a call's id or name in every fragment
/// does not have it doubled).
fn merge_fragment(acc: &mut Map<String, Value>, fragment: Map<String, Value>) {
    for (k, v) in fragment {
        match (acc.get_mut(&k), v) {
            (Some(Value::String(old)), Value::String(new))
                if k == "arguments" || k == "transcript" =>
            {
                old.push_str(&new)
            }
            (Some(Value::Object(old)), Value::Object(new)) => merge_fragment(old, new),
            (Some(_), _) => {}
            (None, v) => {
                acc.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_after_the_first_share_one_buffer_and_the_first_keeps_none() {
        let enc = ChunkEncoder::new("c", 1, "m", false);
        let d = ChoiceDelta {
            content: Some("tok".into()),
            ..Default::default()
        };
        let mut out = FrameBuffer::default();
        enc.delta_into(&d, out.room());
        let first = out.take();
        assert_eq!(first, enc.delta(&d));
        // Nothing held after the first event.
        assert_eq!(out.buf.capacity(), 0);
        let frames: Vec<Bytes> = (0..3)
            .map(|_| {
                enc.delta_into(&d, out.room());
                out.take()
            })
            .collect();
        for pair in frames.windows(2) {
            assert_eq!(pair[0], first);
            // One allocation: each frame starts where the previous one ends.
            assert_eq!(pair[0].as_ptr_range().end, pair[1].as_ptr());
        }
    }

    /// The chunk as serialising it whole gives it: what the encoder must match byte for byte.
    mod reference {
        use serde::Serialize;
        use serde_json::{Map, Value};

        use crate::api::types::{ChoiceDelta, Usage};

        #[derive(Serialize)]
        struct Chunk<'a> {
            id: &'a str,
            object: &'static str,
            created: u64,
            model: &'a str,
            system_fingerprint: Option<&'a str>,
            choices: &'a [ChunkChoice<'a>],
            #[serde(skip_serializing_if = "Option::is_none")]
            usage: Option<Option<&'a Usage>>,
        }

        #[derive(Serialize)]
        struct ChunkChoice<'a> {
            index: u32,
            delta: DeltaBody<'a>,
            logprobs: Option<()>,
            finish_reason: Option<&'a str>,
        }

        #[derive(Serialize)]
        struct DeltaBody<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            role: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            content: Option<&'a str>,
            #[serde(flatten)]
            extra: &'a Map<String, Value>,
        }

        pub fn frame(
            id: &str,
            created: u64,
            model: &str,
            delta: Option<&ChoiceDelta>,
            usage: Option<Option<&Usage>>,
        ) -> Vec<u8> {
            let choices: Vec<ChunkChoice<'_>> = delta
                .map(|d| ChunkChoice {
                    index: d.index,
                    delta: DeltaBody {
                        role: d.role.as_deref(),
                        content: d.content.as_deref(),
                        extra: &d.extra,
                    },
                    logprobs: None,
                    finish_reason: d.finish_reason.as_deref(),
                })
                .into_iter()
                .collect();
            let chunk = Chunk {
                id,
                object: "chat.completion.chunk",
                created,
                model,
                system_fingerprint: None,
                choices: &choices,
                usage,
            };
            let mut out = b"data: ".to_vec();
            out.extend_from_slice(&serde_json::to_vec(&chunk).unwrap());
            out.extend_from_slice(b"\n\n");
            out
        }
    }

    proptest::proptest! {
        #[test]
        fn encoder_bytes_equal_whole_serialisation(
            id in "\\PC{0,12}",
            model in "[\\x00-\\x7f]{0,8}|\\PC{0,8}",
            created in proptest::prelude::any::<u64>(),
            index in 0u32..4,
            role in proptest::option::of("\\PC{0,6}"),
            content in proptest::option::of("[\\x00-\\x7f\"\\\\]{0,24}|\\PC{0,24}"),
            finish in proptest::option::of("[a-z_\"]{0,8}"),
            extra_key in proptest::option::of("[a-z\\n\"]{1,6}"),
            include_usage in proptest::prelude::any::<bool>(),
        ) {
            let enc = ChunkEncoder::new(&id, created, &model, include_usage);
            let mut d = ChoiceDelta {
                index,
                role,
                content,
                finish_reason: finish,
                ..Default::default()
            };
            if let Some(k) = extra_key {
                d.extra.insert(k, serde_json::json!([{"index": 0, "a": "x\ny"}, null, 1.5]));
            }
            let usage_key = include_usage.then_some(None);
            let want = reference::frame(&id, created, &model, Some(&d), usage_key);
            let got = enc.delta(&d);
            proptest::prop_assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
            let u = Usage::new(created % 1000, u64::from(index));
            let want = reference::frame(&id, created, &model, None, Some(Some(&u)));
            let got = enc.usage(&u);
            proptest::prop_assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
        }
    }

    fn delta(content: &str) -> ChoiceDelta {
        ChoiceDelta {
            content: Some(content.into()),
            ..Default::default()
        }
    }

    #[test]
    fn chunk_has_openai_shape() {
        let enc = ChunkEncoder::new("chatcmpl-1", 7, "m", false);
        let ev = enc.delta(&delta("hi"));
        let s = std::str::from_utf8(&ev).unwrap();
        assert!(s.starts_with("data: {") && s.ends_with("}\n\n"), "{s}");
        let v: Value = serde_json::from_str(&s[6..s.len() - 2]).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["choices"][0]["delta"]["content"], "hi");
        assert!(v["choices"][0]["finish_reason"].is_null());
        assert!(v.get("usage").is_none(), "no usage key unless asked");
    }

    #[test]
    fn include_usage_puts_null_then_final_usage() {
        let enc = ChunkEncoder::new("c", 1, "m", true);
        let v: Value = serde_json::from_slice(&enc.delta(&delta("a"))[6..]).unwrap();
        assert!(v["usage"].is_null() && v.get("usage").is_some());
        let last = enc.usage(&Usage::new(3, 4));
        let v: Value = serde_json::from_slice(&last[6..]).unwrap();
        assert_eq!(v["choices"].as_array().unwrap().len(), 0);
        assert_eq!(v["usage"]["total_tokens"], 7);
    }

    #[test]
    fn collector_joins_text_and_merges_tool_calls() {
        let mut c = Collector::new();
        c.push(ChoiceDelta {
            role: Some("assistant".into()),
            content: Some("Hel".into()),
            ..Default::default()
        });
        c.push(delta("lo"));
        let mut tc = ChoiceDelta::default();
        tc.extra.insert(
            "tool_calls".into(),
            serde_json::json!([{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\""}}]),
        );
        c.push(tc);
        let mut tc = ChoiceDelta::default();
        tc.extra.insert(
            "tool_calls".into(),
            serde_json::json!([{"index":0,"function":{"arguments":":1}"}}]),
        );
        c.push(tc);
        c.push(ChoiceDelta {
            finish_reason: Some("stop".into()),
            ..Default::default()
        });
        c.set_usage(Usage::new(1, 2));
        let v: Value = serde_json::from_slice(&c.finish("id", 1, "m")).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "Hello");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(v["usage"]["completion_tokens"], 2);
    }
}
