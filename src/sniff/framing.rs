//! Where each HTTP/1.1 request head begins and ends on a connection, followed on the bytes hyper
//! reads, so that what hyper accepts but RFC 9112 lets a server refuse can be refused:
//! - a line of the head that ends in a bare LF: httparse takes `\n` alone as a line end, and a
//!   proxy in front that does not sees a different request (the stuff of request smuggling);
//! - a `Transfer-Encoding` other than exactly one `chunked` (hyper takes `identity, chunked`,
//!   `chunked, chunked` and two such headers as chunked), or one beside a `Content-Length`
//!   (hyper drops the length and reads the body as chunked).
//!
//! hyper shows neither a head's bytes nor its headers as sent (the length it drops is gone from
//! the request), so the check watches the connection's reads instead. On a kept-alive connection
//! the next head begins where the body ends, so the reader follows the body's framing as well: a
//! `Content-Length` body is skipped by count, a chunked one walked with hyper's own grammar. A
//! head costs one memchr per line and a look at the lines that begin `content-length:` or
//! `transfer-encoding:`; body bytes are not looked at, and nothing is allocated.
//!
//! The reader sees the bytes as hyper reads them, before hyper parses them, so the verdict on
//! head `k` is ready when hyper hands request `k` to the service ([`HeadReport::verdict`]). Where
//! the reader cannot follow the framing (framing hyper refuses too, short of a bug here), it
//! stops, and the request it stopped at is the connection's last: its response closes the
//! connection, so no head is served unchecked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::Error;

/// The longest start of a line kept across two reads: enough for `transfer-encoding: chunked` or a
/// `content-length` of twenty digits with room for spaces. A longer line of either is refused or
/// not followed (see [`Framing::header`]).
const KEPT: usize = 64;

/// [`HeadReport::first`] before anything was found.
const NOTHING: u64 = u64::MAX;

/// What the reader found at a head, stored in two bits beside the request's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finding {
    BareLf = 0,
    TransferEncoding = 1,
    TransferEncodingWithLength = 2,
    /// The reader could not follow the framing from here on.
    Lost = 3,
}

/// What the reader of one connection found, told to the service that answers its requests.
#[derive(Debug)]
pub struct HeadReport {
    /// The first finding, as `request << 2 | finding`, or [`NOTHING`]. Written once, by the reader.
    first: AtomicU64,
}

/// What to do with one request of the connection.
#[derive(Debug)]
pub enum Verdict {
    Serve,
    /// Serve it, and close the connection after it: the next head would go unchecked.
    ServeThenClose,
    /// Answer with this error (400), and close the connection.
    Refuse(Error),
}

/// Follows the request framing of one HTTP/1.1 connection.
#[derive(Debug)]
pub struct Framing {
    report: Arc<HeadReport>,
    /// The request (from 0) whose head or body is being read.
    request: u64,
    state: State,
    head: Head,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    /// A `Content-Length` body with this many bytes to come.
    Length(u64),
    Chunked(Chunk),
    /// Something was found: the connection ends with the request it was found at.
    Stopped,
}

/// Where a chunked body is, as hyper's decoder (`proto/h1/decode.rs`) walks it: the same states,
/// the same bytes accepted. The size being read rides along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

/// What the head read so far says.
#[derive(Debug)]
struct Head {
    /// The request line was seen; empty lines before it are skipped, as hyper does.
    started: bool,
    /// The start of the line the last read ended in, and that line's whole length so far.
    kept: [u8; KEPT],
    kept_len: usize,
    /// The last byte of that line, kept or not: the CR its LF may come after.
    last: u8,
    length: Length,
    /// `Content-Length` lines, valid or not.
    has_length: bool,
    /// `Transfer-Encoding` lines, and whether each said exactly `chunked`.
    te_lines: u32,
    te_chunked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Length {
    Absent,
    Is(u64),
    /// Unreadable, or two that differ: hyper refuses the request.
    Invalid,
}

// === impl HeadReport ===

impl HeadReport {
    /// The verdict on request `request` (from 0) of the connection.
    pub fn verdict(&self, request: u64) -> Verdict {
        let first = self.first.load(Ordering::Acquire);
        if first == NOTHING {
            return Verdict::Serve;
        }
        let at = first >> 2;
        if request < at {
            return Verdict::Serve;
        }
        if request > at {
            return Verdict::ServeThenClose;
        }
        match first & 3 {
            0 => Verdict::Refuse(Error::invalid_code(
                "invalid_line_ending",
                "A line of the request head ends in a bare LF; lines must end in CRLF.",
            )),
            1 => Verdict::Refuse(Error::invalid_code(
                "invalid_transfer_encoding",
                "Transfer-Encoding must be `chunked`, given once and alone.",
            )),
            2 => Verdict::Refuse(Error::invalid_code(
                "invalid_transfer_encoding",
                "A request may not carry both Transfer-Encoding and Content-Length.",
            )),
            _ => Verdict::ServeThenClose,
        }
    }
}

// === impl Framing ===

impl Framing {
    /// A reader for a new connection, and the report it writes to.
    pub fn new() -> (Framing, Arc<HeadReport>) {
        let report = Arc::new(HeadReport {
            first: AtomicU64::new(NOTHING),
        });
        let framing = Framing {
            report: report.clone(),
            request: 0,
            state: State::Head,
            head: Head::new(),
        };
        (framing, report)
    }

