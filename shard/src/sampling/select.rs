//! Selection over logits in O(V): argmax, top-n without a full sort, and the one total order
//! every ranking here uses (higher value first, ties to the lower token id).

use std::cmp::Ordering;

use super::fastmath::max_value;

/// A token id and a (working) logit.
pub(crate) type Cand = (u32, f32);

/// Logit as a rankable number: NaN counts as -inf, +inf as `f32::MAX` (so differences to it stay
/// finite), and -0.0 as +0.0 (so ties behave like `argmax`'s `>`).
/// Written as selects so that loops over it vectorize.
#[inline]
pub(crate) fn key(v: f32) -> f32 {
    let v = if v.is_nan() { f32::NEG_INFINITY } else { v };
    (if v > f32::MAX { f32::MAX } else { v }) + 0.0
}

/// Best-first total order on keyed candidates: value descending, then id ascending.
#[inline]
pub(crate) fn best_first(a: &Cand, b: &Cand) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Index of the largest value, ties to the lowest index, NaN never wins; 0 when `values` is
/// empty or holds nothing above -inf. One vectorized pass of per-block maxima, then a scan of
/// the first block holding the maximum (an index-tracking loop does not vectorize).
pub(crate) fn argmax(values: &[f32]) -> u32 {
    let mut best = f32::NEG_INFINITY;
    let mut best_block = 0;
    for (b, block) in values.chunks(ARGMAX_BLOCK).enumerate() {
        let m = max_value(block);
        if m > best {
            best = m;
            best_block = b;
        }
    }
    if best == f32::NEG_INFINITY {
        return 0;
    }
    let start = best_block * ARGMAX_BLOCK;
    let offset = values[start..].iter().position(|&v| v == best).unwrap_or(0);
    (start + offset) as u32
}

/// Values per block in `argmax`.
const ARGMAX_BLOCK: usize = 256;

/// Writes the `n` best entries of `values` (keyed by [`key`]) into `out`, best first.
///
/// First a floor: the n-th largest of the per-block maxima. n blocks reach it, so the top n
/// all do, and blocks below it are skipped whole. Then one pass over the rest with a buffer
/// of at most ~2n candidates: once full it is cut back to the best n (`select_nth_unstable`),
/// and from then on only values strictly above the n-th best enter. Each cut removes n entries
/// for O(n) work, so the whole thing is O(V + n log n), and ~one vectorized pass when n is
/// small next to V/64.
pub(crate) fn top_n(values: &[f32], n: usize, out: &mut Vec<Cand>) {
    out.clear();
    let n = n.min(values.len());
    if n == 0 {
        return;
    }
    let block_max: Vec<f32> = values.chunks(SKIP_CHUNK).map(max_value).collect();
    let floor = nth_largest(&block_max, n);
    let cap = (2 * n).max(n + 32);
    let mut threshold: Option<f32> = None;
    for ((c, chunk), &chunk_max) in values.chunks(SKIP_CHUNK).enumerate().zip(&block_max) {
        if chunk_max < floor || threshold.is_some_and(|t| chunk_max <= t) {
            continue;
        }
        for (j, &raw) in chunk.iter().enumerate() {
            // A later id loses ties, so only strictly better values can displace the n-th
            // best. NaN ranks as -inf: only needed while nothing bounds the top n.
            let skip = if raw.is_nan() {
                threshold.is_some() || floor > f32::NEG_INFINITY
            } else {
                raw < floor || threshold.is_some_and(|t| raw <= t)
            };
            if skip {
                continue;
            }
            out.push(((c * SKIP_CHUNK + j) as u32, key(raw)));
            if out.len() >= cap {
                threshold = Some(keep_best(out, n));
            }
        }
    }
    if out.len() > n {
        keep_best(out, n);
    }
    out.sort_unstable_by(best_first);
}

/// The n-th largest of `maxima` (NaN-free); -inf when there are fewer than n, which disables
/// the floor (and lets NaN, which ranks as -inf, fill the top n when nothing else can).
fn nth_largest(maxima: &[f32], n: usize) -> f32 {
    if maxima.len() < n {
        return f32::NEG_INFINITY;
    }
    let mut sorted = maxima.to_vec();
    let (_, nth, _) = sorted.select_nth_unstable_by(n - 1, |a, b| b.total_cmp(a));
    *nth
}

/// Appends `(id, value)` for every value >= `cutoff` to `out`, in id order. Blocks whose
/// vectorized max is below the cutoff are skipped whole, so a selective cutoff costs little more
/// than one max pass. NaN never passes.
pub(crate) fn collect_at_least(values: &[f32], cutoff: f32, out: &mut Vec<Cand>) {
    for (b, block) in values.chunks(SKIP_CHUNK).enumerate() {
        if max_value(block) < cutoff {
            continue;
        }
        for (j, &v) in block.iter().enumerate() {
            if v >= cutoff {
                out.push(((b * SKIP_CHUNK + j) as u32, v));
            }
        }
    }
}

