//! The hash chain that makes the audit log tamper-evident.
//!
//! An audit file is evidence only if a reader can tell that nobody took a line out, put one in,
//! moved one or edited one since it was written. So the writer gives every line a `seq`, one more
//! than the line before it, and a `prev`, the hex SHA-256 of the exact bytes of the line before it
//! (without its newline). The first record of a file has `seq` 0 and `prev` [`GENESIS`]. Editing a
//! line breaks the `prev` of the next one; removing, inserting or moving one breaks the `seq`s.
//! Hashing one line of a few hundred bytes costs about a microsecond, on a write that is already
//! a system call, and off the request path (the guardrail decisions' writer thread) or on events
//! that are rare (admin changes, reloads, rollbacks).
//!
//! Restarting a gateway appends to the file it wrote before, so the writer reads the file's last
//! line when it opens it and chains from there. A file whose last line cannot be chained from (cut
//! by a crash mid-write, not JSON, written before the chain existed) is not a reason to refuse to
//! serve: the writer ends that line, then starts a new segment with a `chain_restart` record
//! whose `reason` says what it found, whose `seq` is 0 and whose `prev` is the hash of the line it
//! could not use, so that line is bound into the chain too. `sluice audit verify` accepts a
//! restart only right after a line that is not a record, and reports every one.
//!
//! What the chain cannot show: that the last lines were not dropped, or that the whole file from
//! some line on was not rewritten with fresh hashes. Keeping the last hash (`audit verify` prints
//! it) somewhere the gateway's host cannot write closes that.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `prev` of a file's first record: no line comes before it.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The event of a record that begins a new segment.
pub const RESTART: &str = "chain_restart";

/// The longest line the writer reads back at a file's end, and `audit verify` reads at all. No
/// record comes near it; a longer line is not one of the gateway's.
pub const MAX_LINE: u64 = 1 << 20;

/// How much of a file's end is read at a time, looking for the start of its last line.
const CHUNK: u64 = 8192;

/// The fields of a line that the chain reads; every other field is the event's own.
#[derive(Debug, Deserialize)]
pub struct Fields {
    pub seq: Option<u64>,
    pub prev: Option<String>,
    /// Kept as any JSON value: a record is chained whatever its event writes under these names.
    pub event: Option<Value>,
    pub time: Option<Value>,
    pub reason: Option<Value>,
}

/// One line read as a link of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub seq: u64,
    pub prev: String,
    /// The record starts a new segment.
    pub restart: bool,
    pub time: Option<String>,
    pub reason: Option<String>,
}

/// Why a line is not a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotLink {
    /// Not a JSON object.
    Unparsable(String),
    /// A JSON object without a valid `seq` and `prev`.
    Unchained(String),
}

/// What the end of a file says about the next record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// The file does not end with a newline: write one before the next record, so the next
    /// record is not glued to what is there.
    pub newline: bool,
    /// The file's length when its end was read. A file of another length has been changed
    /// since (by another writer, or emptied by a rotation): read its end again.
    pub len: u64,
    pub next: Next,
}

/// Where the next record chains from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// An empty file: `seq` 0 from [`GENESIS`].
    Genesis,
    /// The last line is a record: the next one follows it.
    After { seq: u64, hash: String },
    /// The last line is not a record: a `chain_restart` record, with `prev` = `hash`, comes first.
    Restart { hash: String, reason: String },
}

// === impl Link ===

impl Link {
    /// Reads the chain fields of one line (without its newline).
    pub fn parse(line: &[u8]) -> Result<Link, NotLink> {
        // A struct also deserializes from a JSON array; a record is an object.
        if line.first() != Some(&b'{') {
            return Err(NotLink::Unparsable(if line.is_empty() {
                "it is empty".into()
            } else {
                "it is not a JSON object".into()
            }));
        }
        let f: Fields = serde_json::from_slice(line)
            .map_err(|e| NotLink::Unparsable(format!("it is not a JSON object: {e}")))?;
        let (Some(seq), Some(prev)) = (f.seq, f.prev) else {
            return Err(NotLink::Unchained(
                "it has no `seq` or no `prev`: it was not written by a chained writer".into(),
            ));
        };
        if !is_hash(&prev) {
            return Err(NotLink::Unchained(
                "its `prev` is not a SHA-256 in lowercase hex".into(),
            ));
        }
        let text = |v: Option<Value>| match v {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        Ok(Link {
            seq,
            prev,
            restart: matches!(&f.event, Some(Value::String(e)) if e == RESTART),
            time: text(f.time),
            reason: text(f.reason),
        })
    }
}

// === impl NotLink ===

impl std::fmt::Display for NotLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotLink::Unparsable(m) | NotLink::Unchained(m) => f.write_str(m),
        }
    }
}

