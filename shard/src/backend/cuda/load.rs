//! Building a [`CudaLlama`]: open the GPU, compile the kernels, upload (or draw) the weights,
//! allocate the step buffers, size the paged KV cache from the memory left, and capture the
//! decode graphs. A tensor-parallel rank first joins its group (`super::tp`), loads only its
//! slice of the weights, and agrees with the other ranks on the KV block count.

use pagedserve_kernels::{Kernels, KvDtype};

use super::buffers::Buffers;
use super::device::{Gpu, cuda_err, parse_cuda_device};
use super::gemm::Gemm;
use super::graphs::Graphs;
use super::kv::KvCaches;
use super::launches::Launches;
use super::model::{CudaLlama, StepShape};
use super::ops;
use super::plan::MetaLayout;
use super::shapes::ModelShape;
use super::staging::HostStaging;
use super::tp::{self, Group, TpConfig};
use super::weights::Weights;
use crate::backend::{BackendError, KvLayout, RopeTable, StepPlan};
use crate::model::{
    LlamaConfig, LoadOptions, ModelError, ModelInfo, ModelSource, cuda_kv_dtype, open_source,
    read_config,
};

/// Memory kept free beyond the KV cache for graphs, cuBLAS and the allocator's slack.
const RESERVE_BYTES: usize = 768 << 20;

/// Loads `src` (or, with `opts.gpu.dummy_shape`, random weights of that shape, ignoring `src`)
/// onto the GPU named by `opts.device`.
pub fn load_cuda(
    src: Option<&mut dyn ModelSource>,
    opts: &LoadOptions,
) -> Result<CudaLlama, ModelError> {
    load_cuda_tp(src, opts, &TpConfig::single())
}

/// Like [`crate::model::load_model`] for one rank of a tensor-parallel group on CUDA: opens
/// `opts.model_path` unless the weights are dummy, then [`load_cuda_tp`].
pub fn load_tp_model(opts: &LoadOptions, tp: &TpConfig) -> Result<CudaLlama, ModelError> {
    if opts.gpu.dummy_shape.is_some() {
        return load_cuda_tp(None, opts, tp);
    }
    let mut source = open_source(&opts.model_path)?;
    load_cuda_tp(Some(source.as_mut()), opts, tp)
}

/// [`load_cuda`] as rank `tp.rank` of a group of `tp.size` (size 1: the whole model).
pub fn load_cuda_tp(
    src: Option<&mut dyn ModelSource>,
    opts: &LoadOptions,
    tp: &TpConfig,
) -> Result<CudaLlama, ModelError> {
    let ordinal = parse_cuda_device(&opts.device)
        .ok_or_else(|| ModelError::UnsupportedDevice(opts.device.clone()))?;
    let gpu = Gpu::open(ordinal)?;
    let kernels = Kernels::load_for_kv(
        &gpu.ctx,
        opts.gpu.kernel_cache_dir.as_deref(),
        &[cuda_kv_dtype(opts.kv_cache_dtype)],
    )
    .map_err(cuda_err("compile kernels"))?;
    let gemm = Gemm::new(&gpu.stream)?;
    let group = tp::join_group(tp, &gpu.stream)?;
    let (cfg, info, w, freq_factors) = match (&opts.gpu.dummy_shape, src) {
        (Some(name), _) => {
            let shape = ModelShape::parse(name)
                .ok_or_else(|| ModelError::Format(format!("unknown model shape {name}")))?;
            let mut spec = shape.spec();
            // `--max-model-len` before anything is sized, as for a real checkpoint.
            spec.config = spec.config.with_max_model_len(opts.max_model_len)?;
            let w = Weights::dummy(
                &spec.config,
                spec.vocab_size,
                spec.tied_embeddings,
                0x5eed,
                &tp::shard_for(tp, &spec.config)?,
                &gpu.stream,
                &kernels,
            )?;
            let info = info(
                opts,
                &spec.config,
                spec.vocab_size,
                &gpu,
                spec.eos_token_ids,
            );
            let info = ModelInfo {
                bos_token_id: spec.bos_token_id,
                name: opts
                    .served_model_name
                    .clone()
                    .unwrap_or_else(|| format!("dummy-{}", shape.name())),
                ..info
            };
            (spec.config, info, w, None)
        }
        (None, Some(src)) => {
            // `--max-model-len` first: at or below the window it leaves nothing to cap.
            let mut cfg = read_config(&*src, opts)?;
            // The attention kernels have no window: with sequences capped at the window's
            // length, full causal attention is exactly sliding-window attention (what vLLM
            // did before it had windowed kernels).
            if let Some(w) = src.sliding_window()
                && w < cfg.max_context
            {
                tracing::warn!(
                    window = w,
                    max_context = cfg.max_context,
                    "sliding-window attention: sequences capped at the window's length on CUDA \
                     (--max-model-len {w} or less serves the same without this warning)"
                );
                cfg.max_context = w;
            }
            let vocab = match src.tensor_dims("token_embd.weight").as_deref() {
                Some([v, h]) if *h == cfg.hidden => *v,
                other => {
                    return Err(ModelError::Format(format!(
                        "token_embd.weight shape {other:?}"
                    )));
                }
            };
            let w = Weights::load(src, &cfg, &tp::shard_for(tp, &cfg)?, &gpu.stream)?;
            let info = ModelInfo {
                bos_token_id: src.bos_token_id()?,
                ..info(opts, &cfg, vocab, &gpu, src.eos_token_ids()?)
            };
            let ff = match src.has_tensor("rope_freqs.weight") {
                true => Some(
                    src.tensor("rope_freqs.weight")?
                        .dequantize(&candle_core::Device::Cpu)?
                        .flatten_all()?
                        .to_vec1::<f32>()?,
                ),
                false => None,
            };
            (cfg, info, w, ff)
        }
        (None, None) => {
            return Err(ModelError::Format(
                "no model source and no dummy shape".into(),
            ));
        }
    };
    // Buffers, the KV cache and the kernels see this rank's heads and FFN width only.
    let cfg = tp::shard_for(tp, &cfg)?.local_config(&cfg);
    // Before the KV cache is sized from free memory and the decode graphs are captured.
    super::gemm_tune::tune_at_load(&gemm, &w, &cfg, info.vocab_size, tp.rank == 0, opts);
    build(
        Parts {
            gpu,
            kernels,
            gemm,
            cfg,
            info,
            w,
            group,
        },
        freq_factors.as_deref(),
        opts,
    )
}

