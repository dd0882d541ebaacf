//! Checking an audit file's chain from its first line to its last (`sluice audit verify`).
//!
//! The verdict names the first line that is wrong and how, in the words an auditor needs: which
//! line was edited, before which line records were taken out, which line is not a record at all.
//! A line's own fields cannot show it was edited (whoever edits it can edit them too); the next
//! line's `prev` can. So an edit is seen one line late and the verifier looks one line ahead to
//! tell an edited line from an edited `prev`. The file is read as a stream, one line at a time,
//! so a large file costs its reading, not its size in memory.

use std::io::{self, BufRead, Read};

use serde::Serialize;

use super::chain::{self, Link, NotLink, GENESIS, MAX_LINE};

/// An intact chain.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Lines that are links of the chain, `chain_restart` records included.
    pub records: u64,
    /// Runs of the chain: one from the first line, and one from each restart.
    pub segments: u64,
    /// The `time` of the first and the last record.
    pub first_time: Option<String>,
    pub last_time: Option<String>,
    /// The hash of the last line. The chain cannot show that lines were dropped from the end;
    /// this hash, kept elsewhere, can.
    pub last_hash: Option<String>,
    /// Where the writer started a new segment, and why.
    pub restarts: Vec<Restart>,
}

/// A `chain_restart` record, which binds the line before it (one that is not a record).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Restart {
    pub line: u64,
    pub reason: Option<String>,
}

/// The first line at which the chain does not hold.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Break {
    /// 1-based.
    pub line: u64,
    pub kind: BreakKind,
    /// What is wrong and what it means, naming the line.
    pub message: String,
}

/// How the chain breaks.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    /// Not a JSON object.
    Unparsable,
    /// A JSON object without the chain's `seq` and `prev`.
    Unchained,
    /// The last line has no newline and is not a whole record.
    Cut,
    /// Longer than [`MAX_LINE`]: not a record.
    TooLong,
    /// The first line does not begin a chain: lines before it were removed.
    Start,
    /// `seq` skips ahead: records before this line were removed (or moved).
    SeqGap,
    /// `seq` goes back or repeats: this line was inserted, copied or moved.
    SeqOrder,
    /// The line's bytes are not what the next line's `prev` hashed.
    Altered,
    /// A `chain_restart` where the line before it is an intact record.
    Restart,
}

/// Checks the chain of the audit file read from `input`. The outer error is a failure to read.
pub fn verify(input: impl BufRead) -> io::Result<Result<Summary, Break>> {
    let mut input = input;
    let mut checker = Checker::default();
    let mut buf = Vec::new();
    let mut no = 0u64;
    loop {
        buf.clear();
        let n = (&mut input)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        no += 1;
        let terminated = buf.last() == Some(&b'\n');
        if terminated {
            buf.pop();
        }
        let long = !terminated && buf.len() as u64 > MAX_LINE;
        if let Err(b) = checker.line(no, &buf, terminated, long) {
            return Ok(Err(b));
        }
    }
    Ok(checker.finish())
}

/// The state between two lines.
#[derive(Default)]
struct Checker {
    summary: Summary,
    prev: Prev,
    /// A line whose `prev` is not the hash of the line before it; the next line tells which of
    /// the two was edited.
    suspect: Option<Suspect>,
}

#[derive(Default)]
enum Prev {
    #[default]
    Start,
    /// An intact record.
    Link { seq: u64, hash: String },
    /// A line that is not a record: a break unless a restart binding it comes next.
    NotLink { why: Break, hash: String },
}

struct Suspect {
    line: u64,
    seq: u64,
    hash: String,
}

// === impl Checker ===

