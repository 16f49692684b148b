//! GEMM autotuning at load: for every linear layer shape of the model as loaded and every row
//! bucket a step above the GEMV's rows can have, time up to [`CANDIDATES`] algorithms of
//! cuBLASLt's heuristic and keep the fastest that computes what the first pick computes.
//!
//! Why: the heuristic's first pick (what `cublasGemmEx` runs) is a guess from a model of the
//! GPU. On an H100 with Llama-3-8B's layer (`kernels/examples/linear_bench.rs`,
//! `LINEAR_BENCH_TUNE_ROWS`), the fastest of 8 candidates took the 4 linear layers from 177.0
//! to 171.8 us at 64 rows, 185.1 to 176.2 at 128, 201.3 to 194.2 at 192, 209.4 to 201.8 at
//! 256, and 305.2 to 304.6 at 512: 3-5% of those steps' GEMM time where decode batches of
//! 48-256 sequences sit.
//!
//! It runs before the decode graphs are captured (they capture whatever algorithm a call
//! picks) and before the KV cache is sized from free memory (its scratch buffers are freed
//! by then). The picks are cached on disk (`gemm_cache.rs`), so a later start only re-checks
//! them. `PAGEDSERVE_GEMM_TUNE=0` turns all of it off: every GEMM runs the heuristic's first
//! pick, and no cache file is read or written.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DevicePtr};
use half::bf16;

use super::device::cuda_err;
use super::gemm::{Gemm, GemmShape, Inner, OutType, Tuned};
use super::gemm_cache::{self, CacheKey, Pick, ShapeKey};
use super::gemm_lt::{self, Algo, FULL_ALIGN, Layouts, Operands, WORKSPACE_BYTES};
// Steps of up to GEMV_ROWS rows run our GEMV, not a GEMM, so tuning starts above it; a GEMM
// of fewer rows (the GEMV turned off, or an inner size it can't take) keeps the heuristic's
// pick.
use super::linear::GEMV_ROWS;
use super::weights::{LayerWeights, Weights};
use crate::backend::{BackendError, BackendResult};
use crate::model::{LlamaConfig, LoadOptions};

/// The upper ends of the row buckets: a GEMM of `rows` rows runs what was tuned for the
/// smallest bucket of at least `rows`. Dense where decode batches sit (the graph buckets go
/// by 8 to 64, then by 32 and 64, `graphs.rs`) and where an algorithm's tiles stop fitting
/// the SMs, sparse for prefill, where big tiles win anyway.
const BUCKETS: [usize; 19] = [
    48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 1024, 1536, 2048, 4096, 8192,
];

/// Algorithms asked of the heuristic per (shape, bucket). `linear_bench` found the winners
/// among the first 8 on an H100; 16 leaves room for other GPUs at little cost (most shapes
/// list fewer).
pub(super) const CANDIDATES: usize = 16;
/// Untimed calls before a candidate's samples (first launch, clocks).
const WARMUPS: usize = 2;
/// Timed samples per candidate; the median counts.
const SAMPLES: usize = 5;
/// Back-to-back calls between a sample's two events, so that the events' resolution (~0.5 us)
/// stays small against the smallest GEMMs (a few us for a tensor-parallel slice).
const CALLS_PER_SAMPLE: usize = 4;
/// A candidate replaces the first pick only when its median is at least this much lower:
/// below that the difference is noise, and a change of algorithm for nothing only risks
/// another numerical path.
const MIN_GAIN: f64 = 0.01;
/// Output rows compared with the first pick's (spread evenly, first and last included):
/// every row tile of any algorithm has some of them, and each row spans all `n` columns.
const CHECK_ROWS: usize = 64;
/// How far a candidate's output may be from the first pick's: bf16 rounding (2^-9 relative)
/// and another summation order stay well below it; a wrong result or a reduction in bf16 of
/// many partial sums does not.
const REL_TOL: f32 = 1e-2;
const ABS_TOL: f32 = 1e-3;
/// Elements of the random pattern the tuning input repeats (a prime: no row lines up with it).
const PATTERN_LEN: usize = 1_000_003;

/// Whether tuning is on: `PAGEDSERVE_GEMM_TUNE=0` turns it off (read at each load).
pub(super) fn enabled() -> bool {
    std::env::var("PAGEDSERVE_GEMM_TUNE").map_or(true, |v| v.trim() != "0")
}

