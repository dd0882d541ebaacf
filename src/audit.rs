//! The audit log: one JSON line per decision that changes what the gateway serves — an admin
//! change, an automatic canary rollback, a reload, a guardrail decision — with when, who and what.
//!
//! Records carry names and masked excerpts only; never keys, key hashes or raw content. Each line
//! is appended with one write, so a crash loses at most the line being written. Every line is a
//! link of a hash chain ([`chain`]) that the writer adds whatever the event, so a removed, moved,
//! inserted or edited line shows (`sluice audit verify`, [`verify`]). A reload opens the file
//! again ([`AuditLog::replace`]), so a changed `[audit] path` is followed, and so is a file that
//! was rotated away; the chain goes on from whatever the file it writes to ends with.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use serde_json::{Map, Value};

pub mod chain;
pub mod verify;

use chain::{Next, Tail};

/// An append-only JSONL audit trail. Without a path, records go to the log only.
#[derive(Debug, Default)]
pub struct AuditLog {
    sink: Mutex<Option<Sink>>,
}

/// The open file and where its next record chains from.
#[derive(Debug)]
struct Sink {
    file: File,
    /// `None` until the file's end has been read: after a replace, since the file may have
    /// grown between its opening and the swap (the log it replaces writes on meanwhile, maybe to
    /// the same file), and after a failed write, which may have left part of a line. It is read
    /// again, too, when the file's length is not the one it describes: someone else truncated
    /// the file (`copytruncate` rotation) or wrote to it.
    tail: Option<Tail>,
}

// === impl AuditLog ===

impl AuditLog {
    /// Opens (creating) the file at `path` and reads its last line, or a log-only trail without
    /// one. Nothing is written until the first record.
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        let sink = match path {
            None => None,
            Some(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .read(true)
                    .open(p)?;
                let tail = Tail::read(&file)?;
                Some(Sink {
                    file,
                    tail: Some(tail),
                })
            }
        };
        Ok(AuditLog {
            sink: Mutex::new(sink),
        })
    }

    /// Writes where `next` writes from now on: the file a reload opened.
    pub fn replace(&self, next: AuditLog) {
        let sink = next
            .sink
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|s| Sink {
                file: s.file,
                tail: None,
            });
        *self.sink.lock().unwrap_or_else(PoisonError::into_inner) = sink;
    }

    /// Appends `fields` with a `time` (RFC 3339) and an `event` name (either of which `fields`
    /// may give), chained by a `seq` and a `prev` (which it may not).
    pub fn record(&self, event: &str, fields: Map<String, Value>) {
        let mut obj = Map::new();
        obj.insert("time".into(), Value::String(now()));
        obj.insert("event".into(), Value::String(event.to_owned()));
        obj.extend(fields);
        let mut sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(sink) = sink.as_mut() else {
            let line = Value::Object(obj).to_string();
            tracing::info!(target: "sluice::audit", "{line}");
            return;
        };
        match sink.append(obj) {
            Ok(lines) => {
                for line in lines {
                    tracing::info!(target: "sluice::audit", "{line}");
                }
            }
            Err(e) => tracing::error!(error = %e, "writing the audit log failed"),
        }
    }
}

// === impl Sink ===

impl Sink {
    /// Writes `obj` as the next link, after a `chain_restart` record when the file's end calls for
    /// one, in a single write. Returns the lines written.
    fn append(&mut self, obj: Map<String, Value>) -> std::io::Result<Vec<String>> {
        // One `fstat` per record, so that a rotation that empties the file in place starts a
        // fresh chain rather than one that seems to have lost its beginning.
        let len = self.file.metadata()?.len();
        let tail = match self.tail.take() {
            Some(t) if t.len == len => t,
            _ => Tail::read(&self.file).unwrap_or_else(|e| Tail::unreadable(&e)),
        };
        let mut out = Vec::with_capacity(512);
        let mut lines = Vec::with_capacity(1);
        if tail.newline {
            out.push(b'\n');
        }
        let (seq, prev) = match tail.next {
            Next::Genesis => (0, chain::GENESIS.to_owned()),
            Next::After { seq, hash } => (seq + 1, hash),
            Next::Restart { hash, reason } => {
                tracing::warn!(%reason, "the audit log's last line cannot be chained from: a new segment starts");
                let mut restart = Map::new();
                restart.insert("time".into(), Value::String(now()));
                restart.insert("event".into(), chain::RESTART.into());
                restart.insert("reason".into(), reason.into());
                let line = link(restart, 0, hash);
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
                let hash = chain::line_hash(line.as_bytes());
                lines.push(line);
                (1, hash)
            }
        };
        let line = link(obj, seq, prev);
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        // `tail` stays `None` on failure: the next record reads what part of this write landed.
        self.file.write_all(&out)?;
        self.tail = Some(Tail {
            newline: false,
            len: len + out.len() as u64,
            next: Next::After {
                seq,
                hash: chain::line_hash(line.as_bytes()),
            },
        });
        lines.push(line);
        Ok(lines)
    }
}

