//! Errors as a contract.
//!
//! Every failure in the gateway is one [`Error`]. Each variant knows where it came from (the client,
//! an upstream, or the gateway itself), whether another attempt could succeed, and how it is shown to
//! a client: an HTTP status with an OpenAI error body before the first byte, or an SSE error event
//! after it. Keeping that mapping in one table means a handler never invents a status, and internals
//! (hostnames, file paths, upstream bodies) never leak into a response by accident.
//!
//! An upstream's error status is the one place where upstream text may reach a client, and only
//! as [`UpstreamError`]: the `error` object of a complete OpenAI-shaped JSON body, parsed and
//! re-serialised by the gateway (never the upstream's bytes), with the backend's own API key taken
//! out and, when a guardrails policy is served, the message redacted by its output rules. It is
//! shown for a 4xx only. Anything else (an HTML page, a body that is not JSON or not in OpenAI's
//! shape, one over the size kept, a body cut short) is answered with the gateway's own error for
//! that status. A 401, 403 or 407 from an upstream refused the gateway's credentials, not the
//! client's: the client cannot fix that, and a 401 would tell it its own key is wrong, so it is
//! answered 502 `upstream_auth_failed` without the upstream's message.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::api::body::{self, Body};

/// Where an error originated, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The request itself is wrong; retrying it unchanged cannot help.
    Client,
    /// A backend failed or refused.
    Upstream,
    /// The gateway itself failed or is shutting down.
    Internal,
}

/// Which deadline an upstream call missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// The TCP/TLS connection was not established in time.
    Connect,
    /// The response headers or first event did not arrive in time.
    FirstByte,
    /// The gap between two events exceeded the idle limit.
    Idle,
    /// The whole exchange exceeded its total budget.
    Total,
}

impl TimeoutPhase {
    /// A stable label for metrics and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutPhase::Connect => "connect",
            TimeoutPhase::FirstByte => "first_byte",
            TimeoutPhase::Idle => "idle",
            TimeoutPhase::Total => "total",
        }
    }
}

/// The gateway's one error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request breaks the API contract or an operating limit.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    /// The request names a model this gateway does not serve.
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// No route for this method and path.
    #[error("Unknown request URL: {method} {path}.")]
    NotFound { method: String, path: String },
    /// The path exists but not with this method.
    #[error("Method {method} is not allowed for {path}.")]
    MethodNotAllowed { method: String, path: String },
    /// The request body exceeded the configured size.
    #[error("Request body is larger than the limit of {limit} bytes.")]
    PayloadTooLarge { limit: usize },
    /// The body is not JSON.
    #[error("Content-Type must be application/json.")]
    UnsupportedMediaType,
    /// The request body could not be read from the client.
    #[error("The request body could not be read: {0}")]
    BodyRead(String),
    /// The client sent its request too slowly: the `part` (`headers`, `body`) did not arrive within
    /// `server.header_read_timeout`, or `server.body_read_timeout` and the minimum rate.
    #[error("The request {part} did not arrive in time.")]
    RequestTimeout { part: &'static str },
    /// No API key, or one the gateway does not know.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The key is valid but may not do this.
    #[error("{message}")]
    Forbidden { message: String, code: &'static str },
    /// A rate limit refused the request.
    #[error("Rate limit reached ({kind}); retry after {} s.", retry_after.as_secs_f64().ceil().max(1.0))]
    RateLimited {
        kind: &'static str,
        retry_after: Duration,
        headers: Box<http::HeaderMap>,
    },
    /// A local backend's queue is full.
    #[error("The model `{model}` is overloaded; retry after {} s.", retry_after.as_secs().max(1))]
    Overloaded {
        model: String,
        retry_after: Duration,
    },
    /// The backend could not be reached (connect refused, DNS, TLS).
    #[error("The upstream for this model could not be reached.")]
    UpstreamUnreachable { backend: String, detail: String },
    /// The backend missed one of its deadlines.
    #[error("The upstream for this model timed out ({}).", phase.as_str())]
    UpstreamTimeout {
        backend: String,
        phase: TimeoutPhase,
    },
    /// The backend answered with an HTTP error status. A 4xx is passed on with the upstream's own
    /// error when it had one (see the module doc); credentials the upstream refused are a 502.
    #[error("{}", upstream_status_message(*status))]
    UpstreamStatus {
        backend: String,
        status: StatusCode,
        /// The upstream's error object, when its body was a complete OpenAI-shaped one.
        upstream: Option<Box<UpstreamError>>,
    },
    /// The backend's answer could not be understood, or its stream ended badly.
    #[error("The upstream stream failed: {detail}.")]
    UpstreamProtocol { backend: String, detail: String },
    /// The backend closed the stream before it finished.
    #[error("The upstream closed the stream before it finished.")]
    UpstreamClosed { backend: String },
    /// The model exists but cannot serve now (not loaded, refused at load).
    #[error("The model `{model}` is not available: {reason}")]
    ModelUnavailable { model: String, reason: String },
    /// The gateway is shutting down and ended this stream.
    #[error("The server is shutting down.")]
    ShuttingDown,
    /// A bug or an unexpected state inside the gateway. The detail is logged, never sent.
    #[error("Internal server error.")]
    Internal(String),
}

/// A shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The `error` object of an upstream's OpenAI-shaped error body, as the gateway re-serialises it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamError {
    pub message: String,
    /// The upstream's `type`, or `upstream_error` when it gave none.
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<UpstreamCode>,
}

