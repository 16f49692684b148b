//! One request's state inside the engine.

use super::StreamId;
use super::outputs::finished_without_token;
use crate::kv_cache::{BlockPool, BlockTable, CacheId, ROOT, blocks_needed};
use crate::model::DeviceSampling;
use crate::sampling::{SampledToken, Sampler, SamplingConfig};
use pagedserve_proto::v1 as pb;
use std::time::Instant;

/// A sequence's identity: request ids are unique per stream only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SeqKey {
    pub stream: StreamId,
    pub id: u64,
}

/// What every new sequence is checked against.
#[derive(Debug, Clone)]
pub(crate) struct SeqLimits {
    /// The model's context: `--max-model-len` when given, else the model's own.
    pub max_context: usize,
    /// `max_context` capped by what the whole KV cache holds: where generation stops.
    pub max_seq_len: usize,
    pub block_size: usize,
    pub total_blocks: usize,
    pub vocab_size: usize,
    pub eos_token_ids: Vec<u32>,
}

#[derive(Debug)]
pub(crate) struct Sequence {
    pub key: SeqKey,
    /// Prompt followed by every generated token.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Leading tokens of `tokens` whose K/V are in the cache.
    pub num_computed: usize,
    pub block_table: BlockTable,
    /// Leading blocks whose prefix the pool knows (found in the prefix cache or registered
    /// since), and the id of that prefix (the parent of the next block to register).
    cached_blocks: usize,
    prefix_id: CacheId,
    /// Lives across preemption so seeded sampling and penalties continue where they were.
    pub sampler: Sampler,
    /// Seed of draws made on the device (the request's seed, else a random one), so each
    /// draw depends only on the seed and the token's index.
    device_seed: u64,
    max_tokens: usize,
    stop_token_ids: Vec<u32>,
    ignore_eos: bool,
    /// Waiting because it was preempted (for stats).
    pub preempted: bool,
    /// Set when the sequence ended this step; it leaves the batch after outputs are built.
    pub finish: Option<pb::FinishReason>,
    /// Overlapped steps: the last `pending` entries of `tokens` are placeholders for draws
    /// still on the device (at most two: one step in flight and the one being launched).
    pub pending: usize,
    /// The draw index, in the last launched step, of the newest placeholder: what the next
    /// step feeds its device with in its place.
    pub feed: u32,
    /// Every draw can be made on the device (no penalties, min_p or logprobs), so steps over
    /// this sequence may overlap.
    pub device_only: bool,
    /// Arrival on the shard, first scheduling (kept across preemption, as vLLM does) and
    /// first token, for the finished output's `SequenceTimings`.
    arrived: Instant,
    scheduled: Option<Instant>,
    first_token: Option<Instant>,
}

impl Sequence {
    /// Validates `req` into a sequence, or returns the error message for the client.
    pub fn from_request(key: SeqKey, req: pb::Request, limits: &SeqLimits) -> Result<Self, String> {
        let prompt_len = req.prompt_ids.len();
        if prompt_len == 0 {
            return Err("prompt is empty".into());
        }
        if prompt_len > limits.max_context {
            return Err(format!(
                "prompt has {prompt_len} tokens, more than the maximum context of {}",
                limits.max_context
            ));
        }
        let blocks = blocks_needed(prompt_len, limits.block_size);
        if blocks > limits.total_blocks {
            return Err(format!(
                "prompt needs {blocks} KV blocks, more than the {} in the whole cache",
                limits.total_blocks
            ));
        }
        if let Some(bad) = req
            .prompt_ids
            .iter()
            .find(|&&t| t as usize >= limits.vocab_size)
        {
            return Err(format!(
                "prompt token id {bad} is outside the vocabulary of {}",
                limits.vocab_size
            ));
        }
        let stopping = req.stopping.unwrap_or_default();
        if stopping.max_tokens == 0 {
            return Err("max_tokens must be at least 1".into());
        }
        let sampling = req.sampling.unwrap_or_default();
        let config = SamplingConfig::from_proto(&sampling, req.logprobs, req.top_logprobs)
            .map_err(|e| e.to_string())?;
        let mut seq = Self {
            key,
            tokens: req.prompt_ids,
            prompt_len,
            num_computed: 0,
            block_table: BlockTable::new(limits.block_size),
            cached_blocks: 0,
            prefix_id: ROOT,
            device_seed: config.seed.unwrap_or_else(rand::random),
            sampler: Sampler::new(config),
            max_tokens: stopping.max_tokens as usize,
            stop_token_ids: stopping.stop_token_ids,
            ignore_eos: stopping.ignore_eos,
            preempted: false,
            finish: None,
            pending: 0,
            feed: 0,
            device_only: false,
            arrived: Instant::now(),
            scheduled: None,
            first_token: None,
        };
        seq.device_only = seq.device_sampling().is_some();
        Ok(seq)
    }

    /// Tokens generated and known on the host (what outputs report).
    pub fn num_generated(&self) -> usize {
        self.known_len() - self.prompt_len
    }

    /// `tokens` without the placeholders of draws in flight.
    fn known_len(&self) -> usize {
        self.tokens.len() - self.pending
    }

