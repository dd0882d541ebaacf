//! The one response body type the server sends, and constructors for it.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};

/// Every response body. Errors never travel inside the body: a failed stream ends with an SSE error
/// event, so the body itself is infallible.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A body holding one buffer.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A JSON response with the given status.
pub fn json_response(status: http::StatusCode, json: impl Into<Bytes>) -> http::Response<Body> {
    let mut resp = http::Response::new(full(json));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
