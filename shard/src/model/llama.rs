//! The Llama-family decoder (Llama, Mistral, Qwen2, SmolLM2), written once against
//! [`Backend`]. Projection biases (Qwen2) and a sliding attention window (Mistral) are
//! used when the source has them.

use crate::backend::{Backend, KvLayout, RopeTable};
use crate::model::batch::{BatchLimits, build_plan};
use crate::model::config::LlamaConfig;
use crate::model::source::ModelSource;
use crate::model::{
    CausalLm, KvCacheDtype, LoadOptions, ModelError, ModelInfo, SeqChunk, read_config,
};

struct Layer<B: Backend> {
    attn_norm: B::Vector,
    wq: B::Weight,
    wk: B::Weight,
    wv: B::Weight,
    wo: B::Weight,
    ffn_norm: B::Vector,
    gate: B::Weight,
    up: B::Weight,
    down: B::Weight,
    /// q/k/v/o projection biases, when the checkpoint has them.
    bias: [Option<B::Vector>; 4],
}

pub struct Llama<B: Backend> {
    backend: B,
    cfg: LlamaConfig,
    info: ModelInfo,
    kv: KvLayout,
    embed: B::Embedding,
    layers: Vec<Layer<B>>,
    norm: B::Vector,
    output: B::Weight,
    rope: B::Rope,
    cache: B::KvCache,
    sliding_window: Option<usize>,
}

impl<B: Backend> Llama<B> {
    pub fn load(
        backend: B,
        gguf: &mut dyn ModelSource,
        opts: &LoadOptions,
    ) -> Result<Self, ModelError> {
        // The backends behind `Backend` keep an f32 cache ([`crate::model::load_model`] also
        // refuses this, before the model file is opened, and notes what bf16 means here).
        if opts.kv_cache_dtype == KvCacheDtype::Fp8E4m3 {
            return Err(ModelError::Fp8KvCacheOnCpu);
        }
        let cfg = read_config(gguf, opts)?;
        let vocab_size = match gguf.tensor_dims("token_embd.weight").as_deref() {
            Some([vocab, hidden]) if *hidden == cfg.hidden => *vocab,
            other => {
                return Err(ModelError::Format(format!(
                    "token_embd.weight shape {other:?}"
                )));
            }
        };
        let info = ModelInfo {
            name: model_name(opts),
            dtype: gguf.dtype_name(),
            device: backend.device_name(),
            vocab_size,
            max_context: cfg.max_context,
            num_layers: cfg.num_layers,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            eos_token_ids: gguf.eos_token_ids()?,
            bos_token_id: gguf.bos_token_id()?,
        };
        let kv = kv_layout(&backend, &cfg, opts)?;
        let layers = (0..cfg.num_layers)
            .map(|i| load_layer(&backend, gguf, i))
            .collect::<Result<Vec<_>, _>>()?;
        let embed = backend.load_embedding(gguf.tensor("token_embd.weight")?)?;
        // SmolLM2 ties the output layer to the embeddings.
        let output_name = if gguf.has_tensor("output.weight") {
            "output.weight"
        } else {
            "token_embd.weight"
        };
        let output = backend.load_weight(gguf.tensor(output_name)?)?;
        let norm = backend.load_vector(gguf.tensor("output_norm.weight")?)?;
        let freq_factors = match gguf.has_tensor("rope_freqs.weight") {
            true => Some(backend_free_vector(gguf.tensor("rope_freqs.weight")?)?),
            false => None,
        };
        let table = RopeTable::new(
            cfg.head_dim,
            cfg.rope_dim,
            cfg.rope_base,
            freq_factors.as_deref(),
            rope_positions(&cfg, &kv),
        );
        let rope = backend.load_rope(table)?;
        let cache = backend
            .alloc_kv_cache(&kv)
            .map_err(|e| ModelError::KvCache(format!("{} blocks: {e}", kv.num_blocks)))?;
        let sliding_window = gguf.sliding_window();
        Ok(Self {
            backend,
            cfg,
            info,
            kv,
            embed,
            layers,
            norm,
            output,
            rope,
            cache,
            sliding_window,
        })
    }

    fn layer_forward(
        &mut self,
        i: usize,
        x: &mut B::Tensor,
        plan: &B::Plan,
    ) -> Result<(), ModelError> {
        let (b, cfg, l) = (&self.backend, &self.cfg, &self.layers[i]);
        let h = b.rms_norm(x, &l.attn_norm, cfg.rms_eps)?;
        let [mut q, mut k, mut v] = three(b.matmul(&h, &[&l.wq, &l.wk, &l.wv])?)?;
        for (x, bias) in [&mut q, &mut k, &mut v].into_iter().zip(&l.bias) {
            if let Some(bias) = bias {
                b.add_bias(x, bias)?;
            }
        }
        b.rope(&mut q, &self.rope, plan, cfg.num_heads)?;
        b.rope(&mut k, &self.rope, plan, cfg.num_kv_heads)?;
        b.kv_write(&mut self.cache, i, &k, &v, plan)?;
        let scale = 1.0 / (cfg.head_dim as f32).sqrt();
        let window = self.sliding_window;
        let attn = b.paged_attention(&q, &self.cache, i, plan, cfg.num_heads, scale, window)?;
        let mut o = one(b.matmul(&attn, &[&l.wo])?)?;
        if let Some(bias) = &l.bias[3] {
            b.add_bias(&mut o, bias)?;
        }
        b.add_assign(x, &o)?;
        let h = b.rms_norm(x, &l.ffn_norm, cfg.rms_eps)?;
        let [gate, up] = two(b.matmul(&h, &[&l.gate, &l.up])?)?;
        let m = b.silu_mul(&gate, &up)?;
        let d = one(b.matmul(&m, &[&l.down])?)?;
        b.add_assign(x, &d)?;
        Ok(())
    }
}

