//! Policy files as written.
//!
//! A policy is a directory of `*.toml` files, each holding `[[rule]]` tables. These structs mirror
//! the TOML one to one and refuse unknown keys, so a typo (`acton = "block"`) is an error that names
//! the file and the key rather than a rule that silently does nothing. Whether the values make sense
//! together (a `pattern` on a `pii` rule, an unbounded output pattern) is decided later, in
//! [`super::compile`]. The policy version is a hash of every file read, so two gateways serving the
//! same files report the same version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A policy that could not be read or compiled. The message names the file and, where there is
/// one, the rule and the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct PolicyError {
    /// The file (or directory) the error is in.
    pub file: String,
    /// What is wrong.
    pub message: String,
}

impl PolicyError {
    pub(crate) fn new(file: impl Into<String>, message: impl Into<String>) -> Self {
        PolicyError {
            file: file.into(),
            message: message.into(),
        }
    }
}

/// One policy file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    #[serde(default)]
    pub rule: Vec<RawRule>,
}

/// One `[[rule]]` table. Kind-specific keys are optional here; the compiler checks that each is
/// allowed for the rule's kind, so the error can say "`keywords` is not a key of kind `regex`".
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub id: String,
    #[serde(default)]
    pub description: String,
    pub kind: String,
    pub action: String,
    #[serde(default)]
    pub direction: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub scope: Option<RawScope>,
    /// `redact` style: `"label"` (default) or `"mask"`.
    #[serde(default)]
    pub redact: Option<String>,
    /// The replacement for `redact = "label"`; defaults to the entity's label (`[EMAIL]`).
    #[serde(default)]
    pub label: Option<String>,
    /// The character used by `redact = "mask"`.
    #[serde(default)]
    pub mask_char: Option<char>,

    // kind = "regex"
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub patterns: Option<Vec<String>>,
    /// Declared longest match in bytes, for output patterns whose bound cannot be computed.
    #[serde(default)]
    pub max_len: Option<usize>,

    // kind = "keywords"
    #[serde(default)]
    pub keywords: Option<Vec<String>>,
    /// A file of keywords, one a line, relative to the policy file; `#` starts a comment.
    #[serde(default)]
    pub keywords_file: Option<String>,
    #[serde(default)]
    pub whole_word: Option<bool>,
    #[serde(default)]
    pub case_sensitive: Option<bool>,

    // kind = "pii"
    #[serde(default)]
    pub entities: Option<Vec<String>>,
    /// Confidence a candidate needs, 0..=1, after context words.
    #[serde(default)]
    pub min_score: Option<f32>,
    /// Extra words that raise confidence when seen shortly before a candidate.
    #[serde(default)]
    pub context_words: Option<Vec<String>>,

    // kind = "secrets"
    #[serde(default)]
    pub secrets: Option<Vec<String>>,
    /// Shannon entropy (bits per character) a value assigned to a key-like name needs.
    #[serde(default)]
    pub min_entropy: Option<f32>,

    // kind = "injection"
    #[serde(default)]
    pub threshold: Option<f32>,
    /// Extra phrases, each adding `phrase_weight` to the score.
    #[serde(default)]
    pub phrases: Option<Vec<String>>,
    #[serde(default)]
    pub phrase_weight: Option<f32>,

    // kind = "limits"
    #[serde(default)]
    pub max_prompt_chars: Option<usize>,
    #[serde(default)]
    pub max_prompt_tokens: Option<usize>,
    #[serde(default)]
    pub max_messages: Option<usize>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,

    #[serde(default)]
    pub test: Vec<RawTest>,
}

/// `[rule.scope]`: the rule applies only to these models and API key names (empty: all).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScope {
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub keys: Vec<String>,
}

/// `[[rule.test]]`: a text and what the rule must do with it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTest {
    pub text: String,
    /// `block`, `redact`, `flag` or `pass`.
    pub expect: String,
    /// The text after redaction, where it matters.
    #[serde(default)]
    pub output: Option<String>,
    /// Which direction to test; defaults to every direction the rule applies to.
    #[serde(default)]
    pub direction: Option<String>,
    /// For `limits` rules: the number of messages the text is split into (on blank lines).
    #[serde(default)]
    pub max_tokens: Option<u32>,
}

