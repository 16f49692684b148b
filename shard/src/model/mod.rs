//! The model: configuration, weights and the forward pass, written once against
//! [`crate::backend::Backend`].
//!
//! The engine sees a model only through [`CausalLm`]: it hands over one batch of sequence
//! chunks per step (prefill chunks and single decode tokens mixed) together with each
//! sequence's block table, and gets logits back. The model owns the KV-cache *storage*;
//! the engine owns the *allocation* of blocks (`crate::kv_cache`).

pub(crate) mod batch;
mod config;
pub mod gguf;
pub mod hf;
mod kv_dtype;
pub mod llama;
mod shapes;
pub mod source;
pub mod tp;

use std::path::PathBuf;

use crate::backend::{BackendError, CpuBackend, WeightFormat};

pub use config::LlamaConfig;
pub use kv_dtype::{KvCacheDtype, KvCacheDtypeError, SUPPORTED_KV_CACHE_DTYPES, cuda_kv_dtype};
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
    /// A `.gguf` file, or a HF model directory (`config.json` + safetensors).
    pub model_path: PathBuf,
    /// Overrides the display name in [`ModelInfo::name`].
    pub served_model_name: Option<String>,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Exact number of KV blocks; when `None`, as many as fit in `kv_cache_bytes`.
    pub num_kv_blocks: Option<usize>,
    /// Memory budget for the KV cache when `num_kv_blocks` is `None`.
    pub kv_cache_bytes: usize,
    /// `--max-model-len`: caps the model's context (prompt + generated tokens) before
    /// anything is sized from it; more than the model's own context is refused. `None`: the
    /// model's own. See [`LlamaConfig::with_max_model_len`].
    pub max_model_len: Option<usize>,
    /// `--kv-cache-dtype`: what the KV cache stores (see [`KvCacheDtype`]). fp8 is CUDA only;
    /// [`load_model`] refuses it for the CPU.
    pub kv_cache_dtype: KvCacheDtype,
    /// "cpu", "cuda", "cuda:N" or "auto" (the first GPU when one is found, else the CPU).
    pub device: String,
    /// Settings only the CUDA backend reads.
    pub gpu: GpuOptions,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            model_path: PathBuf::new(),
            served_model_name: None,
            block_size: 16,
            num_kv_blocks: None,
            kv_cache_bytes: 1 << 30,
            max_model_len: None,
            kv_cache_dtype: KvCacheDtype::Auto,
            device: "cpu".into(),
            gpu: GpuOptions::default(),
        }
    }
}

/// Settings of the CUDA backend.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuOptions {
    /// Share of the GPU's memory the shard may use; the KV cache gets what the weights and
    /// buffers leave of it (when `num_kv_blocks` is not set).
    pub memory_utilization: f32,
    /// Largest number of tokens in one step (sizes the activation buffers).
    pub max_batch_tokens: usize,
    /// Largest number of sequences in one step.
    pub max_num_seqs: usize,
    /// Random weights of this named shape instead of reading the model file's tensors
    /// (`--load-format dummy --model-shape llama3-8b`).
    pub dummy_shape: Option<String>,
    /// Run every step eagerly (no CUDA graphs), for debugging.
    pub enforce_eager: bool,
    /// Let the engine overlap steps (`--no-async-scheduling` turns it off).
    pub async_scheduling: bool,
    /// Where compiled kernels are cached.
    pub kernel_cache_dir: Option<PathBuf>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            memory_utilization: 0.9,
            max_batch_tokens: 2048,
            max_num_seqs: 256,
            dummy_shape: None,
            enforce_eager: false,
            async_scheduling: true,
            kernel_cache_dir: None,
        }
    }
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
    #[error("invalid model: {0}")]
    Format(String),
    /// A `weight_map` entry of a sharded safetensors index that is not a plain file name in
    /// the model directory (`../x`, `/etc/passwd`, `sub/x`): reading it could leave the
    /// directory, so the index is refused.
    #[error(
        "invalid model: {} lists shard file `{entry}`, which is not a plain file name inside \
         the model directory (no path separators, `..` or absolute paths)",
        index.display()
    )]
    UnsafeShardPath { index: PathBuf, entry: String },
    #[error(
        "unsupported model architecture `{0}` (supported: GGUF `llama`; HF LlamaForCausalLM, \
         MistralForCausalLM, Qwen2ForCausalLM)"
    )]
    UnsupportedArchitecture(String),
    #[error("unsupported device `{0}`")]
    UnsupportedDevice(String),
    /// `--max-model-len` above what the model supports (vLLM refuses this too).
    #[error(
        "--max-model-len {requested} is more than this model's maximum context of {model} \
         tokens (its llama.context_length or max_position_embeddings); use at most {model}, \
         or leave --max-model-len out to serve the model's own"
    )]
    MaxModelLen { requested: usize, model: usize },
    /// A `--kv-cache-dtype` this device cannot store (fp8 on the CPU).
    #[error("{}", pagedserve_proto::kv_cache_dtype::FP8_NEEDS_CUDA)]
    Fp8KvCacheOnCpu,
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

