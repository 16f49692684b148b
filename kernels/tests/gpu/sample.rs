//! Device sampling: greedy = argmax exactly; draws stay inside the top-k / top-p set; the
//! empirical distribution matches the renormalized one; equal (seed, counter), equal token.

use rand::Rng;

use crate::common::*;

struct Params {
    temperature: Vec<f32>,
    top_k: Vec<i32>,
    top_p: Vec<f32>,
    seeds: Vec<u64>,
    counters: Vec<u64>,
}

fn run(g: &Gpu, logits: &[f32], p: &Params) -> Result<Vec<u32>, Box<dyn std::error::Error>> {
    let b = p.temperature.len();
    let mut d_out = up(g, &vec![POISON_U32; b])?;
    let d_logits = up(g, logits)?;
    let (t, k, tp) = (up(g, &p.temperature)?, up(g, &p.top_k)?, up(g, &p.top_p)?);
    let (s, c) = (up(g, &p.seeds)?, up(g, &p.counters)?);
    g.k.sample(
        &g.stream,
        &mut d_out.as_view_mut(),
        &d_logits.as_view(),
        &t.as_view(),
        &k.as_view(),
        &tp.as_view(),
        &s.as_view(),
        &c.as_view(),
    )?;
    down(g, &d_out)
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut seen = false;
    for (i, &x) in row.iter().enumerate() {
        if !x.is_nan() && (!seen || x > row[best]) {
            best = i;
            seen = true;
        }
    }
    best as u32
}

/// Tokens a draw may return (a superset by a hair at the boundaries, for f32 vs f64 rounding).
/// Both filters go by value, as the kernel does: top-k keeps every token tied with the k-th,
/// and top-p keeps a token when the tokens strictly more likely than it weigh less than p, so
/// tokens tied at the boundary are all in (p = 0 keeps every token tied for the maximum).
fn allowed(row: &[f32], t: f32, k: i32, p: f32) -> Vec<bool> {
    let z: Vec<f64> = row
        .iter()
        .map(|&x| {
            if x.is_nan() {
                f64::NEG_INFINITY
            } else {
                x as f64 / t as f64
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..z.len()).collect();
    order.sort_by(|&a, &b| z[b].total_cmp(&z[a]));
    let kth = if k > 0 && (k as usize) < z.len() {
        z[order[k as usize - 1]] - 1e-5
    } else {
        f64::NEG_INFINITY
    };
    let m = z[order[0]];
    let kept: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| z[i] >= kth && z[i] > f64::NEG_INFINITY)
        .collect();
    let total: f64 = kept.iter().map(|&i| (z[i] - m).exp()).sum();
    let mut ok = vec![false; z.len()];
    // `above`: the mass of the tokens strictly more likely than the current one (ties, up to
    // f32 rounding of the scaled logits, count as one value).
    let (mut cum, mut above) = (0.0, 0.0);
    let mut level = kept.first().map_or(0.0, |&i| z[i]);
    for &i in &kept {
        if z[i] < level - 1.2e-7 * level.abs() {
            above = cum;
            level = z[i];
        }
        // The most likely tokens are always kept.
        if p < 1.0 && above > 0.0 && above >= p as f64 * total * (1.0 + 1e-4) {
            break;
        }
        ok[i] = true;
        cum += (z[i] - m).exp();
    }
    ok
}

#[test]
fn reference_keeps_ties_at_the_top_p_boundary() {
    // Tokens 1 and 3 tie for the maximum (the seed 8897753456927848554 failure: row 49 had
    // two equal maxima and the kernel drew the second); 4 and 6 tie below them.
    let row = [0.5f32, 3.0, f32::NAN, 3.0, 1.0, -2.0, 1.0];
    let set = |t, k, p| -> Vec<usize> {
        let ok = allowed(&row, t, k, p);
        (0..row.len()).filter(|&i| ok[i]).collect()
    };
    assert_eq!(set(0.7, 0, 0.0), [1, 3]);
    assert_eq!(set(0.7, 1, 1.0), [1, 3]);
    assert_eq!(set(1.0, 5, 0.0), [1, 3]);
    // Mass of {1, 3}: 2e^3 / (2e^3 + 2e + e^0.5 + e^-2) = 0.85; 0.9 ends inside the 4/6 tie.
    assert_eq!(set(1.0, 0, 0.9), [1, 3, 4, 6]);
    assert_eq!(set(1.0, 0, 0.8), [1, 3]);
    assert_eq!(set(1.0, 0, 1.0), [0, 1, 3, 4, 5, 6]);
}

#[test]
fn greedy_is_argmax_with_lowest_index_ties_and_no_nan() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("sample greedy");
    for vocab in [50_000usize, 128_256, 7] {
        let b = 5;
        let mut logits = rand_vec(&mut rng, b * vocab, -10.0, 10.0);
        // Row 1: a tie for the maximum; row 2: NaNs, one where the maximum would be.
        let (i, j) = (vocab / 3, vocab / 2);
        logits[vocab + i] = 20.0;
        logits[vocab + j] = 20.0;
        logits[2 * vocab + 3] = 30.0;
        for x in logits[2 * vocab..3 * vocab].iter_mut().step_by(3) {
            *x = f32::NAN;
        }
        let params = Params {
            temperature: vec![0.0, 0.0, 1e-6, 0.0, 0.0],
            top_k: vec![0, 5, 0, 1, 0],
            top_p: vec![1.0, 0.5, 1.0, 1.0, 0.9],
            seeds: (0..b as u64).collect(),
            counters: vec![3; b],
        };
        let out = run(g, &logits, &params)?;
        for r in 0..b {
            assert_eq!(
                out[r],
                argmax(&logits[r * vocab..(r + 1) * vocab]),
                "vocab {vocab} row {r}"
            );
        }
        assert_eq!(out[1], i as u32, "ties go to the lowest index");
    }
    Ok(())
}

