//! AVX-512 kernels for [`super::tiled`]: lanes over output columns, one fused multiply-add
//! chain per output in `kk` order, so results are bit-identical to the scalar reference and
//! to each other whatever the number of rows.

use std::arch::x86_64::*;

use super::tiled::{GROUP, Packed, PackedKind, Panel, TILE};

/// Activation rows one packed pass shares its dequantized weights with.
const PACKED_ROWS: usize = 4;
/// Most chains (groups x rows) of one packed pass.
const PACKED_CHAINS: usize = 8;
/// Activation rows of one panel micro-tile (2 x 8 accumulators + loads fit 32 registers).
const PANEL_ROWS: usize = 8;

/// See [`Packed::matmul`]; the caller checked AVX-512F.
pub fn packed_matmul(
    p: &Packed,
    x: &[f32],
    m: usize,
    cols: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let (k, width) = (p.cols, cols.len());
    if x.len() < m * k || out.len() < m * width || cols.end > p.rows {
        return;
    }
    let mut r0 = 0;
    while r0 < m {
        let rows = (m - r0).min(PACKED_ROWS);
        let xs = &x[r0 * k..(r0 + rows) * k];
        let mut n = cols.start;
        while n < cols.end {
            let g = n / GROUP;
            let left = (cols.end - g * GROUP).div_ceil(GROUP);
            let mut acc = [[0f32; GROUP]; PACKED_CHAINS];
            // SAFETY: AVX-512F was detected by the caller; groups g.. exist in `p` (rows are a
            // multiple of GROUP, `cols.end <= rows`) and `xs` holds `rows` rows of `k`.
            let groups = unsafe { packed_pass(p, g, left, rows, xs, &mut acc) };
            for gi in 0..groups {
                let (lo, hi) = ((g + gi) * GROUP, (g + gi + 1) * GROUP);
                let (c0, c1) = (n.max(lo) - lo, cols.end.min(hi) - lo);
                for r in 0..rows {
                    let o = (r0 + r) * width + lo + c0 - cols.start;
                    out[o..o + c1 - c0].copy_from_slice(&acc[gi * rows + r][c0..c1]);
                }
            }
            n = (g + groups) * GROUP;
        }
        r0 += rows;
    }
}

/// One pass over `G` groups and `R` rows, `G * R` independent fma chains so that the
/// fma latency is hidden (one chain per output is what keeps the bits fixed). Returns `G`.
///
/// # Safety
/// AVX-512F; groups `g..g + left` exist in `p`; `x` holds `rows` rows of `p.cols`.
unsafe fn packed_pass(
    p: &Packed,
    g: usize,
    left: usize,
    rows: usize,
    x: &[f32],
    acc: &mut [[f32; GROUP]; PACKED_CHAINS],
) -> usize {
    macro_rules! go {
        ($g:literal, $r:literal) => {{
            // SAFETY: the caller's contract, with $g <= left groups and $r == rows.
            unsafe {
                match p.kind {
                    PackedKind::Q4_1 => q4_1_groups::<$g, $r>(p, g, x, acc),
                    PackedKind::Q8_0 => q8_0_groups::<$g, $r>(p, g, x, acc),
                }
            }
            $g
        }};
    }
    match (rows, left) {
        (1, 4..) => go!(4, 1),
        (1, _) => go!(1, 1),
        (2, 2..) => go!(2, 2),
        (2, _) => go!(1, 2),
        (3, 2..) => go!(2, 3),
        (3, _) => go!(1, 3),
        (_, 2..) => go!(2, 4),
        _ => go!(1, 4),
    }
}

