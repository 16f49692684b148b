//! Selection over logits in O(V): argmax, top-n without a full sort, and the one total order
//! every ranking here uses (higher value first, ties to the lower token id).

use std::cmp::Ordering;

/// A token id and a (working) logit.
pub(crate) type Cand = (u32, f32);

/// Logit as a rankable number: NaN counts as -inf, +inf as `f32::MAX` (so differences to it stay
/// finite), and -0.0 as +0.0 (so ties behave like `argmax`'s `>`).
#[inline]
pub(crate) fn key(v: f32) -> f32 {
    if v.is_nan() {
        f32::NEG_INFINITY
    } else if v == f32::INFINITY {
        f32::MAX
    } else {
        v + 0.0
    }
}

/// Best-first total order on keyed candidates: value descending, then id ascending.
#[inline]
pub(crate) fn best_first(a: &Cand, b: &Cand) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Index of the largest value, ties to the lowest index, NaN never wins; 0 when `values` is
/// empty or holds nothing above -inf. One pass, no allocation.
pub(crate) fn argmax(values: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in values.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// Writes the `n` best entries of `values` (keyed by [`key`]) into `out`, best first.
///
/// One pass with a buffer of at most ~2n candidates: once the buffer is full it is cut back to
/// the best n (`select_nth_unstable`), and from then on only values strictly above the n-th best
/// enter. Each cut removes n entries for O(n) work, so the whole thing is O(V + n log n).
pub(crate) fn top_n(values: &[f32], n: usize, out: &mut Vec<Cand>) {
    out.clear();
    let n = n.min(values.len());
    if n == 0 {
        return;
    }
    let cap = (2 * n).max(n + 32);
    let mut threshold: Option<f32> = None;
    for (i, &v) in values.iter().enumerate() {
        let v = key(v);
        // A later id loses ties, so only strictly better values can displace the n-th best.
        if threshold.is_some_and(|t| v <= t) {
            continue;
        }
        out.push((i as u32, v));
        if out.len() >= cap {
            threshold = Some(keep_best(out, n));
        }
    }
    if out.len() > n {
        keep_best(out, n);
    }
    out.sort_unstable_by(best_first);
}

/// Cuts `cands` to its best `n` (unordered) and returns the worst value kept. `n` >= 1.
fn keep_best(cands: &mut Vec<Cand>, n: usize) -> f32 {
    let (_, nth, _) = cands.select_nth_unstable_by(n - 1, best_first);
    let worst = nth.1;
    cands.truncate(n);
    worst
}

/// Sorts `cands` just far enough that its best-first prefix reaches `stop`: the prefix is
/// sorted with sizes 64, 256, ... until `reached(sorted_prefix)` returns `Some(len)`, which is
/// then the length kept. O(V) when the answer lies among the first few hundred candidates (the
/// usual case for top-p on LLM logits) and O(V log V) only for very flat distributions.
pub(crate) fn best_prefix_until(
    cands: &mut Vec<Cand>,
    mut reached: impl FnMut(&[Cand]) -> Option<usize>,
) {
    let mut m = 64usize;
    loop {
        if m >= cands.len() {
            cands.sort_unstable_by(best_first);
            let keep = reached(cands).unwrap_or(cands.len());
            cands.truncate(keep.max(1));
            return;
        }
        cands.select_nth_unstable_by(m - 1, best_first);
        cands[..m].sort_unstable_by(best_first);
        if let Some(keep) = reached(&cands[..m]) {
            cands.truncate(keep.max(1));
            return;
        }
        m = m.saturating_mul(4);
    }
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

    #[test]
    fn best_prefix_until_stops_at_the_requested_length() {
        let mut rng = StdRng::seed_from_u64(2);
        let values: Vec<f32> = (0..10_000).map(|_| rng.random::<f32>()).collect();
        let want = sorted(&values);
        for stop in [1usize, 10, 64, 65, 300, 9_999] {
            let mut cands: Vec<Cand> = values
                .iter()
                .enumerate()
                .map(|(i, &v)| (i as u32, v))
                .collect();
            best_prefix_until(&mut cands, |p| (p.len() >= stop).then_some(stop));
            assert_eq!(cands, want[..stop], "stop {stop}");
        }
        // Never reached: everything stays, sorted.
        let mut cands: Vec<Cand> = want.iter().rev().copied().collect();
        best_prefix_until(&mut cands, |_| None);
        assert_eq!(cands, want);
    }
}