impl Checker {
    fn line(&mut self, no: u64, bytes: &[u8], terminated: bool, long: bool) -> Result<(), Break> {
        let parsed = if long {
            Err(NotLink::Unparsable(String::new()))
        } else {
            Link::parse(bytes)
        };
        if let Some(s) = self.suspect.take() {
            // The next line links to the suspect's `seq` but not to its bytes: the suspect
            // itself changed. Otherwise the line before it did.
            let suspect_changed =
                matches!(&parsed, Ok(l) if !l.restart && l.seq == s.seq + 1 && l.prev != s.hash);
            return Err(if suspect_changed {
                altered(s.line, format!("its `prev` is not the hash of line {}, and its hash is not the `prev` of line {}", s.line - 1, s.line + 1))
            } else {
                altered(
                    s.line - 1,
                    format!("its hash is not the `prev` that line {} carries", s.line),
                )
            });
        }
        if long {
            return Err(self.not_link_before().unwrap_or_else(|| Break {
                line: no,
                kind: BreakKind::TooLong,
                message: format!("line {no} is longer than {MAX_LINE} bytes: it is not a record"),
            }));
        }
        let hash = chain::line_hash(bytes);
        let link = match parsed {
            Ok(link) => link,
            Err(why) => {
                if let Some(before) = self.not_link_before() {
                    return Err(before);
                }
                let (kind, message) = match why {
                    _ if !terminated => (
                        BreakKind::Cut,
                        format!("line {no}, the last, is cut: it has no newline and is not a whole record ({why}); the writer stopped in the middle of it or the file was truncated, and the gateway starts a new segment after it when it next opens the file"),
                    ),
                    NotLink::Unparsable(_) => (
                        BreakKind::Unparsable,
                        format!("line {no} is not a record: {why}"),
                    ),
                    NotLink::Unchained(_) => (
                        BreakKind::Unchained,
                        format!("line {no} is not a link of the chain: {why}; it was inserted, or written before the chain"),
                    ),
                };
                self.prev = Prev::NotLink {
                    why: Break {
                        line: no,
                        kind,
                        message,
                    },
                    hash,
                };
                return Ok(());
            }
        };
        match std::mem::take(&mut self.prev) {
            Prev::Start => {
                if link.seq != 0 || link.prev != GENESIS {
                    return Err(Break {
                        line: no,
                        kind: BreakKind::Start,
                        message: format!("line {no} does not begin a chain (seq {}, `prev` not the genesis value): lines before it were removed", link.seq),
                    });
                }
                self.summary.segments = 1;
            }
            Prev::Link { seq, hash: before } => {
                if link.restart {
                    return Err(Break {
                        line: no,
                        kind: BreakKind::Restart,
                        message: format!("line {no} restarts the chain after line {}, which is an intact record: a restart follows only a line that is not one", no - 1),
                    });
                }
                let due = seq + 1;
                if link.seq > due {
                    return Err(Break {
                        line: no,
                        kind: BreakKind::SeqGap,
                        message: format!("line {no} has seq {} where seq {due} was due: {} record(s) before it were removed, or lines were moved", link.seq, link.seq - due),
                    });
                }
                if link.seq < due {
                    return Err(Break {
                        line: no,
                        kind: BreakKind::SeqOrder,
                        message: format!("line {no} has seq {} after seq {seq}: it was inserted, copied or moved", link.seq),
                    });
                }
                if link.prev != before {
                    self.suspect = Some(Suspect {
                        line: no,
                        seq: link.seq,
                        hash,
                    });
                    return Ok(());
                }
            }
            Prev::NotLink { why, hash: before } => {
                if !(link.restart && link.seq == 0 && link.prev == before) {
                    return Err(why);
                }
                self.summary.segments += 1;
                self.summary.restarts.push(Restart {
                    line: no,
                    reason: link.reason.clone(),
                });
            }
        }
        self.summary.records += 1;
        if self.summary.first_time.is_none() {
            self.summary.first_time = link.time.clone();
        }
        self.summary.last_time = link.time;
        self.summary.last_hash = Some(hash.clone());
        self.prev = Prev::Link {
            seq: link.seq,
            hash,
        };
        Ok(())
    }

    /// The break a line that is not a record left, when the current line cannot be the restart
    /// that binds it.
    fn not_link_before(&mut self) -> Option<Break> {
        match std::mem::take(&mut self.prev) {
            Prev::NotLink { why, .. } => Some(why),
            other => {
                self.prev = other;
                None
            }
        }
    }

    fn finish(mut self) -> Result<Summary, Break> {
        if let Some(s) = self.suspect.take() {
            return Err(altered(s.line - 1, format!("its hash is not the `prev` that line {} (the last) carries, or that `prev` was changed", s.line)));
        }
        if let Some(why) = self.not_link_before() {
            return Err(why);
        }
        Ok(self.summary)
    }
}

