//! An incremental parser for `text/event-stream` bodies.
//!
//! An upstream's bytes arrive in chunks cut wherever TCP, TLS or HTTP/2 framing happened to cut
//! them: in the middle of a line, between the CR and the LF of one line ending, or inside a
//! multi-byte UTF-8 character. The parser keeps exactly the state the WHATWG "event stream
//! interpretation" rules need (the unfinished line, the data, event type and last-id buffers), so
//! feeding a stream in any number of pieces yields the same events as feeding it whole.
//!
//! Lines are split on raw bytes: CR and LF never occur inside a UTF-8 sequence, so a line is
//! decoded only once it is complete and a character split across chunks is never seen half-way.
//!
//! Two choices go beyond the specification:
//! - **Bounded memory.** One event (its data plus the line being read) may not exceed
//!   [`SseParser::max_event_bytes`]; a stream that never ends its lines or its events is a
//!   protocol error rather than an unbounded allocation.
//! - **End of stream.** The specification discards an event that is not followed by a blank line
//!   when the stream ends. [`SseParser::finish`] still discards the unterminated last *line*, but
//!   hands back the event built from complete lines, so a caller can decide: OpenAI streams end with
//!   `data: [DONE]\n\n`, and a server that drops only the final blank line after `[DONE]` can be
//!   forgiven while any other truncated event is still treated as a broken stream.

use std::time::Duration;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `None` means the default type, `message`.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
    /// The last event id seen on the stream (ids persist across events, per the specification).
    pub id: Option<String>,
}

/// One dispatched event, borrowed from the parser or from the chunk it was fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event:` field; `None` means the default type, `message`.
    pub event: Option<&'a str>,
    /// The `data:` lines, joined with `\n`.
    pub data: &'a str,
    /// The last event id seen on the stream.
    pub id: Option<&'a str>,
}

impl Event<'_> {
    /// The event, owned.
    pub fn to_owned(&self) -> SseEvent {
        SseEvent {
            event: self.event.map(str::to_owned),
            data: self.data.to_owned(),
            id: self.id.map(str::to_owned),
        }
    }
}

/// Why a stream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// One event, or one line, grew past the configured bound.
    #[error("an event-stream event exceeded {limit} bytes")]
    EventTooLarge { limit: usize },
}

/// The default bound on one event: generous for any chat chunk, small enough to never matter.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Incremental event-stream parser. Feed it chunks with [`feed`](Self::feed); call
/// [`finish`](Self::finish) at end of stream.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the line being read, when a chunk ended before its line did.
    line: Vec<u8>,
    /// The previous chunk ended with CR: an LF at the start of the next one belongs to it.
    skip_lf: bool,
    /// No line has been processed yet, so a leading byte-order mark is still to be stripped.
    at_start: bool,
    /// The data buffer of the event being built, each line followed by `\n`.
    data: String,
    /// Whether any `data:` field was seen for this event (the buffer alone cannot tell an empty
    /// `data:` line from none once the trailing newline is counted).
    has_data: bool,
    event_type: Option<String>,
    last_id: Option<String>,
    retry: Option<Duration>,
    max_event_bytes: usize,
    /// Set once the bound was exceeded; the stream is not trusted after that.
    failed: bool,
}

