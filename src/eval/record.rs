//! Eval records: what one run of a suite measured, as a content-addressed JSON file.
//!
//! A record is the evidence behind a release decision and the baseline the next run is
//! compared with, so it names exactly what ran (the suite's and the dataset's SHA-256, the
//! model, the target), keeps every case's output and scores for review, and carries the
//! statistics a drift comparison needs without the cases: pass rate with its 95 % interval,
//! mean scores, latency percentiles, tokens, and the shape of the outputs (a length histogram,
//! finish-reason counts, guardrail trips). The file is named by the SHA-256 of its bytes
//! (`records/<sha256>.json`), so a record cannot be edited without changing its name, and two
//! identical records are one file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::dataset::hex;
use super::scorers::Blocked;
use super::stats::{self, Bucket, Interval, Percentiles};
use super::suite::RequestSettings;

/// The format version, for readers of old records.
pub const FORMAT: u32 = 1;

/// One run of a suite.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub format: u32,
    pub suite: SuiteRef,
    pub dataset: DatasetRef,
    pub model: String,
    /// Where the cases were sent: a URL (without credentials), or `in-process:<config>`.
    pub target: String,
    /// What answered: the target, version and policy the gateway named in its response headers.
    /// Absent in records written before the promotion gate.
    #[serde(default)]
    pub served: Option<Served>,
    pub request: RequestSettings,
    /// `id → version` of the gateway prompts the answers came from (`x-sluice-prompt-*`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prompts: BTreeMap<String, String>,
    /// Who ran the suite, as the runner declared it (`sluice eval run --run-by`, else
    /// `$SLUICE_RUN_BY`, else the login name): a statement, not an authentication.
    #[serde(default)]
    pub run_by: Option<String>,
    /// The Sluice version that ran the suite.
    pub sluice_version: String,
    /// Unix time (seconds) when the run started.
    pub started_at: u64,
    /// Wall time of the whole run.
    pub duration_ms: f64,
    pub summary: Summary,
    pub cases: Vec<CaseRecord>,
}

/// Which target, version and policy answered a run's cases (`x-sluice-target`,
/// `x-sluice-model-version`, `x-sluice-policy-version` of the answers), and the weights file's
/// SHA-256 when the gateway ran in-process on a local model that declares one. A field is `null`
/// when no answer named it, or when answers disagreed: then `mixed` is true and `seen` lists what
/// came, and the record is no one release's evidence.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Served {
    pub target: Option<String>,
    pub version: Option<String>,
    pub weights_sha256: Option<String>,
    pub policy_version: Option<String>,
    pub mixed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<Seen>,
}

/// Every distinct value the answers named, when they disagreed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub targets: Vec<String>,
    pub versions: Vec<String>,
    pub policy_versions: Vec<String>,
}

/// The response headers of one answer that say what served it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseServed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteRef {
    pub name: String,
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetRef {
    pub file: String,
    pub sha256: String,
    pub cases: usize,
}

/// The aggregate figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub pass_rate: f64,
    /// 95 % Wilson score interval of the pass rate.
    pub pass_rate_ci95: Interval,
    pub threshold: f64,
    /// Whether `pass_rate` reached `threshold`.
    pub threshold_met: bool,
    /// Each scorer's mean score over the cases it applied to, by scorer name.
    pub mean_scores: BTreeMap<String, f64>,
    /// Latency of the answered requests, in milliseconds; `null` when none was answered.
    pub latency_ms: Option<Percentiles>,
    pub tokens: Tokens,
    /// Cases that got no answer or refusal (transport failures after retries, timeouts).
    pub errors: usize,
    pub outputs: OutputStats,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    pub total: u64,
}

/// The shape of the answers, for drift comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputStats {
    /// Answer lengths in characters, in fixed buckets (see `stats::LENGTH_BUCKETS`).
    pub length_chars: Vec<Bucket>,
    pub mean_length_chars: f64,
    /// `finish_reason` of the answers (`none` when absent).
    pub finish_reasons: BTreeMap<String, usize>,
    pub guardrail: GuardrailTrips,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardrailTrips {
    /// Requests refused with 400 `content_filter`.
    pub blocked_input: usize,
    /// Answers cut with `finish_reason: "content_filter"`.
    pub blocked_output: usize,
}