/// # Safety
/// AVX-512F; groups `g..g + G` exist in `p`; `x` holds `R` rows of `p.cols`.
#[target_feature(enable = "avx512f")]
unsafe fn q4_1_groups<const G: usize, const R: usize>(
    p: &Packed,
    g: usize,
    x: &[f32],
    out: &mut [[f32; GROUP]; PACKED_CHAINS],
) {
    let (k, nb) = (p.cols, p.cols / 32);
    let mask = _mm512_set1_epi32(0x0F);
    let mut acc = [[_mm512_setzero_ps(); R]; G];
    for b in 0..nb {
        for (gi, acc) in acc.iter_mut().enumerate() {
            let i = (g + gi) * nb + b;
            // SAFETY: block i is in bounds (16 scales/mins, 256 quant bytes); row r's values
            // kk, kk + 1 < k are in `x`.
            unsafe {
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(p.d.as_ptr().add(i * GROUP).cast()));
                let m = _mm512_cvtph_ps(_mm256_loadu_si256(p.m.as_ptr().add(i * GROUP).cast()));
                let qp = p.q.as_ptr().add(i * 256);
                prefetch_ahead(p, i, 256);
                for pair in 0..16 {
                    let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(qp.add(pair * GROUP).cast()));
                    let q0 = _mm512_cvtepi32_ps(_mm512_and_si512(bytes, mask));
                    let q1 = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(bytes));
                    let (w0, w1) = (_mm512_fmadd_ps(d, q0, m), _mm512_fmadd_ps(d, q1, m));
                    let kk = b * 32 + 2 * pair;
                    for (r, a) in acc.iter_mut().enumerate() {
                        let xp = x.as_ptr().add(r * k + kk);
                        *a = _mm512_fmadd_ps(w0, _mm512_set1_ps(*xp), *a);
                        *a = _mm512_fmadd_ps(w1, _mm512_set1_ps(*xp.add(1)), *a);
                    }
                }
            }
        }
    }
    store(acc, out);
}

/// # Safety
/// AVX-512F; groups `g..g + G` exist in `p`; `x` holds `R` rows of `p.cols`.
#[target_feature(enable = "avx512f")]
unsafe fn q8_0_groups<const G: usize, const R: usize>(
    p: &Packed,
    g: usize,
    x: &[f32],
    out: &mut [[f32; GROUP]; PACKED_CHAINS],
) {
    let (k, nb) = (p.cols, p.cols / 32);
    let mut acc = [[_mm512_setzero_ps(); R]; G];
    for b in 0..nb {
        for (gi, acc) in acc.iter_mut().enumerate() {
            let i = (g + gi) * nb + b;
            // SAFETY: block i is in bounds (16 scales, 512 quant bytes); row r's value
            // kk < k is in `x`.
            unsafe {
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(p.d.as_ptr().add(i * GROUP).cast()));
                let qp = p.q.as_ptr().add(i * 512);
                prefetch_ahead(p, i, 512);
                for t in 0..32 {
                    let q = _mm512_cvtepi8_epi32(_mm_loadu_si128(qp.add(t * GROUP).cast()));
                    let w = _mm512_mul_ps(d, _mm512_cvtepi32_ps(q));
                    let kk = b * 32 + t;
                    for (r, a) in acc.iter_mut().enumerate() {
                        let xv = _mm512_set1_ps(*x.as_ptr().add(r * k + kk));
                        *a = _mm512_fmadd_ps(w, xv, *a);
                    }
                }
            }
        }
    }
    store(acc, out);
}

/// Blocks of a group a decode pass reads ahead of the one it works on: the weights stream
/// from memory once a token, and the hardware prefetchers stop at every 4 KB page.
const PREFETCH_BLOCKS: usize = 4;

/// Asks for block `i + PREFETCH_BLOCKS`'s quants (`per` bytes a block) and scales.
#[inline]
#[target_feature(enable = "avx512f")]
fn prefetch_ahead(p: &Packed, i: usize, per: usize) {
    let ahead = i + PREFETCH_BLOCKS;
    if (ahead + 1) * per <= p.q.len() {
        // SAFETY: the addresses are inside `p.q` / `p.d` / `p.m` (checked or implied by the
        // same block index); prefetches never fault anyway.
        unsafe {
            let q = p.q.as_ptr().add(ahead * per);
            for line in (0..per).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(q.add(line).cast());
            }
            _mm_prefetch::<_MM_HINT_T0>(p.d.as_ptr().add(ahead * GROUP).cast());
            if !p.m.is_empty() {
                _mm_prefetch::<_MM_HINT_T0>(p.m.as_ptr().add(ahead * GROUP).cast());
            }
        }
    }
}

/// Chain `(gi, r)` into `out[gi * R + r]`.
#[inline]
#[target_feature(enable = "avx512f")]
fn store<const G: usize, const R: usize>(
    acc: [[__m512; R]; G],
    out: &mut [[f32; GROUP]; PACKED_CHAINS],
) {
    for (gi, accs) in acc.iter().enumerate() {
        for (r, a) in accs.iter().enumerate() {
            // SAFETY: `out[gi * R + r]` is 16 floats (G * R <= PACKED_CHAINS).
            unsafe { _mm512_storeu_ps(out[gi * R + r].as_mut_ptr(), *a) };
        }
    }
}