/// What [`build`] assembles the model from.
struct Parts {
    gpu: Gpu,
    kernels: Kernels,
    gemm: Gemm,
    /// This rank's config (its share of the heads and FFN width).
    cfg: LlamaConfig,
    info: ModelInfo,
    w: Weights,
    group: Option<Group>,
}

fn info(
    opts: &LoadOptions,
    cfg: &LlamaConfig,
    vocab: usize,
    gpu: &Gpu,
    eos: Vec<u32>,
) -> ModelInfo {
    ModelInfo {
        name: opts.served_model_name.clone().unwrap_or_else(|| {
            opts.model_path
                .file_stem()
                .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
        }),
        dtype: "bf16".into(),
        device: format!("cuda:{}", gpu.ordinal),
        vocab_size: vocab,
        max_context: cfg.max_context,
        num_layers: cfg.num_layers,
        num_kv_heads: cfg.num_kv_heads,
        head_dim: cfg.head_dim,
        eos_token_ids: eos,
        bos_token_id: None,
    }
}

/// The most rows a step may have (`t_max`) and the most sequences (`s_max`, each at least one
/// row), which the step buffers are sized for and GEMM tuning covers.
pub(super) fn step_limits(opts: &LoadOptions) -> (usize, usize) {
    let s_max = opts.gpu.max_num_seqs.max(1);
    (opts.gpu.max_batch_tokens.max(s_max), s_max)
}

