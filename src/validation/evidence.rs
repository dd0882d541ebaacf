//! Eval records as evidence: reading a records directory and matching a record to a release.
//!
//! A record counts only as what it provably is. Its file must be named by the SHA-256 of its
//! bytes (records are content-addressed, so an edited record is a different, unnamed one and is
//! skipped); it must be of the model and of the suite as it is now (name, suite file and dataset
//! SHA-256: a suite edited since the run measured something else); its answers must all have come
//! from one target, version and policy (`served.mixed` is false); and it must have been served by
//! the release in question. A release is identified by its effective version and, where both the
//! record and the config know it, its weights' SHA-256: a record pinned to target `canary` at
//! version `v2` is evidence for any target serving `v2`, so renaming a target after its eval does
//! not void the eval. A target without a version is identified by its name.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::eval::dataset::hex;
use crate::eval::Record;

/// A record read from the records directory, under the hash its bytes have.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The SHA-256 of the file's bytes, which is its name.
    pub hash: String,
    pub path: PathBuf,
    pub record: Record,
}

/// What a record must show to be a release's evidence.
#[derive(Debug, Clone)]
pub struct Wanted<'a> {
    pub model: &'a str,
    pub target: &'a str,
    pub version: Option<&'a str>,
    pub weights_sha256: Option<&'a str>,
    pub suite_name: &'a str,
    pub suite_sha256: &'a str,
    pub dataset_sha256: &'a str,
    pub min_score: f64,
}

/// The evidence a target is admitted on, as shown and audited.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// The record's SHA-256: how the audit log refers to it.
    pub record: String,
    pub path: String,
    pub suite: String,
    pub suite_sha256: String,
    pub dataset_sha256: String,
    pub pass_rate: f64,
    pub mean_scores: std::collections::BTreeMap<String, f64>,
    /// Unix time (seconds) the run started.
    pub started_at: u64,
    /// Who ran it, as the record declares.
    pub run_by: Option<String>,
    /// The target the run was pinned to.
    pub served_target: Option<String>,
    pub served_version: Option<String>,
}

/// What the records say about one release.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// The newest matching record that reached `min_score`.
    Found(Evidence),
    /// Matching records exist, but none reached `min_score`; the best of them.
    BelowMinScore(Evidence),
    /// No record matches the release.
    None,
}

// === impl Stored ===

impl Stored {
    /// Every record in `dir` whose name is its bytes' SHA-256, newest run first. A missing
    /// directory holds no records; an unreadable or misnamed file is skipped, not an error, since
    /// what it would prove cannot be trusted.
    pub fn read_dir(dir: &Path) -> Vec<Stored> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let hash = hex(&Sha256::digest(&bytes));
            if hash != stem {
                continue;
            }
            let Ok(record) = serde_json::from_slice::<Record>(&bytes) else {
                continue;
            };
            out.push(Stored { hash, path, record });
        }
        out.sort_by(|a, b| {
            b.record
                .started_at
                .cmp(&a.record.started_at)
                .then_with(|| a.hash.cmp(&b.hash))
        });
        out
    }

    /// Whether this record was a run of `w`'s release on `w`'s suite, whatever its score.
    pub fn matches(&self, w: &Wanted<'_>) -> bool {
        let r = &self.record;
        let Some(served) = &r.served else {
            return false;
        };
        if r.model != w.model
            || r.suite.name != w.suite_name
            || r.suite.sha256 != w.suite_sha256
            || r.dataset.sha256 != w.dataset_sha256
            || served.mixed
        {
            return false;
        }
        let same_release = match w.version {
            Some(v) => served.version.as_deref() == Some(v),
            None => served.version.is_none() && served.target.as_deref() == Some(w.target),
        };
        let same_weights = match (w.weights_sha256, served.weights_sha256.as_deref()) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        same_release && same_weights
    }

    fn evidence(&self) -> Evidence {
        let r = &self.record;
        let served = r.served.clone().unwrap_or_default();
        Evidence {
            record: self.hash.clone(),
            path: self.path.display().to_string(),
            suite: r.suite.name.clone(),
            suite_sha256: r.suite.sha256.clone(),
            dataset_sha256: r.dataset.sha256.clone(),
            pass_rate: r.summary.pass_rate,
            mean_scores: r.summary.mean_scores.clone(),
            started_at: r.started_at,
            run_by: r.run_by.clone(),
            served_target: served.target,
            served_version: served.version,
        }
    }
}

