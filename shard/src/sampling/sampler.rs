//! [`Sampler`]: one request's sampling state (settings, RNG, penalty counts).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::SampledToken;
use super::config::SamplingConfig;
use super::draw::{draw_candidates, draw_vocab};
use super::fastmath::max_value;
use super::filter::restrict;
use super::logprobs::token_logprobs;
use super::penalties::History;
use super::scratch::{Scratch, with_scratch};
use super::select::{argmax, key};

/// Turns one sequence's logits into its next token, step after step.
///
/// Keep one `Sampler` per request for its whole life: it owns the request's RNG stream and
/// counts the output incrementally (`prompt_ids`/`output_ids` are expected to only grow; a
/// history that shrinks is recounted).
#[derive(Debug)]
pub struct Sampler {
    config: SamplingConfig,
    rng: StdRng,
    history: History,
}

impl Sampler {
    /// `config.seed` `Some(s)` gives a reproducible stream; `None` seeds from OS entropy.
    pub fn new(config: SamplingConfig) -> Self {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => os_seeded_rng(),
        };
        Self {
            config,
            rng,
            history: History::default(),
        }
    }

    pub fn config(&self) -> &SamplingConfig {
        &self.config
    }

    /// Picks the next token from `logits` (one row, vocabulary-sized) given the request's
    /// prompt and the tokens it generated so far. Never panics:
    /// - NaN logits count as -inf (never drawn), +inf as the largest finite value;
    /// - empty logits, or none above -inf, give token 0 (argmax's answer);
    /// - history ids outside the vocabulary are ignored by the penalties.
    pub fn sample(
        &mut self,
        logits: &[f32],
        prompt_ids: &[u32],
        output_ids: &[u32],
    ) -> SampledToken {
        with_scratch(|scratch| {
            let token_id = self.choose(scratch, logits, prompt_ids, output_ids);
            let logprobs = self.config.logprobs.then(|| {
                let top = self.config.top_logprobs as usize;
                token_logprobs(logits, token_id, top, &mut scratch.cands)
            });
            SampledToken { token_id, logprobs }
        })
    }

    fn choose(
        &mut self,
        scratch: &mut Scratch,
        logits: &[f32],
        prompt_ids: &[u32],
        output_ids: &[u32],
    ) -> u32 {
        let config = &self.config;
        let penalties = config.has_penalties();
        if config.is_greedy() && !penalties {
            return argmax(logits);
        }
        let work = &mut scratch.work;
        work.clear();
        if penalties {
            work.extend_from_slice(logits);
            self.history.apply(config, prompt_ids, output_ids, work);
            if config.is_greedy() {
                return argmax(work);
            }
            scale_in_place(work, config.temperature);
        } else {
            // Copy and scale in one (vectorized) pass.
            let t = config.temperature;
            work.resize(logits.len(), 0.0);
            for (w, &v) in work.iter_mut().zip(logits) {
                *w = key(v / t);
            }
        }
        let max = max_value(work);
        if max == f32::NEG_INFINITY {
            return 0;
        }
        if restrict(work, max, config, &mut scratch.cands) {
            draw_candidates(&scratch.cands, max, &mut self.rng)
        } else {
            draw_vocab(work, max, &mut self.rng)
        }
    }
}

/// Divides by the temperature and keys every value (see `select::key`).
fn scale_in_place(work: &mut [f32], temperature: f32) {
    for v in work.iter_mut() {
        *v = key(*v / temperature);
    }
}

/// An RNG from OS entropy; should the OS refuse, from the clock and a process-wide counter, so
/// that concurrent requests still get distinct streams.
fn os_seeded_rng() -> StdRng {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    StdRng::try_from_os_rng().unwrap_or_else(|_| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        StdRng::seed_from_u64(nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    })
}

#[cfg(test)]
#[path = "sampler_tests.rs"]
mod tests;
