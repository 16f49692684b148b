//! Weights laid out for outer-product kernels, so that every row count gives the same bits.
//!
//! Each output `out[r][j]` is one chain `acc = fma(w[j][kk], x[r][kk], acc)` over
//! `kk = 0..k` in order, starting from 0, where `w` is the dequantized f32 weight
//! (`fma(d, q, m)` for Q4_1, `d * q` for Q8_0). SIMD lanes run over output columns, never
//! over `kk`, so the vector width, the tile a column falls in and the number of activation
//! rows cannot change a result: one sequence decoded alone (compressed weights, dequantized
//! in registers) and the same sequence inside a 512-row prefill (an f32 GEMM over a panel
//! dequantized at load) get identical logits, and the scalar code is the exact reference of
//! the AVX-512 code.
//!
//! Two forms of a `[n, k]` weight:
//! - [`Packed`]: the GGUF blocks regrouped by 16 output columns (0.625 bytes a Q4_1 weight,
//!   like GGUF), for steps with few rows;
//! - [`Panel`]: f32, transposed in tiles of 32 columns (`[n / 32][k][32]`), the operand of
//!   the GEMM for steps with many rows; quantized weights form each tile on the fly from
//!   their packed blocks (`tiled_x86::dequant_tile`), F32 weights store it.

use std::sync::OnceLock;

use half::f16;

/// Output columns of one packed group (one AVX-512 register of f32).
pub const GROUP: usize = 16;
/// Output columns of one panel tile (two registers).
pub const TILE: usize = 32;
const QK: usize = 32;

#[cfg(target_arch = "x86_64")]
pub use super::tiled_x86::transpose_rows;

/// Rows from which a matmul runs as a GEMM over f32 tiles instead of the direct packed
/// kernels (same bits either way). `PAGEDSERVE_CPU_PANEL_ROWS` overrides it (0: never) for measurements.
pub fn panel_min_rows() -> usize {
    static ROWS: OnceLock<usize> = OnceLock::new();
    *ROWS.get_or_init(|| {
        match std::env::var("PAGEDSERVE_CPU_PANEL_ROWS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        {
            Some(0) => usize::MAX,
            Some(n) => n,
            None => DEFAULT_MIN_ROWS,
        }
    })
}

/// Below this the direct packed kernels, which dequantize in registers for each pass of up
/// to 4 rows, are faster: ~95 GFLOP/s a core for any row count, the tile GEMM 63 at 8 rows,
/// 95 at 16, 134 at 40, 157 at 256 (`speed::gemm_gflops`, 1536 x 576, this box).
const DEFAULT_MIN_ROWS: usize = 16;

