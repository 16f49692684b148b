//! Behaviour of the whole [`Sampler`] pipeline.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::sampling::TokenLogprobs;

fn sampler(config: SamplingConfig) -> Sampler {
    Sampler::new(config)
}

fn random_config(temperature: f32, seed: u64) -> SamplingConfig {
    SamplingConfig {
        temperature,
        seed: Some(seed),
        ..SamplingConfig::greedy()
    }
}

fn random_logits(rng: &mut StdRng, len: usize, spread: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random::<f32>() * spread).collect()
}

fn draw(s: &mut Sampler, logits: &[f32]) -> u32 {
    s.sample(logits, &[], &[]).token_id
}

#[test]
fn greedy_takes_the_argmax_with_ties_to_the_lowest_id() {
    let mut s = sampler(SamplingConfig::greedy());
    assert_eq!(draw(&mut s, &[0.1, 2.0, -3.0, 1.9]), 1);
    assert_eq!(draw(&mut s, &[5.0, 1.0, 5.0]), 0);
    assert_eq!(draw(&mut s, &[1.0, 7.0, 7.0, 7.0]), 1);
    assert!(s.sample(&[1.0, 2.0], &[], &[]).logprobs.is_none());
}

#[test]
fn greedy_never_draws_from_the_rng() {
    let mut s = sampler(SamplingConfig {
        seed: Some(11),
        ..SamplingConfig::greedy()
    });
    let penalized = SamplingConfig {
        presence_penalty: 1.0,
        ..s.config().clone()
    };
    let mut p = sampler(penalized);
    for _ in 0..10 {
        draw(&mut s, &[0.3, 0.2, 0.9]);
        p.sample(&[0.3, 0.2, 0.9], &[1], &[2, 2]);
    }
    let fresh: u64 = StdRng::seed_from_u64(11).random();
    assert_eq!(s.rng.random::<u64>(), fresh);
    assert_eq!(p.rng.random::<u64>(), fresh);
}

#[test]
fn tiny_temperature_equals_greedy() {
    let mut rng = StdRng::seed_from_u64(21);
    for seed in 0..20 {
        let logits = random_logits(&mut rng, 500, 10.0);
        let want = draw(&mut sampler(SamplingConfig::greedy()), &logits);
        assert_eq!(draw(&mut sampler(random_config(0.0, seed)), &logits), want);
        assert_eq!(draw(&mut sampler(random_config(1e-6, seed)), &logits), want);
    }
}

#[test]
fn same_seed_same_tokens_different_seed_different_tokens() {
    let mut rng = StdRng::seed_from_u64(4);
    let steps: Vec<Vec<f32>> = (0..64)
        .map(|_| random_logits(&mut rng, 1000, 1.0))
        .collect();
    let run = |config: SamplingConfig| -> Vec<u32> {
        let mut s = sampler(config);
        steps.iter().map(|l| draw(&mut s, l)).collect()
    };
    let filtered = |seed| SamplingConfig {
        top_k: 100,
        top_p: 0.8,
        ..random_config(1.0, seed)
    };
    for config in [random_config(1.0, 1), filtered(1)] {
        assert_eq!(run(config.clone()), run(config));
    }
    assert_ne!(run(random_config(1.0, 1)), run(random_config(1.0, 2)));
    assert_ne!(run(filtered(1)), run(filtered(2)));
    // Unseeded samplers get different OS-seeded streams.
    let unseeded = SamplingConfig {
        seed: None,
        ..random_config(1.0, 0)
    };
    assert_ne!(run(unseeded.clone()), run(unseeded));
}

#[test]
fn top_k_one_and_tiny_top_p_equal_greedy() {
    let mut rng = StdRng::seed_from_u64(8);
    for seed in 0..50 {
        let logits = random_logits(&mut rng, 2000, 3.0);
        let want = draw(&mut sampler(SamplingConfig::greedy()), &logits);
        let top_k = SamplingConfig {
            top_k: 1,
            ..random_config(1.5, seed)
        };
        assert_eq!(draw(&mut sampler(top_k), &logits), want);
        let top_p = SamplingConfig {
            top_p: 1e-6,
            ..random_config(1.5, seed)
        };
        assert_eq!(draw(&mut sampler(top_p), &logits), want);
    }
}