/// Opens `path` as the source it is: a HF model directory, else a GGUF file.
pub fn open_source(path: &std::path::Path) -> Result<Box<dyn ModelSource>, ModelError> {
    if path.is_dir() {
        if !hf::HfSource::is_hf_dir(path) {
            return Err(ModelError::Format(format!(
                "{} is a directory without config.json (expected a HF model directory)",
                path.display()
            )));
        }
        let source = hf::HfSource::open(path)?;
        return checked(path, Box::new(source));
    }
    checked(path, Box::new(gguf::GgufFile::open(path)?))
}

/// The source, once its config and tensor shapes agree (see [`shapes`]); errors name the file.
fn checked(
    path: &std::path::Path,
    source: Box<dyn ModelSource>,
) -> Result<Box<dyn ModelSource>, ModelError> {
    match shapes::check_model(source.as_ref()) {
        Ok(()) => Ok(source),
        Err(ModelError::Format(e)) => Err(ModelError::Format(format!("{}: {e}", path.display()))),
        Err(e) => Err(e),
    }
}

/// The source's config with `opts.max_model_len` applied: what every loader sizes from.
pub fn read_config(
    source: &dyn ModelSource,
    opts: &LoadOptions,
) -> Result<LlamaConfig, ModelError> {
    source.config()?.with_max_model_len(opts.max_model_len)
}

/// Loads a model (GGUF file or HF directory) onto `opts.device` with a KV cache sized from
/// `opts`.
pub fn load_model(opts: &LoadOptions) -> Result<Box<dyn CausalLm>, ModelError> {
    let device = resolve_device(&opts.device)?;
    if device != "cpu" {
        let opts = LoadOptions {
            device,
            ..opts.clone()
        };
        if opts.gpu.dummy_shape.is_some() {
            return Ok(Box::new(crate::backend::cuda::load_cuda(None, &opts)?));
        }
        let mut source = open_source(&opts.model_path)?;
        return Ok(Box::new(crate::backend::cuda::load_cuda(
            Some(source.as_mut()),
            &opts,
        )?));
    }
    if opts.gpu.dummy_shape.is_some() {
        return Err(ModelError::UnsupportedDevice(
            "--load-format dummy needs a CUDA device (--device cuda)".into(),
        ));
    }
    check_cpu_kv_cache_dtype(opts.kv_cache_dtype)?;
    let mut source = open_source(&opts.model_path)?;
    let backend = CpuBackend::new(WeightFormat::Blocks);
    Ok(Box::new(Llama::load(backend, source.as_mut(), opts)?))
}

