//! Where a model's configuration and weights come from. Both backends load through this
//! trait, so a new file format (HF safetensors directories) serves the CPU and the CUDA path
//! alike. Tensor names follow GGUF's llama convention (`token_embd.weight`,
//! `blk.{i}.attn_q.weight`, ...), and Q/K projection rows are in GGUF's order (permuted for
//! the interleaved RoPE every backend applies): a source in another layout translates.

use candle_core::quantized::QTensor;

use crate::model::{LlamaConfig, ModelError};

pub trait ModelSource {
    /// Hyper-parameters of the decoder.
    fn config(&self) -> Result<LlamaConfig, ModelError>;
    /// Shape of a tensor as candle reports it (`[out, in]` for matrices), if present.
    fn tensor_dims(&self, name: &str) -> Option<Vec<usize>>;
    fn has_tensor(&self, name: &str) -> bool {
        self.tensor_dims(name).is_some()
    }
    /// A tensor in its stored type (quantized blocks, f16, bf16 or f32).
    fn tensor(&mut self, name: &str) -> Result<QTensor, ModelError>;
    /// Weight dtype as stored, for display ("q4_1", "bf16", ...).
    fn dtype_name(&self) -> String;
    /// Tokens that end generation.
    fn eos_token_ids(&self) -> Result<Vec<u32>, ModelError>;
    fn bos_token_id(&self) -> Result<Option<u32>, ModelError>;
    /// Mistral's sliding attention window: a token attends to itself and the `w - 1` tokens
    /// before it. `None`: full causal attention.
    fn sliding_window(&self) -> Option<usize> {
        None
    }
}
