//! Owners of cuBLASLt's raw objects (handle, matmul descriptor, matrix layouts, preferences)
//! and the few calls [`super::gemm::Gemm`] and its tuner make with them: the heuristic's list,
//! `cublasLtMatmulAlgoCheck`, and `cublasLtMatmul` itself. cudarc's `CudaBlasLT::matmul` can't
//! be used: it builds every descriptor and asks the heuristic again on each call, and only
//! ever runs the heuristic's first pick.

use std::ffi::{c_int, c_void};
use std::mem;

use cudarc::cublaslt::{result, sys};
use cudarc::driver::sys::CUstream;

use super::gemm::{GemmShape, OutType};
use crate::backend::{BackendError, BackendResult};

/// The workspace every algorithm may use: NVIDIA's recommendation for Hopper (what the cuBLAS
/// handle had before). Fixed, so that GEMMs can be captured into CUDA graphs (cuBLASLt never
/// allocates when it is given its workspace).
pub(super) const WORKSPACE_BYTES: usize = 32 << 20;

/// Pointer alignment cuBLASLt's heuristic assumes unless told otherwise, and the most any
/// algorithm asks for: a GEMM whose buffers all have it may run any listed algorithm.
pub(super) const FULL_ALIGN: u16 = 256;

pub(super) type Algo = sys::cublasLtMatmulAlgo_t;
pub(super) type Heuristic = sys::cublasLtMatmulHeuristicResult_t;

fn lt_err(what: &'static str) -> impl Fn(result::CublasError) -> BackendError {
    move |e| BackendError::Cuda(format!("cuBLASLt {what}: {e}"))
}

/// The alignment in bytes of a device address, as cuBLASLt's preferences count it: the
/// largest power of two dividing it, at most [`FULL_ALIGN`].
pub(super) fn alignment(ptr: u64) -> u16 {
    if ptr == 0 {
        return FULL_ALIGN;
    }
    1u64.checked_shl(ptr.trailing_zeros())
        .map_or(FULL_ALIGN, |a| a.min(FULL_ALIGN as u64) as u16)
}

/// cuBLASLt's version (`cublasLtGetVersion`, e.g. 130100), part of the tuning cache's key.
pub(super) fn version() -> usize {
    // SAFETY: takes no arguments and only reads the loaded library's version.
    unsafe { sys::cublasLtGetVersion() }
}

/// Owns a cuBLASLt handle; destroys it on drop.
pub(super) struct Handle(sys::cublasLtHandle_t);

// SAFETY: a cuBLASLt handle is host state that may be used from any thread; the one `Gemm`
// that owns it keeps it behind a mutex, so it is never used from two threads at once.
unsafe impl Send for Handle {}

impl Handle {
    /// Needs the device's context current on this thread.
    pub fn new() -> BackendResult<Self> {
        Ok(Self(
            result::create_handle().map_err(lt_err("create handle"))?,
        ))
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: created by create_handle, destroyed only here. A failure at teardown leaves
        // nothing to clean up, so it is ignored.
        let _ = unsafe { result::destroy_handle(self.0) };
    }
}

/// Owns a matrix layout descriptor; destroys it on drop.
pub(super) struct Layout(sys::cublasLtMatrixLayout_t);

// SAFETY: a layout is a plain host-side description, used under the owning `Gemm`'s mutex.
unsafe impl Send for Layout {}

impl Layout {
    /// Column-major `rows x cols` of `ty` with leading dimension `ld`.
    fn new(ty: sys::cudaDataType, rows: usize, cols: usize, ld: usize) -> BackendResult<Self> {
        let dim = |v: usize| {
            u64::try_from(v).map_err(|_| BackendError::Cuda(format!("GEMM dim {v} too large")))
        };
        let ld = i64::try_from(ld)
            .map_err(|_| BackendError::Cuda(format!("GEMM leading dim {ld} too large")))?;
        let layout = result::create_matrix_layout(ty, dim(rows)?, dim(cols)?, ld)
            .map_err(lt_err("create layout"))?;
        Ok(Self(layout))
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by create_matrix_layout, destroyed only here; failure ignored as in
        // Handle.
        let _ = unsafe { result::destroy_matrix_layout(self.0) };
    }
}

/// The three layouts of one GEMM `y[rows, n] = x[rows, k] @ w[n, k]^T`, seen column-major as
/// `y^T [n, rows] = op_T(w^T) [n, k] * x^T [k, rows]`: A = w, stored `k x n` (ld k) and
/// transposed by the op; B = x, `k x rows` (ld k); C = D = y, `n x rows` (ld n) of the output
/// type. The same operands `cublasGemmEx(OP_T, OP_N, n, rows, k, ...)` had.
pub(super) struct Layouts {
    a: Layout,
    b: Layout,
    c: Layout,
}

