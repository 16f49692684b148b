//! Paged attention on the host: each query row attends causally to its sequence's cached
//! tokens `0..=pos`, reading K/V block by block through the block table. GQA shares one KV
//! head between `num_heads / kv_heads` query heads without expanding it. With a sliding
//! window `w` (Mistral), a row at position `p` sees only tokens `p - w + 1 ..= p`.

use crate::backend::cpu::kv::CpuKvCache;
use crate::backend::cpu::tensor::CpuTensor;
use crate::backend::{AttnSeq, BackendError, BackendResult};

/// Work of one query head of one row.
struct HeadJob<'a> {
    q: &'a [f32],
    out: &'a mut [f32],
    kv_head: usize,
    /// First cached token this row attends to (0 without a sliding window).
    first: usize,
    context: usize,
    table: &'a [u32],
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

/// Attention settings of one layer.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub num_heads: usize,
    pub scale: f32,
    /// Sliding window in tokens (the row's own token included); `None`: full causal.
    pub window: Option<usize>,
}

pub fn paged_attention_windowed(
    q: &CpuTensor,
    cache: &CpuKvCache,
    layer: usize,
    seqs: &[AttnSeq],
    block_tables: &[u32],
    heads: Heads,
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
    let mut jobs = Vec::with_capacity(q.rows * num_heads);
    let mut out_rows = out.data.chunks_exact_mut(q.cols);
    for seq in seqs {
        let table = &block_tables[seq.table_start..seq.table_start + seq.table_len];
        for i in 0..seq.num_rows {
            // Rows are laid out sequence after sequence, matching `seqs`.
            let out_row = out_rows.next().ok_or_else(|| shape("rows out of order"))?;
            let q_row = q.row(seq.row_start + i);
            let context = seq.start_pos + i + 1;
            let first = window.map_or(0, |w| context.saturating_sub(w));
            for (h, out_head) in out_row.chunks_exact_mut(hd).enumerate() {
                jobs.push(HeadJob {
                    q: &q_row[h * hd..(h + 1) * hd],
                    out: out_head,
                    kv_head: h / group,
                    first,
                    context,
                    table,
                });
            }
        }
    }
    run_jobs(jobs, cache, layer, scale);
    Ok(out)
}

/// Splits the head jobs over the cores when there is enough work to pay for a thread.
fn run_jobs(mut jobs: Vec<HeadJob<'_>>, cache: &CpuKvCache, layer: usize, scale: f32) {
    let work: usize =
        jobs.iter().map(|j| j.context - j.first).sum::<usize>() * cache.layout.head_dim;
    let threads = super::compute_threads();
    // A scoped spawn costs tens of microseconds: only worth it for long prefill chunks.
    if threads < 2 || work < 1 << 20 {
        let mut scores = Vec::new();
        jobs.iter_mut()
            .for_each(|j| attend(j, cache, layer, scale, &mut scores));
        return;
    }
    let per = jobs.len().div_ceil(threads);
    std::thread::scope(|s| {
        for part in jobs.chunks_mut(per) {
            s.spawn(move || {
                let mut scores = Vec::new();
                part.iter_mut()
                    .for_each(|j| attend(j, cache, layer, scale, &mut scores));
            });
        }
    });
}

/// One head job, on the widest SIMD the CPU has (the body auto-vectorizes; the build targets
/// baseline x86-64, so AVX2 has to be enabled per function).
fn attend(
    job: &mut HeadJob<'_>,
    cache: &CpuKvCache,
    layer: usize,
    scale: f32,
    scores: &mut Vec<f32>,
) {
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
    job: &mut HeadJob<'_>,
    cache: &CpuKvCache,
    layer: usize,
    scale: f32,
    scores: &mut Vec<f32>,
) {
    attend_body(job, cache, layer, scale, scores);
}

#[inline(always)]
fn attend_body(
    job: &mut HeadJob<'_>,
    cache: &CpuKvCache,
    layer: usize,
    scale: f32,
    scores: &mut Vec<f32>,
) {
    let l = cache.layout;
    let hd = l.head_dim;
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for t in job.first..job.context {
        let block = job.table[t / l.block_size] as usize;
        let off = cache.offset(layer, block, job.kv_head, t % l.block_size);
        let s = dot(job.q, &cache.k[off..off + hd]) * scale;
        max = max.max(s);
        scores.push(s);
    }
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    job.out.fill(0.0);
    for (t, p) in (job.first..job.context).zip(scores.iter()) {
        let block = job.table[t / l.block_size] as usize;
        let off = cache.offset(layer, block, job.kv_head, t % l.block_size);
        let w = p * inv;
        job.out
            .iter_mut()
            .zip(&cache.v[off..off + hd])
            .for_each(|(o, v)| *o += w * v);
    }
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
