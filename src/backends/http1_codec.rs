//! The HTTP/1.1 client wire format, without I/O: request heads out, response heads and bodies in.
//!
//! [`super::http1_pool`] drives these over a socket. Kept apart so that every framing rule of
//! RFC 9112 that an upstream can get wrong is a plain function with tests: how the body of a
//! response is delimited (section 6.3), chunked transfer coding with extensions and trailers
//! (section 7.1), informational responses, and whether the connection may carry another request.
//! Everything is bounded: a head, a chunk-size line and the trailers have size limits, so an
//! upstream that never ends a line costs a protocol error, not memory.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use smallvec::SmallVec;

/// Largest response head accepted.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Most header fields in one response head.
const MAX_HEADERS: usize = 128;

/// Longest chunk-size line (size, extensions and line ending).
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Most bytes of trailer fields after the last chunk.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// What a response broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the response head is not valid HTTP/1.1")]
    Head,
    #[error("the response head exceeds {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("the response asks to switch protocols")]
    Upgrade,
    #[error("the content-length is invalid")]
    ContentLength,
    #[error("a chunk size line is invalid")]
    ChunkSize,
    #[error("a chunk is not followed by its line ending")]
    ChunkEnd,
    #[error("the trailer fields are invalid or too large")]
    Trailers,
}

/// A parsed response head and how its body is framed.
#[derive(Debug)]
pub struct Head {
    pub response: Response<()>,
    pub body: BodyKind,
    /// The connection may carry another request once this body has been read to its end.
    pub keep_alive: bool,
}

/// How the end of a response body is found (RFC 9112, section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Length(u64),
    Chunked,
    /// Everything until the upstream closes the connection.
    UntilClose,
}

/// The result of one decoding step.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// More bytes are needed from the socket.
    More,
    /// The body is complete; bytes after it stay in the buffer.
    End,
}

/// Incremental body decoder.
#[derive(Debug)]
pub struct Decoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    UntilClose,
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers(usize),
    Done,
}

/// Encodes a request head (origin form, `Host` as given in the headers) into `out`. A
/// `content-length` is added when the request carries a body and does not declare one.
pub fn encode_head(req: &Request<Bytes>, out: &mut Vec<u8>) {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        if name == TRANSFER_ENCODING {
            // The body is sent whole with its length; a caller's framing header would lie.
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let needs_length = !req.body().is_empty()
        || matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    if needs_length && !req.headers().contains_key(CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(req.body().len()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Parses a final response head from the front of `buf`, skipping informational (1xx) heads.
/// `Ok(None)`: the head is not complete yet. The head's bytes are consumed; the body's stay.
pub fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Malformed> {
    loop {
        // Left uninitialised: httparse writes the fields it finds, and a head has a few of the
        // hundred and more it may hold.
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut fields,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(Malformed::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(Malformed::Head),
        };
        let code = parsed.code.ok_or(Malformed::Head)?;
        let status = StatusCode::from_u16(code).map_err(|_| Malformed::Head)?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(Malformed::Upgrade);
        }
        if status.is_informational() {
            buf.advance(len);
            continue;
        }
        let version = match parsed.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        // Where each name and value lies in the head (the fields borrow `buf`), so the values
        // can be slices of the head rather than one copy each.
        let base = buf.as_ptr() as usize;
        let span = |b: &[u8]| {
            let start = b.as_ptr() as usize - base;
            start..start + b.len()
        };
        let spans: SmallVec<[_; 24]> = parsed
            .headers
            .iter()
            .map(|field| (span(field.name.as_bytes()), span(field.value)))
            .collect();
        let count = spans.len();
        // The head leaves the read buffer as shared bytes: the response's headers are dropped
        // once the status and content type are read, and the buffer is whole again.
        let head = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        for (name, value) in spans {
            let name = HeaderName::from_bytes(&head[name]).map_err(|_| Malformed::Head)?;
            let value =
                HeaderValue::from_maybe_shared(head.slice(value)).map_err(|_| Malformed::Head)?;
            headers.append(name, value);
        }
        let (body, framed) = framing(status, &headers)?;
        let keep_alive =
            framed && version == Version::HTTP_11 && !has_token(&headers, &CONNECTION, "close");
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        return Ok(Some(Head {
            response,
            body,
            keep_alive,
        }));
    }
}

/// The body's framing, and whether it leaves the connection usable (both a transfer coding and
/// a length, or neither, mean the connection ends with the body).
fn framing(status: StatusCode, headers: &HeaderMap) -> Result<(BodyKind, bool), Malformed> {
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((BodyKind::Length(0), true));
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        // Only chunked as the final coding delimits the body; a length beside it is ignored and
        // the connection is not reused (it may be a smuggling attempt).
        let last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|c| !c.is_empty());
        let chunked = last.is_some_and(|c| c.eq_ignore_ascii_case("chunked"));
        let alone = !headers.contains_key(CONTENT_LENGTH);
        return Ok(if chunked {
            (BodyKind::Chunked, alone)
        } else {
            (BodyKind::UntilClose, false)
        });
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value
            .to_str()
            .map_err(|_| Malformed::ContentLength)?
            .split(',')
        {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Malformed::ContentLength);
            }
            let n: u64 = part.parse().map_err(|_| Malformed::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(Malformed::ContentLength);
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (BodyKind::Length(n), true),
        None => (BodyKind::UntilClose, false),
    })
}

