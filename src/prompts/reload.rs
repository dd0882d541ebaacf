//! Hot reload of the prompt directory, as the guardrail policy is reloaded.
//!
//! A change in the directory (noticed by the same fingerprint poll as the policy's, acted on once
//! it has been stable for one more interval) or a config reload (SIGHUP included) reads every
//! file and runs every prompt's tests, off the request path. Only a set that passes all of that
//! is swapped in, in one atomic pointer store; a request keeps the set it started with. A
//! refused set is logged, and recorded as a `prompt_reload` audit record shaped like
//! `policy_reload` (`who`, `result`, `error`), whose error names the file, the prompt and the
//! case; the last good set keeps serving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde_json::{Map, Value};

use super::file::PromptError;
use super::render::{run_tests, TestFailure};
use super::PromptSet;
use crate::audit::AuditLog;
use crate::guardrails::reload::fingerprint;

/// At most this many failing cases are named in a message; the rest are counted.
const NAMED_FAILURES: usize = 5;

/// Why a set was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Invalid(#[from] PromptError),
    #[error("{}", describe_failures(.0))]
    TestsFailed(Vec<TestFailure>),
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    Unchanged,
    Swapped,
}

/// The served prompt set and how it is reloaded.
pub struct PromptReloads {
    current: ArcSwap<PromptSet>,
    /// Where the next reload reads; `None` while the config has no `[prompts]`.
    dir: Mutex<Option<PathBuf>>,
    /// One reload at a time (requests never take it).
    reload_lock: Mutex<()>,
    /// The directory watcher and its interval, while one runs.
    watcher: Mutex<Option<(Duration, tokio::task::JoinHandle<()>)>>,
    /// Where each reload is recorded.
    audit: Arc<AuditLog>,
}

/// Names the failing cases (file, prompt, case) without their texts.
pub fn describe_failures(failures: &[TestFailure]) -> String {
    let named: Vec<String> = failures
        .iter()
        .take(NAMED_FAILURES)
        .map(TestFailure::describe)
        .collect();
    let more = failures.len().saturating_sub(named.len());
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(
        "{} prompt test(s) fail: {}{more}; `sluice prompts test` shows each diff",
        failures.len(),
        named.join(", ")
    )
}

/// Reads `dir` and runs every prompt's tests: what a set must pass to be served.
pub fn load_checked(dir: &Path) -> Result<PromptSet, ReloadError> {
    let set = PromptSet::load(dir)?;
    let failures = run_tests(&set);
    if failures.is_empty() {
        Ok(set)
    } else {
        Err(ReloadError::TestsFailed(failures))
    }
}

// === impl PromptReloads ===

impl PromptReloads {
    /// Serves `set` (already checked), read from `dir`, recording reloads in `audit`.
    pub fn new(set: PromptSet, audit: Arc<AuditLog>) -> Self {
        PromptReloads {
            dir: Mutex::new(set.dir.clone()),
            current: ArcSwap::from_pointee(set),
            reload_lock: Mutex::new(()),
            watcher: Mutex::new(None),
            audit,
        }
    }

    /// The set served now.
    pub fn current(&self) -> Arc<PromptSet> {
        self.current.load_full()
    }

