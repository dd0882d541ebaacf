//! Golden sets: the cases a suite runs, one JSON object per line.
//!
//! Two shapes are read, line by line, so a set can mix them:
//! - Sluice's own: `messages` (a chat) or `variables` (filled into the suite's `prompt`), a
//!   `reference` answer (a string or a list of acceptable strings), per-case `expect`ations for
//!   the scorers that need more than a reference, `tags` and an `id`. Unknown keys are errors
//!   naming the line and the key, as in a config file: a misspelt `refrence` would otherwise make
//!   a case silently unscorable.
//! - OpenAI evals' (`input`: messages or a prompt string, `ideal`: a string or a list), so golden
//!   sets written for that tool run unchanged. Its eval classes add keys of their own, which are
//!   ignored here.
//!
//! Every case is resolved to the messages it sends when the set is loaded, so a template that
//! names a missing variable fails the load, not the run.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::api::types::{Content, Message, Role};

/// A loaded golden set.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub cases: Vec<Case>,
    /// Hex SHA-256 of the file's bytes, so a record names exactly what it ran.
    pub sha256: String,
}

/// One case, resolved.
#[derive(Debug, Clone)]
pub struct Case {
    /// The line's `id`, or `line-N`.
    pub id: String,
    /// 1-based line in the file, for messages.
    pub line: usize,
    /// What is sent: the case's messages, or the rendered prompt, after the suite's system prompt.
    pub messages: Vec<Message>,
    /// Acceptable answers; empty when the case has none.
    pub references: Vec<String>,
    pub expect: Expect,
    pub tags: Vec<String>,
    /// For a suite's `prompt_id`: the variables sent in the request's `prompt`.
    pub variables: Option<Map<String, Value>>,
}

/// Per-case expectations of the scorers that need more than a reference.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// For `contains`: one string the answer must contain.
    pub contains: Option<String>,
    pub all_of: Option<Vec<String>>,
    pub any_of: Option<Vec<String>>,
    pub none_of: Option<Vec<String>>,
    /// For `regex`: a pattern the answer must match.
    pub regex: Option<String>,
    /// For `numeric`: the expected number.
    pub number: Option<f64>,
    /// For `json_schema`: the schema the answer must conform to.
    pub schema: Option<Value>,
    /// For `guardrail`: what the gateway's policy must do with this case.
    pub guardrail: Option<GuardrailExpect>,
    /// For `guardrail = "redact"`: text that must not reach the answer.
    #[serde(default)]
    pub sensitive: Vec<String>,
}

/// What a guardrail policy must do with a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardrailExpect {
    /// Refused (400 `content_filter`) or cut (`finish_reason: "content_filter"`).
    Block,
    /// Answered with the sensitive text replaced.
    Redact,
    /// Answered, not blocked.
    Pass,
}

/// How a case's `variables` become its prompt; `None` when the suite has no `prompt`.
pub struct Template<'a> {
    pub prompt: Option<&'a str>,
    pub system: Option<&'a str>,
    /// The suite names a gateway prompt: `variables` are sent as they are, for the gateway.
    pub prompt_id: bool,
}

/// A case in Sluice's own shape.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    id: Option<String>,
    messages: Option<Vec<Message>>,
    variables: Option<Map<String, Value>>,
    reference: Option<OneOrMany>,
    #[serde(default)]
    expect: Expect,
    #[serde(default)]
    tags: Vec<String>,
}