impl<B: Backend> CausalLm for Llama<B> {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn block_size(&self) -> usize {
        self.kv.block_size
    }

    fn num_kv_blocks(&self) -> usize {
        self.kv.num_blocks
    }

    fn forward(&mut self, batch: &[SeqChunk<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let limits = BatchLimits {
            vocab_size: self.info.vocab_size,
            block_size: self.kv.block_size,
            num_blocks: self.kv.num_blocks,
            max_context: self.cfg.max_context,
        };
        let plan = build_plan(batch, &limits)?;
        let wants_logits = !plan.logit_rows.is_empty();
        let plan = self.backend.prepare(plan)?;
        let mut x = self.backend.embed(&self.embed, &plan)?;
        for i in 0..self.layers.len() {
            self.layer_forward(i, &mut x, &plan)?;
        }
        if !wants_logits {
            return Ok(Vec::new());
        }
        // Only the rows someone samples from go through the final norm and the vocab matmul.
        let b = &self.backend;
        let last = b.gather_rows(&x, &plan)?;
        let normed = b.rms_norm(&last, &self.norm, self.cfg.rms_eps)?;
        let logits = one(b.matmul(&normed, &[&self.output])?)?;
        Ok(b.to_host_rows(&logits)?)
    }
}

fn load_layer<B: Backend>(
    b: &B,
    g: &mut dyn ModelSource,
    i: usize,
) -> Result<Layer<B>, ModelError> {
    let mut w = |name: &str| -> Result<B::Weight, ModelError> {
        Ok(b.load_weight(g.tensor(&format!("blk.{i}.{name}.weight"))?)?)
    };
    let (wq, wk, wv, wo) = (w("attn_q")?, w("attn_k")?, w("attn_v")?, w("attn_output")?);
    let (gate, up, down) = (w("ffn_gate")?, w("ffn_up")?, w("ffn_down")?);
    let attn_norm = b.load_vector(g.tensor(&format!("blk.{i}.attn_norm.weight"))?)?;
    let ffn_norm = b.load_vector(g.tensor(&format!("blk.{i}.ffn_norm.weight"))?)?;
    let mut bias = |name: &str| -> Result<Option<B::Vector>, ModelError> {
        let name = format!("blk.{i}.{name}.bias");
        match g.has_tensor(&name) {
            true => Ok(Some(b.load_vector(g.tensor(&name)?)?)),
            false => Ok(None),
        }
    };
    let bias = [
        bias("attn_q")?,
        bias("attn_k")?,
        bias("attn_v")?,
        bias("attn_output")?,
    ];
    Ok(Layer {
        attn_norm,
        wq,
        wk,
        wv,
        wo,
        ffn_norm,
        gate,
        up,
        down,
        bias,
    })
}

/// A small tensor read on the host regardless of the backend (rope frequency factors).
fn backend_free_vector(t: candle_core::quantized::QTensor) -> Result<Vec<f32>, ModelError> {
    Ok(t.dequantize(&candle_core::Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

fn kv_layout<B: Backend>(
    b: &B,
    cfg: &LlamaConfig,
    opts: &LoadOptions,
) -> Result<KvLayout, ModelError> {
    if opts.block_size == 0 {
        return Err(ModelError::KvCache("block size 0".into()));
    }
    let mut kv = KvLayout {
        num_layers: cfg.num_layers,
        num_blocks: 0,
        block_size: opts.block_size,
        num_kv_heads: cfg.num_kv_heads,
        head_dim: cfg.head_dim,
    };
    let per_block = b.kv_block_bytes(&kv).max(1);
    kv.num_blocks = opts
        .num_kv_blocks
        .unwrap_or(opts.kv_cache_bytes / per_block);
    if kv.num_blocks == 0 {
        return Err(ModelError::KvCache(format!(
            "{} bytes hold no block of {per_block} bytes",
            opts.kv_cache_bytes
        )));
    }
    Ok(kv)
}

/// Positions the RoPE table covers: no sequence gets longer than the KV cache holds (the
/// engine caps it there), so the table stops there too. Sized by `context_length` alone, a
/// corrupt or crafted value (say 2^32) made the table terabytes and aborted the process on
/// allocation; found by the GGUF byte-flip test in tests/malformed_models.rs.
fn rope_positions(cfg: &LlamaConfig, kv: &KvLayout) -> usize {
    cfg.max_context
        .min(kv.num_blocks.saturating_mul(kv.block_size))
}

fn model_name(opts: &LoadOptions) -> String {
    opts.served_model_name.clone().unwrap_or_else(|| {
        opts.model_path
            .file_stem()
            .map_or_else(|| "model".to_string(), |s| s.to_string_lossy().into_owned())
    })
}

fn one<T>(v: Vec<T>) -> Result<T, ModelError> {
    let [a] = n_outputs(v)?;
    Ok(a)
}

fn two<T>(v: Vec<T>) -> Result<[T; 2], ModelError> {
    n_outputs(v)
}

fn three<T>(v: Vec<T>) -> Result<[T; 3], ModelError> {
    n_outputs(v)
}

fn n_outputs<T, const N: usize>(v: Vec<T>) -> Result<[T; N], ModelError> {
    let got = v.len();
    v.try_into()
        .map_err(|_| ModelError::Backend(format!("matmul returned {got} outputs, expected {N}")))
}