    /// Follows `bytes`, the next ones read from the connection.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let used = match self.state {
                State::Stopped => return,
                State::Head => self.read_head(bytes),
                State::Length(left) => {
                    let n = usize::try_from(left).map_or(bytes.len(), |l| l.min(bytes.len()));
                    if n as u64 == left {
                        self.next_request();
                    } else {
                        self.state = State::Length(left - n as u64);
                    }
                    n
                }
                State::Chunked(at) => self.read_chunked(at, bytes),
            };
            bytes = &bytes[used..];
        }
    }

    /// Whether bytes of a head have come that its end has not: false between requests, when
    /// the client has sent nothing of the next one.
    pub fn head_begun(&self) -> bool {
        self.state == State::Head && (self.head.started || self.head.kept_len > 0)
    }

    fn stop(&mut self, finding: Finding) {
        self.report
            .first
            .store(self.request << 2 | finding as u64, Ordering::Release);
        self.state = State::Stopped;
    }

    fn next_request(&mut self) {
        self.request += 1;
        self.state = State::Head;
    }

    /// Reads head lines from `bytes`; returns how many bytes the head took.
    fn read_head(&mut self, bytes: &[u8]) -> usize {
        let mut at = 0;
        // One iterator over the read rather than a search per line: most lines are short, and
        // a search's setup would cost more than its scan.
        for lf in memchr::memchr_iter(b'\n', bytes) {
            let piece = &bytes[at..lf];
            at = lf + 1;
            let end = if self.head.kept_len == 0 && self.head.started {
                // The usual line, whole in this read: only its last and first bytes are looked at.
                match piece {
                    [b'\r'] => true,
                    [first, .., b'\r'] => {
                        if matches!(first | 0x20, b'c' | b't') {
                            self.header(&piece[..piece.len() - 1], true);
                        }
                        false
                    }
                    _ => {
                        self.stop(Finding::BareLf);
                        return bytes.len();
                    }
                }
            } else {
                let cr = match piece.last() {
                    Some(&b) => b == b'\r',
                    None => self.head.kept_len > 0 && self.head.last == b'\r',
                };
                if !cr {
                    self.stop(Finding::BareLf);
                    return bytes.len();
                }
                self.line(piece)
            };
            if end {
                self.end_head();
                return at;
            }
        }
        self.head.keep(&bytes[at..]);
        bytes.len()
    }

    /// One whole line: what was kept of it, then `piece` up to its LF (which ends in CR).
    /// Returns whether it is the blank line that ends the head.
    fn line(&mut self, piece: &[u8]) -> bool {
        let kept = std::mem::take(&mut self.head.kept_len);
        if kept + piece.len() == 1 {
            // Just the CR: blank. Before the request line it is skipped, after it ends the head.
            return self.head.started;
        }
        if !self.head.started {
            self.head.started = true;
            return false;
        }
        if kept == 0 {
            self.header(&piece[..piece.len() - 1], true);
            return false;
        }
        let mut joined = [0u8; KEPT];
        let have = kept.min(KEPT);
        joined[..have].copy_from_slice(&self.head.kept[..have]);
        let take = piece.len().min(KEPT - have);
        joined[have..have + take].copy_from_slice(&piece[..take]);
        let whole = kept <= KEPT && take == piece.len();
        // A whole line ends in its CR, which is not part of it.
        let n = have + take - usize::from(whole);
        self.header(&joined[..n], whole);
        false
    }

    /// A header line (without CR). `whole`: all of it is here, not only its start.
    fn header(&mut self, line: &[u8], whole: bool) {
        const CONTENT_LENGTH: &[u8] = b"content-length:";
        const TRANSFER_ENCODING: &[u8] = b"transfer-encoding:";
        let head = &mut self.head;
        // The colon's place tells most other headers apart before the names are compared.
        let colon_at = |name: &[u8]| line.get(name.len() - 1) == Some(&b':');
        match line.first().map(|b| b | 0x20) {
            Some(b'c')
                if colon_at(CONTENT_LENGTH) && starts_with_ignore_case(line, CONTENT_LENGTH) =>
            {
                let n = if whole {
                    digits(trim(&line[CONTENT_LENGTH.len()..]))
                } else {
                    None
                };
                head.has_length = true;
                head.length = match (head.length, n) {
                    (Length::Absent, Some(n)) => Length::Is(n),
                    (Length::Is(m), Some(n)) if m == n => Length::Is(m),
                    _ => Length::Invalid,
                };
            }
            Some(b't')
                if colon_at(TRANSFER_ENCODING)
                    && starts_with_ignore_case(line, TRANSFER_ENCODING) =>
            {
                head.te_lines += 1;
                // A value too long to keep is not `chunked` with sane spacing either.
                head.te_chunked &= whole
                    && trim(&line[TRANSFER_ENCODING.len()..]).eq_ignore_ascii_case(b"chunked");
            }
            _ => {}
        }
    }

    /// The blank line was read: what comes next is the body, as the head framed it.
    fn end_head(&mut self) {
        let head = std::mem::replace(&mut self.head, Head::new());
        if head.te_lines > 0 {
            if head.te_lines > 1 || !head.te_chunked {
                self.stop(Finding::TransferEncoding);
            } else if head.has_length {
                self.stop(Finding::TransferEncodingWithLength);
            } else {
                self.state = State::Chunked(Chunk::Start);
            }
            return;
        }
        match head.length {
            Length::Absent | Length::Is(0) => self.next_request(),
            Length::Is(n) => self.state = State::Length(n),
            Length::Invalid => self.stop(Finding::Lost),
        }
    }

    /// Walks a chunked body from `at`; returns how many bytes it took.
    fn read_chunked(&mut self, mut at: Chunk, bytes: &[u8]) -> usize {
        use Chunk::*;
        let mut i = 0;
        while i < bytes.len() {
            if let Data(left) = at {
                let n = usize::try_from(left).map_or(bytes.len() - i, |l| l.min(bytes.len() - i));
                i += n;
                at = if n as u64 == left {
                    DataCr
                } else {
                    Data(left - n as u64)
                };
                continue;
            }
            let b = bytes[i];
            i += 1;
            at = match (at, b) {
                (Start, b) => match hex(b) {
                    Some(d) => Size(d),
                    None => return self.lost(bytes),
                },
                (Size(n), b) => match hex(b) {
                    Some(d) => match n.checked_mul(16).and_then(|n| n.checked_add(d)) {
                        Some(n) => Size(n),
                        None => return self.lost(bytes),
                    },
                    None => match b {
                        b'\t' | b' ' => SizeLws(n),
                        b';' => Extension(n),
                        b'\r' => SizeLf(n),
                        _ => return self.lost(bytes),
                    },
                },
                (SizeLws(n), b'\t' | b' ') => SizeLws(n),
                (SizeLws(n), b';') => Extension(n),
                (SizeLws(n), b'\r') | (Extension(n), b'\r') => SizeLf(n),
                (Extension(n), b) if b != b'\n' => Extension(n),
                (SizeLf(0), b'\n') => EndCr,
                (SizeLf(n), b'\n') => Data(n),
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Start,
                (EndCr, b'\r') => EndLf,
                (EndCr, _) | (Trailer, _) if b != b'\r' => Trailer,
                (Trailer, b'\r') => TrailerLf,
                (TrailerLf, b'\n') => EndCr,
                (EndLf, b'\n') => {
                    self.next_request();
                    return i;
                }
                _ => return self.lost(bytes),
            };
        }
        self.state = State::Chunked(at);
        bytes.len()
    }

    fn lost(&mut self, bytes: &[u8]) -> usize {
        self.stop(Finding::Lost);
        bytes.len()
    }
}