/// The row buckets for GEMMs of at most `max_rows` rows, as `(lo, hi)` ranges of rows that
/// share one algorithm: contiguous from `GEMV_ROWS + 1`, each ending at a [`BUCKETS`] entry
/// below `max_rows`, the last at `max_rows` itself. Empty when `max_rows` is at most
/// `GEMV_ROWS`.
pub(super) fn bucket_ranges(max_rows: usize) -> Vec<(usize, usize)> {
    let mut his: Vec<usize> = BUCKETS.iter().copied().filter(|&b| b < max_rows).collect();
    if max_rows > GEMV_ROWS {
        his.push(max_rows);
    }
    let mut lo = GEMV_ROWS + 1;
    his.into_iter()
        .map(|hi| {
            let range = (lo, hi);
            lo = hi + 1;
            range
        })
        .collect()
}

/// The bucket (its `hi`) of `ranges` that holds `rows`: the smallest of at least `rows` rows.
/// `None` below the first and above the last.
pub(super) fn bucket_for(ranges: &[(usize, usize)], rows: usize) -> Option<usize> {
    ranges
        .iter()
        .find(|&&(lo, hi)| lo <= rows && rows <= hi)
        .map(|&(_, hi)| hi)
}

/// One GEMM shape to tune: up to `max_rows` rows, timed on `weights` in turn (several copies,
/// e.g. every layer's, so that no call finds its weights in L2 as no call in a step does).
pub struct TuneShape<'a> {
    pub shape: GemmShape,
    pub max_rows: usize,
    pub weights: Vec<&'a CudaSlice<bf16>>,
}

/// What [`Gemm::tune`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneReport {
    /// Distinct shapes and (shape, bucket) pairs tuned.
    pub shapes: usize,
    pub buckets: usize,
    /// Buckets that run another algorithm than the heuristic's first pick.
    pub changed: usize,
    /// The picks came from the disk cache (re-checked), not from timing.
    pub from_cache: bool,
    /// Cached picks that failed their re-check and fell back to the first pick.
    pub rejected: usize,
    pub secs: f64,
}

/// A shape's buckets and the addresses of its weight copies (all 256-byte aligned, as the
/// tuned algorithms assume; the rows of `x` and `y` start at scratch buffers' bases).
struct Work {
    shape: GemmShape,
    ranges: Vec<(usize, usize)>,
    weights: Vec<u64>,
}

/// One (shape, bucket)'s outcome: the candidate's index in the heuristic's list and, where it
/// is not the first pick, its algorithm.
struct Chosen {
    shape: GemmShape,
    range: (usize, usize),
    index: usize,
    algo: Option<Algo>,
}

/// Device buffers for timing: the input, the output (as f32 words, viewed as bf16 for bf16
/// outputs), and the two events around each sample.
struct Scratch {
    x: CudaSlice<bf16>,
    y: CudaSlice<f32>,
    start: CudaEvent,
    end: CudaEvent,
}

