//! Paged attention on the host: each query row attends causally to its sequence's cached
//! tokens `0..=pos`, reading K/V block by block through the block table. GQA shares one KV
//! head between `num_heads / kv_heads` query heads without expanding it. With a sliding
//! window `w` (Mistral), a row at position `p` sees only tokens `p - w + 1 ..= p`.

use std::sync::Mutex;

use crate::backend::cpu::kv::CpuKvCache;
use crate::backend::cpu::pool::Pool;
use crate::backend::cpu::tensor::CpuTensor;
use crate::backend::{AttnSeq, BackendError, BackendResult};

/// Work of one row for one KV head: the `group` query heads that share it (contiguous in the
/// row under GQA), so each cached key and value is read once for all of them.
pub(super) struct GroupJob<'a> {
    pub(super) q: &'a [f32],
    pub(super) out: &'a mut [f32],
    pub(super) kv_head: usize,
    /// First cached token this row attends to (0 without a sliding window).
    pub(super) first: usize,
    pub(super) context: usize,
    pub(super) table: &'a [u32],
}

pub fn paged_attention(
    q: &CpuTensor,
    cache: &CpuKvCache,
    layer: usize,
    seqs: &[AttnSeq],
    block_tables: &[u32],
    num_heads: usize,
    scale: f32,
) -> BackendResult<CpuTensor> {
    let heads = Heads {
        num_heads,
        scale,
        window: None,
    };
    paged_attention_windowed(q, cache, layer, seqs, block_tables, heads)
}

/// [`paged_attention_pooled`] without a pool (scoped threads for large steps).
pub fn paged_attention_windowed(
    q: &CpuTensor,
    cache: &CpuKvCache,
    layer: usize,
    seqs: &[AttnSeq],
    block_tables: &[u32],
    heads: Heads,
) -> BackendResult<CpuTensor> {
    paged_attention_pooled(q, cache, layer, seqs, block_tables, heads, None)
}

/// Attention settings of one layer.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub num_heads: usize,
    pub scale: f32,
    /// Sliding window in tokens (the row's own token included); `None`: full causal.
    pub window: Option<usize>,
}

/// Attention of every row over its sequence's cached tokens, the (row, KV head) jobs spread
/// over `pool` (or scoped threads for large steps without one).
pub fn paged_attention_pooled(
    q: &CpuTensor,
    cache: &CpuKvCache,
    layer: usize,
    seqs: &[AttnSeq],
    block_tables: &[u32],
    heads: Heads,
    pool: Option<&Pool>,
) -> BackendResult<CpuTensor> {
    let Heads {
        num_heads,
        scale,
        window,
    } = heads;
    if window == Some(0) {
        return Err(shape("sliding window of 0 tokens"));
    }
    let l = cache.layout;
    check(q, cache, layer, seqs, block_tables, num_heads)?;
    let hd = l.head_dim;
    let group = num_heads / l.num_kv_heads;
    let mut out = CpuTensor::zeros(q.rows, q.cols);
    let mut jobs = Vec::with_capacity(q.rows * l.num_kv_heads);
    let mut out_rows = out.data.chunks_exact_mut(q.cols);
    for seq in seqs {
        let table = &block_tables[seq.table_start..seq.table_start + seq.table_len];
        for i in 0..seq.num_rows {
            // Rows are laid out sequence after sequence, matching `seqs`.
            let out_row = out_rows.next().ok_or_else(|| shape("rows out of order"))?;
            let q_row = q.row(seq.row_start + i);
            let context = seq.start_pos + i + 1;
            let first = window.map_or(0, |w| context.saturating_sub(w));
            for (kv_head, (q, out)) in q_row
                .chunks_exact(group * hd)
                .zip(out_row.chunks_exact_mut(group * hd))
                .enumerate()
            {
                jobs.push(Mutex::new(GroupJob {
                    q,
                    out,
                    kv_head,
                    first,
                    context,
                    table,
                }));
            }
        }
    }
    run_jobs(&jobs, cache, layer, scale, pool)?;
    Ok(out)
}

/// Runs the jobs on the pool, or on scoped threads when there is enough work to pay for them.
fn run_jobs(
    jobs: &[Mutex<GroupJob<'_>>],
    cache: &CpuKvCache,
    layer: usize,
    scale: f32,
    pool: Option<&Pool>,
) -> BackendResult<()> {
    let one = |j: &Mutex<GroupJob<'_>>| {
        if let Ok(mut j) = j.lock() {
            SCORES.with_borrow_mut(|scores| attend(&mut j, cache, layer, scale, scores));
        }
    };
    if let Some(pool) = pool {
        return pool.run_scoped(jobs.len(), &|i| one(&jobs[i]));
    }
    let work: usize = jobs
        .iter()
        .filter_map(|j| j.lock().ok().map(|j| j.context - j.first))
        .sum::<usize>()
        * cache.layout.head_dim;
    let threads = super::compute_threads();
    // A scoped spawn costs tens of microseconds: only worth it for long prefill chunks.
    if threads < 2 || work < 1 << 20 {
        jobs.iter().for_each(one);
        return Ok(());
    }
    let per = jobs.len().div_ceil(threads);
    std::thread::scope(|s| {
        for part in jobs.chunks(per) {
            s.spawn(move || part.iter().for_each(one));
        }
    });
    Ok(())
}