fn altered(line: u64, how: String) -> Break {
    Break {
        line,
        kind: BreakKind::Altered,
        message: format!("line {line} was altered: {how}"),
    }
}

// === impl Summary ===

impl std::fmt::Display for Summary {
    /// One line: what was checked, the span of time, where the chain restarted, the last hash.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = |n: u64, one: &str, many: &str| {
            if n == 1 {
                format!("{n} {one}")
            } else {
                format!("{n} {many}")
            }
        };
        write!(
            f,
            "{} in {}",
            plural(self.records, "record", "records"),
            plural(self.segments, "segment", "segments")
        )?;
        if !self.restarts.is_empty() {
            let lines: Vec<String> = self.restarts.iter().map(|r| r.line.to_string()).collect();
            write!(f, " (restarted at line {})", lines.join(", "))?;
        }
        if let (Some(first), Some(last)) = (&self.first_time, &self.last_time) {
            write!(f, ", {first} to {last}")?;
        }
        if let Some(h) = &self.last_hash {
            write!(f, ", last hash {h}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, Value};

    /// `n` records as the writer chains them, one segment.
    fn chain(n: usize) -> Vec<String> {
        let mut lines: Vec<String> = Vec::new();
        for i in 0..n {
            let prev = lines
                .last()
                .map(|l| chain::line_hash(l.as_bytes()))
                .unwrap_or_else(|| GENESIS.to_owned());
            let mut obj = Map::new();
            obj.insert("time".into(), format!("2026-01-01T00:00:0{i}.000Z").into());
            obj.insert("event".into(), "weight_set".into());
            obj.insert("who".into(), "ops".into());
            lines.push(super::super::link(obj, i as u64, prev));
        }
        lines
    }

    fn check(lines: &[String]) -> Result<Summary, Break> {
        let mut text = lines.join("\n");
        text.push('\n');
        verify(text.as_bytes()).unwrap()
    }

    fn broken(lines: &[String]) -> Break {
        check(lines).expect_err("the chain held")
    }

    #[test]
    fn an_intact_chain_passes_with_its_span_and_last_hash() {
        let lines = chain(5);
        let s = check(&lines).unwrap();
        assert_eq!((s.records, s.segments), (5, 1));
        assert_eq!(s.first_time.as_deref(), Some("2026-01-01T00:00:00.000Z"));
        assert_eq!(s.last_time.as_deref(), Some("2026-01-01T00:00:04.000Z"));
        assert_eq!(s.last_hash, Some(chain::line_hash(lines[4].as_bytes())));
        assert_eq!(
            s.to_string(),
            format!(
                "5 records in 1 segment, 2026-01-01T00:00:00.000Z to 2026-01-01T00:00:04.000Z, last hash {}",
                chain::line_hash(lines[4].as_bytes())
            )
        );
        assert_eq!(verify(&b""[..]).unwrap(), Ok(Summary::default()));
    }

    #[test]
    fn an_edited_value_names_the_edited_line() {
        for at in [0, 2, 3] {
            let mut lines = chain(5);
            lines[at] = lines[at].replace("\"ops\"", "\"opz\"");
            let b = broken(&lines);
            assert_eq!(
                (b.line, b.kind),
                (at as u64 + 1, BreakKind::Altered),
                "{b:?}"
            );
            assert!(
                b.message
                    .starts_with(&format!("line {} was altered", at + 1)),
                "{b:?}"
            );
        }
        // The last line has no successor to give it away; its hash does.
        let mut lines = chain(5);
        let before = check(&lines).unwrap().last_hash;
        lines[4] = lines[4].replace("\"ops\"", "\"opz\"");
        assert_ne!(check(&lines).unwrap().last_hash, before);
    }

    #[test]
    fn an_edited_prev_names_its_own_line() {
        let mut lines = chain(5);
        let other = chain::line_hash(b"something else");
        let v: Value = serde_json::from_str(&lines[2]).unwrap();
        lines[2] = lines[2].replace(v["prev"].as_str().unwrap(), &other);
        let b = broken(&lines);
        assert_eq!((b.line, b.kind), (3, BreakKind::Altered), "{b:?}");
    }

    #[test]
    fn a_removed_line_names_the_line_after_it() {
        let mut lines = chain(5);
        lines.remove(2);
        let b = broken(&lines);
        assert_eq!((b.line, b.kind), (3, BreakKind::SeqGap), "{b:?}");
        assert!(
            b.message.contains("1 record(s) before it were removed"),
            "{b:?}"
        );

        let mut lines = chain(5);
        lines.remove(0);
        let b = broken(&lines);
        assert_eq!((b.line, b.kind), (1, BreakKind::Start), "{b:?}");
    }

    #[test]
    fn moved_copied_and_inserted_lines_are_named() {
        let mut lines = chain(5);
        lines.swap(1, 2);
        assert_eq!(broken(&lines).line, 2);

        let mut lines = chain(5);
        lines.insert(2, lines[1].clone());
        let b = broken(&lines);
        assert_eq!((b.line, b.kind), (3, BreakKind::SeqOrder), "{b:?}");

        let mut lines = chain(5);
        lines.insert(2, r#"{"event":"weight_set","who":"mallory"}"#.into());
        let b = broken(&lines);
        assert_eq!((b.line, b.kind), (3, BreakKind::Unchained), "{b:?}");

        let mut lines = chain(5);
        lines[3].pop();
        let b = broken(&lines);
        assert_eq!((b.line, b.kind), (4, BreakKind::Unparsable), "{b:?}");

        let mut lines = chain(5);
        lines.insert(1, String::new());
        let b = broken(&lines);
        assert_eq!((b.line, b.kind), (2, BreakKind::Unparsable), "{b:?}");
    }

    #[test]
    fn a_cut_last_line_breaks_until_a_restart_binds_it() {
        let lines = chain(3);
        let text = format!("{}\n{}", lines.join("\n"), &lines[2][..10]);
        let b = verify(text.as_bytes()).unwrap().unwrap_err();
        assert_eq!((b.line, b.kind), (4, BreakKind::Cut), "{b:?}");
        // A whole record that lacks only its newline is intact.
        assert_eq!(
            verify(lines.join("\n").as_bytes())
                .unwrap()
                .unwrap()
                .records,
            3
        );
    }

    #[test]
    fn the_writers_restart_after_a_cut_line_is_a_new_segment() {
        let dir =
            std::env::temp_dir().join(format!("sluice-verify-restart-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("audit.jsonl");
        let log = super::super::AuditLog::open(Some(&path)).unwrap();
        log.record("one", Map::new());
        log.record("two", Map::new());
        drop(log);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map(|mut f| std::io::Write::write_all(&mut f, br#"{"event":"thr"#))
            .unwrap()
            .unwrap();
        super::super::AuditLog::open(Some(&path))
            .unwrap()
            .record("four", Map::new());
        let read = || verify(std::io::BufReader::new(std::fs::File::open(&path).unwrap())).unwrap();
        let s = read().unwrap();
        assert_eq!((s.records, s.segments), (4, 2), "{s:?}");
        assert_eq!(s.restarts.len(), 1);
        assert_eq!(s.restarts[0].line, 4);
        assert!(
            s.restarts[0].reason.as_deref().unwrap().contains("cut"),
            "{s:?}"
        );
        assert!(s.to_string().contains("(restarted at line 4)"), "{s}");

        // The restart binds the line it follows: change that line and it shows.
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(r#"{"event":"thr"#, r#"{"event":"thX"#);
        let b = verify(text.as_bytes()).unwrap().unwrap_err();
        assert_eq!((b.line, b.kind), (3, BreakKind::Unparsable), "{b:?}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_restart_after_an_intact_record_breaks() {
        let mut lines = chain(3);
        let mut obj = Map::new();
        obj.insert("event".into(), chain::RESTART.into());
        let hash = chain::line_hash(lines[2].as_bytes());
        lines.push(super::super::link(obj, 0, hash));
        let b = broken(&lines);
        assert_eq!((b.line, b.kind), (4, BreakKind::Restart), "{b:?}");
    }

    #[test]
    fn a_line_longer_than_any_record_breaks_without_being_held() {
        let mut lines = chain(2);
        lines.push("x".repeat(MAX_LINE as usize + 5));
        let b = broken(&lines);
        assert_eq!((b.line, b.kind), (3, BreakKind::TooLong), "{b:?}");
    }
}
