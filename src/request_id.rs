//! The id that ties one request's access line, guardrail evidence, upstream call and response
//! together.
//!
//! Every layer of a request reads it (the access line, audit records, the upstream's
//! `x-request-id`, the response header) and a streamed response keeps it for minutes, so it is
//! held once, as a header value whose clones share its bytes: a use is a reference count, not a
//! copy, and it never needs converting back into a header.

use std::fmt;

use bytes::Bytes;
use http::HeaderValue;

/// One request's id: the client's when it sent a sane one, 32 hex digits otherwise.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

// === impl RequestId ===

impl RequestId {
    /// The longest client id kept.
    pub const MAX_LEN: usize = 128;

    /// A fresh random id (a UUID v4 as 32 lowercase hex digits).
    pub fn generate() -> Self {
        let mut hex = [0u8; 32];
        uuid::Uuid::new_v4().simple().encode_lower(&mut hex);
        // One allocation, shared by every clone; hex digits are always a valid header value.
        HeaderValue::from_maybe_shared(Bytes::from_owner(hex))
            .map(RequestId)
            .unwrap_or_default()
    }

    /// The client's id, when it is 1–128 visible ASCII characters (anything else could pollute
    /// logs). It is copied: a slice of the connection's read buffer would keep that buffer alive
    /// for as long as the response streams.
    pub fn from_client(v: &HeaderValue) -> Option<Self> {
        let b = v.as_bytes();
        let sane = !b.is_empty() && b.len() <= Self::MAX_LEN && b.iter().all(u8::is_ascii_graphic);
        if !sane {
            return None;
        }
        HeaderValue::from_bytes(b).ok().map(RequestId)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only visible ASCII gets in, so this never falls back.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as a header value (a clone of it is a reference count).
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

impl Default for RequestId {
    /// The empty id, for work done outside any request.
    fn default() -> Self {
        RequestId(HeaderValue::from_static(""))
    }
}

impl From<&str> for RequestId {
    /// An id from text, for tests and tools; text that is not a sane id gives the empty id.
    fn from(s: &str) -> Self {
        HeaderValue::from_str(s)
            .ok()
            .and_then(|v| Self::from_client(&v))
            .unwrap_or_default()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_32_hex_digits_and_differ() {
        let (a, b) = (RequestId::generate(), RequestId::generate());
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(a.header_value().as_bytes(), a.as_str().as_bytes());
    }

    #[test]
    fn client_ids_must_be_short_visible_ascii() {
        let ok = HeaderValue::from_static("abc-123");
        assert_eq!(RequestId::from_client(&ok).unwrap().as_str(), "abc-123");
        let long = "x".repeat(RequestId::MAX_LEN + 1);
        for bad in ["", "has space", "tab\there", long.as_str()] {
            let v = HeaderValue::from_str(bad).unwrap();
            assert!(RequestId::from_client(&v).is_none(), "{bad:?}");
        }
        let obs = HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap();
        assert!(RequestId::from_client(&obs).is_none());
    }

    #[test]
    fn a_clone_shares_the_bytes() {
        let a = RequestId::generate();
        let b = a.clone();
        assert_eq!(
            a.header_value().as_bytes().as_ptr(),
            b.header_value().as_bytes().as_ptr()
        );
    }
}