/// An upstream's `code`: OpenAI sends a string, several compatible servers the HTTP status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UpstreamCode {
    Text(String),
    Number(i64),
}

/// The wire form [`UpstreamError::parse`] accepts; unknown fields are ignored.
#[derive(Deserialize)]
struct WireErrorBody {
    error: WireError,
}

#[derive(Deserialize)]
struct WireError {
    message: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    param: Option<String>,
    #[serde(default)]
    code: Option<UpstreamCode>,
}

#[derive(Serialize)]
struct UpstreamErrorBody<'a> {
    error: &'a UpstreamError,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

/// The longest `type`, `param` or `code` passed on: they are identifiers, not prose.
const MAX_LABEL_BYTES: usize = 128;

/// What replaces the backend's API key in an upstream's message.
const KEY_REDACTED: &str = "[REDACTED]";

/// A 401, 403 or 407: the upstream refused the gateway's own credentials.
fn refused_credentials(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::PROXY_AUTHENTICATION_REQUIRED
    )
}

fn upstream_status_message(status: StatusCode) -> String {
    if refused_credentials(status) {
        format!(
            "The upstream for this model refused the gateway's credentials (status {status}); \
             this is a gateway configuration problem, not a problem with your request."
        )
    } else {
        format!("The upstream answered with status {status}.")
    }
}

// === impl UpstreamError ===

impl UpstreamError {
    /// The `error` object of a complete body in OpenAI's shape (`{"error":{"message":…}}`, with
    /// optional `type`, `param` and `code`); `None` for anything else, which the client never
    /// sees. `type`, `param` and `code` must be short identifiers, or the body is not OpenAI's.
    pub fn parse(body: &[u8]) -> Option<UpstreamError> {
        let WireError {
            message,
            kind,
            param,
            code,
        } = serde_json::from_slice::<WireErrorBody>(body).ok()?.error;
        let label = |s: &str| {
            !s.is_empty()
                && s.len() <= MAX_LABEL_BYTES
                && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        };
        if !kind.as_deref().is_none_or(label)
            || !param.as_deref().is_none_or(label)
            || matches!(&code, Some(UpstreamCode::Text(c)) if !label(c))
        {
            return None;
        }
        Some(UpstreamError {
            message,
            kind: kind.unwrap_or_else(|| "upstream_error".to_owned()),
            param,
            code,
        })
    }

    /// Takes `secret` (the backend's API key) out of every field: replaced in the message, and
    /// the field dropped where it is an identifier. An empty secret changes nothing.
    pub fn without(mut self, secret: &str) -> UpstreamError {
        if secret.is_empty() {
            return self;
        }
        if self.message.contains(secret) {
            self.message = self.message.replace(secret, KEY_REDACTED);
        }
        if self.kind.contains(secret) {
            self.kind = "upstream_error".to_owned();
        }
        if self.param.as_deref().is_some_and(|p| p.contains(secret)) {
            self.param = None;
        }
        if matches!(&self.code, Some(UpstreamCode::Text(c)) if c.contains(secret)) {
            self.code = None;
        }
        self
    }
}

// === impl Error ===