#[test]
fn draws_stay_in_top_k_top_p_set_and_repeat_for_equal_seeds() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("sample top-k/top-p");
    let (b, vocab) = (96usize, 32_000usize);
    let mut logits = rand_vec(&mut rng, b * vocab, -8.0, 8.0);
    for x in logits.iter_mut().step_by(97) {
        *x = f32::NAN;
    }
    let ks = [0, 1, 5, 50, 1000];
    let ps = [1.0, 0.95, 0.8, 0.3, 0.0];
    let params = Params {
        temperature: (0..b).map(|_| rng.random_range(0.3..1.5)).collect(),
        top_k: (0..b).map(|i| ks[i % ks.len()]).collect(),
        top_p: (0..b).map(|i| ps[(i / ks.len()) % ps.len()]).collect(),
        seeds: (0..b).map(|_| rng.random()).collect(),
        counters: (0..b).map(|_| rng.random_range(0..1000)).collect(),
    };
    let out = run(g, &logits, &params)?;
    for r in 0..b {
        let row = &logits[r * vocab..(r + 1) * vocab];
        let ok = allowed(row, params.temperature[r], params.top_k[r], params.top_p[r]);
        let tok = out[r] as usize;
        assert!(
            tok < vocab && ok[tok],
            "row {r} (k {}, p {}): token {tok} outside the allowed set",
            params.top_k[r],
            params.top_p[r]
        );
        assert!(!row[tok].is_nan(), "row {r}: drew a NaN logit");
        if params.top_k[r] == 1 || params.top_p[r] == 0.0 {
            // Not necessarily the argmax's index: every token tied for the maximum is kept.
            assert_eq!(
                row[tok],
                row[argmax(row) as usize],
                "row {r}: k = 1 or p = 0 keeps only the most likely tokens"
            );
        }
    }
    assert_eq!(
        out,
        run(g, &logits, &params)?,
        "equal (seed, counter) give equal tokens"
    );
    Ok(())
}

