//! [`CudaLlama`]: the Llama-family decoder on one GPU. bf16 weights, cuBLAS GEMMs, our own
//! kernels (`pagedserve-kernels`) for everything else, a paged KV cache (bf16, or fp8 e4m3 with
//! `--kv-cache-dtype fp8`) sized from free memory, preallocated buffers, and CUDA graphs
//! replayed for decode-only steps.

use cudarc::driver::CudaSlice;
use pagedserve_kernels::{Kernels, KvDtype};

use super::buffers::Buffers;
use super::device::{Gpu, cuda_err};
use super::gemm::Gemm;
use super::graphs::Graphs;
use super::kv::KvCaches;
use super::launches::Launches;
use super::ops::{self, Dims};
use super::plan::{MetaLayout, StagedStep};
use super::staging::HostStaging;
use super::tp::wire::{LinkError, StepFrame};
use super::tp::{Group, Role};
use super::weights::Weights;
use crate::backend::{AttnSeq, BackendResult, KvLayout};
use crate::model::batch::{BatchLimits, build_plan};
use crate::model::{
    CausalLm, DeviceSampling, LlamaConfig, ModelError, ModelInfo, Picked, SeqChunk,
};

const GREEDY: DeviceSampling = DeviceSampling {
    temperature: 0.0,
    top_k: 0,
    top_p: 1.0,
    seed: 0,
    counter: 0,
};

/// What one step runs over: sizes only, so a graph captured for a shape replays for any step
/// staged with that shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StepShape {
    pub rows: usize,
    pub decode_seqs: usize,
    pub prefill_seqs: usize,
    pub num_tiles: usize,
    /// Query rows a prefill tile (128 or 64; 0 without prefill), chosen once at staging
    /// (`ops::prefill_tiles`) and so the same for the tile list, the launch, and a
    /// tensor-parallel follower, which is sent the shape.
    pub tile_rows: usize,
    /// Rows projected to logits.
    pub logit_rows: usize,
    /// Sample on the device (else logits are left for the host).
    pub sample: bool,
}

pub struct CudaLlama {
    pub(super) gpu: Gpu,
    pub(super) kernels: Kernels,
    pub(super) gemm: Gemm,
    pub(super) cfg: LlamaConfig,
    pub(super) info: ModelInfo,
    pub(super) kv: KvLayout,
    pub(super) w: Weights,
    pub(super) bufs: Buffers,
    pub(super) layout: MetaLayout,
    pub(super) meta: CudaSlice<u32>,
    /// The metadata's page-locked host side, staged into in place each step.
    pub(super) staging: HostStaging,
    /// Per-sequence sampling parameters: temperature, top_p (f32 bits), top_k, and seed and
    /// counter (two u32 halves each), `[s_max, 7]`.
    pub(super) sampling: CudaSlice<u32>,
    /// K and V of every layer, in the `--kv-cache-dtype`'s element type.
    pub(super) kv_caches: KvCaches,
    pub(super) cos: CudaSlice<f32>,
    pub(super) sin: CudaSlice<f32>,
    pub(super) graphs: Graphs,
    /// Rows whose logits an eager step returns (empty: the first rows, in order).
    pub(super) gather: Vec<usize>,
    /// Decode-sized linear layers through our GEMV kernel (`PAGEDSERVE_CUDA_GEMV=0`: cuBLAS).
    pub(super) gemv: bool,
    /// RoPE + KV write and SiLU*mul run inside the GEMVs of decode steps
    /// (`PAGEDSERVE_CUDA_FUSE=0`: as separate kernels, for comparison).
    pub(super) fuse: bool,
    /// The tensor-parallel group this rank belongs to (`None`: the whole model is here).
    pub(super) tp: Option<Group>,
    /// Launched steps not yet collected, and where their draws land on the host.
    pub(super) launches: Launches,
    /// Steps may overlap ([`CausalLm::launch`]); `--no-async-scheduling` turns it off.
    pub(super) async_scheduling: bool,
}

