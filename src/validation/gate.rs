//! The gate's decision for one target: admitted on evidence, let through on a stated override,
//! or refused, naming what is missing.

use serde::Serialize;

use super::evidence::{find, Evidence, Finding, Stored, Wanted};
use crate::config::{Config, ModelConfig, TargetConfig};
use crate::eval::Suite;

/// What the gate decided for one target, with what it decided on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub model: String,
    pub target: String,
    /// The target's effective version (its own, else the model's).
    pub version: Option<String>,
    /// The weight asked for.
    pub weight: u32,
    /// The suite file, as resolved.
    pub suite: String,
    pub min_score: f64,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// The three outcomes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Admitted {
        evidence: Evidence,
    },
    /// No evidence, let through because an operator said why.
    Overridden {
        reason: String,
        missing: String,
    },
    Refused {
        missing: String,
        /// The best record of this release, when one exists but scored too low.
        best: Option<Evidence>,
    },
}

// === impl Decision ===

impl Decision {
    pub fn is_refused(&self) -> bool {
        matches!(self.verdict, Verdict::Refused { .. })
    }

    /// One line for an error or a report, naming model, target, version, suite and the verdict.
    pub fn message(&self) -> String {
        let head = format!(
            "model `{}` target `{}` (version {}), suite {}",
            self.model,
            self.target,
            self.version.as_deref().unwrap_or("none"),
            self.suite
        );
        match &self.verdict {
            Verdict::Admitted { evidence } => format!(
                "{head}: evidence {} (pass rate {:.3} >= min_score {:.3}, run at {})",
                evidence.record,
                evidence.pass_rate,
                self.min_score,
                time(evidence.started_at)
            ),
            Verdict::Overridden { reason, missing } => {
                format!("{head}: admitted by override ({reason}) without evidence: {missing}")
            }
            Verdict::Refused { missing, .. } => {
                format!("{head}: no evidence for weight {}: {missing}", self.weight)
            }
        }
    }

    /// The fields of its audit record: `promotion_admitted`, `promotion_override` or
    /// `promotion_refused`.
    pub fn audit(&self, who: &str) -> (&'static str, serde_json::Map<String, serde_json::Value>) {
        let mut f = serde_json::Map::new();
        f.insert("model".into(), self.model.clone().into());
        f.insert("target".into(), self.target.clone().into());
        f.insert("version".into(), self.version.clone().into());
        f.insert("weight".into(), self.weight.into());
        f.insert("suite".into(), self.suite.clone().into());
        f.insert("who".into(), who.into());
        let event = match &self.verdict {
            Verdict::Admitted { evidence } => {
                f.insert("record".into(), evidence.record.clone().into());
                f.insert("pass_rate".into(), evidence.pass_rate.into());
                "promotion_admitted"
            }
            Verdict::Overridden { reason, missing } => {
                f.insert("reason".into(), reason.clone().into());
                f.insert("missing".into(), missing.clone().into());
                "promotion_override"
            }
            Verdict::Refused { missing, best } => {
                f.insert("missing".into(), missing.clone().into());
                if let Some(b) = best {
                    f.insert("record".into(), b.record.clone().into());
                    f.insert("pass_rate".into(), b.pass_rate.into());
                }
                "promotion_refused"
            }
        };
        (event, f)
    }
}

/// RFC 3339 of a Unix time.
pub fn time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

/// The decision for `target` of `model` at `weight`, with `override_reason` as the operator's
/// stated reason to let it through without evidence. `None` when the model is not gated.
pub fn decide(
    config: &Config,
    model: &ModelConfig,
    target: &TargetConfig,
    weight: u32,
    records: &[Stored],
    override_reason: Option<&str>,
) -> Option<Decision> {
    let v = model.validation.as_ref()?;
    let version = target
        .version
        .clone()
        .or_else(|| model.registry.version.clone());
    let decision = |verdict| Decision {
        model: model.name.clone(),
        target: target.name.clone(),
        version: version.clone(),
        weight,
        suite: v.suite.display().to_string(),
        min_score: v.min_score,
        verdict,
    };
    let refused_or_overridden = |missing: String, best: Option<Evidence>| match override_reason {
        Some(reason) => Verdict::Overridden {
            reason: reason.to_owned(),
            missing,
        },
        None => Verdict::Refused { missing, best },
    };
    let suite = match Suite::load(&v.suite) {
        Ok(s) => s,
        Err(e) => {
            return Some(decision(refused_or_overridden(
                format!("the suite cannot be used: {e}"),
                None,
            )))
        }
    };
    if suite.model != model.name {
        return Some(decision(refused_or_overridden(
            format!(
                "the suite `{}` tests model `{}`, not `{}`",
                suite.name, suite.model, model.name
            ),
            None,
        )));
    }
    let weights = super::weights_sha256(config, target);
    let wanted = Wanted {
        model: &model.name,
        target: &target.name,
        version: version.as_deref(),
        weights_sha256: weights.as_deref(),
        suite_name: &suite.name,
        suite_sha256: &suite.sha256,
        dataset_sha256: &suite.dataset.sha256,
        min_score: v.min_score,
    };
    let verdict = match find(records, &wanted) {
        Finding::Found(evidence) => Verdict::Admitted { evidence },
        Finding::BelowMinScore(best) => refused_or_overridden(
            format!(
                "the best record of this release, {}, scored {:.3}, below min_score {:.3}",
                best.record, best.pass_rate, v.min_score
            ),
            Some(best),
        ),
        Finding::None => refused_or_overridden(
            format!(
                "no record in {} of suite `{}` (suite sha256 {}, dataset sha256 {}) served by {}",
                config.validation_records.display(),
                suite.name,
                suite.sha256,
                suite.dataset.sha256,
                match &version {
                    Some(v) => format!("version `{v}`"),
                    None => format!("target `{}`", target.name),
                }
            ),
            None,
        ),
    };
    Some(decision(verdict))
}

