//! Model weights on the GPU in bf16: read from a [`ModelSource`] (quantized GGUF blocks are
//! dequantized on load) or filled with random values of a named shape (`--load-format dummy`).
//! Q/K/V and gate/up are fused into one matrix each, so a layer runs 4 GEMMs instead of 7.
//! Under tensor parallelism each rank keeps only its Megatron slice ([`TpShard`]).

use std::ops::Range;
use std::sync::Arc;

use candle_core::Device;
use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use pagedserve_kernels::Kernels;

use super::device::cuda_err;
use crate::backend::{BackendError, BackendResult};
use crate::model::tp::{TpShard, slice_cols, slice_rows};
use crate::model::{LlamaConfig, ModelError, ModelSource};

pub struct LayerWeights {
    pub attn_norm: CudaSlice<f32>,
    /// `[(H + 2 * KVH) * D, hidden]`: q rows, then k rows, then v rows.
    pub qkv: CudaSlice<bf16>,
    /// `[hidden, H * D]`.
    pub o: CudaSlice<bf16>,
    pub ffn_norm: CudaSlice<f32>,
    /// `[2 * ffn, hidden]`: gate rows, then up rows.
    pub gate_up: CudaSlice<bf16>,
    /// `[hidden, ffn]`.
    pub down: CudaSlice<bf16>,
    /// Projection biases (Qwen2's q/k/v, Llama's `attention_bias`): q, k and v concatenated
    /// like `qkv`'s rows (a missing part is zeros), and o_proj's.
    pub qkv_bias: Option<CudaSlice<f32>>,
    pub o_bias: Option<CudaSlice<f32>>,
}

pub struct Weights {
    /// `[vocab, hidden]`.
    pub embed: CudaSlice<bf16>,
    pub layers: Vec<LayerWeights>,
    pub final_norm: CudaSlice<f32>,
    /// `[vocab, hidden]`; `None` when tied to the embeddings.
    pub lm_head: Option<CudaSlice<bf16>>,
}