/// Whether a comma-separated header lists `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

// === impl Decoder ===

impl Decoder {
    pub fn new(kind: BodyKind) -> Decoder {
        let state = match kind {
            BodyKind::Length(0) => State::Done,
            BodyKind::Length(n) => State::Length(n),
            BodyKind::Chunked => State::ChunkSize,
            BodyKind::UntilClose => State::UntilClose,
        };
        Decoder { state }
    }

    /// The body has been decoded to its end.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes still expected, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of body from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Malformed> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(n) => {
                    let Some((data, rest)) = take_up_to(buf, n) else {
                        return Ok(Decoded::More);
                    };
                    self.state = match rest {
                        0 => State::Done,
                        rest => State::Length(rest),
                    };
                    return Ok(Decoded::Data(data));
                }
                State::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                State::ChunkSize => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE, Malformed::ChunkSize)? else {
                        return Ok(Decoded::More);
                    };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkData(n) => {
                    let Some((data, rest)) = take_up_to(buf, n) else {
                        return Ok(Decoded::More);
                    };
                    self.state = match rest {
                        0 => State::ChunkEnd,
                        rest => State::ChunkData(rest),
                    };
                    return Ok(Decoded::Data(data));
                }
                State::ChunkEnd => match buf.first() {
                    None => return Ok(Decoded::More),
                    Some(b'\n') => {
                        buf.advance(1);
                        self.state = State::ChunkSize;
                    }
                    Some(b'\r') if buf.len() < 2 => return Ok(Decoded::More),
                    Some(b'\r') if buf[1] == b'\n' => {
                        buf.advance(2);
                        self.state = State::ChunkSize;
                    }
                    Some(_) => return Err(Malformed::ChunkEnd),
                },
                State::Trailers(seen) => {
                    let room = MAX_TRAILER_BYTES.saturating_sub(seen);
                    let Some(line) = take_line(buf, room, Malformed::Trailers)? else {
                        return Ok(Decoded::More);
                    };
                    // Trailer fields are read and dropped: nothing downstream uses them.
                    self.state = if line.is_empty() {
                        State::Done
                    } else {
                        State::Trailers(seen + line.len() + 2)
                    };
                }
            }
        }
    }

    /// The upstream closed the connection: the end of an until-close body, a truncation of any
    /// other.
    pub fn at_eof(&mut self) -> bool {
        if self.state == State::UntilClose {
            self.state = State::Done;
        }
        self.state == State::Done
    }
}