/// `obj` as one line, with the chain's fields set last so no event can set them.
fn link(mut obj: Map<String, Value>, seq: u64, prev: String) -> String {
    obj.insert("seq".into(), seq.into());
    obj.insert("prev".into(), prev.into());
    Value::Object(obj).to_string()
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Each line's `seq` and `prev`.
    fn links(path: &Path) -> Vec<(u64, String)> {
        lines(path)
            .iter()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["seq"].as_u64().unwrap(),
                    v["prev"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn each_record_chains_from_the_line_before_it() {
        let dir = scratch("chain");
        let path = dir.join("audit.jsonl");
        let log = AuditLog::open(Some(&path)).unwrap();
        for who in ["a", "b", "c"] {
            let mut f = Map::new();
            f.insert("who".into(), who.into());
            log.record("weight_set", f);
        }
        let text = lines(&path);
        let links = links(&path);
        assert_eq!(links[0], (0, chain::GENESIS.to_owned()));
        assert_eq!(links[1], (1, chain::line_hash(text[0].as_bytes())));
        assert_eq!(links[2], (2, chain::line_hash(text[1].as_bytes())));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_writer_owns_seq_and_prev() {
        let dir = scratch("owns");
        let path = dir.join("audit.jsonl");
        let log = AuditLog::open(Some(&path)).unwrap();
        let mut f = Map::new();
        f.insert("seq".into(), 99.into());
        f.insert("prev".into(), "forged".into());
        log.record("weight_set", f);
        assert_eq!(links(&path), vec![(0, chain::GENESIS.to_owned())]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn reopening_continues_the_chain() {
        let dir = scratch("reopen");
        let path = dir.join("audit.jsonl");
        let log = AuditLog::open(Some(&path)).unwrap();
        log.record("one", Map::new());
        log.record("two", Map::new());
        drop(log);
        AuditLog::open(Some(&path))
            .unwrap()
            .record("three", Map::new());
        let text = lines(&path);
        assert_eq!(links(&path)[2], (2, chain::line_hash(text[1].as_bytes())));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_cut_last_line_is_ended_and_a_new_segment_binds_it() {
        let dir = scratch("cut");
        let path = dir.join("audit.jsonl");
        AuditLog::open(Some(&path))
            .unwrap()
            .record("one", Map::new());
        // A crash in the middle of the second line.
        let cut = r#"{"event":"two","seq":1,"pr"#;
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(cut.as_bytes())
            .unwrap();
        let log = AuditLog::open(Some(&path)).unwrap();
        log.record("three", Map::new());
        log.record("four", Map::new());
        let text = lines(&path);
        assert_eq!(text.len(), 5, "{text:?}");
        assert_eq!(
            text[1], cut,
            "the cut line is ended, not glued to the next record"
        );
        let restart: Value = serde_json::from_str(&text[2]).unwrap();
        assert_eq!(restart["event"], chain::RESTART);
        assert_eq!(restart["seq"], 0);
        assert_eq!(restart["prev"], chain::line_hash(cut.as_bytes()));
        assert!(
            restart["reason"].as_str().unwrap().contains("cut"),
            "{restart}"
        );
        assert!(restart["time"].is_string());
        let three: Value = serde_json::from_str(&text[3]).unwrap();
        assert_eq!(three["event"], "three");
        assert_eq!(three["seq"], 1);
        assert_eq!(three["prev"], chain::line_hash(text[2].as_bytes()));
        let four: Value = serde_json::from_str(&text[4]).unwrap();
        assert_eq!(four["seq"], 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_file_from_before_the_chain_gets_a_new_segment() {
        let dir = scratch("unchained");
        let path = dir.join("audit.jsonl");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, "{\"event\":\"weight_set\",\"time\":\"t\"}\n").unwrap();
        AuditLog::open(Some(&path))
            .unwrap()
            .record("one", Map::new());
        let text = lines(&path);
        let restart: Value = serde_json::from_str(&text[1]).unwrap();
        assert_eq!(restart["event"], chain::RESTART);
        assert_eq!(restart["prev"], chain::line_hash(text[0].as_bytes()));
        assert!(
            restart["reason"].as_str().unwrap().contains("`seq`"),
            "{restart}"
        );
        let seqs: Vec<Value> = text[1..]
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].clone())
            .collect();
        assert_eq!(seqs, [0, 1]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn replace_on_the_same_file_continues_after_records_written_meanwhile() {
        let dir = scratch("replace-same");
        let path = dir.join("audit.jsonl");
        let log = AuditLog::open(Some(&path)).unwrap();
        log.record("one", Map::new());
        // A reload opens the file, and records go on being written before it is swapped in.
        let next = AuditLog::open(Some(&path)).unwrap();
        log.record("two", Map::new());
        log.replace(next);
        log.record("three", Map::new());
        let text = lines(&path);
        assert_eq!(links(&path)[2], (2, chain::line_hash(text[1].as_bytes())));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_file_truncated_under_the_writer_starts_again_from_genesis() {
        // `logrotate`'s `copytruncate` empties the file the gateway keeps open.
        let dir = scratch("truncated");
        let path = dir.join("audit.jsonl");
        let log = AuditLog::open(Some(&path)).unwrap();
        log.record("one", Map::new());
        log.record("two", Map::new());
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        log.record("three", Map::new());
        assert_eq!(links(&path), vec![(0, chain::GENESIS.to_owned())]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_line_written_by_someone_else_is_bound_by_a_restart() {
        let dir = scratch("foreign");
        let path = dir.join("audit.jsonl");
        let log = AuditLog::open(Some(&path)).unwrap();
        log.record("one", Map::new());
        let foreign = "not a record";
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(format!("{foreign}\n").as_bytes())
            .unwrap();
        log.record("two", Map::new());
        let text = lines(&path);
        let restart: Value = serde_json::from_str(&text[2]).unwrap();
        assert_eq!(restart["event"], chain::RESTART, "{text:?}");
        assert_eq!(restart["prev"], chain::line_hash(foreign.as_bytes()));
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
        assert_eq!(links(&second), vec![(0, chain::GENESIS.to_owned())]);
        let _ = std::fs::remove_dir_all(dir);
    }
}
