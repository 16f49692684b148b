//! The forward pass as a sequence of launches over the preallocated buffers: embedding, then
//! per layer norm -> QKV GEMM -> RoPE + KV write -> paged attention -> o_proj -> norm (with
//! the residual add) -> gate/up GEMM -> SiLU*mul -> down GEMM, then the final norm, the
//! vocabulary projection and (optionally) sampling. Small decode steps over a bf16 cache do
//! RoPE + KV write in the QKV GEMV's epilogue (an fp8 cache always runs it as its own kernel).
//! Nothing here synchronizes.

use std::ops::Range;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaView, DevicePtrMut};
use half::bf16;

use super::buffers::Buffers;
use super::device::cuda_err;
use super::gather::row_runs;
use super::kv::{CacheElem, KvCaches};
use super::linear::{Linear, linear};
use super::model::{CudaLlama, StepShape};
use super::weights::LayerWeights;
use crate::backend::BackendResult;
use crate::model::DeviceSampling;
use pagedserve_kernels::{Kernels, RopeHeads, RopeKv};

/// Model dimensions the kernels need.
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    pub max_context: usize,
    pub eps: f32,
}

impl Dims {
    pub fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
    /// Elements of K (or V) of one layer.
    pub fn layer_cache_len(&self) -> usize {
        self.num_blocks * self.kv_heads * self.block_size * self.head_dim
    }
}

/// The query rows a tile (128 or 64) for prefill sequences `(row_start, num_rows,
/// start_pos)` over `heads` query heads, and their tiles of that size. The size is
/// `Kernels::prefill_tile_rows` of their rows in all (64-row tiles where the 128-row grid
/// would hold at most one CTA an SM); the staged step keeps it for the launch
/// ([`StepShape::tile_rows`]).
pub fn prefill_tiles(k: &Kernels, heads: usize, seq_info: &[[i32; 3]]) -> (usize, Vec<[i32; 2]>) {
    let tokens = seq_info.iter().map(|s| s[1].max(0) as usize).sum();
    let rows = k.prefill_tile_rows(tokens, heads);
    (rows, pagedserve_kernels::prefill_tiles(seq_info, rows))
}

/// Sampling parameters as the sample kernel reads them: arrays of `s_max` entries at fixed
/// offsets of one u32 buffer (u64 arrays first, for alignment): seeds, counters (two words
/// each), temperatures, top_p, top_k.
pub const SAMPLING_WORDS: usize = 7;

/// Writes `params` into `out` (`SAMPLING_WORDS * s_max` words that hold the `prev` entries
/// packed before, zeros past them), and zeroes what those left past `params`: `out` ends up
/// as packing into zeros gives, without clearing all of it each step.
pub fn pack_sampling_into(params: &[DeviceSampling], s_max: usize, out: &mut [u32], prev: usize) {
    let n = params.len().min(s_max);
    for (i, p) in params.iter().enumerate().take(n) {
        out[2 * i] = p.seed as u32;
        out[2 * i + 1] = (p.seed >> 32) as u32;
        out[2 * s_max + 2 * i] = p.counter as u32;
        out[2 * s_max + 2 * i + 1] = (p.counter >> 32) as u32;
        out[4 * s_max + i] = p.temperature.to_bits();
        out[5 * s_max + i] = p.top_p.to_bits();
        out[6 * s_max + i] = p.top_k as u32;
    }
    let prev = prev.min(s_max);
    for (at, width) in [
        (0, 2),
        (2 * s_max, 2),
        (4 * s_max, 1),
        (5 * s_max, 1),
        (6 * s_max, 1),
    ] {
        super::plan::zero_past(out, at, width * n, width * prev);
    }
}

/// Views of the first `n` entries of each sampling array.
struct SamplingViews<'a> {
    seeds: CudaView<'a, u64>,
    counters: CudaView<'a, u64>,
    temperature: CudaView<'a, f32>,
    top_p: CudaView<'a, f32>,
    top_k: CudaView<'a, i32>,
}

impl<'a> SamplingViews<'a> {
    fn new(buf: &'a CudaSlice<u32>, s_max: usize, n: usize) -> Self {
        let at = |start: usize, words: usize| buf.slice(start..start + words);
        // SAFETY: same-size plain numbers; u64 arrays start at even word offsets of a
        // 256-byte-aligned allocation.
        unsafe {
            Self {
                seeds: at(0, 2 * n).transmute::<u64>(n).expect("fits"),
                counters: at(2 * s_max, 2 * n).transmute::<u64>(n).expect("fits"),
                temperature: at(4 * s_max, n).transmute::<f32>(n).expect("fits"),
                top_p: at(5 * s_max, n).transmute::<f32>(n).expect("fits"),
                top_k: at(6 * s_max, n).transmute::<i32>(n).expect("fits"),
            }
        }
    }
}

