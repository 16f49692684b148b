//! CPU backend: GGUF weights multiplied with f32 activations by our own run-time-dispatched
//! SIMD kernels over a persistent thread pool (`pool`): on AVX-512 CPUs outer-product kernels
//! over blocks regrouped by 16 output columns (few rows) or an f32 panel (many rows), with
//! the same bits for any row count (`tiled`, `tiled_x86`); elsewhere the GGUF block kernels
//! (`qweight`, `simd_x86`: AVX2 or scalar); candle's `QMatMul` for block types we do not handle (k-quants);
//! plain loops for the rest; a paged f32 KV cache in host memory (`kv`, `attention`).

mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_x86;
mod kv;
mod ops;
mod pool;
mod qweight;
#[cfg(target_arch = "x86_64")]
mod simd_x86;
mod tensor;
#[cfg(test)]
mod tests;
mod threads;
mod tiled;
#[cfg(target_arch = "x86_64")]
mod tiled_x86;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use threads::{compute_threads, set_compute_threads};

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Tensor};

pub use attention::{Heads, paged_attention, paged_attention_windowed};
pub use kv::CpuKvCache;
pub use qweight::CpuWeight;
pub use tensor::CpuTensor;

use crate::backend::{Backend, BackendError, BackendResult, KvLayout, RopeTable, StepPlan};

/// How matrix weights are held on the CPU.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// GGUF blocks (Q4_1, Q8_0) multiplied with f32 activations by our own kernel
    /// (`qweight`): compact, and exact to f32 summation order like the HF reference.
    /// Other types go through candle's `QMatMul`.
    #[default]
    Blocks,
    /// Dequantized to f32 at load (4 bytes per weight): a reference path for tests.
    F32,
    /// candle's `QMatMul` for every type (activations rounded to 8 bits per block).
    Candle,
}

#[derive(Debug)]
pub struct CpuBackend {
    format: WeightFormat,
    pool: pool::Pool,
    /// Bytes of f32 panels still allowed (`tiled::panel_budget_bytes`).
    panel_budget: AtomicUsize,
}

impl CpuBackend {
    pub fn new(format: WeightFormat) -> Self {
        Self {
            format,
            pool: pool::Pool::new(),
            panel_budget: AtomicUsize::new(tiled::panel_budget_bytes()),
        }
    }

    /// Cuts the output rows of every weight into chunks that the pool's threads claim; one
    /// pool call for all the weights (q/k/v, gate/up).
    fn matmul_blocks(
        &self,
        x: &CpuTensor,
        ws: &[&Arc<CpuWeight>],
    ) -> BackendResult<Vec<CpuTensor>> {
        let dims: Vec<usize> = ws
            .iter()
            .map(|w| {
                w.dims()
                    .map(|(n, _)| n)
                    .ok_or_else(|| shape_err("matmul", "mixed weight kinds"))
            })
            .collect::<BackendResult<_>>()?;
        let mut chunks = Vec::new();
        for (wi, (&n, w)) in dims.iter().zip(ws).enumerate() {
            // ~8 chunks per thread and weight (fewer for a GEMM, which transposes the
            // activations once per chunk), in whole 64-row units: two tiles, four groups.
            let per_thread = match &***w {
                CpuWeight::Blocks(b) if b.uses_tiles(x.rows) => 4,
                _ => 8,
            };
            let rows = n
                .div_ceil(per_thread * self.pool.threads())
                .next_multiple_of(2 * tiled::TILE);
            chunks.extend(
                (0..n)
                    .step_by(rows)
                    .map(|start| (wi, start..(start + rows).min(n))),
            );
        }
        // The GEMM's transposed activations, formed once for every chunk.
        #[cfg(target_arch = "x86_64")]
        let xt = ws
            .iter()
            .any(|w| matches!(&***w, CpuWeight::Blocks(b) if b.uses_tiles(x.rows)))
            .then(|| tiled::transpose_rows(&x.data, x.rows, x.cols));
        #[cfg(not(target_arch = "x86_64"))]
        let xt: Option<Vec<f32>> = None;
        // Borrowed by the pool's threads for this call only (`run_scoped`): no copies of the
        // activations or the weights' handles.
        let parts: Vec<Mutex<Vec<f32>>> = chunks.iter().map(|_| Mutex::default()).collect();
        self.pool.run_scoped(chunks.len(), &|c| {
            let (wi, range) = &chunks[c];
            let mut out = vec![0.0; x.rows * range.len()];
            if let CpuWeight::Blocks(b) = &**ws[*wi] {
                b.matmul_rows(x, xt.as_deref(), range.clone(), &mut out);
            }
            if let Ok(mut slot) = parts[c].lock() {
                *slot = out;
            }
        })?;
        let parts: Vec<Vec<f32>> = parts
            .into_iter()
            .map(|p| p.into_inner().unwrap_or_default())
            .collect();
        let plan = chunks;
        let mut outs: Vec<Vec<f32>> = dims.iter().map(|&n| vec![0.0; x.rows * n]).collect();
        for ((wi, range), part) in plan.iter().zip(&parts) {
            let (n, width) = (dims[*wi], range.len());
            if part.len() != x.rows * width {
                return Err(BackendError::Alloc(
                    "a CPU matmul chunk went missing".into(),
                ));
            }
            for t in 0..x.rows {
                outs[*wi][t * n + range.start..t * n + range.end]
                    .copy_from_slice(&part[t * width..(t + 1) * width]);
            }
        }
        outs.into_iter()
            .zip(&dims)
            .map(|(o, &n)| CpuTensor::new(x.rows, n, o))
            .collect()
    }
}

