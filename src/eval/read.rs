//! Reading records back: a lenient view of a record file, and finding one by its hash.
//!
//! `compare` and `report` read records that older and newer Sluices wrote, so they do not parse
//! into [`super::Record`], whose types are the writer's (a field added there, or a stricter
//! request type, would make every older record unreadable). This view takes only what the
//! readers use, gives every figure a default, and ignores fields it does not know. A record is
//! named on the command line by its path, or by its hash or a unique prefix of it, looked up in
//! the records directory, as a commit is named in git.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::stats::{Bucket, Interval, Percentiles};

/// One record as read: the file, its name's hash, and the parsed view.
#[derive(Debug, Clone)]
pub struct Stored {
    pub path: PathBuf,
    /// The file's stem: the SHA-256 of its bytes for a record `eval run` wrote.
    pub hash: String,
    pub record: RecordView,
}

/// The fields of a record that `compare` and `report` read.
#[derive(Debug, Clone, Deserialize)]
pub struct RecordView {
    pub format: u32,
    pub suite: SuiteView,
    #[serde(default)]
    pub dataset: DatasetView,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub request: serde_json::Value,
    #[serde(default)]
    pub sluice_version: String,
    #[serde(default)]
    pub started_at: u64,
    #[serde(default)]
    pub duration_ms: f64,
    pub summary: SummaryView,
    pub cases: Vec<CaseView>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SuiteView {
    pub name: String,
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DatasetView {
    pub file: String,
    pub sha256: String,
    pub cases: usize,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SummaryView {
    pub passed: usize,
    pub failed: usize,
    pub pass_rate: f64,
    pub pass_rate_ci95: Option<Interval>,
    pub threshold: f64,
    pub threshold_met: bool,
    pub mean_scores: BTreeMap<String, f64>,
    pub latency_ms: Option<Percentiles>,
    pub tokens: TokensView,
    pub errors: usize,
    pub outputs: OutputsView,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TokensView {
    pub prompt: u64,
    pub completion: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct OutputsView {
    pub length_chars: Vec<Bucket>,
    pub mean_length_chars: f64,
    pub finish_reasons: BTreeMap<String, usize>,
    pub guardrail: GuardrailView,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct GuardrailView {
    pub blocked_input: usize,
    pub blocked_output: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CaseView {
    pub id: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub passed: bool,
    #[serde(default)]
    pub output: String,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub blocked: Option<String>,
    #[serde(default)]
    pub latency_ms: f64,
    #[serde(default)]
    pub scores: Vec<ScoreView>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ScoreView {
    pub scorer: String,
    pub score: f64,
    pub passed: bool,
    #[serde(default)]
    pub detail: Option<String>,
}

// === impl RecordView ===

impl RecordView {
    /// The record's pass rate interval, computed when an older record lacks it.
    pub fn pass_rate_ci95(&self) -> Interval {
        let s = &self.summary;
        s.pass_rate_ci95
            .unwrap_or_else(|| super::stats::wilson(s.passed, s.passed + s.failed))
    }
}

// === reading ===

/// Parses a record's bytes.
pub fn parse(bytes: &[u8]) -> Result<RecordView, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("not an eval record: {e}"))
}

/// Reads the record `arg` names: a file path, or a hash or unique hash prefix of a record in
/// `records`.
pub fn load(arg: &str, records: &Path) -> Result<Stored, String> {
    let path = resolve(arg, records)?;
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let record = parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let hash = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Stored { path, hash, record })
}

/// The file `arg` names: itself when it is a file, else the one record in `records` whose hash
/// starts with it.
pub fn resolve(arg: &str, records: &Path) -> Result<PathBuf, String> {
    let as_path = Path::new(arg);
    if as_path.is_file() {
        return Ok(as_path.to_path_buf());
    }
    let prefix = arg
        .strip_suffix(".json")
        .unwrap_or(arg)
        .to_ascii_lowercase();
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{arg}: no such file, and not a record hash (hexadecimal) to look up in {}",
            records.display()
        ));
    }
    let entries = std::fs::read_dir(records).map_err(|e| {
        format!(
            "{arg}: cannot list the records in {}: {e}",
            records.display()
        )
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && p.file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(|s| s.starts_with(&prefix))
        })
        .collect();
    found.sort();
    match found.len() {
        0 => Err(format!(
            "{arg}: no record in {} has a hash starting with it",
            records.display()
        )),
        1 => Ok(found.remove(0)),
        n => Err(format!(
            "{arg}: {n} records in {} have a hash starting with it; give more of it",
            records.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_missing_figures_are_tolerated() {
        let r = parse(
            br#"{"format": 1, "suite": {"name": "s", "extra": 1}, "served": {"x": 2},
                 "request": {"temperature": 0, "new_knob": true},
                 "summary": {"passed": 1, "failed": 1, "future": []},
                 "cases": [{"id": "a", "passed": true, "served_by": "b"},
                           {"id": "b", "passed": false, "blocked": "input"}]}"#,
        )
        .unwrap();
        assert_eq!(r.suite.name, "s");
        assert_eq!(r.cases.len(), 2);
        assert_eq!(r.cases[1].blocked.as_deref(), Some("input"));
        // No interval in the file: the reader computes it.
        let ci = r.pass_rate_ci95();
        assert!(ci.low > 0.0 && ci.high < 1.0);
        assert!(parse(b"{}").is_err());
        assert!(parse(b"[1]").is_err());
    }

    #[test]
    fn a_hash_prefix_finds_one_record() {
        let dir = std::env::temp_dir().join(format!("sluice-read-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["abc123.json", "abd456.json", "abc123.md"] {
            std::fs::write(dir.join(name), "{}").unwrap();
        }
        assert_eq!(resolve("abc", &dir).unwrap(), dir.join("abc123.json"));
        assert_eq!(resolve("ABD4", &dir).unwrap(), dir.join("abd456.json"));
        let e = resolve("ab", &dir).unwrap_err();
        assert!(e.contains("2 records"), "{e}");
        assert!(resolve("ff", &dir).unwrap_err().contains("no record"));
        assert!(resolve("not-hex", &dir)
            .unwrap_err()
            .contains("no such file"));
        let path = dir.join("abc123.json");
        assert_eq!(resolve(path.to_str().unwrap(), &dir).unwrap(), path);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
