//! The host side of the step metadata: one page-locked buffer the model keeps for its life,
//! staged into in place ([`stage_into`]) and copied to the device without the host waiting.
//!
//! Why: each step used to lay its metadata out in a fresh zeroed `Vec` and copy it from
//! pageable memory, which the driver first copies again into its own page-locked buffer and
//! which the host waits for. The prefix is mostly block tables (`bt_stride` words a sequence:
//! 512 for an 8k context), so a decode step of 384 sequences moved ~0.9 MB that way, and its
//! staging took a median 311 us of host time (84 us for the mixed steps) in which the GPU had
//! nothing to run: 1.2% of a 1,000-prompt ShareGPT run (H100, 2026-11-27, docs/perf.md).
//! From page-locked memory the copy is a DMA queued on the stream ahead of the step's kernels,
//! and only the words a step changes are written.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, PinnedHostSlice};

use super::device::cuda_err;
use super::ops::{SAMPLING_WORDS, pack_sampling_into};
use super::plan::{MetaLayout, StageError, StagedMarks, StagedStep, stage_into};
use crate::backend::{BackendError, BackendResult, StepPlan};
use crate::model::DeviceSampling;

pub struct HostStaging {
    words: PinnedHostSlice<u32>,
    marks: StagedMarks,
    /// The per-sequence sampling parameters (`SAMPLING_WORDS * s_max` words), and how many
    /// sequences' the last step packed.
    sampling: PinnedHostSlice<u32>,
    s_max: usize,
    /// Overlapped steps' `(row, draw)` pairs (`2 * s_max` words).
    feeds: PinnedHostSlice<u32>,
    sampled: usize,
    /// Recorded on the stream after each copy out of `words`: the next write waits for it, as
    /// the DMA reads the buffer after `upload` has returned.
    copied: CudaEvent,
}

impl HostStaging {
    /// Zeroed page-locked buffers of `layout.len()` words (2.2 MB for an 8k context and 1,024
    /// sequences) and of the sampling parameters. Cached, not write-combined: a
    /// tensor-parallel leader reads the metadata back.
    pub fn new(ctx: &Arc<CudaContext>, layout: &MetaLayout) -> BackendResult<Self> {
        let zeroed = |len: usize| {
            let alloc = |e| BackendError::Alloc(format!("page-locked step metadata: {e}"));
            // SAFETY: zeroed before any read.
            let mut words =
                unsafe { ctx.alloc_pinned_with_flags::<u32>(len.max(1), 0) }.map_err(alloc)?;
            words.as_mut_slice().map_err(alloc)?.fill(0);
            Ok::<_, BackendError>(words)
        };
        let copied = ctx.new_event(None).map_err(cuda_err("create an event"))?;
        Ok(Self {
            words: zeroed(layout.len())?,
            marks: StagedMarks::default(),
            sampling: zeroed(SAMPLING_WORDS * layout.s_max)?,
            feeds: zeroed(2 * layout.s_max)?,
            s_max: layout.s_max,
            sampled: 0,
            copied,
        })
    }

    /// Lays `plan` out in the buffer (see [`stage_into`]), once the last copy out of it is done.
    pub fn stage(
        &mut self,
        plan: &StepPlan,
        layout: &MetaLayout,
        pad_rows: Option<usize>,
        tiles: impl Fn(&[[i32; 3]]) -> (usize, Vec<[i32; 2]>),
    ) -> BackendResult<Result<StagedStep, StageError>> {
        self.copied
            .synchronize()
            .map_err(cuda_err("wait for the last metadata copy"))?;
        let host = self
            .words
            .as_mut_slice()
            .map_err(cuda_err("page-locked step metadata"))?;
        Ok(stage_into(
            plan,
            layout,
            pad_rows,
            tiles,
            host,
            &mut self.marks,
        ))
    }

