//! Repetition, frequency and presence penalties (vLLM semantics) over sparse token counts.
//!
//! A request's history only grows by appending, so the counts are kept between steps and only
//! the new output tokens are counted: O(new tokens) per step plus O(distinct tokens) to apply,
//! never a vocabulary-sized scan. A history that shrank or whose last counted token changed
//! (a different request reusing the sampler) is recounted from scratch.

use std::collections::{HashMap, HashSet};

use super::config::SamplingConfig;

/// Sparse statistics of one request's prompt and output tokens.
#[derive(Debug, Default)]
pub(crate) struct History {
    /// Distinct prompt tokens; only built when the repetition penalty is on.
    prompt_seen: HashSet<u32>,
    prompt_len: usize,
    prompt_last: Option<u32>,
    /// Output token -> occurrences.
    output_counts: HashMap<u32, u32>,
    output_len: usize,
    output_last: Option<u32>,
}

impl History {
    /// Applies `config`'s penalties to `logits` in place: the repetition penalty to tokens seen
    /// in the prompt or the output (logit > 0 → logit / p, else logit · p), then
    /// `- frequency · count` and `- presence` for tokens in the output. Ids outside `logits`
    /// are ignored.
    pub(crate) fn apply(
        &mut self,
        config: &SamplingConfig,
        prompt: &[u32],
        output: &[u32],
        logits: &mut [f32],
    ) {
        let repetition = config.repetition_penalty;
        if repetition != 1.0 {
            self.sync_prompt(prompt);
        }
        self.sync_output(output);
        if repetition != 1.0 {
            for &t in &self.prompt_seen {
                penalize_repetition(logits, t, repetition);
            }
            for &t in self.output_counts.keys() {
                if !self.prompt_seen.contains(&t) {
                    penalize_repetition(logits, t, repetition);
                }
            }
        }
        let (frequency, presence) = (config.frequency_penalty, config.presence_penalty);
        if frequency != 0.0 || presence != 0.0 {
            for (&t, &count) in &self.output_counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    // Two separate subtractions, in vLLM's order, for bit-level agreement.
                    *l -= frequency * count as f32;
                    *l -= presence;
                }
            }
        }
    }

    fn sync_prompt(&mut self, prompt: &[u32]) {
        if prompt.len() == self.prompt_len && prompt.last().copied() == self.prompt_last {
            return;
        }
        self.prompt_seen.clear();
        self.prompt_seen.extend(prompt.iter().copied());
        self.prompt_len = prompt.len();
        self.prompt_last = prompt.last().copied();
    }

    fn sync_output(&mut self, output: &[u32]) {
        let appended = output.len() >= self.output_len
            && (self.output_len == 0
                || output.get(self.output_len - 1) == self.output_last.as_ref());
        if !appended {
            self.output_counts.clear();
            self.output_len = 0;
        }
        for &t in &output[self.output_len..] {
            *self.output_counts.entry(t).or_insert(0) += 1;
        }
        self.output_len = output.len();
        self.output_last = output.last().copied();
    }
}

fn penalize_repetition(logits: &mut [f32], token: u32, penalty: f32) {
    if let Some(l) = logits.get_mut(token as usize) {
        *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(repetition: f32, frequency: f32, presence: f32) -> SamplingConfig {
        SamplingConfig {
            repetition_penalty: repetition,
            frequency_penalty: frequency,
            presence_penalty: presence,
            ..SamplingConfig::greedy()
        }
    }

    fn penalized(c: &SamplingConfig, logits: &[f32], prompt: &[u32], output: &[u32]) -> Vec<f32> {
        let mut out = logits.to_vec();
        History::default().apply(c, prompt, output, &mut out);
        out
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let logits = [2.0, -1.0, 3.0, 0.0, 4.0];
        // Token 0 in the prompt, 1 in the output, 3 (logit 0) in both; 2 and 4 unseen.
        let got = penalized(&config(2.0, 0.0, 0.0), &logits, &[0, 3], &[1, 3, 1]);
        assert_eq!(got, vec![1.0, -2.0, 3.0, 0.0, 4.0]);
        // A penalty below 1 rewards repetition instead.
        let got = penalized(&config(0.5, 0.0, 0.0), &logits, &[0], &[1]);
        assert_eq!(got, vec![4.0, -0.5, 3.0, 0.0, 4.0]);
    }

    #[test]
    fn frequency_and_presence_count_only_the_output() {
        let logits = [1.0, 1.0, 1.0, 1.0];
        // Output: token 1 three times, token 2 once; token 0 only in the prompt.
        let got = penalized(&config(1.0, 0.5, 0.25), &logits, &[0, 0], &[1, 2, 1, 1]);
        assert_eq!(got, vec![1.0, 1.0 - 1.5 - 0.25, 1.0 - 0.5 - 0.25, 1.0]);
        // Negative penalties encourage.
        let got = penalized(&config(1.0, -1.0, -0.5), &logits, &[], &[3, 3]);
        assert_eq!(got, vec![1.0, 1.0, 1.0, 1.0 + 2.0 + 0.5]);
    }

    #[test]
    fn repetition_applies_before_frequency_and_presence() {
        // (4 / 2) - 1·2 - 1 = -1; the other order would give (4 - 3) / 2 = 0.5.
        let got = penalized(&config(2.0, 1.0, 1.0), &[4.0, 0.0], &[], &[0, 0]);
        assert_eq!(got, vec![-1.0, 0.0]);
    }

    #[test]
    fn out_of_range_ids_are_ignored() {
        let got = penalized(&config(2.0, 1.0, 1.0), &[1.0, 1.0], &[7, u32::MAX], &[9, 1]);
        assert_eq!(got, vec![1.0, 1.0 / 2.0 - 1.0 - 1.0]);
    }

    #[test]
    fn incremental_counts_match_a_fresh_count() {
        let c = config(1.3, 0.4, 0.2);
        let logits: Vec<f32> = (0..16).map(|i| i as f32 - 8.0).collect();
        let prompt = [3u32, 5, 5, 9];
        let full = [1u32, 5, 1, 12, 1, 7, 12];
        let mut history = History::default();
        for step in 0..=full.len() {
            let mut got = logits.clone();
            history.apply(&c, &prompt, &full[..step], &mut got);
            assert_eq!(
                got,
                penalized(&c, &logits, &prompt, &full[..step]),
                "step {step}"
            );
        }
        // A shorter or rewritten history is recounted, not added to.
        for output in [&[2u32, 2][..], &[2, 4, 4][..], &[][..]] {
            let mut got = logits.clone();
            history.apply(&c, &[8, 8], output, &mut got);
            assert_eq!(got, penalized(&c, &logits, &[8, 8], output));
        }
    }
}
