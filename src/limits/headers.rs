//! The `x-ratelimit-*` headers of a response, in OpenAI's names and formats.
//!
//! Every admitted request and every 429 carries up to six of them (limit, remaining and reset, for
//! requests and for tokens). Made one by one, each value is an allocation and each reset a formatted string;
//! here all of them are written into one buffer and every header value is a slice of it, so a
//! response gets its rate-limit headers for one allocation.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::Granted;

// Built at compile time: a name made from a `&str` at each insert is parsed (and, for these
// non-standard names, allocated) on every request.
const NAMES: [HeaderName; 6] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// Room for the longest six values: four 20-digit counts and two resets of at most 22 bytes.
const CAPACITY: usize = 160;

/// The rate-limit headers of one response; empty when no limit applies.
#[derive(Debug, Clone, Default)]
pub struct RateHeaders {
    /// Every value, one after another.
    text: Bytes,
    /// Where each value of [`NAMES`] lies in `text`; an absent value is an empty span.
    spans: [(u8, u8); 6],
}

/// Writes values one after another into a fixed buffer.
struct Writer {
    buf: [u8; CAPACITY],
    len: usize,
    spans: [(u8, u8); 6],
}

// === impl RateHeaders ===

impl RateHeaders {
    /// The headers for the tightest request and token grants.
    pub fn new(requests: Option<Granted>, tokens: Option<Granted>) -> Self {
        let mut w = Writer {
            buf: [0; CAPACITY],
            len: 0,
            spans: [(0, 0); 6],
        };
        for (first, grant) in [(0, requests), (3, tokens)] {
            if let Some(g) = grant {
                let mut digits = itoa::Buffer::new();
                w.value(first, &[digits.format(g.limit).as_bytes()]);
                w.value(first + 1, &[digits.format(g.remaining).as_bytes()]);
                w.reset(first + 2, g.reset);
            }
        }
        if w.len == 0 {
            return RateHeaders::default();
        }
        RateHeaders {
            text: Bytes::from_owner(w.buf).slice(..w.len),
            spans: w.spans,
        }
    }

    /// Inserts the headers into `h`.
    pub fn apply_to(&self, h: &mut HeaderMap) {
        for (name, &(start, end)) in NAMES.iter().zip(&self.spans) {
            if start == end {
                continue;
            }
            let value = self.text.slice(usize::from(start)..usize::from(end));
            if let Ok(v) = HeaderValue::from_maybe_shared(value) {
                h.insert(name.clone(), v);
            }
        }
    }
}

// === impl Writer ===

impl Writer {
    /// Writes the value made of `parts`, one after another.
    fn value(&mut self, index: usize, parts: &[&[u8]]) {
        let end = self.len + parts.iter().map(|p| p.len()).sum::<usize>();
        // Cannot overflow (see `CAPACITY`); a value that would is left out rather than cut.
        let Some(mut room) = self.buf.get_mut(self.len..end) else {
            return;
        };
        for part in parts {
            let (here, rest) = room.split_at_mut(part.len());
            here.copy_from_slice(part);
            room = rest;
        }
        self.spans[index] = (self.len as u8, end as u8);
        self.len = end;
    }

    fn reset(&mut self, index: usize, d: Duration) {
        let ms = d.as_millis();
        if ms < 1000 {
            // The usual case, on every admitted request: no formatting machinery.
            self.value(index, &[itoa::Buffer::new().format(ms).as_bytes(), b"ms"]);
        } else {
            self.value(index, &[format_reset(d).as_bytes()]);
        }
    }
}

/// A reset time as OpenAI writes it: `250ms`, `1.500s`, `1m30s`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs_f64();
    let m = (s / 60.0).floor();
    let rest = s - m * 60.0;
    if m >= 1.0 {
        format!("{m}m{rest:.0}s")
    } else {
        format!("{rest:.3}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(limit: u64, remaining: u64, reset_ms: u64) -> Granted {
        Granted {
            limit,
            remaining,
            reset: Duration::from_millis(reset_ms),
        }
    }

    fn map(h: &RateHeaders) -> HeaderMap {
        let mut m = HeaderMap::new();
        h.apply_to(&mut m);
        m
    }

    #[test]
    fn reset_format_matches_openai_style() {
        assert_eq!(format_reset(Duration::from_millis(250)), "250ms");
        assert_eq!(format_reset(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.500s");
    }

    #[test]
    fn both_kinds_give_six_headers_with_their_values() {
        let h = RateHeaders::new(Some(grant(60, 59, 999)), Some(grant(100_000, 99_990, 1500)));
        let m = map(&h);
        assert_eq!(m.len(), 6);
        assert_eq!(m["x-ratelimit-limit-requests"], "60");
        assert_eq!(m["x-ratelimit-remaining-requests"], "59");
        assert_eq!(m["x-ratelimit-reset-requests"], "999ms");
        assert_eq!(m["x-ratelimit-limit-tokens"], "100000");
        assert_eq!(m["x-ratelimit-remaining-tokens"], "99990");
        assert_eq!(m["x-ratelimit-reset-tokens"], "1.500s");
    }

    #[test]
    fn one_kind_gives_only_its_headers() {
        let m = map(&RateHeaders::new(None, Some(grant(10, 0, 0))));
        assert_eq!(m.len(), 3);
        assert_eq!(m["x-ratelimit-limit-tokens"], "10");
        assert_eq!(m["x-ratelimit-reset-tokens"], "0ms");
        assert!(m.get("x-ratelimit-limit-requests").is_none());
        assert!(map(&RateHeaders::new(None, None)).is_empty());
        assert!(map(&RateHeaders::default()).is_empty());
    }

    #[test]
    fn the_longest_values_fit() {
        let huge = Granted {
            limit: u64::MAX,
            remaining: u64::MAX,
            reset: Duration::from_secs(u64::MAX / 1000),
        };
        let h = RateHeaders::new(Some(huge), Some(huge));
        let m = map(&h);
        assert_eq!(m.len(), 6);
        assert_eq!(
            m["x-ratelimit-remaining-tokens"],
            u64::MAX.to_string().as_str()
        );
        assert_eq!(
            m["x-ratelimit-reset-tokens"],
            format_reset(huge.reset).as_str()
        );
    }
}
