//! Per-step planning: which sequences run, with how many tokens, and who gets preempted.

use super::pacing::{Backlog, paced_budget};
use super::sequence::{SeqKey, Sequence};
use super::{EngineConfig, PrefillPolicy, SchedulePolicy};
use crate::kv_cache::BlockPool;
use crate::model::SeqChunk;
use std::cmp::Reverse;
use std::collections::{HashSet, VecDeque};

/// The smallest prefill share worth a prompt's place in a shared step.
const MIN_SHARED_CHUNK: usize = 16;

/// Caps `demands` (in order) so that they sum to at most `budget`, as evenly as possible:
/// the smallest demands are met in full, the rest get equal shares of what is left.
fn water_fill(demands: &mut [usize], budget: usize) {
    let mut order: Vec<usize> = (0..demands.len()).collect();
    order.sort_by_key(|&i| demands[i]);
    let mut left = budget;
    for (n, &i) in order.iter().enumerate() {
        let share = left / (order.len() - n);
        demands[i] = demands[i].min(share);
        left -= demands[i];
    }
}

/// One sequence's share of a step: `tokens[start..start + len]` of `running[seq_idx]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScheduledChunk {
    pub seq_idx: usize,
    pub start: usize,
    pub len: usize,
    /// The chunk reaches the end of the sequence, so its logits give the next token.
    pub need_logits: bool,
}

impl ScheduledChunk {
    /// What the model runs of `seq` (the sequence this chunk was planned for).
    pub fn view<'a>(&self, seq: &'a Sequence) -> SeqChunk<'a> {
        SeqChunk {
            tokens: &seq.tokens[self.start..self.start + self.len],
            start_pos: self.start,
            block_table: seq.block_table.ids(),
            need_logits: self.need_logits,
        }
    }
}

/// Running and waiting sequences plus the KV block pool they draw from.
pub(crate) struct Scheduler {
    pub pool: BlockPool,
    /// Admission order: oldest first, so the newest is preempted first.
    pub running: Vec<Sequence>,
    /// FIFO; preempted sequences go back to the front. Under [`SchedulePolicy::Lof`] and
    /// `LofPaced` it is re-sorted, longest output first, before a step that follows a change.
    pub waiting: VecDeque<Sequence>,
    /// `waiting` changed since it was last sorted (LOF policies only).
    waiting_unsorted: bool,
    /// The keys of every sequence in `running` and `waiting`, so that the duplicate check of
    /// each submitted request is O(1): scanning both queues made a Submit of k requests cost
    /// k × (queued sequences), and a few hundred thousand stalled the engine for minutes.
    keys: HashSet<SeqKey>,
    config: EngineConfig,
    pub preemptions_total: u64,
    /// Tokens of admitted sequences looked up in the prefix cache, and those found there.
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
}

impl Scheduler {
    pub fn new(pool: BlockPool, config: EngineConfig) -> Self {
        Self {
            pool,
            running: Vec::new(),
            waiting: VecDeque::new(),
            waiting_unsorted: false,
            keys: HashSet::new(),
            config: EngineConfig {
                max_batch_tokens: config.max_batch_tokens.max(1),
                max_num_seqs: config.max_num_seqs.max(1),
                ..config
            },
            preemptions_total: 0,
            prefix_cache_queries: 0,
            prefix_cache_hits: 0,
        }
    }

    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    pub fn contains(&self, key: SeqKey) -> bool {
        self.keys.contains(&key)
    }

    /// Queues a new sequence; the caller has checked that its key is not [`Self::contains`]ed.
    pub fn enqueue(&mut self, seq: Sequence) {
        self.keys.insert(seq.key);
        self.waiting.push_back(seq);
        self.waiting_unsorted = true;
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
        for seq in &removed {
            self.keys.remove(&seq.key);
        }
        removed
    }