// === impl Head ===

impl Head {
    fn new() -> Head {
        Head {
            started: false,
            kept: [0; KEPT],
            kept_len: 0,
            last: 0,
            length: Length::Absent,
            has_length: false,
            te_lines: 0,
            te_chunked: true,
        }
    }

    /// Keeps the start of a line the read ended in.
    fn keep(&mut self, bytes: &[u8]) {
        let Some(&last) = bytes.last() else {
            return;
        };
        let have = self.kept_len.min(KEPT);
        let take = bytes.len().min(KEPT - have);
        self.kept[have..have + take].copy_from_slice(&bytes[..take]);
        self.kept_len += bytes.len();
        self.last = last;
    }
}

fn starts_with_ignore_case(line: &[u8], name: &[u8]) -> bool {
    line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name)
}

/// Without optional whitespace around it.
fn trim(v: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !ows(b)).map_or(start, |e| e + 1);
    &v[start..end]
}

/// A decimal number, as hyper reads a `Content-Length`: digits only, no sign.
fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        let d = (b as char).to_digit(10)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `wire` in pieces cut at `cuts`; returns the reader.
    fn follow(wire: &[u8], cuts: &[usize]) -> (Framing, Arc<HeadReport>) {
        let (mut f, report) = Framing::new();
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.sort_unstable();
        for c in cuts.into_iter().chain([wire.len()]) {
            f.feed(&wire[at..c.max(at)]);
            at = c.max(at);
        }
        (f, report)
    }

    fn finding(report: &HeadReport) -> Option<(u64, u64)> {
        let first = report.first.load(Ordering::Acquire);
        (first != NOTHING).then_some((first >> 2, first & 3))
    }

    const GET: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";

    fn post(body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    fn chunked(chunks: &[&[u8]], ext: bool, trailers: bool) -> Vec<u8> {
        let mut r =
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                .to_vec();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            r.extend_from_slice(format!("{:X}", c.len()).as_bytes());
            if ext {
                r.extend_from_slice(b" ;name=value");
            }
            r.extend_from_slice(b"\r\n");
            r.extend_from_slice(c);
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"0\r\n");
        if trailers {
            r.extend_from_slice(b"x-trailer: 1\r\n");
        }
        r.extend_from_slice(b"\r\n");
        r
    }

    #[test]
    fn pipelined_requests_are_followed_past_bodies_with_bare_lfs_in_them() {
        let mut wire = b"\r\n".to_vec(); // an empty line before a request is skipped
        wire.extend(post(b"{\n  \"model\": \"m\"\n}\n"));
        wire.extend(chunked(&[b"a\nb", b"\n\n\n"], true, true));
        wire.extend_from_slice(GET);
        for cut in 0..wire.len() {
            let (f, report) = follow(&wire, &[cut]);
            assert_eq!(finding(&report), None, "cut at {cut}");
            assert_eq!((f.request, f.state), (3, State::Head), "cut at {cut}");
        }
        assert!(matches!(report_of(&wire).verdict(2), Verdict::Serve));
    }

    #[test]
    fn a_head_is_begun_from_its_first_byte_to_its_blank_line() {
        let (mut f, _) = Framing::new();
        assert!(!f.head_begun());
        f.feed(b"G");
        assert!(f.head_begun());
        f.feed(b"ET / HTTP/1.1\r\nhost: x\r\n\r");
        assert!(f.head_begun());
        f.feed(b"\n");
        assert!(!f.head_begun());
        f.feed(b"\r");
        assert!(f.head_begun());
        f.feed(b"\n");
        // An empty line before a request line is skipped: nothing of a request has come yet.
        assert!(!f.head_begun());
    }

    fn report_of(wire: &[u8]) -> Arc<HeadReport> {
        follow(wire, &[]).1
    }

    #[test]
    fn a_bare_lf_is_found_in_the_head_it_is_in() {
        let mut wire = post(b"{}");
        wire.extend_from_slice(b"GET / HTTP/1.1\r\nhost: x\nx: y\r\n\r\n");
        for cut in 0..wire.len() {
            let (_, report) = follow(&wire, &[cut]);
            assert_eq!(finding(&report), Some((1, 0)), "cut at {cut}");
        }
        let report = report_of(&wire);
        assert!(matches!(report.verdict(0), Verdict::Serve));
        assert!(matches!(report.verdict(1), Verdict::Refuse(_)));
        // A request line, or the blank line, ending in LF alone.
        for head in [
            &b"GET / HTTP/1.1\nhost: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nhost: x\r\n\n",
        ] {
            assert_eq!(finding(&report_of(head)), Some((0, 0)));
        }
    }

    #[test]
    fn transfer_encoding_must_be_one_chunked_alone() {
        let head = |te: &str| format!("POST / HTTP/1.1\r\nhost: x\r\n{te}\r\n\r\n0\r\n\r\n");
        for bad in [
            "transfer-encoding: identity, chunked",
            "Transfer-Encoding: chunked, chunked",
            "transfer-encoding: chunked\r\nTransfer-Encoding: chunked",
            "transfer-encoding: gzip",
            "transfer-encoding: chunked;q=1",
            "transfer-encoding:",
        ] {
            assert_eq!(
                finding(&report_of(head(bad).as_bytes())),
                Some((0, 1)),
                "{bad}"
            );
        }
        for bad in [
            "transfer-encoding: chunked\r\ncontent-length: 5",
            "Content-Length: 5\r\ntransfer-encoding: chunked",
        ] {
            assert_eq!(
                finding(&report_of(head(bad).as_bytes())),
                Some((0, 2)),
                "{bad}"
            );
        }
        for good in [
            "Transfer-Encoding: chunked",
            "transfer-encoding:\t CHUNKED  ",
        ] {
            let (f, report) = follow(head(good).as_bytes(), &[]);
            assert_eq!((finding(&report), f.request), (None, 1), "{good}");
        }
        // A name that only starts like it is another header.
        let (f, report) = follow(b"GET / HTTP/1.1\r\ntransfer-encodings: gzip\r\n\r\n", &[]);
        assert_eq!((finding(&report), f.request), (None, 1));
    }

    #[test]
    fn a_transfer_encoding_line_too_long_to_keep_across_reads_is_refused() {
        let wire = format!(
            "POST / HTTP/1.1\r\ntransfer-encoding: {}chunked\r\n\r\n0\r\n\r\n",
            " ".repeat(KEPT)
        );
        let cut = wire.find("chunked").unwrap();
        assert_eq!(finding(&follow(wire.as_bytes(), &[cut]).1), Some((0, 1)));
    }

    #[test]
    fn framing_it_cannot_follow_closes_after_that_request() {
        for wire in [
            &b"POST / HTTP/1.1\r\ncontent-length: 5x\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n1\r\nab\r\n",
        ] {
            let report = report_of(wire);
            assert_eq!(
                finding(&report),
                Some((0, 3)),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
            assert!(matches!(report.verdict(0), Verdict::ServeThenClose));
            assert!(matches!(report.verdict(1), Verdict::ServeThenClose));
        }
        // Repeated equal lengths are one length, as hyper takes them.
        let (f, report) = follow(
            b"POST / HTTP/1.1\r\ncontent-length: 2\r\nContent-Length: 2\r\n\r\n{}",
            &[],
        );
        assert_eq!((finding(&report), f.request), (None, 1));
    }

    proptest! {
        #[test]
        fn any_valid_pipeline_cut_anywhere_is_followed_to_its_end(
            requests in prop::collection::vec(
                (0u8..3, prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..4),
                 any::<bool>(), any::<bool>()),
                1..6,
            ),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
            bare in any::<Option<prop::sample::Index>>(),
        ) {
            let mut wire = Vec::new();
            let mut starts = Vec::new();
            for (kind, chunks, ext, trailers) in &requests {
                starts.push(wire.len());
                let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
                match kind {
                    0 => wire.extend_from_slice(GET),
                    1 => wire.extend(post(&refs.concat())),
                    _ => wire.extend(chunked(&refs, *ext, *trailers)),
                }
            }
            match bare {
                None => {
                    let (f, report) = follow(&wire, &cuts);
                    prop_assert_eq!(finding(&report), None);
                    prop_assert_eq!((f.request, f.state), (requests.len() as u64, State::Head));
                }
                Some(i) => {
                    // The request line of one request loses its CR.
                    let k = i.index(requests.len());
                    let cr = starts[k] + wire[starts[k]..].iter().position(|&b| b == b'\r').unwrap();
                    wire.remove(cr);
                    let (_, report) = follow(&wire, &cuts);
                    prop_assert_eq!(finding(&report), Some((k as u64, 0)));
                }
            }
        }
    }
}
