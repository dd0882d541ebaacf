//! One prompt file read, parsed and checked; a directory of them made into a [`PromptSet`].
//!
//! Everything that can be known without a request is checked here, so a broken file is refused
//! at load (and by a reload) instead of answering some later request with a 500: every template
//! compiles, names only declared variables, every role is one the API knows, ids are unique
//! across the directory and safe for a header and a metric label.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::render;
use super::schema::{VarType, Variable};
use super::PromptSet;

/// The longest prompt id: it travels in a header and a metric label.
const MAX_ID_LEN: usize = 64;

/// A prompt file that does not load. The message names the prompt or the key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}: {message}")]
pub struct PromptError {
    pub file: String,
    pub message: String,
}

/// One `[[prompt.messages]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageTemplate {
    pub role: String,
    /// A minijinja template.
    pub content: String,
}

/// One `[[prompt.test]]` case.
#[derive(Debug, Clone)]
pub struct TestCase {
    pub name: String,
    pub variables: Map<String, Value>,
    pub expect: Expect,
}

/// What a test case expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The rendered messages, as [`render::transcript`] writes them.
    Text(String),
    /// A substring of the error rendering gives.
    Error(String),
}

/// A prompt, checked.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub id: String,
    pub description: String,
    pub owner: String,
    /// The model the prompt was written (and tested) for.
    pub model: String,
    /// Request fields set when the request leaves them out (`temperature`, `max_tokens`, …).
    pub defaults: Map<String, Value>,
    pub messages: Vec<MessageTemplate>,
    pub variables: BTreeMap<String, Variable>,
    pub tests: Vec<TestCase>,
    /// Hex of the first 8 bytes of the SHA-256 of the file's bytes, as the policy version is made.
    pub version: String,
    pub file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    prompt: RawPrompt,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrompt {
    id: String,
    description: String,
    owner: String,
    model: String,
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<u32>,
    seed: Option<u64>,
    stop: Option<Vec<String>>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    messages: Vec<RawMessage>,
    #[serde(default)]
    variables: BTreeMap<String, RawVariable>,
    #[serde(default)]
    test: Vec<RawTest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMessage {
    role: String,
    content: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariable {
    #[serde(rename = "type")]
    ty: VarType,
    #[serde(default = "yes")]
    required: bool,
    max_length: Option<usize>,
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    name: String,
    #[serde(default)]
    variables: Map<String, Value>,
    expect: Option<String>,
    expect_error: Option<String>,
}

fn yes() -> bool {
    true
}

const ROLES: [&str; 4] = ["system", "developer", "user", "assistant"];

// === impl Prompt ===

impl Prompt {
    /// Parses and checks one file's text; `path` names it in messages.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Prompt, PromptError> {
        let file = path.display().to_string();
        let err = |message: String| PromptError {
            file: file.clone(),
            message,
        };
        let text = std::str::from_utf8(bytes).map_err(|_| err("not UTF-8".into()))?;
        let de = toml::Deserializer::new(text);
        let raw: RawFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            err(format!("`{key}`: {}", e.inner().message()))
        })?;
        let p = raw.prompt;
        let id = p.id;
        let valid_id = !id.is_empty()
            && id.len() <= MAX_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if !valid_id {
            return Err(err(format!(
                "`prompt.id`: `{id}` must be 1 to {MAX_ID_LEN} of a-z, 0-9, `-`, `_`, `.`"
            )));
        }
        let at = |key: &str| format!("prompt `{id}`: `prompt.{key}`");
        if p.model.is_empty() {
            return Err(err(format!("{}: must not be empty", at("model"))));
        }
        let mut defaults = Map::new();
        for (key, v, lo, hi) in [
            ("temperature", p.temperature, 0.0, 2.0),
            ("top_p", p.top_p, 0.0, 1.0),
            ("presence_penalty", p.presence_penalty, -2.0, 2.0),
            ("frequency_penalty", p.frequency_penalty, -2.0, 2.0),
        ] {
            if let Some(x) = v {
                if !(x.is_finite() && (lo..=hi).contains(&x)) {
                    return Err(err(format!(
                        "{}: {x} is not between {lo} and {hi}",
                        at(key)
                    )));
                }
                defaults.insert(key.into(), x.into());
            }
        }
        if let Some(n) = p.max_tokens {
            if n == 0 {
                return Err(err(format!("{}: must be at least 1", at("max_tokens"))));
            }
            defaults.insert("max_tokens".into(), n.into());
        }
        if let Some(s) = p.seed {
            defaults.insert("seed".into(), s.into());
        }
        if let Some(stop) = p.stop {
            defaults.insert("stop".into(), stop.into());
        }
        let mut variables = BTreeMap::new();
        for (name, v) in p.variables {
            let ident = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ident {
                return Err(err(format!(
                    "{}: `{name}` is not a name a template can use (letters, digits, `_`)",
                    at("variables")
                )));
            }
            if v.max_length.is_some() && v.ty != VarType::String {
                return Err(err(format!(
                    "{}: `max_length` applies to strings only",
                    at(&format!("variables.{name}"))
                )));
            }
            variables.insert(
                name,
                Variable {
                    ty: v.ty,
                    required: v.required,
                    max_length: v.max_length,
                },
            );
        }
        if p.messages.is_empty() {
            return Err(err(format!("{}: at least one is needed", at("messages"))));
        }
        let mut messages = Vec::with_capacity(p.messages.len());
        for (i, m) in p.messages.into_iter().enumerate() {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(err(format!(
                    "{}: `{}` is not one of {}",
                    at(&format!("messages[{i}].role")),
                    m.role,
                    ROLES.join(", ")
                )));
            }
            let key = at(&format!("messages[{i}].content"));
            let names = render::template_names(&m.content)
                .map_err(|e| err(format!("{key}: not a template: {e}")))?;
            if let Some(undeclared) = names.iter().find(|n| !variables.contains_key(*n)) {
                return Err(err(format!(
                    "{key}: uses `{undeclared}`, which is not in `[prompt.variables]`"
                )));
            }
            messages.push(MessageTemplate {
                role: m.role,
                content: m.content,
            });
        }
        let mut tests = Vec::with_capacity(p.test.len());
        for (i, t) in p.test.into_iter().enumerate() {
            let expect = match (t.expect, t.expect_error) {
                (Some(text), None) => Expect::Text(text),
                (None, Some(e)) => Expect::Error(e),
                _ => {
                    return Err(err(format!(
                        "{}: case `{}` needs exactly one of `expect` and `expect_error`",
                        at(&format!("test[{i}]")),
                        t.name
                    )))
                }
            };
            if tests.iter().any(|c: &TestCase| c.name == t.name) {
                return Err(err(format!(
                    "{}: two cases are named `{}`",
                    at("test"),
                    t.name
                )));
            }
            tests.push(TestCase {
                name: t.name,
                variables: t.variables,
                expect,
            });
        }
        Ok(Prompt {
            id,
            description: p.description,
            owner: p.owner,
            model: p.model,
            defaults,
            messages,
            variables,
            tests,
            version: version(bytes),
            file: path.to_path_buf(),
        })
    }

    /// Reads and parses one file.
    pub fn load(path: &Path) -> Result<Prompt, PromptError> {
        let bytes = std::fs::read(path).map_err(|e| PromptError {
            file: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &bytes)
    }

    /// Which prompt this is, for headers and records.
    pub fn tag(&self) -> super::PromptTag {
        super::PromptTag {
            id: self.id.clone(),
            version: self.version.clone(),
        }
    }
}

