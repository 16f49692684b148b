//! Micro benchmark of the sampler: µs per `sample` call on a 49,152-token vocabulary.
//!
//! `cargo run -p pagedserve-shard --example sampling_bench` (the shard crate is built at
//! opt-level 3 even in the dev profile; add `--release` for release numbers).
//! Two synthetic logit shapes: "peaked" (N(0, 2) plus a head of 20 tokens boosted by 8..18, so
//! a few tokens hold most of the mass, like an LLM mid-sentence) and "flat" (N(0, 3) plus 5
//! tokens boosted by 12: the bulk holds most of the mass, the worst case for top-p).

use std::hint::black_box;
use std::time::Instant;

use pagedserve_shard::sampling::{Sampler, SamplingConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const VOCAB: usize = 49_152;
const ROWS: usize = 16;
const ITERS: usize = 400;
const ROUNDS: usize = 10;

fn gaussian(rng: &mut StdRng) -> f32 {
    // Box-Muller; 1 - u keeps ln's argument in (0, 1].
    let (u, v): (f32, f32) = (rng.random(), rng.random());
    (-2.0 * (1.0 - u).ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

fn logit_rows(rng: &mut StdRng, sigma: f32, head: usize, boost: (f32, f32)) -> Vec<Vec<f32>> {
    (0..ROWS)
        .map(|_| {
            let mut row: Vec<f32> = (0..VOCAB).map(|_| sigma * gaussian(rng)).collect();
            for _ in 0..head {
                let i = rng.random_range(0..VOCAB);
                row[i] += rng.random_range(boost.0..=boost.1);
            }
            row
        })
        .collect()
}

struct Case<'a> {
    name: &'a str,
    config: SamplingConfig,
    prompt: &'a [u32],
    output: &'a [u32],
}

/// Best of `ROUNDS` rounds: the least disturbed by other work on a shared machine.
fn bench(shape: &str, case: Case, rows: &[Vec<f32>]) {
    let mut sampler = Sampler::new(case.config);
    for row in rows {
        black_box(sampler.sample(row, case.prompt, case.output));
    }
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for i in 0..ITERS {
            let row = black_box(&rows[i % rows.len()]);
            black_box(sampler.sample(row, case.prompt, case.output));
        }
        best = best.min(start.elapsed().as_secs_f64() * 1e6 / ITERS as f64);
    }
    println!("{shape:<7} {:<44} {best:>8.1} µs/sample", case.name);
}

fn main() {
    let mut rng = StdRng::seed_from_u64(0);
    let peaked = logit_rows(&mut rng, 2.0, 20, (8.0, 18.0));
    let flat = logit_rows(&mut rng, 3.0, 5, (12.0, 12.0));
    let prompt: Vec<u32> = (0..512)
        .map(|_| rng.random_range(0..VOCAB as u32))
        .collect();
    let output: Vec<u32> = (0..256)
        .map(|_| rng.random_range(0..VOCAB as u32))
        .collect();
    let greedy = SamplingConfig::greedy;
    let seeded = |temperature| SamplingConfig {
        temperature,
        seed: Some(1),
        ..greedy()
    };
    let case = |name, config| Case {
        name,
        config,
        prompt: &[],
        output: &[],
    };
    let penalties = SamplingConfig {
        repetition_penalty: 1.1,
        frequency_penalty: 0.5,
        presence_penalty: 0.5,
        ..greedy()
    };
    let logprobs = SamplingConfig {
        logprobs: true,
        top_logprobs: 5,
        ..greedy()
    };
    let top_k_p = SamplingConfig {
        top_k: 50,
        top_p: 0.9,
        ..seeded(1.0)
    };
    println!("vocab {VOCAB}, best of {ROUNDS} rounds of {ITERS} samples");
    bench("peaked", case("greedy", greedy()), &peaked);
    let with_history = Case {
        prompt: &prompt,
        output: &output,
        ..case("", penalties)
    };
    let name = "greedy + penalties (512 prompt, 256 output)";
    bench(
        "peaked",
        Case {
            name,
            ..with_history
        },
        &peaked,
    );
    bench(
        "peaked",
        case("greedy + logprobs (top 5)", logprobs),
        &peaked,
    );
    for (shape, rows) in [("peaked", &peaked), ("flat", &flat)] {
        bench(shape, case("temperature 1", seeded(1.0)), rows);
        bench(shape, case("top_k 50 + top_p 0.9", top_k_p.clone()), rows);
        let top_p = SamplingConfig {
            top_p: 0.9,
            ..seeded(1.0)
        };
        bench(shape, case("top_p 0.9", top_p), rows);
        let min_p = SamplingConfig {
            min_p: 0.05,
            ..seeded(1.0)
        };
        bench(shape, case("min_p 0.05", min_p), rows);
    }
}
