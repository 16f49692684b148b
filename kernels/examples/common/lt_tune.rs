//! cuBLASLt's raw matmul API, to time every algorithm its heuristic lists for one GEMM instead
//! of only the first (all `CudaBlasLT::matmul` can run). Descriptors are built once per shape
//! and kept, so a timed call is one `cublasLtMatmul` and no host-side set-up.

use std::ffi::c_void;
use std::mem;
use std::sync::Arc;

use cudarc::cublaslt::{result, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::bf16;

use crate::common::Res;

/// The workspace every candidate may use: NVIDIA's recommendation for Hopper and what
/// `CudaBlasLT` allocates there, so that (same descriptors, same limit) the heuristic's first
/// pick here is the algorithm `CudaBlasLT::matmul` runs.
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// A cuBLASLt handle and the one workspace all calls share (they run in order on one stream).
pub struct LtTuner {
    handle: Handle,
    workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
}

impl LtTuner {
    pub fn new(stream: Arc<CudaStream>) -> Res<Self> {
        stream.context().bind_to_thread()?;
        let handle = Handle(result::create_handle()?);
        // SAFETY: scratch memory for cuBLASLt, never read before a kernel writes it.
        let workspace = unsafe { stream.alloc::<u8>(WORKSPACE_BYTES) }?;
        Ok(LtTuner {
            handle,
            workspace,
            stream,
        })
    }

    /// `y[rows, n] = x[rows, k] @ w[n, k]^T` in bf16 with f32 accumulation, as column-major
    /// `y^T [n, rows] = op_T(w^T) x^T` (the layouts `CudaBlasLT::matmul` builds from the
    /// prefill table's `MatmulConfig`), and up to `max` algorithms the heuristic lists for it.
    pub fn problem(&self, rows: usize, n: usize, k: usize, max: usize) -> Res<LtProblem<'_>> {
        let ty = sys::cudaDataType_t::CUDA_R_16BF;
        // A = w: stored k x n (ld k), transposed by the op to n x k. B = x: k x rows (ld k).
        // C = D = y: n x rows (ld n).
        let a = Layout::new(ty, k, n, k)?;
        let b = Layout::new(ty, k, rows, k)?;
        let c = Layout::new(ty, n, rows, n)?;
        let desc = Desc(result::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )?);
        // cublasOperation_t values, as i32 (the attribute's type): 1 = T, 0 = N.
        use sys::cublasLtMatmulDescAttributes_t::{
            CUBLASLT_MATMUL_DESC_TRANSA, CUBLASLT_MATMUL_DESC_TRANSB,
        };
        desc.set(CUBLASLT_MATMUL_DESC_TRANSA, 1)?;
        desc.set(CUBLASLT_MATMUL_DESC_TRANSB, 0)?;
        let mut p = LtProblem {
            tuner: self,
            rows,
            n,
            k,
            desc,
            a,
            b,
            c,
            listed: Vec::new(),
        };
        p.listed = p.heuristic(max)?;
        Ok(p)
    }
}

/// One GEMM's descriptors and the algorithms the heuristic listed for it, best guess first.
pub struct LtProblem<'a> {
    tuner: &'a LtTuner,
    rows: usize,
    n: usize,
    k: usize,
    desc: Desc,
    a: Layout,
    b: Layout,
    c: Layout,
    listed: Vec<sys::cublasLtMatmulHeuristicResult_t>,
}