impl Gemm {
    /// Tunes `shapes` (see the module's doc), or reads the picks from `cache_dir` when it has
    /// them for this device, library and shape list, and installs them: from then on a GEMM
    /// of a tuned shape and bucket runs the pick. Allocates scratch for the largest
    /// input and output and frees it before returning. On an error nothing is installed
    /// (every GEMM keeps the heuristic's first pick) and the error is returned.
    pub fn tune(
        &self,
        shapes: &[TuneShape<'_>],
        cache_dir: Option<&Path>,
    ) -> BackendResult<TuneReport> {
        let started = Instant::now();
        let work = self.bound_work(shapes)?;
        let key = self.cache_key(&work)?;
        let mut inner = self.lock();
        let cached = cache_dir.and_then(|dir| gemm_cache::load(dir, &key));
        let from_cache = cached.is_some();
        let mut rejected = 0;
        let chosen = match cached {
            Some(picks) => {
                let mut chosen = Vec::with_capacity(picks.len());
                for pick in picks {
                    let c = resolve(&inner, &work, pick)?;
                    rejected += usize::from(pick.index > 0 && c.algo.is_none());
                    chosen.push(c);
                }
                chosen
            }
            None => {
                let measured = self.measure(&inner, &work);
                // The scratch is freed by now; a synchronization returns stream-ordered frees
                // to the device, so that the free memory the KV cache is sized from sees them.
                self.stream()
                    .synchronize()
                    .map_err(cuda_err("GEMM tuning scratch"))?;
                let chosen = measured?;
                if let Some(dir) = cache_dir {
                    let picks: Vec<Pick> = chosen
                        .iter()
                        .map(|c| Pick::new(c.shape, c.range.1, c.index))
                        .collect();
                    if let Err(e) = gemm_cache::store(dir, &key, &picks) {
                        tracing::warn!(dir = %dir.display(), error = %e, "GEMM tuning cache not written");
                    }
                }
                chosen
            }
        };
        if rejected > 0 {
            tracing::warn!(
                rejected,
                "cached GEMM algorithms failed their re-check; those buckets run the heuristic's \
                 first pick"
            );
        }
        let tuned = tuned(&work, &chosen);
        let report = TuneReport {
            shapes: work.len(),
            buckets: work.iter().map(|w| w.ranges.len()).sum(),
            changed: tuned.algos.len(),
            from_cache,
            rejected,
            secs: started.elapsed().as_secs_f64(),
        };
        inner.install(tuned);
        Ok(report)
    }

    /// Installs, untimed, the heuristic's candidate `index` for every bucket of `shapes` where
    /// it passes the checks tuning makes (the first pick elsewhere); returns how many buckets
    /// got it. For tests: tuning keeps the first pick wherever no candidate is clearly faster,
    /// and this runs the other candidates anyway, at every row count.
    #[doc(hidden)]
    pub fn install_candidate(
        &self,
        shapes: &[TuneShape<'_>],
        index: usize,
    ) -> BackendResult<usize> {
        let work = self.bound_work(shapes)?;
        let mut inner = self.lock();
        let mut chosen = Vec::new();
        for w in &work {
            for &(_, hi) in &w.ranges {
                chosen.push(resolve(&inner, &work, Pick::new(w.shape, hi, index))?);
            }
        }
        let tuned = tuned(&work, &chosen);
        let installed = tuned.algos.len();
        inner.install(tuned);
        Ok(installed)
    }

    /// `shapes`' work, with this Gemm's context made the thread's current one first (tuning
    /// and forced installs run cuBLASLt calls, which use the thread's current context).
    fn bound_work(&self, shapes: &[TuneShape<'_>]) -> BackendResult<Vec<Work>> {
        let stream = self.stream();
        stream
            .context()
            .bind_to_thread()
            .map_err(cuda_err("bind context"))?;
        Ok(plan_work(shapes, stream))
    }

    /// The cache key of `work` on this device with this cuBLASLt.
    fn cache_key(&self, work: &[Work]) -> BackendResult<CacheKey> {
        let ctx = self.stream().context();
        let (major, minor) = ctx
            .compute_capability()
            .map_err(cuda_err("compute capability"))?;
        Ok(CacheKey {
            format: gemm_cache::FORMAT,
            device: ctx.name().map_err(cuda_err("device name"))?,
            compute_capability: format!("{major}.{minor}"),
            cublaslt: gemm_lt::version() as u64,
            workspace_bytes: WORKSPACE_BYTES as u64,
            candidates: CANDIDATES as u32,
            shapes: work
                .iter()
                .map(|w| ShapeKey {
                    out: w.shape.out,
                    n: w.shape.n,
                    k: w.shape.k,
                    buckets: w.ranges.iter().map(|r| r.1).collect(),
                })
                .collect(),
        })
    }

    /// Times every (shape, bucket) of `work` on scratch buffers, which are dropped (freed on
    /// the stream) before this returns.
    fn measure(&self, inner: &Inner, work: &[Work]) -> BackendResult<Vec<Chosen>> {
        let stream = self.stream();
        let largest = |w: &Work| w.ranges.last().map_or(0, |r| r.1);
        let x_len = work
            .iter()
            .map(|w| largest(w) * w.shape.k)
            .max()
            .unwrap_or(0);
        let y_bytes = work
            .iter()
            .map(|w| largest(w) * w.shape.n * w.shape.out.bytes())
            .max()
            .unwrap_or(0);
        if x_len == 0 {
            return Ok(Vec::new());
        }
        let alloc = |what: &str, e| BackendError::Alloc(format!("GEMM tuning {what}: {e}"));
        // SAFETY: x is filled right below before any GEMM reads it; y is written (set to NaN,
        // or by a GEMM) before anything reads it.
        let mut x = unsafe { stream.alloc::<bf16>(x_len) }.map_err(|e| alloc("input", e))?;
        // SAFETY: as above.
        let y =
            unsafe { stream.alloc::<f32>(y_bytes.div_ceil(4)) }.map_err(|e| alloc("output", e))?;
        fill_random(stream, &mut x)?;
        let event = || {
            stream
                .context()
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(cuda_err("GEMM tuning event"))
        };
        let s = Scratch {
            x,
            y,
            start: event()?,
            end: event()?,
        };
        let (xp, yp) = {
            let (xp, _gx) = s.x.device_ptr(stream);
            let (yp, _gy) = s.y.device_ptr(stream);
            (xp, yp)
        };
        if gemm_lt::alignment(xp) != FULL_ALIGN || gemm_lt::alignment(yp) != FULL_ALIGN {
            return Err(BackendError::Cuda(
                "GEMM tuning scratch is not 256-byte aligned".into(),
            ));
        }
        let mut chosen = Vec::new();
        for w in work {
            for &range in &w.ranges {
                let (index, algo) = self.tune_bucket(inner, &s, w, range)?;
                chosen.push(Chosen {
                    shape: w.shape,
                    range,
                    index,
                    algo,
                });
            }
        }
        Ok(chosen)
    }

    /// The fastest candidate for `range` of `w`'s shape, timed at the bucket's largest row
    /// count: its index and, unless it is the first pick, its algorithm.
    fn tune_bucket(
        &self,
        inner: &Inner,
        s: &Scratch,
        w: &Work,
        range: (usize, usize),
    ) -> BackendResult<(usize, Option<Algo>)> {
        let (shape, hi) = (w.shape, range.1);
        let (at_hi, listed) = bucket_candidates(inner, shape, range)?;
        // Only candidates valid for every row count of the bucket.
        let valid: Vec<usize> = (0..listed.len()).filter(|&i| listed[i].1).collect();
        if valid.first() != Some(&0) {
            // Nothing to compare with: keep the heuristic's pick for the exact size.
            tracing::debug!(
                ?shape,
                hi,
                "GEMM tuning: the first pick is not valid for the whole bucket"
            );
            return Ok((0, None));
        }
        let stream = self.stream();
        let (xp, yp) = {
            let (xp, _gx) = s.x.device_ptr(stream);
            let (yp, _gy) = s.y.device_ptr(stream);
            (xp, yp)
        };
        let run = |i: usize, wp: u64| {
            let ops = Operands {
                w: wp,
                x: xp,
                y: yp,
                workspace: self.workspace_ptr(),
            };
            // SAFETY: w is one of the shape's weights (at least n * k elements, 256-byte
            // aligned: `plan_work`), x and y are the scratch, sized for the largest bucket of
            // every shape and 256-byte aligned (`measure`); the algorithm came from the
            // heuristic for these layouts at that alignment; the workspace is the Gemm's,
            // used on its stream under its lock (held by `tune`).
            unsafe {
                gemm_lt::matmul(
                    &inner.handle,
                    &inner.desc,
                    &at_hi,
                    &listed[i].0,
                    ops,
                    stream.cu_stream(),
                )
            }
        };
        let w0 = w.weights[0];
        let reference = self.output(s, shape, hi, || run(0, w0))?;
        if reference.iter().any(|v| !v.is_finite()) {
            tracing::warn!(
                ?shape,
                hi,
                "GEMM tuning: the first pick's output is not finite; not tuned"
            );
            return Ok((0, None));
        }
        let copies = w.weights.len();
        let mut timed = Vec::with_capacity(valid.len());
        for &i in &valid {
            match self.time(s, |call| run(i, w.weights[call % copies])) {
                Ok(ms) => timed.push((i, ms)),
                Err(e) if i == 0 => return Err(e),
                // A candidate that can't launch is skipped, not fatal: the first pick runs.
                Err(e) => {
                    tracing::debug!(?shape, hi, candidate = i, error = %e, "GEMM candidate skipped")
                }
            }
        }
        let first_ms = timed[0].1;
        timed.sort_by(|a, b| a.1.total_cmp(&b.1));
        for &(i, ms) in &timed {
            if i == 0 || ms > first_ms * (1.0 - MIN_GAIN) {
                break;
            }
            let got = self.output(s, shape, hi, || run(i, w0))?;
            if agrees(&got, &reference) {
                tracing::debug!(
                    ?shape,
                    hi,
                    candidate = i,
                    ms,
                    first_ms,
                    "GEMM algorithm tuned"
                );
                return Ok((i, Some(listed[i].0)));
            }
            tracing::warn!(
                ?shape,
                rows = hi,
                candidate = i,
                "cuBLASLt candidate's output differs from the first pick's; not used"
            );
        }
        Ok((0, None))
    }

    /// Median milliseconds per call of `run` (given a running call index, to rotate the
    /// weights): [`WARMUPS`] calls, then [`SAMPLES`] samples of [`CALLS_PER_SAMPLE`] calls.
    fn time(
        &self,
        s: &Scratch,
        mut run: impl FnMut(usize) -> BackendResult<()>,
    ) -> BackendResult<f64> {
        let stream = self.stream();
        let mut call = 0;
        for _ in 0..WARMUPS {
            run(call)?;
            call += 1;
        }
        let mut samples = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            s.start.record(stream).map_err(cuda_err("record event"))?;
            for _ in 0..CALLS_PER_SAMPLE {
                run(call)?;
                call += 1;
            }
            s.end.record(stream).map_err(cuda_err("record event"))?;
            let ms = s.start.elapsed_ms(&s.end).map_err(cuda_err("time GEMM"))?;
            samples.push(f64::from(ms) / CALLS_PER_SAMPLE as f64);
        }
        samples.sort_by(f64::total_cmp);
        Ok(samples[samples.len() / 2])
    }

    /// The [`sample_rows`] of the output `run` writes into the scratch `y` for `rows` rows of
    /// `shape`, as f32. `y` is set to NaN first, so an algorithm that leaves some of it
    /// unwritten can't pass for right.
    fn output(
        &self,
        s: &Scratch,
        shape: GemmShape,
        rows: usize,
        run: impl FnOnce() -> BackendResult<()>,
    ) -> BackendResult<Vec<f32>> {
        let stream = self.stream();
        let n = shape.n;
        {
            let (yp, _gy) = s.y.device_ptr(stream);
            let bytes = rows * n * shape.out.bytes();
            // SAFETY: y holds at least `bytes` (sized for the largest bucket of every shape);
            // all-ones bytes are NaN in bf16 and in f32.
            unsafe { cudarc::driver::result::memset_d8_async(yp, 0xFF, bytes, stream.cu_stream()) }
                .map_err(cuda_err("GEMM tuning output"))?;
        }
        run()?;
        let sample = sample_rows(rows);
        let mut host = vec![0f32; sample.len() * n];
        let copy = cuda_err("GEMM tuning output to the host");
        match shape.out {
            OutType::F32 => {
                for (dst, &r) in host.chunks_exact_mut(n).zip(&sample) {
                    stream
                        .memcpy_dtoh(&s.y.slice(r * n..(r + 1) * n), dst)
                        .map_err(&copy)?;
                }
                stream.synchronize().map_err(&copy)?;
            }
            OutType::Bf16 => {
                // SAFETY: bf16 has no invalid bit patterns; y holds at least rows * n of them
                // (`transmute` checks).
                let view = unsafe { s.y.transmute::<bf16>(rows * n) }.ok_or_else(|| {
                    BackendError::Cuda("GEMM tuning output buffer too small".into())
                })?;
                let mut words = vec![bf16::ZERO; sample.len() * n];
                for (dst, &r) in words.chunks_exact_mut(n).zip(&sample) {
                    stream
                        .memcpy_dtoh(&view.slice(r * n..(r + 1) * n), dst)
                        .map_err(&copy)?;
                }
                stream.synchronize().map_err(&copy)?;
                for (h, w) in host.iter_mut().zip(&words) {
                    *h = w.to_f32();
                }
            }
        }
        Ok(host)
    }
}

/// The picks of `work` a cached `pick` names, re-checked: the algorithm at `pick.index` of the
/// heuristic's list for its bucket, if that is usable and passes `cublasLtMatmulAlgoCheck` at
/// both ends of the bucket; else (`algo: None`) the first pick.
fn resolve(inner: &Inner, work: &[Work], pick: Pick) -> BackendResult<Chosen> {
    let shape = pick.shape();
    // The cache's key holds exactly `work`'s shapes and buckets (`gemm_cache::decode`).
    let range = work
        .iter()
        .find(|w| w.shape == shape)
        .and_then(|w| w.ranges.iter().find(|r| r.1 == pick.bucket))
        .copied()
        .ok_or_else(|| BackendError::Cuda(format!("cached GEMM pick {pick:?} not tuned")))?;
    let mut chosen = Chosen {
        shape,
        range,
        index: 0,
        algo: None,
    };
    if pick.index == 0 {
        return Ok(chosen);
    }
    let (_, listed) = bucket_candidates(inner, shape, range)?;
    if let Some(&(algo, true)) = listed.get(pick.index) {
        chosen.index = pick.index;
        chosen.algo = Some(algo);
    }
    Ok(chosen)
}

/// The layouts at a bucket's largest row count and the heuristic's algorithms for them, each
/// with whether it can run every row count of the bucket: usable (its workspace fits), and
/// cuBLASLt's own check passes at both ends. Tuning times these; a cached pick is re-checked
/// the same way.
fn bucket_candidates(
    inner: &Inner,
    shape: GemmShape,
    (lo, hi): (usize, usize),
) -> BackendResult<(Layouts, Vec<(Algo, bool)>)> {
    let at_hi = Layouts::new(shape, hi)?;
    let at_lo = Layouts::new(shape, lo)?;
    let listed = gemm_lt::heuristic(
        &inner.handle,
        &inner.desc,
        &at_hi,
        [FULL_ALIGN; 3],
        CANDIDATES,
    )?;
    let candidates = listed
        .iter()
        .map(|h| {
            let valid = gemm_lt::usable(h)
                && gemm_lt::check(&inner.handle, &inner.desc, &at_hi, &h.algo)
                && gemm_lt::check(&inner.handle, &inner.desc, &at_lo, &h.algo);
            (h.algo, valid)
        })
        .collect();
    Ok((at_hi, candidates))
}

/// What `Gemm` runs from `chosen`: every shape's buckets, and the algorithm of each bucket
/// whose pick is not the heuristic's first.
fn tuned(work: &[Work], chosen: &[Chosen]) -> Tuned {
    let mut tuned = Tuned::default();
    for w in work {
        tuned.ranges.insert(w.shape, w.ranges.clone());
    }
    for c in chosen {
        if let Some(algo) = c.algo {
            tuned.algos.insert((c.shape, c.range.1), algo);
        }
    }
    tuned
}

/// `shapes` merged by shape (most rows, all weights), sorted, with their buckets; weights that
/// are too small or not 256-byte aligned are left out (and a shape left without any).
fn plan_work(shapes: &[TuneShape<'_>], stream: &Arc<CudaStream>) -> Vec<Work> {
    let mut merged: BTreeMap<GemmShape, (usize, Vec<u64>)> = BTreeMap::new();
    for t in shapes {
        let entry = merged.entry(t.shape).or_default();
        entry.0 = entry.0.max(t.max_rows);
        for w in &t.weights {
            let (ptr, _guard) = w.device_ptr(stream);
            if w.len() < t.shape.n * t.shape.k || gemm_lt::alignment(ptr) != FULL_ALIGN {
                tracing::warn!(shape = ?t.shape, len = w.len(), ptr, "GEMM tuning skips a weight of the wrong size or alignment");
                continue;
            }
            entry.1.push(ptr);
        }
    }
    merged
        .into_iter()
        .filter(|(_, (_, weights))| !weights.is_empty())
        .map(|(shape, (max_rows, weights))| Work {
            shape,
            ranges: bucket_ranges(max_rows),
            weights,
        })
        .filter(|w| !w.ranges.is_empty())
        .collect()
}

/// Which output rows to compare: all of up to [`CHECK_ROWS`], else that many spread evenly
/// over them, the first and the last included.
fn sample_rows(rows: usize) -> Vec<usize> {
    if rows <= CHECK_ROWS {
        return (0..rows).collect();
    }
    (0..CHECK_ROWS)
        .map(|i| i * (rows - 1) / (CHECK_ROWS - 1))
        .collect()
}

/// Whether `got` matches `want` within [`REL_TOL`] of `want`'s largest magnitude plus
/// [`ABS_TOL`], every value finite.
fn agrees(got: &[f32], want: &[f32]) -> bool {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let limit = REL_TOL * scale + ABS_TOL;
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, w)| g.is_finite() && (g - w).abs() <= limit)
}

/// `len` bf16 values in [-1, 1], none of them zero or tiny (|v| >= 1/64), from a fixed seed:
/// timing on zeros would flatter algorithms (less switching power, clocks held up).
fn pattern(len: usize) -> Vec<bf16> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let unit = (z >> 40) as f32 / (1u64 << 24) as f32;
            let magnitude = 1.0 / 64.0 + unit * (1.0 - 1.0 / 64.0);
            let sign = if z & 1 == 0 { 1.0 } else { -1.0 };
            bf16::from_f32(sign * magnitude)
        })
        .collect()
}