/// What `sluice prompts check` warns about beyond what loading refuses: declared variables that
/// no message uses, and prompts without test cases.
pub fn lint(p: &Prompt) -> Vec<String> {
    let mut used = std::collections::HashSet::new();
    for m in &p.messages {
        used.extend(render::template_names(&m.content).unwrap_or_default());
    }
    let mut out: Vec<String> = p
        .variables
        .keys()
        .filter(|v| !used.contains(*v))
        .map(|v| {
            format!(
                "{}: prompt `{}`: variable `{v}` is declared but no message uses it",
                p.file.display(),
                p.id
            )
        })
        .collect();
    if p.tests.is_empty() {
        out.push(format!(
            "{}: prompt `{}` has no `[[prompt.test]]` cases",
            p.file.display(),
            p.id
        ));
    }
    out
}

/// The version of a file's bytes: as the policy version is written, 16 hex digits.
pub fn version(bytes: &[u8]) -> String {
    Sha256::digest(bytes)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// === impl PromptSet ===

impl PromptSet {
    /// Reads every `*.toml` in `dir` (not recursing), in file-name order. Ids must be unique.
    pub fn load(dir: &Path) -> Result<PromptSet, PromptError> {
        let shown = dir.display().to_string();
        let entries = std::fs::read_dir(dir).map_err(|e| PromptError {
            file: shown.clone(),
            message: format!("cannot read the directory: {e}"),
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        paths.sort();
        let mut prompts: BTreeMap<String, Arc<Prompt>> = BTreeMap::new();
        for path in paths {
            let p = Prompt::load(&path)?;
            if let Some(first) = prompts.get(&p.id) {
                return Err(PromptError {
                    file: path.display().to_string(),
                    message: format!(
                        "prompt `{}` is defined in {} too",
                        p.id,
                        first.file.display()
                    ),
                });
            }
            prompts.insert(p.id.clone(), Arc::new(p));
        }
        Ok(PromptSet {
            dir: Some(dir.to_path_buf()),
            prompts,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const GOOD: &str = r#"
[prompt]
id = "greet"
description = "Greets a customer"
owner = "support"
model = "m"
temperature = 0.2
max_tokens = 50

[[prompt.messages]]
role = "system"
content = "You help {{ customer }}."

[[prompt.messages]]
role = "user"
content = "Hello{% if tone %}, {{ tone }}{% endif %}"

[prompt.variables.customer]
type = "string"
max_length = 10

[prompt.variables.tone]
type = "string"
required = false

[[prompt.test]]
name = "plain"
variables = { customer = "Ada" }
expect = """
system: You help Ada.
user: Hello
"""

[[prompt.test]]
name = "missing"
expect_error = "needs the variable `customer`"
"#;

    fn parse(text: &str) -> Result<Prompt, PromptError> {
        Prompt::parse(Path::new("p.toml"), text.as_bytes())
    }

    #[test]
    fn a_good_file_parses_with_its_defaults_and_version() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.id, "greet");
        assert_eq!(p.defaults["temperature"], 0.2);
        assert_eq!(p.defaults["max_tokens"], 50);
        assert_eq!(p.tests.len(), 2);
        assert_eq!(p.version.len(), 16);
        assert_eq!(p.version, version(GOOD.as_bytes()));
        // One byte more is another version.
        assert_ne!(parse(&format!("{GOOD}\n")).unwrap().version, p.version);
    }

    #[test]
    fn schema_errors_name_the_key() {
        let cases = [
            (
                GOOD.replace(
                    "type = \"string\"\nmax_length",
                    "type = \"text\"\nmax_length",
                ),
                "prompt.variables.customer.type",
            ),
            (
                GOOD.replace("owner = \"support\"\n", ""),
                "missing field `owner`",
            ),
            (
                GOOD.replace("model = \"m\"", "model = \"m\"\ncolour = 1"),
                "unknown field `colour`",
            ),
            (
                GOOD.replace("{{ customer }}", "{{ cutsomer }}"),
                "uses `cutsomer`, which is not in",
            ),
            (
                GOOD.replace("role = \"system\"", "role = \"boss\""),
                "messages[0].role",
            ),
            (
                GOOD.replace("{{ customer }}", "{{ customer "),
                "not a template",
            ),
            (
                GOOD.replace("id = \"greet\"", "id = \"Greet Me\""),
                "`prompt.id`",
            ),
            (
                GOOD.replace("temperature = 0.2", "temperature = 3.0"),
                "`prompt.temperature`",
            ),
            (
                GOOD.replace(
                    "expect_error = \"needs",
                    "expect = \"x\"\nexpect_error = \"needs",
                ),
                "exactly one of",
            ),
            (
                GOOD.replace(
                    "type = \"string\"\nrequired",
                    "type = \"integer\"\nmax_length = 3\nrequired",
                ),
                "applies to strings only",
            ),
        ];
        for (text, needle) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.starts_with("p.toml: "), "{e}");
            assert!(e.contains(needle), "{needle:?} not in {e}");
        }
    }

    #[test]
    fn lint_names_unused_variables_and_untested_prompts() {
        let text = GOOD.replace("{% if tone %}, {{ tone }}{% endif %}", "");
        let text = &text[..text.find("[[prompt.test]]").unwrap()];
        let w = lint(&parse(text).unwrap());
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("variable `tone` is declared but no message uses it"));
        assert!(w[1].contains("no `[[prompt.test]]` cases"));
        assert!(lint(&parse(GOOD).unwrap()).is_empty());
    }

    #[test]
    fn a_duplicate_id_names_both_files() {
        let dir = std::env::temp_dir().join(format!("sluice-prompts-dup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.toml"), GOOD).unwrap();
        std::fs::write(dir.join("b.toml"), GOOD).unwrap();
        let e = PromptSet::load(&dir).unwrap_err().to_string();
        assert!(e.contains("b.toml") && e.contains("a.toml"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_shipped_prompts_load_and_pass_their_tests() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts");
        let set = PromptSet::load(&dir).unwrap();
        assert!(set.prompts.len() >= 2);
        let failures = render::run_tests(&set);
        assert!(failures.is_empty(), "{failures:?}");
    }
}
