//! Overlapped steps, vLLM's async scheduling: the engine schedules and launches step n+1
//! while the device still runs step n, then collects step n's tokens. The device no longer
//! idles through the host's work between steps (scheduling, outputs, staging: ~2% of a
//! ShareGPT run on an H100).
//!
//! What makes it work without step n's tokens:
//! - a sequence whose token step n draws gets a placeholder (`Sequence::push_placeholder`),
//!   so the scheduler plans its next decode as usual; the launch names the draw the
//!   placeholder stands for, and the device puts the token in place before the step reads it;
//! - a placeholder's token is set when its step is collected (`Sequence::resolve`). Where it
//!   ends the sequence (EOS, a stop token), the row the next step already runs for it is
//!   wasted and its draw dropped. A length limit is known in advance, so no placeholder
//!   follows a sequence's last allowed token;
//! - the prefix cache registers a block only once all its tokens are known.
//!
//! Steps overlap only where the model launches steps ([`CausalLm::can_launch`]) and every
//! queued sequence draws on the device; otherwise (penalties, logprobs, min_p, a CPU model)
//! the engine collects the step in flight and runs synchronous steps.

use super::runner::Engine;
use super::scheduler::ScheduledChunk;
use super::sequence::{SeqKey, Sequence};
use crate::model::{DeviceSampling, SeqChunk};
use crate::sampling::SampledToken;
use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

/// A launched step not yet collected: whose tokens it draws, in draw order.
pub(super) struct InFlight {
    draws: Vec<Draw>,
}

/// One draw of a launched step: the sequence, where it was in `running` at launch (a hint:
/// finished sequences leave before the step is collected), and the position its token takes.
struct Draw {
    key: SeqKey,
    hint: usize,
    pos: usize,
}

impl Engine {
    /// Whether the next step may overlap the one in flight.
    pub(super) fn can_overlap(&self) -> bool {
        let s = &self.scheduler;
        self.model.can_launch() && s.running.iter().chain(&s.waiting).all(|q| q.device_only)
    }

    /// Collects the step in flight, if any, before a synchronous step.
    pub(super) fn drain(&mut self) {
        if let Some(step) = self.in_flight.take() {
            self.collect(step);
            self.scheduler.remove_finished();
        }
    }

    /// Launches `chunks` (placeholders fed by the step in flight) and returns the step to
    /// collect; `None` when the launch failed, which fails its sequences.
    pub(super) fn launch(&mut self, chunks: &[ScheduledChunk]) -> Option<InFlight> {
        let running = &self.scheduler.running;
        let mut feeds = Vec::new();
        let mut params = Vec::new();
        let batch: Vec<SeqChunk<'_>> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let seq = &running[c.seq_idx];
                if seq.pending > 0 && c.start + c.len == seq.tokens.len() {
                    feeds.push((i, seq.feed));
                }
                if c.need_logits {
                    // `can_overlap` checked that every sequence draws on the device.
                    params.push(seq.device_sampling().unwrap_or(DeviceSampling::GREEDY));
                }
                c.view(seq)
            })
            .collect();
        let model = &mut self.model;
        let launched = catch_unwind(AssertUnwindSafe(|| model.launch(&batch, &params, &feeds)));
        let error = match launched {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("model forward failed: {e}")),
            Err(_) => Some("model forward panicked".to_string()),
        };
        if let Some(error) = error {
            self.fail(chunks, &error);
            return None;
        }
        let mut draws = Vec::with_capacity(params.len());
        for c in chunks {
            let seq = &mut self.scheduler.running[c.seq_idx];
            seq.num_computed = c.start + c.len;
            self.outputs.touch(seq.key.stream);
            if c.need_logits {
                let draw = draws.len() as u32;
                draws.push(Draw {
                    key: seq.key,
                    hint: c.seq_idx,
                    pos: seq.tokens.len(),
                });
                seq.push_placeholder(draw, &self.limits);
            }
        }
        self.scheduler.cache_computed_blocks(chunks);
        Some(InFlight { draws })
    }

    /// Waits for `step`'s tokens and gives them to their sequences (those still queued).
    pub(super) fn collect(&mut self, step: InFlight) {
        let model = &mut self.model;
        let tokens = match catch_unwind(AssertUnwindSafe(|| model.collect())) {
            Ok(Ok(tokens)) if tokens.len() == step.draws.len() => tokens,
            Ok(Ok(tokens)) => {
                let n = step.draws.len();
                let error = format!("model returned {} tokens, expected {n}", tokens.len());
                return self.fail_draws(&step.draws, &error);
            }
            Ok(Err(e)) => return self.fail_draws(&step.draws, &format!("model step failed: {e}")),
            Err(_) => return self.fail_draws(&step.draws, "model step panicked"),
        };
        let now = Instant::now();
        let mut index = None;
        let mut finished_waiting = false;
        let s = &mut self.scheduler;
        for (d, &token) in step.draws.iter().zip(&tokens) {
            let Some((seq, waiting)) = find(&mut s.running, &mut s.waiting, d, &mut index) else {
                continue; // cancelled, or finished with the step before
            };
            if seq.finish.is_some() {
                continue;
            }
            let Some(finish) = seq.resolve(d.pos, token, &self.limits) else {
                continue;
            };
            seq.finish = finish;
            finished_waiting |= waiting && finish.is_some();
            seq.cache_computed_blocks(&s.pool);
            let sampled = SampledToken {
                token_id: token,
                logprobs: None,
            };
            let out = seq.token_output(&sampled, now);
            self.outputs.push(seq.key.stream, out);
        }
        if finished_waiting {
            // A preempted sequence whose last draw ended it: it leaves the queue now.
            self.scheduler.remove_where(|q| q.finish.is_some());
        }
    }

    /// A step that failed on the device ends every sequence it drew for.
    fn fail_draws(&mut self, draws: &[Draw], error: &str) {
        tracing::error!(error, sequences = draws.len(), "step failed");
        let mut index = None;
        let s = &mut self.scheduler;
        for d in draws {
            let Some((seq, _)) = find(&mut s.running, &mut s.waiting, d, &mut index) else {
                continue;
            };
            if seq.finish.is_none() {
                let out = seq.fail(error);
                self.outputs.push(seq.key.stream, out);
            }
        }
        self.scheduler.remove_where(|q| q.finish.is_some());
    }
}

/// `d`'s sequence and whether it is waiting (preempted since the launch): at its launch
/// index if it is still there, else through a key index built on the first miss.
fn find<'a>(
    running: &'a mut [Sequence],
    waiting: &'a mut VecDeque<Sequence>,
    d: &Draw,
    index: &mut Option<HashMap<SeqKey, usize>>,
) -> Option<(&'a mut Sequence, bool)> {
    if running.get(d.hint).is_some_and(|s| s.key == d.key) {
        return running.get_mut(d.hint).map(|s| (s, false));
    }
    let index = index.get_or_insert_with(|| {
        running
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key, i))
            .collect()
    });
    if let Some(&i) = index.get(&d.key) {
        return running.get_mut(i).map(|s| (s, false));
    }
    waiting
        .iter_mut()
        .find(|s| s.key == d.key)
        .map(|s| (s, true))
}