impl CudaLlama {
    /// The KV cache's element type (`--kv-cache-dtype`).
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_caches.dtype()
    }

    fn limits(&self) -> BatchLimits {
        BatchLimits {
            vocab_size: self.info.vocab_size,
            block_size: self.kv.block_size,
            num_blocks: self.kv.num_blocks,
            max_context: self.cfg.max_context,
        }
    }

    pub(super) fn dims(&self) -> Dims {
        Dims {
            hidden: self.cfg.hidden,
            heads: self.cfg.num_heads,
            kv_heads: self.cfg.num_kv_heads,
            head_dim: self.cfg.head_dim,
            rope_dim: self.cfg.rope_dim,
            ffn: self.cfg.ffn,
            vocab: self.info.vocab_size,
            block_size: self.kv.block_size,
            num_blocks: self.kv.num_blocks,
            max_context: self.cfg.max_context,
            eps: self.cfg.rms_eps,
        }
    }

    /// Validates and stages `batch`, sends its metadata, and runs it (replaying a graph when
    /// one fits). Leaves logits (or sampled tokens) on the device.
    fn run_batch(
        &mut self,
        batch: &[SeqChunk<'_>],
        sampling: Option<&[DeviceSampling]>,
        feeds: &[(usize, u32)],
    ) -> Result<StepShape, ModelError> {
        let started = std::time::Instant::now();
        // The draws `feeds` may name; whatever happens below, this step's sampling (or its
        // failure) leaves nothing for a later step to feed from but what `launch` queues.
        let draws = std::mem::take(&mut self.launches.last_draws);
        let plan = build_plan(batch, &self.limits())?;
        let plan_us = started.elapsed().as_micros() as u64;
        let decode_only =
            plan.seqs.iter().all(|s| s.num_rows == 1) && plan.logit_rows.len() == plan.seqs.len();
        let bucket = match decode_only {
            true => self.graphs.bucket_for(plan.seqs.len()),
            false => None,
        };
        let heads = self.dims().heads;
        let kernels = &self.kernels;
        let staged = self
            .staging
            .stage(&plan, &self.layout, bucket, |info| {
                ops::prefill_tiles(kernels, heads, info)
            })?
            .map_err(|e| ModelError::InvalidBatch(e.to_string()))?;
        let layout_us = started.elapsed().as_micros() as u64;
        let shape = StepShape {
            rows: staged.rows,
            decode_seqs: staged.decode_seqs,
            prefill_seqs: staged.prefill_seqs,
            num_tiles: staged.num_tiles,
            tile_rows: staged.tile_rows,
            logit_rows: if bucket.is_some() {
                staged.rows
            } else {
                staged.logit_rows.len()
            },
            sample: sampling.is_some(),
        };
        let graph = bucket.is_some() && self.graphs.enabled();
        // Followers start on the step while the leader uploads its own copy.
        if let Some(Group {
            role: Role::Leader(link),
            ..
        }) = &mut self.tp
        {
            link.send(StepFrame {
                shape,
                graph,
                meta: self.staging.words(staged.len)?.to_vec(),
            })
            .map_err(|e| ModelError::Backend(e.to_string()))?;
        }
        self.upload(&staged, sampling)?;
        self.feed(&plan.seqs, feeds, draws)?;
        let staged_us = started.elapsed().as_micros() as u64;
        if graph {
            self.gather.clear();
            self.replay(shape)?;
        } else {
            self.gather = staged.logit_rows;
            self.enqueue(shape)?;
        }
        // Host time to plan, lay out and upload the step (the GPU waits for all three), then
        // to enqueue it (the GPU runs behind); RUST_LOG=pagedserve_shard::backend=trace.
        tracing::trace!(
            rows = shape.rows,
            graph,
            plan_us,
            layout_us,
            staged_us,
            enqueued_us = started.elapsed().as_micros() as u64,
            "cuda step"
        );
        Ok(shape)
    }

    fn upload(
        &mut self,
        staged: &StagedStep,
        sampling: Option<&[DeviceSampling]>,
    ) -> BackendResult<()> {
        let stream = &self.gpu.stream;
        self.staging.upload(stream, staged.len, &mut self.meta)?;
        if let Some(params) = sampling {
            self.staging
                .upload_sampling(stream, params, &mut self.sampling)?;
        }
        Ok(())
    }

    /// Puts the last launched step's draws in place of the placeholders `feeds` names
    /// (`(chunk, draw)`; see [`CausalLm::launch`]), on the device, after the metadata's copy.
    /// `draws`: how many the last launched step drew.
    fn feed(
        &mut self,
        seqs: &[AttnSeq],
        feeds: &[(usize, u32)],
        draws: usize,
    ) -> Result<(), ModelError> {
        if feeds.is_empty() {
            return Ok(());
        }
        let pairs = feeds
            .iter()
            .map(|&(chunk, k)| match seqs.get(chunk) {
                Some(s) if (k as usize) < draws => Ok([(s.row_start + s.num_rows - 1) as u32, k]),
                _ => Err(ModelError::InvalidBatch(format!(
                    "chunk {chunk} fed by draw {k}: {} chunks, {draws} draws in the last launch",
                    seqs.len()
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let stream = &self.gpu.stream;
        self.staging
            .upload_feeds(stream, &pairs, &mut self.bufs.feeds)?;
        let layout = self.layout;
        let mut tokens = self
            .meta
            .slice_mut(layout.tokens()..layout.tokens() + layout.t_max);
        self.kernels
            .feed_tokens(
                stream,
                &mut tokens,
                &self.bufs.sampled.slice(..draws),
                &self.bufs.feeds.slice(..2 * pairs.len()),
                pairs.len(),
            )
            .map_err(|e| ModelError::Backend(format!("feed_tokens: {e}")))
    }

    /// Enqueues one step of `shape` over the staged metadata. Never synchronizes, so it can
    /// be captured into a CUDA graph.
    pub(super) fn enqueue(&mut self, shape: StepShape) -> BackendResult<()> {
        ops::forward_layers(self, shape)?;
        // lm_head and sampling run on the leader only.
        if self.is_leader() {
            ops::final_norm_and_logits(self, shape)?;
        }
        Ok(())
    }

    /// Rank 0 of its group, or not tensor-parallel at all.
    pub(super) fn is_leader(&self) -> bool {
        !matches!(
            self.tp,
            Some(Group {
                role: Role::Follower(_),
                ..
            })
        )
    }

    /// A follower's life: run every step the leader sends until it closes the link. Returns
    /// `Ok` on a clean close.
    pub fn serve_follower(mut self) -> Result<(), ModelError> {
        loop {
            let frame = match &mut self.tp {
                Some(Group {
                    role: Role::Follower(stream),
                    ..
                }) => super::tp::wire::read_frame(stream),
                _ => {
                    return Err(ModelError::Backend(
                        "serve_follower on a model that is not a tensor-parallel follower".into(),
                    ));
                }
            };
            match frame.map_err(|e: LinkError| ModelError::Backend(e.to_string()))? {
                Some(super::tp::wire::Frame::Step(step)) => self.follow(step)?,
                Some(other) => {
                    return Err(ModelError::Backend(format!(
                        "tensor-parallel leader sent {other:?} instead of a step"
                    )));
                }
                None => {
                    tracing::info!("tensor-parallel leader closed the link");
                    return Ok(());
                }
            }
        }
    }

    /// Runs one step the leader staged: the same metadata and the same launches (or graph).
    fn follow(&mut self, step: StepFrame) -> Result<(), ModelError> {
        if step.meta.len() > self.layout.len() {
            return Err(ModelError::InvalidBatch(format!(
                "step metadata of {} words > {}",
                step.meta.len(),
                self.layout.len()
            )));
        }
        let mut dst = self.meta.slice_mut(..step.meta.len());
        self.gpu
            .stream
            .memcpy_htod(&step.meta, &mut dst)
            .map_err(cuda_err("upload step metadata"))?;
        if step.graph {
            self.replay(step.shape)?;
        } else {
            self.enqueue(step.shape)?;
        }
        // Errors surface here, and the next frame is read only once this step is done.
        self.gpu
            .stream
            .synchronize()
            .map_err(cuda_err("follower step"))?;
        Ok(())
    }

    fn replay(&mut self, shape: StepShape) -> BackendResult<()> {
        if !self.graphs.has(shape) {
            self.capture(shape)?;
        }
        self.graphs.launch(shape)
    }

    /// Captures `shape` (after one eager run, which initializes cuBLAS's choices for it).
    pub(super) fn capture(&mut self, shape: StepShape) -> BackendResult<()> {
        self.enqueue(shape)?;
        self.gpu
            .stream
            .synchronize()
            .map_err(cuda_err("warm-up step"))?;
        self.graphs.begin(&self.gpu.stream)?;
        let enqueued = self.enqueue(shape);
        let graph = self.graphs.end(&self.gpu.stream)?;
        enqueued?;
        self.graphs.insert(shape, graph);
        Ok(())
    }

    fn logits_to_host(&mut self, rows: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        let vocab = self.info.vocab_size;
        let view = self.bufs.logits.slice(..rows * vocab);
        let host = self
            .gpu
            .stream
            .clone_dtoh(&view)
            .map_err(cuda_err("copy logits to the host"))?;
        Ok(host.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }
}

impl CausalLm for CudaLlama {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn block_size(&self) -> usize {
        self.kv.block_size
    }

    fn num_kv_blocks(&self) -> usize {
        self.kv.num_blocks
    }

    fn forward(&mut self, batch: &[SeqChunk<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let wanted = batch.iter().filter(|c| c.need_logits).count();
        self.run_batch(batch, None, &[])?;
        if wanted == 0 {
            self.gpu
                .stream
                .synchronize()
                .map_err(cuda_err("prefill step"))?;
            return Ok(Vec::new());
        }
        self.logits_to_host(wanted)
    }

    fn samples_on_device(&self) -> bool {
        true
    }

    fn forward_sampled(
        &mut self,
        batch: &[SeqChunk<'_>],
        params: &[Option<DeviceSampling>],
    ) -> Option<Result<Vec<Picked>, ModelError>> {
        Some(self.forward_sampled_inner(batch, params))
    }

    /// Not for a tensor-parallel group: its followers would need the draws on their devices.
    fn can_launch(&self) -> bool {
        self.async_scheduling && self.tp.is_none()
    }

    fn launch(
        &mut self,
        batch: &[SeqChunk<'_>],
        params: &[DeviceSampling],
        feeds: &[(usize, u32)],
    ) -> Result<(), ModelError> {
        if !self.can_launch() {
            return Err(ModelError::Backend(
                "overlapped steps are off for this model".into(),
            ));
        }
        let wanted = batch.iter().filter(|c| c.need_logits).count();
        if params.len() != wanted || batch.is_empty() {
            return Err(ModelError::InvalidBatch(format!(
                "{} sampling parameters for {wanted} sampled sequences of {} chunks",
                params.len(),
                batch.len()
            )));
        }
        if self.launches.is_full() {
            return Err(ModelError::Backend(
                "two launched steps are not collected yet".into(),
            ));
        }
        self.run_batch(batch, Some(params), feeds)?;
        self.launches
            .queue(&self.gpu.stream, &self.bufs.sampled, wanted)?;
        Ok(())
    }

    fn collect(&mut self) -> Result<Vec<u32>, ModelError> {
        Ok(self.launches.collect()?)
    }
}

impl CudaLlama {
    fn forward_sampled_inner(
        &mut self,
        batch: &[SeqChunk<'_>],
        params: &[Option<DeviceSampling>],
    ) -> Result<Vec<Picked>, ModelError> {
        let wanted = batch.iter().filter(|c| c.need_logits).count();
        if params.len() != wanted {
            return Err(ModelError::InvalidBatch(format!(
                "{} sampling parameters for {wanted} sampled sequences",
                params.len()
            )));
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // Sequences sampled on the host still get a (greedy, ignored) draw on the device.
        let device: Vec<DeviceSampling> = params.iter().map(|p| p.unwrap_or(GREEDY)).collect();
        self.run_batch(batch, Some(&device), &[])?;
        let tokens = self
            .gpu
            .stream
            .clone_dtoh(&self.bufs.sampled.slice(..wanted))
            .map_err(cuda_err("copy sampled tokens to the host"))?;
        let logits = match params.iter().any(Option::is_none) {
            true => self.logits_to_host(wanted)?,
            false => Vec::new(),
        };
        let mut logits = logits.into_iter();
        Ok(params
            .iter()
            .zip(tokens)
            .map(|(p, t)| match (p, logits.next()) {
                (None, Some(l)) => Picked::Logits(l),
                _ => Picked::Token(t),
            })
            .collect())
    }
}
