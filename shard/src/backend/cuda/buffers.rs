//! Activation buffers, allocated once at load for the largest step (`max_batch_tokens` rows,
//! `max_num_seqs` sequences), so a step never allocates and CUDA graphs can replay over them.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;

use crate::backend::{BackendError, BackendResult};
use crate::model::LlamaConfig;

pub struct Buffers {
    /// Residual stream, f32 `[t_max, hidden]`.
    pub x: CudaSlice<f32>,
    /// Normalized activations, GEMM input, bf16 `[t_max, hidden]`.
    pub h: CudaSlice<bf16>,
    /// Fused q/k/v, bf16 `[t_max, (H + 2 KVH) D]`.
    pub qkv: CudaSlice<bf16>,
    /// Attention output, bf16 `[t_max, H D]`.
    pub attn: CudaSlice<bf16>,
    /// Output of o_proj and of down_proj (added to the residual by the next norm), bf16
    /// `[t_max, hidden]`.
    pub delta: CudaSlice<bf16>,
    /// gate and up, bf16 `[t_max, 2 ffn]`.
    pub gate_up: CudaSlice<bf16>,
    /// silu(gate) * up, bf16 `[t_max, ffn]`.
    pub act: CudaSlice<bf16>,
    /// Rows gathered for the vocabulary projection, bf16 `[s_max, hidden]`.
    pub last: CudaSlice<bf16>,
    /// Logits, f32 `[s_max, vocab]`.
    pub logits: CudaSlice<f32>,
    /// Split-KV partial results of decode attention.
    pub decode_ws: CudaSlice<f32>,
    /// Tokens sampled on the device, `[s_max]`.
    pub sampled: CudaSlice<u32>,
    /// Overlapped steps: `(row, draw)` pairs, the rows whose token is a draw of the step
    /// before (`[2 s_max]`).
    pub feeds: CudaSlice<u32>,
}

impl Buffers {
    pub fn new(
        stream: &Arc<CudaStream>,
        cfg: &LlamaConfig,
        vocab: usize,
        t_max: usize,
        s_max: usize,
        decode_ws_len: usize,
    ) -> BackendResult<Self> {
        let (h, d) = (cfg.hidden, cfg.head_dim);
        let qkv = (cfg.num_heads + 2 * cfg.num_kv_heads) * d;
        Ok(Self {
            x: alloc(stream, t_max * h, "residual")?,
            h: alloc(stream, t_max * h, "norm output")?,
            qkv: alloc(stream, t_max * qkv, "qkv")?,
            attn: alloc(stream, t_max * cfg.num_heads * d, "attention output")?,
            delta: alloc(stream, t_max * h, "projection output")?,
            gate_up: alloc(stream, t_max * 2 * cfg.ffn, "gate/up")?,
            act: alloc(stream, t_max * cfg.ffn, "mlp activation")?,
            last: alloc(stream, s_max * h, "last rows")?,
            logits: alloc(stream, s_max * vocab, "logits")?,
            decode_ws: alloc(stream, decode_ws_len.max(1), "decode attention workspace")?,
            sampled: alloc(stream, s_max, "sampled tokens")?,
            feeds: alloc(stream, 2 * s_max, "fed rows")?,
        })
    }
}

fn alloc<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    n: usize,
    what: &str,
) -> BackendResult<CudaSlice<T>> {
    stream
        .alloc_zeros::<T>(n)
        .map_err(|e| BackendError::Alloc(format!("{what} buffer ({n} elements): {e}")))
}