/// Where the 32-column `[k][32]` weight tiles of a GEMM come from.
#[derive(Clone, Copy)]
pub enum Tiles<'a> {
    /// Stored f32 (F32 weights).
    Panel(&'a Panel),
    /// Dequantized from the packed blocks into an L2-sized buffer, once per tile and call:
    /// the same values as a stored panel at 0.6-1 byte per weight of memory traffic.
    Packed(&'a Packed),
}

/// Output columns `cols` (starting on a tile) of `x @ w^T` as a GEMM over 32-column tiles;
/// the caller checked AVX-512F. Rows go in chunks of [`PANEL_ROWS`], each transposed to
/// `[k][8]` so that a step of `kk` broadcasts from one cache line; each tile is formed once
/// and swept by every chunk while it sits in L2.
pub fn tiles_matmul(
    src: Tiles<'_>,
    x: &[f32],
    xt: Option<&[f32]>,
    m: usize,
    cols: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let (n_rows, k) = match src {
        Tiles::Panel(p) => (p.rows, p.cols),
        Tiles::Packed(p) => (p.rows, p.cols),
    };
    let width = cols.len();
    if x.len() < m * k || out.len() < m * width || cols.end > n_rows {
        return;
    }
    let chunks = m.div_ceil(PANEL_ROWS);
    let owned;
    let xt = match xt {
        Some(xt) if xt.len() == chunks * k * PANEL_ROWS => xt,
        _ => {
            owned = transpose_rows(x, m, k);
            &owned[..]
        }
    };
    let mut buf = Vec::new();
    let mut n = cols.start;
    while n < cols.end {
        let t = n / TILE;
        let tile: &[f32] = match src {
            Tiles::Panel(p) => &p.w[t * k * TILE..(t + 1) * k * TILE],
            Tiles::Packed(p) => {
                buf.resize(k * TILE, 0.0);
                // SAFETY: AVX-512F was detected by the caller; `buf` is k x 32.
                unsafe { dequant_tile(p, t, &mut buf) };
                &buf
            }
        };
        let (c0, c1) = (n - t * TILE, ((t + 1) * TILE).min(cols.end) - t * TILE);
        for c in 0..chunks {
            let (r0, rows) = (c * PANEL_ROWS, (m - c * PANEL_ROWS).min(PANEL_ROWS));
            let xc = &xt[c * k * PANEL_ROWS..(c + 1) * k * PANEL_ROWS];
            let mut acc = [[0f32; TILE]; PANEL_ROWS];
            // SAFETY: AVX-512F was detected by the caller; `tile` is k x 32, `xc` k x 8.
            unsafe {
                match rows {
                    8 => panel_tile::<8>(tile, xc, k, &mut acc),
                    7 => panel_tile::<7>(tile, xc, k, &mut acc),
                    6 => panel_tile::<6>(tile, xc, k, &mut acc),
                    5 => panel_tile::<5>(tile, xc, k, &mut acc),
                    4 => panel_tile::<4>(tile, xc, k, &mut acc),
                    3 => panel_tile::<3>(tile, xc, k, &mut acc),
                    2 => panel_tile::<2>(tile, xc, k, &mut acc),
                    _ => panel_tile::<1>(tile, xc, k, &mut acc),
                }
            }
            for (r, a) in acc.iter().enumerate().take(rows) {
                let o = (r0 + r) * width + (t * TILE + c0 - cols.start);
                out[o..o + c1 - c0].copy_from_slice(&a[c0..c1]);
            }
        }
        n = (t + 1) * TILE;
    }
}

/// `x` (`[m, k]`) in chunks of [`PANEL_ROWS`] rows, each `[k][8]` (zero past row m): the
/// GEMM's activation operand. A matmul split over the pool forms it once for all chunks.
pub fn transpose_rows(x: &[f32], m: usize, k: usize) -> Vec<f32> {
    let mut xt = vec![0f32; m.div_ceil(PANEL_ROWS) * k * PANEL_ROWS];
    for (r, row) in x.chunks_exact(k.max(1)).take(m).enumerate() {
        let base = r / PANEL_ROWS * k * PANEL_ROWS + r % PANEL_ROWS;
        for (kk, &v) in row.iter().enumerate() {
            xt[base + kk * PANEL_ROWS] = v;
        }
    }
    xt
}

/// Tile `t` of the packed weights as f32 `[k][32]`, each weight formed exactly as the
/// packed kernels form it; columns past the last group are zero.
///
/// # Safety
/// AVX-512F; `buf.len() == p.cols * 32`.
#[target_feature(enable = "avx512f")]
unsafe fn dequant_tile(p: &Packed, t: usize, buf: &mut [f32]) {
    let nb = p.cols / 32;
    let mask = _mm512_set1_epi32(0x0F);
    for gi in 0..TILE / GROUP {
        let g = t * (TILE / GROUP) + gi;
        if g * GROUP >= p.rows {
            for kk in 0..p.cols {
                buf[kk * TILE + gi * GROUP..kk * TILE + (gi + 1) * GROUP].fill(0.0);
            }
            continue;
        }
        for b in 0..nb {
            let i = g * nb + b;
            // SAFETY: block i is in bounds of the packed arrays; every store writes 16 floats
            // of row kk < k of `buf` at column offset gi * 16.
            unsafe {
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(p.d.as_ptr().add(i * GROUP).cast()));
                let dst = buf.as_mut_ptr().add(b * 32 * TILE + gi * GROUP);
                match p.kind {
                    PackedKind::Q4_1 => {
                        let m =
                            _mm512_cvtph_ps(_mm256_loadu_si256(p.m.as_ptr().add(i * GROUP).cast()));
                        let qp = p.q.as_ptr().add(i * 256);
                        for pair in 0..16 {
                            let bytes =
                                _mm512_cvtepu8_epi32(_mm_loadu_si128(qp.add(pair * GROUP).cast()));
                            let q0 = _mm512_cvtepi32_ps(_mm512_and_si512(bytes, mask));
                            let q1 = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(bytes));
                            _mm512_storeu_ps(dst.add(2 * pair * TILE), _mm512_fmadd_ps(d, q0, m));
                            _mm512_storeu_ps(
                                dst.add((2 * pair + 1) * TILE),
                                _mm512_fmadd_ps(d, q1, m),
                            );
                        }
                    }
                    PackedKind::Q8_0 => {
                        let qp = p.q.as_ptr().add(i * 512);
                        for j in 0..32 {
                            let q = _mm512_cvtepi8_epi32(_mm_loadu_si128(qp.add(j * GROUP).cast()));
                            _mm512_storeu_ps(
                                dst.add(j * TILE),
                                _mm512_mul_ps(d, _mm512_cvtepi32_ps(q)),
                            );
                        }
                    }
                }
            }
        }
    }
}