/// Reinterprets a u32 view as i32 (the metadata buffer holds both).
fn as_i32<'a>(v: &CudaView<'a, u32>) -> CudaView<'a, i32> {
    // SAFETY: u32 and i32 have the same size and alignment, and every bit pattern is valid.
    unsafe { v.transmute::<i32>(v.len()) }.expect("same length")
}

pub fn forward_layers(m: &mut CudaLlama, shape: StepShape) -> BackendResult<()> {
    let d = m.dims();
    let leader = m.is_leader();
    // Row-parallel o_proj and down leave partial sums on each rank: NCCL adds them up.
    let nccl = m.tp.as_ref().map(|g| &g.comm);
    let t = shape.rows;
    let s = &m.gpu.stream;
    let k = &m.kernels;
    let lay = m.layout;
    let b = &mut m.bufs;
    let meta = &m.meta;
    let tokens = meta.slice(lay.tokens()..lay.tokens() + t);
    let h = d.hidden;
    let err = |what| cuda_err(what);
    let lin = Linear {
        gemm: &m.gemm,
        kernels: &m.kernels,
        gemv: m.gemv,
    };
    let bt_prefill_start = lay.block_tables() + shape.decode_seqs * lay.bt_stride;
    let cx = AttnStep {
        s,
        lin,
        d,
        shape,
        bt_stride: lay.bt_stride,
        // Decode steps small enough for the GEMV run RoPE + KV write in its epilogue
        // (kernels/cuda/gemv.cu) instead of a kernel of their own; not with a QKV bias, which
        // the epilogue does not add (checked per layer), nor over an fp8 cache: the epilogue
        // writes bf16 only (`CacheElem::gemv_rope_kv` has no fp8 kernel and returns `None`).
        fuse_rope: m.fuse && lin.on_gemv(t, h),
        heads: RopeHeads {
            num_heads: d.heads,
            num_kv_heads: d.kv_heads,
            head_dim: d.head_dim,
            rope_dim: d.rope_dim,
            block_size: d.block_size,
        },
        positions: meta.slice(lay.positions()..lay.positions() + t),
        slots: meta.slice(lay.slots()..lay.slots() + t),
        cos: &m.cos,
        sin: &m.sin,
        dq_rows: as_i32(&meta.slice(lay.dq_rows()..lay.dq_rows() + shape.decode_seqs)),
        dctx: as_i32(&meta.slice(lay.dctx()..lay.dctx() + shape.decode_seqs)),
        bt_decode: as_i32(
            &meta.slice(lay.block_tables()..lay.block_tables() + shape.decode_seqs * lay.bt_stride),
        ),
        bt_prefill: as_i32(
            &meta.slice(bt_prefill_start..bt_prefill_start + shape.prefill_seqs * lay.bt_stride),
        ),
        seq_info: as_i32(&meta.slice(lay.seq_info()..lay.seq_info() + 3 * shape.prefill_seqs)),
        tiles: as_i32(&meta.slice(lay.tiles()..lay.tiles() + 2 * shape.num_tiles)),
    };

    k.embedding(
        s,
        &mut b.x.slice_mut(..t * h),
        &m.w.embed.as_view(),
        &tokens,
        h,
    )
    .map_err(err("embedding"))?;
    let per_layer = d.layer_cache_len();
    for (i, l) in m.w.layers.iter().enumerate() {
        if i == 0 {
            k.rms_norm(
                s,
                &mut b.h.slice_mut(..t * h),
                &b.x.slice(..t * h),
                &l.attn_norm.as_view(),
                d.eps,
            )
            .map_err(err("rms_norm"))?;
        } else {
            k.add_rms_norm(
                s,
                &mut b.x.slice_mut(..t * h),
                &b.delta.slice(..t * h),
                &mut b.h.slice_mut(..t * h),
                &l.attn_norm.as_view(),
                d.eps,
            )
            .map_err(err("add_rms_norm"))?;
        }
        let cache = i * per_layer..(i + 1) * per_layer;
        // One generic body for either cache type.
        match &mut m.kv_caches {
            KvCaches::Bf16 { k: kc, v: vc } => attention(&cx, b, l, kc, vc, cache)?,
            KvCaches::Fp8 { k: kc, v: vc } => attention(&cx, b, l, kc, vc, cache)?,
        }
        linear(
            lin,
            s,
            &mut b.delta,
            &b.attn,
            &l.o,
            t,
            h,
            d.heads * d.head_dim,
        )?;
        // Added once, before the sum, when the model is split.
        if let Some(bias) = l.o_bias.as_ref().filter(|_| leader) {
            k.add_bias(s, &mut b.delta.slice_mut(..t * h), &bias.as_view())
                .map_err(err("o_proj bias"))?;
        }
        if let Some(c) = nccl {
            c.all_reduce_sum(&mut b.delta.slice_mut(..t * h))?;
        }
        k.add_rms_norm(
            s,
            &mut b.x.slice_mut(..t * h),
            &b.delta.slice(..t * h),
            &mut b.h.slice_mut(..t * h),
            &l.ffn_norm.as_view(),
            d.eps,
        )
        .map_err(err("add_rms_norm"))?;
        linear(lin, s, &mut b.gate_up, &b.h, &l.gate_up, t, 2 * d.ffn, h)?;
        k.silu_mul(
            s,
            &mut b.act.slice_mut(..t * d.ffn),
            &b.gate_up.slice(..t * 2 * d.ffn),
            d.ffn,
        )
        .map_err(err("silu_mul"))?;
        linear(lin, s, &mut b.delta, &b.act, &l.down, t, h, d.ffn)?;
        if let Some(c) = nccl {
            c.all_reduce_sum(&mut b.delta.slice_mut(..t * h))?;
        }
    }
    Ok(())
}

