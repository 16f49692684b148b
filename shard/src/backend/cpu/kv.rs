//! Paged KV-cache storage on the host.
//!
//! f32, not f16: on the CPU the cache is small next to RAM (SmolLM2 needs ~0.74 MB per
//! 16-token block across its 30 layers), and f32 keeps attention free of conversions and
//! bit-identical to the activations that were written.
//!
//! Layout per tensor (K and V alike): `[layer][block][kv_head][slot][head_dim]`, so one
//! head's keys within a block are contiguous for the attention loop.

use crate::backend::cpu::tensor::CpuTensor;
use crate::backend::{BackendError, BackendResult, KvLayout};

#[derive(Debug)]
pub struct CpuKvCache {
    pub layout: KvLayout,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl CpuKvCache {
    pub fn new(layout: KvLayout) -> BackendResult<Self> {
        let elems = layout
            .num_layers
            .checked_mul(layout.num_blocks)
            .and_then(|n| n.checked_mul(layout.block_elems()))
            .ok_or_else(|| BackendError::Alloc(format!("KV cache of {layout:?}")))?;
        Ok(Self {
            layout,
            k: zeroed(elems)?,
            v: zeroed(elems)?,
        })
    }

    /// Offset of `(layer, block, kv_head, slot)` in `k` / `v`.
    #[inline]
    pub fn offset(&self, layer: usize, block: usize, head: usize, slot: usize) -> usize {
        let l = &self.layout;
        (((layer * l.num_blocks + block) * l.num_kv_heads + head) * l.block_size + slot)
            * l.head_dim
    }

    /// Stores row `r` of `k`/`v` at flat slot `slots[r]` (`block * block_size + offset`).
    pub fn write(
        &mut self,
        layer: usize,
        k: &CpuTensor,
        v: &CpuTensor,
        slots: &[u32],
    ) -> BackendResult<()> {
        let l = self.layout;
        let width = l.num_kv_heads * l.head_dim;
        if k.cols != width || v.cols != width || k.rows != slots.len() || v.rows != slots.len() {
            return Err(BackendError::Shape {
                op: "kv_write",
                detail: format!(
                    "k [{}, {}], v [{}, {}], {} slots",
                    k.rows,
                    k.cols,
                    v.rows,
                    v.cols,
                    slots.len()
                ),
            });
        }
        if layer >= l.num_layers {
            return Err(BackendError::Shape {
                op: "kv_write",
                detail: format!("layer {layer}"),
            });
        }
        for (r, &slot) in slots.iter().enumerate() {
            let (block, off) = (slot as usize / l.block_size, slot as usize % l.block_size);
            if block >= l.num_blocks {
                return Err(BackendError::Shape {
                    op: "kv_write",
                    detail: format!("block {block} of {}", l.num_blocks),
                });
            }
            for h in 0..l.num_kv_heads {
                let dst = self.offset(layer, block, h, off);
                let src = r * width + h * l.head_dim;
                self.k[dst..dst + l.head_dim].copy_from_slice(&k.data[src..src + l.head_dim]);
                self.v[dst..dst + l.head_dim].copy_from_slice(&v.data[src..src + l.head_dim]);
            }
        }
        Ok(())
    }
}

fn zeroed(elems: usize) -> BackendResult<Vec<f32>> {
    let mut v = Vec::new();
    v.try_reserve_exact(elems)
        .map_err(|e| BackendError::Alloc(format!("{elems} KV elements: {e}")))?;
    v.resize(elems, 0.0);
    Ok(v)
}
