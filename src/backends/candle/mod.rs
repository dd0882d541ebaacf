//! Local GGUF models served in-process with candle.

mod config;

pub use config::CandleConfig;

use std::sync::Arc;

use super::{Backend, BackendRequest, ChatFuture, Readiness};
use crate::error::Error;
use crate::metrics::Metrics;

/// A local model backend.
pub struct CandleBackend {
    name: String,
    #[allow(dead_code)]
    config: CandleConfig,
    #[allow(dead_code)]
    metrics: Arc<Metrics>,
}

impl CandleBackend {
    /// Loads the model (fetching it if missing) and starts its generation threads.
    pub async fn start(name: &str, config: CandleConfig, metrics: Arc<Metrics>) -> Self {
        CandleBackend {
            name: name.to_owned(),
            config,
            metrics,
        }
    }
}

impl Backend for CandleBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "candle"
    }

    fn chat(&self, req: BackendRequest) -> ChatFuture {
        let model = req.model.name.clone();
        Box::pin(async move {
            Err(Error::ModelUnavailable {
                model,
                reason: "local models are not available in this build".into(),
            })
        })
    }

    fn readiness(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Readiness> + Send + '_>> {
        Box::pin(async { Readiness::NotReady("not loaded".into()) })
    }
}
