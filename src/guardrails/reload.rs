//! Hot reload: a new policy is served only once it has proved itself.
//!
//! On a change in the policy directory (or a config reload, SIGHUP included), the files are read
//! and compiled and every rule's tests are run, off the request path. Only if all of that succeeds
//! is the new policy swapped in, in one atomic pointer store; requests in flight keep the policy
//! they started with. A broken file is logged and counted and the last good policy keeps serving,
//! so no request ever fails because of a reload. Changes are noticed by polling a cheap fingerprint
//! (names, sizes, modification times) and acted on once it has been stable for one more interval,
//! so an editor's several writes make one reload.
//!
//! [`PolicyReloads`] is how the gateway reloads: from the directory the *running* config names, so
//! a config reload that names another `[guardrails] dir` moves every later reload there. Each of
//! its reloads, applied or refused, leaves a `policy_reload` record in the audit log, shaped as a
//! `config_reload` record is (`who`, `result`, `error`), with the versions served before and after.
//! [`GuardrailsHandle::reload`] is the bare step underneath, from the directory the handle was
//! loaded from.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use super::compile::Policy;
use super::handle::GuardrailsHandle;
use super::policy::PolicyError;
use super::tools::{run_tests, TestFailure};
use crate::audit::AuditLog;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// The files hash to the version already served.
    Unchanged(String),
    /// The new policy is being served.
    Swapped { from: String, to: String },
}

/// Why a reload was refused; the old policy keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the guardrails handle has no policy directory")]
    NoDirectory,
    #[error("{0}")]
    Invalid(#[from] PolicyError),
    #[error("{}", describe_failures(.0))]
    TestsFailed(Vec<TestFailure>),
}

/// The gateway's policy reloads: one at a time, from the directory the running config names.
pub struct PolicyReloads {
    handle: GuardrailsHandle,
    /// Where the next reload reads; a config reload naming another directory changes it.
    dir: Mutex<PathBuf>,
    /// The directory watcher and its interval, while one runs.
    watcher: Mutex<Option<(Duration, tokio::task::JoinHandle<()>)>>,
    /// Where each reload is recorded.
    audit: Arc<AuditLog>,
}

/// At most this many failing cases are named in a message; the rest are counted.
const NAMED_FAILURES: usize = 5;

/// Names the failing cases (rule, case number, direction, file) without their texts: a secrets
/// rule's cases hold secret-shaped strings, which belong in `sluice guardrails test`'s diff, not
/// in a log line or an audit record.
pub fn describe_failures(failures: &[TestFailure]) -> String {
    let named: Vec<String> = failures
        .iter()
        .take(NAMED_FAILURES)
        .map(|f| {
            format!(
                "rule `{}` test #{} on {} ({})",
                f.rule,
                f.case,
                f.direction.as_str(),
                f.file
            )
        })
        .collect();
    let more = failures.len().saturating_sub(named.len());
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(
        "{} rule test(s) fail: {}{more}; `sluice guardrails test` shows each diff",
        failures.len(),
        named.join(", ")
    )
}

/// Compiles `dir` and runs every rule's tests: what a policy must pass to be served.
pub fn load_checked(dir: &Path) -> Result<Arc<Policy>, ReloadError> {
    let policy = Arc::new(Policy::load(dir)?);
    let failures = run_tests(&policy);
    if failures.is_empty() {
        Ok(policy)
    } else {
        Err(ReloadError::TestsFailed(failures))
    }
}

// === impl GuardrailsHandle ===

