//! SSE framing and non-streaming collection.
//!
//! Both response shapes come from the same deltas: [`ChunkEncoder`] renders each one as an OpenAI
//! `chat.completion.chunk` event (`data: {json}\n\n`), and [`Collector`] folds the same deltas into
//! one `chat.completion` object. The byte shape follows OpenAI's: `"usage":null` on every chunk when
//! usage was asked for, then a last chunk with empty `choices` and the usage, then `data: [DONE]`.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use super::types::{ChoiceDelta, Usage};

/// The event that ends a successful stream.
pub const DONE: &[u8] = b"data: [DONE]\n\n";
/// An SSE comment sent while the backend is idle, so proxies keep the connection open.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// Renders deltas of one response as SSE chunk events.
#[derive(Debug, Clone)]
pub struct ChunkEncoder {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: Option<&'a str>,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Skip::skip")]
    usage: Skip<Option<&'a Usage>>,
}

/// A field that is either absent or present (possibly as `null`).
struct Skip<T> {
    present: bool,
    value: T,
}

impl<T> Skip<T> {
    fn skip(&self) -> bool {
        !self.present
    }
}

impl<T: Serialize> Serialize for Skip<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
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

// === impl ChunkEncoder ===

impl ChunkEncoder {
    /// An encoder for one response.
    pub fn new(
        id: impl Into<String>,
        created: u64,
        model: impl Into<String>,
        include_usage: bool,
    ) -> Self {
        ChunkEncoder {
            id: id.into(),
            created,
            model: model.into(),
            include_usage,
        }
    }

    /// The response id (`chatcmpl-…`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `data: {chunk}\n\n` for one delta.
    pub fn delta(&self, d: &ChoiceDelta) -> Bytes {
        let choices = [ChunkChoice {
            index: d.index,
            delta: DeltaBody {
                role: d.role.as_deref(),
                content: d.content.as_deref(),
                extra: &d.extra,
            },
            logprobs: None,
            finish_reason: d.finish_reason.as_deref(),
        }];
        self.frame(
            &choices,
            Skip {
                present: self.include_usage,
                value: None,
            },
        )
    }

    /// The last chunk: no choices, only usage. Sent only when usage was asked for.
    pub fn usage(&self, usage: &Usage) -> Bytes {
        self.frame(
            &[],
            Skip {
                present: true,
                value: Some(usage),
            },
        )
    }

    fn frame(&self, choices: &[ChunkChoice<'_>], usage: Skip<Option<&Usage>>) -> Bytes {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: None,
            choices,
            usage,
        };
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"data: ");
        // Serialising borrowed strings and numbers into a Vec cannot fail.
        if serde_json::to_writer(&mut out, &chunk).is_err() {
            out.truncate(6);
            out.extend_from_slice(b"{}");
        }
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
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
            } else if let (Some(Value::String(old)), Value::String(new)) = (c.extra.get_mut(&k), &v)
            {
                old.push_str(new);
            } else {
                c.extra.insert(k, v);
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
/// name; later ones append to `function.arguments`.
fn merge_tool_calls(acc: &mut BTreeMap<u64, Value>, fragments: Value) {
    let Value::Array(items) = fragments else {
        return;
    };
    for item in items {
        let idx = item.get("index").and_then(Value::as_u64).unwrap_or(0);
        match acc.get_mut(&idx) {
            None => {
                let mut item = item;
                if let Some(obj) = item.as_object_mut() {
                    obj.remove("index");
                }
                acc.insert(idx, item);
            }
            Some(existing) => {
                let more = item
                    .pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if let Some(Value::String(args)) = existing.pointer_mut("/function/arguments") {
                    args.push_str(more);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
