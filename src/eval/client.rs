//! The eval runner's HTTP client: one chat request to a gateway, read as a scorer needs it.
//!
//! A suite measures the gateway as callers meet it, so cases go over HTTP through the whole
//! request path (keys, limits, guardrails, routing), not to a backend directly. Each request is
//! non-streaming (the collected answer is rendered from the same stream as SSE, so nothing is
//! lost), and its result is sorted three ways: an answer; a refusal the gateway meant (any other
//! status, a guardrail block among them), which is scored; and a transport failure (connect
//! refused or reset, 502, 503, 504), which the runner may retry because the case never reached a
//! model that could answer it. The API key goes out only in `Authorization`, marked sensitive,
//! and is left out of `Debug`.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::record::CaseServed;

/// Answers larger than this are refused rather than read into memory.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// A client for one gateway's chat endpoint.
pub struct GatewayClient {
    chat_uri: Uri,
    /// `Bearer <key>`, marked sensitive.
    auth: Option<HeaderValue>,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// The whole exchange, headers to the last byte.
    timeout: Duration,
    /// `x-sluice-target`: the one target every request is pinned to (`--target`).
    pin: Option<HeaderValue>,
}

/// What the gateway did with one request, short of a transport failure.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Answer(Completion),
    /// An error status other than 502/503/504, with the OpenAI error body's fields.
    Refused {
        status: u16,
        code: Option<String>,
        message: String,
    },
}

/// A 200 answer's first choice and usage.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Completion {
    pub text: String,
    pub finish_reason: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// `x-sluice-prompt-id` and `x-sluice-prompt-version`, when the request named a prompt.
    pub prompt: Option<crate::prompts::PromptTag>,
    /// What the gateway's headers say served the answer.
    pub served: CaseServed,
}

/// A request that did not get an answer or a refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CallError {
    /// Connect refused or reset, 502, 503 or 504: the case may be sent again.
    pub retryable: bool,
    pub message: String,
}

// === impl GatewayClient ===

impl GatewayClient {
    /// A client for `base_url` (`http://host:port` or `…/v1`).
    pub fn new(base_url: &str, key: Option<&str>, timeout: Duration) -> Result<Self, String> {
        let base = base_url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        let chat_uri: Uri = format!("{base}/v1/chat/completions")
            .parse()
            .map_err(|e| format!("`--url`: {e}"))?;
        if !matches!(chat_uri.scheme_str(), Some("http" | "https")) || chat_uri.host().is_none() {
            return Err("`--url`: must be an http:// or https:// URL with a host".into());
        }
        let auth = match key.filter(|k| !k.is_empty()) {
            None => None,
            Some(k) => {
                let mut v = HeaderValue::try_from(format!("Bearer {k}"))
                    .map_err(|_| "the API key is not a valid header value".to_owned())?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| format!("TLS setup: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(GatewayClient {
            chat_uri,
            auth,
            http: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
            pin: None,
        })
    }

    /// Pins every request to the model's target `name` (`x-sluice-target`), so a candidate is
    /// measured alone, whatever its weight.
    pub fn pin_target(mut self, name: &str) -> Result<Self, String> {
        self.pin = Some(
            HeaderValue::from_str(name)
                .map_err(|_| format!("`--target`: `{name}` is not a valid header value"))?,
        );
        Ok(self)
    }

    /// Where requests go, without any credentials in the URL, for the record.
    pub fn target(&self) -> String {
        let host = self.chat_uri.host().unwrap_or_default();
        let port = self
            .chat_uri
            .port()
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        let scheme = self.chat_uri.scheme_str().unwrap_or("http");
        format!("{scheme}://{host}{port}/v1")
    }

    /// Sends one chat request.
    pub async fn chat(&self, body: &Value) -> Result<Outcome, CallError> {
        match tokio::time::timeout(self.timeout, self.exchange(body)).await {
            Ok(r) => r,
            Err(_) => Err(CallError {
                retryable: false,
                message: format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                ),
            }),
        }
    }

