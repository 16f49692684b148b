//! The continuous-batching engine (vLLM-style), running on its own OS thread.
//!
//! The model forward is CPU-heavy and must never block tokio workers, so the engine owns the
//! model on a dedicated thread and is driven by a channel of [`Command`]s. Each step it applies
//! cancellations, schedules (decode running sequences, preempt the newest by recompute when
//! blocks run out, admit waiting ones FIFO under the token budget, chunking long prompts), runs
//! ONE batched forward, samples, checks stop conditions and sends ONE `StepOutput` to every
//! stream that had sequences in the step.

mod actor;
mod handle;
mod outputs;
mod overlap;
mod pacing;
mod runner;
mod scheduler;
mod sequence;

#[cfg(test)]
pub(crate) mod test_model;
#[cfg(test)]
mod tests;

pub use handle::{EngineHandle, OutputStream, spawn_engine};

use crate::model::ModelInfo;
use pagedserve_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};

/// Identifies one output stream (one `Serve` call or one `Generate` call). Request ids are
/// unique per stream only, so sequences are keyed by `(StreamId, id)`.
pub type StreamId = u64;

/// How a step's budget, after the decodes, is split between prompts still being prefilled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrefillPolicy {
    /// Oldest prompt first, as vLLM's chunked prefill: a long prompt takes the whole budget
    /// until it is done. Right where a step takes milliseconds (GPUs).
    #[default]
    Fifo,
    /// Split between the prompts by water-filling, so a long prompt no longer holds up the
    /// short ones behind it for several steps. Right where a step takes a second (the CPU):
    /// there, FIFO made every short request behind a long one wait seconds for its first
    /// token. Plans exactly what FIFO would whenever the budget covers every prompt.
    Shared,
}

/// The order in which waiting sequences are admitted (`--scheduling-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchedulePolicy {
    /// First come, first served: vLLM's and SGLang's default, and the right one for online
    /// serving, where every request's latency counts.
    #[default]
    Fcfs,
    /// Longest output first (SGLang's `lof`): the waiting sequence with the most tokens left
    /// to generate (its `max_tokens` less what it generated) is admitted first; ties keep
    /// arrival order. For offline, throughput-bound runs (all requests queued at once): such a
    /// run lasts at least as many steps as its longest answer, so starting that answer first,
    /// while the short ones fill the steps around it, shortens the run. Short requests wait
    /// behind long ones, and a request without `max_tokens` counts as the longest.
    Lof,
    /// `Lof`, and each step's token budget paced to the queue (`pacing.rs`): the rows still to
    /// compute spread over the steps the longest answer still needs, plus slack, between 256
    /// tokens (and every running decode) and `max_batch_tokens`. For the same offline batches;
    /// it relies on `max_tokens` being close to each answer's real length.
    LofPaced,
}

impl SchedulePolicy {
    /// Admits the longest output first.
    pub fn longest_first(self) -> bool {
        matches!(self, Self::Lof | Self::LofPaced)
    }
}

/// Scheduling limits.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Per-step token budget (prefill chunk tokens + decode tokens).
    pub max_batch_tokens: usize,
    /// Most sequences in the running batch.
    pub max_num_seqs: usize,
    /// The backend's choice (`Args::engine_config`): shared on the CPU, FIFO on GPUs.
    pub prefill_policy: PrefillPolicy,
    /// Admission order of the waiting sequences.
    pub schedule_policy: SchedulePolicy,
    /// Keep full KV blocks of earlier sequences and reuse them for any sequence that starts
    /// with the same tokens (vLLM's automatic prefix caching; `--no-enable-prefix-caching`).
    pub prefix_caching: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch_tokens: 2048,
            max_num_seqs: 256,
            prefill_policy: PrefillPolicy::Fifo,
            schedule_policy: SchedulePolicy::Fcfs,
            prefix_caching: true,
        }
    }
}

/// Static facts and current occupancy, for `Info`.
#[derive(Debug, Clone)]
pub struct EngineSnapshot {
    pub model: ModelInfo,
    /// Longest prompt + generated sequence: the model's context, capped by the cache size.
    pub max_seq_len: usize,
    pub block_size: usize,
    pub total_kv_blocks: usize,
    pub free_kv_blocks: usize,
    pub running: usize,
    pub waiting: usize,
    pub max_batch_tokens: usize,
    pub preemptions_total: u64,
}

/// Messages that drive the engine thread.
#[derive(Debug)]
pub enum Command {
    OpenStream {
        stream: StreamId,
        sender: mpsc::UnboundedSender<pb::StepOutput>,
    },
    /// The stream's consumer is gone: cancel its sequences silently.
    CloseStream {
        stream: StreamId,
    },
    Submit {
        stream: StreamId,
        requests: Vec<pb::Request>,
    },
    Cancel {
        stream: StreamId,
        ids: Vec<u64>,
    },
    Snapshot {
        reply: oneshot::Sender<EngineSnapshot>,
    },
    Shutdown,
}

/// Errors talking to the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the engine thread has stopped")]
    Stopped,
    #[error("cannot start the engine thread: {0}")]
    Spawn(#[source] std::io::Error),
}
