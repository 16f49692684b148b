//! [`Sampler`]: one request's sampling state (settings, RNG, penalty counts, scratch buffers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::config::SamplingConfig;
use super::draw::{draw_candidates, draw_vocab};
use super::fastmath::max_value;
use super::filter::restrict;
use super::logprobs::token_logprobs;
use super::penalties::History;
use super::select::{Cand, argmax, key};
use super::{SampledToken, TokenLogprobs};

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
    /// Penalized, scaled logits; reused between steps.
    work: Vec<f32>,
    /// Candidate tokens after top-k / top-p / min-p, or the top logprobs; reused.
    cands: Vec<Cand>,
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
            work: Vec::new(),
            cands: Vec::new(),
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
        let token_id = self.choose(logits, prompt_ids, output_ids);
        let logprobs = self
            .config
            .logprobs
            .then(|| self.logprobs(logits, token_id));
        SampledToken { token_id, logprobs }
    }

    fn logprobs(&mut self, logits: &[f32], token_id: u32) -> TokenLogprobs {
        let top = self.config.top_logprobs as usize;
        token_logprobs(logits, token_id, top, &mut self.cands)
    }

    fn choose(&mut self, logits: &[f32], prompt_ids: &[u32], output_ids: &[u32]) -> u32 {
        let penalties = self.config.has_penalties();
        if self.config.is_greedy() && !penalties {
            return argmax(logits);
        }
        self.work.clear();
        self.work.extend_from_slice(logits);
        if penalties {
            self.history
                .apply(&self.config, prompt_ids, output_ids, &mut self.work);
        }
        if self.config.is_greedy() {
            return argmax(&self.work);
        }
        let max = scale(&mut self.work, self.config.temperature);
        if max == f32::NEG_INFINITY {
            return 0;
        }
        if restrict(&self.work, max, &self.config, &mut self.cands) {
            draw_candidates(&self.cands, max, &mut self.rng)
        } else {
            draw_vocab(&mut self.work, max, &mut self.rng)
        }
    }
}

/// Divides by the temperature and keys every value (see `select::key`); returns the maximum,
/// -inf when `work` is empty or holds nothing above -inf.
fn scale(work: &mut [f32], temperature: f32) -> f32 {
    for v in work.iter_mut() {
        *v = key(*v / temperature);
    }
    max_value(work)
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