// === impl SseParser ===

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseParser {
    /// A parser that refuses events larger than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            line: Vec::new(),
            skip_lf: false,
            at_start: true,
            data: String::new(),
            has_data: false,
            event_type: None,
            last_id: None,
            retry: None,
            max_event_bytes,
            failed: false,
        }
    }

    /// The bound on one event.
    pub fn max_event_bytes(&self) -> usize {
        self.max_event_bytes
    }

    /// The last `retry:` value the server sent.
    pub fn reconnection_time(&self) -> Option<Duration> {
        self.retry
    }

    /// Parses one chunk, appending every event it completes to `out`.
    ///
    /// Events completed before an error are still appended; after an error every call fails.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        self.feed_with(input, |e| out.push(e.to_owned()))
    }

    /// Parses one chunk, handing every event it completes to `on_event`, borrowed: an event
    /// whose data is one line inside `input` (an OpenAI chunk, the usual case) is a slice of
    /// `input`, not a copy.
    ///
    /// Events completed before an error are still handed over; after an error every call fails.
    pub fn feed_with(
        &mut self,
        mut input: &[u8],
        mut on_event: impl FnMut(Event<'_>),
    ) -> Result<(), SseError> {
        if self.failed {
            return Err(self.too_large());
        }
        if self.skip_lf && !input.is_empty() {
            self.skip_lf = false;
            if input[0] == b'\n' {
                input = &input[1..];
            }
        }
        // The data of the event being built when it is a single line of `input` so far; copied
        // into `data` only if the event goes on past this chunk or gets a second data line.
        let mut single: Option<&str> = None;
        let mut result = Ok(());
        while let Some(pos) = memchr::memchr2(b'\n', b'\r', input) {
            let (part, eol, mut rest) = (&input[..pos], input[pos], &input[pos + 1..]);
            if self.line.is_empty() {
                result = self.process_line(part, &mut single, &mut on_event);
            } else {
                self.keep(&mut single);
                result = self.check(self.line.len() + part.len());
                if result.is_ok() {
                    self.line.extend_from_slice(part);
                    let line = std::mem::take(&mut self.line);
                    let mut local = None;
                    result = self.process_line(&line, &mut local, &mut on_event);
                    self.keep(&mut local);
                    // Keep the allocation for the next split line.
                    self.line = line;
                    self.line.clear();
                }
            }
            if result.is_err() {
                break;
            }
            if eol == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    None => self.skip_lf = true,
                    Some(_) => {}
                }
            }
            input = rest;
        }
        self.keep(&mut single);
        result?;
        if !input.is_empty() {
            self.check(self.line.len() + input.len())?;
            self.line.extend_from_slice(input);
        }
        Ok(())
    }

    /// Ends the stream. The unterminated last line is discarded (as the specification says); the
    /// event built from complete lines but never dispatched by a blank line is returned, for the
    /// caller to accept or refuse. The parser is reset for a new stream.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let pending = self.take_event();
        let max = self.max_event_bytes;
        *self = Self::new(max);
        pending
    }

    fn too_large(&self) -> SseError {
        SseError::EventTooLarge {
            limit: self.max_event_bytes,
        }
    }

    /// Fails when a line of `line_len` bytes on top of the current data would exceed the bound.
    fn check(&mut self, line_len: usize) -> Result<(), SseError> {
        self.check_with(0, line_len)
    }

    /// As [`check`](Self::check), with `pending` bytes of data not yet in the buffer.
    fn check_with(&mut self, pending: usize, line_len: usize) -> Result<(), SseError> {
        if self.data.len() + pending + line_len > self.max_event_bytes {
            self.failed = true;
            return Err(self.too_large());
        }
        Ok(())
    }

    /// Moves a single borrowed data line into the data buffer, as every later line goes there.
    fn keep(&mut self, single: &mut Option<&str>) {
        if let Some(text) = single.take() {
            self.push_data_line(text);
        }
    }

    /// Appends one data line and its newline to the buffer, with room for both at once.
    fn push_data_line(&mut self, text: &str) {
        self.data.reserve(text.len() + 1);
        self.data.push_str(text);
        self.data.push('\n');
    }

    fn process_line<'a>(
        &mut self,
        mut line: &'a [u8],
        single: &mut Option<&'a str>,
        on_event: &mut impl FnMut(Event<'_>),
    ) -> Result<(), SseError> {
        // Checked before the byte-order mark is stripped, so the bound does not depend on where
        // the chunks were cut. A borrowed line counts with its newline, as in the buffer.
        let pending = single.map_or(0, |t| t.len() + 1);
        self.check_with(pending, line.len())?;
        if self.at_start {
            self.at_start = false;
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(single.take(), on_event);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => match std::str::from_utf8(value) {
                // The first data line of an event stays where it is until the event ends.
                Ok(text) if !self.has_data => {
                    *single = Some(text);
                    self.has_data = true;
                }
                // Valid UTF-8 is the norm: checked in one pass, replaced only when it is not.
                decoded => {
                    self.keep(single);
                    let lossy;
                    let text = match decoded {
                        Ok(text) => text,
                        Err(_) => {
                            lossy = String::from_utf8_lossy(value);
                            &lossy
                        }
                    };
                    self.push_data_line(text);
                    self.has_data = true;
                }
            },
            b"event" => self.event_type = Some(String::from_utf8_lossy(value).into_owned()),
            b"id" if !value.contains(&0) => {
                self.last_id = Some(String::from_utf8_lossy(value).into_owned());
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                if let Ok(ms) = std::str::from_utf8(value).unwrap_or("").parse::<u64>() {
                    self.retry = Some(Duration::from_millis(ms));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Ends the event being built: hands it over if it has data (`single`, or the buffer), and
    /// resets the data and type either way. The buffer keeps its allocation for the next event.
    fn dispatch(&mut self, single: Option<&str>, on_event: &mut impl FnMut(Event<'_>)) {
        let event_type = self.event_type.take();
        if !std::mem::take(&mut self.has_data) {
            self.data.clear();
            return;
        }
        let data = match single {
            Some(text) => text,
            // Without the newline after the last line.
            None => self.data.strip_suffix('\n').unwrap_or(&self.data),
        };
        on_event(Event {
            event: event_type.as_deref().filter(|t| !t.is_empty()),
            data,
            id: self.last_id.as_deref().filter(|id| !id.is_empty()),
        });
        self.data.clear();
    }

    /// The event being built, if it has data, owned; the data and type buffers are reset.
    fn take_event(&mut self) -> Option<SseEvent> {
        let mut event = None;
        self.dispatch(None, &mut |e| event = Some(e.to_owned()));
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Events and the final outcome of feeding `chunks` in order, then finishing.
    fn run(chunks: &[&[u8]], max: usize) -> (Vec<SseEvent>, Result<Option<SseEvent>, SseError>) {
        let mut p = SseParser::new(max);
        let mut out = Vec::new();
        for c in chunks {
            if let Err(e) = p.feed(c, &mut out) {
                return (out, Err(e));
            }
        }
        (out, Ok(p.finish()))
    }

    fn whole(bytes: &[u8]) -> (Vec<SseEvent>, Result<Option<SseEvent>, SseError>) {
        run(&[bytes], DEFAULT_MAX_EVENT_BYTES)
    }

    fn data(d: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: d.into(),
            id: None,
        }
    }

    #[test]
    fn openai_stream_with_done() {
        let (ev, end) = whole(b"data: {\"a\":1}\n\ndata: [DONE]\n\n");
        assert_eq!(ev, vec![data("{\"a\":1}"), data("[DONE]")]);
        assert_eq!(end, Ok(None));
    }

    #[test]
    fn crlf_cr_and_lf_line_endings_are_equivalent() {
        let lf = whole(b"event: e\ndata: a\ndata: b\n\ndata: c\n\n");
        let crlf = whole(b"event: e\r\ndata: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n");
        let cr = whole(b"event: e\rdata: a\rdata: b\r\rdata: c\r\r");
        let mixed = whole(b"event: e\r\ndata: a\rdata: b\n\r\ndata: c\r\r\n");
        assert_eq!(lf.0.len(), 2);
        assert_eq!(lf.0[0].data, "a\nb");
        assert_eq!(lf.0[0].event.as_deref(), Some("e"));
        assert_eq!(lf.0[1], data("c"));
        assert_eq!(lf, crlf);
        assert_eq!(lf, cr);
        assert_eq!(lf, mixed);
    }

    #[test]
    fn cr_at_end_of_chunk_and_lf_at_start_of_next_is_one_line_ending() {
        let (ev, _) = run(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"], 1024);
        assert_eq!(ev, vec![data("a\nb")]);
        // A lone CR followed by a non-LF chunk is a line ending on its own.
        let (ev, _) = run(&[b"data: a\r", b"\r"], 1024);
        assert_eq!(ev, vec![data("a")]);
        // An empty chunk between CR and LF keeps the pending CR.
        let (ev, _) = run(&[b"data: a\r", b"", b"\n", b"\n"], 1024);
        assert_eq!(ev, vec![data("a")]);
    }

    #[test]
    fn comments_fields_and_spaces() {
        let (ev, _) = whole(
            b": keep-alive\n\n:another\ndata:no-space\ndata:  two spaces\nunknown: x\ndata\n\n",
        );
        assert_eq!(ev, vec![data("no-space\n two spaces\n")]);
    }

    #[test]
    fn id_persists_and_event_type_resets() {
        let (ev, _) =
            whole(b"id: 7\nevent: x\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: a\0b\ndata: d\n\n");
        assert_eq!(ev[0].id.as_deref(), Some("7"));
        assert_eq!(ev[0].event.as_deref(), Some("x"));
        assert_eq!(ev[1].id.as_deref(), Some("7"));
        assert_eq!(ev[1].event, None);
        // An empty `id` resets; an id holding NUL is ignored.
        assert_eq!(ev[2].id, None);
        assert_eq!(ev[3].id, None);
    }

    #[test]
    fn event_without_data_is_not_dispatched() {
        let (ev, _) = whole(b"event: ping\n\ndata: x\n\n");
        assert_eq!(ev, vec![data("x")]);
        let (ev, _) = whole(b"data\n\n");
        assert_eq!(ev, vec![data("")]);
    }

    #[test]
    fn retry_is_recorded_when_numeric() {
        let mut p = SseParser::default();
        p.feed(b"retry: 1500\nretry: x1\n\n", &mut Vec::new())
            .unwrap();
        assert_eq!(p.reconnection_time(), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn bom_is_stripped_once_even_when_split() {
        let (ev, _) = run(
            &[b"\xEF", b"\xBB\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n"],
            1024,
        );
        assert_eq!(ev, vec![data("a")]);
    }

    #[test]
    fn utf8_split_inside_a_character_is_decoded_whole() {
        let text = "data: héllo 🦀 wörld\n\n".as_bytes();
        for i in 0..text.len() {
            let (ev, _) = run(&[&text[..i], &text[i..]], 1024);
            assert_eq!(ev, vec![data("héllo 🦀 wörld")], "split at {i}");
        }
    }

    #[test]
    fn eof_returns_complete_lines_and_drops_the_unterminated_one() {
        let (ev, end) = whole(b"data: a\n\ndata: [DONE]\n");
        assert_eq!(ev, vec![data("a")]);
        assert_eq!(end, Ok(Some(data("[DONE]"))));
        let (_, end) = whole(b"data: [DONE]");
        assert_eq!(end, Ok(None));
        let (_, end) = whole(b"data: a\ndata: {\"trunc");
        assert_eq!(end, Ok(Some(data("a"))));
    }

    #[test]
    fn oversized_line_or_event_is_an_error_and_poisons() {
        let mut p = SseParser::new(16);
        let mut out = Vec::new();
        assert!(p.feed(b"data: 0123456789", &mut out).is_ok());
        assert_eq!(
            p.feed(b"abcdef", &mut out),
            Err(SseError::EventTooLarge { limit: 16 })
        );
        assert!(p.feed(b"\n\n", &mut out).is_err());

        // Many small data lines that never end the event.
        let mut p = SseParser::new(16);
        assert!(p.feed(b"data: abc\ndata: abc\n", &mut out).is_ok());
        assert!(p.feed(b"data: abc\n", &mut out).is_err());

        // Comments do not accumulate: only the longest one counts.
        let mut p = SseParser::new(16);
        for _ in 0..100 {
            p.feed(b": 0123456789\n", &mut out).unwrap();
        }
    }

    #[test]
    fn every_single_split_and_byte_by_byte_match_whole() {
        let stream: &[u8] =
            "\u{feff}: hi\r\nid: 1\r\nevent: add\r\ndata: {\"x\":\"é\"}\r\ndata: 2\r\n\r\n\
                      data: 🦀\r\rdata: a\n\n:c\ndata: [DONE]\n\ndata: tail"
                .as_bytes();
        let expected = whole(stream);
        assert_eq!(expected.0.len(), 4);
        for i in 0..=stream.len() {
            assert_eq!(run(&[&stream[..i], &stream[i..]], 1 << 20), expected, "{i}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&bytes, 1 << 20), expected);
    }

    #[test]
    fn a_single_data_line_is_handed_over_without_a_copy() {
        let input = b"data: {\"a\":1}\n\ndata: x\ndata: y\n\ndata: cut";
        let mut p = SseParser::default();
        let mut seen = Vec::new();
        p.feed_with(input, |e| {
            let inside = input.as_ptr_range().contains(&e.data.as_ptr());
            seen.push((e.data.to_owned(), inside));
        })
        .unwrap();
        // A two-line event is joined in the parser's buffer.
        assert_eq!(
            seen,
            [("{\"a\":1}".to_owned(), true), ("x\ny".to_owned(), false)]
        );
        // An event cut by the end of a chunk is kept and completed by the next.
        p.feed_with(b" here\n\n", |e| seen.push((e.data.to_owned(), false)))
            .unwrap();
        assert_eq!(seen[2].0, "cut here");
    }

    /// A stream built from pieces that exercise every rule, with any line endings.
    fn stream_strategy() -> impl Strategy<Value = Vec<u8>> {
        let eol = prop_oneof![Just("\n"), Just("\r\n"), Just("\r")];
        let line = prop_oneof![
            "[a-zé🦀 {}\":,\\[\\]]{0,12}".prop_map(|s| format!("data: {s}")),
            "[a-zé]{0,6}".prop_map(|s| format!("data:{s}")),
            "[a-z]{0,6}".prop_map(|s| format!("event: {s}")),
            "[0-9a-z]{0,4}".prop_map(|s| format!("id: {s}")),
            "[0-9]{1,4}".prop_map(|s| format!("retry: {s}")),
            "[a-z ]{0,8}".prop_map(|s| format!(":{s}")),
            Just(String::new()),
            Just("data".to_string()),
        ];
        prop::collection::vec((line, eol), 0..40).prop_map(|lines| {
            lines
                .into_iter()
                .flat_map(|(l, e)| [l, e.to_string()])
                .collect::<String>()
                .into_bytes()
        })
    }

    /// Cuts `bytes` at the given (sorted, deduplicated) positions.
    fn split_at<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.sort_unstable();
        points.dedup();
        let mut out = Vec::new();
        let mut start = 0;
        for p in points {
            out.push(&bytes[start..p]);
            start = p;
        }
        out.push(&bytes[start..]);
        out
    }

    proptest! {
        #[test]
        fn random_splits_give_the_same_events(
            stream in stream_strategy(),
            cuts in prop::collection::vec(any::<usize>(), 0..20),
        ) {
            let expected = whole(&stream);
            prop_assert_eq!(&run(&split_at(&stream, &cuts), DEFAULT_MAX_EVENT_BYTES), &expected);
            // fed whole, an event's single data line is borrowed from the input; fed a byte at a
            // time, every line goes through the parser's own buffers
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            prop_assert_eq!(run(&bytes, DEFAULT_MAX_EVENT_BYTES), expected);
        }

        #[test]
        fn arbitrary_bytes_any_split_and_small_bound_agree(
            stream in prop::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(b':'), Just(b' '), any::<u8>()],
                0..300,
            ),
            cuts in prop::collection::vec(any::<usize>(), 0..20),
            max in 4usize..64,
        ) {
            let expected = run(&[&stream], max);
            prop_assert_eq!(&run(&split_at(&stream, &cuts), max), &expected);
            let bytes: Vec<&[u8]> = stream.chunks(1).collect();
            prop_assert_eq!(run(&bytes, max), expected);
        }
    }
}
