//! Remote OpenAI-compatible endpoints.

use std::future::Future;
use std::pin::Pin;

use super::{Backend, BackendRequest, ChatFuture, Readiness};
use crate::config::OpenAiConfig;
use crate::error::Error;

/// A remote OpenAI-compatible backend.
pub struct OpenAiBackend {
    name: String,
    #[allow(dead_code)]
    config: OpenAiConfig,
}

impl OpenAiBackend {
    /// Builds the pooled client.
    pub fn new(name: &str, config: OpenAiConfig) -> anyhow::Result<Self> {
        Ok(OpenAiBackend {
            name: name.to_owned(),
            config,
        })
    }
}

impl Backend for OpenAiBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "openai"
    }

    fn chat(&self, _req: BackendRequest) -> ChatFuture {
        let backend = self.name.clone();
        Box::pin(async move {
            Err(Error::UpstreamUnreachable {
                backend,
                detail: "not implemented".into(),
            })
        })
    }

    fn readiness(&self) -> Pin<Box<dyn Future<Output = Readiness> + Send + '_>> {
        Box::pin(async { Readiness::Ready })
    }
}