impl Layouts {
    pub fn new(shape: GemmShape, rows: usize) -> BackendResult<Self> {
        let bf16 = sys::cudaDataType::CUDA_R_16BF;
        let out = match shape.out {
            OutType::Bf16 => sys::cudaDataType::CUDA_R_16BF,
            OutType::F32 => sys::cudaDataType::CUDA_R_32F,
        };
        Ok(Self {
            a: Layout::new(bf16, shape.k, shape.n, shape.k)?,
            b: Layout::new(bf16, shape.k, rows, shape.k)?,
            c: Layout::new(out, shape.n, rows, shape.n)?,
        })
    }
}

/// Owns a matmul descriptor; destroys it on drop.
pub(super) struct Desc(sys::cublasLtMatmulDesc_t);

// SAFETY: as for Layout.
unsafe impl Send for Desc {}

impl Desc {
    /// f32 compute and scale (alpha, beta), A transposed, B not: every GEMM of the shard, of
    /// either output type (the output type is in C's layout).
    pub fn new() -> BackendResult<Self> {
        let desc = Self(
            result::create_matmul_desc(
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType::CUDA_R_32F,
            )
            .map_err(lt_err("create matmul descriptor"))?,
        );
        use sys::cublasLtMatmulDescAttributes_t::{
            CUBLASLT_MATMUL_DESC_TRANSA, CUBLASLT_MATMUL_DESC_TRANSB,
        };
        // cublasOperation_t values (cudarc's cuBLASLt bindings don't define the enum).
        const OP_N: i32 = 0;
        const OP_T: i32 = 1;
        desc.set(CUBLASLT_MATMUL_DESC_TRANSA, OP_T)?;
        desc.set(CUBLASLT_MATMUL_DESC_TRANSB, OP_N)?;
        Ok(desc)
    }

    /// Sets an int32 attribute (TRANSA and TRANSB are `cublasOperation_t`, an int32).
    fn set(&self, attr: sys::cublasLtMatmulDescAttributes_t, value: i32) -> BackendResult<()> {
        // SAFETY: the descriptor is alive; `value` is the attribute's int32, read during the
        // call only.
        unsafe {
            result::set_matmul_desc_attribute(
                self.0,
                attr,
                (&value as *const i32).cast(),
                mem::size_of::<i32>(),
            )
        }
        .map_err(lt_err("set matmul attribute"))
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

impl Pref {
    /// At most [`WORKSPACE_BYTES`] of workspace, and buffers of at least `align` bytes'
    /// alignment (w, x, y: A, B, C = D), so every algorithm listed can run on them.
    fn new(align: [u16; 3]) -> BackendResult<Self> {
        use sys::cublasLtMatmulPreferenceAttributes_t::{
            CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
            CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
        };
        let pref = Self(result::create_matmul_pref().map_err(lt_err("create preference"))?);
        pref.set(
            CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            WORKSPACE_BYTES as u64,
        )
        .map_err(lt_err("set workspace preference"))?;
        let [a, b, c] = align.map(u32::from);
        for (attr, value) in [
            (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, a),
            (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, b),
            (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, c),
            (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, c),
        ] {
            pref.set(attr, value)
                .map_err(lt_err("set alignment preference"))?;
        }
        Ok(pref)
    }

    /// Sets one attribute. `T` must be the attribute's C type (uint64_t for the workspace,
    /// uint32_t for the alignments), which every caller passes by value.
    fn set<T: Copy>(
        &self,
        attr: sys::cublasLtMatmulPreferenceAttributes_t,
        value: T,
    ) -> Result<(), result::CublasError> {
        // SAFETY: the preference is alive; `value` is the attribute's type (above) and lives
        // through the call, which only reads it.
        unsafe {
            result::set_matmul_pref_attribute(
                self.0,
                attr,
                (&value as *const T).cast(),
                mem::size_of::<T>(),
            )
        }
    }
}

impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_pref, destroyed only here; failure ignored as in
        // Handle.
        let _ = unsafe { result::destroy_matmul_pref(self.0) };
    }
}

/// Whether a heuristic entry can run: its state is a success and its workspace fits.
pub(super) fn usable(h: &Heuristic) -> bool {
    h.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && h.workspaceSize <= WORKSPACE_BYTES
}

/// A heuristic result for cuBLASLt to fill in (the heuristic's output slots, the check's
/// result): `algo`, no workspace, not initialized.
fn unfilled(algo: Algo) -> Heuristic {
    Heuristic {
        algo,
        workspaceSize: 0,
        state: sys::cublasStatus_t::CUBLAS_STATUS_NOT_INITIALIZED,
        wavesCount: 0.0,
        reserved: [0; 4],
    }
}