    /// The first `len` words as staged (what a tensor-parallel leader sends its followers).
    pub fn words(&self, len: usize) -> BackendResult<&[u32]> {
        let all = self
            .words
            .as_slice()
            .map_err(cuda_err("page-locked step metadata"))?;
        all.get(..len).ok_or_else(|| BackendError::Shape {
            op: "step metadata",
            detail: format!("{len} words > the staging buffer's {}", all.len()),
        })
    }

    /// Queues the copy of the first `len` words into `dst` on `stream`; returns at once.
    pub fn upload(
        &mut self,
        stream: &Arc<CudaStream>,
        len: usize,
        dst: &mut CudaSlice<u32>,
    ) -> BackendResult<()> {
        let src = self.words(len)?;
        let mut dst = dst
            .try_slice_mut(..len)
            .ok_or_else(|| BackendError::Shape {
                op: "step metadata",
                detail: format!("{len} words > the device buffer's"),
            })?;
        // A plain slice to cudarc (it would copy the whole `PinnedHostSlice`); the driver
        // knows the memory is page-locked and queues a DMA. `copied` keeps the next write
        // after it.
        stream
            .memcpy_htod(src, &mut dst)
            .map_err(cuda_err("upload step metadata"))?;
        self.copied
            .record(stream)
            .map_err(cuda_err("record the metadata copy"))
    }
}

impl HostStaging {
    /// Packs `params` (`ops::pack_sampling_into`) and queues their copy into `dst` after the
    /// metadata's, the same way.
    pub fn upload_sampling(
        &mut self,
        stream: &Arc<CudaStream>,
        params: &[DeviceSampling],
        dst: &mut CudaSlice<u32>,
    ) -> BackendResult<()> {
        self.copied
            .synchronize()
            .map_err(cuda_err("wait for the last metadata copy"))?;
        let words = self
            .sampling
            .as_mut_slice()
            .map_err(cuda_err("page-locked sampling parameters"))?;
        pack_sampling_into(params, self.s_max, words, self.sampled);
        self.sampled = params.len().min(self.s_max);
        let src: &[u32] = words;
        let mut dst = dst.try_slice_mut(..src.len()).ok_or_else(|| {
            BackendError::Alloc(format!(
                "{} sampling words > the device buffer's",
                src.len()
            ))
        })?;
        stream
            .memcpy_htod(src, &mut dst)
            .map_err(cuda_err("upload sampling parameters"))?;
        self.copied
            .record(stream)
            .map_err(cuda_err("record the sampling copy"))
    }
}

impl HostStaging {
    /// Writes the `(row, draw)` pairs and queues their copy into `dst` after the metadata's,
    /// the same way.
    pub fn upload_feeds(
        &mut self,
        stream: &Arc<CudaStream>,
        pairs: &[[u32; 2]],
        dst: &mut CudaSlice<u32>,
    ) -> BackendResult<()> {
        self.copied
            .synchronize()
            .map_err(cuda_err("wait for the last metadata copy"))?;
        let words = self
            .feeds
            .as_mut_slice()
            .map_err(cuda_err("page-locked fed rows"))?;
        let n = 2 * pairs.len();
        let s_max = self.s_max;
        let too_many = || BackendError::Shape {
            op: "fed rows",
            detail: format!("{} pairs > {s_max}", pairs.len()),
        };
        let src = words.get_mut(..n).ok_or_else(too_many)?;
        for (w, p) in src.chunks_exact_mut(2).zip(pairs) {
            w.copy_from_slice(p);
        }
        let src: &[u32] = src;
        let mut dst = dst.try_slice_mut(..n).ok_or_else(too_many)?;
        stream
            .memcpy_htod(src, &mut dst)
            .map_err(cuda_err("upload fed rows"))?;
        self.copied
            .record(stream)
            .map_err(cuda_err("record the fed rows' copy"))
    }
}

impl Drop for HostStaging {
    /// The buffer is freed only after the last DMA out of it.
    fn drop(&mut self) {
        let _ = self.copied.synchronize();
    }
}
