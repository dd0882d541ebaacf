//! The audit log: one JSON line per decision that changes what the gateway serves — an admin
//! change, an automatic canary rollback, a reload — with when, who and what.
//!
//! Records carry names and masked excerpts only; never keys, hashes or raw content. Writes are
//! appended and flushed line by line so a crash loses at most the line being written. A reload
//! opens the file again ([`AuditLog::replace`]), so a changed `[audit] path` is followed, and so is
//! a file that was rotated away.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use serde_json::{Map, Value};

/// An append-only JSONL audit trail. Without a path, records go to the log only.
#[derive(Debug, Default)]
pub struct AuditLog {
    file: Mutex<Option<File>>,
}

impl AuditLog {
    /// Opens (creating) the file at `path`, or a log-only trail without one.
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        let file = match path {
            None => None,
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                Some(OpenOptions::new().create(true).append(true).open(p)?)
            }
        };
        Ok(AuditLog {
            file: Mutex::new(file),
        })
    }

    /// Writes where `next` writes from now on: the file a reload opened.
    pub fn replace(&self, next: AuditLog) {
        let file = next
            .file
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        *self.file.lock().unwrap_or_else(PoisonError::into_inner) = file;
    }

    /// Appends `fields` with a `time` (RFC 3339) and an `event` name.
    pub fn record(&self, event: &str, fields: Map<String, Value>) {
        let mut obj = Map::new();
        obj.insert(
            "time".into(),
            Value::String(humantime::format_rfc3339_millis(SystemTime::now()).to_string()),
        );
        obj.insert("event".into(), Value::String(event.to_owned()));
        obj.extend(fields);
        let line = Value::Object(obj).to_string();
        tracing::info!(target: "sluice::audit", "{line}");
        if let Ok(mut file) = self.file.lock() {
            if let Some(f) = file.as_mut() {
                if let Err(e) = writeln!(f, "{line}").and_then(|()| f.flush()) {
                    tracing::error!(error = %e, "writing the audit log failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_one_json_line_per_record() {
        let dir = std::env::temp_dir().join(format!("sluice-audit-{}", std::process::id()));
        let path = dir.join("audit.jsonl");
        let log = AuditLog::open(Some(&path)).unwrap();
        let mut f = Map::new();
        f.insert("who".into(), "ops".into());
        log.record("weight_set", f.clone());
        log.record("weight_set", f);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "weight_set");
        assert_eq!(lines[0]["who"], "ops");
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn replace_moves_later_records_to_the_new_file() {
        let dir = std::env::temp_dir().join(format!("sluice-audit-replace-{}", std::process::id()));
        let (first, second) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
        let log = AuditLog::open(Some(&first)).unwrap();
        log.record("one", Map::new());
        log.replace(AuditLog::open(Some(&second)).unwrap());
        log.record("two", Map::new());
        let a = std::fs::read_to_string(&first).unwrap();
        let b = std::fs::read_to_string(&second).unwrap();
        assert!(a.contains("\"one\"") && !a.contains("\"two\""), "{a}");
        assert!(b.contains("\"two\"") && !b.contains("\"one\""), "{b}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
