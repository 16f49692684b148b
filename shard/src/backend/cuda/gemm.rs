//! bf16 GEMMs through cuBLASLt: `y[t, n] = sum_k x[t, k] * w[n, k]` for row-major activations
//! and `[out, in]` weights, f32 accumulation, on the shard's one stream, with a fixed workspace
//! so GEMMs can be captured into CUDA graphs (cuBLASLt never allocates when given one).
//!
//! Each GEMM runs an algorithm chosen once per (output type, n, k, rows, pointer alignment) and
//! kept with its descriptors in a small map, so a call costs a map lookup and one
//! `cublasLtMatmul` on the host. The algorithm is the one [`Gemm::tune`] (`gemm_tune.rs`)
//! measured fastest for the row bucket holding `rows`, where it found one faster than the
//! heuristic's first pick; otherwise the heuristic's first pick for the exact size, which is
//! what `cublasGemmEx` (the engine's GEMM before) would run.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use half::bf16;
use serde::{Deserialize, Serialize};

use super::device::cuda_err;
use super::gemm_lt::{self, Algo, Desc, FULL_ALIGN, Handle, Layouts, Operands, WORKSPACE_BYTES};
use super::gemm_tune::bucket_for;
use crate::backend::{BackendError, BackendResult};

/// Output element type of a GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutType {
    Bf16,
    F32,
}

impl OutType {
    /// Bytes of one output element.
    pub fn bytes(self) -> usize {
        match self {
            OutType::Bf16 => 2,
            OutType::F32 => 4,
        }
    }
}

/// A GEMM apart from its row count: `y[rows, n] = x[rows, k] @ w[n, k]^T` with `y` of `out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GemmShape {
    pub out: OutType,
    pub n: usize,
    pub k: usize,
}

/// Plans kept before the map is emptied and refilled on demand. Decode steps use a handful
/// of row counts, but prefill and mixed steps may use any count up to the step budget, five
/// shapes each; a plan is three small host descriptors, and rebuilding one costs a heuristic
/// query (what `cublasGemmEx` does on every call), so a bound beats an LRU here.
const MAX_PLANS: usize = 4096;

/// What a plan depends on: the shape, the rows, and the alignment of w, x and y (an
/// algorithm listed for 256-byte-aligned buffers may not run on less aligned ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    shape: GemmShape,
    rows: usize,
    align: [u16; 3],
}

/// One GEMM size's descriptors and algorithm.
struct Plan {
    layouts: Layouts,
    algo: Algo,
}

/// The algorithms tuning chose: per shape, its row buckets (`lo..=hi`, ascending) and, for the
/// buckets where a candidate beat the heuristic's first pick, that candidate (keyed by `hi`).
#[derive(Default)]
pub(super) struct Tuned {
    pub ranges: HashMap<GemmShape, Vec<(usize, usize)>>,
    pub algos: HashMap<(GemmShape, usize), Algo>,
}

impl Tuned {
    /// The tuned algorithm for `rows` rows of `shape`: the entry of the smallest bucket of
    /// at least `rows` rows, if tuning changed that bucket's pick.
    fn algo(&self, shape: GemmShape, rows: usize) -> Option<&Algo> {
        let hi = bucket_for(self.ranges.get(&shape)?, rows)?;
        self.algos.get(&(shape, hi))
    }
}

/// The cuBLASLt state one `Gemm` keeps, used under its mutex.
pub(super) struct Inner {
    pub handle: Handle,
    pub desc: Desc,
    plans: HashMap<PlanKey, Plan>,
    tuned: Tuned,
}

impl Inner {
    /// Replaces the tuned algorithms. Plans built before are dropped: they may hold the
    /// heuristic's pick where a tuned one now exists.
    pub fn install(&mut self, tuned: Tuned) {
        self.tuned = tuned;
        self.plans.clear();
    }
}

/// The plan of `key` in `plans`, built on first use (a free function over `Inner`'s fields,
/// so the plan can be borrowed alongside the handle and descriptor).
fn plan_for<'a>(
    plans: &'a mut HashMap<PlanKey, Plan>,
    handle: &Handle,
    desc: &Desc,
    tuned: &Tuned,
    key: PlanKey,
) -> BackendResult<&'a Plan> {
    if plans.len() >= MAX_PLANS && !plans.contains_key(&key) {
        plans.clear();
    }
    match plans.entry(key) {
        Entry::Occupied(e) => Ok(e.into_mut()),
        Entry::Vacant(e) => Ok(e.insert(build_plan(handle, desc, tuned, key)?)),
    }
}

