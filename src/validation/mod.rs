//! The promotion gate: a target gets traffic only on evidence that its release passed its suite.
//!
//! A weighted rollout contains a bad release only after it has served someone. A model that
//! declares `validation = { suite, min_score }` asks for more: no target of it may have a weight
//! above 0 unless an eval record in the `[validation] records` directory shows that exactly this
//! release (its version, and its weights' SHA-256 where both sides know it) passed exactly this
//! suite (its name, its file's and its dataset's current SHA-256) with a pass rate of at least
//! `min_score`. [`evidence`] finds and checks such records; [`gate`] decides per target. Start-up,
//! `sluice config check` and every reload ask the gate through `config::check::prepare`; the
//! admin API asks it before it raises a weight. An operator may let a target through without
//! evidence by stating why (`validation_override`, or `"override"` in the admin call); that and
//! every admission and refusal is audited, admissions with the record's hash, so the audit log
//! names the evidence a release went out on. The rules are in docs/VALIDATION.md.

pub mod changes;
pub mod cli;
pub mod evidence;
pub mod gate;
pub mod show;

use crate::config::{BackendConfig, Config, TargetConfig};

/// The SHA-256 of the weights a target serves: its replicas' local model files' declared
/// `sha256`, when every replica is a local model declaring the same one.
pub fn weights_sha256(config: &Config, target: &TargetConfig) -> Option<String> {
    let mut found: Option<&String> = None;
    for name in &target.replicas {
        match config.backends.get(name) {
            Some(BackendConfig::Candle(c)) => match (&found, &c.sha256) {
                (_, None) => return None,
                (None, Some(h)) => found = Some(h),
                (Some(f), Some(h)) if *f == h => {}
                _ => return None,
            },
            _ => return None,
        }
    }
    found.cloned()
}
