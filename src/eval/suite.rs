//! Suite files (`evals/*.toml`): which golden set runs against which model, scored how.
//!
//! A suite is read the way a config file is: unknown keys are errors naming the key, then a
//! validate step checks every value and names the key it is wrong in, and loads the dataset, so
//! that everything that can be wrong with a suite is found before the first request: a pattern
//! that does not compile, a case that gives a scorer nothing to compare against, a template
//! variable a case lacks.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::dataset::{hex, Dataset, Template};
use super::scorers::{self, Scorer, ScorerConfig};

/// A suite that failed to load. The message names the file and the key (or the dataset line).
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct SuiteError {
    pub file: String,
    pub message: String,
}

/// A suite file, as read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSuite {
    name: Option<String>,
    description: Option<String>,
    /// The golden set, relative to the suite file.
    dataset: String,
    /// The model under test, as the gateway names it.
    model: String,
    /// The pass rate the suite must reach, 0..1.
    threshold: f64,
    /// A template for cases given as `variables` (`{{ name }}`).
    prompt: Option<String>,
    /// A system message put before every case that has none.
    system: Option<String>,
    /// A gateway prompt (`prompts/*.toml`) the cases' `variables` fill, rendered by the gateway.
    /// Not `prompt`, which is the suite's own template.
    prompt_id: Option<String>,
    #[serde(default)]
    request: RequestSettings,
    #[serde(default)]
    scorer: Vec<ScorerConfig>,
}

/// `[request]`: sampling settings sent with every case.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

/// A checked suite with its dataset loaded.
#[derive(Debug)]
pub struct Suite {
    /// `name`, or the file's stem.
    pub name: String,
    pub description: Option<String>,
    pub model: String,
    pub threshold: f64,
    pub request: RequestSettings,
    /// The gateway prompt every case names, with its `variables`.
    pub prompt_id: Option<String>,
    pub scorers: Vec<Scorer>,
    pub dataset: Dataset,
    /// The suite file, as given.
    pub path: PathBuf,
    /// The dataset file, resolved.
    pub dataset_path: PathBuf,
    /// Hex SHA-256 of the suite file's bytes.
    pub sha256: String,
}

// === impl Suite ===