/// Up to `max` algorithms for `layouts` on buffers of `align`, in the heuristic's order (best
/// guess first); empty, not an error, when it has none for this shape. Host-only: no work on
/// the device, so it may run while a CUDA graph is being captured.
pub(super) fn heuristic(
    handle: &Handle,
    desc: &Desc,
    layouts: &Layouts,
    align: [u16; 3],
    max: usize,
) -> BackendResult<Vec<Heuristic>> {
    let pref = Pref::new(align)?;
    let blank = unfilled(Algo { data: [0; 8] });
    let requested = c_int::try_from(max)
        .map_err(|_| BackendError::Cuda(format!("{max} heuristic results asked")))?;
    let mut out = vec![blank; max];
    let mut count: c_int = 0;
    // SAFETY: handle, descriptors and pref are alive; `out` has room for the `requested`
    // results and `count` is written before the call returns.
    let status = unsafe {
        sys::cublasLtMatmulAlgoGetHeuristic(
            handle.0,
            desc.0,
            layouts.a.0,
            layouts.b.0,
            layouts.c.0,
            layouts.c.0,
            pref.0,
            requested,
            out.as_mut_ptr(),
            &mut count,
        )
    };
    if status == sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED {
        return Ok(Vec::new());
    }
    status.result().map_err(lt_err("heuristic"))?;
    out.truncate(usize::try_from(count).unwrap_or(0).min(max));
    Ok(out)
}

/// Whether `algo` can run the GEMM `layouts` describe (`cublasLtMatmulAlgoCheck`) within
/// [`WORKSPACE_BYTES`]. An algorithm listed for one row count is not necessarily valid for
/// another (split-K and tile choices depend on the sizes), so every row count it is used for
/// is checked. Host-only, like [`heuristic`].
pub(super) fn check(handle: &Handle, desc: &Desc, layouts: &Layouts, algo: &Algo) -> bool {
    let mut result = unfilled(*algo);
    // SAFETY: handle and descriptors are alive; `algo` and `result` are valid for the call,
    // which writes only `result`.
    let status = unsafe {
        sys::cublasLtMatmulAlgoCheck(
            handle.0,
            desc.0,
            layouts.a.0,
            layouts.b.0,
            layouts.c.0,
            layouts.c.0,
            algo,
            &mut result,
        )
    };
    status == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && result.workspaceSize <= WORKSPACE_BYTES
}

/// Device addresses of one GEMM's operands and the workspace.
#[derive(Clone, Copy)]
pub(super) struct Operands {
    pub w: u64,
    pub x: u64,
    pub y: u64,
    pub workspace: u64,
}

/// Enqueues `y = x @ w^T` (beta 0: `y` is overwritten) with `algo` on `stream`.
///
/// # Safety
/// The operands must point to live device memory holding at least what `layouts` address
/// (w `n * k`, x `rows * k` bf16, y `rows * n` of the output type), with the alignment the
/// algorithm was chosen or checked for, and `workspace` to [`WORKSPACE_BYTES`] that no other
/// stream uses; `algo` must have passed [`check`] for these layouts (or come from
/// [`heuristic`] for them).
pub(super) unsafe fn matmul(
    handle: &Handle,
    desc: &Desc,
    layouts: &Layouts,
    algo: &Algo,
    ops: Operands,
    stream: CUstream,
) -> BackendResult<()> {
    let (alpha, beta) = (1.0f32, 0.0f32);
    // SAFETY: the caller vouches for the operands and the algorithm; handle and descriptors
    // are alive; alpha and beta are f32 as the scale type says and are only read during the
    // call, which enqueues the work and returns.
    unsafe {
        result::matmul(
            handle.0,
            desc.0,
            (&alpha as *const f32).cast(),
            (&beta as *const f32).cast(),
            ops.w as *const c_void,
            layouts.a.0,
            ops.x as *const c_void,
            layouts.b.0,
            ops.y as *const c_void,
            layouts.c.0,
            ops.y as *mut c_void,
            layouts.c.0,
            algo,
            ops.workspace as *mut c_void,
            WORKSPACE_BYTES,
            stream as sys::cudaStream_t,
        )
    }
    .map_err(lt_err("matmul"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_is_the_largest_power_of_two_up_to_256() {
        assert_eq!(alignment(0x7f00_0000_0000), 256);
        assert_eq!(alignment(0x7f00_0000_0100), 256);
        assert_eq!(alignment(0x7f00_0000_0080), 128);
        assert_eq!(alignment(0x7f00_0000_0002), 2);
        assert_eq!(alignment(0x7f00_0000_0001), 1);
        assert_eq!(alignment(0), 256);
    }
}