/// Frequencies over many draws, compared with the expected probabilities.
fn assert_frequencies(config: SamplingConfig, logits: &[f32], want: &[f64]) {
    const DRAWS: usize = 200_000;
    let mut s = sampler(config);
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..DRAWS {
        counts[draw(&mut s, logits) as usize] += 1;
    }
    for (i, (&c, &p)) in counts.iter().zip(want).enumerate() {
        let freq = c as f64 / DRAWS as f64;
        // ~5 standard deviations at p = 0.5; exact zeros must stay zero.
        let tolerance = if p == 0.0 { 0.0 } else { 0.0056 };
        assert!(
            (freq - p).abs() <= tolerance,
            "token {i}: freq {freq} want {p}"
        );
    }
}

fn softmax(logits: &[f32], temperature: f32) -> Vec<f64> {
    let w: Vec<f64> = logits
        .iter()
        .map(|&l| (f64::from(l) / f64::from(temperature)).exp())
        .collect();
    let total: f64 = w.iter().sum();
    w.iter().map(|x| x / total).collect()
}

#[test]
fn frequencies_follow_softmax_over_temperature() {
    let logits = [1.0f32, 2.0, 0.5, 3.0, -1.0, 2.5];
    for temperature in [0.7f32, 1.0, 2.0] {
        let want = softmax(&logits, temperature);
        assert_frequencies(random_config(temperature, 99), &logits, &want);
    }
}

#[test]
fn frequencies_follow_the_renormalized_filtered_softmax() {
    let logits = [1.0f32, 2.0, 0.5, 3.0, -1.0, 2.5];
    // Top-3 = ids 3, 5, 1.
    let mut want = softmax(&[0.0, 2.0, 0.0, 3.0, 0.0, 2.5], 1.0);
    for i in [0, 2, 4] {
        want[i] = 0.0;
    }
    let total: f64 = want.iter().sum();
    let want: Vec<f64> = want.iter().map(|p| p / total).collect();
    assert_frequencies(
        SamplingConfig {
            top_k: 3,
            ..random_config(1.0, 5)
        },
        &logits,
        &want,
    );
    // min_p 0.3: ratios to the best are e^-2, e^-1, e^-2.5, 1, e^-4, e^-0.5 → keeps 3, 5, 1.
    let min_p = SamplingConfig {
        min_p: 0.3,
        ..random_config(1.0, 6)
    };
    assert_frequencies(min_p, &logits, &want);
    // top_p 0.85: probabilities .452, .274, .167, .061, ... → the nucleus is 3, 5, 1 (.894).
    let top_p = SamplingConfig {
        top_p: 0.85,
        ..random_config(1.0, 7)
    };
    assert_frequencies(top_p, &logits, &want);
}

#[test]
fn frequencies_follow_the_penalized_softmax() {
    // Output [0, 0, 2]: frequency 0.5 and presence 0.25 give logits [1 - 1.25, 1, 1 - 0.75].
    let config = SamplingConfig {
        frequency_penalty: 0.5,
        presence_penalty: 0.25,
        ..random_config(0.8, 12)
    };
    let want = softmax(&[-0.25, 1.0, 0.25], 0.8);
    let mut s = sampler(config);
    let mut counts = [0usize; 3];
    const DRAWS: usize = 100_000;
    for _ in 0..DRAWS {
        counts[s.sample(&[1.0, 1.0, 1.0], &[1, 1], &[0, 0, 2]).token_id as usize] += 1;
    }
    for (c, p) in counts.iter().zip(&want) {
        let freq = *c as f64 / DRAWS as f64;
        assert!((freq - p).abs() < 0.008, "freq {freq} want {p}");
    }
}

