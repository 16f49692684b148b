//! Matrix weights for the CPU matmul, kept in their GGUF block format and multiplied with
//! f32 activations: each weight row is dequantized on the fly into an L1-resident f32 buffer
//! and dotted with every activation row. Unlike candle's quantized matmul this never rounds
//! the activations (so results match an f32 reference to summation order), and on x86 it
//! runs AVX2-vectorized code selected at run time, so it needs no `target-cpu=native` build.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module};
use half::f16;

use crate::backend::cpu::tensor::CpuTensor;
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
                b.matmul_rows(x, 0..b.rows, &mut out);
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
        }
    }

    /// Output rows `range` of `x @ w^T`, written `[x.rows, range.len()]` into `out`.
    pub fn matmul_rows(&self, x: &CpuTensor, range: std::ops::Range<usize>, out: &mut [f32]) {
        let nb = self.cols / QK;
        // Q4_1's `m` term needs each activation block's sum, shared by all weight rows.
        let xsum: Vec<f32> = match self.kind {
            BlockKind::Q4_1 => x.data.chunks_exact(QK).map(|c| c.iter().sum()).collect(),
            _ => Vec::new(),
        };
        let simd = has_avx2();
        let width = range.len();
        for (i, n) in range.enumerate() {
            let blocks = n * nb..(n + 1) * nb;
            // Prefill: unpack each Q4_1 block once for four activation rows.
            let mut t0 = 0;
            #[cfg(target_arch = "x86_64")]
            if simd && self.kind == BlockKind::Q4_1 && x.cols == nb * QK {
                let (qs, d, m) = (
                    &self.qs[blocks.start * 16..blocks.end * 16],
                    &self.scales[blocks.clone()],
                    &self.mins[blocks.clone()],
                );
                while t0 + 4 <= x.rows {
                    let xs = &x.data[t0 * x.cols..(t0 + 4) * x.cols];
                    let sums = &xsum[t0 * nb..(t0 + 4) * nb];
                    // SAFETY: AVX2 and FMA were detected; block counts match by construction
                    // (`qs` 16, `xs` 4 * 32, `sums` 4 per block).
                    let r = unsafe { avx2::dot_q4_1_x4(qs, d, m, xs, sums) };
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
                    BlockKind::Q4_1 => dot_q4_1(
                        &self.qs[blocks.start * 16..blocks.end * 16],
                        &self.scales[blocks.clone()],
                        &self.mins[blocks.clone()],
                        xr,
                        &xsum[t * nb..(t + 1) * nb],
                        simd,
                    ),
                    BlockKind::Q8_0 => dot_q8_0(
                        &self.qs[blocks.start * QK..blocks.end * QK],
                        &self.scales[blocks.clone()],
                        xr,
                        simd,
                    ),
                };
            }
        }
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `sum_b d_b * (q_b . x_b) + m_b * sum(x_b)`; `qs` holds 16 bytes per block.
fn dot_q4_1(qs: &[u8], d: &[f32], m: &[f32], x: &[f32], xsum: &[f32], simd: bool) -> f32 {
    debug_assert!(qs.len() == d.len() * 16 && x.len() == d.len() * QK && xsum.len() == d.len());
    #[cfg(target_arch = "x86_64")]
    if simd
        && qs.len() == d.len() * 16
        && x.len() == d.len() * QK
        && m.len() == d.len()
        && xsum.len() == d.len()
    {
        // SAFETY: AVX2 and FMA were detected; lengths checked above.
        return unsafe { avx2::dot_q4_1(qs, d, m, x, xsum) };
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
fn dot_q8_0(qs: &[u8], d: &[f32], x: &[f32], simd: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd && qs.len() == d.len() * QK && x.len() == d.len() * QK {
        // SAFETY: AVX2 and FMA were detected; lengths checked above.
        return unsafe { avx2::dot_q8_0(qs, d, x) };
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

fn dot_f32(a: &[f32], b: &[f32], simd: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd && a.len() == b.len() && a.len().is_multiple_of(8) {
        // SAFETY: AVX2 and FMA were detected; lengths checked above.
        return unsafe { avx2::dot_f32(a, b) };
    }
    let _ = simd;
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2+FMA; `qs.len() == 16 * d.len()`, `x.len() == 32 * d.len()`, `m`/`xsum` as `d`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q4_1(qs: &[u8], d: &[f32], m: &[f32], x: &[f32], xsum: &[f32]) -> f32 {
        let mask = _mm_set1_epi8(0x0F);
        let (mut acc, mut acc_m) = (_mm256_setzero_ps(), 0f32);
        for b in 0..d.len() {
            // SAFETY: block b's 16 bytes and 32 floats are in bounds (caller's lengths).
            let (q, xp) = unsafe {
                (
                    _mm_loadu_si128(qs.as_ptr().add(b * 16).cast()),
                    x.as_ptr().add(b * 32),
                )
            };
            let lo = _mm_and_si128(q, mask);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask);
            let (f0, f1) = (widen(lo), widen(_mm_srli_si128::<8>(lo)));
            let (f2, f3) = (widen(hi), widen(_mm_srli_si128::<8>(hi)));
            // SAFETY: as above.
            let s = unsafe {
                let s = _mm256_mul_ps(f0, _mm256_loadu_ps(xp));
                let s = _mm256_fmadd_ps(f1, _mm256_loadu_ps(xp.add(8)), s);
                let t = _mm256_mul_ps(f2, _mm256_loadu_ps(xp.add(16)));
                let t = _mm256_fmadd_ps(f3, _mm256_loadu_ps(xp.add(24)), t);
                _mm256_add_ps(s, t)
            };
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d[b]), s, acc);
            acc_m += m[b] * xsum[b];
        }
        hsum(acc) + acc_m
    }

    /// Four activation rows (`x` is `[4, 32 * d.len()]`, `xsum` `[4, d.len()]`) against one
    /// weight row.
    ///
    /// # Safety
    /// AVX2+FMA; `qs.len() == 16 * d.len()`, `m.len() == d.len()`, lengths of `x`/`xsum` as said.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q4_1_x4(
        qs: &[u8],
        d: &[f32],
        m: &[f32],
        x: &[f32],
        xsum: &[f32],
    ) -> [f32; 4] {
        let (nb, cols) = (d.len(), d.len() * 32);
        let mask = _mm_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut acc_m = [0f32; 4];
        for b in 0..nb {
            // SAFETY: block b's 16 bytes are in bounds (caller's lengths).
            let q = unsafe { _mm_loadu_si128(qs.as_ptr().add(b * 16).cast()) };
            let lo = _mm_and_si128(q, mask);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask);
            let f = [
                widen(lo),
                widen(_mm_srli_si128::<8>(lo)),
                widen(hi),
                widen(_mm_srli_si128::<8>(hi)),
            ];
            let db = _mm256_set1_ps(d[b]);
            for r in 0..4 {
                // SAFETY: row r's 32 floats of block b are in bounds (caller's lengths).
                let s = unsafe {
                    let xp = x.as_ptr().add(r * cols + b * 32);
                    let s = _mm256_mul_ps(f[0], _mm256_loadu_ps(xp));
                    let s = _mm256_fmadd_ps(f[1], _mm256_loadu_ps(xp.add(8)), s);
                    let t = _mm256_mul_ps(f[2], _mm256_loadu_ps(xp.add(16)));
                    _mm256_add_ps(s, _mm256_fmadd_ps(f[3], _mm256_loadu_ps(xp.add(24)), t))
                };
                acc[r] = _mm256_fmadd_ps(db, s, acc[r]);
                acc_m[r] += m[b] * xsum[r * nb + b];
            }
        }
        [0, 1, 2, 3].map(|r| hsum(acc[r]) + acc_m[r])
    }

    /// # Safety
    /// AVX2+FMA; `qs.len() == 32 * d.len() == x.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q8_0(qs: &[u8], d: &[f32], x: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (b, &db) in d.iter().enumerate() {
            let mut s = _mm256_setzero_ps();
            for k in 0..4 {
                // SAFETY: 8 bytes and 8 floats of block b, in bounds by the caller's lengths.
                unsafe {
                    let q = _mm_loadl_epi64(qs.as_ptr().add(b * 32 + k * 8).cast());
                    let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                    s = _mm256_fmadd_ps(f, _mm256_loadu_ps(x.as_ptr().add(b * 32 + k * 8)), s);
                }
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(db), s, acc);
        }
        hsum(acc)
    }

    /// # Safety
    /// AVX2+FMA; `a.len() == b.len()`, a multiple of 8.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for i in (0..a.len()).step_by(8) {
            // SAFETY: i + 8 <= len by the caller's lengths.
            unsafe {
                acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                    acc,
                );
            }
        }
        hsum(acc)
    }

    /// The low 8 unsigned bytes of `v` as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn widen(v: __m128i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }
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
