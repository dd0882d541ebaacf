//! Operating limits on input.
//!
//! A request is decoded and checked here before any backend sees it: the body must be JSON of the
//! right shape, and every value must lie inside the limits the model was configured (and validated)
//! for. Each violation is a 400 that names the offending `param`, so a client can fix its request
//! without guessing.

use bytes::Bytes;

use super::types::{ChatRequest, Content, Role};
use crate::config::ModelLimits;
use crate::error::Error;

/// Decodes a chat request body. Invalid UTF-8, malformed JSON and wrong types are 400s that name
/// the field where decoding failed.
pub fn decode(body: &Bytes) -> Result<ChatRequest, Error> {
    if std::str::from_utf8(body).is_err() {
        return Err(Error::invalid_code(
            "invalid_encoding",
            "The request body is not valid UTF-8.",
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid_code(
            "invalid_json",
            "The request body is empty; expected a JSON object.",
        ));
    }
    // The plain decoder first: it is the common case and costs about half as much. Only a body
    // that fails is decoded again, tracking the path, so the error can name the field.
    if let Ok(req) = serde_json::from_slice(body) {
        return Ok(req);
    }
    decode_with_path(body)
}

/// Decodes while tracking the path, for the error message. The naive decoder: every request paid
/// for the path tracking before [`decode`] tried the plain one first (see benches/gateway.rs).
pub fn decode_with_path(body: &Bytes) -> Result<ChatRequest, Error> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let param = (!path.is_empty() && path != ".").then_some(path);
        if inner.is_syntax() || inner.is_eof() {
            Error::InvalidRequest {
                message: format!("The request body is not valid JSON: {inner}."),
                param: None,
                code: Some("invalid_json"),
            }
        } else {
            Error::InvalidRequest {
                message: format!("Invalid request: {inner}."),
                param,
                code: Some("invalid_type"),
            }
        }
    })
}

/// Checks a decoded request against the model's limits and fills in `max_tokens` when absent.
pub fn check(req: &mut ChatRequest, limits: &ModelLimits) -> Result<(), Error> {
    if req.messages.is_empty() {
        return Err(Error::invalid("messages", "`messages` must not be empty."));
    }
    if req.messages.len() > limits.max_messages {
        return Err(Error::invalid(
            "messages",
            format!(
                "Too many messages: {} (limit {}).",
                req.messages.len(),
                limits.max_messages
            ),
        ));
    }
    let mut prompt_bytes = 0usize;
    for (i, m) in req.messages.iter().enumerate() {
        match &m.content {
            None if matches!(m.role, Role::Assistant) => {}
            None => {
                return Err(Error::invalid(
                    format!("messages[{i}].content"),
                    format!(
                        "messages[{i}].content is required for role `{}`.",
                        m.role.as_str()
                    ),
                ))
            }
            Some(Content::Parts(parts)) => {
                if parts.is_empty() {
                    return Err(Error::invalid(
                        format!("messages[{i}].content"),
                        format!("messages[{i}].content must not be an empty list."),
                    ));
                }
                for (j, p) in parts.iter().enumerate() {
                    if p.kind == "text" && p.text.is_none() {
                        return Err(Error::invalid(
                            format!("messages[{i}].content[{j}].text"),
                            "A part of type `text` needs a `text` string.",
                        ));
                    }
                }
            }
            Some(Content::Text(_)) => {}
        }
        prompt_bytes += m.text_len();
    }
    if prompt_bytes > limits.max_prompt_bytes {
        return Err(Error::invalid(
            "messages",
            format!(
                "The prompt is {prompt_bytes} bytes; this model accepts at most {}.",
                limits.max_prompt_bytes
            ),
        ));
    }
    for (param, value) in [
        ("max_tokens", req.max_tokens),
        ("max_completion_tokens", req.max_completion_tokens),
    ] {
        if let Some(v) = value {
            if v == 0 || v > limits.max_tokens {
                return Err(Error::invalid(
                    param,
                    format!(
                        "`{param}` must be between 1 and {} for this model; got {v}.",
                        limits.max_tokens
                    ),
                ));
            }
        }
    }
    range("temperature", req.temperature, 0.0, 2.0)?;
    range("top_p", req.top_p, 0.0, 1.0)?;
    range("frequency_penalty", req.frequency_penalty, -2.0, 2.0)?;
    range("presence_penalty", req.presence_penalty, -2.0, 2.0)?;
    if let Some(p) = req.repetition_penalty {
        if !(p.is_finite() && p > 0.0 && p <= 10.0) {
            return Err(Error::invalid(
                "repetition_penalty",
                "`repetition_penalty` must be above 0 and at most 10.",
            ));
        }
    }
    if let Some(n) = req.n {
        if n != 1 {
            return Err(Error::invalid("n", "Only `n` = 1 is supported."));
        }
    }
    let stops = req.stop_sequences();
    if stops.len() > 4 {
        return Err(Error::invalid(
            "stop",
            "At most 4 stop sequences are allowed.",
        ));
    }
    if stops.iter().any(String::is_empty) {
        return Err(Error::invalid("stop", "Stop sequences must not be empty."));
    }
    if req.max_tokens.is_none() && req.max_completion_tokens.is_none() {
        req.max_tokens = Some(limits.default_max_tokens);
    }
    Ok(())
}

