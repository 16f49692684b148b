//! Compute backends.
//!
//! The model (`crate::model::llama`) is written once against [`Backend`], a small set of
//! coarse ops over 2-D activations `[rows, cols]` where every row is one token of the step.
//! Per-step metadata (positions, KV slots, block tables) is built once on the host as a
//! [`StepPlan`] and handed to [`Backend::prepare`], so a device backend uploads it once per
//! step instead of once per layer.

pub mod cpu;
pub mod cuda;

use candle_core::quantized::QTensor;

pub use cpu::{CpuBackend, WeightFormat};

/// Errors raised by a backend op.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("cannot allocate {0}")]
    Alloc(String),
    #[error("CUDA: {0}")]
    Cuda(String),
}

pub type BackendResult<T> = Result<T, BackendError>;

/// Geometry of the paged KV cache: `num_blocks` blocks per layer, each holding `block_size`
/// tokens of K and V for every KV head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub num_layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl KvLayout {
    /// Elements of K (or V) in one block of one layer.
    pub fn block_elems(&self) -> usize {
        self.block_size * self.num_kv_heads * self.head_dim
    }
}

/// Rotary-embedding tables, computed on the host: `cos`/`sin` are `[max_pos, rope_dim / 2]`.
/// Rotation is the interleaved (GPT-J) form on pairs `(2i, 2i + 1)` that GGUF llama weights
/// are permuted for.
#[derive(Debug, Clone)]
pub struct RopeTable {
    pub head_dim: usize,
    /// Leading dims of each head that are rotated (even, <= head_dim).
    pub rope_dim: usize,
    pub max_pos: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeTable {
    /// `theta_i = pos * base^(-2i / rope_dim) / freq_factors[i]` (llama.cpp's formula; freq
    /// factors come from Llama 3's `rope_freqs.weight` and are 1 otherwise).
    pub fn new(
        head_dim: usize,
        rope_dim: usize,
        base: f32,
        freq_factors: Option<&[f32]>,
        max_pos: usize,
    ) -> Self {
        let half = rope_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| {
                let f = (base as f64).powf(-2.0 * i as f64 / rope_dim as f64);
                let factor = freq_factors
                    .and_then(|ff| ff.get(i))
                    .copied()
                    .unwrap_or(1.0);
                f / factor as f64
            })
            .collect();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for pos in 0..max_pos {
            for f in &inv_freq {
                let theta = pos as f64 * f;
                cos.push(theta.cos() as f32);
                sin.push(theta.sin() as f32);
            }
        }
        Self {
            head_dim,
            rope_dim,
            max_pos,
            cos,
            sin,
        }
    }
}

/// One sequence of a step, as attention sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnSeq {
    /// First activation row of this sequence's tokens.
    pub row_start: usize,
    /// Tokens of this sequence in the step.
    pub num_rows: usize,
    /// Tokens already cached before this step (position of the first row).
    pub start_pos: usize,
    /// This sequence's block table: `StepPlan::block_tables[table_start..table_start + table_len]`.
    pub table_start: usize,
    pub table_len: usize,
}

/// Host-side metadata of one step, shared by every layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    /// Token ids, one per activation row.
    pub tokens: Vec<u32>,
    /// Absolute position of each row.
    pub positions: Vec<u32>,
    /// Flat KV slot of each row: `block_id * block_size + offset_in_block`.
    pub slots: Vec<u32>,
    pub seqs: Vec<AttnSeq>,
    /// All sequences' block tables, concatenated.
    pub block_tables: Vec<u32>,
    /// Rows whose logits are returned, in output order.
    pub logit_rows: Vec<usize>,
}