impl GuardrailsHandle {
    /// Reads, compiles and tests the directory the handle was loaded from, and swaps the policy in
    /// if all of that succeeds. Blocking (file reads, regex compilation): call it from
    /// `spawn_blocking`. The gateway reloads through [`PolicyReloads`] instead, which reads the
    /// directory the running config names.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let dir = self.inner.dir.clone().ok_or(ReloadError::NoDirectory)?;
        self.one_reload(|| self.try_reload(&dir))
    }

    /// Runs `step` under the reload lock (requests never take it), then frees what it left and
    /// counts and logs its outcome.
    fn one_reload(
        &self,
        step: impl FnOnce() -> Result<Reloaded, ReloadError>,
    ) -> Result<Reloaded, ReloadError> {
        let _guard = self
            .inner
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let result = step();
        // A refused policy, the test copies and the compile's scratch are all free now.
        crate::heap::release_free();
        if let Some(m) = &self.inner.metrics {
            let label = match &result {
                Ok(Reloaded::Unchanged(_)) => "unchanged",
                Ok(Reloaded::Swapped { .. }) => "ok",
                Err(_) => "failed",
            };
            m.reloads.with_label_values(&[label]).inc();
        }
        match &result {
            Ok(Reloaded::Swapped { from, to }) => {
                tracing::info!(%from, %to, "guardrail policy reloaded")
            }
            Ok(Reloaded::Unchanged(_)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "guardrail policy reload refused; the previous policy keeps serving")
            }
        }
        result
    }

    fn try_reload(&self, dir: &Path) -> Result<Reloaded, ReloadError> {
        let policy = Arc::new(Policy::load(dir)?);
        let current = self.inner.current.load_full();
        if policy.version() == current.version() {
            return Ok(Reloaded::Unchanged(current.version().to_string()));
        }
        let failures = run_tests(&policy);
        if !failures.is_empty() {
            return Err(ReloadError::TestsFailed(failures));
        }
        Ok(self.swap(policy))
    }

    /// Serves `policy`, which has passed its tests.
    fn swap(&self, policy: Arc<Policy>) -> Reloaded {
        let from = self.inner.current.load().version().to_string();
        if policy.version() == from {
            return Reloaded::Unchanged(from);
        }
        let to = policy.version().to_string();
        self.inner.current.store(policy);
        if let Some(m) = &self.inner.metrics {
            m.set_version(&to);
        }
        Reloaded::Swapped { from, to }
    }
}

// === impl PolicyReloads ===

impl PolicyReloads {
    /// Reloads for `handle`, from `dir` until a config reload names another directory, each
    /// recorded in `audit`.
    pub fn new(handle: GuardrailsHandle, dir: PathBuf, audit: Arc<AuditLog>) -> Self {
        PolicyReloads {
            handle,
            dir: Mutex::new(dir),
            watcher: Mutex::new(None),
            audit,
        }
    }

    /// The directory the next reload reads.
    pub fn dir(&self) -> PathBuf {
        self.dir
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads, compiles and tests the current directory, and swaps the policy in if all of that
    /// succeeds. Blocking: call it from `spawn_blocking`.
    pub fn reload(&self, who: &str) -> Result<Reloaded, ReloadError> {
        // The directory is read under the reload lock, so a reload never serves a directory that
        // a concurrent `install` has just replaced; records are written under it too, in the
        // order the policies were served.
        self.handle.one_reload(|| {
            let dir = self.dir();
            let result = self.handle.try_reload(&dir);
            self.record(who, &dir, &result);
            result
        })
    }

    /// Serves `policy`, loaded from `dir` and already through its tests ([`load_checked`]), and
    /// makes `dir` the directory later reloads read. Blocking: waits for a reload in progress.
    pub fn install(&self, who: &str, dir: PathBuf, policy: Arc<Policy>) -> Reloaded {
        let installed = self.handle.one_reload(|| {
            *self.dir.lock().unwrap_or_else(PoisonError::into_inner) = dir.clone();
            let result = Ok(self.handle.swap(policy));
            self.record(who, &dir, &result);
            result
        });
        installed.unwrap_or_else(|_| Reloaded::Unchanged(self.handle.version().to_string()))
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
            tracing::warn!("no runtime to watch the policy directory on; reloads come from config reloads only");
            return;
        };
        // The task holds the reloads weakly, so dropping the gateway ends it.
        let task = runtime.spawn(watch_loop(Arc::downgrade(self), every));
        *watcher = Some((every, task));
    }

    /// Writes one `policy_reload` record. An error is given as its message, which names files,
    /// keys and failing rules, never a test case's text.
    fn record(&self, who: &str, dir: &Path, result: &Result<Reloaded, ReloadError>) {
        let mut f = Map::new();
        f.insert("who".into(), who.into());
        match result {
            Ok(Reloaded::Swapped { from, to }) => {
                f.insert("result".into(), "ok".into());
                f.insert("from".into(), from.clone().into());
                f.insert("to".into(), to.clone().into());
            }
            Ok(Reloaded::Unchanged(_)) => {
                f.insert("result".into(), "unchanged".into());
            }
            Err(e) => {
                f.insert("result".into(), "error".into());
                f.insert("error".into(), e.to_string().into());
            }
        }
        f.insert(
            "policy_version".into(),
            Value::String(self.handle.version().to_string()),
        );
        f.insert("dir".into(), dir.display().to_string().into());
        self.audit.record("policy_reload", f);
    }
}

