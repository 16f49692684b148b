//! Wrapper of the fused RoPE + KV-cache write (cuda/rope.cu).

use cudarc::driver::{
    CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, SyncOnDrop,
};
use half::bf16;

use crate::error::{ensure, expect_len, to_u32};
use crate::kv::KvElem;
use crate::{KernelError, Kernels};

/// The head layout of a fused QKV row and of the paged KV cache, as RoPE and the cache write
/// see them.
#[derive(Debug, Clone, Copy)]
pub struct RopeHeads {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Leading dimensions of each head that rotate (`head_dim` for full RoPE).
    pub rope_dim: usize,
    /// Tokens a cache block.
    pub block_size: usize,
}

/// [`RopeHeads`] checked against the buffers, as the kernels take it.
pub(crate) struct RopeGeom {
    pub num_slots: u64,
    pub h: u32,
    pub kvh: u32,
    pub d: u32,
    pub rope_half: u32,
    pub block_size: u32,
    pub max_pos: u32,
    pub stride: u32,
}

impl RopeHeads {
    /// Elements of one fused QKV row.
    pub fn stride(&self) -> usize {
        (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
    }
}

/// Where RoPE + KV write puts this step's k and v, and what it rotates with: the layer's caches
/// `[num_blocks, KVH, block_size, D]`, each row's position and cache slot (`u32::MAX`, or any
/// slot past the cache, for a padding row that is not written), the tables `cos`/`sin` f32
/// `[max_pos, rope_dim / 2]`, and the head layout.
/// The caches hold `C` (bf16, or fp8 e4m3 for `--kv-cache-dtype fp8`: the rotated k and the v
/// are rounded to e4m3 as they are written, see kv.rs).
pub struct RopeKv<'a, C: KvElem = bf16> {
    pub k_cache: CudaViewMut<'a, C>,
    pub v_cache: CudaViewMut<'a, C>,
    pub positions: CudaView<'a, u32>,
    pub slots: CudaView<'a, u32>,
    pub cos: CudaView<'a, f32>,
    pub sin: CudaView<'a, f32>,
    pub heads: RopeHeads,
}

/// Device addresses of a [`RopeKv`], in the kernels' order: k cache, v cache, positions, slots,
/// cos, sin; valid while the guards live.
pub(crate) struct RopePtrs<'s> {
    pub ptrs: [u64; 6],
    _guards: [SyncOnDrop<'s>; 6],
}

impl<C: KvElem> RopeKv<'_, C> {
    /// Checks the buffers for `rows` QKV rows of `qkv_len` elements: caches `[num_blocks, KVH,
    /// block_size, D]`, tables `[max_pos, rope_dim / 2]`, a position and a slot a row.
    pub(crate) fn check(
        &self,
        kernel: &'static str,
        qkv_len: usize,
        rows: usize,
    ) -> Result<RopeGeom, KernelError> {
        let h = &self.heads;
        let (head_dim, rope_dim) = (h.head_dim, h.rope_dim);
        let (cos, sin) = (&self.cos, &self.sin);
        let (k_cache_len, v_cache_len) = (self.k_cache.len(), self.v_cache.len());
        ensure(
            kernel,
            head_dim.is_multiple_of(2) && rope_dim.is_multiple_of(2) && rope_dim <= head_dim,
            || {
                format!(
                    "head_dim {head_dim} and rope_dim {rope_dim} must be even, rope_dim <= head_dim"
                )
            },
        )?;
        ensure(
            kernel,
            rope_dim > 0 && cos.len() % (rope_dim / 2) == 0 && !cos.is_empty(),
            || {
                format!(
                    "cos has {} elements, not [max_pos, {}]",
                    cos.len(),
                    rope_dim / 2
                )
            },
        )?;
        expect_len(kernel, "sin", sin.len(), cos.len())?;
        expect_len(kernel, "qkv", qkv_len, rows * h.stride())?;
        let block_elems = h.num_kv_heads * h.block_size * head_dim;
        ensure(
            kernel,
            block_elems > 0 && k_cache_len.is_multiple_of(block_elems),
            || {
                format!(
                    "k_cache has {k_cache_len} elements, not a multiple of KVH*block_size*D = \
                     {block_elems}"
                )
            },
        )?;
        expect_len(kernel, "v_cache", v_cache_len, k_cache_len)?;
        expect_len(kernel, "positions", self.positions.len(), rows)?;
        expect_len(kernel, "slots", self.slots.len(), rows)?;
        Ok(RopeGeom {
            num_slots: (k_cache_len / block_elems * h.block_size) as u64,
            h: to_u32(kernel, "num_heads", h.num_heads)?,
            kvh: to_u32(kernel, "num_kv_heads", h.num_kv_heads)?,
            d: to_u32(kernel, "head_dim", head_dim)?,
            rope_half: to_u32(kernel, "rope_dim", rope_dim / 2)?,
            block_size: to_u32(kernel, "block_size", h.block_size)?,
            max_pos: to_u32(kernel, "max_pos", cos.len() / (rope_dim / 2))?,
            stride: to_u32(kernel, "stride", h.stride())?,
        })
    }

    pub(crate) fn ptrs<'s>(&'s mut self, stream: &'s CudaStream) -> RopePtrs<'s> {
        let (kc, g0) = self.k_cache.device_ptr_mut(stream);
        let (vc, g1) = self.v_cache.device_ptr_mut(stream);
        let (p, g2) = self.positions.device_ptr(stream);
        let (s, g3) = self.slots.device_ptr(stream);
        let (c, g4) = self.cos.device_ptr(stream);
        let (sn, g5) = self.sin.device_ptr(stream);
        RopePtrs {
            ptrs: [kc, vc, p, s, c, sn],
            _guards: [g0, g1, g2, g3, g4, g5],
        }
    }
}

impl Kernels {
    /// Rotates every q and k head of `qkv` bf16 `[T, (H + 2*KVH) * D]` in place (interleaved
    /// pairs `(2i, 2i+1)` for `i < rope_dim / 2`), then writes the rotated k and the v of row t
    /// into slot `rope.slots[t]` of the layer's caches. T = `rope.positions.len()`.
    pub fn rope_kv_write<C: KvElem>(
        &self,
        stream: &CudaStream,
        qkv: &mut CudaViewMut<'_, bf16>,
        rope: &mut RopeKv<'_, C>,
    ) -> Result<(), KernelError> {
        const K: &str = "rope_kv_write";
        let t = rope.positions.len();
        let g = rope.check(K, qkv.len(), t)?;
        if t == 0 {
            return Ok(());
        }
        let rd = 2 * g.rope_half;
        let (q, _g0) = qkv.device_ptr_mut(stream);
        let p = rope.ptrs(stream);
        let name = format!("rope_kv_write{}_kernel", C::DTYPE.tag());
        let mut b = self.dependent_launch(stream, &name)?;
        b.arg(&q);
        for ptr in &p.ptrs {
            b.arg(ptr);
        }
        b.arg(&g.h)
            .arg(&g.kvh)
            .arg(&g.d)
            .arg(&rd)
            .arg(&g.block_size)
            .arg(&g.max_pos)
            .arg(&g.num_slots)
            .arg(&g.stride);
        let cfg = LaunchConfig {
            // One warp per head, ROPE_HEADS (8) heads a block (rope.cu).
            grid_dim: (to_u32(K, "rows", t)?, (g.h + g.kvh).div_ceil(8), 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: sizes checked above; the kernel bounds slots by num_slots and positions by
        // max_pos.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}