/// `--kv-cache-dtype` on the CPU, whose cache is f32: fp8 is refused (there is no fp8 cache
/// to give the memory it promises); bf16 is served as `auto` with a warning: it asks for an
/// unquantized cache, and f32 is at least as precise as bf16 (it saves no memory, though).
pub fn check_cpu_kv_cache_dtype(dtype: KvCacheDtype) -> Result<(), ModelError> {
    match dtype {
        KvCacheDtype::Auto => Ok(()),
        KvCacheDtype::Bf16 => {
            tracing::warn!(
                "--kv-cache-dtype bf16 on the CPU: the CPU backend keeps its KV cache in f32 and \
                 has no bf16 cache; serving with the f32 cache, as auto does"
            );
            Ok(())
        }
        KvCacheDtype::Fp8E4m3 => Err(ModelError::Fp8KvCacheOnCpu),
    }
}

/// `cpu`, `cuda:N`, or for `auto` the first GPU when a CUDA driver and a GPU are found.
fn resolve_device(device: &str) -> Result<String, ModelError> {
    use crate::backend::cuda::{cuda_device_count, parse_cuda_device};
    match device {
        "cpu" => Ok("cpu".into()),
        "auto" => Ok(match cuda_device_count() {
            Ok(n) if n > 0 => "cuda:0".into(),
            _ => "cpu".into(),
        }),
        d => match parse_cuda_device(d) {
            Some(n) => Ok(format!("cuda:{n}")),
            None => Err(ModelError::UnsupportedDevice(d.to_string())),
        },
    }
}

/// One sequence's draw when the model samples on its device: only token ids cross to the
/// host. Covers temperature, top-k and top-p; anything else (penalties, min_p, logprobs) is
/// sampled on the host from [`CausalLm::forward`]'s logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceSampling {
    /// Below 1e-5: greedy.
    pub temperature: f32,
    /// 0: off.
    pub top_k: i32,
    /// 1: off.
    pub top_p: f32,
    pub seed: u64,
    /// Draw index within the request (tokens generated so far), so each draw is
    /// reproducible from the seed.
    pub counter: u64,
}

impl DeviceSampling {
    /// Argmax, what benchmarks and equivalence checks sample with.
    pub const GREEDY: DeviceSampling = DeviceSampling {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 1,
        counter: 0,
    };
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
    /// Whether [`CausalLm::forward_sampled`] is supported.
    fn samples_on_device(&self) -> bool {
        false
    }
    /// Like [`CausalLm::forward`], but sequences with `Some` parameters (one entry per chunk
    /// with `need_logits`, in batch order) get their next token drawn on the device, so only
    /// the token id crosses to the host; the others get their logits. `None` when the model
    /// cannot sample on its device.
    fn forward_sampled(
        &mut self,
        _batch: &[SeqChunk<'_>],
        _params: &[Option<DeviceSampling>],
    ) -> Option<Result<Vec<Picked>, ModelError>> {
        None
    }
    /// Whether [`CausalLm::launch`] and [`CausalLm::collect`] are supported: steps the engine
    /// overlaps, scheduling and launching step n+1 while the device still runs step n (vLLM's
    /// async scheduling). Only for models that sample on their device.
    fn can_launch(&self) -> bool {
        false
    }
    /// Queues one step whose every `need_logits` chunk is sampled on the device (`params`, one
    /// per such chunk, in batch order) and returns without waiting for it. `feeds` lists
    /// `(chunk index, k)`: that chunk's last token is a placeholder for draw `k` of the step
    /// launched before this one, which the device puts in place before the step reads it, so
    /// the host never waits for a token to feed it back. At most two steps are in flight:
    /// the engine collects the older before it launches again.
    fn launch(
        &mut self,
        _batch: &[SeqChunk<'_>],
        _params: &[DeviceSampling],
        _feeds: &[(usize, u32)],
    ) -> Result<(), ModelError> {
        Err(ModelError::Backend(
            "this model cannot launch overlapped steps".into(),
        ))
    }
    /// Waits for the oldest launched step and returns its draws, in batch order.
    fn collect(&mut self) -> Result<Vec<u32>, ModelError> {
        Err(ModelError::Backend("no launched step to collect".into()))
    }
}

/// What [`CausalLm::forward_sampled`] returns for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum Picked {
    /// Drawn on the device.
    Token(u32),
    /// Left for the host sampler.
    Logits(Vec<f32>),
}
