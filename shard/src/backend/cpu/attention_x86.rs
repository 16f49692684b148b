//! AVX-512 body of one attention job (`attention::GroupJob`): head_dim a multiple of 16,
//! each cached key and value loaded once for all the query heads that share it.

use std::arch::x86_64::*;

use super::attention::{GroupJob, softmax_rows};
use super::kv::CpuKvCache;

/// # Safety
/// AVX-512F; `cache.layout.head_dim` is a multiple of 16; the job's table covers
/// `job.context` tokens and its `q`/`out` hold whole heads (checked by the caller's plan
/// validation).
#[target_feature(enable = "avx512f")]
pub unsafe fn attend_avx512(
    job: &mut GroupJob<'_>,
    cache: &CpuKvCache,
    layer: usize,
    scale: f32,
    scores: &mut Vec<f32>,
) {
    let l = cache.layout;
    let (hd, chunks) = (l.head_dim, l.head_dim / 16);
    let group = job.q.len() / hd;
    let n = job.context - job.first;
    scores.clear();
    scores.resize(group * n, 0.0);
    // Sixteen keys at a time: their 16 partial-sum vectors are reduced together (a transpose
    // tree), far cheaper than one horizontal sum per key; the tail one key at a time.
    let mut i0 = 0;
    while i0 + 16 <= n {
        let mut offs = [0usize; 16];
        for (j, o) in offs.iter_mut().enumerate() {
            let t = job.first + i0 + j;
            let block = job.table[t / l.block_size] as usize;
            *o = cache.offset(layer, block, job.kv_head, t % l.block_size);
        }
        for g in 0..group {
            let q = &job.q[g * hd..(g + 1) * hd];
            let mut p = [_mm512_setzero_ps(); 16];
            for (j, pj) in p.iter_mut().enumerate() {
                let k = &cache.k[offs[j]..offs[j] + hd];
                for c in 0..chunks {
                    // SAFETY: c * 16 + 16 <= hd for both slices.
                    unsafe {
                        let qv = _mm512_loadu_ps(q.as_ptr().add(c * 16));
                        *pj = _mm512_fmadd_ps(qv, _mm512_loadu_ps(k.as_ptr().add(c * 16)), *pj);
                    }
                }
            }
            let sums = _mm512_mul_ps(hsum16(p), _mm512_set1_ps(scale));
            // SAFETY: scores[g * n + i0 ..][..16] is in bounds (i0 + 16 <= n).
            unsafe { _mm512_storeu_ps(scores.as_mut_ptr().add(g * n + i0), sums) };
        }
        i0 += 16;
    }
    for (i, t) in (job.first..job.context).enumerate().skip(i0) {
        let block = job.table[t / l.block_size] as usize;
        let off = cache.offset(layer, block, job.kv_head, t % l.block_size);
        let k = &cache.k[off..off + hd];
        for g in 0..group {
            let q = &job.q[g * hd..(g + 1) * hd];
            let mut acc = _mm512_setzero_ps();
            for c in 0..chunks {
                // SAFETY: c * 16 + 16 <= hd for both slices.
                unsafe {
                    let (qv, kv) = (
                        _mm512_loadu_ps(q.as_ptr().add(c * 16)),
                        _mm512_loadu_ps(k.as_ptr().add(c * 16)),
                    );
                    acc = _mm512_fmadd_ps(qv, kv, acc);
                }
            }
            scores[g * n + i] = _mm512_reduce_add_ps(acc) * scale;
        }
    }
    let inv = softmax_rows(scores, n);
    // The weighted sum of the values in registers for the usual shapes (SmolLM2: 3 query
    // heads a KV head, head_dim 64), else through `out`.
    let done = match (group, chunks) {
        // SAFETY: the caller's contract; the shapes match the const parameters.
        (1, 4) => unsafe { weighted_values::<1, 4>(job, cache, layer, scores, &inv) },
        (2, 4) => unsafe { weighted_values::<2, 4>(job, cache, layer, scores, &inv) },
        (3, 4) => unsafe { weighted_values::<3, 4>(job, cache, layer, scores, &inv) },
        (4, 4) => unsafe { weighted_values::<4, 4>(job, cache, layer, scores, &inv) },
        (1, 8) => unsafe { weighted_values::<1, 8>(job, cache, layer, scores, &inv) },
        (2, 8) => unsafe { weighted_values::<2, 8>(job, cache, layer, scores, &inv) },
        _ => false,
    };
    if done {
        return;
    }
    job.out.fill(0.0);
    for (i, t) in (job.first..job.context).enumerate() {
        let block = job.table[t / l.block_size] as usize;
        let off = cache.offset(layer, block, job.kv_head, t % l.block_size);
        let v = &cache.v[off..off + hd];
        for g in 0..group {
            let w = _mm512_set1_ps(scores[g * n + i] * inv[g]);
            let out = &mut job.out[g * hd..(g + 1) * hd];
            for c in 0..chunks {
                // SAFETY: c * 16 + 16 <= hd for both slices.
                unsafe {
                    let o = out.as_mut_ptr().add(c * 16);
                    let vv = _mm512_loadu_ps(v.as_ptr().add(c * 16));
                    _mm512_storeu_ps(o, _mm512_fmadd_ps(w, vv, _mm512_loadu_ps(o)));
                }
            }
        }
    }
}

