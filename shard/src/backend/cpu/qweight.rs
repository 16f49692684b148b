//! Matrix weights for the CPU matmul, kept in their GGUF block format and multiplied with
//! f32 activations: each weight row is dequantized on the fly into an L1-resident f32 buffer
//! and dotted with every activation row. Unlike candle's quantized matmul this never rounds
//! the activations (so results match an f32 reference to summation order), and on x86 it
//! runs AVX2-vectorized code selected at run time, so it needs no `target-cpu=native` build.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module};
use half::f16;

#[cfg(target_arch = "x86_64")]
use crate::backend::cpu::simd_x86;
use crate::backend::cpu::tensor::CpuTensor;
use crate::backend::cpu::tiled::{self, Packed, PackedKind, Panel};
use crate::backend::{BackendError, BackendResult};

const QK: usize = 32;

/// Weight rows in a block format this module dequantizes itself, or candle's fallback.
#[derive(Debug)]
pub enum CpuWeight {
    Blocks(BlockMatrix),
    /// Any other GGUF type (k-quants, ...): candle's `QMatMul`.
    Candle(QMatMul),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// `w = d * q + m`, q in 0..16 (two per byte: low nibbles are the block's first half).
    Q4_1,
    /// `w = d * q`, q in -128..128.
    Q8_0,
    /// Plain f32 (from F32/F16/BF16 tensors).
    F32,
}

#[derive(Debug)]
pub struct BlockMatrix {
    pub kind: BlockKind,
    pub rows: usize,
    pub cols: usize,
    /// Per block: scale (`d`), and min (`m`) for Q4_1.
    scales: Vec<f32>,
    mins: Vec<f32>,
    /// Q4_1: 16 bytes per block; Q8_0: 32 bytes per block (as i8).
    qs: Vec<u8>,
    /// F32 weights.
    dense: Vec<f32>,
    /// The outer-product forms (`tiled`), used on AVX-512 CPUs: blocks packed by 16 output
    /// columns (Q4_1, Q8_0), or an f32 panel (F32, within the memory budget).
    packed: Option<Box<Packed>>,
    panel: Option<Box<Panel>>,
}

impl CpuWeight {
    pub fn from_qtensor(w: QTensor) -> BackendResult<Self> {
        let (rows, cols) = w.shape().dims2()?;
        match w.dtype() {
            GgmlDType::Q4_1 if cols % QK == 0 => {
                Ok(Self::Blocks(parse_q4_1(&w.data()?, rows, cols)?))
            }
            GgmlDType::Q8_0 if cols % QK == 0 => {
                Ok(Self::Blocks(parse_q8_0(&w.data()?, rows, cols)?))
            }
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                let dense = w
                    .dequantize(&Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                Ok(Self::Blocks(BlockMatrix::new(
                    BlockKind::F32,
                    rows,
                    cols,
                    vec![],
                    vec![],
                    vec![],
                    dense,
                )))
            }
            _ => Ok(Self::Candle(QMatMul::from_qtensor(w)?)),
        }
    }

    /// `[out rows, in cols]`.
    pub fn dims(&self) -> Option<(usize, usize)> {
        match self {
            Self::Blocks(b) => Some((b.rows, b.cols)),
            Self::Candle(_) => None,
        }
    }

    /// `x @ w^T` over all output rows (single-threaded; see `matmul` for the split).
    pub fn forward_candle(&self, x: &CpuTensor) -> BackendResult<CpuTensor> {
        match self {
            Self::Candle(q) => CpuTensor::from_candle(&q.forward(&x.to_candle()?)?),
            Self::Blocks(b) => {
                let mut out = vec![0.0; x.rows * b.rows];
                b.matmul_rows(x, None, 0..b.rows, &mut out);
                CpuTensor::new(x.rows, b.rows, out)
            }
        }
    }
}

impl BlockMatrix {
    fn new(
        kind: BlockKind,
        rows: usize,
        cols: usize,
        scales: Vec<f32>,
        mins: Vec<f32>,
        qs: Vec<u8>,
        dense: Vec<f32>,
    ) -> Self {
        Self {
            kind,
            rows,
            cols,
            scales,
            mins,
            qs,
            dense,
            packed: None,
            panel: None,
        }
    }

    /// Bytes an f32 panel of this matrix takes (only F32 matrices build one).
    pub fn panel_bytes(&self) -> usize {
        match self.kind {
            BlockKind::F32 => self.rows * self.cols * std::mem::size_of::<f32>(),
            _ => 0,
        }
    }

