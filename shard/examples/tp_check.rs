//! Tensor parallelism on several GPUs against one GPU, with dummy weights of a named shape and
//! the same seed (so both hold the same model): greedy tokens of a few prompts (the first
//! divergence, with the T=1 top-2 logit gap there, and the largest difference of the T=1 top-5
//! logits before it), then batch-1 decode step time at a 1k context. Ranks run as threads of
//! this process (one GPU each), joined by the same TCP step channel and NCCL as served ranks.
//!
//!     tp_check [shape] [T]        (defaults: llama3-8b 2; TP_CHECK_EAGER=1: no CUDA graphs)
//!
//! Ends with `tp_check: PASS` when every divergence sits at a near-tie (T=1 top-2 gap below
//! `TIE_MARGIN`, as the CUDA-vs-CPU test allows), else `tp_check: FAIL`.

use std::time::{Duration, Instant};

use pagedserve_shard::backend::cuda::{CudaLlama, TpConfig, cuda_device_count, load_tp_model};
use pagedserve_shard::model::{CausalLm, DeviceSampling, LoadOptions, Picked, SeqChunk};

const TIE_MARGIN: f32 = 0.5;
const PROMPTS: usize = 4;
const NEW_TOKENS: usize = 32;
const KV_BLOCKS: usize = 2048;
const GREEDY: DeviceSampling = DeviceSampling::GREEDY;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// One prompt's greedy run: tokens, and per step the top-5 `(id, logit)`.
struct Run {
    tokens: Vec<u32>,
    top: Vec<Vec<(u32, f32)>>,
}

fn main() -> Res<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let mut args = std::env::args().skip(1);
    let shape = args.next().unwrap_or_else(|| "llama3-8b".into());
    let t: usize = args.next().map_or(Ok(2), |s| s.parse())?;
    match cuda_device_count() {
        Ok(n) if n >= t => {}
        Ok(n) => return skip(&format!("{n} GPU(s), T={t} needs {t}")),
        Err(e) => return skip(&e),
    }
    let mut runs = Vec::new();
    let mut decode = Vec::new();
    for size in [1, t] {
        let started = Instant::now();
        let (mut leader, followers) = load_group(&shape, size)?;
        println!(
            "T={size}: loaded in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        runs.push(
            (0..PROMPTS)
                .map(|p| greedy(&mut leader, p))
                .collect::<Res<Vec<Run>>>()?,
        );
        decode.push(decode_ms(&mut leader, 1024, 64)?);
        drop(leader); // closes the link: followers return
        for f in followers {
            f.join().map_err(|_| "follower panicked")??;
        }
    }
    let pass = compare(&runs[0], &runs[1]);
    println!("\n| T | batch-1 decode ms (ctx 1024, median) | tok/s |\n|---|---|---|");
    for (size, ms) in [1, t].iter().zip(&decode) {
        println!("| {size} | {ms:.3} | {:.1} |", 1e3 / ms);
    }
    println!(
        "decode speed-up T={t} vs T=1: {:.2}x",
        decode[0] / decode[1]
    );
    println!("tp_check: {}", if pass { "PASS" } else { "FAIL" });
    if !pass {
        std::process::exit(1);
    }
    Ok(())
}

fn skip(why: &str) -> Res<()> {
    println!("skipped: {why}");
    Ok(())
}

type Follower = std::thread::JoinHandle<Result<(), pagedserve_shard::model::ModelError>>;

/// Rank 0 on GPU 0 here; ranks 1.. on GPUs 1.. in threads, serving until rank 0 is dropped.
fn load_group(shape: &str, size: usize) -> Res<(CudaLlama, Vec<Follower>)> {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.to_string()
    };
    let tp = |rank| TpConfig {
        size,
        rank,
        addr: Some(addr.clone()),
        join_timeout: Duration::from_secs(300),
    };
    let followers = (1..size)
        .map(|rank| {
            let (opts, tp) = (options(shape, rank), tp(rank));
            std::thread::spawn(move || {
                let model = load_tp_model(&opts, &tp)?;
                let served = model.serve_follower();
                if let Err(e) = &served {
                    eprintln!("rank {rank}: {e}");
                }
                served
            })
        })
        .collect();
    Ok((load_tp_model(&options(shape, 0), &tp(0))?, followers))
}