impl Weights {
    pub fn lm_head(&self) -> &CudaSlice<bf16> {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Reads every tensor from `src` (`cfg`: the full model's shape), converting to bf16 on
    /// the host, one tensor at a time (the host never holds more than one fused matrix in
    /// f32), keeping `tp`'s slice of each split matrix.
    pub fn load(
        src: &mut dyn ModelSource,
        cfg: &LlamaConfig,
        tp: &TpShard,
        stream: &Arc<CudaStream>,
    ) -> Result<Self, ModelError> {
        let mut up = Uploader { src, stream, tp };
        let (h, qd) = (cfg.hidden, cfg.num_heads * cfg.head_dim);
        let (q, kv, f) = (tp.q_rows(), tp.kv_rows(), tp.ffn_rows());
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let n = |name: &str| format!("blk.{i}.{name}.weight");
                Ok(LayerWeights {
                    attn_norm: up.f32(&n("attn_norm"))?,
                    qkv: up.bf16_parts(&[
                        (&n("attn_q"), Part::Rows(h, q.clone())),
                        (&n("attn_k"), Part::Rows(h, kv.clone())),
                        (&n("attn_v"), Part::Rows(h, kv.clone())),
                    ])?,
                    o: up.bf16_parts(&[(&n("attn_output"), Part::Cols(qd, tp.o_cols()))])?,
                    ffn_norm: up.f32(&n("ffn_norm"))?,
                    gate_up: up.bf16_parts(&[
                        (&n("ffn_gate"), Part::Rows(h, f.clone())),
                        (&n("ffn_up"), Part::Rows(h, f.clone())),
                    ])?,
                    down: up
                        .bf16_parts(&[(&n("ffn_down"), Part::Cols(cfg.ffn, tp.down_cols()))])?,
                    qkv_bias: up.biases(
                        i,
                        &[
                            ("attn_q", qd, q.clone()),
                            ("attn_k", cfg.num_kv_heads * cfg.head_dim, kv.clone()),
                            ("attn_v", cfg.num_kv_heads * cfg.head_dim, kv.clone()),
                        ],
                    )?,
                    o_bias: up.biases(i, &[("attn_output", h, 0..h)])?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let embed = up.bf16_parts(&[("token_embd.weight", Part::All)])?;
        // SmolLM2 ties the output layer to the embeddings. Followers compute no logits.
        let lm_head = match up.src.has_tensor("output.weight") && tp.is_leader() {
            true => Some(up.bf16_parts(&[("output.weight", Part::All)])?),
            false => None,
        };
        let final_norm = up.f32("output_norm.weight")?;
        Ok(Self {
            embed,
            layers,
            final_norm,
            lm_head,
        })
    }

    /// Random weights of `cfg`'s shape, drawn on the device: uniform with a variance that keeps
    /// activations at unit scale, norms at 1. Never zeros, so timings see real data. Every
    /// rank draws each full matrix from the same seed and keeps its slice, so a split model
    /// holds exactly the weights of the unsplit one.
    pub fn dummy(
        cfg: &LlamaConfig,
        vocab: usize,
        tied: bool,
        seed: u64,
        tp: &TpShard,
        stream: &Arc<CudaStream>,
        kernels: &Kernels,
    ) -> BackendResult<Self> {
        let mut seed = seed;
        let mut rand = |rows: usize, cols: usize, scale: f32, part: Part| {
            seed += 1;
            let full = random_bf16(stream, kernels, rows * cols, seed, scale)?;
            slice_on_device(stream, full, rows, cols, part, tp.size)
        };
        // Uniform in [-a, a) has variance a^2 / 3: a = sqrt(3 / fan_in) keeps outputs at unit
        // scale.
        let fan_in = |cols: usize| (3.0 / cols as f32).sqrt();
        let (h, d) = (cfg.hidden, cfg.head_dim);
        let qkv_rows = (cfg.num_heads + 2 * cfg.num_kv_heads) * d;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        let qd = cfg.num_heads * d;
        for _ in 0..cfg.num_layers {
            layers.push(LayerWeights {
                attn_norm: ones(stream, h)?,
                qkv: rand(
                    qkv_rows,
                    h,
                    fan_in(h),
                    Part::Stack(tp.fused_qkv_rows().to_vec()),
                )?,
                o: rand(h, qd, fan_in(qd), Part::Cols(qd, tp.o_cols()))?,
                ffn_norm: ones(stream, h)?,
                gate_up: rand(
                    2 * cfg.ffn,
                    h,
                    fan_in(h),
                    Part::Stack(tp.fused_gate_up_rows().to_vec()),
                )?,
                down: rand(
                    h,
                    cfg.ffn,
                    fan_in(cfg.ffn),
                    Part::Cols(cfg.ffn, tp.down_cols()),
                )?,
                qkv_bias: None,
                o_bias: None,
            });
        }
        let embed = rand(vocab, h, 1.0, Part::All)?;
        // Drawn on every rank all the same, to keep the seeds in step; followers drop it.
        let lm_head = match tied {
            true => None,
            false => Some(rand(vocab, h, fan_in(h), Part::All)?).filter(|_| tp.is_leader()),
        };
        Ok(Self {
            embed,
            layers,
            final_norm: ones(stream, h)?,
            lm_head,
        })
    }

    /// Bytes of every weight.
    pub fn bytes(&self) -> usize {
        let l: usize = self
            .layers
            .iter()
            .map(|l| {
                2 * (l.qkv.len() + l.o.len() + l.gate_up.len() + l.down.len())
                    + 4 * (l.attn_norm.len() + l.ffn_norm.len())
            })
            .sum();
        l + 2 * self.embed.len() + self.lm_head.as_ref().map_or(0, |w| 2 * w.len())
    }
}

fn random_bf16(
    stream: &Arc<CudaStream>,
    kernels: &Kernels,
    n: usize,
    seed: u64,
    scale: f32,
) -> BackendResult<CudaSlice<bf16>> {
    // SAFETY: every element is written by the fill kernel before any read.
    let mut w = unsafe { stream.alloc::<bf16>(n) }
        .map_err(|e| BackendError::Alloc(format!("{n} bf16 weights: {e}")))?;
    kernels
        .fill_random_bf16(stream, &mut w.as_view_mut(), seed, scale)
        .map_err(cuda_err("fill random weights"))?;
    Ok(w)
}

/// Which part of a `[rows, cols]` matrix a rank keeps.
#[derive(Debug, Clone)]
enum Part {
    All,
    /// Rows `range` of a matrix with this many columns.
    Rows(usize, Range<usize>),
    /// Columns `range` of a matrix with this many columns.
    Cols(usize, Range<usize>),
    /// These row ranges, stacked (a fused matrix's parts).
    Stack(Vec<Range<usize>>),
}

/// `full`'s part (a `[rows, cols]` matrix on the device), copied on the device.
fn slice_on_device(
    stream: &Arc<CudaStream>,
    full: CudaSlice<bf16>,
    rows: usize,
    cols: usize,
    part: Part,
    tp_size: usize,
) -> BackendResult<CudaSlice<bf16>> {
    let copy = cuda_err("slice weights for tensor parallelism");
    // Each piece: (source offset, length, destination offset).
    let pieces: Vec<(usize, usize, usize)> = match part {
        _ if tp_size == 1 => return Ok(full),
        Part::All => return Ok(full),
        Part::Rows(c, r) => vec![(r.start * c, r.len() * c, 0)],
        Part::Stack(ranges) => {
            let mut at = 0;
            ranges
                .iter()
                .map(|r| {
                    let piece = (r.start * cols, r.len() * cols, at);
                    at += r.len() * cols;
                    piece
                })
                .collect()
        }
        // One copy per row: a few hundred thousand small async copies for an 8B model, about
        // a second at load.
        Part::Cols(c, r) => (0..rows)
            .map(|i| (i * c + r.start, r.len(), i * r.len()))
            .collect(),
    };
    let len: usize = pieces.iter().map(|p| p.1).sum();
    // SAFETY: every element is written by the copies below before any read.
    let mut out = unsafe { stream.alloc::<bf16>(len) }
        .map_err(|e| BackendError::Alloc(format!("{len} bf16 weights: {e}")))?;
    for (src, n, dst) in pieces {
        stream
            .memcpy_dtod(&full.slice(src..src + n), &mut out.slice_mut(dst..dst + n))
            .map_err(&copy)?;
    }
    Ok(out)
}

fn ones(stream: &Arc<CudaStream>, n: usize) -> BackendResult<CudaSlice<f32>> {
    stream
        .clone_htod(&vec![1.0f32; n])
        .map_err(cuda_err("upload norm weight"))
}

struct Uploader<'a> {
    src: &'a mut dyn ModelSource,
    stream: &'a Arc<CudaStream>,
    tp: &'a TpShard,
}

impl Uploader<'_> {
    fn host_f32(&mut self, name: &str) -> Result<Vec<f32>, ModelError> {
        let t = self.src.tensor(name)?;
        Ok(t.dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    fn f32(&mut self, name: &str) -> Result<CudaSlice<f32>, ModelError> {
        let v = self.host_f32(name)?;
        Ok(self
            .stream
            .clone_htod(&v)
            .map_err(cuda_err("upload weight"))?)
    }

    /// Layer `layer`'s biases `blk.{layer}.{name}.bias` of the given lengths, each cut to
    /// its range and concatenated, when any exists (missing ones are zeros); `None` when none
    /// does.
    fn biases(
        &mut self,
        layer: usize,
        parts: &[(&str, usize, Range<usize>)],
    ) -> Result<Option<CudaSlice<f32>>, ModelError> {
        let names: Vec<String> = parts
            .iter()
            .map(|(p, _, _)| format!("blk.{layer}.{p}.bias"))
            .collect();
        if !names.iter().any(|n| self.src.has_tensor(n)) {
            return Ok(None);
        }
        let mut all = Vec::new();
        for (name, (_, len, keep)) in names.iter().zip(parts) {
            match self.src.has_tensor(name) {
                true => {
                    let v = self.host_f32(name)?;
                    if v.len() != *len {
                        return Err(ModelError::Format(format!(
                            "{name} has {} values, expected {len}",
                            v.len()
                        )));
                    }
                    all.extend(slice_rows(&v, 1, keep.clone()).map_err(shape_err)?);
                }
                false => all.extend(std::iter::repeat_n(0.0, keep.len())),
            }
        }
        Ok(Some(
            self.stream
                .clone_htod(&all)
                .map_err(cuda_err("upload bias"))?,
        ))
    }

    /// The named `[out_i, in]` matrices, each cut to its part, stacked by rows, as one bf16
    /// matrix.
    fn bf16_parts(&mut self, parts: &[(&str, Part)]) -> Result<CudaSlice<bf16>, ModelError> {
        let mut all: Vec<bf16> = Vec::new();
        for (name, part) in parts {
            let v = self.host_f32(name)?;
            let v = match part {
                _ if self.tp.size == 1 => v,
                Part::All => v,
                Part::Rows(cols, r) => slice_rows(&v, *cols, r.clone()).map_err(shape_err)?,
                Part::Cols(cols, r) => slice_cols(&v, *cols, r.clone()).map_err(shape_err)?,
                Part::Stack(_) => {
                    return Err(ModelError::Format(format!("{name}: stacked parts")));
                }
            };
            all.extend(v.iter().map(|&x| bf16::from_f32(x)));
        }
        Ok(self
            .stream
            .clone_htod(&all)
            .map_err(cuda_err("upload weight"))?)
    }
}

fn shape_err(e: crate::model::tp::SliceError) -> ModelError {
    ModelError::Format(format!("tensor-parallel split: {e}"))
}