    /// Builds the packed form (Q4_1 / Q8_0 with whole 16-row groups), used when the CPU has
    /// AVX-512; without it the block kernels below serve every row count.
    pub fn build_packed(&mut self) {
        if !tiled_cpu() {
            return;
        }
        let kind = match self.kind {
            BlockKind::Q4_1 => PackedKind::Q4_1,
            BlockKind::Q8_0 => PackedKind::Q8_0,
            BlockKind::F32 => return,
        };
        let nb = self.cols / QK;
        self.packed = Packed::new(kind, self.rows, self.cols, |n, b| {
            let i = n * nb + b;
            let mut q = [0u8; QK];
            match self.kind {
                BlockKind::Q4_1 => {
                    for (j, &v) in self.qs[i * 16..(i + 1) * 16].iter().enumerate() {
                        (q[j], q[j + 16]) = (v & 0x0F, v >> 4);
                    }
                }
                _ => q.copy_from_slice(&self.qs[i * QK..(i + 1) * QK]),
            }
            let min = self.mins.get(i).copied().unwrap_or(0.0);
            (
                q,
                f16::from_f32(self.scales[i]).to_bits(),
                f16::from_f32(min).to_bits(),
            )
        })
        .map(Box::new);
    }

    /// Lays F32 weights out as a panel for the outer-product GEMM (AVX-512 CPUs only;
    /// quantized weights dequantize their packed tiles on the fly instead).
    pub fn build_panel(&mut self) {
        if tiled_cpu() && self.kind == BlockKind::F32 {
            self.panel = Some(Box::new(Panel::new(self.rows, self.cols, |n, out| {
                self.dequantize_row(n, out)
            })));
        }
    }

    /// Weight row `n` as f32 (`out.len() == cols`).
    fn dequantize_row(&self, n: usize, out: &mut [f32]) {
        if self.kind == BlockKind::F32 {
            // Any width (F32 matrices need not be whole blocks).
            out.copy_from_slice(&self.dense[n * self.cols..(n + 1) * self.cols]);
            return;
        }
        let nb = self.cols / QK;
        for (b, o) in (n * nb..(n + 1) * nb).zip(out.chunks_exact_mut(QK)) {
            match self.kind {
                BlockKind::Q4_1 => {
                    let (q, d, m) = (&self.qs[b * 16..(b + 1) * 16], self.scales[b], self.mins[b]);
                    // fma, as the packed kernels dequantize (see `tiled`).
                    for j in 0..16 {
                        o[j] = d.mul_add((q[j] & 0x0F) as f32, m);
                        o[j + 16] = d.mul_add((q[j] >> 4) as f32, m);
                    }
                }
                BlockKind::Q8_0 => {
                    let (q, d) = (&self.qs[b * QK..(b + 1) * QK], self.scales[b]);
                    o.iter_mut()
                        .zip(q)
                        .for_each(|(o, &v)| *o = d * v as i8 as f32);
                }
                BlockKind::F32 => {}
            }
        }
    }

    /// Output rows `range` of `x @ w^T`, written `[x.rows, range.len()]` into `out`.
    /// `xt`: the activations as `tiled::transpose_rows` lays them out, shared by the chunks
    /// of a GEMM-sized matmul.
    pub fn matmul_rows(
        &self,
        x: &CpuTensor,
        xt: Option<&[f32]>,
        range: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        if x.cols == self.cols && out.len() == x.rows * range.len() {
            if let Some(p) = &self.packed {
                return p.matmul(&x.data, xt, x.rows, range, out);
            }
            if let Some(p) = &self.panel {
                return p.matmul(&x.data, xt, x.rows, range, out);
            }
        }
        // Q4_1's `m` term needs each activation block's sum, shared by all weight rows.
        let xsum: Vec<f32> = match self.kind {
            BlockKind::Q4_1 => x.data.chunks_exact(QK).map(|c| c.iter().sum()).collect(),
            _ => Vec::new(),
        };
        let simd = simd_level();
        let first = self.decode_rows4(x, &xsum, range.clone(), out, simd);
        for n in first..range.end {
            self.row_dots(x, &xsum, n, n - range.start, range.len(), out, simd);
        }
    }

    /// Whether a step of `rows` activation rows runs as a GEMM over weight tiles.
    pub fn uses_tiles(&self, rows: usize) -> bool {
        (self.panel.is_some() || self.packed.is_some()) && rows >= tiled::panel_min_rows()
    }

    /// The quantized blocks, scales and mins of `count` weight rows from row `first`.
    fn rows(&self, first: usize, count: usize) -> (&[u8], &[f32], &[f32]) {
        let nb = self.cols / QK;
        let blocks = first * nb..(first + count) * nb;
        let per = if self.kind == BlockKind::Q4_1 { 16 } else { QK };
        let mins = if self.kind == BlockKind::Q4_1 {
            &self.mins[blocks.clone()]
        } else {
            &[]
        };
        let qs = if self.kind == BlockKind::F32 {
            &[][..]
        } else {
            &self.qs[blocks.start * per..blocks.end * per]
        };
        let d = if self.kind == BlockKind::F32 {
            &[][..]
        } else {
            &self.scales[blocks]
        };
        (qs, d, mins)
    }