fn options(shape: &str, gpu: usize) -> LoadOptions {
    let mut opts = LoadOptions {
        device: format!("cuda:{gpu}"),
        num_kv_blocks: Some(KV_BLOCKS),
        ..LoadOptions::default()
    };
    opts.gpu.dummy_shape = Some(shape.into());
    opts.gpu.max_num_seqs = 8;
    opts.gpu.max_batch_tokens = 1024;
    opts.gpu.enforce_eager = std::env::var_os("TP_CHECK_EAGER").is_some();
    opts
}

/// Greedy generation of prompt `p` (random-looking ids of 8 + 13p tokens) from host logits.
fn greedy(m: &mut CudaLlama, p: usize) -> Res<Run> {
    let len = 8 + 13 * p;
    let mut tokens: Vec<u32> = (0..len)
        .map(|i| ((i * 7919 + p * 104729) % 30000) as u32 + 100)
        .collect();
    let table: Vec<u32> = (0..(len + NEW_TOKENS).div_ceil(m.block_size()) as u32).collect();
    let mut run = Run {
        tokens: Vec::new(),
        top: Vec::new(),
    };
    let mut start = 0;
    while run.tokens.len() < NEW_TOKENS {
        let logits = m.forward(&[SeqChunk {
            tokens: &tokens[start..],
            start_pos: start,
            block_table: &table,
            need_logits: true,
        }])?;
        let row = logits.first().ok_or("no logits")?;
        let mut ids: Vec<u32> = (0..row.len() as u32).collect();
        ids.select_nth_unstable_by(5, |&a, &b| row[b as usize].total_cmp(&row[a as usize]));
        ids.truncate(5);
        ids.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
        run.top
            .push(ids.iter().map(|&i| (i, row[i as usize])).collect());
        start = tokens.len();
        tokens.push(ids[0]);
        run.tokens.push(ids[0]);
    }
    Ok(run)
}

/// Prints, for each prompt, where T=t first differs from T=1; true when every divergence is
/// at a near-tie of T=1's logits.
fn compare(one: &[Run], many: &[Run]) -> bool {
    let mut pass = true;
    for (p, (a, b)) in one.iter().zip(many).enumerate() {
        let first = a.tokens.iter().zip(&b.tokens).position(|(x, y)| x != y);
        let upto = first.map_or(a.tokens.len(), |i| i + 1);
        // Largest difference of T=1's top-5 logits, where both saw the same inputs.
        let diff = (0..upto)
            .flat_map(|s| {
                a.top[s].iter().map(move |(id, v)| {
                    b.top[s]
                        .iter()
                        .find(|(j, _)| j == id)
                        .map_or(f32::INFINITY, |(_, w)| (v - w).abs())
                })
            })
            .filter(|d| d.is_finite())
            .fold(0.0f32, f32::max);
        match first {
            None => println!(
                "prompt {p}: {} greedy tokens identical; max |top-5 logit diff| {diff:.4}",
                a.tokens.len()
            ),
            Some(i) => {
                let gap = a.top[i][0].1 - a.top[i][1].1;
                let tie = gap < TIE_MARGIN;
                pass &= tie;
                println!(
                    "prompt {p}: diverges at {i}, T=1 top-2 gap {gap:.4} ({}); max |top-5 logit \
                     diff| before it {diff:.4}",
                    if tie { "near-tie" } else { "NOT a near-tie" }
                );
            }
        }
    }
    pass
}

/// Median batch-1 decode step (device sampling, graphs unless eager) at `context` tokens.
fn decode_ms(m: &mut CudaLlama, context: usize, steps: usize) -> Res<f64> {
    let bs = m.block_size();
    let table: Vec<u32> = (0..(context + steps + 8).div_ceil(bs) as u32).collect();
    let mut tokens: Vec<u32> = (0..context)
        .map(|i| ((i * 7919) % 30000) as u32 + 100)
        .collect();
    for start in (0..context).step_by(1024) {
        let end = (start + 1024).min(context);
        m.forward(&[SeqChunk {
            tokens: &tokens[start..end],
            start_pos: start,
            block_table: &table,
            need_logits: false,
        }])?;
    }
    let mut times = Vec::new();
    for step in 0..steps + 3 {
        let pos = context - 1 + step;
        let chunk = [SeqChunk {
            tokens: &tokens[pos..pos + 1],
            start_pos: pos,
            block_table: &table,
            need_logits: true,
        }];
        let t = Instant::now();
        let picked = m
            .forward_sampled(&chunk, &[Some(GREEDY)])
            .ok_or("no device sampling")??;
        if step >= 3 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        match picked.first() {
            Some(Picked::Token(id)) => tokens.push(*id),
            _ => return Err("no sampled token".into()),
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