/// Megabytes of f32 panels the CPU backend may build for F32 weights
/// (`PAGEDSERVE_CPU_PANEL_MB`, default 4096); past it they keep their plain form.
pub fn panel_budget_bytes() -> usize {
    std::env::var("PAGEDSERVE_CPU_PANEL_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(4096)
        .saturating_mul(1 << 20)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackedKind {
    Q4_1,
    Q8_0,
}

/// Blocks regrouped by [`GROUP`] output columns. For group `g` and block `b`
/// (`i = g * nb + b`): scales `d[i * 16 + c]`, mins `m[i * 16 + c]` (f16 bits, as in GGUF);
/// Q4_1 quants `q[i * 256 + p * 16 + c] = q_c[2p] | q_c[2p + 1] << 4`, Q8_0 quants
/// `q[i * 512 + t * 16 + c] = q_c[t]` (i8).
#[derive(Debug)]
pub struct Packed {
    pub kind: PackedKind,
    pub rows: usize,
    pub cols: usize,
    pub d: Vec<u16>,
    pub m: Vec<u16>,
    pub q: Vec<u8>,
}

impl Packed {
    /// Regroups GGUF rows given as (quants of row `n`, scale bits, min bits) per block.
    /// `rows` must be a multiple of [`GROUP`] and `cols` of 32.
    pub fn new(
        kind: PackedKind,
        rows: usize,
        cols: usize,
        block: impl Fn(usize, usize) -> ([u8; QK], u16, u16),
    ) -> Option<Self> {
        if !rows.is_multiple_of(GROUP) || !cols.is_multiple_of(QK) || rows == 0 {
            return None;
        }
        let nb = cols / QK;
        let blocks = rows / GROUP * nb;
        let per = match kind {
            PackedKind::Q4_1 => 256,
            PackedKind::Q8_0 => 512,
        };
        let (mut d, mut m, mut q) = (
            vec![0u16; blocks * GROUP],
            vec![0u16; blocks * GROUP],
            vec![0u8; blocks * per],
        );
        for n in 0..rows {
            let (g, c) = (n / GROUP, n % GROUP);
            for b in 0..nb {
                let i = g * nb + b;
                let (qs, db, mb) = block(n, b);
                d[i * GROUP + c] = db;
                m[i * GROUP + c] = mb;
                for t in 0..QK {
                    match kind {
                        PackedKind::Q4_1 => {
                            q[i * 256 + t / 2 * GROUP + c] |= qs[t] << (4 * (t % 2))
                        }
                        PackedKind::Q8_0 => q[i * 512 + t * GROUP + c] = qs[t],
                    }
                }
            }
        }
        Some(Self {
            kind,
            rows,
            cols,
            d,
            m,
            q,
        })
    }

    /// Dequantized weight `w[n][kk]`, exactly as the kernels form it.
    pub fn weight(&self, n: usize, kk: usize) -> f32 {
        let nb = self.cols / QK;
        let (g, c) = (n / GROUP, n % GROUP);
        let (b, t) = (kk / QK, kk % QK);
        let i = g * nb + b;
        let d = f16::from_bits(self.d[i * GROUP + c]).to_f32();
        match self.kind {
            PackedKind::Q4_1 => {
                let byte = self.q[i * 256 + t / 2 * GROUP + c];
                let q = (byte >> (4 * (t % 2))) & 0x0F;
                let m = f16::from_bits(self.m[i * GROUP + c]).to_f32();
                d.mul_add(q as f32, m)
            }
            PackedKind::Q8_0 => d * (self.q[i * 512 + t * GROUP + c] as i8) as f32,
        }
    }

    /// Output columns `cols` (whole groups, or up to the last row) of `x @ w^T`; `x` is
    /// `[m, k]`, `out` `[m, cols.len()]`. From [`panel_min_rows`] rows on, a GEMM over tiles
    /// dequantized once per call (same bits).
    /// `xt`: `x` as [`transpose_rows`] lays it out, when the caller already has it.
    pub fn matmul(
        &self,
        x: &[f32],
        xt: Option<&[f32]>,
        m: usize,
        cols: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            use super::tiled_x86::{Tiles, packed_matmul, tiles_matmul};
            match m >= panel_min_rows() {
                true => tiles_matmul(Tiles::Packed(self), x, xt, m, cols, out),
                false => packed_matmul(self, x, m, cols, out),
            }
            return;
        }
        self.matmul_scalar(x, m, cols, out);
    }

    /// The reference: the same chains, one lane at a time.
    pub fn matmul_scalar(
        &self,
        x: &[f32],
        m: usize,
        cols: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        scalar_matmul(self.cols, x, m, cols, out, |n, kk| self.weight(n, kk));
    }
}

/// `out[r][j] = Σ_kk w(cols[j], kk) · x[r][kk]` as one fused multiply-add chain per output in
/// `kk` order: the order the SIMD kernels keep per lane, so they match it bit for bit.
fn scalar_matmul(
    k: usize,
    x: &[f32],
    m: usize,
    cols: std::ops::Range<usize>,
    out: &mut [f32],
    w: impl Fn(usize, usize) -> f32,
) {
    let width = cols.len();
    for (j, n) in cols.enumerate() {
        for r in 0..m {
            let xr = &x[r * k..(r + 1) * k];
            out[r * width + j] = xr
                .iter()
                .enumerate()
                .fold(0f32, |acc, (kk, &xv)| w(n, kk).mul_add(xv, acc));
        }
    }
}

/// f32 weights transposed in tiles of [`TILE`] columns: `w[n][kk]` at
/// `(n / 32) * k * 32 + kk * 32 + n % 32`; columns past `rows` are zero.
#[derive(Debug)]
pub struct Panel {
    pub rows: usize,
    pub cols: usize,
    pub w: Vec<f32>,
}

impl Panel {
    /// Builds the panel from each row's dequantized weights (`row(n, out)` fills `k` values).
    pub fn new(rows: usize, cols: usize, row: impl Fn(usize, &mut [f32])) -> Self {
        let tiles = rows.div_ceil(TILE);
        let mut w = vec![0f32; tiles * cols * TILE];
        let mut buf = vec![0f32; cols];
        for n in 0..rows {
            row(n, &mut buf);
            let base = n / TILE * cols * TILE + n % TILE;
            for (kk, &v) in buf.iter().enumerate() {
                w[base + kk * TILE] = v;
            }
        }
        Self { rows, cols, w }
    }

    /// Output columns `cols` (starting on a tile) of `x @ w^T`; `x` `[m, k]`, `out`
    /// `[m, cols.len()]`.
    pub fn matmul(
        &self,
        x: &[f32],
        xt: Option<&[f32]>,
        m: usize,
        cols: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            use super::tiled_x86::{Tiles, tiles_matmul};
            tiles_matmul(Tiles::Panel(self), x, xt, m, cols, out);
            return;
        }
        self.matmul_scalar(x, m, cols, out);
    }

    /// The reference, as [`Packed::matmul_scalar`].
    pub fn matmul_scalar(
        &self,
        x: &[f32],
        m: usize,
        cols: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        let k = self.cols;
        scalar_matmul(k, x, m, cols, out, |n, kk| {
            self.w[n / TILE * k * TILE + n % TILE + kk * TILE]
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // unwrap is the assertion in tests
mod tests {
    use super::*;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        fn f32(&mut self) -> f32 {
            (self.next() % 20001) as f32 / 10000.0 - 1.0
        }
    }

    /// Random blocks: quants over their whole range, GGUF-like f16 scales and mins.
    fn packed(kind: PackedKind, rows: usize, cols: usize, seed: u64) -> Packed {
        let nb = cols / QK;
        let mut rng = Rng(seed);
        let blocks: Vec<([u8; QK], u16, u16)> = (0..rows * nb)
            .map(|_| {
                let mut q = [0u8; QK];
                for v in &mut q {
                    let r = rng.next() as u8;
                    *v = if kind == PackedKind::Q4_1 {
                        r & 0x0F
                    } else {
                        r
                    };
                }
                let d = f16::from_f32(rng.f32() * 0.05).to_bits();
                (q, d, f16::from_f32(rng.f32() * 0.2).to_bits())
            })
            .collect();
        Packed::new(kind, rows, cols, |n, b| blocks[n * nb + b]).unwrap()
    }

    fn panel_of(p: &Packed) -> Panel {
        Panel::new(p.rows, p.cols, |n, out| {
            for (kk, o) in out.iter_mut().enumerate() {
                *o = p.weight(n, kk);
            }
        })
    }

    /// The packed kernels and the panel GEMM agree bit for bit with the scalar reference and
    /// with each other for every row count 1..=17 and column window, and match an f64
    /// product of the dequantized weights.
    #[test]
    fn kernels_are_bit_identical_for_every_row_count() {
        let shapes = [(576, 576), (1536, 576), (576, 1536), (48, 64), (49152, 576)];
        for kind in [PackedKind::Q4_1, PackedKind::Q8_0] {
            for (si, &(n, k)) in shapes.iter().enumerate() {
                let p = packed(kind, n, k, si as u64 + 1);
                let panel = panel_of(&p);
                let mut rng = Rng(99 + si as u64);
                let x: Vec<f32> = (0..17 * k).map(|_| rng.f32()).collect();
                // A window that starts and ends inside groups/tiles, and the whole matrix.
                let big = n > 4096;
                let windows = [64..n.min(64 + 96), 0..if big { 256 } else { n }];
                let row_counts: Vec<usize> = if big {
                    vec![1, 5, 17]
                } else {
                    (1..=17).collect()
                };
                for cols in windows {
                    let w = cols.len();
                    let mut want = vec![0f32; 17 * w];
                    p.matmul_scalar(&x, 17, cols.clone(), &mut want);
                    for r in 0..17 {
                        for (j, c) in cols.clone().enumerate() {
                            let exact: f64 = (0..k)
                                .map(|kk| p.weight(c, kk) as f64 * x[r * k + kk] as f64)
                                .sum();
                            let got = want[r * w + j] as f64;
                            assert!((got - exact).abs() < 1e-4 * (1.0 + exact.abs()), "{kind:?}");
                        }
                    }
                    for &m in &row_counts {
                        let (mut a, mut b) = (vec![f32::NAN; m * w], vec![f32::NAN; m * w]);
                        p.matmul(&x, None, m, cols.clone(), &mut a);
                        panel.matmul(&x, None, m, cols.clone(), &mut b);
                        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        let want = bits(&want[..m * w]);
                        assert_eq!(bits(&a), want, "{kind:?} packed {n}x{k} {m} rows {cols:?}");
                        assert_eq!(bits(&b), want, "{kind:?} panel {n}x{k} {m} rows {cols:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn packing_needs_whole_groups_and_blocks() {
        let block = |_, _| ([0u8; QK], 0, 0);
        assert!(Packed::new(PackedKind::Q4_1, 24, 64, block).is_none());
        assert!(Packed::new(PackedKind::Q8_0, 16, 48, block).is_none());
        assert!(Packed::new(PackedKind::Q8_0, 0, 64, block).is_none());
    }
}

/// GEMM speed on this machine, one thread (`cargo test --release -p pagedserve-shard --lib
/// tiled::speed -- --ignored --nocapture`).
#[cfg(test)]
mod speed {
    use super::*;

    #[test]
    #[ignore = "measurement, not a check"]
    fn gemm_gflops() {
        let (n, k) = (1536, 576);
        let blocks = |_n: usize, b: usize| ([(b % 16) as u8; QK], 0x3c00, 0x3c00);
        let Some(p) = Packed::new(PackedKind::Q4_1, n, k, blocks) else {
            return;
        };
        for m in [1, 4, 8, 12, 16, 24, 40, 256] {
            let x = vec![0.5f32; m * k];
            let mut out = vec![0f32; m * n];
            let reps = (2048 / m).max(4);
            let t = std::time::Instant::now();
            for _ in 0..reps {
                p.matmul(&x, None, m, 0..n, &mut out);
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!(
                "m={m}: {:.3} ms, {:.1} GFLOP/s",
                s * 1e3,
                2.0 * (m * n * k) as f64 / s / 1e9
            );
        }
    }
}