    /// Decode (one activation row) on AVX-512: four weight rows at a time share each
    /// activation load. Returns the first row left for [`Self::row_dots`].
    fn decode_rows4(
        &self,
        x: &CpuTensor,
        xsum: &[f32],
        range: std::ops::Range<usize>,
        out: &mut [f32],
        simd: Simd,
    ) -> usize {
        let mut first = range.start;
        #[cfg(target_arch = "x86_64")]
        if simd == Simd::Avx512 && x.rows == 1 && x.cols == self.cols && self.kind != BlockKind::F32
        {
            while first + 4 <= range.end {
                let (qs, d, m) = self.rows(first, 4);
                // SAFETY: AVX-512F was detected; each slice covers four rows of blocks.
                let r = unsafe {
                    match self.kind {
                        BlockKind::Q4_1 => {
                            simd_x86::avx512::dot_q4_1_rows4(qs, d, m, &x.data, xsum)
                        }
                        _ => simd_x86::avx512::dot_q8_0_rows4(qs, d, &x.data),
                    }
                };
                out[first - range.start..first - range.start + 4].copy_from_slice(&r);
                first += 4;
            }
        }
        let _ = (x, xsum, out, simd);
        first
    }

    /// Weight row `n` against every activation row, into column `i` of `out` (`width` wide).
    #[allow(clippy::too_many_arguments)] // the hot loop's state, kept in locals
    fn row_dots(
        &self,
        x: &CpuTensor,
        xsum: &[f32],
        n: usize,
        i: usize,
        width: usize,
        out: &mut [f32],
        simd: Simd,
    ) {
        let nb = self.cols / QK;
        let (qs, d, m) = self.rows(n, 1);
        let mut t0 = 0;
        // Many sequences' logits: widen each Q8_0 block once for four activation rows.
        #[cfg(target_arch = "x86_64")]
        if simd == Simd::Avx512 && self.kind == BlockKind::Q8_0 && x.cols == self.cols {
            while t0 + 4 <= x.rows {
                let xs = &x.data[t0 * x.cols..(t0 + 4) * x.cols];
                // SAFETY: AVX-512F was detected; `qs` is one row of blocks, `xs` four rows.
                let r = unsafe { simd_x86::avx512::dot_q8_0_x4(qs, d, xs) };
                for (k, v) in r.into_iter().enumerate() {
                    out[(t0 + k) * width + i] = v;
                }
                t0 += 4;
            }
        }
        // Prefill: unpack each Q4_1 block once for four activation rows.
        #[cfg(target_arch = "x86_64")]
        if simd != Simd::None && self.kind == BlockKind::Q4_1 && x.cols == self.cols {
            while t0 + 4 <= x.rows {
                let xs = &x.data[t0 * x.cols..(t0 + 4) * x.cols];
                let sums = &xsum[t0 * nb..(t0 + 4) * nb];
                // SAFETY: the features were detected; block counts match by construction
                // (`qs` 16, `xs` 4 * 32, `sums` 4 per block).
                let r = unsafe {
                    match simd {
                        Simd::Avx512 => simd_x86::avx512::dot_q4_1_x4(qs, d, m, xs, sums),
                        _ => simd_x86::avx2::dot_q4_1_x4(qs, d, m, xs, sums),
                    }
                };
                for (k, v) in r.into_iter().enumerate() {
                    out[(t0 + k) * width + i] = v;
                }
                t0 += 4;
            }
        }
        for t in t0..x.rows {
            let xr = x.row(t);
            out[t * width + i] = match self.kind {
                BlockKind::F32 => {
                    dot_f32(&self.dense[n * self.cols..(n + 1) * self.cols], xr, simd)
                }
                BlockKind::Q4_1 => dot_q4_1(qs, d, m, xr, &xsum[t * nb..(t + 1) * nb], simd),
                BlockKind::Q8_0 => dot_q8_0(qs, d, xr, simd),
            };
        }
    }
}

/// Whether the outer-product kernels (`tiled`, AVX-512 only) run here.
fn tiled_cpu() -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return true;
    }
    false
}

/// The widest SIMD level this CPU runs (detected at run time; std caches the CPUID query).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Simd {
    None,
    Avx2,
    Avx512,
}

fn simd_level() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Simd::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Simd::Avx2;
        }
    }
    Simd::None
}

