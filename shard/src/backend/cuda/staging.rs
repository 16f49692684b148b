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

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};

use super::ops::{SAMPLING_WORDS, pack_sampling_into};
use super::pinned::Pinned;
use super::plan::{MetaLayout, StageError, StagedMarks, StagedStep, stage_into};
use crate::backend::{BackendError, BackendResult, StepPlan};
use crate::model::DeviceSampling;

pub struct HostStaging {
    meta: Pinned,
    marks: StagedMarks,
    /// The per-sequence sampling parameters (`SAMPLING_WORDS * s_max` words), and how many
    /// sequences' the last step packed.
    sampling: Pinned,
    sampled: usize,
    s_max: usize,
    /// Overlapped steps' `(row, draw)` pairs (`2 * s_max` words).
    feeds: Pinned,
}

impl HostStaging {
    /// Zeroed page-locked buffers of `layout.len()` words (2.2 MB for an 8k context and 1,024
    /// sequences), of the sampling parameters and of the fed rows.
    pub fn new(ctx: &Arc<CudaContext>, layout: &MetaLayout) -> BackendResult<Self> {
        Ok(Self {
            meta: Pinned::zeroed(ctx, layout.len(), "step metadata")?,
            marks: StagedMarks::default(),
            sampling: Pinned::zeroed(ctx, SAMPLING_WORDS * layout.s_max, "sampling parameters")?,
            sampled: 0,
            s_max: layout.s_max,
            feeds: Pinned::zeroed(ctx, 2 * layout.s_max, "fed rows")?,
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
        let host = self.meta.write()?;
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
        self.meta.read(len)
    }

    /// Queues the copy of the first `len` staged words into `dst` on `stream`; returns at once.
    pub fn upload(
        &mut self,
        stream: &Arc<CudaStream>,
        len: usize,
        dst: &mut CudaSlice<u32>,
    ) -> BackendResult<()> {
        self.meta.upload(stream, len, dst)
    }

    /// Packs `params` (`ops::pack_sampling_into`) and queues their copy into `dst`.
    pub fn upload_sampling(
        &mut self,
        stream: &Arc<CudaStream>,
        params: &[DeviceSampling],
        dst: &mut CudaSlice<u32>,
    ) -> BackendResult<()> {
        let words = self.sampling.write()?;
        pack_sampling_into(params, self.s_max, words, self.sampled);
        self.sampled = params.len().min(self.s_max);
        let len = words.len();
        self.sampling.upload(stream, len, dst)
    }

    /// Writes the `(row, draw)` pairs and queues their copy into `dst`.
    pub fn upload_feeds(
        &mut self,
        stream: &Arc<CudaStream>,
        pairs: &[[u32; 2]],
        dst: &mut CudaSlice<u32>,
    ) -> BackendResult<()> {
        let n = 2 * pairs.len();
        let s_max = self.s_max;
        let words = self.feeds.write()?;
        let src = words.get_mut(..n).ok_or_else(|| BackendError::Shape {
            op: "fed rows",
            detail: format!("{} pairs > {s_max}", pairs.len()),
        })?;
        for (w, p) in src.chunks_exact_mut(2).zip(pairs) {
            w.copy_from_slice(p);
        }
        self.feeds.upload(stream, n, dst)
    }
}