    /// Drops the running sequences that finished this step, returning their blocks.
    pub fn remove_finished(&mut self) {
        let keys = &mut self.keys;
        self.running.retain(|s| {
            let done = s.finish.is_some();
            if done {
                keys.remove(&s.key);
            }
            !done
        });
    }

    /// Whether the key index names exactly the queued sequences (for tests).
    #[cfg(test)]
    pub fn keys_match_queues(&self) -> bool {
        let queued: HashSet<SeqKey> = self
            .running
            .iter()
            .chain(&self.waiting)
            .map(|s| s.key)
            .collect();
        queued == self.keys && self.keys.len() == self.running.len() + self.waiting.len()
    }

    /// Plans one step by the configured [`SchedulePolicy`] and [`PrefillPolicy`].
    pub fn schedule(&mut self) -> Vec<ScheduledChunk> {
        self.order_waiting();
        match self.config.prefill_policy {
            PrefillPolicy::Fifo => self.schedule_fifo(),
            PrefillPolicy::Shared => self.schedule_shared(),
        }
    }

    /// Puts the waiting queue in admission order. FCFS: nothing to do (arrivals are pushed
    /// to the back, preempted sequences to the front). LOF: most tokens left to generate
    /// first; the sort is stable, so ties keep their order, and it runs only after the queue
    /// changed (new arrivals or preemptions), at most once a step.
    fn order_waiting(&mut self) {
        if self.config.schedule_policy.longest_first() && self.waiting_unsorted {
            self.waiting
                .make_contiguous()
                .sort_by_key(|s| Reverse(s.tokens_left()));
        }
        self.waiting_unsorted = false;
    }

    /// The token budget of the next step: `max_batch_tokens`, or under
    /// [`SchedulePolicy::LofPaced`] what the queue's backlog calls for (`pacing.rs`).
    fn step_budget(&self) -> usize {
        let max = self.config.max_batch_tokens;
        if self.config.schedule_policy != SchedulePolicy::LofPaced {
            return max;
        }
        let mut backlog = Backlog::default();
        for seq in self.running.iter().chain(&self.waiting) {
            backlog.add(seq.num_uncomputed(), seq.tokens_left());
        }
        backlog.decodes = self
            .running
            .iter()
            .filter(|s| s.num_uncomputed() == 1)
            .count();
        paced_budget(backlog, max)
    }

    /// Running sequences first (oldest first, each with all it still needs), then
    /// admission in queue order.
    fn schedule_fifo(&mut self) -> Vec<ScheduledChunk> {
        let preemptions_before = self.preemptions_total;
        let mut budget = self.step_budget();
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

    /// Decodes first (one token each, oldest first), then the rest of the budget split
    /// between the prompts being prefilled and the waiting ones, FIFO, by water-filling: a
    /// prompt that needs less than an equal share takes what it needs and leaves the rest to
    /// the others. Where a step costs seconds (a CPU), a long prompt then no longer holds up
    /// the short ones behind it for several steps; whenever the budget covers every prompt
    /// this plans exactly what FIFO would.
    fn schedule_shared(&mut self) -> Vec<ScheduledChunk> {
        let preemptions_before = self.preemptions_total;
        let mut budget = self.step_budget();
        let mut chunks = Vec::new();
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let seq = &self.running[i];
            let start = seq.num_computed;
            if seq.num_uncomputed() == 1 {
                if !self.reserve_or_preempt(i, start + 1) {
                    break;
                }
                chunks.push(self.chunk(i, start, 1));
                budget -= 1;
            }
            i += 1;
        }
        let prefilling: Vec<usize> = (0..self.running.len())
            .filter(|&i| self.running[i].num_uncomputed() > 1)
            .collect();
        let admit = self.preemptions_total == preemptions_before;
        let slots = match admit {
            true => self.config.max_num_seqs.saturating_sub(self.running.len()),
            false => 0,
        };
        // As many prompts as can each get a first chunk of MIN_SHARED_CHUNK (or all they need),
        // and always the first.
        let mut floor = 0;
        let mut demands: Vec<usize> = prefilling
            .iter()
            .map(|&i| self.running[i].num_uncomputed())
            .chain(self.waiting.iter().take(slots).map(|s| s.num_uncomputed()))
            .take_while(|&d| {
                let first = floor == 0;
                floor += d.min(MIN_SHARED_CHUNK);
                first || floor <= budget
            })
            .collect();
        water_fill(&mut demands, budget);
        for (&i, &len) in prefilling.iter().zip(&demands) {
            if i >= self.running.len() || len == 0 {
                continue; // preempted by an earlier chunk of this step
            }
            let start = self.running[i].num_computed;
            if self.reserve_or_preempt(i, start + len) {
                chunks.push(self.chunk(i, start, len));
            }
        }
        // Unlike FIFO, a prompt's blocks here are reserved after the decodes of newer
        // sequences were planned, so its preemption victims may already hold a chunk. Victims
        // are always popped off the end, so every index below `running.len()` is unchanged.
        chunks.retain(|c| c.seq_idx < self.running.len());
        if self.preemptions_total == preemptions_before {
            for &len in demands.iter().skip(prefilling.len()) {
                if len == 0 || self.admit_one(len, &mut chunks).is_none() {
                    break;
                }
            }
        }
        chunks
    }

