//! Hot reload: a new policy is served only once it has proved itself.
//!
//! On SIGHUP or a change in the policy directory, the files are read and compiled and every rule's
//! tests are run, off the request path. Only if all of that succeeds is the new policy swapped in,
//! in one atomic pointer store; requests in flight keep the policy they started with. A broken file
//! is logged and counted and the last good policy keeps serving, so no request ever fails because
//! of a reload. Changes are noticed by polling a cheap fingerprint (names, sizes, modification
//! times) and acted on once it has been stable for one more interval, so an editor's several
//! writes make one reload.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::compile::Policy;
use super::handle::GuardrailsHandle;
use super::policy::PolicyError;
use super::tools::{run_tests, TestFailure};

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
    #[error("{} rule test(s) fail; first:\n{}", .0.len(), .0.first().map(ToString::to_string).unwrap_or_default())]
    TestsFailed(Vec<TestFailure>),
}

// === impl GuardrailsHandle ===

impl GuardrailsHandle {
    /// Reads, compiles and tests the policy directory, and swaps it in if all of that succeeds.
    /// Blocking (file reads, regex compilation): call it from `spawn_blocking` or a signal task.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let dir = self.inner.dir.as_deref().ok_or(ReloadError::NoDirectory)?;
        // One reload at a time; requests never take this lock.
        let _guard = self
            .inner
            .reload_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = self.try_reload(dir);
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
        let to = policy.version().to_string();
        self.inner.current.store(policy);
        if let Some(m) = &self.inner.metrics {
            m.set_version(&to);
        }
        Ok(Reloaded::Swapped {
            from: current.version().to_string(),
            to,
        })
    }

    /// Polls the policy directory every `interval` and reloads after a change has settled.
    /// Returns `None` when the handle has no directory.
    pub fn spawn_watcher(&self, interval: Duration) -> Option<tokio::task::JoinHandle<()>> {
        let dir = self.inner.dir.clone()?;
        let handle = self.clone();
        Some(tokio::spawn(async move {
            let mut seen = fingerprint(&dir);
            let mut pending: Option<Vec<(String, u64, Option<SystemTime>)>> = None;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = fingerprint(&dir);
                match pending.take() {
                    // Stable for a whole interval after a change: reload.
                    Some(p) if p == now => {
                        seen = now;
                        let h = handle.clone();
                        let _ = tokio::task::spawn_blocking(move || h.reload()).await;
                    }
                    _ if now != seen => pending = Some(now),
                    _ => {}
                }
            }
        }))
    }

    /// Reloads on every SIGHUP (Unix only; elsewhere returns `None`).
    pub fn spawn_sighup(&self) -> Option<tokio::task::JoinHandle<()>> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hup = signal(SignalKind::hangup()).ok()?;
            let handle = self.clone();
            Some(tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    let h = handle.clone();
                    let _ = tokio::task::spawn_blocking(move || h.reload()).await;
                }
            }))
        }
        #[cfg(not(unix))]
        {
            None
        }
    }
}

/// Names, sizes and modification times of the directory's files.
fn fingerprint(dir: &Path) -> Vec<(String, u64, Option<SystemTime>)> {
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
