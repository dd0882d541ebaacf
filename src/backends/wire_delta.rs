//! Decoding a `delta` (or `message`) object of an upstream chunk straight into what the gateway
//! reads.
//!
//! Every streamed token arrives as one such object. Decoded into a JSON map first, each of its
//! fields cost an allocated key and a value before being sorted into `role`, `content` and the
//! rest; with a handful of tokens per answer that was the largest part of what decoding an
//! upstream stream cost. Here the two fields the gateway interprets are recognised without
//! allocating their names, and only fields it passes through unread (`tool_calls`, `refusal`,
//! …) are kept as JSON. A `null` field is dropped, as if absent; a `role` or `content` that is
//! not a string is passed through like any other field.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

/// The fields of one delta.
#[derive(Debug, Default, PartialEq)]
pub struct WireDelta {
    pub role: Option<String>,
    pub content: Option<String>,
    pub extra: Map<String, Value>,
}

/// A field name, borrowed while it is matched.
enum Field {
    Role,
    Content,
    Other(String),
}

// === impl WireDelta ===

impl<'de> Deserialize<'de> for WireDelta {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(DeltaVisitor)
    }
}

struct DeltaVisitor;

impl<'de> Visitor<'de> for DeltaVisitor {
    type Value = WireDelta;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a delta object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireDelta, A::Error> {
        let mut delta = WireDelta::default();
        while let Some(field) = map.next_key::<Field>()? {
            let value: Value = map.next_value()?;
            match (field, value) {
                (_, Value::Null) => {}
                (Field::Role, Value::String(s)) => delta.role = Some(s),
                (Field::Content, Value::String(s)) => delta.content = Some(s),
                (Field::Role, value) => {
                    delta.extra.insert("role".to_owned(), value);
                }
                (Field::Content, value) => {
                    delta.extra.insert("content".to_owned(), value);
                }
                (Field::Other(name), value) => {
                    delta.extra.insert(name, value);
                }
            }
        }
        Ok(delta)
    }
}

// === impl Field ===

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

struct FieldVisitor;

impl Visitor<'_> for FieldVisitor {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Field, E> {
        Ok(match name {
            "role" => Field::Role,
            "content" => Field::Content,
            other => Field::Other(other.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(v: Value) -> WireDelta {
        serde_json::from_str(&v.to_string()).unwrap()
    }

    #[test]
    fn role_and_content_are_read_and_everything_else_kept() {
        let d = decode(json!({
            "role": "assistant",
            "content": "h\u{e9}llo \"quoted\"",
            "refusal": null,
            "tool_calls": [{"index": 0, "id": "c1"}],
        }));
        assert_eq!(d.role.as_deref(), Some("assistant"));
        assert_eq!(d.content.as_deref(), Some("h\u{e9}llo \"quoted\""));
        assert_eq!(
            Value::Object(d.extra),
            json!({"tool_calls": [{"index": 0, "id": "c1"}]})
        );
    }

    #[test]
    fn nulls_are_absent_and_odd_types_pass_through() {
        let d = decode(json!({"role": null, "content": null}));
        assert_eq!(d, WireDelta::default());
        let d = decode(json!({"content": [{"type": "text", "text": "x"}], "role": 7}));
        assert_eq!(d.content, None);
        assert_eq!(
            Value::Object(d.extra),
            json!({"content": [{"type": "text", "text": "x"}], "role": 7})
        );
    }

    #[test]
    fn a_delta_that_is_not_an_object_is_an_error() {
        assert!(serde_json::from_str::<WireDelta>("\"text\"").is_err());
        assert!(serde_json::from_str::<WireDelta>("[1]").is_err());
    }
}