#[test]
fn ties_at_the_top_and_at_the_top_p_boundary_are_all_kept() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    // A fixed row with two equal maxima (tokens 1 and 3, as in the seed 8897753456927848554
    // failure) and a tie (4 and 6) where top-p 0.9 ends; the rest is filler below them.
    let vocab = 4096usize;
    let mut row: Vec<f32> = (0..vocab)
        .map(|i| -20.0 - (i % 251) as f32 / 64.0)
        .collect();
    row[..7].copy_from_slice(&[0.5, 3.0, f32::NAN, 3.0, 1.0, -2.0, 1.0]);
    let draws = 2000usize;
    for (temp, k, p) in [
        (0.7f32, 0i32, 0.0f32),
        (0.7, 1, 1.0),
        (1.3, 1, 0.5),
        (1.0, 5, 0.0),
        (1.0, 1000, 0.0),
        (1.0, 0, 0.9),
        (1.0, 50, 0.9),
    ] {
        let ok = allowed(&row, temp, k, p);
        let want: Vec<usize> = (0..vocab).filter(|&i| ok[i]).collect();
        assert!(
            want == [1, 3] || want == [1, 3, 4, 6],
            "t {temp} k {k} p {p}: {want:?}"
        );
        let params = Params {
            temperature: vec![temp; draws],
            top_k: vec![k; draws],
            top_p: vec![p; draws],
            seeds: vec![77; draws],
            counters: (0..draws as u64).collect(),
        };
        let logits: Vec<f32> = (0..draws).flat_map(|_| row.iter().copied()).collect();
        let out = run(g, &logits, &params)?;
        let mut counts = vec![0usize; vocab];
        for &t in &out {
            assert!(
                (t as usize) < vocab && ok[t as usize],
                "t {temp} k {k} p {p}: token {t} outside {want:?}"
            );
            counts[t as usize] += 1;
        }
        for &i in &want {
            assert!(
                counts[i] > 0,
                "t {temp} k {k} p {p}: tied token {i} never drawn ({counts:?})",
                counts = &counts[..7]
            );
        }
    }
    Ok(())
}

