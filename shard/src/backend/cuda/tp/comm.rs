//! NCCL through cudarc (libnccl.so.2 loaded at run time, only when a group has more than one
//! rank): the unique id, joining the communicator, and the in-place sum all-reduce the
//! row-parallel layers need. Every call is enqueued on the shard's one stream, so it orders
//! with the kernels around it and can be captured into a CUDA graph.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaViewMut};
use cudarc::nccl::{Comm, Id, NcclType, ReduceOp};

use super::wire::NCCL_ID_BYTES;
use crate::backend::{BackendError, BackendResult};

fn nccl_err(what: &'static str) -> impl Fn(cudarc::nccl::result::NcclError) -> BackendError {
    move |e| BackendError::Cuda(format!("NCCL {what}: {:?}", e.0))
}

/// Fails clearly when libnccl cannot be opened (cudarc would panic on first use).
pub fn check_nccl() -> BackendResult<()> {
    // SAFETY: only tries to open the library.
    let present = std::panic::catch_unwind(|| unsafe { cudarc::nccl::sys::is_culib_present() })
        .unwrap_or(false);
    match present {
        true => Ok(()),
        false => Err(BackendError::Cuda(
            "tensor parallelism needs NCCL, opened as libnccl.so, which was not found: install \
             it (Debian's libnccl2, or PyTorch's nvidia-nccl wheel, which `pagedserve` finds and \
             links as libnccl.so by itself), or put a directory holding libnccl.so on \
             LD_LIBRARY_PATH (cudarc does not look for libnccl.so.2; a link libnccl.so -> \
             libnccl.so.2 will do)"
                .into(),
        )),
    }
}

/// A new NCCL unique id (rank 0 makes it and sends it to the others).
pub fn unique_id() -> BackendResult<[u8; NCCL_ID_BYTES]> {
    check_nccl()?;
    let id = Id::new().map_err(nccl_err("unique id"))?;
    Ok(id.internal().map(|c| c as u8))
}

/// This rank's NCCL communicator.
pub struct Nccl {
    comm: Comm,
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it are not
// concurrent; it is owned by one model, which one thread drives at a time (`Send`, not
// `Sync`).
unsafe impl Send for Nccl {}

impl Nccl {
    /// Joins the group of `size` ranks; blocks until every rank has called this.
    pub fn join(
        stream: &Arc<CudaStream>,
        rank: usize,
        size: usize,
        id: &[u8; NCCL_ID_BYTES],
    ) -> BackendResult<Self> {
        check_nccl()?;
        // ncclCommInitRank picks the device from the calling thread's current context.
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| BackendError::Cuda(format!("bind context: {e}")))?;
        let id = Id::uninit(id.map(|b| b as std::ffi::c_char));
        let comm = Comm::from_rank(stream.clone(), rank, size, id).map_err(nccl_err("init"))?;
        Ok(Self { comm })
    }

    /// `buf = sum over ranks of buf`, enqueued on the stream.
    pub fn all_reduce_sum<T: NcclType>(&self, buf: &mut CudaViewMut<'_, T>) -> BackendResult<()> {
        self.comm
            .all_reduce_in_place(buf, &ReduceOp::Sum)
            .map(|_| ())
            .map_err(nccl_err("all-reduce"))
    }

    /// The smallest `n` of every rank (e.g. KV blocks, so all ranks allocate the same count).
    pub fn min(&self, n: usize) -> BackendResult<usize> {
        let stream = self.comm.stream();
        let mut buf = stream
            .clone_htod(&[n as u64])
            .map_err(|e| BackendError::Cuda(format!("upload: {e}")))?;
        self.comm
            .all_reduce_in_place(&mut buf, &ReduceOp::Min)
            .map_err(nccl_err("all-reduce min"))?;
        let host = stream
            .clone_dtoh(&buf)
            .map_err(|e| BackendError::Cuda(format!("download: {e}")))?;
        Ok(host.first().map_or(n, |&v| v as usize))
    }

    /// Whether every rank holds the same `n` (e.g. the KV cache's element size): the smallest
    /// `n` and the smallest `!n` of every rank, so that each rank, not just the ones above the
    /// minimum, learns of a difference. Every rank runs both all-reduces (no short circuit:
    /// a rank skipping one would leave the others waiting in it).
    pub fn agree(&self, n: usize) -> BackendResult<bool> {
        let low = self.min(n)?;
        let high = !self.min(!n)?;
        Ok(low == n && high == n)
    }
}