fn build(
    parts: Parts,
    freq_factors: Option<&[f32]>,
    opts: &LoadOptions,
) -> Result<CudaLlama, ModelError> {
    let Parts {
        gpu,
        kernels,
        gemm,
        cfg,
        info,
        w,
        group,
    } = parts;
    let (t_max, s_max) = step_limits(opts);
    let block_size = opts.block_size;
    if block_size == 0 {
        return Err(ModelError::KvCache("block size 0".into()));
    }
    let layout = MetaLayout {
        t_max,
        s_max,
        // Tiles of the smaller size: a step may take either (ops::prefill_tile_rows).
        tiles_max: t_max.div_ceil(pagedserve_kernels::PREFILL_TILE_SMALL) + s_max,
        bt_stride: cfg.max_context.div_ceil(block_size),
    };
    let stream = &gpu.stream;
    let alloc_u32 = |n: usize, what: &str| {
        stream
            .alloc_zeros::<u32>(n)
            .map_err(|e| BackendError::Alloc(format!("{what}: {e}")))
    };
    let meta = alloc_u32(layout.len(), "step metadata")?;
    let staging = HostStaging::new(&gpu.ctx, &layout)?;
    let launches = Launches::new(&gpu.ctx, s_max)?;
    let sampling = alloc_u32(ops::SAMPLING_WORDS * s_max, "sampling parameters")?;
    let ws_len = pagedserve_kernels::decode_workspace_len(
        s_max,
        cfg.num_heads,
        cfg.head_dim,
        cfg.max_context,
    );
    let bufs = Buffers::new(stream, &cfg, info.vocab_size, t_max, s_max, ws_len)?;
    let rope = RopeTable::new(
        cfg.head_dim,
        cfg.rope_dim,
        cfg.rope_base,
        freq_factors,
        cfg.max_context,
    );
    let cos = stream
        .clone_htod(&rope.cos)
        .map_err(cuda_err("upload rope"))?;
    let sin = stream
        .clone_htod(&rope.sin)
        .map_err(cuda_err("upload rope"))?;
    let mut kv = KvLayout {
        num_layers: cfg.num_layers,
        num_blocks: 0,
        block_size,
        num_kv_heads: cfg.num_kv_heads,
        head_dim: cfg.head_dim,
    };
    let kv_dtype = cuda_kv_dtype(opts.kv_cache_dtype);
    if let Some(g) = &group {
        // The launcher gives every rank the same flag; a rank started by hand with another
        // would write its heads' K/V in another format than the rest expect of the group.
        if !g.comm.agree(kv_dtype.bytes())? {
            return Err(ModelError::KvCache(format!(
                "this tensor-parallel rank's --kv-cache-dtype ({}) differs from another \
                 rank's: every rank of a group must use the same",
                kv_dtype.name()
            )));
        }
    }
    kv.num_blocks = num_blocks(&gpu, &kv, kv_dtype, opts)?;
    // Every rank holds the same block ids (the leader's block manager hands them out).
    if let Some(g) = &group {
        kv.num_blocks = g.comm.min(kv.num_blocks)?;
    }
    let cache_len = kv.num_layers * kv.num_blocks * kv.block_elems();
    let kv_caches = KvCaches::alloc(stream, kv_dtype, cache_len)
        .map_err(|e| ModelError::KvCache(format!("{} blocks: {e}", kv.num_blocks)))?;
    tracing::info!(
        device = %gpu.name,
        arch = %gpu.arch,
        weights_gib = w.bytes() as f64 / (1u64 << 30) as f64,
        kv_dtype = kv_dtype.name(),
        kv_blocks = kv.num_blocks,
        kv_tokens = kv.num_blocks * block_size,
        kv_gib = (kv.num_blocks * kv_block_bytes(&kv, kv_dtype)) as f64 / (1u64 << 30) as f64,
        "model on the GPU"
    );
    let mut model = CudaLlama {
        graphs: Graphs::new(!opts.gpu.enforce_eager, s_max),
        gpu,
        kernels,
        gemm,
        cfg,
        info,
        kv,
        w,
        bufs,
        layout,
        meta,
        staging,
        sampling,
        kv_caches,
        cos,
        sin,
        gather: Vec::new(),
        gemv: std::env::var("PAGEDSERVE_CUDA_GEMV").map_or(true, |v| v != "0"),
        fuse: std::env::var("PAGEDSERVE_CUDA_FUSE").map_or(true, |v| v != "0"),
        tp: group,
        launches,
        async_scheduling: opts.gpu.async_scheduling,
    };
    capture_decode_graphs(&mut model)?;
    Ok(model)
}

/// Bytes one KV block takes across all layers, K and V, with elements of `dtype` (an fp8
/// block is half a bf16 one).
fn kv_block_bytes(kv: &KvLayout, dtype: KvDtype) -> usize {
    2 * kv.num_layers * kv.block_elems() * dtype.bytes()
}

/// Blocks of `block_bytes` that fit in what `utilization` of a card of `total` bytes leaves,
/// `free` bytes being free now (weights and buffers already allocated), after the reserve.
fn blocks_in_budget(free: usize, total: usize, utilization: f32, block_bytes: usize) -> usize {
    let keep_free = ((1.0 - utilization as f64) * total as f64) as usize;
    let budget = free.saturating_sub(keep_free + RESERVE_BYTES);
    budget / block_bytes.max(1)
}

