//! Speed of the CPU model on the default GGUF (release build):
//! `cargo run --release -p pagedserve-shard --example decode_bench [prompt_tokens] [decode_tokens] [streams]`
//!
//! Prints prefill tok/s, single-stream decode tok/s and, with `streams` > 1, the output
//! tok/s of that many sequences decoded together in one batch per step. llama-bench's pp512
//! is `decode_bench 512 1 1` here, its tg128 (decode from an empty context) `decode_bench 1 129 1`.

use std::path::PathBuf;
use std::time::Instant;

use pagedserve_shard::model::{CausalLm, LoadOptions, ModelError, SeqChunk, load_model};

const BLOCK_SIZE: usize = 16;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let prompt_len: usize = args.next().map_or(Ok(128), |a| a.parse())?;
    let decode_len: usize = args.next().map_or(Ok(128), |a| a.parse())?;
    let streams: usize = args.next().map_or(Ok(16), |a| a.parse())?;
    let cache = std::env::var_os("PAGEDSERVE_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/pagedserve"),
        PathBuf::from,
    );
    let per_seq = (prompt_len + decode_len).div_ceil(BLOCK_SIZE);
    let opts = LoadOptions {
        model_path: cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        served_model_name: None,
        block_size: BLOCK_SIZE,
        // One table more than the streams: a warm-up prefill runs there first.
        num_kv_blocks: Some(per_seq * (streams.max(1) + 1)),
        kv_cache_bytes: 0,
        max_model_len: None,
        kv_cache_dtype: Default::default(),
        device: "cpu".into(),
        gpu: Default::default(),
    };
    let t = Instant::now();
    let mut model = load_model(&opts)?;
    println!(
        "load: {:.2} s ({})",
        t.elapsed().as_secs_f64(),
        model.info().dtype
    );
    // A fixed, plausible token mix (ids of common words) as the prompt.
    let prompt: Vec<u32> = (0..prompt_len as u32)
        .map(|i| 260 + (i * 37) % 5000)
        .collect();
    let table =
        |s: usize| -> Vec<u32> { ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect() };

    // Warm-up (first touch of the weights' pages and the KV cache), like llama-bench's.
    step(model.as_mut(), &[(&prompt, 0, table(streams.max(1)))])?;
    let t = Instant::now();
    let first = step(model.as_mut(), &[(&prompt, 0, table(0))])?;
    let prefill = t.elapsed().as_secs_f64();
    println!(
        "prefill: {prompt_len} tokens in {prefill:.3} s = {:.1} tok/s",
        prompt_len as f64 / prefill
    );

    let (secs, n) = decode(model.as_mut(), &prompt, first[0], 1, decode_len, &table)?;
    println!(
        "decode:  {n} tokens in {secs:.3} s = {:.1} tok/s (single stream)",
        n as f64 / secs
    );
    if streams > 1 {
        for s in 1..streams {
            step(model.as_mut(), &[(&prompt, 0, table(s))])?;
        }
        let (secs, n) = decode(
            model.as_mut(),
            &prompt,
            first[0],
            streams,
            decode_len,
            &table,
        )?;
        println!(
            "decode:  {n} tokens in {secs:.3} s = {:.1} tok/s ({streams} streams, one batch per step)",
            n as f64 / secs
        );
    }
    Ok(())
}

/// Greedy decode of `streams` copies of the prefilled prompt; returns (seconds, tokens).
fn decode(
    model: &mut dyn CausalLm,
    prompt: &[u32],
    first: u32,
    streams: usize,
    decode_len: usize,
    table: &dyn Fn(usize) -> Vec<u32>,
) -> Result<(f64, usize), ModelError> {
    let tables: Vec<Vec<u32>> = (0..streams).map(table).collect();
    let mut last = vec![first; streams];
    let t = Instant::now();
    for pos in prompt.len()..prompt.len() + decode_len.saturating_sub(1) {
        let toks: Vec<[u32; 1]> = last.iter().map(|&t| [t]).collect();
        let batch: Vec<(&[u32], usize, Vec<u32>)> = toks
            .iter()
            .zip(&tables)
            .map(|(t, tb)| (&t[..], pos, tb.clone()))
            .collect();
        last = step(model, &batch)?;
    }
    Ok((
        t.elapsed().as_secs_f64(),
        streams * decode_len.saturating_sub(1),
    ))
}

/// One forward over `(tokens, start_pos, block_table)` chunks; the argmax of each.
fn step(
    model: &mut dyn CausalLm,
    seqs: &[(&[u32], usize, Vec<u32>)],
) -> Result<Vec<u32>, ModelError> {
    let chunks: Vec<SeqChunk<'_>> = seqs
        .iter()
        .map(|(tokens, start_pos, table)| SeqChunk {
            tokens,
            start_pos: *start_pos,
            block_table: table,
            need_logits: true,
        })
        .collect();
    Ok(model.forward(&chunks)?.iter().map(|l| argmax(l)).collect())
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