// === impl Tail ===

impl Tail {
    /// Reads the last line of `file` and decides where the next record chains from.
    pub fn read(file: &File) -> io::Result<Tail> {
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(Tail {
                newline: false,
                len,
                next: Next::Genesis,
            });
        }
        let mut last = [0u8];
        read_at(file, len - 1, &mut last)?;
        let newline = last[0] != b'\n';
        let end = if newline { len } else { len - 1 };
        let Some(start) = line_start(file, end)? else {
            return Ok(Tail {
                newline,
                len,
                next: Next::Restart {
                    // Too long to hash at start-up; nothing the writer wrote is that long.
                    hash: GENESIS.into(),
                    reason: format!(
                        "the last line is longer than {MAX_LINE} bytes: it is not a record"
                    ),
                },
            });
        };
        let mut line = vec![0; (end - start) as usize];
        read_at(file, start, &mut line)?;
        let hash = line_hash(&line);
        let next = match Link::parse(&line) {
            Ok(link) => Next::After {
                seq: link.seq,
                hash,
            },
            Err(why) => Next::Restart {
                hash,
                reason: if newline {
                    format!("the last line (at byte {start}) was cut: it has no newline and is not a whole record ({why})")
                } else {
                    format!("the last line (at byte {start}) is not a record: {why}")
                },
            },
        };
        Ok(Tail { newline, len, next })
    }

    /// Where a file whose end could not be read chains from: a restart that binds nothing, which
    /// `audit verify` reports, with the reason written in it.
    pub fn unreadable(e: &io::Error) -> Tail {
        Tail {
            newline: false,
            // Matches no file, so the next record tries to read the end again.
            len: u64::MAX,
            next: Next::Restart {
                hash: GENESIS.into(),
                reason: format!("the end of the file could not be read: {e}"),
            },
        }
    }
}

/// The hex SHA-256 of one line's bytes, without its newline.
pub fn line_hash(line: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(line);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The offset where the line ending at `end` starts, or `None` when it is longer than
/// [`MAX_LINE`].
fn line_start(file: &File, end: u64) -> io::Result<Option<u64>> {
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos = end;
    while pos > 0 {
        if end - pos > MAX_LINE {
            return Ok(None);
        }
        let from = pos.saturating_sub(CHUNK);
        let chunk = &mut buf[..(pos - from) as usize];
        read_at(file, from, chunk)?;
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            return Ok(Some(from + i as u64 + 1));
        }
        pos = from;
    }
    Ok((end <= MAX_LINE).then_some(0))
}