/// What every layer's RoPE + KV write and attention share in one step.
struct AttnStep<'a> {
    s: &'a Arc<CudaStream>,
    lin: Linear<'a>,
    d: Dims,
    shape: StepShape,
    bt_stride: usize,
    /// RoPE + KV write in the QKV GEMV's epilogue where the layer and the cache type allow.
    fuse_rope: bool,
    heads: RopeHeads,
    positions: CudaView<'a, u32>,
    slots: CudaView<'a, u32>,
    cos: &'a CudaSlice<f32>,
    sin: &'a CudaSlice<f32>,
    dq_rows: CudaView<'a, i32>,
    dctx: CudaView<'a, i32>,
    bt_decode: CudaView<'a, i32>,
    bt_prefill: CudaView<'a, i32>,
    seq_info: CudaView<'a, i32>,
    tiles: CudaView<'a, i32>,
}

/// One layer's QKV projection, RoPE + KV write into `cache` of `k_cache` / `v_cache` (the
/// layer's part), and paged attention over it into `b.attn`, for a cache of either type.
fn attention<C: CacheElem>(
    cx: &AttnStep<'_>,
    b: &mut Buffers,
    l: &LayerWeights,
    k_cache: &mut CudaSlice<C>,
    v_cache: &mut CudaSlice<C>,
    cache: Range<usize>,
) -> BackendResult<()> {
    let (s, d, shape) = (cx.s, &cx.d, cx.shape);
    let kern = cx.lin.kernels;
    let (t, h, qkvw) = (shape.rows, d.hidden, d.qkv_width());
    let err = |what| cuda_err(what);
    {
        let mut rope = RopeKv {
            k_cache: k_cache.slice_mut(cache.clone()),
            v_cache: v_cache.slice_mut(cache.clone()),
            positions: cx.positions.slice(..),
            slots: cx.slots.slice(..),
            cos: cx.cos.as_view(),
            sin: cx.sin.as_view(),
            heads: cx.heads,
        };
        let fused = if cx.fuse_rope && l.qkv_bias.is_none() {
            let (qkv, x) = (&mut b.qkv.slice_mut(..t * qkvw), &b.h.slice(..t * h));
            C::gemv_rope_kv(kern, s, qkv, x, &l.qkv.as_view(), h, &mut rope)
        } else {
            None
        };
        match fused {
            Some(done) => done.map_err(err("gemv_rope_kv"))?,
            None => {
                linear(cx.lin, s, &mut b.qkv, &b.h, &l.qkv, t, qkvw, h)?;
                if let Some(bias) = &l.qkv_bias {
                    kern.add_bias(s, &mut b.qkv.slice_mut(..t * qkvw), &bias.as_view())
                        .map_err(err("qkv bias"))?;
                }
                kern.rope_kv_write(s, &mut b.qkv.slice_mut(..t * qkvw), &mut rope)
                    .map_err(err("rope_kv_write"))?;
            }
        }
    }
    let kc = k_cache.slice(cache.clone());
    let vc = v_cache.slice(cache);
    if shape.decode_seqs > 0 {
        kern.paged_decode_attention(
            s,
            &mut b.attn.slice_mut(..t * d.heads * d.head_dim),
            &b.qkv.slice(..t * qkvw),
            qkvw,
            &cx.dq_rows,
            &kc,
            &vc,
            &cx.bt_decode,
            cx.bt_stride,
            &cx.dctx,
            &mut b.decode_ws.as_view_mut(),
            d.heads,
            d.kv_heads,
            d.head_dim,
            d.block_size,
            d.scale(),
            d.max_context,
        )
        .map_err(err("paged decode attention"))?;
    }
    if shape.prefill_seqs > 0 {
        kern.paged_prefill_attention(
            s,
            &mut b.attn.slice_mut(..t * d.heads * d.head_dim),
            &b.qkv.slice(..t * qkvw),
            qkvw,
            &kc,
            &vc,
            &cx.bt_prefill,
            cx.bt_stride,
            &cx.seq_info,
            &cx.tiles,
            shape.tile_rows,
            d.heads,
            d.kv_heads,
            d.head_dim,
            d.block_size,
            d.scale(),
        )
        .map_err(err("paged prefill attention"))?;
    }
    Ok(())
}

