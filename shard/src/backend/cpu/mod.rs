//! CPU backend: candle's quantized matmuls (`QMatMul`) for the weights, plain loops for the
//! rest, and a paged KV cache in host memory.

mod attention;
mod kv;
mod ops;
mod tensor;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

pub use attention::paged_attention;
pub use kv::CpuKvCache;
pub use tensor::CpuTensor;

use crate::backend::{Backend, BackendError, BackendResult, KvLayout, RopeTable, StepPlan};

/// How matrix weights are held on the CPU.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// Dequantized to f32 at load: f32 activations times f32 weights, like the HF reference
    /// (greedy tokens match it exactly), and faster than candle's x86 Q4_1 path, which has no
    /// SIMD kernel. Costs 4 bytes per weight, so only for small models.
    #[default]
    F32,
    /// Kept quantized (candle `QMatMul`, activations rounded to 8 bits per block): compact,
    /// for models whose f32 weights would not fit in memory.
    Quantized,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend {
    format: WeightFormat,
}

impl CpuBackend {
    pub fn new(format: WeightFormat) -> Self {
        Self { format }
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Weight = QMatMul;
    type Vector = Vec<f32>;
    type Embedding = Arc<QTensor>;
    type Rope = RopeTable;
    type KvCache = CpuKvCache;
    type Plan = StepPlan;

    fn device_name(&self) -> String {
        "cpu".to_string()
    }

    fn load_weight(&self, w: QTensor) -> BackendResult<QMatMul> {
        match self.format {
            WeightFormat::F32 => Ok(QMatMul::Tensor(w.dequantize(&Device::Cpu)?)),
            WeightFormat::Quantized => Ok(QMatMul::from_qtensor(w)?),
        }
    }

    fn load_vector(&self, w: QTensor) -> BackendResult<Vec<f32>> {
        Ok(w.dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    fn load_embedding(&self, w: QTensor) -> BackendResult<Arc<QTensor>> {
        w.shape().dims2()?;
        Ok(Arc::new(w))
    }

    fn load_rope(&self, table: RopeTable) -> BackendResult<RopeTable> {
        Ok(table)
    }

    fn kv_block_bytes(&self, layout: &KvLayout) -> usize {
        2 * layout.num_layers * layout.block_elems() * std::mem::size_of::<f32>()
    }

    fn alloc_kv_cache(&self, layout: &KvLayout) -> BackendResult<CpuKvCache> {
        CpuKvCache::new(*layout)
    }

    fn prepare(&self, plan: StepPlan) -> BackendResult<StepPlan> {
        Ok(plan)
    }

    fn embed(&self, table: &Arc<QTensor>, plan: &StepPlan) -> BackendResult<CpuTensor> {
        let ids = Tensor::from_slice(&plan.tokens, plan.tokens.len(), &Device::Cpu)?;
        CpuTensor::from_candle(&table.embedding(&ids)?)
    }

    fn rms_norm(&self, x: &CpuTensor, w: &Vec<f32>, eps: f32) -> BackendResult<CpuTensor> {
        ops::rms_norm(x, w, eps)
    }

    fn matmul(&self, x: &CpuTensor, ws: &[&QMatMul]) -> BackendResult<Vec<CpuTensor>> {
        let xt = x.to_candle()?;
        ws.iter()
            .map(|w| CpuTensor::from_candle(&w.forward(&xt)?))
            .collect()
    }

    fn rope(
        &self,
        x: &mut CpuTensor,
        rope: &RopeTable,
        plan: &StepPlan,
        num_heads: usize,
    ) -> BackendResult<()> {
        ops::rope(x, rope, &plan.positions, num_heads)
    }

    fn kv_write(
        &self,
        cache: &mut CpuKvCache,
        layer: usize,
        k: &CpuTensor,
        v: &CpuTensor,
        plan: &StepPlan,
    ) -> BackendResult<()> {
        cache.write(layer, k, v, &plan.slots)
    }

    fn paged_attention(
        &self,
        q: &CpuTensor,
        cache: &CpuKvCache,
        layer: usize,
        plan: &StepPlan,
        num_heads: usize,
        scale: f32,
    ) -> BackendResult<CpuTensor> {
        paged_attention(
            q,
            cache,
            layer,
            &plan.seqs,
            &plan.block_tables,
            num_heads,
            scale,
        )
    }

    fn silu_mul(&self, gate: &CpuTensor, up: &CpuTensor) -> BackendResult<CpuTensor> {
        ops::silu_mul(gate, up)
    }

    fn add_assign(&self, x: &mut CpuTensor, y: &CpuTensor) -> BackendResult<()> {
        ops::add_assign(x, y)
    }

    fn gather_rows(&self, x: &CpuTensor, plan: &StepPlan) -> BackendResult<CpuTensor> {
        ops::gather_rows(x, &plan.logit_rows)
    }

    fn to_host_rows(&self, x: &CpuTensor) -> BackendResult<Vec<Vec<f32>>> {
        if x.cols == 0 {
            return Err(BackendError::Shape {
                op: "to_host_rows",
                detail: "0 cols".into(),
            });
        }
        Ok(x.data.chunks_exact(x.cols).map(<[f32]>::to_vec).collect())
    }
}