/// The renormalized distribution after temperature, top-k (k > 0) and top-p (p < 1), in f64.
fn expected(logits_row: &[f32], temp: f32, k: usize, p: f32) -> Vec<f64> {
    let z: Vec<f64> = logits_row
        .iter()
        .map(|&x| {
            if x.is_nan() {
                f64::NEG_INFINITY
            } else {
                x as f64 / temp as f64
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..z.len()).filter(|&i| z[i].is_finite()).collect();
    order.sort_by(|&a, &b| z[b].total_cmp(&z[a]));
    if k > 0 {
        order.truncate(k);
    }
    let w: Vec<f64> = order.iter().map(|&i| z[i].exp()).collect();
    let total: f64 = w.iter().sum();
    let mut keep = order.len();
    if p < 1.0 {
        let (mut cum, mut n) = (0.0, 0);
        while cum < p as f64 * total {
            cum += w[n];
            n += 1;
        }
        let before = cum - w[n - 1];
        assert!(
            (cum / total - p as f64).abs() > 0.01 && (before / total - p as f64).abs() > 0.01,
            "test logits too close to the top-p boundary"
        );
        keep = n;
    }
    let kept: f64 = w[..keep].iter().sum();
    let mut want = vec![0.0; z.len()];
    for (n, &i) in order.iter().take(keep).enumerate() {
        want[i] = w[n] / kept;
    }
    want
}

#[test]
fn frequencies_match_the_renormalized_distribution() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let logits_row = [2.0f32, 1.4, 1.0, 0.5, 0.1, -0.6, 3.0, f32::NAN, -1.0, 0.8];
    // Both filters (bisection for k, rejection for p), top-p alone, top-k alone, neither.
    for (temp, k, p) in [
        (0.8f32, 8usize, 0.9f32),
        (1.0, 0, 0.8),
        (0.7, 4, 1.0),
        (1.3, 0, 1.0),
    ] {
        let want = expected(&logits_row, temp, k, p);
        let draws = 40_000usize;
        let params = Params {
            temperature: vec![temp; draws],
            top_k: vec![k as i32; draws],
            top_p: vec![p; draws],
            seeds: vec![12345; draws],
            counters: (0..draws as u64).collect(),
        };
        let logits: Vec<f32> = (0..draws).flat_map(|_| logits_row).collect();
        let out = run(g, &logits, &params)?;
        let mut counts = vec![0usize; logits_row.len()];
        for &t in &out {
            counts[t as usize] += 1;
        }
        for (i, (&c, &pw)) in counts.iter().zip(&want).enumerate() {
            let f = c as f64 / draws as f64;
            // 6 standard errors: a false alarm has probability ~1e-9 per token.
            let tol = 6.0 * (pw * (1.0 - pw) / draws as f64).sqrt() + 1e-9;
            eprintln!("t {temp} k {k} p {p} token {i}: frequency {f:.4}, expected {pw:.4}");
            assert!(
                (f - pw).abs() <= tol,
                "t {temp} k {k} p {p} token {i}: frequency {f}, expected {pw} (tol {tol})"
            );
        }
        let mut other = params;
        other.seeds = vec![999; draws];
        let out2 = run(g, &logits, &other)?;
        assert!(
            out.iter().zip(&out2).filter(|(a, b)| a != b).count() > draws / 10,
            "another seed gives other draws"
        );
    }
    Ok(())
}

#[test]
fn top_k_candidates_and_their_fallback_stay_in_the_set() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("sample top-k candidates");
    // Per vocabulary: rows of distinct values (candidates in shared memory), rows of three
    // values (ties at the k-th value overflow the candidates: the general path), rows of NaN
    // with a few finite values, an all-NaN row; odd vocabularies take the unaligned loads.
    for vocab in [128_256usize, 4097, 7] {
        let kinds = 4;
        let ks = [1, 3, 50, 1024];
        let ps = [1.0f32, 0.9];
        let b = kinds * ks.len() * ps.len();
        let mut logits = rand_vec(&mut rng, b * vocab, -8.0, 8.0);
        let (mut top_k, mut top_p) = (Vec::new(), Vec::new());
        for r in 0..b {
            let row = &mut logits[r * vocab..(r + 1) * vocab];
            match r % kinds {
                1 => row.iter_mut().for_each(|x| *x = (*x * 0.2).round()),
                2 => row
                    .iter_mut()
                    .enumerate()
                    .filter(|(i, _)| i % 5 != 1)
                    .for_each(|(_, x)| *x = f32::NAN),
                3 => row.iter_mut().for_each(|x| *x = f32::NAN),
                _ => {}
            }
            top_k.push(ks[(r / kinds) % ks.len()]);
            top_p.push(ps[r / (kinds * ks.len())]);
        }
        let params = Params {
            temperature: (0..b).map(|_| rng.random_range(0.5..1.5)).collect(),
            top_k,
            top_p,
            seeds: (0..b).map(|_| rng.random()).collect(),
            counters: (0..b).map(|_| rng.random_range(0..1000)).collect(),
        };
        let out = run(g, &logits, &params)?;
        for r in 0..b {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let tok = out[r] as usize;
            let (k, p) = (params.top_k[r], params.top_p[r]);
            if row.iter().all(|x| x.is_nan()) {
                assert_eq!(
                    tok, 0,
                    "vocab {vocab} row {r}: an all-NaN row gives token 0"
                );
                continue;
            }
            let ok = allowed(row, params.temperature[r], k, p);
            assert!(
                tok < vocab && ok[tok] && !row[tok].is_nan(),
                "vocab {vocab} row {r} (k {k}, p {p}): token {tok} outside the allowed set"
            );
        }
        assert_eq!(out, run(g, &logits, &params)?, "vocab {vocab}: equal draws");
    }
    Ok(())
}