/// Fills `x` with [`pattern`] repeated.
fn fill_random(stream: &Arc<CudaStream>, x: &mut CudaSlice<bf16>) -> BackendResult<()> {
    let pattern = pattern(PATTERN_LEN.min(x.len()));
    let mut at = 0;
    while at < x.len() {
        let m = pattern.len().min(x.len() - at);
        stream
            .memcpy_htod(&pattern[..m], &mut x.slice_mut(at..at + m))
            .map_err(cuda_err("GEMM tuning input"))?;
        at += m;
    }
    Ok(())
}

/// Which weights of a layer a linear shape multiplies by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proj {
    Qkv,
    O,
    GateUp,
    Down,
    LmHead,
}

/// The model's GEMMs as `ops.rs` runs them on this rank (`cfg` is the rank's own config:
/// its share of heads and FFN width): each linear shape with the most rows it gets. The
/// layers see up to a step's `t_max` rows; lm_head (f32 logits, on the leader only) up to
/// `s_max`, one row per sequence that needs logits.
fn model_gemms(
    cfg: &LlamaConfig,
    vocab: usize,
    leader: bool,
    t_max: usize,
    s_max: usize,
) -> Vec<(Proj, GemmShape, usize)> {
    let (h, d) = (cfg.hidden, cfg.head_dim);
    let bf16 = |n, k| GemmShape {
        out: OutType::Bf16,
        n,
        k,
    };
    let mut gemms = vec![
        (
            Proj::Qkv,
            bf16((cfg.num_heads + 2 * cfg.num_kv_heads) * d, h),
            t_max,
        ),
        (Proj::O, bf16(h, cfg.num_heads * d), t_max),
        (Proj::GateUp, bf16(2 * cfg.ffn, h), t_max),
        (Proj::Down, bf16(h, cfg.ffn), t_max),
    ];
    if leader {
        let lm_head = GemmShape {
            out: OutType::F32,
            n: vocab,
            k: h,
        };
        gemms.push((Proj::LmHead, lm_head, s_max.min(t_max)));
    }
    gemms
}

