//! The CPU model against HF transformers on the same GGUF (`scripts/make_fixture.py` wrote
//! `tests/data/fixture.json`): greedy tokens must match exactly, logits within `LOGIT_TOL`.
//!
//! All four prompts run together as one continuously batched stream: the long prompt is
//! prefilled in 16-token chunks while the others already decode, through shuffled block
//! tables, so batching, chunked prefill and paging all have to be right for the tokens to match.

mod common;

use common::{
    BLOCK_SIZE, CHUNK, Case, FIXTURE_BLOCKS, Seq, fixture_seqs, load_fixture, model_path, step,
};
use std::path::PathBuf;

use pagedserve_shard::backend::{CpuBackend, WeightFormat};
use pagedserve_shard::model::{
    KvCacheDtype, Llama, LoadOptions, ModelError, SeqChunk, load_model, open_source,
};

/// Max |logit - reference| over the reference's top-5 ids (logits are ~10-30 here). Both
/// sides dequantize the same Q4_1/Q8_0 weights to f32 and compute in f32, so only summation
/// order differs: measured max 1e-4, the bound leaves 10x margin. (Rounding activations to
/// 8 bits, as candle's quantized matmul does, moves logits by up to 0.6 and flips near-ties,
/// some of which are only 0.007 apart in this fixture.)
const LOGIT_TOL: f32 = 1e-3;

#[test]
fn greedy_tokens_and_logits_match_transformers() {
    let fixture = load_fixture();
    let opts = LoadOptions {
        model_path: model_path(&fixture.model),
        served_model_name: None,
        block_size: BLOCK_SIZE,
        num_kv_blocks: Some(FIXTURE_BLOCKS),
        kv_cache_bytes: 0,
        max_model_len: None,
        kv_cache_dtype: Default::default(),
        device: "cpu".into(),
        gpu: Default::default(),
    };
    let mut model = load_model(&opts).expect("load the default model");
    assert_eq!(model.info().vocab_size, 49152);
    let mut seqs = fixture_seqs(&fixture);
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
        max_model_len: None,
        kv_cache_dtype: Default::default(),
        device: "cpu".into(),
        gpu: Default::default(),
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
        device: "metal".into(),
        ..opts.clone()
    };
    assert!(matches!(
        load_model(&unsupported),
        Err(ModelError::UnsupportedDevice(_))
    ));
    // Without a CUDA driver (CI), asking for a GPU is a clear error, not a panic.
    if pagedserve_shard::backend::cuda::cuda_device_count().is_err() {
        let cuda = LoadOptions {
            device: "cuda:0".into(),
            ..opts
        };
        let err = load_model(&cuda)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("CUDA"), "{err}");
    }
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
        max_model_len: None,
        kv_cache_dtype: Default::default(),
        device: "cpu".into(),
        gpu: Default::default(),
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
        max_model_len: None,
        kv_cache_dtype: Default::default(),
        device: "cpu".into(),
        gpu: Default::default(),
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

/// `--kv-cache-dtype` on the CPU, whose cache is f32: fp8 is refused before the model file is
/// read, with a message that says why and what to use; bf16 is served as auto (f32 cache).
#[test]
fn fp8_kv_cache_is_refused_on_the_cpu() {
    let fixture = load_fixture();
    let opts = |dtype: KvCacheDtype, path: PathBuf| LoadOptions {
        model_path: path,
        num_kv_blocks: Some(FIXTURE_BLOCKS),
        kv_cache_dtype: dtype,
        device: "cpu".into(),
        ..LoadOptions::default()
    };
    // A path that does not exist: the dtype is refused first.
    let missing = PathBuf::from("/nonexistent/model.gguf");
    let err = load_model(&opts(KvCacheDtype::Fp8E4m3, missing))
        .err()
        .expect("fp8 on the CPU is refused");
    assert!(matches!(err, ModelError::Fp8KvCacheOnCpu), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("--kv-cache-dtype fp8 needs a CUDA device")
            && msg.contains("f32")
            && msg.contains("auto"),
        "{msg}"
    );
    // Loading the CPU model directly refuses it too.
    let path = model_path(&fixture.model);
    let mut source = open_source(&path).expect("open");
    let direct = Llama::load(
        CpuBackend::new(WeightFormat::Blocks),
        source.as_mut(),
        &opts(KvCacheDtype::Fp8E4m3, path.clone()),
    );
    assert!(matches!(direct, Err(ModelError::Fp8KvCacheOnCpu)));
    for dtype in [KvCacheDtype::Auto, KvCacheDtype::Bf16] {
        let model = load_model(&opts(dtype, path.clone())).expect("auto and bf16 load");
        assert_eq!(model.num_kv_blocks(), FIXTURE_BLOCKS);
    }
}