impl LtProblem<'_> {
    /// How many algorithms the heuristic listed (usable or not).
    pub fn listed(&self) -> usize {
        self.listed.len()
    }

    /// Whether the heuristic's entry `i` can run: its state is a success and its workspace fits.
    pub fn usable(&self, i: usize) -> bool {
        self.listed.get(i).is_some_and(|h| {
            h.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                && h.workspaceSize <= WORKSPACE_BYTES
        })
    }

    /// Runs the heuristic's algorithm `i` on the tuner's stream: `y = x @ w^T`.
    pub fn run<W, X, Y>(&self, i: usize, w: &W, x: &X, y: &mut Y) -> Res<()>
    where
        W: DevicePtr<bf16>,
        X: DevicePtr<bf16>,
        Y: DevicePtrMut<bf16>,
    {
        if !self.usable(i) {
            return Err(
                format!("cuBLASLt candidate {i} of {} is not usable", self.listed()).into(),
            );
        }
        // What makes the call below in bounds: the layouts read and write exactly this much.
        if w.len() < self.n * self.k || x.len() < self.rows * self.k || y.len() < self.rows * self.n
        {
            return Err(format!(
                "buffers too small for {}x{}x{}: w {}, x {}, y {}",
                self.rows,
                self.n,
                self.k,
                w.len(),
                x.len(),
                y.len()
            )
            .into());
        }
        let t = self.tuner;
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (wp, _rw) = w.device_ptr(&t.stream);
        let (xp, _rx) = x.device_ptr(&t.stream);
        let (yp, _ry) = y.device_ptr_mut(&t.stream);
        // A read pointer is enough to order the workspace: every call is on this one stream.
        let (ws, _rws) = t.workspace.device_ptr(&t.stream);
        // SAFETY: the descriptors and handle are alive (owned by self and the tuner); the
        // buffers hold at least what the layouts address (checked above); the algorithm came
        // from the heuristic for these very descriptors, and its workspace fits (usable); alpha
        // and beta are f32 as the scale type says and outlive the call, which only enqueues.
        unsafe {
            result::matmul(
                t.handle.0,
                self.desc.0,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                wp as *const c_void,
                self.a.0,
                xp as *const c_void,
                self.b.0,
                yp as *const c_void,
                self.c.0,
                yp as *mut c_void,
                self.c.0,
                &self.listed[i].algo,
                ws as *mut c_void,
                WORKSPACE_BYTES,
                t.stream.cu_stream() as sys::cudaStream_t,
            )
        }?;
        Ok(())
    }

    /// Up to `max` algorithms for these descriptors with a WORKSPACE_BYTES workspace, in the
    /// heuristic's order; none (not an error) when it finds nothing for this shape.
    fn heuristic(&self, max: usize) -> Res<Vec<sys::cublasLtMatmulHeuristicResult_t>> {
        let pref = Pref(result::create_matmul_pref()?);
        let bytes = WORKSPACE_BYTES as u64;
        // SAFETY: pref is alive; the attribute is a uint64_t and `bytes` one, read during the
        // call only.
        unsafe {
            result::set_matmul_pref_attribute(
                pref.0,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&bytes as *const u64).cast(),
                mem::size_of::<u64>(),
            )
        }?;
        let blank = sys::cublasLtMatmulHeuristicResult_t {
            algo: sys::cublasLtMatmulAlgo_t { data: [0; 8] },
            workspaceSize: 0,
            state: sys::cublasStatus_t::CUBLAS_STATUS_NOT_INITIALIZED,
            wavesCount: 0.0,
            reserved: [0; 4],
        };
        let mut out = vec![blank; max];
        let mut count: std::ffi::c_int = 0;
        // SAFETY: handle, descriptors and pref are alive; `out` has room for the `max` results
        // asked for and `count` is written before the call returns.
        let status = unsafe {
            sys::cublasLtMatmulAlgoGetHeuristic(
                self.tuner.handle.0,
                self.desc.0,
                self.a.0,
                self.b.0,
                self.c.0,
                self.c.0,
                pref.0,
                max.try_into()?,
                out.as_mut_ptr(),
                &mut count,
            )
        };
        if status == sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED {
            return Ok(Vec::new());
        }
        status.result()?;
        out.truncate(count.clamp(0, max.try_into()?) as usize);
        Ok(out)
    }
}

/// Owns a cuBLASLt handle; destroys it on drop.
struct Handle(sys::cublasLtHandle_t);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by create_handle, destroyed only here. A failure at teardown has
        // nothing left to clean up, so it is ignored.
        let _ = unsafe { result::destroy_handle(self.0) };
    }
}

/// Owns a matrix layout descriptor; destroys it on drop.
struct Layout(sys::cublasLtMatrixLayout_t);

impl Layout {
    /// Column-major `rows x cols` with leading dimension `ld`.
    fn new(ty: sys::cudaDataType, rows: usize, cols: usize, ld: usize) -> Res<Self> {
        Ok(Layout(result::create_matrix_layout(
            ty,
            rows as u64,
            cols as u64,
            ld as i64,
        )?))
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by create_matrix_layout, destroyed only here; failure ignored as in
        // Handle.
        let _ = unsafe { result::destroy_matrix_layout(self.0) };
    }
}

/// Owns a matmul descriptor; destroys it on drop.
struct Desc(sys::cublasLtMatmulDesc_t);

impl Desc {
    /// Sets an int32 attribute (TRANSA, TRANSB).
    fn set(&self, attr: sys::cublasLtMatmulDescAttributes_t, value: i32) -> Res<()> {
        // SAFETY: the descriptor is alive; `value` is the attribute's int32, read during the
        // call only.
        unsafe {
            result::set_matmul_desc_attribute(
                self.0,
                attr,
                (&value as *const i32).cast(),
                mem::size_of::<i32>(),
            )
        }?;
        Ok(())
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_desc, destroyed only here; failure ignored as in
        // Handle.
        let _ = unsafe { result::destroy_matmul_desc(self.0) };
    }
}

/// Owns a matmul preference descriptor; destroys it on drop.
struct Pref(sys::cublasLtMatmulPreference_t);

impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_pref, destroyed only here; failure ignored as in
        // Handle.
        let _ = unsafe { result::destroy_matmul_pref(self.0) };
    }
}
