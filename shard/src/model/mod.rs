//! The model: configuration, weights and the forward pass, written once against
//! [`crate::backend::Backend`].
//!
//! The engine sees a model only through [`CausalLm`]: it hands over one batch of sequence
//! chunks per step (prefill chunks and single decode tokens mixed) together with each
//! sequence's block table, and gets logits back. The model owns the KV-cache *storage*;
//! the engine owns the *allocation* of blocks (`crate::kv_cache`).

mod batch;
mod config;
pub mod gguf;
pub mod llama;
pub mod source;

use std::path::PathBuf;

use crate::backend::{BackendError, CpuBackend, WeightFormat};

pub use config::LlamaConfig;
pub use llama::Llama;
pub use source::ModelSource;

/// Static facts about a loaded model that the engine, the service and the router need.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Display name (file stem unless overridden).
    pub name: String,
    /// Weight dtype as loaded, e.g. "q4_1" or "bf16".
    pub dtype: String,
    /// "cpu", "cuda:0", ...
    pub device: String,
    pub vocab_size: usize,
    /// Longest sequence (prompt + generated) the model supports.
    pub max_context: usize,
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Tokens that end generation unless the request sets ignore_eos.
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
}

/// One sequence's slice of a batched forward pass.
#[derive(Debug, Clone, Copy)]
pub struct SeqChunk<'a> {
    /// Tokens fed this step: a prefill chunk, or the single newest token when decoding.
    pub tokens: &'a [u32],
    /// Tokens of this sequence already in the KV cache, i.e. the position of `tokens[0]`.
    pub start_pos: usize,
    /// Physical KV block ids of this sequence in logical order. Covers at least
    /// `start_pos + tokens.len()` tokens.
    pub block_table: &'a [u32],
    /// Whether the logits of this chunk's last token are needed (false for non-final prefill
    /// chunks, whose only job is to fill the cache).
    pub need_logits: bool,
}

/// How to load a model and size its KV cache.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Path of a `.gguf` file.
    pub model_path: PathBuf,
    /// Overrides the display name in [`ModelInfo::name`].
    pub served_model_name: Option<String>,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Exact number of KV blocks; when `None`, as many as fit in `kv_cache_bytes`.
    pub num_kv_blocks: Option<usize>,
    /// Memory budget for the KV cache when `num_kv_blocks` is `None`.
    pub kv_cache_bytes: usize,
    /// "cpu" for now; "cuda:N" once the CUDA backend lands.
    pub device: String,
}

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid GGUF model: {0}")]
    Format(String),
    #[error("unsupported model architecture `{0}` (supported: llama, mistral)")]
    UnsupportedArchitecture(String),
    #[error("unsupported device `{0}`")]
    UnsupportedDevice(String),
    #[error("KV cache too small: {0}")]
    KvCache(String),
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    #[error("backend error: {0}")]
    Backend(String),
}

impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        ModelError::Backend(e.to_string())
    }
}

impl From<BackendError> for ModelError {
    fn from(e: BackendError) -> Self {
        ModelError::Backend(e.to_string())
    }
}

/// Loads a GGUF model onto `opts.device` with a KV cache sized from `opts`.
pub fn load_model(opts: &LoadOptions) -> Result<Box<dyn CausalLm>, ModelError> {
    if opts.device != "cpu" {
        return Err(ModelError::UnsupportedDevice(opts.device.clone()));
    }
    let mut file = gguf::GgufFile::open(&opts.model_path)?;
    let backend = CpuBackend::new(WeightFormat::Blocks);
    Ok(Box::new(Llama::load(backend, &mut file, opts)?))
}

/// A causal language model with a paged KV cache.
pub trait CausalLm: Send {
    fn info(&self) -> &ModelInfo;
    /// Tokens per KV block.
    fn block_size(&self) -> usize;
    /// Number of physical KV blocks in the cache storage (ids `0..num_kv_blocks()`).
    fn num_kv_blocks(&self) -> usize;
    /// Runs one step over `batch`: writes every chunk's K/V into its blocks, then returns,
    /// for every chunk with `need_logits`, the logits (length `vocab_size`) of its last token,
    /// in batch order.
    fn forward(&mut self, batch: &[SeqChunk<'_>]) -> Result<Vec<Vec<f32>>, ModelError>;
}
