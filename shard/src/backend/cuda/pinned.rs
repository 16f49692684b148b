//! [`Pinned`]: a page-locked host buffer with the event of its last copy, the one way the CUDA
//! backend moves words between host and device without the host waiting: the step metadata,
//! sampling parameters and fed rows go up (`staging.rs`), the draws of launched steps come
//! down (`launches.rs`).

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, PinnedHostSlice};

use super::device::cuda_err;
use crate::backend::{BackendError, BackendResult};

/// A page-locked buffer and the event recorded after the last copy into or out of it: the
/// next write waits for that copy only (the DMA reads the buffer after `upload` has returned),
/// and a read of downloaded words for the copy that brings them. One event per buffer: with
/// overlapped steps, step n+1 is staged while step n runs, and a write that waited for a later
/// copy of another buffer would wait for step n to finish.
pub(super) struct Pinned {
    words: PinnedHostSlice<u32>,
    copied: CudaEvent,
    what: &'static str,
}

impl Pinned {
    /// `len` zeroed words. Cached, not write-combined: a tensor-parallel leader reads the
    /// metadata back.
    pub(super) fn zeroed(
        ctx: &Arc<CudaContext>,
        len: usize,
        what: &'static str,
    ) -> BackendResult<Self> {
        let alloc = |e| BackendError::Alloc(format!("page-locked {what}: {e}"));
        // SAFETY: zeroed before any read.
        let mut words =
            unsafe { ctx.alloc_pinned_with_flags::<u32>(len.max(1), 0) }.map_err(alloc)?;
        words.as_mut_slice().map_err(alloc)?.fill(0);
        let copied = ctx.new_event(None).map_err(cuda_err("create an event"))?;
        Ok(Self {
            words,
            copied,
            what,
        })
    }

    /// The buffer, once the last copy into or out of it is done.
    pub(super) fn write(&mut self) -> BackendResult<&mut [u32]> {
        self.copied
            .synchronize()
            .map_err(cuda_err("wait for the last copy of page-locked words"))?;
        self.words
            .as_mut_slice()
            .map_err(cuda_err("page-locked words"))
    }

    pub(super) fn read(&self, len: usize) -> BackendResult<&[u32]> {
        let all = self
            .words
            .as_slice()
            .map_err(cuda_err("page-locked words"))?;
        all.get(..len).ok_or_else(|| BackendError::Shape {
            op: self.what,
            detail: format!("{len} words > the page-locked buffer's {}", all.len()),
        })
    }

    /// Queues the copy of the first `len` words into `dst` on `stream`; returns at once.
    pub(super) fn upload(
        &mut self,
        stream: &Arc<CudaStream>,
        len: usize,
        dst: &mut CudaSlice<u32>,
    ) -> BackendResult<()> {
        let what = self.what;
        let src = self.read(len)?;
        let mut dst = dst
            .try_slice_mut(..len)
            .ok_or_else(|| BackendError::Shape {
                op: what,
                detail: format!("{len} words > the device buffer's"),
            })?;
        // A plain slice to cudarc (it would copy the whole `PinnedHostSlice`); the driver
        // knows the memory is page-locked and queues a DMA.
        stream
            .memcpy_htod(src, &mut dst)
            .map_err(cuda_err("upload page-locked words"))?;
        self.copied
            .record(stream)
            .map_err(cuda_err("record a page-locked copy"))
    }

    /// Queues the copy of the first `len` words of `src` into the buffer on `stream`, after
    /// what the stream already holds; returns at once ([`Self::downloaded`] reads them).
    pub(super) fn download(
        &mut self,
        stream: &Arc<CudaStream>,
        src: &CudaSlice<u32>,
        len: usize,
    ) -> BackendResult<()> {
        let what = self.what;
        let host = self
            .words
            .as_mut_slice()
            .map_err(cuda_err("page-locked words"))?;
        let (Some(dst), Some(src)) = (host.get_mut(..len), src.try_slice(..len)) else {
            return Err(BackendError::Shape {
                op: what,
                detail: format!("{len} words > the page-locked or the device buffer's"),
            });
        };
        if len > 0 {
            // A plain slice, as in `upload`: the driver queues a DMA.
            stream
                .memcpy_dtoh(&src, dst)
                .map_err(cuda_err("download page-locked words"))?;
        }
        self.copied
            .record(stream)
            .map_err(cuda_err("record a page-locked copy"))
    }

    /// The first `len` words, once the last copy into the buffer is done.
    pub(super) fn downloaded(&self, len: usize) -> BackendResult<&[u32]> {
        self.copied
            .synchronize()
            .map_err(cuda_err("wait for a copy into page-locked words"))?;
        self.read(len)
    }
}

impl Drop for Pinned {
    /// The buffer is freed only after the last DMA to or from it.
    fn drop(&mut self) {
        let _ = self.copied.synchronize();
    }
}