/// Final residual add + norm over every row, the logit rows gathered (eager steps with
/// prefill chunks) into `last`, the vocabulary GEMM, and device sampling when asked.
pub fn final_norm_and_logits(m: &mut CudaLlama, shape: StepShape) -> BackendResult<()> {
    let d = m.dims();
    let (t, h) = (shape.rows, d.hidden);
    let s = &m.gpu.stream;
    let b = &mut m.bufs;
    m.kernels
        .add_rms_norm(
            s,
            &mut b.x.slice_mut(..t * h),
            &b.delta.slice(..t * h),
            &mut b.h.slice_mut(..t * h),
            &m.w.final_norm.as_view(),
            d.eps,
        )
        .map_err(cuda_err("final norm"))?;
    let n = shape.logit_rows;
    if n == 0 {
        return Ok(());
    }
    let identity = m.gather.iter().enumerate().all(|(i, &r)| i == r);
    let input: &CudaSlice<bf16> = if identity {
        &b.h
    } else {
        for run in row_runs(&m.gather) {
            let src = b.h.slice(run.src * h..(run.src + run.len) * h);
            let mut dst = b.last.slice_mut(run.dst * h..(run.dst + run.len) * h);
            s.memcpy_dtod(&src, &mut dst)
                .map_err(cuda_err("gather logit rows"))?;
        }
        &b.last
    };
    let lin = Linear {
        gemm: &m.gemm,
        kernels: &m.kernels,
        gemv: m.gemv,
    };
    linear(lin, s, &mut b.logits, input, m.w.lm_head(), n, d.vocab, h)?;
    if shape.sample {
        let p = SamplingViews::new(&m.sampling, m.layout.s_max, n);
        m.kernels
            .sample(
                s,
                &mut b.sampled.slice_mut(..n),
                &b.logits.slice(..n * d.vocab),
                &p.temperature,
                &p.top_k,
                &p.top_p,
                &p.seeds,
                &p.counters,
            )
            .map_err(cuda_err("sample"))?;
    }
    Ok(())
}

pub(super) fn ptr<T>(buf: &mut CudaSlice<T>, s: &CudaStream) -> u64 {
    let (p, _guard) = buf.device_ptr_mut(s);
    p
}

#[cfg(test)]
mod sampling_tests {
    use super::*;

    fn pack_fresh(params: &[DeviceSampling], s_max: usize) -> Vec<u32> {
        let mut out = vec![0u32; SAMPLING_WORDS * s_max];
        pack_sampling_into(params, s_max, &mut out, 0);
        out
    }

    #[test]
    fn packing_in_place_gives_what_packing_into_zeros_gives() {
        let s_max = 5;
        let mut out = vec![0u32; SAMPLING_WORDS * s_max];
        let mut prev = 0;
        for (step, n) in [3, 5, 1, 0, 4, 2, 5, 7].into_iter().enumerate() {
            let params: Vec<_> = (0..n)
                .map(|i| DeviceSampling {
                    temperature: 0.5 + i as f32,
                    top_k: i as i32 + 1,
                    top_p: 0.9,
                    seed: (1u64 << 40) + (step * 10 + i) as u64,
                    counter: (3u64 << 33) + i as u64,
                })
                .collect();
            pack_sampling_into(&params, s_max, &mut out, prev);
            prev = n.min(s_max);
            assert_eq!(
                out,
                pack_fresh(&params, s_max),
                "step {step}, {n} sequences"
            );
        }
        // Seeds and counters are split low word first, at their arrays' offsets.
        let one = [DeviceSampling {
            temperature: 1.0,
            top_k: 7,
            top_p: 0.5,
            seed: 0x1_0000_0002,
            counter: 0x3_0000_0004,
        }];
        let p = pack_fresh(&one, s_max);
        assert_eq!((p[0], p[1]), (2, 1));
        assert_eq!((p[2 * s_max], p[2 * s_max + 1]), (4, 3));
        assert_eq!(
            (p[4 * s_max], p[5 * s_max], p[6 * s_max]),
            (1.0f32.to_bits(), 0.5f32.to_bits(), 7)
        );
    }
}
