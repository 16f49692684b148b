//! Per-step planning: which sequences run, with how many tokens, and who gets preempted.

use super::EngineConfig;
use super::sequence::{SeqKey, Sequence};
use crate::kv_cache::BlockPool;
use std::collections::VecDeque;

/// One sequence's share of a step: `tokens[start..start + len]` of `running[seq_idx]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScheduledChunk {
    pub seq_idx: usize,
    pub start: usize,
    pub len: usize,
    /// The chunk reaches the end of the sequence, so its logits give the next token.
    pub need_logits: bool,
}

/// Running and waiting sequences plus the KV block pool they draw from.
pub(crate) struct Scheduler {
    pub pool: BlockPool,
    /// Admission order: oldest first, so the newest is preempted first.
    pub running: Vec<Sequence>,
    /// FIFO; preempted sequences go back to the front.
    pub waiting: VecDeque<Sequence>,
    config: EngineConfig,
    pub preemptions_total: u64,
}

impl Scheduler {
    pub fn new(pool: BlockPool, config: EngineConfig) -> Self {
        Self {
            pool,
            running: Vec::new(),
            waiting: VecDeque::new(),
            config: EngineConfig {
                max_batch_tokens: config.max_batch_tokens.max(1),
                max_num_seqs: config.max_num_seqs.max(1),
            },
            preemptions_total: 0,
        }
    }

    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    pub fn contains(&self, key: SeqKey) -> bool {
        self.running
            .iter()
            .chain(&self.waiting)
            .any(|s| s.key == key)
    }

    /// Removes (and so frees the blocks of) every sequence matching `pred`, returning them.
    pub fn remove_where(&mut self, pred: impl Fn(&Sequence) -> bool) -> Vec<Sequence> {
        let mut removed = Vec::new();
        let (keep, gone): (Vec<_>, Vec<_>) = self.running.drain(..).partition(|s| !pred(s));
        self.running = keep;
        removed.extend(gone);
        let (keep, gone): (VecDeque<_>, VecDeque<_>) =
            self.waiting.drain(..).partition(|s| !pred(s));
        self.waiting = keep;
        removed.extend(gone);
        removed
    }

    /// Plans one step: running sequences first (oldest first), then FIFO admission.
    pub fn schedule(&mut self) -> Vec<ScheduledChunk> {
        let preemptions_before = self.preemptions_total;
        let mut budget = self.config.max_batch_tokens;
        let mut chunks = Vec::new();
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let seq = &self.running[i];
            let start = seq.num_computed;
            let len = seq.num_uncomputed().min(budget);
            if len == 0 {
                i += 1;
                continue;
            }
            if !self.reserve_or_preempt(i, start + len) {
                break; // `i` itself was the newest and got preempted
            }
            chunks.push(self.chunk(i, start, len));
            budget -= len;
            i += 1;
        }
        // Like vLLM: no admission in a step that had to preempt, or the victims would thrash.
        if self.preemptions_total == preemptions_before {
            self.admit(&mut budget, &mut chunks);
        }
        chunks
    }

    fn chunk(&self, seq_idx: usize, start: usize, len: usize) -> ScheduledChunk {
        ScheduledChunk {
            seq_idx,
            start,
            len,
            need_logits: start + len == self.running[seq_idx].tokens.len(),
        }
    }

    /// Grows `running[i]`'s table to `num_tokens`, preempting the newest running sequences
    /// until it fits. Returns false when `i` itself had to be preempted.
    fn reserve_or_preempt(&mut self, i: usize, num_tokens: usize) -> bool {
        loop {
            if self.running[i]
                .block_table
                .reserve(&self.pool, num_tokens)
                .is_ok()
            {
                return true;
            }
            let Some(mut victim) = self.running.pop() else {
                return false;
            };
            victim.preempt();
            self.waiting.push_front(victim);
            self.preemptions_total += 1;
            if self.running.len() == i {
                return false;
            }
        }
    }

    fn admit(&mut self, budget: &mut usize, chunks: &mut Vec<ScheduledChunk>) {
        while *budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            let len = seq.num_uncomputed().min(*budget);
            if seq.block_table.reserve(&self.pool, len).is_err() {
                // FIFO: nobody overtakes the head of the queue.
                self.waiting.push_front(seq);
                break;
            }
            seq.preempted = false;
            self.running.push(seq);
            chunks.push(self.chunk(self.running.len() - 1, 0, len));
            *budget -= len;
        }
    }
}
