//! The engine proper: command handling and one step (schedule -> forward -> sample -> outputs).

use super::outputs::{Outputs, finished_without_token};
use super::overlap::InFlight;
use super::scheduler::{ScheduledChunk, Scheduler};
use super::sequence::{SeqKey, SeqLimits, Sequence};
use super::{Command, EngineConfig, EngineSnapshot, StreamId};
use crate::kv_cache::BlockPool;
use crate::model::{CausalLm, DeviceSampling, ModelError, Picked, SeqChunk};
use pagedserve_proto::v1 as pb;
use std::collections::HashSet;
use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

pub(crate) struct Engine {
    pub(super) model: Box<dyn CausalLm>,
    pub(crate) scheduler: Scheduler,
    pub(super) outputs: Outputs,
    pub(super) limits: SeqLimits,
    config: EngineConfig,
    /// The step launched last and not yet collected (overlapped steps, `overlap.rs`).
    pub(super) in_flight: Option<InFlight>,
}

impl Engine {
    pub fn new(model: Box<dyn CausalLm>, config: EngineConfig) -> Self {
        let info = model.info();
        let block_size = model.block_size().max(1);
        let total_blocks = model.num_kv_blocks();
        let limits = SeqLimits {
            max_context: info.max_context,
            max_seq_len: max_seq_len(info.max_context, total_blocks, block_size),
            block_size,
            total_blocks,
            vocab_size: info.vocab_size,
            eos_token_ids: info.eos_token_ids.clone(),
        };
        let scheduler = Scheduler::new(BlockPool::new(total_blocks, config.prefix_caching), config);
        Self {
            model,
            scheduler,
            outputs: Outputs::default(),
            limits,
            config,
            in_flight: None,
        }
    }

    /// Work to do without waiting for a command: sequences to run or outputs to deliver.
    pub fn has_work(&self) -> bool {
        self.scheduler.has_work() || self.outputs.has_pending() || self.in_flight.is_some()
    }

    pub fn handle(&mut self, command: Command) -> ControlFlow<()> {
        match command {
            Command::OpenStream { stream, sender } => self.outputs.open(stream, sender),
            Command::CloseStream { stream } => self.close_stream(stream),
            Command::Submit { stream, requests } => self.submit(stream, requests),
            Command::Cancel { stream, ids } => self.cancel(stream, &ids),
            Command::Snapshot { reply } => {
                // The asker may have given up; nothing to do then.
                let _ = reply.send(self.snapshot());
            }
            Command::Shutdown => return ControlFlow::Break(()),
        }
        ControlFlow::Continue(())
    }

    pub fn snapshot(&self) -> EngineSnapshot {
        EngineSnapshot {
            model: self.model.info().clone(),
            max_seq_len: self.limits.max_seq_len,
            block_size: self.limits.block_size,
            total_kv_blocks: self.limits.total_blocks,
            free_kv_blocks: self.scheduler.pool.num_free(),
            running: self.scheduler.running.len(),
            waiting: self.scheduler.waiting.len(),
            max_batch_tokens: self.config.max_batch_tokens,
            preemptions_total: self.scheduler.preemptions_total,
        }
    }

    fn submit(&mut self, stream: StreamId, requests: Vec<pb::Request>) {
        if !self.outputs.is_open(stream) {
            tracing::warn!(stream, "submit on a closed stream ignored");
            return;
        }
        for req in requests {
            let key = SeqKey { stream, id: req.id };
            let prompt_len = req.prompt_ids.len();
            // A duplicate id is the stream owner's bug (INTERNAL); what `from_request`
            // refuses is the request's own content (INVALID_REQUEST).
            let result = if self.scheduler.contains(key) {
                Err((
                    pb::ErrorKind::Internal,
                    format!("request id {} is already running on this stream", req.id),
                ))
            } else {
                Sequence::from_request(key, req, &self.limits)
                    .map_err(|error| (pb::ErrorKind::InvalidRequest, error))
            };
            match result {
                Ok(seq) => self.scheduler.enqueue(seq),
                Err((kind, error)) => {
                    let reason = pb::FinishReason::Error;
                    let out = finished_without_token(key.id, reason, prompt_len, 0, error, kind);
                    self.outputs.push(stream, out);
                }
            }
        }
    }