/// Top-p alone on a 32,000-token row whose 4 top tokens hold ~96% of the mass and the other
/// tokens a flat ~4%: the nucleus lies inside the top-1,024 candidates, so the kernel takes its
/// candidate path, whose target must be p times the whole row's mass. (p times the candidates'
/// mass would keep 2 tokens here instead of 3: the frequencies tell the two apart.)
#[test]
fn top_p_alone_through_candidates_matches_the_renormalized_distribution() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("sample top-p candidates");
    let vocab = 32_000usize;
    let mut row = rand_vec(&mut rng, vocab, -0.5, 0.5);
    // Masses ~0.60, 0.20, 0.10, 0.06 of the row; the flat rest ~0.04.
    for (i, z) in [
        (17usize, 13.12f32),
        (9_001, 12.02),
        (20_000, 11.33),
        (31_999, 10.82),
    ] {
        row[i] = z;
    }
    let (temp, p) = (1.0f32, 0.82f32);
    let want = expected(&row, temp, 0, p);
    let kept = want.iter().filter(|&&w| w > 0.0).count();
    assert_eq!(kept, 3, "the test row's nucleus holds {kept} tokens, not 3");
    let draws = 4_000usize;
    let params = Params {
        temperature: vec![temp; draws],
        top_k: vec![0; draws],
        top_p: vec![p; draws],
        seeds: vec![rng.random(); draws],
        counters: (0..draws as u64).collect(),
    };
    let logits: Vec<f32> = (0..draws).flat_map(|_| row.iter().copied()).collect();
    let out = run(g, &logits, &params)?;
    let mut counts = vec![0usize; vocab];
    for &t in &out {
        counts[t as usize] += 1;
    }
    for (i, (&c, &pw)) in counts.iter().zip(&want).enumerate() {
        let f = c as f64 / draws as f64;
        let tol = 6.0 * (pw * (1.0 - pw) / draws as f64).sqrt() + 1e-9;
        if pw > 0.0 {
            eprintln!("top-p {p} alone, token {i}: frequency {f:.4}, expected {pw:.4}");
        }
        assert!(
            (f - pw).abs() <= tol,
            "top-p {p} alone, token {i}: frequency {f}, expected {pw} (tol {tol})"
        );
    }
    Ok(())
}

/// Overlapped steps: fed rows take their draw, every other row keeps its token, and pairs
/// out of either buffer are skipped.
#[test]
fn feed_tokens_puts_draws_in_place() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("feed_tokens");
    for (rows, num_draws, n) in [(7, 3, 2), (600, 384, 300), (1000, 1024, 1000)] {
        let tokens: Vec<u32> = (0..rows).map(|_| rng.random_range(0..128_000)).collect();
        let draws: Vec<u32> = (0..num_draws)
            .map(|_| rng.random_range(0..128_000))
            .collect();
        // Distinct rows, in a random order, each with a random draw.
        let mut order: Vec<u32> = (0..rows as u32).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let mut feeds: Vec<u32> = order[..n]
            .iter()
            .flat_map(|&r| [r, rng.random_range(0..num_draws as u32)])
            .collect();
        feeds[0] = rows as u32; // row out of range
        feeds[3] = num_draws as u32 + 9; // draw out of range
        let mut want = tokens.clone();
        for p in feeds.chunks(2) {
            if (p[0] as usize) < rows && (p[1] as usize) < num_draws {
                want[p[0] as usize] = draws[p[1] as usize];
            }
        }
        let (mut d_tokens, d_draws, d_feeds) = (up(g, &tokens)?, up(g, &draws)?, up(g, &feeds)?);
        g.k.feed_tokens(
            &g.stream,
            &mut d_tokens.as_view_mut(),
            &d_draws.as_view(),
            &d_feeds.as_view(),
            n,
        )?;
        assert_eq!(down(g, &d_tokens)?, want, "{rows} rows, {n} fed");
        assert!(
            g.k.feed_tokens(
                &g.stream,
                &mut d_tokens.as_view_mut(),
                &d_draws.as_view(),
                &d_feeds.as_view(),
                n + 1,
            )
            .is_err(),
            "more pairs than feed words"
        );
    }
    Ok(())
}
