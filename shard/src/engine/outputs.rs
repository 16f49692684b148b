//! Per-stream output senders and the outputs gathered during one step.

use super::StreamId;
use pagedserve_proto::v1 as pb;
use std::collections::HashMap;
use tokio::sync::mpsc;

/// Unbounded senders: the step loop must never wait on a slow consumer. Each stream gets at
/// most one message per step, so a consumer that falls behind only buffers step outputs.
#[derive(Default)]
pub(crate) struct Outputs {
    senders: HashMap<StreamId, mpsc::UnboundedSender<pb::StepOutput>>,
    pending: HashMap<StreamId, Vec<pb::SequenceOutput>>,
    step: u64,
}

impl Outputs {
    pub fn open(&mut self, stream: StreamId, sender: mpsc::UnboundedSender<pb::StepOutput>) {
        self.senders.insert(stream, sender);
    }

    pub fn close(&mut self, stream: StreamId) {
        self.senders.remove(&stream);
        self.pending.remove(&stream);
    }

    pub fn is_open(&self, stream: StreamId) -> bool {
        self.senders.contains_key(&stream)
    }

    /// Marks `stream` as part of this step, so it gets a `StepOutput` even with no tokens.
    pub fn touch(&mut self, stream: StreamId) {
        self.pending.entry(stream).or_default();
    }

    pub fn push(&mut self, stream: StreamId, output: pb::SequenceOutput) {
        self.pending.entry(stream).or_default().push(output);
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Streams whose consumer has gone away.
    pub fn closed_streams(&self) -> Vec<StreamId> {
        self.senders
            .iter()
            .filter(|(_, s)| s.is_closed())
            .map(|(&id, _)| id)
            .collect()
    }

    /// Sends one `StepOutput` to every stream touched this step; returns the streams whose
    /// consumer is gone.
    pub fn flush(&mut self, stats: &pb::ShardStats) -> Vec<StreamId> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        self.step += 1;
        let mut dead = Vec::new();
        for (stream, outputs) in self.pending.drain() {
            let Some(sender) = self.senders.get(&stream) else {
                continue;
            };
            let msg = pb::StepOutput {
                step: self.step,
                outputs,
                stats: Some(*stats),
            };
            if sender.send(msg).is_err() {
                dead.push(stream);
            }
        }
        dead
    }
}

/// An output that ends a sequence without a token (rejection, cancellation, model error).
/// `error_kind` matters only with an ERROR finish: whose fault it is.
pub(crate) fn finished_without_token(
    id: u64,
    reason: pb::FinishReason,
    prompt_tokens: usize,
    generated_tokens: usize,
    error: String,
    error_kind: pb::ErrorKind,
) -> pb::SequenceOutput {
    pb::SequenceOutput {
        id,
        token_ids: Vec::new(),
        logprobs: Vec::new(),
        finish_reason: reason as i32,
        prompt_tokens: prompt_tokens as u32,
        generated_tokens: generated_tokens as u32,
        error,
        timings: None,
        error_kind: error_kind as i32,
    }
}