    fn cancel(&mut self, stream: StreamId, ids: &[u64]) {
        // A set: `ids.contains` per queued sequence made a large Cancel quadratic.
        let ids: HashSet<u64> = ids.iter().copied().collect();
        let removed = self
            .scheduler
            .remove_where(|s| s.key.stream == stream && ids.contains(&s.key.id));
        for seq in removed {
            let reason = pb::FinishReason::Cancelled;
            let out = finished_without_token(
                seq.key.id,
                reason,
                seq.prompt_len,
                seq.num_generated(),
                String::new(),
                pb::ErrorKind::Internal,
            );
            self.outputs.push(stream, out);
        } // dropping `seq` returned its blocks
    }

    fn close_stream(&mut self, stream: StreamId) {
        let removed = self.scheduler.remove_where(|s| s.key.stream == stream);
        if !removed.is_empty() {
            tracing::info!(
                stream,
                sequences = removed.len(),
                "stream closed; sequences cancelled"
            );
        }
        self.outputs.close(stream);
    }

    /// One engine step; sends one `StepOutput` to every stream involved.
    pub fn step(&mut self) {
        for stream in self.outputs.closed_streams() {
            self.close_stream(stream);
        }
        let overlap = self.can_overlap();
        if !overlap {
            self.drain();
        }
        let started = Instant::now();
        let chunks = self.scheduler.schedule();
        let (mut prefill, mut decode) = (0, 0);
        for c in &chunks {
            let seq = &mut self.scheduler.running[c.seq_idx];
            seq.mark_scheduled(started);
            if c.len == 1 && c.start >= seq.prompt_len {
                decode += 1;
            } else {
                prefill += c.len;
            }
        }
        let mut forward_us = 0;
        // Overlapped steps: host time to launch (the rest of forward_us waits for the device).
        let mut launch_us = 0;
        if overlap {
            // Launch this step, then take the last one's tokens while the device runs it.
            let forward_started = Instant::now();
            let launched = match chunks.is_empty() {
                true => None,
                false => self.launch(&chunks),
            };
            launch_us = forward_started.elapsed().as_micros() as u64;
            if let Some(last) = std::mem::replace(&mut self.in_flight, launched) {
                self.collect(last);
            }
            forward_us = forward_started.elapsed().as_micros() as u64;
            self.scheduler.remove_finished();
        } else if !chunks.is_empty() {
            let forward_started = Instant::now();
            let result = self.forward(&chunks);
            forward_us = forward_started.elapsed().as_micros() as u64;
            match result {
                Ok(rows) => {
                    self.apply(&chunks, rows);
                    self.scheduler.cache_computed_blocks(&chunks);
                }
                Err(error) => self.fail(&chunks, &error),
            }
            // Dropping finished sequences returns their blocks before stats are taken.
            self.scheduler.remove_finished();
        }
        let stats = self.stats(prefill, decode, started.elapsed().as_micros() as u64);
        for stream in self.outputs.flush(&stats) {
            self.close_stream(stream);
        }
        // One line a step at RUST_LOG=pagedserve_shard::engine=trace: where a step's time goes
        // (the model's forward pass vs the engine's own work) under load.
        tracing::trace!(
            prefill_tokens = prefill,
            decode_seqs = decode,
            running = self.scheduler.running.len(),
            waiting = self.scheduler.waiting.len(),
            overlap,
            launch_us,
            forward_us,
            step_us = started.elapsed().as_micros() as u64,
            "step"
        );
    }

    /// Runs the model over the planned chunks; a model error or panic fails only this step.
    /// Where the model samples on its device, sequences that allow it get their token from
    /// there and the rest their logits.
    fn forward(&mut self, chunks: &[ScheduledChunk]) -> Result<Vec<Picked>, String> {
        let running = &self.scheduler.running;
        let batch: Vec<SeqChunk<'_>> = chunks.iter().map(|c| c.view(&running[c.seq_idx])).collect();
        let device: Vec<Option<DeviceSampling>> = match self.model.samples_on_device() {
            true => chunks
                .iter()
                .filter(|c| c.need_logits)
                .map(|c| running[c.seq_idx].device_sampling())
                .collect(),
            false => Vec::new(),
        };
        let model = &mut self.model;
        let run = || match device.is_empty() {
            false => model.forward_sampled(&batch, &device).unwrap_or_else(|| {
                Err(ModelError::Backend(
                    "model cannot sample on its device".into(),
                ))
            }),
            true => model
                .forward(&batch)
                .map(|rows| rows.into_iter().map(Picked::Logits).collect()),
        };
        let rows = match catch_unwind(AssertUnwindSafe(run)) {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => return Err(format!("model forward failed: {e}")),
            Err(_) => return Err("model forward panicked".into()),
        };
        let expected = chunks.iter().filter(|c| c.need_logits).count();
        if rows.len() != expected {
            return Err(format!(
                "model returned {} logits rows, expected {expected}",
                rows.len()
            ));
        }
        Ok(rows)
    }