/// Takes what `buf` holds of the next `n` body bytes, and how many are still to come; `None`
/// when `buf` is empty.
fn take_up_to(buf: &mut BytesMut, n: u64) -> Option<(Bytes, u64)> {
    if buf.is_empty() {
        return None;
    }
    let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
    Some((buf.split_to(take).freeze(), n - take as u64))
}

/// Takes one line (without its CRLF or LF) from the front of `buf`; `None` when it is not
/// complete yet; `err` when it is longer than `limit`.
fn take_line(buf: &mut BytesMut, limit: usize, err: Malformed) -> Result<Option<Bytes>, Malformed> {
    let Some(end) = buf.iter().take(limit + 1).position(|&b| b == b'\n') else {
        return if buf.len() > limit {
            Err(err)
        } else {
            Ok(None)
        };
    };
    let mut line = buf.split_to(end + 1);
    line.truncate(end);
    if line.last() == Some(&b'\r') {
        line.truncate(end - 1);
    }
    Ok(Some(line.freeze()))
}

/// A chunk-size line: hex digits, then optional whitespace and `;extensions` (ignored).
fn chunk_size(line: &[u8]) -> Result<u64, Malformed> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 || digits > 16 {
        return Err(Malformed::ChunkSize);
    }
    let rest = &line[digits..];
    let rest = rest.trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') {
        return Err(Malformed::ChunkSize);
    }
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| Malformed::ChunkSize)?;
    u64::from_str_radix(hex, 16).map_err(|_| Malformed::ChunkSize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<Head>, Malformed> {
        parse_head(&mut BytesMut::from(text))
    }

    /// Decodes `wire` fed in pieces of `step` bytes; returns the body and whether it ended.
    fn decode_in_pieces(
        kind: BodyKind,
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, bool), Malformed> {
        let mut decoder = Decoder::new(kind);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        for piece in wire.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf)? {
                    Decoded::Data(d) => body.extend_from_slice(&d),
                    Decoded::More => break,
                    Decoded::End => return Ok((body, true)),
                }
            }
        }
        Ok((body, decoder.at_eof()))
    }

    #[test]
    fn a_request_head_is_in_origin_form_with_a_length() {
        let req = Request::post("http://up:9/v1/chat/completions?x=1")
            .header("host", "up:9")
            .header("content-type", "application/json")
            .header("transfer-encoding", "chunked")
            .body(Bytes::from_static(b"{}"))
            .unwrap();
        let mut out = Vec::new();
        encode_head(&req, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: up:9\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"
        );
        let get = Request::get("http://up:9/health")
            .body(Bytes::new())
            .unwrap();
        let mut out = Vec::new();
        encode_head(&get, &mut out);
        assert_eq!(out, b"GET /health HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn a_head_is_parsed_once_complete_and_leaves_the_body() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 5\r\n",
        );
        assert!(parse_head(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"\r\nhello");
        let h = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(h.response.status(), 200);
        assert_eq!(h.response.headers()["content-type"], "text/event-stream");
        assert_eq!(h.body, BodyKind::Length(5));
        assert!(h.keep_alive);
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn informational_heads_are_skipped_and_upgrades_refused() {
        let h = head("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.response.status(), 204);
        assert_eq!(h.body, BodyKind::Length(0));
        assert_eq!(
            head("HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n").unwrap_err(),
            Malformed::Upgrade
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let kind = |t: &str| head(t).unwrap().map(|h| (h.body, h.keep_alive)).unwrap();
        assert_eq!(
            kind("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            (BodyKind::Chunked, true)
        );
        assert_eq!(
            kind("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n"),
            (BodyKind::Chunked, false)
        );
        assert_eq!(
            kind("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"),
            (BodyKind::UntilClose, false)
        );
        assert_eq!(
            kind("HTTP/1.1 200 OK\r\n\r\n"),
            (BodyKind::UntilClose, false)
        );
        assert_eq!(
            kind("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n"),
            (BodyKind::Length(7), true)
        );
        assert_eq!(
            kind("HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: keep-alive, close\r\n\r\n"),
            (BodyKind::Length(7), false)
        );
        assert_eq!(
            kind("HTTP/1.0 200 OK\r\ncontent-length: 7\r\n\r\n"),
            (BodyKind::Length(7), false)
        );
        for bad in ["7, 8", "-1", "", "0x10", "99999999999999999999999"] {
            let t = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
            assert_eq!(head(&t).unwrap_err(), Malformed::ContentLength, "{bad}");
        }
    }

    #[test]
    fn broken_and_oversized_heads_are_errors() {
        assert_eq!(
            head("HTTP/1.1 abc OK\r\n\r\n").unwrap_err(),
            Malformed::Head
        );
        assert_eq!(
            head("SSH-2.0-OpenSSH\r\n\r\n").unwrap_err(),
            Malformed::Head
        );
        let long = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(head(&long).unwrap_err(), Malformed::HeadTooLarge);
    }

    #[test]
    fn chunked_bodies_decode_the_same_in_any_pieces() {
        let wire = b"5;name=value\r\nhello\r\n7 \r\n, world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 64] {
            let (body, ended) = decode_in_pieces(BodyKind::Chunked, wire, step).unwrap();
            assert_eq!(
                (body.as_slice(), ended),
                (&b"hello, world"[..], true),
                "step {step}"
            );
        }
        // What follows the body stays in the buffer.
        let mut buf = BytesMut::from(&wire[..]);
        let mut d = Decoder::new(BodyKind::Chunked);
        while d.decode(&mut buf).unwrap() != Decoded::End {}
        assert_eq!(&buf[..], b"NEXT");
        // Bare LF line endings are tolerated.
        let (body, ended) = decode_in_pieces(BodyKind::Chunked, b"2\nok\n0\n\n", 1).unwrap();
        assert_eq!((body.as_slice(), ended), (&b"ok"[..], true));
    }

    #[test]
    fn broken_chunked_bodies_are_errors_and_truncation_is_seen() {
        let err = |wire: &[u8]| decode_in_pieces(BodyKind::Chunked, wire, 64).unwrap_err();
        assert_eq!(err(b"zz\r\n"), Malformed::ChunkSize);
        assert_eq!(err(b"5 x\r\nhello\r\n"), Malformed::ChunkSize);
        assert_eq!(err(b"11111111111111111\r\n"), Malformed::ChunkSize);
        assert_eq!(err(b"2\r\nokXX0\r\n\r\n"), Malformed::ChunkEnd);
        assert_eq!(err(&[b'1'; MAX_CHUNK_LINE + 8]), Malformed::ChunkSize);
        let mut trailers = b"0\r\n".to_vec();
        trailers.extend(std::iter::repeat_n(b"x: y\r\n".as_slice(), 4000).flatten());
        assert_eq!(err(&trailers), Malformed::Trailers);
        // The upstream closed halfway: not ended.
        let (body, ended) = decode_in_pieces(BodyKind::Chunked, b"5\r\nhel", 64).unwrap();
        assert_eq!((body.as_slice(), ended), (&b"hel"[..], false));
    }

    #[test]
    fn length_and_until_close_bodies() {
        let (body, ended) = decode_in_pieces(BodyKind::Length(5), b"hello", 2).unwrap();
        assert_eq!((body.as_slice(), ended), (&b"hello"[..], true));
        let (body, ended) = decode_in_pieces(BodyKind::Length(5), b"hel", 2).unwrap();
        assert_eq!((body.as_slice(), ended), (&b"hel"[..], false));
        let (body, ended) = decode_in_pieces(BodyKind::UntilClose, b"all of it", 4).unwrap();
        assert_eq!((body.as_slice(), ended), (&b"all of it"[..], true));
        assert!(Decoder::new(BodyKind::Length(0)).is_done());
    }
}
