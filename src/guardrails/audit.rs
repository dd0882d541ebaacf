//! The audit log: one JSON line per guardrail decision.
//!
//! A regulated deployment has to show what was blocked or redacted, when, for whom and under
//! which policy, without the log becoming a second copy of the data it protects. So a record holds
//! the rule, action, request id, model, key name and policy version, and an excerpt in which the
//! matched span and every other finding of the policy are replaced by their entity, and whatever
//! else could be data is masked (`super::excerpt`); the raw match is never written.
//! Records are handed to a writer thread through a bounded channel, so a slow disk never stalls a
//! request; when the channel is full the record is dropped and counted.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::{channel, Receiver, Sender};

/// One decision.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditRecord {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub request_id: String,
    pub rule: String,
    pub action: &'static str,
    pub direction: &'static str,
    pub entity: &'static str,
    pub model: String,
    pub key: Option<String>,
    pub policy_version: String,
    /// The span's surroundings, with every finding labelled and anything that could be data
    /// masked.
    pub excerpt: String,
    /// The prompt (`{id, version}`) the request was built from, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<crate::prompts::PromptTag>,
}

/// At most this many records wait for the writer. The channel allocates its slots in small blocks
/// as records arrive, so an idle gateway holds none of them.
const QUEUE: usize = 8192;

/// A handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct DecisionLog {
    tx: Sender<AuditRecord>,
    dropped: Arc<AtomicU64>,
}

// === impl AuditRecord ===

impl AuditRecord {
    /// The current time in the record's format.
    pub fn now() -> String {
        humantime::format_rfc3339_millis(SystemTime::now()).to_string()
    }
}

// === impl DecisionLog ===

impl DecisionLog {
    /// Appends to the file at `path`, creating it, as `"event":"guardrail"` records of an audit
    /// trail of its own: chained, as every audit file is ([`crate::audit::chain`]).
    pub fn open(path: &Path) -> std::io::Result<DecisionLog> {
        let log = crate::audit::AuditLog::open(Some(path))?;
        Ok(Self::forward(Arc::new(log)))
    }

    /// Writes bare records, unchained, to any writer (tests, stdout).
    pub fn to_writer(w: Box<dyn Write + Send>) -> DecisionLog {
        let (tx, rx) = channel(QUEUE);
        std::thread::Builder::new()
            .name("sluice-audit".into())
            .spawn(move || write_loop(rx, std::io::BufWriter::new(w)))
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!(error = %e, "audit writer thread did not start"));
        DecisionLog {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Sends records to the gateway's audit trail ([`crate::audit::AuditLog`]) as
    /// `"event":"guardrail"` lines, from a thread of its own.
    pub fn forward(log: Arc<crate::audit::AuditLog>) -> DecisionLog {
        let (tx, mut rx) = channel::<AuditRecord>(QUEUE);
        std::thread::Builder::new()
            .name("sluice-guardrail-audit".into())
            .spawn(move || {
                while let Some(r) = rx.blocking_recv() {
                    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&r) {
                        log.record("guardrail", fields);
                    }
                }
            })
            .map(|_| ())
            .unwrap_or_else(
                |e| tracing::error!(error = %e, "audit forwarder thread did not start"),
            );
        DecisionLog {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Queues a record; never blocks.
    pub fn record(&self, r: AuditRecord) {
        match self.tx.try_send(r) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Closed(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records dropped because the writer fell behind or stopped.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn write_loop(mut rx: Receiver<AuditRecord>, mut w: impl Write) {
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(r) = next {
            if let Ok(line) = serde_json::to_vec(&r) {
                if w.write_all(&line)
                    .and_then(|()| w.write_all(b"\n"))
                    .is_err()
                {
                    tracing::warn!("audit log write failed");
                }
            }
            next = rx.try_recv().ok();
        }
        // Flush once the queue is drained, so a burst costs one write.
        let _ = w.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_file_of_decisions_is_chained() {
        let dir = std::env::temp_dir().join(format!("sluice-decisions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("decisions.jsonl");
        let log = DecisionLog::open(&path).unwrap();
        log.record(AuditRecord {
            time: AuditRecord::now(),
            request_id: "r1".into(),
            rule: "pii-email".into(),
            action: "redact",
            direction: "input",
            entity: "email",
            model: "m".into(),
            key: None,
            policy_version: "abc".into(),
            excerpt: "mail [EMAIL] now".into(),
            prompt: None,
        });
        drop(log);
        // The forwarder thread writes once it has the record: wait for it, bounded.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let text = loop {
            let t = std::fs::read_to_string(&path).unwrap_or_default();
            if t.ends_with('\n') || std::time::Instant::now() > deadline {
                break t;
            }
            std::thread::yield_now();
        };
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["event"], "guardrail");
        assert_eq!(v["rule"], "pii-email");
        assert_eq!(v["seq"], 0);
        assert_eq!(v["prev"], crate::audit::chain::GENESIS);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn records_are_json_lines() {
        let out = Shared::default();
        let log = DecisionLog::to_writer(Box::new(out.clone()));
        let rec = AuditRecord {
            time: AuditRecord::now(),
            request_id: "r1".into(),
            rule: "pii-email".into(),
            action: "redact",
            direction: "input",
            entity: "email",
            model: "m".into(),
            key: None,
            policy_version: "abc".into(),
            excerpt: "mail [EMAIL] now".into(),
            prompt: None,
        };
        log.record(rec.clone());
        drop(log);
        // The writer thread exits when every sender is gone; poll its output without sleeping on
        // a timer by yielding until the line appears.
        let text = loop {
            let t = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            if t.ends_with('\n') {
                break t;
            }
            std::thread::yield_now();
        };
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["rule"], "pii-email");
        assert_eq!(v["excerpt"], "mail [EMAIL] now");
    }
}