    /// Admits the head of the queue with a first chunk of at most `len` tokens after what
    /// the prefix cache holds of it, and returns the chunk's length; `None` when the queue is
    /// empty or its head's blocks do not fit (it stays first in line, nobody overtakes
    /// it).
    fn admit_one(&mut self, len: usize, chunks: &mut Vec<ScheduledChunk>) -> Option<usize> {
        let mut seq = self.waiting.pop_front()?;
        let hit = seq.match_cached_prefix(&self.pool);
        let start = seq.num_computed;
        let len = len.min(seq.num_uncomputed());
        if seq.block_table.reserve(&self.pool, start + len).is_err() {
            // Back to the head: it stays first in line, whatever the policy.
            seq.forget_blocks();
            self.waiting.push_front(seq);
            return None;
        }
        self.count_lookup(&seq, hit);
        seq.preempted = false;
        self.running.push(seq);
        chunks.push(self.chunk(self.running.len() - 1, start, len));
        Some(len)
    }

    fn count_lookup(&mut self, seq: &Sequence, hit: usize) {
        if self.pool.caching() {
            self.prefix_cache_queries += seq.tokens.len() as u64;
            self.prefix_cache_hits += hit as u64;
        }
    }

    /// Registers the blocks each chunk's sequence completed this step in the prefix cache.
    pub fn cache_computed_blocks(&mut self, chunks: &[ScheduledChunk]) {
        for c in chunks {
            if let Some(seq) = self.running.get_mut(c.seq_idx) {
                seq.cache_computed_blocks(&self.pool);
            }
        }
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
            self.waiting_unsorted = true;
            self.preemptions_total += 1;
            if self.running.len() == i {
                return false;
            }
        }
    }

    /// Admission in queue order, each sequence with all of its prompt that the budget still
    /// covers.
    fn admit(&mut self, budget: &mut usize, chunks: &mut Vec<ScheduledChunk>) {
        while *budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some(len) = self.admit_one(*budget, chunks) else {
                break;
            };
            *budget -= len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::water_fill;

    #[test]
    fn water_fill_meets_small_demands_and_splits_the_rest() {
        let mut d = vec![300, 10, 12, 200];
        water_fill(&mut d, 128);
        // 10 and 12 in full; 106 left for two: 53 each.
        assert_eq!(d, vec![53, 10, 12, 53]);
        let mut fits = vec![5, 40, 7];
        water_fill(&mut fits, 64);
        assert_eq!(
            fits,
            vec![5, 40, 7],
            "everything fits: what FIFO would plan"
        );
        let mut none = vec![9, 9];
        water_fill(&mut none, 0);
        assert_eq!(none, vec![0, 0]);
    }
}