/// A case in OpenAI evals' shape.
#[derive(Deserialize)]
struct EvalsCase {
    id: Option<String>,
    input: EvalsInput,
    ideal: Option<OneOrMany>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EvalsInput {
    Prompt(String),
    Messages(Vec<Message>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

// === impl Dataset ===

impl Dataset {
    /// Reads a JSONL file. Errors name the line (`FILE:LINE: …`) and, where there is one, the key.
    pub fn load(path: &Path, template: &Template<'_>) -> Result<Dataset, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| format!("not UTF-8: {e}"))?;
        let mut cases = Vec::new();
        let mut ids = BTreeSet::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let case =
                parse_line(line, i + 1, template).map_err(|e| format!("line {}: {e}", i + 1))?;
            if !ids.insert(case.id.clone()) {
                return Err(format!("line {}: `id`: `{}` is used twice", i + 1, case.id));
            }
            cases.push(case);
        }
        if cases.is_empty() {
            return Err("no cases".into());
        }
        Ok(Dataset {
            cases,
            sha256: hex(&Sha256::digest(&bytes)),
        })
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn parse_line(line: &str, number: usize, template: &Template<'_>) -> Result<Case, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    if value.get("input").is_some() {
        return parse_evals(value, number, template);
    }
    let raw: RawCase = serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        if key == "." || key.is_empty() {
            e.inner().to_string()
        } else {
            format!("`{key}`: {}", e.inner())
        }
    })?;
    if template.prompt_id {
        let Some(vars) = raw.variables else {
            return Err("the suite names a `prompt_id`: a case needs `variables`".into());
        };
        return Ok(Case {
            id: raw.id.unwrap_or_else(|| format!("line-{number}")),
            line: number,
            messages: raw.messages.unwrap_or_default(),
            references: raw.reference.map(OneOrMany::into_vec).unwrap_or_default(),
            expect: raw.expect,
            tags: raw.tags,
            variables: Some(vars),
        });
    }
    let user = match (raw.messages, raw.variables) {
        (Some(m), None) => m,
        (None, Some(vars)) => vec![user_message(render(template, &vars)?)],
        (Some(_), Some(_)) => return Err("give `messages` or `variables`, not both".into()),
        (None, None) => return Err("a case needs `messages` or `variables`".into()),
    };
    if let Some(pattern) = &raw.expect.regex {
        regex::Regex::new(pattern).map_err(|e| format!("`expect.regex`: {e}"))?;
    }
    Ok(Case {
        id: raw.id.unwrap_or_else(|| format!("line-{number}")),
        line: number,
        messages: with_system(template, user)?,
        references: raw.reference.map(OneOrMany::into_vec).unwrap_or_default(),
        expect: raw.expect,
        tags: raw.tags,
        variables: None,
    })
}

fn parse_evals(value: Value, number: usize, template: &Template<'_>) -> Result<Case, String> {
    let raw: EvalsCase = serde_path_to_error::deserialize(value)
        .map_err(|e| format!("`{}`: {}", e.path(), e.inner()))?;
    let messages = match raw.input {
        EvalsInput::Prompt(p) => vec![user_message(p)],
        EvalsInput::Messages(m) => m,
    };
    Ok(Case {
        id: raw.id.unwrap_or_else(|| format!("line-{number}")),
        line: number,
        messages: with_system(template, messages)?,
        references: raw.ideal.map(OneOrMany::into_vec).unwrap_or_default(),
        expect: Expect::default(),
        tags: Vec::new(),
        variables: None,
    })
}

/// The suite's system prompt goes first unless the case brings its own.
fn with_system(
    template: &Template<'_>,
    mut messages: Vec<Message>,
) -> Result<Vec<Message>, String> {
    if messages.is_empty() {
        return Err("`messages`: a case needs at least one message".into());
    }
    let has_system = messages.first().is_some_and(|m| m.role == Role::System);
    if let (Some(system), false) = (template.system, has_system) {
        messages.insert(
            0,
            Message {
                role: Role::System,
                content: Some(Content::Text(system.to_owned())),
                extra: Map::new(),
            },
        );
    }
    Ok(messages)
}

fn user_message(text: String) -> Message {
    Message {
        role: Role::User,
        content: Some(Content::Text(text)),
        extra: Map::new(),
    }
}

/// Fills `variables` into the suite's prompt; a variable the prompt names and the case lacks is
/// an error.
fn render(template: &Template<'_>, vars: &Map<String, Value>) -> Result<String, String> {
    let prompt = template
        .prompt
        .ok_or("`variables` needs a `prompt` in the suite to fill them into")?;
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.render_str(prompt, vars)
        .map_err(|e| format!("`variables`: the suite's `prompt` does not render: {e}"))
}

// === impl OneOrMany ===

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_TEMPLATE: Template<'static> = Template {
        prompt: None,
        system: None,
        prompt_id: false,
    };

    fn load(text: &str, template: &Template<'_>) -> Result<Dataset, String> {
        let dir = std::env::temp_dir().join(format!("sluice-dataset-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("set.jsonl");
        std::fs::write(&path, text).unwrap();
        let d = Dataset::load(&path, template);
        std::fs::remove_dir_all(&dir).unwrap();
        d
    }

    #[test]
    fn native_and_evals_lines_mix() {
        let text = r#"{"id":"fr","messages":[{"role":"user","content":"Capital of France?"}],"reference":"Paris","tags":["geo"]}

{"input":[{"role":"system","content":"Be brief."},{"role":"user","content":"2+2?"}],"ideal":["4","four"],"metadata":{"x":1}}
{"input":"Say hi","ideal":"hi"}
"#;
        let d = load(text, &NO_TEMPLATE).unwrap();
        assert_eq!(d.cases.len(), 3);
        assert_eq!(d.cases[0].id, "fr");
        assert_eq!(d.cases[0].references, ["Paris"]);
        assert_eq!(d.cases[0].tags, ["geo"]);
        assert_eq!(d.cases[1].id, "line-3");
        assert_eq!(d.cases[1].references, ["4", "four"]);
        assert_eq!(d.cases[1].messages[0].role, Role::System);
        assert_eq!(d.cases[2].messages[0].text(), "Say hi");
        assert_eq!(d.sha256.len(), 64);
    }

    #[test]
    fn variables_fill_the_prompt_after_the_system_prompt() {
        let t = Template {
            prompt: Some("Capital of {{ country }}?"),
            system: Some("Answer in one word."),
            prompt_id: false,
        };
        let d = load(r#"{"variables":{"country":"Peru"},"reference":"Lima"}"#, &t).unwrap();
        let m = &d.cases[0].messages;
        assert_eq!(
            (m[0].role, m[0].text().as_str()),
            (Role::System, "Answer in one word.")
        );
        assert_eq!(m[1].text(), "Capital of Peru?");

        let e = load(r#"{"variables":{"land":"Peru"}}"#, &t).unwrap_err();
        assert!(e.contains("line 1") && e.contains("variables"), "{e}");
        let e = load(r#"{"variables":{"country":"Peru"}}"#, &NO_TEMPLATE).unwrap_err();
        assert!(e.contains("prompt"), "{e}");
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let ok = r#"{"messages":[{"role":"user","content":"x"}]}"#;
        let e = load(&format!("{ok}\n{{\"messages\":[{{\"role\":\"user\",\"content\":\"x\"}}],\"refrence\":\"y\"}}"), &NO_TEMPLATE).unwrap_err();
        assert!(e.contains("line 2") && e.contains("refrence"), "{e}");
        let e = load(
            r#"{"messages":[{"role":"user","content":"x"}],"expect":{"contans":"y"}}"#,
            &NO_TEMPLATE,
        )
        .unwrap_err();
        assert!(e.contains("expect") && e.contains("contans"), "{e}");
        let e = load(
            r#"{"messages":[{"role":"user","content":"x"}],"expect":{"regex":"("}}"#,
            &NO_TEMPLATE,
        )
        .unwrap_err();
        assert!(e.contains("expect.regex"), "{e}");
        let e = load(r#"{"messages":[]}"#, &NO_TEMPLATE).unwrap_err();
        assert!(e.contains("messages"), "{e}");
        let e = load("{\"id\":\"a\",\"input\":\"x\"}\nnot json", &NO_TEMPLATE).unwrap_err();
        assert!(e.contains("line 2") && e.contains("not JSON"), "{e}");
        let e = load(
            &format!("{{\"id\":\"a\",{}\n{{\"id\":\"a\",{}", &ok[1..], &ok[1..]),
            &NO_TEMPLATE,
        )
        .unwrap_err();
        assert!(e.contains("used twice"), "{e}");
        assert_eq!(load("\n\n", &NO_TEMPLATE).unwrap_err(), "no cases");
    }
}
