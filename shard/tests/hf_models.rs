//! HF-layout checkpoints (tests/data/hf, written by scripts/make_hf_fixtures.py) load through
//! the safetensors source and match transformers' logits for the same weights:
//! Llama with llama3 RoPE scaling and tied embeddings (f32, one file), Mistral with a sliding
//! window of 8 tokens (bf16, five shards and an index), Qwen2 with q/k/v biases (f16).
//!
//! Every prompt is prefilled in chunks of 5 tokens through scrambled 4-token KV blocks and
//! then decoded token by token, so the window, the biases and the Q/K permutation all meet
//! paging and chunked prefill.

use std::path::PathBuf;

use pagedserve_shard::model::{CausalLm, LoadOptions, ModelError, SeqChunk, load_model};
use serde::Deserialize;

/// Max |logit - reference| (logits here are O(1..10)). The weights are the same bf16/f16/f32
/// values on both sides and both compute in f32, so only summation order differs: measured
/// below 2e-5; the bound leaves a wide margin while a wrong permutation, bias or window moves
/// logits by more than 0.1.
const LOGIT_TOL: f32 = 2e-4;
const BLOCK_SIZE: usize = 4;
const CHUNK: usize = 5;
const NUM_BLOCKS: usize = 32;

#[derive(Deserialize)]
struct Expected {
    new_tokens: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    prompt_ids: Vec<u32>,
    generated_ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

/// The fixtures; `PAGEDSERVE_HF_FIXTURES` overrides where they are (a test binary carried to
/// another machine).
fn dir(family: &str) -> PathBuf {
    let root = std::env::var_os("PAGEDSERVE_HF_FIXTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/hf"),
        PathBuf::from,
    );
    root.join(family)
}

fn load_on(family: &str, device: &str, block_size: usize) -> Result<Box<dyn CausalLm>, ModelError> {
    let opts = LoadOptions {
        model_path: dir(family),
        served_model_name: None,
        block_size,
        num_kv_blocks: Some(NUM_BLOCKS),
        kv_cache_bytes: 0,
        device: device.into(),
        ..LoadOptions::default()
    };
    load_model(&opts)
}

fn load(family: &str) -> Box<dyn CausalLm> {
    load_on(family, "cpu", BLOCK_SIZE).unwrap_or_else(|e| panic!("load {family}: {e}"))
}