    /// Advances every chunk's sequence, samples where logits came back, checks stop conditions.
    fn apply(&mut self, chunks: &[ScheduledChunk], rows: Vec<Picked>) {
        let mut rows = rows.into_iter();
        // One clock read for the step's tokens: they all arrived with the same copy.
        let now = Instant::now();
        for c in chunks {
            let seq = &mut self.scheduler.running[c.seq_idx];
            seq.num_computed = c.start + c.len;
            self.outputs.touch(seq.key.stream);
            if !c.need_logits {
                continue;
            }
            let sampled = match rows.next() {
                Some(Picked::Logits(logits)) => seq.sample_next(&logits),
                Some(Picked::Token(token)) => seq.accept_device_token(token),
                None => continue, // counted in `forward`
            };
            seq.finish = seq.stop_reason(sampled.token_id, &self.limits);
            let out = seq.token_output(&sampled, now);
            self.outputs.push(seq.key.stream, out);
        }
    }

    pub(super) fn fail(&mut self, chunks: &[ScheduledChunk], error: &str) {
        tracing::error!(error, sequences = chunks.len(), "step failed");
        for c in chunks {
            let seq = &mut self.scheduler.running[c.seq_idx];
            let out = seq.fail(error);
            self.outputs.push(seq.key.stream, out);
        }
    }

    fn stats(&self, prefill: usize, decode: usize, step_time_us: u64) -> pb::ShardStats {
        let s = &self.scheduler;
        pb::ShardStats {
            free_kv_blocks: s.pool.num_free() as u32,
            total_kv_blocks: s.pool.num_total() as u32,
            running: s.running.len() as u32,
            waiting: s.waiting.len() as u32,
            preempted_waiting: s.waiting.iter().filter(|q| q.preempted).count() as u32,
            step_prefill_tokens: prefill as u32,
            step_decode_tokens: decode as u32,
            step_time_us,
            preemptions_total: s.preemptions_total,
            prefix_cache_queries_total: s.prefix_cache_queries,
            prefix_cache_hits_total: s.prefix_cache_hits,
        }
    }
}

/// The longest sequence the engine runs: the model's context (`--max-model-len`, else the
/// model's own), capped by what the whole KV cache holds. vLLM refuses to start when the
/// cache cannot hold one sequence of max_model_len tokens; this engine serves the shorter
/// length (it is what `Info` and `/v1/models` report) and says so once, here, at start.
fn max_seq_len(max_context: usize, total_blocks: usize, block_size: usize) -> usize {
    let kv_tokens = total_blocks.saturating_mul(block_size);
    if kv_tokens < max_context {
        tracing::warn!(
            max_model_len = max_context,
            kv_tokens,
            kv_blocks = total_blocks,
            block_size,
            "the KV cache holds {kv_tokens} tokens, too few for one sequence of max_model_len \
             ({max_context} tokens): sequences are capped at {kv_tokens} tokens, the limit this \
             shard reports (vLLM refuses to start here). Give the cache more room \
             (--kv-cache-memory-mb, --num-kv-blocks, --gpu-memory-utilization) or set \
             --max-model-len {kv_tokens} or less"
        );
    }
    max_context.min(kv_tokens)
}

#[cfg(test)]
mod tests {
    use super::max_seq_len;

    #[test]
    fn sequences_are_capped_by_the_kv_cache_not_refused() {
        assert_eq!(max_seq_len(8192, 1000, 16), 8192, "the cache holds 16,000");
        assert_eq!(max_seq_len(8192, 512, 16), 8192, "exactly one sequence");
        assert_eq!(max_seq_len(8192, 100, 16), 1600, "capped, with a warning");
        assert_eq!(max_seq_len(64, usize::MAX, 16), 64, "no overflow");
    }
}