/// # Safety
/// AVX-512F; `tile.len() == k * 32`; `xt.len() == k * 8` (row r's value kk at `kk * 8 + r`).
#[target_feature(enable = "avx512f")]
unsafe fn panel_tile<const R: usize>(
    tile: &[f32],
    xt: &[f32],
    k: usize,
    out: &mut [[f32; TILE]; PANEL_ROWS],
) {
    let mut lo = [_mm512_setzero_ps(); R];
    let mut hi = [_mm512_setzero_ps(); R];
    for kk in 0..k {
        // SAFETY: row kk of the tile (32 floats) and of `xt` (8 floats) are in bounds.
        unsafe {
            let wp = tile.as_ptr().add(kk * TILE);
            let (w0, w1) = (_mm512_loadu_ps(wp), _mm512_loadu_ps(wp.add(16)));
            let xp = xt.as_ptr().add(kk * PANEL_ROWS);
            for r in 0..R {
                let xv = _mm512_set1_ps(*xp.add(r));
                lo[r] = _mm512_fmadd_ps(w0, xv, lo[r]);
                hi[r] = _mm512_fmadd_ps(w1, xv, hi[r]);
            }
        }
    }
    for r in 0..R {
        // SAFETY: `out[r]` is 32 floats.
        unsafe {
            _mm512_storeu_ps(out[r].as_mut_ptr(), lo[r]);
            _mm512_storeu_ps(out[r].as_mut_ptr().add(16), hi[r]);
        }
    }
}