fn expected(family: &str) -> Expected {
    let text = std::fs::read_to_string(dir(family).join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

/// Runs one case through chunked prefill and greedy decode; returns each step's logits.
fn run(model: &mut dyn CausalLm, case: &Case, new_tokens: usize, seed: usize) -> Vec<Vec<f32>> {
    let table: Vec<u32> = (0..NUM_BLOCKS)
        .map(|i| ((i * 13 + seed) % NUM_BLOCKS) as u32)
        .collect();
    let mut tokens = case.prompt_ids.clone();
    let mut cached = 0;
    let mut out = Vec::new();
    while out.len() < new_tokens {
        let end = if cached < case.prompt_ids.len() {
            (cached + CHUNK).min(case.prompt_ids.len())
        } else {
            cached + 1
        };
        let need_logits = end >= case.prompt_ids.len();
        let chunk = SeqChunk {
            tokens: &tokens[cached..end],
            start_pos: cached,
            block_table: &table,
            need_logits,
        };
        let mut logits = model.forward(&[chunk]).expect("forward");
        cached = end;
        if need_logits {
            let row = logits.pop().expect("one logits row");
            tokens.push(argmax(&row));
            out.push(row);
        }
    }
    out
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

fn check_family(family: &str, dtype: &str, eos: &[u32]) {
    let mut model = load(family);
    let want = expected(family);
    let info = model.info().clone();
    assert_eq!(info.vocab_size, 384);
    assert_eq!(info.dtype, dtype, "{family} dtype");
    assert_eq!(info.eos_token_ids, eos, "{family} eos ids");
    assert_eq!(
        (info.num_layers, info.num_kv_heads, info.head_dim),
        (2, 1, 64)
    );
    let mut worst = 0f32;
    for (n, case) in want.cases.iter().enumerate() {
        let got = run(model.as_mut(), case, want.new_tokens, n);
        let generated: Vec<u32> = got.iter().map(|row| argmax(row)).collect();
        for (step, (row, reference)) in got.iter().zip(&case.logits).enumerate() {
            assert_eq!(row.len(), reference.len());
            for (id, (a, b)) in row.iter().zip(reference).enumerate() {
                let diff = (a - b).abs();
                worst = worst.max(diff);
                assert!(
                    diff <= LOGIT_TOL,
                    "{family} case {n} step {step} token {id}: {a} vs transformers {b}"
                );
            }
        }
        assert_eq!(
            generated, case.generated_ids,
            "{family} case {n} greedy tokens"
        );
    }
    println!("{family}: max |logit diff| vs transformers {worst:.2e}");
}

#[test]
fn llama_llama3_rope_tied_f32_matches_transformers() {
    check_family("llama", "f32", &[4, 1]);
}

#[test]
fn mistral_sliding_window_bf16_sharded_matches_transformers() {
    check_family("mistral", "bf16", &[2]);
}

#[test]
fn qwen2_bias_f16_matches_transformers() {
    check_family("qwen2", "f16", &[2, 0]);
}

/// The CUDA model on the same HF sources (run on a GPU machine with `--ignored`): per family,
/// greedy tokens matching transformers and the largest logit difference (bf16 weights and
/// activations on the GPU: measured 0.10-0.17; asserted <= `CUDA_LOGIT_TOL`). Mistral's window
/// (8 tokens here) caps the CUDA model's context instead of running windowed kernels, so its
/// longer prompts are refused; that cap is what is checked for it.
const CUDA_LOGIT_TOL: f32 = 0.5;

#[test]
#[ignore = "needs a CUDA GPU; run with --ignored on the device machine"]
fn cuda_model_on_hf_sources_against_transformers() {
    for family in ["llama", "mistral", "qwen2"] {
        // The CUDA kernels take blocks of 8..=64 tokens.
        let mut model = match load_on(family, "cuda:0", 8) {
            Ok(m) => m,
            Err(e) => {
                println!("{family}: not loaded on cuda:0: {e}");
                continue;
            }
        };
        let want = expected(family);
        if family == "mistral" {
            assert_eq!(model.info().max_context, 8, "context capped at the window");
            println!("mistral: context capped at its 8-token window on CUDA");
            continue;
        }
        for (n, case) in want.cases.iter().enumerate() {
            let got = run(model.as_mut(), case, want.new_tokens, n);
            let tokens: Vec<u32> = got.iter().map(|row| argmax(row)).collect();
            let same = tokens
                .iter()
                .zip(&case.generated_ids)
                .take_while(|(a, b)| a == b)
                .count();
            let worst = got
                .iter()
                .zip(&case.logits)
                .take(same.max(1))
                .flat_map(|(row, reference)| row.iter().zip(reference).map(|(a, b)| (a - b).abs()))
                .fold(0f32, f32::max);
            println!(
                "{family} case {n}: {same}/{} greedy tokens as transformers, max |logit diff| \
                 before divergence {worst:.4}",
                tokens.len()
            );
            if same < tokens.len() {
                // A divergence is allowed only at a near-tie of transformers' logits.
                let mut row = case.logits[same].clone();
                row.sort_by(|a, b| b.total_cmp(a));
                let gap = row[0] - row[1];
                println!("{family} case {n}: diverges at {same}, transformers' top-2 gap {gap:.4}");
                assert!(
                    gap < 2.0 * CUDA_LOGIT_TOL,
                    "{family} case {n}: diverges at {same} where the top-2 gap is {gap}"
                );
            }
            assert!(
                worst <= CUDA_LOGIT_TOL,
                "{family} case {n}: logits off by {worst}"
            );
        }
    }
}

#[test]
fn bad_directories_are_clear_errors() {
    let tmp = std::env::temp_dir().join(format!("pagedserve-hf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let opts = |path: PathBuf| LoadOptions {
        model_path: path,
        num_kv_blocks: Some(4),
        ..LoadOptions::default()
    };
    let err = load_model(&opts(tmp.clone()))
        .err()
        .expect("no config.json");
    assert!(err.to_string().contains("config.json"), "{err}");

    // An architecture we do not serve is named in the error.
    let config = std::fs::read_to_string(dir("qwen2").join("config.json")).expect("config");
    std::fs::write(
        tmp.join("config.json"),
        config.replace("Qwen2ForCausalLM", "GemmaForCausalLM"),
    )
    .expect("write");
    let err = load_model(&opts(tmp.clone())).err().expect("unsupported");
    assert!(
        matches!(err, ModelError::UnsupportedArchitecture(ref a) if a == "GemmaForCausalLM"),
        "{err}"
    );

    // A supported config without weights says which file is missing.
    std::fs::write(tmp.join("config.json"), config).expect("write");
    let err = load_model(&opts(tmp.clone())).err().expect("no weights");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    std::fs::remove_dir_all(&tmp).expect("cleanup");
}