/// Reads exactly `buf.len()` bytes at `offset`. The file is opened for appending, so moving its
/// cursor does not move where records are written.
fn read_at(mut file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tail_of(name: &str, bytes: &[u8]) -> Tail {
        let dir = std::env::temp_dir().join(format!("sluice-chain-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.jsonl");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        let tail = Tail::read(&std::fs::File::open(&path).unwrap()).unwrap();
        let _ = std::fs::remove_dir_all(dir);
        tail
    }

    #[test]
    fn line_hash_is_sha256_hex() {
        assert_eq!(
            line_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_hash(GENESIS));
    }

    #[test]
    fn parse_reads_links_and_refuses_what_is_not_one() {
        let l = Link::parse(format!(r#"{{"event":"x","seq":3,"prev":"{GENESIS}"}}"#).as_bytes())
            .unwrap();
        assert_eq!((l.seq, l.restart), (3, false));
        let r = format!(r#"{{"event":"chain_restart","seq":0,"prev":"{GENESIS}","reason":"cut"}}"#);
        let r = Link::parse(r.as_bytes()).unwrap();
        assert!(r.restart);
        assert_eq!(r.reason.as_deref(), Some("cut"));
        // A future event may use `reason` for something that is not text.
        let o = format!(r#"{{"event":"x","reason":{{"a":1}},"seq":1,"prev":"{GENESIS}"}}"#);
        assert!(Link::parse(o.as_bytes()).is_ok());
        for (bad, unparsable) in [
            (String::new(), true),
            ("not json".into(), true),
            (format!(r#"[1,"{GENESIS}"]"#), true),
            (r#"{"event":"x","seq":1"#.into(), true),
            (format!(r#"{{"seq":1,"seq":2,"prev":"{GENESIS}"}}"#), true),
            (r#"{"event":"x"}"#.into(), false),
            (r#"{"seq":1,"prev":"abc"}"#.into(), false),
            (
                format!(
                    r#"{{"seq":1,"prev":"{}"}}"#,
                    GENESIS.to_uppercase().replace('0', "A")
                ),
                false,
            ),
        ] {
            match Link::parse(bad.as_bytes()) {
                Err(NotLink::Unparsable(_)) => assert!(unparsable, "{bad}"),
                Err(NotLink::Unchained(_)) => assert!(!unparsable, "{bad}"),
                Ok(l) => panic!("{bad} parsed: {l:?}"),
            }
        }
    }

    #[test]
    fn tail_of_an_empty_file_is_genesis() {
        assert_eq!(tail_of("empty", b"").next, Next::Genesis);
    }

    #[test]
    fn tail_follows_the_last_record() {
        let a = format!(r#"{{"seq":0,"prev":"{GENESIS}"}}"#);
        let b = format!(r#"{{"seq":1,"prev":"{}"}}"#, line_hash(a.as_bytes()));
        let t = tail_of("follows", format!("{a}\n{b}\n").as_bytes());
        assert!(!t.newline);
        assert_eq!(
            t.next,
            Next::After {
                seq: 1,
                hash: line_hash(b.as_bytes())
            }
        );
    }

    #[test]
    fn tail_of_a_cut_line_restarts_from_its_bytes() {
        let a = format!(r#"{{"seq":0,"prev":"{GENESIS}"}}"#);
        let t = tail_of("cut", format!("{a}\n{{\"seq\":1,\"pr").as_bytes());
        assert!(t.newline);
        let Next::Restart { hash, reason } = t.next else {
            panic!("{t:?}")
        };
        assert_eq!(hash, line_hash(b"{\"seq\":1,\"pr"));
        assert!(reason.contains("cut"), "{reason}");
        assert!(
            reason.contains(&format!("byte {}", a.len() + 1)),
            "{reason}"
        );
    }

    #[test]
    fn tail_of_a_whole_record_without_its_newline_continues() {
        let a = format!(r#"{{"seq":0,"prev":"{GENESIS}"}}"#);
        let t = tail_of("whole", a.as_bytes());
        assert!(t.newline);
        assert_eq!(
            t.next,
            Next::After {
                seq: 0,
                hash: line_hash(a.as_bytes())
            }
        );
    }

    #[test]
    fn tail_of_an_unchained_line_restarts() {
        let t = tail_of("unchained", b"{\"event\":\"weight_set\"}\n");
        let Next::Restart { hash, reason } = t.next else {
            panic!("{t:?}")
        };
        assert_eq!(hash, line_hash(b"{\"event\":\"weight_set\"}"));
        assert!(reason.contains("`seq`"), "{reason}");
    }

    #[test]
    fn tail_finds_a_line_longer_than_one_read() {
        let long = format!(
            r#"{{"pad":"{}","seq":7,"prev":"{GENESIS}"}}"#,
            "x".repeat(20_000)
        );
        let t = tail_of("long", format!("{{}}\n{long}\n").as_bytes());
        assert_eq!(
            t.next,
            Next::After {
                seq: 7,
                hash: line_hash(long.as_bytes())
            }
        );
        let huge = "x".repeat(MAX_LINE as usize + 10);
        let t = tail_of("huge", huge.as_bytes());
        assert!(
            matches!(t.next, Next::Restart { ref hash, .. } if hash == GENESIS),
            "{t:?}"
        );
    }
}