impl Error {
    /// A 400 naming the offending parameter.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
            code: None,
        }
    }

    /// A 400 with a code and no parameter.
    pub fn invalid_code(code: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidRequest {
            message: message.into(),
            param: None,
            code: Some(code),
        }
    }

    /// The status a client sees when this error happens before the first byte.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Error::ModelNotFound(_) | Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden { .. } => StatusCode::FORBIDDEN,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::BodyRead(_) => StatusCode::BAD_REQUEST,
            Error::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Error::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::UpstreamUnreachable { .. } => StatusCode::BAD_GATEWAY,
            Error::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Error::UpstreamStatus { status, .. }
                if status.is_client_error() && !refused_credentials(*status) =>
            {
                *status
            }
            Error::UpstreamStatus { .. } => StatusCode::BAD_GATEWAY,
            Error::UpstreamProtocol { .. } | Error::UpstreamClosed { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Error::ModelUnavailable { .. } | Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Where the error came from.
    pub fn origin(&self) -> Origin {
        match self {
            Error::InvalidRequest { .. }
            | Error::ModelNotFound(_)
            | Error::NotFound { .. }
            | Error::MethodNotAllowed { .. }
            | Error::PayloadTooLarge { .. }
            | Error::UnsupportedMediaType
            | Error::Unauthorized(_)
            | Error::Forbidden { .. }
            | Error::RateLimited { .. }
            | Error::BodyRead(_)
            | Error::RequestTimeout { .. } => Origin::Client,
            Error::UpstreamUnreachable { .. }
            | Error::UpstreamTimeout { .. }
            | Error::UpstreamStatus { .. }
            | Error::UpstreamProtocol { .. }
            | Error::UpstreamClosed { .. }
            | Error::Overloaded { .. } => Origin::Upstream,
            Error::ModelUnavailable { .. } | Error::ShuttingDown | Error::Internal(_) => {
                Origin::Internal
            }
        }
    }

    /// Whether another attempt (elsewhere, or later) could succeed. Only meaningful before the
    /// first byte has been sent to the client. Refused credentials are: another target holds
    /// other credentials, and the failures open this target's breaker.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::UpstreamUnreachable { .. }
            | Error::UpstreamTimeout { .. }
            | Error::Overloaded { .. }
            | Error::UpstreamClosed { .. } => true,
            Error::UpstreamStatus { status, .. } => {
                *status == StatusCode::TOO_MANY_REQUESTS
                    || status.is_server_error()
                    || refused_credentials(*status)
            }
            _ => false,
        }
    }

    /// A low-cardinality label for the upstream error metric, `None` for non-upstream errors.
    pub fn upstream_kind(&self) -> Option<&'static str> {
        Some(match self {
            Error::UpstreamUnreachable { .. } => "connect",
            Error::UpstreamTimeout { phase, .. } => match phase {
                TimeoutPhase::Connect => "timeout_connect",
                TimeoutPhase::FirstByte => "timeout_first_byte",
                TimeoutPhase::Idle => "timeout_idle",
                TimeoutPhase::Total => "timeout_total",
            },
            Error::UpstreamStatus { status, .. } if refused_credentials(*status) => "status_auth",
            Error::UpstreamStatus { status, .. } if status.is_client_error() => "status_4xx",
            Error::UpstreamStatus { .. } => "status_5xx",
            Error::UpstreamProtocol { .. } => "protocol",
            Error::UpstreamClosed { .. } => "closed",
            Error::Overloaded { .. } => "overloaded",
            _ => return None,
        })
    }

    /// The OpenAI `type` field.
    pub fn error_type(&self) -> &'static str {
        match self {
            Error::InvalidRequest { .. }
            | Error::ModelNotFound(_)
            | Error::NotFound { .. }
            | Error::MethodNotAllowed { .. }
            | Error::PayloadTooLarge { .. }
            | Error::UnsupportedMediaType
            | Error::BodyRead(_)
            | Error::RequestTimeout { .. } => "invalid_request_error",
            Error::Unauthorized(_) => "authentication_error",
            Error::Forbidden { .. } => "permission_error",
            Error::Overloaded { .. } | Error::RateLimited { .. } => "rate_limit_error",
            Error::UpstreamUnreachable { .. }
            | Error::UpstreamTimeout { .. }
            | Error::UpstreamStatus { .. }
            | Error::UpstreamProtocol { .. }
            | Error::UpstreamClosed { .. } => "upstream_error",
            Error::ModelUnavailable { .. } | Error::ShuttingDown => "service_unavailable",
            Error::Internal(_) => "server_error",
        }
    }

    /// The OpenAI `code` field.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::InvalidRequest { code, .. } => *code,
            Error::ModelNotFound(_) => Some("model_not_found"),
            Error::NotFound { .. } => Some("unknown_url"),
            Error::MethodNotAllowed { .. } => Some("method_not_allowed"),
            Error::PayloadTooLarge { .. } => Some("request_too_large"),
            Error::UnsupportedMediaType => Some("unsupported_media_type"),
            Error::BodyRead(_) => Some("body_read_error"),
            Error::RequestTimeout { .. } => Some("request_timeout"),
            Error::Unauthorized(_) => Some("invalid_api_key"),
            Error::Forbidden { code, .. } => Some(code),
            Error::RateLimited { .. } => Some("rate_limit_exceeded"),
            Error::Overloaded { .. } => Some("overloaded"),
            Error::UpstreamUnreachable { .. } => Some("upstream_unreachable"),
            Error::UpstreamTimeout { .. } => Some("upstream_timeout"),
            Error::UpstreamStatus { status, .. } if refused_credentials(*status) => {
                Some("upstream_auth_failed")
            }
            Error::UpstreamStatus { .. } => Some("upstream_error"),
            Error::UpstreamProtocol { .. } => Some("upstream_protocol_error"),
            Error::UpstreamClosed { .. } => Some("upstream_closed"),
            Error::ModelUnavailable { .. } => Some("model_unavailable"),
            Error::ShuttingDown => Some("shutting_down"),
            Error::Internal(_) => Some("internal_error"),
        }
    }

    /// The OpenAI `param` field.
    pub fn param(&self) -> Option<&str> {
        match self {
            Error::InvalidRequest { param, .. } => param.as_deref(),
            Error::ModelNotFound(_) => Some("model"),
            _ => None,
        }
    }

    /// The upstream's own error, when the client is shown it: a 4xx other than refused
    /// credentials whose body was OpenAI's shape.
    pub fn shown_upstream_error(&self) -> Option<&UpstreamError> {
        match self {
            Error::UpstreamStatus {
                status,
                upstream: Some(u),
                ..
            } if status.is_client_error() && !refused_credentials(*status) => Some(u),
            _ => None,
        }
    }

    /// Passes the upstream's message that the client would be shown through `redact` (the
    /// output policy): `Some` replaces it, `None` (a rule blocked it) drops the upstream's error
    /// for the gateway's own.
    pub fn redact_upstream_message(&mut self, redact: impl FnOnce(&str) -> Option<String>) {
        if self.shown_upstream_error().is_none() {
            return;
        }
        if let Error::UpstreamStatus { upstream, .. } = self {
            let redacted = upstream.as_deref().and_then(|u| redact(&u.message));
            match (redacted, upstream.as_deref_mut()) {
                (Some(message), Some(u)) => u.message = message,
                _ => *upstream = None,
            }
        }
    }

    /// `{"error":{"message","type","param","code"}}`: the gateway's own, or the upstream's
    /// re-serialised where it is shown.
    pub fn to_json(&self) -> Bytes {
        if let Some(upstream) = self.shown_upstream_error() {
            if let Ok(v) = serde_json::to_vec(&UpstreamErrorBody { error: upstream }) {
                return Bytes::from(v);
            }
        }
        let body = ErrorBody {
            error: ErrorObject {
                message: self.to_string(),
                kind: self.error_type(),
                param: self.param(),
                code: self.code(),
            },
        };
        // Serialising this struct of strings cannot fail; fall back to a fixed body rather than panic.
        serde_json::to_vec(&body)
            .map(Bytes::from)
            .unwrap_or_else(|_| Bytes::from_static(br#"{"error":{"message":"Internal server error.","type":"server_error","param":null,"code":"internal_error"}}"#))
    }

    /// The SSE event that ends a stream which has already started: `data: {error json}\n\n`.
    pub fn to_sse_event(&self) -> Bytes {
        let json = self.to_json();
        let mut out = Vec::with_capacity(json.len() + 8);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&json);
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    /// The full HTTP response for this error, sent before any byte of a success.
    pub fn into_response(self) -> http::Response<Body> {
        let mut resp = http::Response::new(body::full(self.to_json()));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Error::RateLimited { headers, .. } = &self {
            for (k, v) in headers.iter() {
                resp.headers_mut().insert(k.clone(), v.clone());
            }
        }
        if let Error::Unauthorized(_) = &self {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Error::Overloaded { retry_after, .. } = &self {
            let secs = retry_after.as_secs().max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_names_param_and_code() {
        let err = Error::invalid("temperature", "temperature must be between 0 and 2");
        let v: serde_json::Value = serde_json::from_slice(&err.to_json()).unwrap();
        assert_eq!(v["error"]["param"], "temperature");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["code"].is_null());
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }

    fn upstream_status(status: StatusCode, body: &[u8]) -> Error {
        Error::UpstreamStatus {
            backend: "b".into(),
            status,
            upstream: UpstreamError::parse(body).map(Box::new),
        }
    }

    #[test]
    fn upstream_4xx_passes_through_and_5xx_becomes_502() {
        let four = upstream_status(StatusCode::UNPROCESSABLE_ENTITY, b"{\"error\":{}}");
        assert_eq!(four.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(!four.is_retryable());
        let five = upstream_status(StatusCode::SERVICE_UNAVAILABLE, b"");
        assert_eq!(five.status(), StatusCode::BAD_GATEWAY);
        assert!(five.is_retryable());
    }

    #[test]
    fn an_openai_shaped_4xx_is_re_serialised_and_anything_else_is_ours() {
        let body = br#"{"error":{"message":"bad tool","type":"invalid_request_error",
            "param":"tools","code":null,"extra":{"trace":"10.0.0.7"}},"debug":"internal"}"#;
        let err = upstream_status(StatusCode::BAD_REQUEST, body);
        assert_eq!(
            &err.to_json()[..],
            br#"{"error":{"message":"bad tool","type":"invalid_request_error","param":"tools","code":null}}"#
        );
        // A numeric code (vLLM) is kept; a missing type becomes ours.
        let err = upstream_status(
            StatusCode::BAD_REQUEST,
            br#"{"error":{"message":"m","code":400}}"#,
        );
        let v: serde_json::Value = serde_json::from_slice(&err.to_json()).unwrap();
        assert_eq!(v["error"]["code"], 400);
        assert_eq!(v["error"]["type"], "upstream_error");
        for body in [
            &b"<html><body>10.0.0.7</body></html>"[..],
            b"{\"error\":{\"message\":\"cut sho",
            b"{\"error\":\"a string\"}",
            b"{\"error\":{\"message\":7}}",
            b"{\"message\":\"no error object\"}",
            br#"{"error":{"message":"m","type":"has spaces in it"}}"#,
        ] {
            let err = upstream_status(StatusCode::BAD_REQUEST, body);
            assert!(err.shown_upstream_error().is_none(), "{body:?}");
            let v: serde_json::Value = serde_json::from_slice(&err.to_json()).unwrap();
            assert_eq!(v["error"]["code"], "upstream_error");
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
        // A 5xx never shows the upstream's message.
        let err = upstream_status(StatusCode::INTERNAL_SERVER_ERROR, body);
        assert!(err.shown_upstream_error().is_none());
        assert!(!String::from_utf8_lossy(&err.to_json()).contains("bad tool"));
    }

    #[test]
    fn refused_credentials_are_a_retryable_502_without_the_upstream_message() {
        for status in [
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        ] {
            let err = upstream_status(status, br#"{"error":{"message":"key sk-1 is wrong"}}"#);
            assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
            assert_eq!(err.code(), Some("upstream_auth_failed"));
            assert_eq!(err.upstream_kind(), Some("status_auth"));
            assert!(err.is_retryable());
            let resp = err.into_response();
            assert!(!resp.headers().contains_key(header::WWW_AUTHENTICATE));
        }
    }

    #[test]
    fn the_backend_key_is_taken_out_of_every_field() {
        let u = UpstreamError::parse(
            br#"{"error":{"message":"key sk-abc and sk-abc again","type":"t-sk-abc",
                "param":"sk-abc","code":"c"}}"#,
        )
        .unwrap()
        .without("sk-abc");
        assert_eq!(u.message, "key [REDACTED] and [REDACTED] again");
        assert_eq!(u.kind, "upstream_error");
        assert_eq!(u.param, None);
        assert_eq!(u.code, Some(UpstreamCode::Text("c".into())));
        assert_eq!(u.clone().without(""), u);
    }

    #[test]
    fn a_blocked_upstream_message_falls_back_to_ours() {
        let body = br#"{"error":{"message":"secret","type":"t"}}"#;
        let mut err = upstream_status(StatusCode::BAD_REQUEST, body);
        err.redact_upstream_message(|m| Some(m.replace("secret", "[SECRET]")));
        assert_eq!(err.shown_upstream_error().unwrap().message, "[SECRET]");
        err.redact_upstream_message(|_| None);
        assert!(err.shown_upstream_error().is_none());
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn overloaded_sets_retry_after() {
        let resp = Error::Overloaded {
            model: "m".into(),
            retry_after: Duration::from_secs(2),
        }
        .into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn sse_event_is_one_data_frame() {
        let ev = Error::ShuttingDown.to_sse_event();
        assert!(ev.starts_with(b"data: {\"error\""));
        assert!(ev.ends_with(b"\n\n"));
    }
}
