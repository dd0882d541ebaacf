//! JSON strings written by hand, for output rendered without a serializer (stream chunks, the
//! access log): the bytes are exactly serde_json's for the same string.

use bytes::BufMut;

/// Writes `s` as a JSON string (into a `Vec<u8>` or a `BytesMut`), escaped as serde_json
/// escapes: `"` and `\`, the short forms `\b \t \n \f \r`, other control characters as
/// `\u00XX`; everything else as is.
pub fn json_str<B: BufMut + ?Sized>(out: &mut B, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.put_u8(b'"');
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.put_slice(&bytes[run..i]);
        run = i + 1;
        match b {
            b'"' => out.put_slice(b"\\\""),
            b'\\' => out.put_slice(b"\\\\"),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            b'\t' => out.put_slice(b"\\t"),
            0x08 => out.put_slice(b"\\b"),
            0x0c => out.put_slice(b"\\f"),
            _ => out.put_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
    }
    out.put_slice(&bytes[run..]);
    out.put_u8(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn escapes_as_serde_json_does(s in "[\\x00-\\x7f]{0,24}|\\PC{0,24}") {
            let mut out = Vec::new();
            json_str(&mut out, &s);
            prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&s).unwrap());
        }
    }
}