/// Tunes the GEMMs of the model `w` holds (this rank's slice; `cfg` its config) for the step
/// limits of `opts`, unless `PAGEDSERVE_GEMM_TUNE=0`, with the kernel cache directory as the
/// tuning cache's. Never fails the load: on an error every GEMM keeps the heuristic's pick.
pub(super) fn tune_at_load(
    gemm: &Gemm,
    w: &Weights,
    cfg: &LlamaConfig,
    vocab: usize,
    leader: bool,
    opts: &LoadOptions,
) {
    if !enabled() {
        tracing::info!(
            "GEMM autotuning off (PAGEDSERVE_GEMM_TUNE=0): every GEMM runs cuBLASLt's \
             heuristic pick"
        );
        return;
    }
    // The step limits `load.rs`'s `build` sizes the buffers for.
    let (t_max, s_max) = super::load::step_limits(opts);
    let layer = |pick: fn(&LayerWeights) -> &CudaSlice<bf16>| w.layers.iter().map(pick).collect();
    let shapes: Vec<TuneShape<'_>> = model_gemms(cfg, vocab, leader, t_max, s_max)
        .into_iter()
        .map(|(proj, shape, max_rows)| TuneShape {
            shape,
            max_rows,
            weights: match proj {
                Proj::Qkv => layer(|l| &l.qkv),
                Proj::O => layer(|l| &l.o),
                Proj::GateUp => layer(|l| &l.gate_up),
                Proj::Down => layer(|l| &l.down),
                Proj::LmHead => vec![w.lm_head()],
            },
        })
        .collect();
    match gemm.tune(&shapes, opts.gpu.kernel_cache_dir.as_deref()) {
        Ok(r) => tracing::info!(
            secs = r.secs,
            shapes = r.shapes,
            buckets = r.buckets,
            changed = r.changed,
            cached = r.from_cache,
            "GEMM algorithms tuned"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "GEMM autotuning failed: every GEMM runs cuBLASLt's heuristic pick"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_row_count_above_the_gemv_up_to_the_limit() {
        let ranges = bucket_ranges(2048);
        let his: Vec<usize> = ranges.iter().map(|r| r.1).collect();
        assert_eq!(
            his,
            [
                48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 1024, 1536, 2048
            ]
        );
        assert_eq!(ranges[0], (33, 48));
        assert_eq!(ranges[1], (49, 64));
        for rows in 0..=2100 {
            // The smallest bucket of at least `rows`, above the GEMV's rows, up to the limit.
            let want = match rows {
                0..=GEMV_ROWS => None,
                2049.. => None,
                _ => BUCKETS.iter().copied().find(|&b| b >= rows),
            };
            assert_eq!(bucket_for(&ranges, rows), want, "{rows} rows");
        }
    }

    #[test]
    fn the_limit_ends_the_last_bucket() {
        // Between two buckets: the limit is the last one.
        let ranges = bucket_ranges(100);
        assert_eq!(ranges, [(33, 48), (49, 64), (65, 96), (97, 100)]);
        assert_eq!(bucket_for(&ranges, 98), Some(100));
        assert_eq!(bucket_for(&ranges, 101), None);
        // Below the first bucket, but above the GEMV: one bucket.
        assert_eq!(bucket_ranges(40), [(33, 40)]);
        // Nothing above the GEMV: nothing to tune.
        assert!(bucket_ranges(32).is_empty());
        assert!(bucket_ranges(1).is_empty());
        // Beyond the list: the limit after 8192.
        let big = bucket_ranges(16384);
        assert_eq!(big[big.len() - 2..], [(4097, 8192), (8193, 16384)]);
        assert_eq!(bucket_for(&big, 9000), Some(16384));
        // Exactly a bucket: no repeat.
        assert_eq!(bucket_ranges(64), [(33, 48), (49, 64)]);
    }

    #[test]
    fn sampled_rows_span_the_output() {
        assert_eq!(sample_rows(3), [0, 1, 2]);
        assert_eq!(sample_rows(CHECK_ROWS).len(), CHECK_ROWS);
        for rows in [65, 100, 1000, 8192] {
            let s = sample_rows(rows);
            assert_eq!(s.len(), CHECK_ROWS);
            assert_eq!((s[0], s[s.len() - 1]), (0, rows - 1));
            assert!(s.windows(2).all(|p| p[0] < p[1]), "{rows}: {s:?}");
        }
    }

    #[test]
    fn outputs_agree_within_bf16_tolerance_only() {
        let want = [1.0f32, -2.0, 0.5, 4.0];
        assert!(agrees(&want, &want));
        // bf16 rounding of the largest value (4.0 +- 2^-6) passes.
        assert!(agrees(&[1.0, -2.0, 0.5, 4.015625], &want));
        // Off by more than 1e-2 of the largest magnitude (0.04) + 1e-3 fails.
        assert!(!agrees(&[1.0, -2.0, 0.55, 4.0], &want));
        assert!(!agrees(&[1.0, -2.0, f32::NAN, 4.0], &want));
        assert!(!agrees(&[1.0, -2.0, f32::INFINITY, 4.0], &want));
        assert!(!agrees(&[1.0, -2.0, 0.5], &want));
    }

    #[test]
    fn the_tuning_input_has_no_zeros() {
        let p = pattern(100_000);
        assert!(
            p.iter()
                .all(|v| v.is_finite() && v.to_f32().abs() >= 1.0 / 64.0)
        );
        assert!(p.iter().all(|v| v.to_f32().abs() <= 1.0));
        let negative = p.iter().filter(|v| v.to_f32() < 0.0).count();
        assert!((40_000..60_000).contains(&negative), "{negative}");
        assert_eq!(p, pattern(100_000), "deterministic");
    }

    #[test]
    fn shapes_come_from_the_ranks_config() {
        // Llama-3-8B split over 2 ranks: 16 of 32 query heads, 4 of 8 KV heads, half the FFN.
        let cfg = LlamaConfig {
            num_layers: 32,
            hidden: 4096,
            ffn: 7168,
            num_heads: 16,
            num_kv_heads: 4,
            head_dim: 128,
            rope_dim: 128,
            rope_base: 500_000.0,
            rms_eps: 1e-5,
            max_context: 8192,
        };
        let shapes: Vec<(GemmShape, usize)> = model_gemms(&cfg, 128_256, true, 2048, 256)
            .into_iter()
            .map(|(_, s, rows)| (s, rows))
            .collect();
        let bf16 = |n, k| GemmShape {
            out: OutType::Bf16,
            n,
            k,
        };
        let lm_head = GemmShape {
            out: OutType::F32,
            n: 128_256,
            k: 4096,
        };
        assert_eq!(
            shapes,
            [
                (bf16(3072, 4096), 2048),
                (bf16(4096, 2048), 2048),
                (bf16(14336, 4096), 2048),
                (bf16(4096, 7168), 2048),
                (lm_head, 256),
            ]
        );
        // A follower computes no logits; lm_head's rows never exceed a step's.
        assert_eq!(model_gemms(&cfg, 128_256, false, 2048, 256).len(), 4);
        assert_eq!(model_gemms(&cfg, 128_256, true, 64, 64)[4].2, 64);
    }
}