/// The files of one policy directory, read and parsed.
#[derive(Debug)]
pub struct Sources {
    /// The directory.
    pub dir: PathBuf,
    /// Each file's path and its parsed rules, in file-name order.
    pub files: Vec<(PathBuf, RawFile)>,
    /// Keyword files named by rules, by path as written relative to the directory.
    pub keyword_files: BTreeMap<String, Vec<String>>,
    /// Hex SHA-256 over every file's name and bytes: the policy version.
    pub version: String,
}

// === impl Sources ===

impl Sources {
    /// Reads every `*.toml` in `dir` (not recursing) and the keyword files its rules name.
    pub fn read_dir(dir: &Path) -> Result<Sources, PolicyError> {
        let shown = dir.display().to_string();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| PolicyError::new(&shown, format!("cannot read the directory: {e}")))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(PolicyError::new(&shown, "no *.toml policy files"));
        }
        let mut hasher = Sha256::new();
        let mut files = Vec::with_capacity(paths.len());
        let mut keyword_files = BTreeMap::new();
        for path in paths {
            let text = read(&path)?;
            hash_file(&mut hasher, &path, &text);
            let raw = parse_file(&path, &text)?;
            for rule in &raw.rule {
                if let Some(rel) = &rule.keywords_file {
                    if keyword_files.contains_key(rel) {
                        continue;
                    }
                    let kpath = dir.join(rel);
                    let ktext = read(&kpath)?;
                    hash_file(&mut hasher, &kpath, &ktext);
                    keyword_files.insert(rel.clone(), parse_keyword_list(&ktext));
                }
            }
            files.push((path, raw));
        }
        let digest = hasher.finalize();
        let version = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Sources {
            dir: dir.to_path_buf(),
            files,
            keyword_files,
            version,
        })
    }

    /// A policy from one TOML text, for tests and tools. Keyword files are not available.
    pub fn from_str(name: &str, text: &str) -> Result<Sources, PolicyError> {
        let path = PathBuf::from(name);
        let raw = parse_file(&path, text)?;
        let mut hasher = Sha256::new();
        hash_file(&mut hasher, &path, text);
        let digest = hasher.finalize();
        Ok(Sources {
            dir: PathBuf::from("."),
            files: vec![(path, raw)],
            keyword_files: BTreeMap::new(),
            version: digest[..8].iter().map(|b| format!("{b:02x}")).collect(),
        })
    }
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path)
        .map_err(|e| PolicyError::new(path.display().to_string(), format!("cannot read: {e}")))
}

fn hash_file(hasher: &mut Sha256, path: &Path, text: &str) {
    // The name is hashed too, so renaming a file changes the version.
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    hasher.update(name.unwrap_or_default().as_bytes());
    hasher.update([0]);
    hasher.update((text.len() as u64).to_le_bytes());
    hasher.update(text.as_bytes());
}

/// Parses one policy file; the error names the key path (`rule[3].action`).
pub fn parse_file(path: &Path, text: &str) -> Result<RawFile, PolicyError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.message().trim_end().to_string();
        let at = if key.is_empty() || key == "." {
            String::new()
        } else {
            format!("at `{key}`: ")
        };
        PolicyError::new(path.display().to_string(), format!("{at}{msg}"))
    })
}

/// One keyword a line; blank lines and `#` comments are skipped.
pub fn parse_keyword_list(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_the_rule_and_key() {
        let text = r#"
[[rule]]
id = "a"
kind = "regex"
action = "block"
pattern = "x"

[[rule]]
id = "b"
kind = "regex"
acton = "block"
"#;
        let err = Sources::from_str("p.toml", text).unwrap_err();
        assert_eq!(err.file, "p.toml");
        assert!(err.message.contains("rule[1]"), "{}", err.message);
        assert!(err.message.contains("acton"), "{}", err.message);
    }

    #[test]
    fn wrong_type_names_the_test_key() {
        let text = r#"
[[rule]]
id = "a"
kind = "regex"
action = "block"
pattern = "x"
[[rule.test]]
text = 5
expect = "block"
"#;
        let err = Sources::from_str("p.toml", text).unwrap_err();
        assert!(
            err.message.contains("rule[0].test[0].text"),
            "{}",
            err.message
        );
    }

    #[test]
    fn version_changes_with_content() {
        let a = Sources::from_str("p.toml", "").unwrap();
        let b = Sources::from_str("p.toml", "\n").unwrap();
        assert_ne!(a.version, b.version);
        assert_eq!(a.version.len(), 16);
    }

    #[test]
    fn keyword_lists_skip_comments_and_blanks() {
        assert_eq!(
            parse_keyword_list("# c\n foo \n\nbar baz\n"),
            vec!["foo", "bar baz"]
        );
    }
}