fn range(param: &'static str, v: Option<f64>, lo: f64, hi: f64) -> Result<(), Error> {
    match v {
        Some(x) if !(x.is_finite() && (lo..=hi).contains(&x)) => Err(Error::invalid(
            param,
            format!("`{param}` must be between {lo} and {hi}; got {x}."),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ModelLimits = ModelLimits {
        max_tokens: 100,
        default_max_tokens: 50,
        max_messages: 3,
        max_prompt_bytes: 20,
    };

    fn param_of(body: &str) -> Option<String> {
        let r = decode(&Bytes::from(body.to_owned()))
            .and_then(|mut r| check(&mut r, &LIMITS).map(|_| r));
        match r {
            Err(Error::InvalidRequest { param, .. }) => param,
            Err(other) => panic!("unexpected {other:?}"),
            Ok(_) => panic!("accepted: {body}"),
        }
    }

    const OK: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]"#;

    fn with(extra: &str) -> String {
        format!("{OK},{extra}}}")
    }

    #[test]
    fn valid_request_gets_default_max_tokens_and_keeps_extras() {
        let mut r = decode(&Bytes::from(with(r#""user":"u1","logit_bias":{}"#))).unwrap();
        check(&mut r, &LIMITS).unwrap();
        assert_eq!(r.max_tokens, Some(50));
        assert!(r.extra.contains_key("user") && r.extra.contains_key("logit_bias"));
    }

    #[test]
    fn each_limit_names_its_param() {
        assert_eq!(
            param_of(&with(r#""temperature":2.5"#)).as_deref(),
            Some("temperature")
        );
        assert_eq!(param_of(&with(r#""top_p":-0.1"#)).as_deref(), Some("top_p"));
        assert_eq!(
            param_of(&with(r#""max_tokens":101"#)).as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            param_of(&with(r#""max_tokens":0"#)).as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            param_of(r#"{"model":"m","messages":[]}"#).as_deref(),
            Some("messages")
        );
        let many = r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"user","content":"a"},{"role":"user","content":"a"},{"role":"user","content":"a"}]}"#;
        assert_eq!(param_of(many).as_deref(), Some("messages"));
        let big =
            r#"{"model":"m","messages":[{"role":"user","content":"aaaaaaaaaaaaaaaaaaaaaaaaa"}]}"#;
        assert_eq!(param_of(big).as_deref(), Some("messages"));
        let nocontent = r#"{"model":"m","messages":[{"role":"user"}]}"#;
        assert_eq!(param_of(nocontent).as_deref(), Some("messages[0].content"));
    }

    #[test]
    fn wrong_types_and_roles_name_the_path() {
        let bad_role = r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#;
        let p = param_of(bad_role).unwrap();
        assert!(p.starts_with("messages[0]"), "{p}");
        let p = param_of(&with(r#""temperature":"hot""#)).unwrap();
        assert_eq!(p, "temperature");
        match decode(&Bytes::from_static(br#"{"messages":[]}"#)) {
            Err(e @ Error::InvalidRequest { .. }) => {
                assert!(e.to_string().contains("model"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn content_parts_are_accepted_and_counted() {
        let parts = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hello"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
        let mut r = decode(&Bytes::from(parts)).unwrap();
        check(&mut r, &LIMITS).unwrap();
        assert_eq!(r.messages[0].text(), "hello");
    }

    #[test]
    fn malformed_bodies_are_clear_errors() {
        for (body, code) in [
            (&b"{\"model\":"[..], "invalid_json"),
            (&b"   "[..], "invalid_json"),
            (&b"{\"model\":\"\xff\"}"[..], "invalid_encoding"),
            (&b"[1,2]"[..], "invalid_type"),
        ] {
            match decode(&Bytes::copy_from_slice(body)) {
                Err(Error::InvalidRequest { code: Some(c), .. }) => assert_eq!(c, code),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
    }

    #[test]
    fn plain_and_path_tracking_decoders_agree() {
        for body in [
            with(r#""user":"u1","stream":true"#),
            format!("{OK}}}  trailing"),
            with(r#""temperature":"hot""#),
            r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#.to_owned(),
            r#"{"model":"#.to_owned(),
            "[1,2]".to_owned(),
        ] {
            let body = Bytes::from(body);
            match (decode(&body), decode_with_path(&body)) {
                (Ok(a), Ok(b)) => assert_eq!(
                    serde_json::to_value(a).unwrap(),
                    serde_json::to_value(b).unwrap()
                ),
                (Err(a), Err(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
                (a, b) => panic!("{body:?}: {a:?} vs {b:?}"),
            }
        }
    }
}
