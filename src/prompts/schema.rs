//! The variables a prompt takes, and the check of what a client sends against them.
//!
//! A template renders whatever it is given, so the check happens before it: an unknown name is a
//! typo the client should hear about, not a value silently left out of the text, and a bound on a
//! string's length keeps one variable from carrying a whole document into a prompt that was
//! written for a name.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

/// A variable's type, as written in `type = "…"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VarType {
    String,
    Integer,
    Number,
    Boolean,
}

/// `[prompt.variables.NAME]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub ty: VarType,
    /// Absent optional variables are `""` (strings) or `none`.
    pub required: bool,
    /// Characters (not bytes), strings only.
    pub max_length: Option<usize>,
}

/// A variable a client got wrong: `param` names it as `prompt.variables.NAME`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct VarError {
    pub param: String,
    pub message: String,
}

// === impl VarType ===

impl VarType {
    pub fn as_str(self) -> &'static str {
        match self {
            VarType::String => "string",
            VarType::Integer => "integer",
            VarType::Number => "number",
            VarType::Boolean => "boolean",
        }
    }

    fn admits(self, v: &Value) -> bool {
        match self {
            VarType::String => v.is_string(),
            VarType::Integer => v.is_i64() || v.is_u64(),
            VarType::Number => v.is_number(),
            VarType::Boolean => v.is_boolean(),
        }
    }
}

/// A `--var NAME=VALUE` of `sluice prompts render`, read as the variable's type (a string for
/// a name the prompt does not declare, which the check then names).
pub fn cli_value(var: Option<&Variable>, text: &str) -> Result<Value, String> {
    let Some(var) = var.filter(|v| v.ty != VarType::String) else {
        return Ok(Value::String(text.to_owned()));
    };
    let parsed: Option<Value> = match var.ty {
        VarType::Integer => text.parse::<i64>().ok().map(Value::from),
        VarType::Number => text
            .parse::<f64>()
            .ok()
            .and_then(|x| serde_json::Number::from_f64(x).map(Value::Number)),
        VarType::Boolean => text.parse::<bool>().ok().map(Value::from),
        VarType::String => None,
    };
    parsed.ok_or_else(|| format!("`{text}` is not a {}", var.ty.as_str()))
}

/// The JSON type of a value, for messages.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks `given` against `schema` and returns the template context: every declared variable,
/// absent optional ones as `null`. The first problem found is returned; unknown names are
/// reported before missing ones, so a misspelt name is named as such.
pub fn check(
    prompt: &str,
    schema: &BTreeMap<String, Variable>,
    given: &Map<String, Value>,
) -> Result<Map<String, Value>, VarError> {
    let param = |name: &str| format!("prompt.variables.{name}");
    if let Some(name) = given.keys().find(|k| !schema.contains_key(*k)) {
        let known: Vec<&str> = schema.keys().map(String::as_str).collect();
        return Err(VarError {
            param: param(name),
            message: format!(
                "Prompt `{prompt}` has no variable `{name}`; it takes: {}.",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        });
    }
    let mut out = Map::new();
    for (name, var) in schema {
        let value = match given.get(name) {
            None | Some(Value::Null) if var.required => {
                return Err(VarError {
                    param: param(name),
                    message: format!(
                        "Prompt `{prompt}` needs the variable `{name}` ({}).",
                        var.ty.as_str()
                    ),
                })
            }
            // An absent string is empty (falsy in `{% if %}`, filled by `default(…, true)`), so it
            // never renders as `none`; other absent types are `none`.
            None | Some(Value::Null) if var.ty == VarType::String => Value::String(String::new()),
            None | Some(Value::Null) => Value::Null,
            Some(v) if !var.ty.admits(v) => {
                return Err(VarError {
                    param: param(name),
                    message: format!(
                        "Variable `{name}` of prompt `{prompt}` must be of type {}; got {}.",
                        var.ty.as_str(),
                        json_type(v)
                    ),
                })
            }
            Some(v) => v.clone(),
        };
        if let (Some(max), Value::String(s)) = (var.max_length, &value) {
            let len = s.chars().count();
            if len > max {
                return Err(VarError {
                    param: param(name),
                    message: format!(
                        "Variable `{name}` of prompt `{prompt}` is {len} characters long; at most {max} are allowed."
                    ),
                });
            }
        }
        out.insert(name.clone(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> BTreeMap<String, Variable> {
        let mut s = BTreeMap::new();
        s.insert(
            "name".into(),
            Variable {
                ty: VarType::String,
                required: true,
                max_length: Some(5),
            },
        );
        s.insert(
            "n".into(),
            Variable {
                ty: VarType::Integer,
                required: false,
                max_length: None,
            },
        );
        s
    }

    fn err(given: Value) -> VarError {
        check("p", &schema(), given.as_object().unwrap()).unwrap_err()
    }

    #[test]
    fn each_problem_names_the_variable() {
        let e = err(json!({}));
        assert_eq!(e.param, "prompt.variables.name");
        assert!(e.message.contains("needs the variable `name`"), "{e}");
        let e = err(json!({"name": 3}));
        assert!(
            e.message.contains("must be of type string; got integer"),
            "{e}"
        );
        let e = err(json!({"name": "abcdef"}));
        assert!(e.message.contains("6 characters long; at most 5"), "{e}");
        let e = err(json!({"name": "a", "nmae": "b"}));
        assert_eq!(e.param, "prompt.variables.nmae");
        assert!(e.message.contains("no variable `nmae`"), "{e}");
        let e = err(json!({"name": "a", "n": 1.5}));
        assert_eq!(e.param, "prompt.variables.n");
    }

    #[test]
    fn length_counts_characters_and_optional_variables_are_null() {
        let ok = check(
            "p",
            &schema(),
            json!({"name": "ééééé"}).as_object().unwrap(),
        )
        .unwrap();
        assert_eq!(ok["n"], Value::Null);
        assert_eq!(ok["name"], "ééééé");
    }
}