/// Descriptors for `key` and its algorithm: the tuned one where it passes
/// `cublasLtMatmulAlgoCheck` at exactly these rows (and the buffers are fully aligned, as they
/// were when it was timed), else the heuristic's first pick for exactly this size.
fn build_plan(handle: &Handle, desc: &Desc, tuned: &Tuned, key: PlanKey) -> BackendResult<Plan> {
    let layouts = Layouts::new(key.shape, key.rows)?;
    if let Some(algo) = tuned.algo(key.shape, key.rows) {
        if key.align != [FULL_ALIGN; 3] {
            tracing::debug!(
                ?key,
                "GEMM buffers less aligned than tuned for; heuristic pick"
            );
        } else if gemm_lt::check(handle, desc, &layouts, algo) {
            return Ok(Plan {
                layouts,
                algo: *algo,
            });
        } else {
            tracing::debug!(
                ?key,
                "tuned GEMM algorithm fails its check here; heuristic pick"
            );
        }
    }
    let listed = gemm_lt::heuristic(handle, desc, &layouts, key.align, 1)?;
    let first = listed.iter().find(|h| gemm_lt::usable(h)).ok_or_else(|| {
        BackendError::Cuda(format!(
            "cuBLASLt lists no algorithm for a {}x{}x{} GEMM ({:?} out, alignment {:?})",
            key.rows, key.shape.n, key.shape.k, key.shape.out, key.align
        ))
    })?;
    Ok(Plan {
        layouts,
        algo: first.algo,
    })
}

/// The shard's GEMMs: one cuBLASLt handle, workspace and plan map, bound to one stream.
pub struct Gemm {
    inner: Mutex<Inner>,
    stream: Arc<CudaStream>,
    /// `workspace`'s device address, taken once: the allocation never moves while owned here.
    workspace_ptr: u64,
    workspace: CudaSlice<u8>,
}

impl Gemm {
    /// A cuBLASLt handle and workspace for GEMMs on `stream`; no algorithm tuned yet.
    pub fn new(stream: &Arc<CudaStream>) -> BackendResult<Self> {
        stream
            .context()
            .bind_to_thread()
            .map_err(cuda_err("bind context"))?;
        let handle = Handle::new()?;
        let desc = Desc::new()?;
        let workspace = stream
            .alloc_zeros::<u8>(WORKSPACE_BYTES)
            .map_err(cuda_err("cuBLASLt workspace"))?;
        let workspace_ptr = {
            let (ptr, _guard) = workspace.device_ptr(stream);
            ptr
        };
        Ok(Self {
            inner: Mutex::new(Inner {
                handle,
                desc,
                plans: HashMap::new(),
                tuned: Tuned::default(),
            }),
            stream: Arc::clone(stream),
            workspace_ptr,
            workspace,
        })
    }

    /// The state behind the mutex. A panic while it was held can't leave it half-updated
    /// (every update is one map operation or one assignment), so a poisoned lock is taken over.
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The workspace's device address (see [`gemm_lt::matmul`]'s contract).
    pub(super) fn workspace_ptr(&self) -> u64 {
        debug_assert_eq!(self.workspace.len(), WORKSPACE_BYTES);
        self.workspace_ptr
    }

    /// `y[rows, n] = x[rows, k] @ w[n, k]^T`. `x`, `w` bf16; `y` of type `out`, overwritten.
    /// Runs on the stream this `Gemm` was made for (the shard's one stream, which `stream`
    /// must be too: the workspace is shared by every call).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        stream: &CudaStream,
        x: &impl DevicePtr<bf16>,
        w: &impl DevicePtr<bf16>,
        y: u64,
        out: OutType,
        rows: usize,
        n: usize,
        k: usize,
    ) -> BackendResult<()> {
        if rows == 0 {
            return Ok(());
        }
        debug_assert_eq!(stream.cu_stream(), self.stream.cu_stream());
        if x.len() < rows * k || w.len() < n * k {
            return Err(BackendError::Shape {
                op: "matmul",
                detail: format!(
                    "{rows}x{n}x{k} GEMM with x of {} and w of {} elements",
                    x.len(),
                    w.len()
                ),
            });
        }
        let (xp, _gx) = x.device_ptr(stream);
        let (wp, _gw) = w.device_ptr(stream);
        let key = PlanKey {
            shape: GemmShape { out, n, k },
            rows,
            align: [
                gemm_lt::alignment(wp),
                gemm_lt::alignment(xp),
                gemm_lt::alignment(y),
            ],
        };
        // cuBLASLt's calls go through the runtime API, which uses the thread's current
        // context: make it this device's (a no-op when it already is, as in a step).
        self.stream
            .context()
            .bind_to_thread()
            .map_err(cuda_err("bind context"))?;
        let mut guard = self.lock();
        let Inner {
            handle,
            desc,
            plans,
            tuned,
        } = &mut *guard;
        let plan = plan_for(plans, handle, desc, tuned, key)?;
        let ops = Operands {
            w: wp,
            x: xp,
            y,
            workspace: self.workspace_ptr,
        };
        // SAFETY: x and w hold at least what the layouts read (checked above), and y at least
        // `rows * n` elements of `out` (the caller's contract, as with cublasGemmEx before);
        // the alignments the algorithm needs are in the key it was chosen or checked for; the
        // workspace is this Gemm's, used only on its stream, in order, under the lock.
        unsafe {
            gemm_lt::matmul(
                handle,
                desc,
                &plan.layouts,
                &plan.algo,
                ops,
                self.stream.cu_stream(),
            )
        }
    }

    /// How many (shape, row bucket) pairs run a tuned algorithm rather than the heuristic's
    /// first pick.
    pub fn tuned_buckets(&self) -> usize {
        self.lock().tuned.algos.len()
    }
}