    async fn exchange(&self, body: &Value) -> Result<Outcome, CallError> {
        let mut req = Request::post(self.chat_uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| CallError {
                retryable: false,
                message: format!("cannot build the request: {e}"),
            })?;
        if let Some(auth) = &self.auth {
            req.headers_mut()
                .insert(header::AUTHORIZATION, auth.clone());
        }
        if let Some(pin) = &self.pin {
            req.headers_mut().insert("x-sluice-target", pin.clone());
        }
        let resp = self.http.request(req).await.map_err(|e| CallError {
            retryable: e.is_connect() || is_reset(&e),
            message: format!("request failed: {}", chain(&e)),
        })?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let prompt = header("x-sluice-prompt-id")
            .zip(header("x-sluice-prompt-version"))
            .map(|(id, version)| crate::prompts::PromptTag { id, version });
        let served = CaseServed {
            target: header("x-sluice-target"),
            version: header("x-sluice-model-version"),
            policy_version: header("x-sluice-policy-version"),
        };
        let body = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| CallError {
                retryable: is_reset(e.as_ref()),
                message: format!("reading the answer failed: {}", chain(e.as_ref())),
            })?
            .to_bytes();
        let mut outcome = read(status, &body)?;
        if let Outcome::Answer(c) = &mut outcome {
            c.prompt = prompt;
            c.served = served;
        }
        Ok(outcome)
    }
}

impl std::fmt::Debug for GatewayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayClient")
            .field("chat_uri", &self.target())
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Sorts a response (see the module doc).
pub fn read(status: u16, body: &[u8]) -> Result<Outcome, CallError> {
    if matches!(status, 502..=504) {
        return Err(CallError {
            retryable: true,
            message: format!("status {status}: {}", error_message(body)),
        });
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| CallError {
        retryable: false,
        message: format!("status {status}: the body is not JSON: {e}"),
    })?;
    if status != 200 {
        let error = &value["error"];
        return Ok(Outcome::Refused {
            status,
            code: error["code"].as_str().map(str::to_owned),
            message: error["message"].as_str().unwrap_or_default().to_owned(),
        });
    }
    let choice = &value["choices"][0];
    let usage = &value["usage"];
    Ok(Outcome::Answer(Completion {
        text: choice["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        finish_reason: choice["finish_reason"].as_str().map(str::to_owned),
        prompt_tokens: usage["prompt_tokens"].as_u64(),
        completion_tokens: usage["completion_tokens"].as_u64(),
        prompt: None,
        served: CaseServed::default(),
    }))
}

fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "no OpenAI error body".into())
}

/// A connection reset, aborted or cut short somewhere in the error's sources.
fn is_reset(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionReset
                    | ConnectionAborted
                    | ConnectionRefused
                    | BrokenPipe
                    | UnexpectedEof
            ) {
                return true;
            }
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// The error and its sources, `: `-joined.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_sorted() {
        let ok = br#"{"choices":[{"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        let Ok(Outcome::Answer(c)) = read(200, ok) else {
            panic!()
        };
        assert_eq!(c.text, "Hi");
        assert_eq!(c.finish_reason.as_deref(), Some("stop"));
        assert_eq!((c.prompt_tokens, c.completion_tokens), (Some(3), Some(1)));

        let blocked = br#"{"error":{"message":"no","type":"invalid_request_error","param":null,"code":"content_filter"}}"#;
        assert_eq!(
            read(400, blocked).unwrap(),
            Outcome::Refused {
                status: 400,
                code: Some("content_filter".into()),
                message: "no".into()
            }
        );
        assert!(matches!(
            read(429, blocked),
            Ok(Outcome::Refused { status: 429, .. })
        ));
        assert!(matches!(
            read(500, blocked),
            Ok(Outcome::Refused { status: 500, .. })
        ));
        for status in [502, 503, 504] {
            let e = read(status, b"").unwrap_err();
            assert!(e.retryable, "{status}");
        }
        assert!(!read(200, b"<html>").unwrap_err().retryable);
    }

    #[test]
    fn urls_and_keys() {
        let t = Duration::from_secs(1);
        let c = GatewayClient::new("http://127.0.0.1:8080/v1/", Some("sk-secret"), t).unwrap();
        assert_eq!(c.chat_uri, "http://127.0.0.1:8080/v1/chat/completions");
        assert!(!format!("{c:?}").contains("sk-secret"));
        let c = GatewayClient::new("https://user:pw@example.com", None, t).unwrap();
        assert_eq!(c.target(), "https://example.com/v1");
        assert!(GatewayClient::new("ftp://x", None, t).is_err());
        assert!(GatewayClient::new("not a url", None, t).is_err());
    }

    #[tokio::test]
    async fn a_refused_connection_is_retryable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let c =
            GatewayClient::new(&format!("http://{addr}"), None, Duration::from_secs(5)).unwrap();
        let e = c.chat(&serde_json::json!({})).await.unwrap_err();
        assert!(e.retryable, "{e}");
    }
}