    /// The directory the next reload reads.
    pub fn dir(&self) -> Option<PathBuf> {
        self.dir
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads and tests the current directory and serves it if all of that succeeds. Blocking.
    pub fn reload(&self, who: &str) -> Result<Reloaded, ReloadError> {
        let dir = self.dir();
        self.reload_from(who, dir)
    }

    /// Makes `dir` the directory later reloads read (a config reload naming another one, or
    /// none) and reloads from it. Blocking.
    pub fn reload_from(&self, who: &str, dir: Option<PathBuf>) -> Result<Reloaded, ReloadError> {
        let _guard = self
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let result = self.try_reload(dir.as_deref());
        if result.is_ok() {
            *self.dir.lock().unwrap_or_else(PoisonError::into_inner) = dir.clone();
        }
        match &result {
            Ok(Reloaded::Swapped) => {
                tracing::info!(prompts = ?self.current().versions(), "prompts reloaded")
            }
            Ok(Reloaded::Unchanged) => {}
            Err(e) => {
                tracing::warn!(error = %e, "prompt reload refused; the previous prompts keep serving")
            }
        }
        self.record(who, dir.as_deref(), &result);
        result
    }

    fn try_reload(&self, dir: Option<&Path>) -> Result<Reloaded, ReloadError> {
        let set = match dir {
            Some(d) => load_checked(d)?,
            None => PromptSet::default(),
        };
        let current = self.current.load();
        if set.dir == current.dir && set.versions() == current.versions() {
            return Ok(Reloaded::Unchanged);
        }
        self.current.store(Arc::new(set));
        Ok(Reloaded::Swapped)
    }

    /// Polls the current directory every `every` and reloads after a change has settled; `None`
    /// stops polling. A watcher already running at that interval is kept. Needs a tokio runtime.
    pub fn watch(self: &Arc<Self>, every: Option<Duration>) {
        let mut watcher = self.watcher.lock().unwrap_or_else(PoisonError::into_inner);
        if watcher.as_ref().map(|(d, _)| *d) == every {
            return;
        }
        if let Some((_, task)) = watcher.take() {
            task.abort();
        }
        let Some(every) = every else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no runtime to watch the prompt directory on; reloads come from config reloads only");
            return;
        };
        // The first look is taken here, not when the task first runs: an edit made between the
        // two would otherwise be the baseline and never reloaded.
        let seen = look(self);
        let task = runtime.spawn(watch_loop(Arc::downgrade(self), every, seen));
        *watcher = Some((every, task));
    }

    /// Writes one `prompt_reload` record. An error is given as its message, which names files,
    /// prompts and cases, never a case's text.
    fn record(&self, who: &str, dir: Option<&Path>, result: &Result<Reloaded, ReloadError>) {
        let mut f = Map::new();
        f.insert("who".into(), who.into());
        match result {
            Ok(Reloaded::Swapped) => {
                f.insert("result".into(), "ok".into());
            }
            Ok(Reloaded::Unchanged) => {
                f.insert("result".into(), "unchanged".into());
            }
            Err(e) => {
                f.insert("result".into(), "error".into());
                f.insert("error".into(), e.to_string().into());
            }
        }
        let versions: BTreeMap<String, String> = self.current().versions();
        f.insert(
            "prompts".into(),
            Value::Object(versions.into_iter().map(|(k, v)| (k, v.into())).collect()),
        );
        if let Some(d) = dir {
            f.insert("dir".into(), d.display().to_string().into());
        }
        self.audit.record("prompt_reload", f);
    }
}

impl Drop for PromptReloads {
    fn drop(&mut self) {
        if let Some((_, task)) = self
            .watcher
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

type Fingerprint = Vec<(String, u64, Option<SystemTime>)>;

/// The fingerprint of the directory the next reload reads.
fn look(r: &PromptReloads) -> Fingerprint {
    r.dir().map(|d| fingerprint(&d)).unwrap_or_default()
}

async fn watch_loop(reloads: Weak<PromptReloads>, interval: Duration, mut seen: Fingerprint) {
    let mut pending: Option<Fingerprint> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(r) = reloads.upgrade() else { return };
        let now = look(&r);
        match pending.take() {
            Some(p) if p == now => {
                seen = now;
                let _ = tokio::task::spawn_blocking(move || r.reload("watcher")).await;
            }
            _ if now != seen => pending = Some(now),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompts::file::tests::GOOD;

    fn dir_with(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sluice-prompt-reload-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("greet.toml"), text).unwrap();
        dir
    }

    #[test]
    fn a_failing_test_keeps_the_old_set_and_names_file_prompt_and_case() {
        let dir = dir_with("refuse", GOOD);
        let reloads = PromptReloads::new(load_checked(&dir).unwrap(), Arc::default());
        let before = reloads.current().versions();
        std::fs::write(
            dir.join("greet.toml"),
            GOOD.replace("You help Ada.", "You help Bob."),
        )
        .unwrap();
        let e = reloads.reload("test").unwrap_err().to_string();
        assert!(
            e.contains("greet.toml") && e.contains("prompt `greet` case `plain`"),
            "{e}"
        );
        assert!(!e.contains("Bob"), "{e}");
        assert_eq!(reloads.current().versions(), before);
        // A fixed file is taken.
        std::fs::write(dir.join("greet.toml"), format!("{GOOD}\n")).unwrap();
        assert_eq!(reloads.reload("test").unwrap(), Reloaded::Swapped);
        assert_ne!(reloads.current().versions(), before);
        assert_eq!(reloads.reload("test").unwrap(), Reloaded::Unchanged);
        let _ = std::fs::remove_dir_all(dir);
    }
}
