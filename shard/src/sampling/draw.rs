//! One draw from an unnormalized distribution with the request's RNG.
//!
//! A single uniform f64 in [0, 1) is scaled by the total weight and the first token whose
//! running sum exceeds it wins, so a token of weight 0 is never drawn, and the same RNG state
//! over the same weights gives the same token.

use rand::Rng;

use super::fastmath::{exp, lane_sum};
use super::filter::weight;
use super::select::Cand;

/// Tokens per block in `draw_vocab`'s walk.
const WALK_BLOCK: usize = 256;

/// Draws from `cands` (in their order) with weights exp(logit - max).
pub(crate) fn draw_candidates(cands: &[Cand], max: f32, rng: &mut impl Rng) -> u32 {
    let total: f64 = cands.iter().map(|c| weight(c.1, max)).sum();
    let target = rng.random::<f64>() * total;
    let mut cum = 0.0;
    for c in cands {
        cum += weight(c.1, max);
        if cum > target {
            return c.0;
        }
    }
    // Only reachable through rounding in the running sum: take the last drawable token.
    cands
        .iter()
        .rev()
        .find(|c| weight(c.1, max) > 0.0)
        .or(cands.first())
        .map_or(0, |c| c.0)
}

/// Draws a token id from the whole of `work` with weights exp(v - max), overwriting `work`
/// with those weights (the caller no longer needs the logits). The walk skips whole blocks by
/// their vectorized sums and only steps token by token inside the block holding the target.
pub(crate) fn draw_vocab(work: &mut [f32], max: f32, rng: &mut impl Rng) -> u32 {
    for v in work.iter_mut() {
        *v = exp(*v - max);
    }
    let total = lane_sum(work, |w| w);
    let target = rng.random::<f64>() * total;
    let mut cum = 0.0f64;
    for (b, block) in work.chunks(WALK_BLOCK).enumerate() {
        let block_sum = lane_sum(block, |w| w);
        if cum + block_sum <= target {
            cum += block_sum;
            continue;
        }
        for (j, &w) in block.iter().enumerate() {
            cum += f64::from(w);
            if cum > target {
                return (b * WALK_BLOCK + j) as u32;
            }
        }
    }
    work.iter().rposition(|&w| w > 0.0).unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn zero_weight_tokens_are_never_drawn() {
        let mut rng = StdRng::seed_from_u64(5);
        let cands = [(7u32, f32::NEG_INFINITY), (3, 0.0), (9, f32::NEG_INFINITY)];
        for _ in 0..1000 {
            assert_eq!(draw_candidates(&cands, 0.0, &mut rng), 3);
            let mut work = [f32::NEG_INFINITY, f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY];
            assert_eq!(draw_vocab(&mut work, 1.0, &mut rng), 2);
        }
    }

    #[test]
    fn both_draws_agree_on_the_same_rng_state() {
        let work: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let max = work.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let cands: Vec<Cand> = work
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u32, v))
            .collect();
        let (mut a, mut b) = (StdRng::seed_from_u64(9), StdRng::seed_from_u64(9));
        for _ in 0..200 {
            let mut scratch = work.clone();
            assert_eq!(
                draw_vocab(&mut scratch, max, &mut a),
                draw_candidates(&cands, max, &mut b)
            );
        }
    }
}