/// Values per block that `top_n` and `collect_at_least` can skip at once.
const SKIP_CHUNK: usize = 64;

/// Cuts `cands` to its best `n` (unordered) and returns the worst value kept. `n` >= 1.
fn keep_best(cands: &mut Vec<Cand>, n: usize) -> f32 {
    let (_, nth, _) = cands.select_nth_unstable_by(n - 1, best_first);
    let worst = nth.1;
    cands.truncate(n);
    worst
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Reference: full sort with the same order.
    fn sorted(values: &[f32]) -> Vec<Cand> {
        let mut all: Vec<Cand> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u32, key(v)))
            .collect();
        all.sort_by(best_first);
        all
    }

    #[test]
    fn argmax_takes_lowest_index_on_ties_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, f32::NAN, 0.7]), 3);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 4]), 0);
        assert_eq!(argmax(&[f32::NAN; 3]), 0);
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax(&[-5.0, f32::INFINITY, f32::INFINITY]), 1);
        // Across blocks: the first of equal maxima in different blocks wins.
        let mut long = vec![0.0f32; 2000];
        long[1500] = 4.0;
        long[300] = 4.0;
        long[299] = f32::NAN;
        assert_eq!(argmax(&long), 300);
        long[1999] = 4.5;
        assert_eq!(argmax(&long), 1999);
    }

    #[test]
    fn top_n_matches_a_full_sort() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut out = Vec::new();
        for len in [1usize, 5, 100, 1000, 5000] {
            // Coarse values force many ties.
            let values: Vec<f32> = (0..len)
                .map(|_| (rng.random_range(0..50) as f32) / 4.0)
                .collect();
            let want = sorted(&values);
            for n in [1usize, 3, 20, 50, 64, 700, len + 5] {
                top_n(&values, n, &mut out);
                assert_eq!(out, want[..n.min(len)], "len {len} n {n}");
            }
        }
    }

    #[test]
    fn collect_at_least_matches_a_filter() {
        let mut rng = StdRng::seed_from_u64(6);
        let mut values: Vec<f32> = (0..3000).map(|_| rng.random::<f32>()).collect();
        values[17] = f32::NAN;
        values[2999] = f32::INFINITY;
        for cutoff in [0.0f32, 0.5, 0.999, 2.0, f32::NEG_INFINITY] {
            let mut got = vec![(9, 9.0)];
            collect_at_least(&values, cutoff, &mut got);
            let want = values.iter().enumerate().filter(|(_, v)| **v >= cutoff);
            let want: Vec<Cand> = want.map(|(i, &v)| (i as u32, v)).collect();
            assert_eq!(got[0], (9, 9.0), "appends, keeps what was there");
            assert_eq!(got[1..], want[..], "cutoff {cutoff}");
        }
    }

    #[test]
    fn top_n_with_nan_and_infinities_across_many_blocks() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut out = Vec::new();
        for fill in [f32::NAN, f32::NEG_INFINITY, 0.0] {
            let mut values = vec![fill; 5000];
            for _ in 0..6 {
                values[rng.random_range(0..5000)] = rng.random::<f32>();
            }
            values[4321] = f32::INFINITY;
            for n in [1usize, 3, 10, 100] {
                top_n(&values, n, &mut out);
                assert_eq!(out, sorted(&values)[..n], "fill {fill} n {n}");
            }
        }
    }

    #[test]
    fn top_n_worst_case_ascending_input() {
        let values: Vec<f32> = (0..3000).map(|i| i as f32).collect();
        let mut out = Vec::new();
        top_n(&values, 10, &mut out);
        let ids: Vec<u32> = out.iter().map(|c| c.0).collect();
        assert_eq!(ids, (2990..3000).rev().collect::<Vec<u32>>());
    }

    #[test]
    fn top_n_ranks_nan_last_and_inf_first() {
        let values = [f32::NAN, 1.0, f32::INFINITY, -0.0, 0.0, f32::NEG_INFINITY];
        let mut out = Vec::new();
        top_n(&values, 6, &mut out);
        let ids: Vec<u32> = out.iter().map(|c| c.0).collect();
        // -0.0 and 0.0 tie (lower id first); NaN ranks with -inf, lower id first.
        assert_eq!(ids, vec![2, 1, 3, 4, 0, 5]);
        assert_eq!(out[0].1, f32::MAX);
        top_n(&[], 3, &mut out);
        assert!(out.is_empty());
    }
}