    /// Tokens generated or being drawn in a step in flight: the index of the next draw.
    fn num_drawn(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens it may still generate: `max_tokens` less those drawn (the key of
    /// longest-output-first admission).
    pub fn tokens_left(&self) -> usize {
        self.max_tokens.saturating_sub(self.num_drawn())
    }

    /// Tokens still to run through the model before the next token can be sampled.
    pub fn num_uncomputed(&self) -> usize {
        self.tokens.len().saturating_sub(self.num_computed)
    }

    /// Frees the blocks and rewinds so the whole prompt + output is recomputed on readmission.
    pub fn preempt(&mut self) {
        self.forget_blocks();
        self.preempted = true;
    }

    /// Releases every block (cached ones stay in the pool's cache) and rewinds to nothing
    /// computed.
    pub fn forget_blocks(&mut self) {
        self.block_table.clear();
        self.num_computed = 0;
        self.cached_blocks = 0;
        self.prefix_id = ROOT;
    }

    /// Before admission (nothing computed yet): takes the longest run of leading full blocks
    /// the prefix cache holds, always leaving at least one token to compute (its logits give
    /// the next token). Returns the tokens found.
    pub fn match_cached_prefix(&mut self, pool: &BlockPool) -> usize {
        if !pool.caching() || self.num_computed > 0 || self.block_table.num_blocks() > 0 {
            return 0;
        }
        let b = self.block_table.block_size();
        let mut found = 0;
        while (found + 1) * b < self.tokens.len() {
            let tokens = &self.tokens[found * b..(found + 1) * b];
            let Some((block, id)) = pool.lookup(self.prefix_id, tokens) else {
                break;
            };
            self.block_table.push_cached(block);
            self.prefix_id = id;
            found += 1;
        }
        self.cached_blocks = found;
        self.num_computed = found * b;
        self.num_computed
    }

    /// Registers the full blocks computed since the last call in the prefix cache, so later
    /// sequences starting with the same tokens (this prompt again, or this conversation's next
    /// turn) reuse them.
    pub fn cache_computed_blocks(&mut self, pool: &BlockPool) {
        if !pool.caching() {
            return;
        }
        let b = self.block_table.block_size();
        // A placeholder's block is registered once its token is known.
        let known = self.num_computed.min(self.known_len());
        while (self.cached_blocks + 1) * b <= known {
            let j = self.cached_blocks;
            let Some(block) = self.block_table.block(j) else {
                return;
            };
            self.prefix_id = pool.register(block, self.prefix_id, &self.tokens[j * b..(j + 1) * b]);
            self.cached_blocks += 1;
        }
    }

    /// Notes that a step including this sequence started at `at` (only the first counts).
    pub fn mark_scheduled(&mut self, at: Instant) {
        self.scheduled.get_or_insert(at);
    }

    /// Notes a token sampled at `now`; returns the shard-side timings with the first token
    /// and with the last (the router falls back on the first when a stop string ends it).
    pub fn record_token(&mut self, now: Instant) -> Option<pb::SequenceTimings> {
        let is_first = self.first_token.is_none();
        let first = *self.first_token.get_or_insert(now);
        if !is_first && self.finish.is_none() {
            return None;
        }
        let scheduled = self.scheduled.unwrap_or(self.arrived);
        let micros = |d: std::time::Duration| d.as_micros() as u64;
        Some(pb::SequenceTimings {
            queue_time_us: micros(scheduled.saturating_duration_since(self.arrived)),
            prefill_time_us: micros(first.saturating_duration_since(scheduled)),
            decode_time_us: micros(now.saturating_duration_since(first)),
        })
    }

    /// Samples the next token from this sequence's last-position logits and appends it.
    pub fn sample_next(&mut self, logits: &[f32]) -> SampledToken {
        let (prompt, output) = self.tokens.split_at(self.prompt_len);
        let sampled = self.sampler.sample(logits, prompt, output);
        self.tokens.push(sampled.token_id);
        sampled
    }

    /// Parameters for drawing the next token on the device, when the request needs nothing
    /// the device sampler lacks (penalties, min_p, logprobs).
    pub fn device_sampling(&self) -> Option<DeviceSampling> {
        let c = self.sampler.config();
        if c.has_penalties() || c.min_p > 0.0 || c.logprobs {
            return None;
        }
        Some(DeviceSampling {
            temperature: c.temperature,
            top_k: i32::try_from(c.top_k).unwrap_or(0),
            top_p: c.top_p,
            seed: self.device_seed,
            counter: self.num_drawn() as u64,
        })
    }

    /// Appends a token drawn on the device.
    pub fn accept_device_token(&mut self, token_id: u32) -> SampledToken {
        self.tokens.push(token_id);
        SampledToken {
            token_id,
            logprobs: None,
        }
    }

    /// Ends the sequence with an error (a failed step): drops its placeholders and returns
    /// the output that tells its stream.
    pub fn fail(&mut self, error: &str) -> pb::SequenceOutput {
        self.finish = Some(pb::FinishReason::Error);
        self.tokens.truncate(self.known_len());
        self.pending = 0;
        finished_without_token(
            self.key.id,
            pb::FinishReason::Error,
            self.prompt_len,
            self.num_generated(),
            error.to_string(),
            pb::ErrorKind::Internal,
        )
    }

    /// Why the sequence must stop after generating `token`, if it must.
    pub fn stop_reason(&self, token: u32, limits: &SeqLimits) -> Option<pb::FinishReason> {
        self.stop_reason_at(token, self.tokens.len(), limits)
    }

    /// [`Self::stop_reason`] for the token that makes the sequence `len` tokens long (with
    /// overlapped steps, placeholders may already follow it).
    fn stop_reason_at(
        &self,
        token: u32,
        len: usize,
        limits: &SeqLimits,
    ) -> Option<pb::FinishReason> {
        if !self.ignore_eos && limits.eos_token_ids.contains(&token) {
            return Some(pb::FinishReason::Stop);
        }
        if self.stop_token_ids.contains(&token) {
            return Some(pb::FinishReason::Stop);
        }
        if self.at_length_limit(len, limits) {
            return Some(pb::FinishReason::Length);
        }
        None
    }

    /// A sequence `len` tokens long may generate no more (`max_tokens`, or the longest
    /// sequence the shard serves).
    fn at_length_limit(&self, len: usize, limits: &SeqLimits) -> bool {
        len - self.prompt_len >= self.max_tokens || len >= limits.max_seq_len
    }

    /// The output of `sampled`, the token just added (finish and timings as they stand now).
    pub fn token_output(&mut self, sampled: &SampledToken, now: Instant) -> pb::SequenceOutput {
        pb::SequenceOutput {
            id: self.key.id,
            token_ids: vec![sampled.token_id],
            logprobs: sampled
                .logprobs
                .as_ref()
                .map(Into::into)
                .into_iter()
                .collect(),
            finish_reason: self.finish.unwrap_or(pb::FinishReason::Unspecified) as i32,
            prompt_tokens: self.prompt_len as u32,
            generated_tokens: self.num_generated() as u32,
            error: String::new(),
            timings: self.record_token(now),
            error_kind: pb::ErrorKind::Internal as i32,
        }
    }

    /// After a launched step that draws this sequence's next token: appends a placeholder
    /// for draw `draw` so the next step can run on it, unless that token is the last one
    /// its length allows (then nothing follows it and no row is wasted).
    pub fn push_placeholder(&mut self, draw: u32, limits: &SeqLimits) {
        if self.at_length_limit(self.tokens.len() + 1, limits) {
            return;
        }
        self.tokens.push(0);
        self.pending += 1;
        self.feed = draw;
    }

    /// Puts the collected `token` at `pos`, the oldest placeholder (or appends it where the
    /// launch left none), and returns why the sequence stops there, if it does: then the
    /// placeholders after it go. `None` when `pos` is neither (a preempted or finished
    /// sequence's stale draw), and the sequence is left as it was.
    pub fn resolve(
        &mut self,
        pos: usize,
        token: u32,
        limits: &SeqLimits,
    ) -> Option<Option<pb::FinishReason>> {
        if self.pending > 0 && pos == self.known_len() {
            self.tokens[pos] = token;
            self.pending -= 1;
        } else if pos == self.tokens.len() && self.pending == 0 {
            self.tokens.push(token);
        } else {
            return None;
        }
        let finish = self.stop_reason_at(token, pos + 1, limits);
        if finish.is_some() {
            self.tokens.truncate(pos + 1);
            self.pending = 0;
            self.num_computed = self.num_computed.min(pos + 1);
        }
        Some(finish)
    }
}

#[cfg(test)]
mod timing_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timings_follow_vllm_semantics_on_first_and_last_token() {
        let limits = SeqLimits {
            max_context: 64,
            max_seq_len: 64,
            block_size: 16,
            total_blocks: 4,
            vocab_size: 100,
            eos_token_ids: vec![2],
        };
        let request = pb::Request {
            prompt_ids: vec![5, 6, 7],
            stopping: Some(pb::StoppingCriteria {
                max_tokens: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        let key = SeqKey { stream: 1, id: 1 };
        let mut seq = Sequence::from_request(key, request, &limits).expect("valid request");
        let t0 = seq.arrived;
        let ms = Duration::from_millis;
        seq.mark_scheduled(t0 + ms(10));
        let first = seq
            .record_token(t0 + ms(30))
            .expect("first token carries timings");
        assert_eq!(
            (first.queue_time_us, first.prefill_time_us),
            (10_000, 20_000)
        );
        assert_eq!(
            seq.record_token(t0 + ms(35)),
            None,
            "middle tokens carry none"
        );
        seq.preempt();
        seq.mark_scheduled(t0 + ms(40)); // a reschedule does not move the first one
        seq.finish = Some(pb::FinishReason::Length);
        let timings = seq.record_token(t0 + ms(100)).expect("finished");
        assert_eq!(timings.queue_time_us, 10_000);
        assert_eq!(timings.prefill_time_us, 20_000);
        assert_eq!(timings.decode_time_us, 70_000);
    }
}