thread_local! {
    /// Per-thread score buffer, reused across jobs and steps.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One group job, on the widest SIMD the CPU has.
fn attend(
    job: &mut GroupJob<'_>,
    cache: &CpuKvCache,
    layer: usize,
    scale: f32,
    scores: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    if cache.layout.head_dim.is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F and head_dim is a multiple of 16.
        unsafe { super::attention_x86::attend_avx512(job, cache, layer, scale, scores) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features `attend_avx2` is compiled for.
        unsafe { attend_avx2(job, cache, layer, scale, scores) };
        return;
    }
    attend_body(job, cache, layer, scale, scores);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_avx2(
    job: &mut GroupJob<'_>,
    cache: &CpuKvCache,
    layer: usize,
    scale: f32,
    scores: &mut Vec<f32>,
) {
    attend_body(job, cache, layer, scale, scores);
}

/// Scores of every query head of the group, softmax, then the weighted values (the body
/// auto-vectorizes; the build targets baseline x86-64, so AVX2 is enabled per function).
#[inline(always)]
fn attend_body(
    job: &mut GroupJob<'_>,
    cache: &CpuKvCache,
    layer: usize,
    scale: f32,
    scores: &mut Vec<f32>,
) {
    let l = cache.layout;
    let hd = l.head_dim;
    let group = job.q.len() / hd;
    let n = job.context - job.first;
    scores.clear();
    scores.resize(group * n, 0.0);
    for (i, t) in (job.first..job.context).enumerate() {
        let block = job.table[t / l.block_size] as usize;
        let off = cache.offset(layer, block, job.kv_head, t % l.block_size);
        let k = &cache.k[off..off + hd];
        for (g, q) in job.q.chunks_exact(hd).enumerate() {
            scores[g * n + i] = dot(q, k) * scale;
        }
    }
    let inv = softmax_rows(scores, n);
    job.out.fill(0.0);
    for (i, t) in (job.first..job.context).enumerate() {
        let block = job.table[t / l.block_size] as usize;
        let off = cache.offset(layer, block, job.kv_head, t % l.block_size);
        let v = &cache.v[off..off + hd];
        for (g, out) in job.out.chunks_exact_mut(hd).enumerate() {
            let w = scores[g * n + i] * inv[g];
            out.iter_mut().zip(v).for_each(|(o, v)| *o += w * v);
        }
    }
}

/// In place `exp(s - max)` over each of the `scores.len() / n` rows of `n`; returns each
/// row's `1 / sum`.
pub(super) fn softmax_rows(scores: &mut [f32], n: usize) -> Vec<f32> {
    scores
        .chunks_exact_mut(n.max(1))
        .map(|row| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let mut sum = 0.0;
            for s in row.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            1.0 / sum
        })
        .collect()
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators so the loop vectorizes without fast-math.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

fn check(
    q: &CpuTensor,
    cache: &CpuKvCache,
    layer: usize,
    seqs: &[AttnSeq],
    block_tables: &[u32],
    num_heads: usize,
) -> BackendResult<()> {
    let l = cache.layout;
    if num_heads == 0
        || !num_heads.is_multiple_of(l.num_kv_heads)
        || q.cols != num_heads * l.head_dim
    {
        return Err(shape(&format!("q cols {} for {num_heads} heads", q.cols)));
    }
    if layer >= l.num_layers {
        return Err(shape(&format!("layer {layer}")));
    }
    let mut next_row = 0;
    for s in seqs {
        let table = block_tables
            .get(s.table_start..s.table_start + s.table_len)
            .ok_or_else(|| shape("block table range"))?;
        if s.row_start != next_row || table.len() * l.block_size < s.start_pos + s.num_rows {
            return Err(shape(&format!("sequence {s:?}")));
        }
        if table.iter().any(|&b| b as usize >= l.num_blocks) {
            return Err(shape("block id out of range"));
        }
        next_row += s.num_rows;
    }
    if next_row != q.rows {
        return Err(shape(&format!(
            "{next_row} sequence rows for {} q rows",
            q.rows
        )));
    }
    Ok(())
}

fn shape(detail: &str) -> BackendError {
    BackendError::Shape {
        op: "paged_attention",
        detail: detail.to_string(),
    }
}
