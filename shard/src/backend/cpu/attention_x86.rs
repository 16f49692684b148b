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
    for (i, t) in (job.first..job.context).enumerate() {
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