impl Drop for PolicyReloads {
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

async fn watch_loop(reloads: Weak<PolicyReloads>, interval: Duration) {
    let Some(dir) = reloads.upgrade().map(|r| r.dir()) else {
        return;
    };
    let mut seen = fingerprint(&dir);
    let mut pending: Option<Vec<(String, u64, Option<SystemTime>)>> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(r) = reloads.upgrade() else { return };
        // The directory a config reload names now: a new one reads as a change.
        let now = fingerprint(&r.dir());
        match pending.take() {
            // Stable for a whole interval after a change: reload.
            Some(p) if p == now => {
                seen = now;
                let _ = tokio::task::spawn_blocking(move || r.reload("watcher")).await;
            }
            _ if now != seen => pending = Some(now),
            _ => {}
        }
    }
}

/// Names, sizes and modification times of the directory's files.
pub(crate) fn fingerprint(dir: &Path) -> Vec<(String, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                out.push((
                    e.path().display().to_string(),
                    meta.len(),
                    meta.modified().ok(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, word: &str) -> String {
        format!(
            "[[rule]]\nid = \"{id}\"\ndescription = \"x\"\nkind = \"regex\"\npattern = \"{word}\"\naction = \"block\"\ndirection = \"input\"\n[[rule.test]]\ntext = \"{word}\"\nexpect = \"block\"\n"
        )
    }

    fn dir_with(name: &str, files: &[(&str, String)]) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sluice-reloads-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (f, text) in files {
            std::fs::write(dir.join(f), text).unwrap();
        }
        dir
    }

    #[test]
    fn install_moves_later_reloads_to_the_new_directory() {
        let first = dir_with("first", &[("a.toml", rule("a", "alpha"))]);
        let second = dir_with("second", &[("b.toml", rule("b", "beta"))]);
        let handle = GuardrailsHandle::load(&first, None, None).unwrap();
        let reloads = PolicyReloads::new(handle.clone(), first.clone(), Arc::default());
        let policy = load_checked(&second).unwrap();
        let to = policy.version().to_string();
        assert!(matches!(
            reloads.install("test", second.clone(), policy),
            Reloaded::Swapped { .. }
        ));
        assert_eq!(&*handle.version(), to);
        assert_eq!(reloads.dir(), second);
        // An edit to the old directory is no longer read; one to the new directory is.
        std::fs::write(first.join("c.toml"), rule("c", "gamma")).unwrap();
        assert!(matches!(reloads.reload("test"), Ok(Reloaded::Unchanged(_))));
        std::fs::write(second.join("c.toml"), rule("c", "gamma")).unwrap();
        assert!(matches!(
            reloads.reload("test"),
            Ok(Reloaded::Swapped { .. })
        ));
        assert!(handle.policy().rules.iter().any(|r| r.id == "c"));
        assert!(handle.policy().rules.iter().all(|r| r.id != "a"));
        let _ = std::fs::remove_dir_all(first);
        let _ = std::fs::remove_dir_all(second);
    }

    #[tokio::test(start_paused = true)]
    async fn the_watcher_follows_the_installed_directory() {
        let first = dir_with("watch-first", &[("a.toml", rule("a", "alpha"))]);
        let second = dir_with("watch-second", &[("b.toml", rule("b", "beta"))]);
        let handle = GuardrailsHandle::load(&first, None, None).unwrap();
        let reloads = Arc::new(PolicyReloads::new(
            handle.clone(),
            first.clone(),
            Arc::default(),
        ));
        let every = Duration::from_millis(100);
        reloads.watch(Some(every));
        // Let the watcher take its first look, at the first directory.
        tokio::time::sleep(every).await;
        let policy = load_checked(&second).unwrap();
        reloads.install("test", second.clone(), policy);
        std::fs::write(second.join("c.toml"), rule("c", "gamma")).unwrap();
        // Virtual time runs the watcher's ticks; the reload itself runs on a blocking thread in
        // real time, so the bound is real time.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !handle.policy().rules.iter().any(|r| r.id == "c") {
            assert!(
                std::time::Instant::now() < deadline,
                "the watcher did not reload the new directory"
            );
            tokio::time::sleep(every).await;
        }
        drop(reloads);
        let _ = std::fs::remove_dir_all(first);
        let _ = std::fs::remove_dir_all(second);
    }
}