impl Suite {
    /// Reads and checks a suite file and its dataset.
    pub fn load(path: &Path) -> Result<Suite, SuiteError> {
        let err = |message: String| SuiteError {
            file: path.display().to_string(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| err(format!("not UTF-8: {e}")))?;
        Self::from_toml(text, path)
    }

    /// Parses a suite from text; `path` names it in messages and resolves the dataset.
    pub fn from_toml(text: &str, path: &Path) -> Result<Suite, SuiteError> {
        let err = |message: String| SuiteError {
            file: path.display().to_string(),
            message,
        };
        let value: toml::Value = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let raw: RawSuite = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            if key == "." || key.is_empty() {
                err(e.inner().to_string())
            } else {
                err(format!("`{key}`: {}", e.inner()))
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let dataset_path = base.join(&raw.dataset);
        let (suite, template) = validate(raw, path, base).map_err(err)?;
        let dataset = Dataset::load(&dataset_path, &template.as_template()).map_err(|message| {
            SuiteError {
                file: dataset_path.display().to_string(),
                message,
            }
        })?;
        check_coverage(&suite.scorers, &dataset).map_err(|message| SuiteError {
            file: dataset_path.display().to_string(),
            message,
        })?;
        Ok(Suite {
            name: suite.name,
            description: suite.description,
            model: suite.model,
            threshold: suite.threshold,
            request: suite.request,
            prompt_id: template.prompt_id,
            scorers: suite.scorers,
            dataset,
            path: path.to_owned(),
            dataset_path,
            sha256: hex(&Sha256::digest(text.as_bytes())),
        })
    }
}

/// What `validate` checked, before the dataset is loaded.
struct Checked {
    name: String,
    description: Option<String>,
    model: String,
    threshold: f64,
    request: RequestSettings,
    scorers: Vec<Scorer>,
}

struct OwnedTemplate {
    prompt: Option<String>,
    system: Option<String>,
    prompt_id: Option<String>,
}

impl OwnedTemplate {
    fn as_template(&self) -> Template<'_> {
        Template {
            prompt: self.prompt.as_deref(),
            system: self.system.as_deref(),
            prompt_id: self.prompt_id.is_some(),
        }
    }
}

/// Every case has a scorer that applies to it, every scorer a case, and what a case gives a
/// scorer is usable.
fn check_coverage(scorers: &[Scorer], dataset: &Dataset) -> Result<(), String> {
    let mut used = vec![false; scorers.len()];
    for case in &dataset.cases {
        let at = format!("line {} (`{}`)", case.line, case.id);
        let mut any = false;
        for (i, s) in scorers.iter().enumerate().filter(|(_, s)| s.applies(case)) {
            s.check_case(case)
                .map_err(|e| format!("{at}: scorer `{}`: {e}", s.name))?;
            used[i] = true;
            any = true;
        }
        if !any {
            let needs: Vec<String> = scorers
                .iter()
                .map(|s| format!("`{}` needs {}", s.name, s.needs()))
                .collect();
            return Err(format!("{at}: no scorer applies ({})", needs.join("; ")));
        }
    }
    match used.iter().position(|u| !u) {
        Some(i) => Err(format!(
            "scorer `{}` applies to no case: it needs {}",
            scorers[i].name,
            scorers[i].needs()
        )),
        None => Ok(()),
    }
}

fn validate(raw: RawSuite, path: &Path, base: &Path) -> Result<(Checked, OwnedTemplate), String> {
    let name = match raw.name {
        Some(n) if n.trim().is_empty() => return Err("`name`: must not be empty".into()),
        Some(n) => n,
        None => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "suite".into()),
    };
    if raw.model.trim().is_empty() {
        return Err("`model`: must name a model".into());
    }
    if raw.dataset.trim().is_empty() {
        return Err("`dataset`: must name a JSONL file".into());
    }
    if !(0.0..=1.0).contains(&raw.threshold) {
        return Err("`threshold`: must be a pass rate between 0 and 1".into());
    }
    let r = &raw.request;
    if let Some(t) = r.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
        return Err(format!("`request.temperature`: {t} is not between 0 and 2"));
    }
    if let Some(p) = r.top_p.filter(|p| !(0.0..=1.0).contains(p)) {
        return Err(format!("`request.top_p`: {p} is not between 0 and 1"));
    }
    if r.max_tokens == Some(0) {
        return Err("`request.max_tokens`: must be at least 1".into());
    }
    if raw.prompt_id.is_some() && (raw.prompt.is_some() || raw.system.is_some()) {
        return Err(
            "`prompt_id`: the gateway renders the prompt; give no `prompt` or `system`".into(),
        );
    }
    if let Some(p) = &raw.prompt {
        minijinja::Environment::new()
            .template_from_str(p)
            .map_err(|e| format!("`prompt`: not a template: {e}"))?;
    }
    let scorers = scorers::build_all(raw.scorer, base)?;
    Ok((
        Checked {
            name,
            description: raw.description,
            model: raw.model,
            threshold: raw.threshold,
            request: raw.request,
            scorers,
        },
        OwnedTemplate {
            prompt: raw.prompt,
            system: raw.system,
            prompt_id: raw.prompt_id,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `suite` and `dataset` into a fresh directory and loads the suite.
    fn load(suite: &str, dataset: &str) -> Result<Suite, SuiteError> {
        let dir = std::env::temp_dir().join(format!("sluice-suite-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("set.jsonl"), dataset).unwrap();
        let path = dir.join("s.toml");
        std::fs::write(&path, suite).unwrap();
        let s = Suite::load(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        s
    }

    const SUITE: &str = r#"
dataset = "set.jsonl"
model = "m"
threshold = 0.5
[request]
temperature = 0
max_tokens = 16
[[scorer]]
type = "contains"
"#;
    const SET: &str =
        r#"{"messages":[{"role":"user","content":"Capital of France?"}],"reference":"Paris"}"#;

    #[test]
    fn a_good_suite_loads() {
        let s = load(SUITE, SET).unwrap();
        assert_eq!(s.name, "s");
        assert_eq!(s.model, "m");
        assert_eq!(s.scorers[0].name, "contains");
        assert_eq!(s.dataset.cases.len(), 1);
        assert_eq!(s.request.max_tokens, Some(16));
        assert_eq!(s.sha256.len(), 64);
        assert_ne!(s.sha256, s.dataset.sha256);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (SUITE.replace("threshold", "treshold"), "treshold"),
            (
                SUITE.replace("max_tokens = 16", "max_tokenz = 16"),
                "request",
            ),
            (
                SUITE.replace("threshold = 0.5", "threshold = 1.5"),
                "`threshold`",
            ),
            (
                SUITE.replace("temperature = 0", "temperature = 3"),
                "request.temperature",
            ),
            (SUITE.replace("model = \"m\"", "model = 3"), "model"),
            (SUITE.replace("model = \"m\"", "model = \"\""), "`model`"),
            (
                SUITE.replace("type = \"contains\"", "type = \"regex\"\npattern = \"(\""),
                "scorer[0]`: `pattern`",
            ),
            (
                SUITE.replace("type = \"contains\"", "type = \"contains\"\nvalue = \"x\""),
                "value",
            ),
            (
                SUITE.replace("[[scorer]]\ntype = \"contains\"\n", ""),
                "`scorer`",
            ),
        ];
        for (text, key) in cases {
            let e = load(&text, SET).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
            assert!(e.contains("s.toml"), "{e}");
        }
        let e = load(
            &SUITE.replace("threshold", "prompt = \"{{ x\"\nthreshold"),
            SET,
        )
        .unwrap_err();
        assert!(e.to_string().contains("`prompt`"), "{e}");
    }

    #[test]
    fn dataset_errors_name_the_file_the_line_and_the_scorer() {
        let e = load(SUITE, r#"{"messages":[{"role":"user","content":"x"}]}"#).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("set.jsonl")
                && msg.contains("line 1")
                && msg.contains("no scorer applies"),
            "{msg}"
        );
        assert!(msg.contains("`contains` needs"), "{msg}");
        let both = SUITE.replace("[[scorer]]", "[[scorer]]\ntype = \"numeric\"\n[[scorer]]");
        let e = load(&both, SET).unwrap_err().to_string();
        assert!(e.contains("scorer `numeric` applies to no case"), "{e}");
        let bad = r#"{"messages":[{"role":"user","content":"x"}],"expect":{"contains":" "}}"#;
        let e = load(SUITE, bad).unwrap_err().to_string();
        assert!(
            e.contains("line 1") && e.contains("expect.contains[0]"),
            "{e}"
        );
        let e = load(&SUITE.replace("set.jsonl", "missing.jsonl"), SET).unwrap_err();
        assert!(e.to_string().contains("missing.jsonl"), "{e}");
    }
}
