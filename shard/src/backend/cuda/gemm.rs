//! bf16 GEMMs through cuBLAS: `y[t, n] = sum_k x[t, k] * w[n, k]` for row-major activations and
//! `[out, in]` weights, f32 accumulation. One handle bound to the shard's stream, with a fixed
//! workspace so GEMMs can be captured into CUDA graphs (cuBLAS must not allocate while a graph
//! is being captured).

use std::sync::Arc;

use cudarc::cublas::{CudaBlas, result, sys};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::bf16;

use super::device::cuda_err;
use crate::backend::{BackendError, BackendResult};

/// cuBLAS's recommended workspace for Hopper is 32 MiB.
const WORKSPACE_BYTES: usize = 32 << 20;

pub struct Gemm {
    blas: CudaBlas,
    _workspace: CudaSlice<u8>,
}

/// Output element type of a GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutType {
    Bf16,
    F32,
}

impl Gemm {
    pub fn new(stream: &Arc<CudaStream>) -> BackendResult<Self> {
        let blas = CudaBlas::new(Arc::clone(stream)).map_err(cuda_err("cuBLAS handle"))?;
        let mut workspace = stream
            .alloc_zeros::<u8>(WORKSPACE_BYTES)
            .map_err(cuda_err("cuBLAS workspace"))?;
        {
            let (ptr, _guard) = workspace.device_ptr_mut(stream);
            // SAFETY: the workspace outlives the handle (both owned by `Gemm`, dropped together).
            let status = unsafe {
                sys::cublasSetWorkspace_v2(*blas.handle(), ptr as *mut _, WORKSPACE_BYTES)
            };
            if status != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(BackendError::Cuda(format!(
                    "cublasSetWorkspace: {status:?}"
                )));
            }
        }
        Ok(Self {
            blas,
            _workspace: workspace,
        })
    }

    /// `y[rows, n] = x[rows, k] @ w[n, k]^T`. `x`, `w` bf16; `y` of type `out`, written with
    /// `beta` times its old value added (0 overwrites).
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
        let int = |v: usize| {
            i32::try_from(v).map_err(|_| BackendError::Cuda(format!("GEMM dim {v} too large")))
        };
        let (m_, n_, k_) = (int(n)?, int(rows)?, int(k)?);
        let (xp, _gx) = x.device_ptr(stream);
        let (wp, _gw) = w.device_ptr(stream);
        let (alpha, beta) = (1.0f32, 0.0f32);
        let c_type = match out {
            OutType::Bf16 => sys::cudaDataType::CUDA_R_16BF,
            OutType::F32 => sys::cudaDataType::CUDA_R_32F,
        };
        // Column-major view: y^T [n, rows] = w [k, n]^T (op T) * x^T [k, rows] (op N).
        // SAFETY: pointers come from live device buffers whose sizes the caller checked.
        unsafe {
            result::gemm_ex(
                *self.blas.handle(),
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                m_,
                n_,
                k_,
                (&alpha as *const f32).cast(),
                wp as *const _,
                sys::cudaDataType::CUDA_R_16BF,
                k_,
                xp as *const _,
                sys::cudaDataType::CUDA_R_16BF,
                k_,
                (&beta as *const f32).cast(),
                y as *mut _,
                c_type,
                m_,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(cuda_err("cuBLAS GEMM"))
    }
}