fn shape_err(op: &'static str, detail: &str) -> BackendError {
    BackendError::Shape {
        op,
        detail: detail.to_string(),
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Weight = Arc<CpuWeight>;
    type Vector = Vec<f32>;
    type Embedding = Arc<QTensor>;
    type Rope = RopeTable;
    type KvCache = CpuKvCache;
    type Plan = StepPlan;

    fn device_name(&self) -> String {
        "cpu".to_string()
    }

    fn load_weight(&self, w: QTensor) -> BackendResult<Arc<CpuWeight>> {
        let w = match self.format {
            WeightFormat::Blocks => {
                let mut w = CpuWeight::from_qtensor(w)?;
                if let CpuWeight::Blocks(b) = &mut w {
                    let need = b.panel_bytes();
                    let granted = self
                        .panel_budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                            left.checked_sub(need)
                        })
                        .is_ok();
                    b.build_packed();
                    if granted {
                        b.build_panel();
                    }
                }
                w
            }
            WeightFormat::F32 => CpuWeight::Candle(QMatMul::Tensor(w.dequantize(&Device::Cpu)?)),
            WeightFormat::Candle => CpuWeight::Candle(QMatMul::from_qtensor(w)?),
        };
        Ok(Arc::new(w))
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

    fn matmul(&self, x: &CpuTensor, ws: &[&Arc<CpuWeight>]) -> BackendResult<Vec<CpuTensor>> {
        for w in ws {
            if let Some((_, k)) = w.dims()
                && k != x.cols
            {
                return Err(shape_err(
                    "matmul",
                    &format!("x has {} cols, w has {k}", x.cols),
                ));
            }
        }
        if ws.iter().all(|w| w.dims().is_some()) {
            return self.matmul_blocks(x, ws);
        }
        ws.iter().map(|w| w.forward_candle(x)).collect()
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
        window: Option<usize>,
    ) -> BackendResult<CpuTensor> {
        let heads = Heads {
            num_heads,
            scale,
            window,
        };
        let (seqs, tables) = (&plan.seqs, &plan.block_tables);
        attention::paged_attention_pooled(q, cache, layer, seqs, tables, heads, Some(&self.pool))
    }

    fn silu_mul(&self, gate: &CpuTensor, up: &CpuTensor) -> BackendResult<CpuTensor> {
        ops::silu_mul(gate, up)
    }

    fn add_assign(&self, x: &mut CpuTensor, y: &CpuTensor) -> BackendResult<()> {
        ops::add_assign(x, y)
    }

    fn add_bias(&self, x: &mut CpuTensor, bias: &Vec<f32>) -> BackendResult<()> {
        ops::add_bias(x, bias)
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
