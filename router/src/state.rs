//! State shared by every handler.

use std::sync::Arc;

use crate::batching::WaitingGate;
use crate::client::ShardPool;
use crate::error::ApiError;
use crate::generation_defaults::GenerationDefaults;
use crate::metrics::Metrics;
use crate::tokenize::ModelTokenizer;

pub struct AppState {
    /// The one model name this router serves.
    pub model_name: String,
    pub tokenizer: ModelTokenizer,
    pub shards: Arc<ShardPool>,
    /// When set, requests need `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    pub waiting: Arc<WaitingGate>,
    /// Largest `n` a request may ask for.
    pub max_n: u32,
    /// Sampling defaults of the model's generation_config.json.
    pub generation_defaults: GenerationDefaults,
    /// The one Prometheus exporter (`GET /metrics`).
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// 404 unless `requested` is absent or names the served model.
    pub fn check_model(&self, requested: Option<&str>) -> Result<(), ApiError> {
        match requested {
            Some(name) if name != self.model_name => Err(ApiError::ModelNotFound(name.into())),
            _ => Ok(()),
        }
    }

    /// How many token ids a prompt may use: the model's (its embedding rows, from the
    /// shards) when known, else the tokenizer's. The model's wins both ways: a padded
    /// model (Qwen2: 151,936 rows, ~151,665 tokenizer ids) serves the ids past the
    /// tokenizer's, and the shard fails a sequence with any id past its own.
    pub fn vocab_size(&self) -> usize {
        match self.shards.vocab_size() {
            Some(size) => size as usize,
            None => self.tokenizer.vocab_size(),
        }
    }

    /// The context limit of the ready shards; 503 when none is ready.
    pub fn max_context(&self) -> Result<u32, ApiError> {
        self.shards
            .max_context()
            .ok_or_else(|| ApiError::Unavailable("No shard is ready to serve requests.".into()))
    }
}
