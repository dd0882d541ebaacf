//! The service an HTTP/1.1 connection calls, wrapped around the shared one.
//!
//! It ends the connection where going on would be unsound:
//! - a head the connection's reader found refusable ([`crate::sniff::HeadReport`]: a bare-LF line
//!   end, a `Transfer-Encoding` other than one `chunked`, or one beside `Content-Length`) is
//!   answered 400 without calling the inner service;
//! - a request after which the reader can no longer find the next head is served, and closes;
//! - a request refused before its body was read to the end (408: the body was too slow) leaves
//!   no way to find the next head either: hyper closes the connection after it.
//!
//! Each of these responses says `Connection: close`, so a client knows not to send another
//! request on the connection. HTTP/2 gets none of this: it has no line ends or transfer codings,
//! a stream ends on its own, and the header is illegal there.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;

use crate::api::body::Body;
use crate::sniff::{HeadReport, Verdict};

/// Wraps the service of one HTTP/1.1 connection.
#[derive(Debug)]
pub struct H1Service<S> {
    inner: S,
    report: Arc<HeadReport>,
    /// Requests called so far: the number of the next one, as the reader counts heads. hyper
    /// calls the service once per head, in order.
    called: Cell<u64>,
}

pin_project! {
    #[project = ResponseProj]
    pub enum ResponseFuture<F> {
        /// The inner response, marked `Connection: close` when it ends the connection.
        Served { #[pin] inner: F, close: bool },
        /// A refusal, answered without the inner service.
        Refused { resp: Option<Response<Body>> },
    }
}

// === impl H1Service ===

impl<S> H1Service<S> {
    pub fn new(inner: S, report: Arc<HeadReport>) -> Self {
        H1Service {
            inner,
            report,
            called: Cell::new(0),
        }
    }
}

impl<S, B> hyper::service::Service<Request<B>> for H1Service<S>
where
    S: hyper::service::Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn call(&self, req: Request<B>) -> Self::Future {
        let n = self.called.get();
        self.called.set(n + 1);
        let close = match self.report.verdict(n) {
            Verdict::Serve => false,
            Verdict::ServeThenClose => true,
            Verdict::Refuse(err) => {
                tracing::debug!(error = %err, "request head refused");
                let mut resp = err.into_response();
                close_connection(&mut resp);
                return ResponseFuture::Refused { resp: Some(resp) };
            }
        };
        ResponseFuture::Served {
            inner: self.inner.call(req),
            close,
        }
    }
}

fn close_connection(resp: &mut Response<Body>) {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

// === impl ResponseFuture ===

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseProj::Served { inner, close } => {
                let mut resp = std::task::ready!(inner.poll(cx))?;
                if *close || resp.status() == StatusCode::REQUEST_TIMEOUT {
                    close_connection(&mut resp);
                }
                Poll::Ready(Ok(resp))
            }
            ResponseProj::Refused { resp } => match resp.take() {
                Some(resp) => Poll::Ready(Ok(resp)),
                // Polled after it finished: hyper never does.
                None => Poll::Pending,
            },
        }
    }
}