/// `sum_b d_b * (q_b . x_b) + m_b * sum(x_b)`; `qs` holds 16 bytes per block.
fn dot_q4_1(qs: &[u8], d: &[f32], m: &[f32], x: &[f32], xsum: &[f32], simd: Simd) -> f32 {
    debug_assert!(qs.len() == d.len() * 16 && x.len() == d.len() * QK && xsum.len() == d.len());
    #[cfg(target_arch = "x86_64")]
    if simd != Simd::None
        && qs.len() == d.len() * 16
        && x.len() == d.len() * QK
        && m.len() == d.len()
        && xsum.len() == d.len()
    {
        // SAFETY: the features were detected; lengths checked above.
        return unsafe {
            match simd {
                Simd::Avx512 => simd_x86::avx512::dot_q4_1(qs, d, m, x, xsum),
                _ => simd_x86::avx2::dot_q4_1(qs, d, m, x, xsum),
            }
        };
    }
    let _ = simd;
    let mut total = 0.0;
    for b in 0..d.len() {
        let (q, xb) = (&qs[b * 16..(b + 1) * 16], &x[b * QK..(b + 1) * QK]);
        let s: f32 = (0..16)
            .map(|j| (q[j] & 0x0F) as f32 * xb[j] + (q[j] >> 4) as f32 * xb[j + 16])
            .sum();
        total += d[b] * s + m[b] * xsum[b];
    }
    total
}

/// `sum_b d_b * (q_b . x_b)`; `qs` holds 32 signed bytes per block.
fn dot_q8_0(qs: &[u8], d: &[f32], x: &[f32], simd: Simd) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd != Simd::None && qs.len() == d.len() * QK && x.len() == d.len() * QK {
        // SAFETY: the features were detected; lengths checked above.
        return unsafe {
            match simd {
                Simd::Avx512 => simd_x86::avx512::dot_q8_0(qs, d, x),
                _ => simd_x86::avx2::dot_q8_0(qs, d, x),
            }
        };
    }
    let _ = simd;
    let mut total = 0.0;
    for b in 0..d.len() {
        let (q, xb) = (&qs[b * QK..(b + 1) * QK], &x[b * QK..(b + 1) * QK]);
        total += d[b]
            * q.iter()
                .zip(xb)
                .map(|(q, x)| *q as i8 as f32 * x)
                .sum::<f32>();
    }
    total
}

fn dot_f32(a: &[f32], b: &[f32], simd: Simd) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd != Simd::None && a.len() == b.len() && a.len().is_multiple_of(8) {
        // SAFETY: AVX2 and FMA were detected; lengths checked above.
        return unsafe { simd_x86::avx2::dot_f32(a, b) };
    }
    let _ = simd;
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn parse_q4_1(data: &[u8], rows: usize, cols: usize) -> BackendResult<BlockMatrix> {
    let blocks = check_len(data, rows, cols, 20, "q4_1")?;
    let (mut scales, mut mins, mut qs) = (
        Vec::with_capacity(blocks),
        Vec::with_capacity(blocks),
        Vec::with_capacity(blocks * 16),
    );
    for b in data.chunks_exact(20) {
        scales.push(f16::from_le_bytes([b[0], b[1]]).to_f32());
        mins.push(f16::from_le_bytes([b[2], b[3]]).to_f32());
        qs.extend_from_slice(&b[4..20]);
    }
    Ok(BlockMatrix::new(
        BlockKind::Q4_1,
        rows,
        cols,
        scales,
        mins,
        qs,
        vec![],
    ))
}

fn parse_q8_0(data: &[u8], rows: usize, cols: usize) -> BackendResult<BlockMatrix> {
    let blocks = check_len(data, rows, cols, 34, "q8_0")?;
    let (mut scales, mut qs) = (Vec::with_capacity(blocks), Vec::with_capacity(blocks * QK));
    for b in data.chunks_exact(34) {
        scales.push(f16::from_le_bytes([b[0], b[1]]).to_f32());
        qs.extend_from_slice(&b[2..34]);
    }
    Ok(BlockMatrix::new(
        BlockKind::Q8_0,
        rows,
        cols,
        scales,
        vec![],
        qs,
        vec![],
    ))
}

fn check_len(
    data: &[u8],
    rows: usize,
    cols: usize,
    block_bytes: usize,
    what: &str,
) -> BackendResult<usize> {
    let blocks = rows * cols / QK;
    if data.len() != blocks * block_bytes {
        return Err(BackendError::Shape {
            op: "load_weight",
            detail: format!(
                "{what} [{rows}, {cols}] has {} bytes, expected {}",
                data.len(),
                blocks * block_bytes
            ),
        });
    }
    Ok(blocks)
}

#[cfg(test)]
#[path = "qweight_tests.rs"]
mod tests;