/// The decisions for every target with a weight above 0 of every gated model, with the config's
/// own `validation_override`s. A config serves only when none is refused.
pub fn check(config: &Config) -> Vec<Decision> {
    if config.models.values().all(|m| m.validation.is_none()) {
        return Vec::new();
    }
    let records = Stored::read_dir(&config.validation_records);
    let mut out = Vec::new();
    for model in config.models.values() {
        for t in model.targets.iter().filter(|t| t.weight > 0) {
            out.extend(decide(
                config,
                model,
                t,
                t.weight,
                &records,
                t.validation_override.as_deref(),
            ));
        }
    }
    out
}

/// The refusals of `decisions`, as one message naming each.
pub fn refusal_message(decisions: &[Decision]) -> Option<String> {
    let refused: Vec<String> = decisions
        .iter()
        .filter(|d| d.is_refused())
        .map(Decision::message)
        .collect();
    (!refused.is_empty()).then(|| {
        format!(
            "the promotion gate refuses {}; run `sluice eval run SUITE --target NAME` for it, or state `validation_override = \"reason\"` on the target",
            refused.join("; ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::evidence::tests::record;
    use std::path::Path;

    /// A config in `dir` gating model `m` (targets stable v1 at 100, canary v2 at `canary`) on a
    /// suite written there, plus `extra` on the canary target.
    fn setup(canary: u32, extra: &str) -> (std::path::PathBuf, Config) {
        let dir = std::env::temp_dir().join(format!("sluice-gate-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("d.jsonl"),
            "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"reference\":\"x\"}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("s.toml"),
            "name = \"s\"\ndataset = \"d.jsonl\"\nmodel = \"m\"\nthreshold = 0.5\n[[scorer]]\ntype = \"contains\"\n",
        )
        .unwrap();
        let text = format!(
            r#"
[backends.b]
type = "openai"
base_url = "http://127.0.0.1:9/v1"
[models.m]
validation = {{ suite = "s.toml", min_score = 0.8 }}
targets = [
  {{ name = "stable", backend = "b", version = "v1", weight = 100 }},
  {{ name = "canary", backend = "b", version = "v2", weight = {canary} {extra} }},
]
"#
        );
        let path = dir.join("c.toml");
        let config = Config::from_toml(&text, &path, &|_| None).unwrap();
        (dir, config)
    }

    /// Writes a record of `version` on the suite as it is in `dir`.
    fn write(dir: &Path, target: &str, version: &str, pass_rate: f64) -> String {
        let suite = Suite::load(&dir.join("s.toml")).unwrap();
        let mut r = record(target, Some(version), pass_rate, 10);
        r.suite.sha256 = suite.sha256;
        r.dataset.sha256 = suite.dataset.sha256;
        let p = r.write(&dir.join("records")).unwrap();
        p.file_stem().unwrap().to_str().unwrap().to_owned()
    }

    #[test]
    fn weighted_targets_need_evidence_and_zero_weight_ones_do_not() {
        let (dir, config) = setup(0, "");
        let d = check(&config);
        assert_eq!(d.len(), 1, "only the weighted target is decided");
        assert!(d[0].is_refused());
        let msg = refusal_message(&d).unwrap();
        for part in [
            "model `m`",
            "target `stable`",
            "version v1",
            "s.toml",
            "no record",
        ] {
            assert!(msg.contains(part), "{part}: {msg}");
        }
        let hash = write(&dir, "stable", "v1", 0.9);
        let d = check(&config);
        let Verdict::Admitted { evidence } = &d[0].verdict else {
            panic!("{d:?}")
        };
        assert_eq!(evidence.record, hash);
        assert!(refusal_message(&d).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failing_record_is_named_with_its_score_and_an_override_admits() {
        let (dir, config) = setup(10, "");
        write(&dir, "stable", "v1", 1.0);
        let low = write(&dir, "canary", "v2", 0.25);
        let d = check(&config);
        let canary = d.iter().find(|d| d.target == "canary").unwrap();
        let msg = canary.message();
        assert!(canary.is_refused());
        assert!(msg.contains(&low) && msg.contains("0.250"), "{msg}");
        assert_eq!(canary.audit("ops").0, "promotion_refused");

        let (dir2, config) = setup(10, ", validation_override = \"hotfix, CVE-1\"");
        write(&dir2, "stable", "v1", 1.0);
        let d = check(&config);
        let canary = d.iter().find(|d| d.target == "canary").unwrap();
        assert!(
            matches!(&canary.verdict, Verdict::Overridden { reason, .. } if reason == "hotfix, CVE-1")
        );
        let (event, fields) = canary.audit("ops");
        assert_eq!(event, "promotion_override");
        assert_eq!(fields["who"], "ops");
        for d in [dir, dir2] {
            std::fs::remove_dir_all(&d).unwrap();
        }
    }

    #[test]
    fn an_edited_suite_voids_old_records() {
        let (dir, config) = setup(0, "");
        write(&dir, "stable", "v1", 1.0);
        assert!(!check(&config)[0].is_refused());
        let text = std::fs::read_to_string(dir.join("s.toml")).unwrap();
        std::fs::write(dir.join("s.toml"), text.replace("0.5", "0.6")).unwrap();
        assert!(check(&config)[0].is_refused());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ungated_models_are_not_decided() {
        let text =
            "[backends.b]\ntype=\"openai\"\nbase_url=\"http://x/v1\"\n[models.m]\nbackend=\"b\"\n";
        let c = Config::from_toml(text, Path::new("c.toml"), &|_| None).unwrap();
        assert!(check(&c).is_empty());
    }
}