/// Coarse ops the model is written against. Activations are `[rows, cols]`.
pub trait Backend: Send + Sync + 'static {
    /// Activations.
    type Tensor: Send;
    /// A weight used as `x @ w^T` (`w` is `[out, in]`), e.g. a quantized matrix.
    type Weight: Send + Sync;
    /// A 1-D weight (norm scales).
    type Vector: Send + Sync;
    /// A token-embedding table `[vocab, hidden]`.
    type Embedding: Send + Sync;
    type Rope: Send + Sync;
    type KvCache: Send;
    /// A [`StepPlan`] in the form the ops read (uploaded, for a device backend).
    type Plan: Send;

    /// "cpu", "cuda:0", ...
    fn device_name(&self) -> String;
    fn load_weight(&self, w: QTensor) -> BackendResult<Self::Weight>;
    fn load_vector(&self, w: QTensor) -> BackendResult<Self::Vector>;
    fn load_embedding(&self, w: QTensor) -> BackendResult<Self::Embedding>;
    fn load_rope(&self, table: RopeTable) -> BackendResult<Self::Rope>;
    /// Bytes one KV block takes across all layers (K and V).
    fn kv_block_bytes(&self, layout: &KvLayout) -> usize;
    fn alloc_kv_cache(&self, layout: &KvLayout) -> BackendResult<Self::KvCache>;
    fn prepare(&self, plan: StepPlan) -> BackendResult<Self::Plan>;

    /// Rows of the embedding table for the plan's tokens.
    fn embed(&self, table: &Self::Embedding, plan: &Self::Plan) -> BackendResult<Self::Tensor>;
    fn rms_norm(&self, x: &Self::Tensor, w: &Self::Vector, eps: f32)
    -> BackendResult<Self::Tensor>;
    /// `x @ w^T` for several weights sharing the input (q/k/v, gate/up).
    fn matmul(&self, x: &Self::Tensor, ws: &[&Self::Weight]) -> BackendResult<Vec<Self::Tensor>>;
    /// Rotates `x` (`[rows, num_heads * head_dim]`) in place at each row's position.
    fn rope(
        &self,
        x: &mut Self::Tensor,
        rope: &Self::Rope,
        plan: &Self::Plan,
        num_heads: usize,
    ) -> BackendResult<()>;
    /// Stores every row's K and V (`[rows, kv_heads * head_dim]`) into its slot of `layer`.
    fn kv_write(
        &self,
        cache: &mut Self::KvCache,
        layer: usize,
        k: &Self::Tensor,
        v: &Self::Tensor,
        plan: &Self::Plan,
    ) -> BackendResult<()>;
    /// Causal attention of each row's query over its sequence's cached K/V (which must
    /// already include the step's own rows), read through the block table. GQA: query head
    /// `h` uses KV head `h / (num_heads / kv_heads)`. With `window = Some(w)` (Mistral's
    /// sliding window) a row at position `p` attends only to positions `p - w + 1 ..= p`.
    #[allow(clippy::too_many_arguments)] // one op, its inputs
    fn paged_attention(
        &self,
        q: &Self::Tensor,
        cache: &Self::KvCache,
        layer: usize,
        plan: &Self::Plan,
        num_heads: usize,
        scale: f32,
        window: Option<usize>,
    ) -> BackendResult<Self::Tensor>;
    /// `silu(gate) * up`.
    fn silu_mul(&self, gate: &Self::Tensor, up: &Self::Tensor) -> BackendResult<Self::Tensor>;
    /// `x += y`.
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> BackendResult<()>;
    /// `x[r] += bias` for every row (projection biases: Qwen2's q/k/v, Llama's
    /// `attention_bias`).
    fn add_bias(&self, x: &mut Self::Tensor, bias: &Self::Vector) -> BackendResult<()>;
    /// The plan's `logit_rows` of `x`, in that order.
    fn gather_rows(&self, x: &Self::Tensor, plan: &Self::Plan) -> BackendResult<Self::Tensor>;
    /// Copies `x` to the host, one `Vec` per row.
    fn to_host_rows(&self, x: &Self::Tensor) -> BackendResult<Vec<Vec<f32>>>;
}
