//! vLLM's `random` dataset: prompts of consecutive token ids from a seeded random offset,
//! input and output lengths drawn uniformly from `[len * range_ratio, len]`.

use pagedserve_router::tokenize::ModelTokenizer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::BenchRequest;
use crate::bench::error::{BenchError, Result};

#[derive(Debug, Clone, Copy)]
pub struct RandomSpec {
    pub input_len: usize,
    pub output_len: usize,
    pub range_ratio: f64,
    pub num_prompts: usize,
    pub seed: u64,
}

/// The inclusive length range `[floor(len * ratio), len]`, as vLLM's `randint` bounds.
pub fn length_range(len: usize, ratio: f64) -> (usize, usize) {
    // Truncation toward zero is what Python's int() does here.
    let low = (len as f64 * ratio) as usize;
    (low.min(len), len)
}

pub fn sample(spec: &RandomSpec, tokenizer: &ModelTokenizer) -> Result<Vec<BenchRequest>> {
    if !(0.0..=1.0).contains(&spec.range_ratio) {
        return Err(BenchError::Usage(format!(
            "--random-range-ratio must be in [0, 1], got {}",
            spec.range_ratio
        )));
    }
    let vocab = u32::try_from(tokenizer.vocab_size())
        .map_err(|_| BenchError::Usage("vocabulary too large".into()))?;
    if vocab == 0 {
        return Err(BenchError::Usage(
            "the tokenizer has an empty vocabulary".into(),
        ));
    }
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let (in_lo, in_hi) = length_range(spec.input_len, spec.range_ratio);
    let (out_lo, out_hi) = length_range(spec.output_len, spec.range_ratio);
    // A hint only: reserving `num_prompts` up front panicked ("capacity overflow") or
    // aborted on a huge count before the first prompt was made.
    let mut out = Vec::with_capacity(spec.num_prompts.min(1 << 16));
    for i in 0..spec.num_prompts {
        let input_len = rng.random_range(in_lo..=in_hi);
        let output_len = rng.random_range(out_lo..=out_hi).max(1);
        let offset = rng.random_range(0..vocab);
        let ids: Vec<u32> = (0..input_len)
            .map(|j| {
                let step = u32::try_from(i + j).unwrap_or(u32::MAX) % vocab;
                (offset % vocab + step) % vocab
            })
            .collect();
        let prompt = tokenizer.decode(&ids, true)?;
        // Decoded ids don't always re-encode to as many tokens; count what is really sent.
        let prompt_len = tokenizer.encode(&prompt, true)?.len();
        out.push(BenchRequest {
            prompt,
            prompt_len,
            output_len,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_the_ratio() {
        assert_eq!(length_range(100, 1.0), (100, 100));
        assert_eq!(length_range(100, 0.5), (50, 100));
        assert_eq!(length_range(7, 0.5), (3, 7), "floor like Python int()");
        assert_eq!(length_range(10, 0.0), (0, 10));
    }
}