/// KV blocks: `--num-kv-blocks`, or what `--gpu-memory-utilization` of the card leaves after
/// the weights and buffers (already allocated) and a reserve for graphs, in blocks of
/// `dtype`'s size (so fp8 gets twice the blocks of bf16).
fn num_blocks(
    gpu: &Gpu,
    kv: &KvLayout,
    dtype: KvDtype,
    opts: &LoadOptions,
) -> Result<usize, ModelError> {
    if let Some(n) = opts.num_kv_blocks {
        return Ok(n);
    }
    let (free, total) = gpu.mem_info()?;
    let n = blocks_in_budget(
        free,
        total,
        opts.gpu.memory_utilization,
        kv_block_bytes(kv, dtype),
    );
    if n == 0 {
        return Err(ModelError::KvCache(format!(
            "no room for the KV cache: {} MiB free of {} MiB, {:.2} utilization",
            free >> 20,
            total >> 20,
            opts.gpu.memory_utilization
        )));
    }
    Ok(n)
}

/// Captures the decode graph of every bucket (sampling on the device), over an all-padding
/// step (no KV writes, no attention), like vLLM does at start-up.
fn capture_decode_graphs(m: &mut CudaLlama) -> Result<(), ModelError> {
    if !m.graphs.enabled() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    for bucket in m.graphs.buckets().to_vec() {
        // Staged and sent the way every step is (`CudaLlama::run_batch`): padding rows only.
        let (kernels, heads) = (&m.kernels, m.dims().heads);
        let staged = m
            .staging
            .stage(&StepPlan::default(), &m.layout, Some(bucket), |info| {
                ops::prefill_tiles(kernels, heads, info)
            })?
            .map_err(|e| ModelError::Backend(e.to_string()))?;
        m.staging.upload(&m.gpu.stream, staged.len, &mut m.meta)?;
        let shape = StepShape {
            rows: bucket,
            decode_seqs: bucket,
            prefill_seqs: 0,
            num_tiles: 0,
            tile_rows: 0,
            logit_rows: bucket,
            sample: true,
        };
        m.gather.clear();
        m.capture(shape)?;
    }
    m.gpu
        .stream
        .synchronize()
        .map_err(cuda_err("graph capture"))?;
    tracing::info!(
        graphs = m.graphs.len(),
        secs = started.elapsed().as_secs_f64(),
        "decode graphs captured"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama-3-8B's cache geometry: 32 layers, 8 KV heads of 128, 16-token blocks.
    const LLAMA3_8B: KvLayout = KvLayout {
        num_layers: 32,
        num_blocks: 0,
        block_size: 16,
        num_kv_heads: 8,
        head_dim: 128,
    };

    #[test]
    fn an_fp8_block_is_half_a_bf16_block() {
        // 2 (K, V) x 32 layers x 16 x 8 x 128 elements: 2 MiB in bf16, 1 MiB in fp8.
        assert_eq!(kv_block_bytes(&LLAMA3_8B, KvDtype::Bf16), 2 << 20);
        assert_eq!(kv_block_bytes(&LLAMA3_8B, KvDtype::Fp8E4m3), 1 << 20);
    }

    #[test]
    fn fp8_gets_twice_the_blocks_of_bf16_from_the_same_memory() {
        let gib = 1usize << 30;
        let total = 80 * gib;
        // A utilization of 0.75 keeps exactly 20 GiB of the 80 free (0.9 is no f32).
        let blocks = |free: usize, dtype| {
            blocks_in_budget(free, total, 0.75, kv_block_bytes(&LLAMA3_8B, dtype))
        };
        // 60 GiB free: 60 - 20 - 0.75 (the reserve) = 39.25 GiB for the cache.
        let free = 60 * gib;
        assert_eq!(blocks(free, KvDtype::Bf16), 39 * 512 + 128);
        assert_eq!(blocks(free, KvDtype::Fp8E4m3), 2 * (39 * 512 + 128));
        // Whatever the budget, fp8 gets twice bf16's blocks, or one more where half a bf16
        // block is left over.
        for free in [
            21 * gib,
            21 * gib + 3 * (1 << 20),
            37 * gib + 12345,
            79 * gib,
        ] {
            let (bf16, fp8) = (blocks(free, KvDtype::Bf16), blocks(free, KvDtype::Fp8E4m3));
            assert!(
                bf16 > 0 && (fp8 == 2 * bf16 || fp8 == 2 * bf16 + 1),
                "{free}: {bf16} {fp8}"
            );
        }
        // Nothing left after the share kept free and the reserve: no blocks of either.
        assert_eq!(blocks(20 * gib, KvDtype::Fp8E4m3), 0);
    }
}
