//! Wrapper of the fused RoPE + KV-cache write (cuda/rope.cu).

use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;

use crate::error::{ensure, expect_len, to_u32};
use crate::{KernelError, Kernels};

impl Kernels {
    /// Rotates every q and k head of `qkv` bf16 `[T, (H + 2*KVH) * D]` in place (interleaved
    /// pairs `(2i, 2i+1)` for `i < rope_dim / 2`, tables `cos`/`sin` f32 `[max_pos, rope_dim/2]`),
    /// then writes the rotated k and the v of row t into slot `slots[t]` of this layer's caches
    /// (`[num_blocks, KVH, block_size, D]`). Slot `u32::MAX` (or any slot past the cache) marks a
    /// padding row: no cache write. T = positions.len().
    #[allow(clippy::too_many_arguments)]
    pub fn rope_kv_write(
        &self,
        stream: &CudaStream,
        qkv: &mut CudaViewMut<'_, bf16>,
        k_cache: &mut CudaViewMut<'_, bf16>,
        v_cache: &mut CudaViewMut<'_, bf16>,
        positions: &CudaView<'_, u32>,
        slots: &CudaView<'_, u32>,
        cos: &CudaView<'_, f32>,
        sin: &CudaView<'_, f32>,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        rope_dim: usize,
        block_size: usize,
    ) -> Result<(), KernelError> {
        const K: &str = "rope_kv_write";
        let t = positions.len();
        let stride = (num_heads + 2 * num_kv_heads) * head_dim;
        ensure(
            K,
            head_dim.is_multiple_of(2) && rope_dim.is_multiple_of(2) && rope_dim <= head_dim,
            || {
                format!(
                    "head_dim {head_dim} and rope_dim {rope_dim} must be even, rope_dim <= head_dim"
                )
            },
        )?;
        ensure(
            K,
            rope_dim > 0 && cos.len() % (rope_dim / 2) == 0 && !cos.is_empty(),
            || {
                format!(
                    "cos has {} elements, not [max_pos, {}]",
                    cos.len(),
                    rope_dim / 2
                )
            },
        )?;
        expect_len(K, "sin", sin.len(), cos.len())?;
        expect_len(K, "slots", slots.len(), t)?;
        expect_len(K, "qkv", qkv.len(), t * stride)?;
        let block_elems = num_kv_heads * block_size * head_dim;
        ensure(
            K,
            block_elems > 0 && k_cache.len() % block_elems == 0,
            || {
                format!(
                    "k_cache has {} elements, not a multiple of KVH*block_size*D = {block_elems}",
                    k_cache.len()
                )
            },
        )?;
        expect_len(K, "v_cache", v_cache.len(), k_cache.len())?;
        if t == 0 {
            return Ok(());
        }
        let num_slots = (k_cache.len() / block_elems * block_size) as u64;
        let max_pos = to_u32(K, "max_pos", cos.len() / (rope_dim / 2))?;
        let h = to_u32(K, "num_heads", num_heads)?;
        let kvh = to_u32(K, "num_kv_heads", num_kv_heads)?;
        let d = to_u32(K, "head_dim", head_dim)?;
        let rd = to_u32(K, "rope_dim", rope_dim)?;
        let bs = to_u32(K, "block_size", block_size)?;
        let st = to_u32(K, "stride", stride)?;
        let (q, _g0) = qkv.device_ptr_mut(stream);
        let (kc, _g1) = k_cache.device_ptr_mut(stream);
        let (vc, _g2) = v_cache.device_ptr_mut(stream);
        let (p, _g3) = positions.device_ptr(stream);
        let (s, _g4) = slots.device_ptr(stream);
        let (c, _g5) = cos.device_ptr(stream);
        let (sn, _g6) = sin.device_ptr(stream);
        let mut b = self.dependent_launch(stream, "rope_kv_write_kernel")?;
        b.arg(&q).arg(&kc).arg(&vc).arg(&p).arg(&s).arg(&c).arg(&sn);
        b.arg(&h)
            .arg(&kvh)
            .arg(&d)
            .arg(&rd)
            .arg(&bs)
            .arg(&max_pos)
            .arg(&num_slots)
            .arg(&st);
        let cfg = LaunchConfig {
            grid_dim: (to_u32(K, "rows", t)?, h + kvh, 1),
            block_dim: (64, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: sizes checked above; the kernel bounds slots by num_slots and positions by
        // max_pos.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}