/// Looks through `records` (newest first) for `w`'s evidence.
pub fn find(records: &[Stored], w: &Wanted<'_>) -> Finding {
    let matching: Vec<&Stored> = records.iter().filter(|s| s.matches(w)).collect();
    if let Some(s) = matching
        .iter()
        .find(|s| s.record.summary.pass_rate >= w.min_score)
    {
        return Finding::Found(s.evidence());
    }
    match matching.iter().max_by(|a, b| {
        a.record
            .summary
            .pass_rate
            .total_cmp(&b.record.summary.pass_rate)
    }) {
        Some(best) => Finding::BelowMinScore(best.evidence()),
        None => Finding::None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::eval::record::{DatasetRef, Served, SuiteRef, Summary};

    /// A record of `version` on target `target` with `pass_rate`, started at `at`.
    pub(crate) fn record(target: &str, version: Option<&str>, pass_rate: f64, at: u64) -> Record {
        let mut summary = Summary::of(&[], &[], 0.5);
        summary.pass_rate = pass_rate;
        Record {
            format: 1,
            suite: SuiteRef {
                name: "s".into(),
                file: "s.toml".into(),
                sha256: "suite-sha".into(),
            },
            dataset: DatasetRef {
                file: "d.jsonl".into(),
                sha256: "data-sha".into(),
                cases: 4,
            },
            model: "m".into(),
            target: "in-process:c.toml".into(),
            served: Some(Served {
                target: Some(target.into()),
                version: version.map(str::to_owned),
                ..Served::default()
            }),
            request: Default::default(),
            prompts: Default::default(),
            run_by: Some("ci".into()),
            sluice_version: "0".into(),
            started_at: at,
            duration_ms: 1.0,
            summary,
            cases: Vec::new(),
        }
    }

    pub(crate) fn stored(r: Record) -> Stored {
        let bytes = r.to_bytes().unwrap();
        Stored {
            hash: hex(&Sha256::digest(&bytes)),
            path: PathBuf::from("x.json"),
            record: r,
        }
    }

    pub(crate) fn wanted<'a>(target: &'a str, version: Option<&'a str>) -> Wanted<'a> {
        Wanted {
            model: "m",
            target,
            version,
            weights_sha256: None,
            suite_name: "s",
            suite_sha256: "suite-sha",
            dataset_sha256: "data-sha",
            min_score: 0.8,
        }
    }

    #[test]
    fn a_release_is_its_version_and_weights() {
        let s = stored(record("canary", Some("v2"), 1.0, 1));
        assert!(s.matches(&wanted("canary", Some("v2"))));
        // Renamed target, same release: still evidence.
        assert!(s.matches(&wanted("stable", Some("v2"))));
        assert!(!s.matches(&wanted("canary", Some("v1"))));
        assert!(!s.matches(&wanted("canary", None)));

        let mut w = wanted("canary", Some("v2"));
        w.weights_sha256 = Some("aa");
        assert!(s.matches(&w), "a record without weights matches on version");
        let mut r = record("canary", Some("v2"), 1.0, 1);
        r.served.as_mut().unwrap().weights_sha256 = Some("bb".into());
        assert!(!stored(r).matches(&w), "other weights, same version label");

        let unversioned = stored(record("canary", None, 1.0, 1));
        assert!(unversioned.matches(&wanted("canary", None)));
        assert!(!unversioned.matches(&wanted("stable", None)));
    }

    #[test]
    fn suite_dataset_model_and_mixing_must_match() {
        let w = wanted("canary", Some("v2"));
        let edits: [fn(&mut Record); 5] = [
            |r| r.suite.sha256 = "edited".into(),
            |r| r.dataset.sha256 = "edited".into(),
            |r| r.suite.name = "other".into(),
            |r| r.model = "other".into(),
            |r| r.served.as_mut().unwrap().mixed = true,
        ];
        for edit in edits {
            let mut r = record("canary", Some("v2"), 1.0, 1);
            edit(&mut r);
            assert!(!stored(r).matches(&w));
        }
        let mut r = record("canary", Some("v2"), 1.0, 1);
        r.served = None;
        assert!(!stored(r).matches(&w), "a record from before `served`");
    }

    #[test]
    fn the_newest_passing_record_wins_and_else_the_best_failing_one_is_named() {
        let w = wanted("canary", Some("v2"));
        let old = stored(record("canary", Some("v2"), 0.9, 1));
        let new = stored(record("canary", Some("v2"), 0.85, 2));
        let bad = stored(record("canary", Some("v2"), 0.3, 3));
        let mut all = vec![bad.clone(), new.clone(), old.clone()];
        all.sort_by_key(|s| std::cmp::Reverse(s.record.started_at));
        let Finding::Found(e) = find(&all, &w) else {
            panic!()
        };
        assert_eq!(e.record, new.hash);
        let worse = stored(record("canary", Some("v2"), 0.1, 4));
        let Finding::BelowMinScore(e) = find(&[worse, bad.clone()], &w) else {
            panic!()
        };
        assert_eq!(e.record, bad.hash);
        assert_eq!(e.pass_rate, 0.3);
        assert_eq!(find(&[], &w), Finding::None);
    }

    #[test]
    fn only_files_named_by_their_hash_are_read() {
        let dir = std::env::temp_dir().join(format!("sluice-evidence-{}", uuid::Uuid::new_v4()));
        let r = record("canary", Some("v2"), 1.0, 1);
        let path = r.write(&dir).unwrap();
        let mut edited = std::fs::read_to_string(&path).unwrap();
        edited = edited.replace("\"pass_rate\": 1.0", "\"pass_rate\": 0.99");
        std::fs::write(dir.join(format!("{}.json", "0".repeat(64))), edited).unwrap();
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        let read = Stored::read_dir(&dir);
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].path, path);
        assert!(Stored::read_dir(&dir.join("missing")).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