/// One case's run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseRecord {
    pub id: String,
    /// The gateway prompt the answer came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<crate::prompts::PromptTag>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    pub passed: bool,
    /// The answer's text (empty when refused or failed).
    pub output: String,
    pub finish_reason: Option<String>,
    /// The HTTP status, when one came.
    pub status: Option<u16>,
    /// A refusal's message or a transport failure.
    pub error: Option<String>,
    pub blocked: Option<Blocked>,
    /// Time to the full answer of the last attempt, in milliseconds.
    pub latency_ms: f64,
    pub attempts: u32,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub scores: Vec<ScoreRecord>,
    /// What served this answer, from its response headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<CaseServed>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScoreRecord {
    pub scorer: String,
    pub score: f64,
    pub passed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

// === impl Summary ===

impl Summary {
    /// The figures of `cases`; `scorers` lists every scorer name so a mean is there for each.
    pub fn of(cases: &[CaseRecord], scorers: &[String], threshold: f64) -> Summary {
        let passed = cases.iter().filter(|c| c.passed).count();
        let n = cases.len();
        let pass_rate = if n == 0 {
            0.0
        } else {
            passed as f64 / n as f64
        };
        let mean_scores = scorers
            .iter()
            .map(|name| {
                let s: Vec<f64> = cases
                    .iter()
                    .flat_map(|c| c.scores.iter().filter(|s| &s.scorer == name))
                    .map(|s| s.score)
                    .collect();
                (name.clone(), stats::mean(&s))
            })
            .collect();
        let answered: Vec<&CaseRecord> = cases.iter().filter(|c| c.status.is_some()).collect();
        let latencies: Vec<f64> = answered.iter().map(|c| c.latency_ms).collect();
        let mut tokens = Tokens::default();
        for c in cases {
            tokens.prompt += c.prompt_tokens.unwrap_or(0);
            tokens.completion += c.completion_tokens.unwrap_or(0);
        }
        tokens.total = tokens.prompt + tokens.completion;
        let answers: Vec<&CaseRecord> = cases.iter().filter(|c| c.status == Some(200)).collect();
        let lengths: Vec<usize> = answers.iter().map(|c| c.output.chars().count()).collect();
        let mut finish_reasons = BTreeMap::new();
        for c in &answers {
            let reason = c.finish_reason.clone().unwrap_or_else(|| "none".into());
            *finish_reasons.entry(reason).or_insert(0) += 1;
        }
        let count = |b: Blocked| cases.iter().filter(|c| c.blocked == Some(b)).count();
        Summary {
            passed,
            failed: n - passed,
            pass_rate,
            pass_rate_ci95: stats::wilson(passed, n),
            threshold,
            threshold_met: pass_rate >= threshold,
            mean_scores,
            latency_ms: stats::percentiles(&latencies),
            tokens,
            errors: cases.iter().filter(|c| c.status.is_none()).count(),
            outputs: OutputStats {
                mean_length_chars: stats::mean(
                    &lengths.iter().map(|&l| l as f64).collect::<Vec<_>>(),
                ),
                length_chars: stats::length_histogram(lengths),
                finish_reasons,
                guardrail: GuardrailTrips {
                    blocked_input: count(Blocked::Input),
                    blocked_output: count(Blocked::Output),
                },
            },
        }
    }
}

// === impl Served ===

impl Served {
    /// What served `cases` (their answers' headers), with the weights' SHA-256 when known.
    pub fn of(cases: &[CaseRecord], weights_sha256: Option<String>) -> Served {
        let distinct = |f: fn(&CaseServed) -> Option<&String>| -> Vec<String> {
            let set: std::collections::BTreeSet<String> = cases
                .iter()
                .filter_map(|c| c.served.as_ref())
                .filter_map(|s| f(s).cloned())
                .collect();
            set.into_iter().collect()
        };
        let targets = distinct(|s| s.target.as_ref());
        let versions = distinct(|s| s.version.as_ref());
        let policy_versions = distinct(|s| s.policy_version.as_ref());
        // An answer without a header the others carry is a disagreement too.
        let answered: Vec<&CaseServed> = cases.iter().filter_map(|c| c.served.as_ref()).collect();
        let partial = |f: fn(&CaseServed) -> bool| {
            let n = answered.iter().filter(|s| f(s)).count();
            n != 0 && n != answered.len()
        };
        let mixed = targets.len() > 1
            || versions.len() > 1
            || policy_versions.len() > 1
            || partial(|s| s.target.is_some())
            || partial(|s| s.version.is_some())
            || partial(|s| s.policy_version.is_some());
        let one = |v: &[String]| {
            if mixed || v.len() != 1 {
                None
            } else {
                v.first().cloned()
            }
        };
        Served {
            target: one(&targets),
            version: one(&versions),
            weights_sha256,
            policy_version: one(&policy_versions),
            mixed,
            seen: mixed.then_some(Seen {
                targets,
                versions,
                policy_versions,
            }),
        }
    }
}

