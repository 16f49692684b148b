//! Single-stream speed of the CPU model on the default GGUF:
//! `cargo run --release -p pagedserve-shard --example decode_bench [prompt_tokens] [decode_tokens]`.

use std::path::PathBuf;
use std::time::Instant;

use pagedserve_shard::model::{CausalLm, LoadOptions, ModelError, SeqChunk, load_model};

const BLOCK_SIZE: usize = 16;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let prompt_len: usize = args.next().map_or(Ok(128), |a| a.parse())?;
    let decode_len: usize = args.next().map_or(Ok(128), |a| a.parse())?;
    let cache = std::env::var_os("PAGEDSERVE_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/pagedserve"),
        PathBuf::from,
    );
    let total = prompt_len + decode_len;
    let opts = LoadOptions {
        model_path: cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        served_model_name: None,
        block_size: BLOCK_SIZE,
        num_kv_blocks: Some(total.div_ceil(BLOCK_SIZE)),
        kv_cache_bytes: 0,
        device: "cpu".into(),
    };
    let t = Instant::now();
    let mut model = load_model(&opts)?;
    println!("load: {:.2} s ({})", t.elapsed().as_secs_f64(), model.info().dtype);
    let table: Vec<u32> = (0..model.num_kv_blocks() as u32).collect();
    // A fixed, plausible token mix (ids of common words) as the prompt.
    let mut tokens: Vec<u32> = (0..prompt_len as u32).map(|i| 260 + (i * 37) % 5000).collect();

    let t = Instant::now();
    let logits = run(model.as_mut(), &tokens, 0, &table)?;
    let prefill = t.elapsed().as_secs_f64();
    tokens.push(argmax(&logits));

    let t = Instant::now();
    for pos in prompt_len..total - 1 {
        let logits = run(model.as_mut(), &tokens[pos..pos + 1], pos, &table)?;
        tokens.push(argmax(&logits));
    }
    let decode = t.elapsed().as_secs_f64();
    println!(
        "prefill: {prompt_len} tokens in {:.3} s = {:.1} tok/s",
        prefill,
        prompt_len as f64 / prefill
    );
    let steps = decode_len.saturating_sub(1);
    println!(
        "decode:  {steps} tokens in {:.3} s = {:.1} tok/s (single stream)",
        decode,
        steps as f64 / decode
    );
    Ok(())
}

fn run(
    model: &mut dyn CausalLm,
    tokens: &[u32],
    start_pos: usize,
    table: &[u32],
) -> Result<Vec<f32>, ModelError> {
    let chunk = SeqChunk { tokens, start_pos, block_table: table, need_logits: true };
    model
        .forward(&[chunk])?
        .pop()
        .ok_or_else(|| ModelError::Backend("no logits".into()))
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
