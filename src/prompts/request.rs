//! A chat request body with a `prompt` object, turned into the body the client would have sent.
//!
//! The expansion works on the body, before [`crate::api::validate::decode`]: the rendered
//! messages become the first entries of `messages` (the client's own, if any, follow them), the
//! prompt's defaults fill the fields the request leaves out, and `prompt` itself is removed so no
//! upstream sees it. The new body is then decoded, checked against the model's limits and passed
//! through the input guardrails exactly as any other body, so none of those checks has a second
//! path to get wrong. A body without `prompt` is not touched, nor parsed twice.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::render::{self, RenderError};
use super::{PromptSet, PromptTag};
use crate::error::Error;

/// A body with its prompt rendered in.
#[derive(Debug)]
pub struct Expanded {
    pub body: Bytes,
    pub tag: PromptTag,
}

/// `"prompt": {...}` as a client sends it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptRef {
    id: String,
    version: Option<String>,
    #[serde(default)]
    variables: Map<String, Value>,
}

fn invalid(param: &str, code: &'static str, message: String) -> Error {
    Error::InvalidRequest {
        message,
        param: Some(param.to_owned()),
        code: Some(code),
    }
}

/// Renders the body's `prompt` from `set`. `Ok(None)`: the body names no prompt (or is not a JSON
/// object, which the decoder reports) and is used as it is.
pub fn expand(set: &PromptSet, body: &[u8]) -> Result<Option<Expanded>, Error> {
    // Most bodies name no prompt: a byte search spares them a second parse.
    if memchr::memmem::find(body, b"\"prompt\"").is_none() {
        return Ok(None);
    }
    let Ok(mut obj) = serde_json::from_slice::<Map<String, Value>>(body) else {
        return Ok(None);
    };
    let Some(raw) = obj.remove("prompt") else {
        return Ok(None);
    };
    if set.dir.is_none() {
        return Err(invalid(
            "prompt",
            "prompts_not_configured",
            "This gateway serves no prompts (`[prompts]` is not configured).".into(),
        ));
    }
    let pref: PromptRef = serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        let param = if path.is_empty() || path == "." {
            "prompt".to_owned()
        } else {
            format!("prompt.{path}")
        };
        invalid(
            &param,
            "invalid_prompt",
            format!(
                "`prompt` must be {{\"id\", \"version\"?, \"variables\"?}}: {}.",
                e.inner()
            ),
        )
    })?;
    let prompt = set.prompts.get(&pref.id).ok_or_else(|| {
        invalid(
            "prompt.id",
            "prompt_not_found",
            format!("There is no prompt `{}`.", pref.id),
        )
    })?;
    if let Some(v) = pref.version.as_deref().filter(|v| *v != prompt.version) {
        return Err(invalid(
            "prompt.version",
            "prompt_version_not_served",
            format!(
                "Prompt `{}` is served at version `{}`, not `{v}`.",
                prompt.id, prompt.version
            ),
        ));
    }
    match obj.get("model") {
        None => {
            obj.insert("model".into(), prompt.model.clone().into());
        }
        Some(Value::String(m)) if *m == prompt.model => {}
        Some(other) => {
            let named = other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_owned);
            return Err(invalid(
                "model",
                "prompt_model_mismatch",
                format!(
                    "Prompt `{}` is written for the model `{}`, not `{named}`; leave `model` out to use it.",
                    prompt.id, prompt.model
                ),
            ));
        }
    }
    let rendered = render::render(prompt, &pref.variables).map_err(|e| match e {
        RenderError::Variables(v) => invalid(&v.param, "invalid_prompt_variables", v.message),
        // A template that passed its tests and fails on a client's values (a strict undefined
        // in a branch no test took) is still the client's request that cannot be served.
        other => invalid("prompt", "prompt_render_failed", other.to_string()),
    })?;
    let mut messages: Vec<Value> = rendered
        .into_iter()
        .map(|m| {
            let mut o = Map::new();
            o.insert("role".into(), m.role.into());
            o.insert("content".into(), m.content.into());
            Value::Object(o)
        })
        .collect();
    match obj.remove("messages") {
        None | Some(Value::Null) => {}
        Some(Value::Array(client)) => messages.extend(client),
        Some(_) => {
            return Err(invalid(
                "messages",
                "invalid_type",
                "`messages` must be a list of messages.".into(),
            ))
        }
    }
    obj.insert("messages".into(), Value::Array(messages));
    for (k, v) in &prompt.defaults {
        // `max_completion_tokens` is the newer name of `max_tokens`: either given wins.
        let given =
            obj.contains_key(k) || (k == "max_tokens" && obj.contains_key("max_completion_tokens"));
        if !given {
            obj.insert(k.clone(), v.clone());
        }
    }
    let body = serde_json::to_vec(&obj)
        .map_err(|e| Error::Internal(format!("re-encoding a prompt request: {e}")))?;
    Ok(Some(Expanded {
        body: Bytes::from(body),
        tag: prompt.tag(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;
    use std::sync::Arc;

    fn set() -> PromptSet {
        let p = super::super::Prompt::parse(
            Path::new("p.toml"),
            super::super::file::tests::GOOD.as_bytes(),
        )
        .unwrap();
        let mut set = PromptSet {
            dir: Some(".".into()),
            ..PromptSet::default()
        };
        set.prompts.insert(p.id.clone(), Arc::new(p));
        set
    }

    fn param(body: Value) -> (String, String) {
        match expand(&set(), body.to_string().as_bytes()) {
            Err(Error::InvalidRequest { param, message, .. }) => (param.unwrap(), message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn renders_first_then_the_clients_messages_with_defaults_filled() {
        let body = json!({"prompt": {"id": "greet", "variables": {"customer": "Ada"}},
            "messages": [{"role": "user", "content": "and you?"}], "temperature": 1.0});
        let e = expand(&set(), body.to_string().as_bytes())
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(v["model"], "m");
        assert_eq!(v["messages"][0]["content"], "You help Ada.");
        assert_eq!(v["messages"][1]["content"], "Hello");
        assert_eq!(v["messages"][2]["content"], "and you?");
        assert_eq!(v["temperature"], 1.0);
        assert_eq!(v["max_tokens"], 50);
        assert!(v.get("prompt").is_none());
        assert_eq!(e.tag.id, "greet");
    }

    #[test]
    fn plain_bodies_are_left_alone() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "prompt"}]});
        assert!(expand(&set(), body.to_string().as_bytes())
            .unwrap()
            .is_none());
    }

    #[test]
    fn each_refusal_names_its_param() {
        let v = |extra: Value| {
            let mut b = json!({"prompt": {"id": "greet", "variables": {"customer": "Ada"}}});
            for (k, x) in extra.as_object().unwrap() {
                if k == "prompt" {
                    b["prompt"]
                        .as_object_mut()
                        .unwrap()
                        .extend(x.as_object().unwrap().clone());
                } else {
                    b[k] = x.clone();
                }
            }
            param(b)
        };
        assert_eq!(v(json!({"prompt": {"id": "nope"}})).0, "prompt.id");
        assert_eq!(
            v(json!({"prompt": {"version": "0000"}})).0,
            "prompt.version"
        );
        assert_eq!(v(json!({"model": "other"})).0, "model");
        assert_eq!(
            v(json!({"prompt": {"variables": {}}})).0,
            "prompt.variables.customer"
        );
        assert_eq!(
            v(json!({"prompt": {"variables": {"customer": 1}}})).0,
            "prompt.variables.customer"
        );
        assert_eq!(
            v(json!({"prompt": {"variables": {"customer": "x".repeat(11)}}})).0,
            "prompt.variables.customer"
        );
        assert_eq!(
            v(json!({"prompt": {"variables": {"customer": "A", "who": "B"}}})).0,
            "prompt.variables.who"
        );
        assert_eq!(v(json!({"prompt": {"colour": 1}})).0, "prompt.colour");
        let (p, m) = param(json!({"prompt": "greet"}));
        assert_eq!(p, "prompt");
        assert!(m.contains("`prompt` must be"), "{m}");
        let none = PromptSet::default();
        assert!(expand(&none, br#"{"prompt":{"id":"greet"}}"#).is_err());
    }
}