#[test]
fn penalties_steer_the_choice() {
    let logits = [2.0f32, 1.9, 0.0];
    let with = |c: SamplingConfig, prompt: &[u32], output: &[u32]| {
        sampler(c).sample(&logits, prompt, output).token_id
    };
    let greedy = SamplingConfig::greedy;
    assert_eq!(with(greedy(), &[0], &[0]), 0);
    // 2.0 / 1.1 = 1.82 < 1.9 whether token 0 was seen in the prompt or the output.
    let rep = SamplingConfig {
        repetition_penalty: 1.1,
        ..greedy()
    };
    assert_eq!(with(rep.clone(), &[0], &[]), 1);
    assert_eq!(with(rep, &[], &[0]), 1);
    // Frequency/presence ignore the prompt.
    let freq = SamplingConfig {
        frequency_penalty: 0.05,
        ..greedy()
    };
    assert_eq!(with(freq.clone(), &[0, 0, 0], &[]), 0);
    assert_eq!(with(freq.clone(), &[], &[0]), 0);
    assert_eq!(with(freq, &[], &[0, 0, 0]), 1);
    let presence = SamplingConfig {
        presence_penalty: 0.2,
        ..greedy()
    };
    assert_eq!(with(presence, &[], &[0]), 1);
    // Under sampling too: token 0 banned by a strong repetition penalty on a negative logit.
    let logits = [-1.0f32, -1.0];
    let mut s = sampler(SamplingConfig {
        repetition_penalty: 50.0,
        ..random_config(1.0, 3)
    });
    for _ in 0..200 {
        assert_eq!(s.sample(&logits, &[0], &[]).token_id, 1);
    }
}

#[test]
fn logprobs_describe_the_raw_distribution() {
    // Raw probabilities 0.5, 0.3, 0.2; penalties and temperature must not change the logprobs.
    let logits: Vec<f32> = [0.5f32, 0.3, 0.2].iter().map(|p| p.ln()).collect();
    let config = SamplingConfig {
        logprobs: true,
        top_logprobs: 3,
        repetition_penalty: 1.5,
        ..random_config(0.6, 17)
    };
    let mut s = sampler(config);
    for _ in 0..50 {
        let got = s.sample(&logits, &[0], &[1]);
        let lp = got.logprobs.unwrap_or_else(|| panic!("logprobs requested"));
        let want = [0.5f32, 0.3, 0.2][got.token_id as usize].ln();
        assert!((lp.logprob - want).abs() < 1e-6);
        let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, vec![0, 1, 2]);
        let total: f32 = lp.top.iter().map(|t| t.1.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert!(
            lp.top
                .iter()
                .any(|t| t.0 == got.token_id && t.1 == lp.logprob)
        );
    }
    let proto = pagedserve_proto::v1::Logprobs::from(&TokenLogprobs {
        logprob: -0.5,
        top: vec![(4, -0.1)],
    });
    assert_eq!(proto.logprob, -0.5);
    assert_eq!((proto.top[0].token_id, proto.top[0].logprob), (4, -0.1));
}

#[test]
fn nan_inf_empty_and_bad_history_never_panic() {
    let configs = [
        SamplingConfig {
            logprobs: true,
            top_logprobs: 5,
            ..SamplingConfig::greedy()
        },
        SamplingConfig {
            logprobs: true,
            top_logprobs: 5,
            ..random_config(0.8, 1)
        },
        SamplingConfig {
            top_k: 2,
            top_p: 0.5,
            min_p: 0.1,
            ..random_config(0.8, 1)
        },
        SamplingConfig {
            min_p: 0.1,
            frequency_penalty: 1.0,
            ..random_config(0.8, 1)
        },
        SamplingConfig {
            top_p: 0.5,
            repetition_penalty: 1.3,
            ..random_config(0.8, 1)
        },
    ];
    let nan = f32::NAN;
    let (inf, ninf) = (f32::INFINITY, f32::NEG_INFINITY);
    for config in configs {
        let mut s = sampler(config);
        let history = ([u32::MAX, 3, 99], [7u32, 1_000_000]);
        assert_eq!(s.sample(&[], &history.0, &history.1).token_id, 0);
        assert_eq!(
            s.sample(&[nan, nan, nan], &history.0, &history.1).token_id,
            0
        );
        assert_eq!(s.sample(&[ninf, ninf], &history.0, &history.1).token_id, 0);
        for _ in 0..100 {
            assert_eq!(
                s.sample(&[nan, 0.0, nan, -5.0e3], &history.0, &history.1)
                    .token_id,
                1
            );
            assert_eq!(
                s.sample(&[1.0, inf, nan, 1.0e30], &history.0, &history.1)
                    .token_id,
                1
            );
        }
    }
}

#[test]
fn sampler_can_move_to_the_engine_thread() {
    fn assert_send<T: Send + 'static>(_: &T) {}
    assert_send(&sampler(SamplingConfig::greedy()));
}