/// `out[g] = sum_t p[g][t] * inv[g] * v_t` with the `G * C` accumulators in registers
/// (`C` = head_dim / 16); the same products and order as the memory path. Returns true.
///
/// # Safety
/// AVX-512F; `job.q.len() == G * 16 * C == job.out.len()` and head_dim is `16 * C`.
#[target_feature(enable = "avx512f")]
unsafe fn weighted_values<const G: usize, const C: usize>(
    job: &mut GroupJob<'_>,
    cache: &CpuKvCache,
    layer: usize,
    scores: &[f32],
    inv: &[f32],
) -> bool {
    let l = cache.layout;
    let (hd, n) = (16 * C, job.context - job.first);
    let mut acc = [[_mm512_setzero_ps(); C]; G];
    for (i, t) in (job.first..job.context).enumerate() {
        let block = job.table[t / l.block_size] as usize;
        let off = cache.offset(layer, block, job.kv_head, t % l.block_size);
        let v = &cache.v[off..off + hd];
        let mut vv = [_mm512_setzero_ps(); C];
        for (c, x) in vv.iter_mut().enumerate() {
            // SAFETY: c * 16 + 16 <= hd.
            *x = unsafe { _mm512_loadu_ps(v.as_ptr().add(c * 16)) };
        }
        for (g, a) in acc.iter_mut().enumerate() {
            let w = _mm512_set1_ps(scores[g * n + i] * inv[g]);
            for c in 0..C {
                a[c] = _mm512_fmadd_ps(w, vv[c], a[c]);
            }
        }
    }
    for (g, a) in acc.iter().enumerate() {
        for (c, x) in a.iter().enumerate() {
            // SAFETY: `out` holds G heads of 16 * C floats.
            unsafe { _mm512_storeu_ps(job.out.as_mut_ptr().add(g * hd + c * 16), *x) };
        }
    }
    true
}

/// Lane `j` of the result is the sum of all 16 lanes of `p[j]`.
#[inline]
#[target_feature(enable = "avx512f")]
fn hsum16(p: [__m512; 16]) -> __m512 {
    // Pairs: per 128-bit lane [a0+a2, b0+b2, a1+a3, b1+b3].
    let pair =
        |a: __m512, b: __m512| _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    // Quads: per 128-bit lane the four vectors' partial sums over that lane, in order.
    let quad = |ab: __m512, cd: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_ps::<0b01_00_01_00>(ab, cd),
            _mm512_shuffle_ps::<0b11_10_11_10>(ab, cd),
        )
    };
    let r: [__m512; 4] = std::array::from_fn(|i| {
        let b = 4 * i;
        quad(pair(p[b], p[b + 1]), pair(p[b + 2], p[b + 3]))
    });
    // Across the four 128-bit lanes: block i of the result sums r[i]'s lanes.
    let half = |x: __m512, y: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(x, y),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(x, y),
        )
    };
    let (u01, u23) = (half(r[0], r[1]), half(r[2], r[3]));
    _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(u01, u23),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(u01, u23),
    )
}