// === impl Record ===

impl Record {
    /// The record as it is stored: pretty JSON with a final newline.
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Writes the record to `dir/<sha256 of its bytes>.json` and returns the path. The file is
    /// written beside its final name and renamed, so a reader never sees half a record.
    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let bytes = self.to_bytes().map_err(std::io::Error::other)?;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{}.json", hex(&Sha256::digest(&bytes))));
        let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4()));
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(id: &str, passed: bool, status: Option<u16>, output: &str) -> CaseRecord {
        CaseRecord {
            id: id.into(),
            prompt: None,
            tags: Vec::new(),
            passed,
            output: output.into(),
            finish_reason: status.filter(|s| *s == 200).map(|_| "stop".into()),
            status,
            error: None,
            blocked: (status == Some(400)).then_some(Blocked::Input),
            latency_ms: 10.0,
            attempts: 1,
            prompt_tokens: Some(5),
            completion_tokens: Some(2),
            scores: vec![ScoreRecord {
                scorer: "contains".into(),
                score: if passed { 1.0 } else { 0.0 },
                passed,
                detail: None,
            }],
            served: None,
        }
    }

    fn served(target: &str, version: &str, policy: &str) -> Option<CaseServed> {
        Some(CaseServed {
            target: Some(target.into()),
            version: Some(version.into()),
            policy_version: Some(policy.into()),
        })
    }

    #[test]
    fn served_is_one_release_or_flagged_mixed() {
        let mut a = case("a", true, Some(200), "x");
        let mut b = case("b", true, Some(200), "x");
        let c = case("c", false, Some(400), "");
        a.served = served("canary", "v2", "p1");
        b.served = served("canary", "v2", "p1");
        let s = Served::of(&[a.clone(), b.clone(), c.clone()], Some("ab".into()));
        assert!(!s.mixed);
        assert_eq!(s.target.as_deref(), Some("canary"));
        assert_eq!(s.version.as_deref(), Some("v2"));
        assert_eq!(s.policy_version.as_deref(), Some("p1"));
        assert_eq!(s.weights_sha256.as_deref(), Some("ab"));
        assert!(s.seen.is_none());

        b.served = served("stable", "v1", "p1");
        let s = Served::of(&[a.clone(), b.clone()], None);
        assert!(s.mixed);
        assert_eq!((s.target, s.version), (None, None));
        assert_eq!(s.policy_version, None);
        let seen = s.seen.unwrap();
        assert_eq!(seen.targets, ["canary", "stable"]);
        assert_eq!(seen.policy_versions, ["p1"]);

        // A policy reload halfway through the run mixes the record too.
        b.served = served("canary", "v2", "p2");
        assert!(Served::of(&[a.clone(), b.clone()], None).mixed);
        // So does an answer that names no version while another does.
        b.served = Some(CaseServed {
            version: None,
            ..served("canary", "v2", "p1").unwrap()
        });
        assert!(Served::of(&[a, b], None).mixed);
    }

    #[test]
    fn summary_figures() {
        let cases = [
            case("a", true, Some(200), "Paris"),
            case("b", false, Some(200), ""),
            case("c", false, Some(400), ""),
            case("d", false, None, ""),
        ];
        let s = Summary::of(&cases, &["contains".into(), "other".into()], 0.5);
        assert_eq!((s.passed, s.failed, s.errors), (1, 3, 1));
        assert_eq!(s.pass_rate, 0.25);
        assert!(!s.threshold_met);
        assert_eq!(s.mean_scores["contains"], 0.25);
        assert_eq!(s.mean_scores["other"], 0.0);
        assert_eq!(
            s.tokens,
            Tokens {
                prompt: 20,
                completion: 8,
                total: 28
            }
        );
        assert_eq!(s.outputs.finish_reasons["stop"], 2);
        assert_eq!(s.outputs.guardrail.blocked_input, 1);
        assert_eq!(s.outputs.length_chars[0].count, 1);
        assert_eq!(s.outputs.length_chars[1].count, 1);
        assert_eq!(s.latency_ms.unwrap().p50, 10.0);
        let empty = Summary::of(&[], &[], 0.0);
        assert!(empty.latency_ms.is_none() && empty.threshold_met);
    }
}
