//! `type = "json"` and `type = "json_schema"`: the answer is JSON, and conforms to a schema.
//!
//! Structured-output prompts are where a model change breaks callers without a visible error, so
//! these check what a caller's parser would. Models like to wrap JSON in a Markdown fence
//! (```` ```json … ``` ````); by default an answer that is one fenced block is read inside the
//! fence (`strip_fences = false` to refuse it).
//!
//! Schemas are checked by the `jsonschema` crate (drafts 4, 6, 7, 2019-09 and 2020-12; the draft
//! is read from `$schema`, 2020-12 when absent), built without its network and file resolvers:
//! a `$ref` must point inside the schema. A schema comes from the suite (`schema`, a TOML table,
//! or `schema_file`, JSON, relative to the suite file) or from the case (`expect.schema`); when
//! both are given the answer must conform to both.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::Verdict;
use crate::eval::dataset::Case;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonConfig {
    pub name: Option<String>,
    pub strip_fences: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    pub name: Option<String>,
    pub strip_fences: Option<bool>,
    /// A schema inline, as a TOML table.
    pub schema: Option<Value>,
    /// A JSON file holding the schema.
    pub schema_file: Option<String>,
}

#[derive(Debug)]
pub struct ValidJson {
    strip_fences: bool,
}

pub struct Schema {
    strip_fences: bool,
    suite: Option<jsonschema::Validator>,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema")
            .field("strip_fences", &self.strip_fences)
            .field("suite", &self.suite.is_some())
            .finish()
    }
}

// === impl ValidJson ===

impl ValidJson {
    pub fn new(c: JsonConfig) -> ValidJson {
        ValidJson {
            strip_fences: c.strip_fences.unwrap_or(true),
        }
    }

    pub fn score(&self, answer: &str) -> Verdict {
        match parse(answer, self.strip_fences) {
            Ok(_) => Verdict::check(true, String::new),
            Err(e) => Verdict::fail(e),
        }
    }
}

// === impl Schema ===

impl Schema {
    pub fn new(c: SchemaConfig, base: &Path) -> Result<Schema, String> {
        let schema = match (c.schema, c.schema_file) {
            (Some(_), Some(_)) => return Err("give `schema` or `schema_file`, not both".into()),
            (Some(s), None) => Some(s),
            (None, Some(file)) => {
                let path = base.join(&file);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("`schema_file`: cannot read {}: {e}", path.display()))?;
                Some(
                    serde_json::from_str(&text)
                        .map_err(|e| format!("`schema_file`: {}: not JSON: {e}", path.display()))?,
                )
            }
            (None, None) => None,
        };
        let suite = schema
            .map(|s| compile(&s).map_err(|e| format!("`schema`: {e}")))
            .transpose()?;
        Ok(Schema {
            strip_fences: c.strip_fences.unwrap_or(true),
            suite,
        })
    }

    pub fn applies(&self, case: &Case) -> bool {
        self.suite.is_some() || case.expect.schema.is_some()
    }

    pub fn check_case(&self, case: &Case) -> Result<(), String> {
        match &case.expect.schema {
            Some(s) => compile(s)
                .map(drop)
                .map_err(|e| format!("`expect.schema`: {e}")),
            None => Ok(()),
        }
    }

    pub fn score(&self, case: &Case, answer: &str) -> Verdict {
        let value = match parse(answer, self.strip_fences) {
            Ok(v) => v,
            Err(e) => return Verdict::fail(e),
        };
        let own = match case.expect.schema.as_ref().map(compile).transpose() {
            Ok(v) => v,
            Err(e) => return Verdict::fail(format!("`expect.schema`: {e}")),
        };
        for validator in self.suite.iter().chain(own.as_ref()) {
            if let Err(e) = validator.validate(&value) {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() { "/".to_owned() } else { at };
                return Verdict::fail(format!("at {at}: {e}"));
            }
        }
        Verdict::check(true, String::new)
    }
}

fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::validator_for(schema).map_err(|e| format!("not a usable JSON schema: {e}"))
}

/// The answer as JSON, read inside a fence when it is one fenced block and `strip_fences` is on.
fn parse(answer: &str, strip_fences: bool) -> Result<Value, String> {
    let text = answer.trim();
    if text.is_empty() {
        return Err("the answer is empty".into());
    }
    let text = if strip_fences { unfence(text) } else { text };
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

/// The inside of ```` ```lang\n…\n``` ````, or the text itself.
fn unfence(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    let Some(body) = rest.strip_suffix("```") else {
        return text;
    };
    // The info string (`json`) runs to the end of the first line.
    match body.split_once('\n') {
        Some((info, inner)) if !info.contains('`') => inner.trim(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use crate::eval::dataset::Expect;
    use crate::eval::scorers::test_support::*;

    #[test]
    fn valid_json_with_and_without_fences() {
        let s = scorer("type = \"json\"").unwrap();
        let c = case(&[], Expect::default());
        assert!(s.score(&c, &answer(" {\"a\": 1} ")).passed);
        assert!(s.score(&c, &answer("```json\n{\"a\": \"é\"}\n```")).passed);
        assert!(s.score(&c, &answer("```\n[1,2]\n```")).passed);
        assert!(!s.score(&c, &answer("{\"a\": }")).passed);
        assert!(!s.score(&c, &answer("")).passed);
        assert!(!s.score(&c, &answer("Sure! {\"a\": 1}")).passed);
        let strict = scorer("type = \"json\"\nstrip_fences = false").unwrap();
        assert!(!strict.score(&c, &answer("```json\n{}\n```")).passed);
    }

    #[test]
    fn schema_from_the_suite_and_the_case() {
        let s = scorer(
            r#"
type = "json_schema"
[schema]
type = "object"
required = ["name", "age"]
properties = { name = { type = "string" }, age = { type = "integer", minimum = 0 } }
"#,
        )
        .unwrap();
        let c = case(&[], Expect::default());
        assert!(s.applies(&c) && s.check_case(&c).is_ok());
        assert!(s.score(&c, &answer(r#"{"name":"Ada","age":36}"#)).passed);
        let v = s.score(&c, &answer(r#"{"name":"Ada","age":-1}"#));
        assert!(!v.passed && v.detail.unwrap().contains("/age"));
        assert!(!s.score(&c, &answer(r#"{"name":"Ada"}"#)).passed);
        assert!(!s.score(&c, &answer("not json")).passed);

        let c = case(
            &[],
            Expect {
                schema: Some(serde_json::json!({"properties": {"name": {"enum": ["Ada"]}}})),
                ..Default::default()
            },
        );
        assert!(s.score(&c, &answer(r#"{"name":"Ada","age":1}"#)).passed);
        assert!(!s.score(&c, &answer(r#"{"name":"Bob","age":1}"#)).passed);
    }

    #[test]
    fn bad_schemas_are_named() {
        let e = scorer("type = \"json_schema\"\nschema = { type = \"no-such-type\" }").unwrap_err();
        assert!(e.contains("`schema`"), "{e}");
        let e = scorer("type = \"json_schema\"\nschema_file = \"missing.json\"").unwrap_err();
        assert!(e.contains("schema_file"), "{e}");
        let s = scorer("type = \"json_schema\"").unwrap();
        assert!(!s.applies(&case(&[], Expect::default())));
        let bad = case(
            &[],
            Expect {
                schema: Some(serde_json::json!({"type": 3})),
                ..Default::default()
            },
        );
        assert!(s.check_case(&bad).unwrap_err().contains("expect.schema"));
    }
}
