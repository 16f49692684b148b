//! GPU decode benchmark: device copy bandwidth, batch-1 decode of a model (dummy weights of a
//! named shape by default) against the HBM roofline, and decode throughput at larger batches.
//! Drives the model through the same `CausalLm` interface the engine uses (device sampling,
//! CUDA graphs), timing whole steps on the host (each step ends with its sampled tokens on
//! the host, as in serving).
//!
//!     cargo run --release -p pagedserve-shard --example cuda_bench -- [shape] [context]
//!
//! roofline tok/s = copy bandwidth / bytes one decode step reads (every weight but the
//! embedding table, one embedding row, the KV cache at the context).
//!
//! Each decode row is timed twice: synchronous steps (`forward_sampled`: the host waits for a
//! step's tokens before it stages the next), and overlapped steps as the server runs them
//! (`launch` / `collect`: step n+1 is queued before step n's tokens are read, its input tokens
//! fed on the device), timed from one collected step to the next.
//!
//! `CUDA_BENCH_KV_CACHE_DTYPE=fp8` runs it over an fp8 (e4m3) KV cache, as
//! `--kv-cache-dtype fp8` does (one byte an element in the roofline's KV bytes).

use std::time::Instant;

use cudarc::driver::CudaContext;
use pagedserve_shard::backend::cuda::{ModelShape, cuda_device_count};
use pagedserve_shard::model::{
    CausalLm, DeviceSampling, LoadOptions, SeqChunk, cuda_kv_dtype, load_model,
};

const GREEDY: DeviceSampling = DeviceSampling::GREEDY;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Err(e) = cuda_device_count() {
        println!("skipped: no CUDA driver ({e})");
        return Ok(());
    }
    // The load's own lines (KV blocks, graphs) go to stderr; RUST_LOG narrows them.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let shape_name = args.next().unwrap_or_else(|| "llama3-8b".into());
    let context: usize = args.next().map_or(Ok(1024), |s| s.parse())?;
    let shape = ModelShape::parse(&shape_name).ok_or("unknown shape")?;
    let bw = copy_bandwidth()?;
    println!(
        "copy bandwidth: {:.0} GB/s (read + write, median of 20)",
        bw / 1e9
    );

    let mut opts = LoadOptions {
        device: "cuda:0".into(),
        ..LoadOptions::default()
    };
    opts.gpu.dummy_shape = Some(shape_name.clone());
    if let Ok(dtype) = std::env::var("CUDA_BENCH_KV_CACHE_DTYPE") {
        opts.kv_cache_dtype = dtype.parse()?;
    }
    // For profilers: CUDA_BENCH_EAGER=1 runs steps without graphs, CUDA_BENCH_BATCHES=1,32
    // and CUDA_BENCH_STEPS=N narrow the run.
    opts.gpu.enforce_eager = std::env::var_os("CUDA_BENCH_EAGER").is_some();
    let batches: Vec<usize> = std::env::var("CUDA_BENCH_BATCHES")
        .unwrap_or_else(|_| "1,2,3,4,8,16,24,32,48,64,128,256".into())
        .split(',')
        .filter_map(|b| b.trim().parse().ok())
        .collect();
    let steps: usize = std::env::var("CUDA_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    opts.gpu.max_num_seqs = batches.iter().copied().max().unwrap_or(1).max(256);
    opts.gpu.max_batch_tokens = 8192;
    let t = Instant::now();
    let mut model = load_model(&opts)?;
    println!(
        "load + graph capture: {:.1} s, {} KV blocks of {}",
        t.elapsed().as_secs_f64(),
        model.num_kv_blocks(),
        cuda_kv_dtype(opts.kv_cache_dtype).name()
    );
    let spec = shape.spec();
    let c = &spec.config;
    let weight_bytes = 2.0
        * (c.num_layers
            * (c.hidden * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
                + c.num_heads * c.head_dim * c.hidden
                + 3 * c.hidden * c.ffn)
            + spec.vocab_size * c.hidden
            + c.hidden) as f64
        + 4.0 * ((2 * c.num_layers + 1) * c.hidden) as f64;
    let elem = cuda_kv_dtype(opts.kv_cache_dtype).bytes();
    let kv_bytes =
        |ctx: usize| (c.num_layers * 2 * ctx * c.num_kv_heads * c.head_dim * elem) as f64;

    println!(
        "\n| batch | context | step ms (median) | tok/s | bytes/step GB | roofline tok/s | % roofline | overlapped step ms | overlapped tok/s | overlapped % roofline |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &batch in &batches {
        let (ms, overlapped) = decode_step_ms(model.as_mut(), batch, context, steps)?;
        let bytes = weight_bytes + batch as f64 * kv_bytes(context);
        let roof = bw / bytes * batch as f64;
        let tps = batch as f64 * 1e3 / ms;
        let otps = batch as f64 * 1e3 / overlapped;
        println!(
            "| {batch} | {context} | {ms:.3} | {tps:.0} | {:.2} | {roof:.0} | {:.1}% | {overlapped:.3} | {otps:.0} | {:.1}% |",
            bytes / 1e9,
            100.0 * tps / roof,
            100.0 * otps / roof
        );
    }
    // CUDA_BENCH_PREFILL=512,2048,8192: one sequence's prefill chunk of each size, and the rate
    // of its linear layers (attention time included, so a lower bound on the GEMMs' rate).
    let prefill: Vec<usize> = std::env::var("CUDA_BENCH_PREFILL")
        .unwrap_or_default()
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    if !prefill.is_empty() {
        let linear_flops = 2.0
            * (c.num_layers
                * (c.hidden * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
                    + c.num_heads * c.head_dim * c.hidden
                    + 3 * c.hidden * c.ffn)) as f64;
        println!("\n| prefill tokens | step ms (median of 5) | linear TFLOP/s |");
        println!("|---|---|---|");
        for &tokens in &prefill {
            let ms = prefill_ms(model.as_mut(), tokens)?;
            println!(
                "| {tokens} | {ms:.2} | {:.0} |",
                linear_flops * tokens as f64 / (ms / 1e3) / 1e12
            );
        }
    }
    // CUDA_BENCH_MIXED=D:C:S:P[,...]: a step that decodes D sequences at context C and prefills
    // S new prompts of P tokens each, as every step of a small-budget run mixes the two, against
    // the decode alone and the prefill alone (the mixed step reads the weights once, so it
    // should cost less than the two apart).
    let mixed: Vec<Vec<usize>> = std::env::var("CUDA_BENCH_MIXED")
        .unwrap_or_default()
        .split(',')
        .map(|m| m.split(':').filter_map(|v| v.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| v.len() == 4)
        .collect();
    if !mixed.is_empty() {
        println!("\n| decodes x context | prompts x tokens | decode ms | prefill ms | mixed ms |");
        println!("|---|---|---|---|---|");
        for m in &mixed {
            let (d, c, s, p) = (m[0], m[1], m[2], m[3]);
            let [dec, pre, mix] = mixed_ms(model.as_mut(), d, c, s, p)?;
            println!("| {d} x {c} | {s} x {p} | {dec:.2} | {pre:.2} | {mix:.2} |");
        }
    }
    Ok(())
}

/// Median wall times (7 after 2 warm-ups, tokens back on the host) of a decode step of `d`
/// sequences at context `c`, a prefill step of `s` prompts of `p` tokens (each sampled at its
/// end), and one step doing both.
fn mixed_ms(
    model: &mut dyn CausalLm,
    d: usize,
    c: usize,
    s: usize,
    p: usize,
) -> Result<[f64; 3], Box<dyn std::error::Error>> {
    if c < 2 || p == 0 {
        return Err(
            "CUDA_BENCH_MIXED needs a context of 2 or more and prompts of 1 or more".into(),
        );
    }
    let bs = model.block_size();
    let (per_dec, per_pre) = (c.div_ceil(bs), p.div_ceil(bs));
    if d * per_dec + s * per_pre > model.num_kv_blocks() {
        return Err(format!("{d} x {c} + {s} x {p} tokens do not fit the KV cache").into());
    }
    let ids = |seq: usize, n: usize| -> Vec<u32> {
        (0..n)
            .map(|i| ((i * 7919 + seq * 104729) % 30000) as u32 + 100)
            .collect()
    };
    let dec_tables: Vec<Vec<u32>> = (0..d)
        .map(|i| ((i * per_dec) as u32..((i + 1) * per_dec) as u32).collect())
        .collect();
    let base = (d * per_dec) as u32;
    let pre_tables: Vec<Vec<u32>> = (0..s)
        .map(|i| (base + (i * per_pre) as u32..base + ((i + 1) * per_pre) as u32).collect())
        .collect();
    let dec_ids: Vec<Vec<u32>> = (0..d).map(|i| ids(i, c)).collect();
    let pre_ids: Vec<Vec<u32>> = (0..s).map(|i| ids(d + i, p)).collect();
    // The decodes' contexts, up to 8,192 tokens a step.
    let mut pending: Vec<SeqChunk<'_>> = Vec::new();
    let mut tokens = 0;
    for (t, table) in dec_ids.iter().zip(&dec_tables) {
        if tokens + c > 8192 && !pending.is_empty() {
            model.forward(&pending)?;
            pending.clear();
            tokens = 0;
        }
        pending.push(SeqChunk {
            tokens: &t[..c - 1],
            start_pos: 0,
            block_table: table,
            need_logits: false,
        });
        tokens += c;
    }
    if !pending.is_empty() {
        model.forward(&pending)?;
    }
    let decodes: Vec<SeqChunk<'_>> = dec_ids
        .iter()
        .zip(&dec_tables)
        .map(|(t, table)| SeqChunk {
            tokens: &t[c - 1..c],
            start_pos: c - 1,
            block_table: table,
            need_logits: true,
        })
        .collect();
    let prefills: Vec<SeqChunk<'_>> = pre_ids
        .iter()
        .zip(&pre_tables)
        .map(|(t, table)| SeqChunk {
            tokens: t,
            start_pos: 0,
            block_table: table,
            need_logits: true,
        })
        .collect();
    let both: Vec<SeqChunk<'_>> = decodes.iter().chain(&prefills).cloned().collect();
    // CUDA_BENCH_REPS=3 (1 warm-up, 2 timed) keeps a profiler's run short; its last step is
    // then the mixed one.
    let reps: usize = std::env::var("CUDA_BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(9)
        .max(2);
    let warm = (reps - 1).min(2);
    let mut out = [0.0; 3];
    // CUDA_BENCH_PROFILE=1: the profiler API is on only around the last mixed step, so
    // `ncu --profile-from-start off` sees that step's kernels and not the thousands of the
    // context fill above (a whole-run ncu of a 300 x 500 fill runs out of time).
    let profile = std::env::var_os("CUDA_BENCH_PROFILE").is_some();
    for (i, (slot, batch)) in out.iter_mut().zip([&decodes, &prefills, &both]).enumerate() {
        let params = vec![Some(GREEDY); batch.len()];
        let mut times = Vec::new();
        for rep in 0..reps {
            let profiled = profile && i == 2 && rep + 1 == reps;
            if profiled {
                // SAFETY: the profiler calls take no pointers; the context is current.
                unsafe { cudarc::driver::sys::cuProfilerStart() };
            }
            let t = Instant::now();
            model
                .forward_sampled(batch, &params)
                .ok_or("no device sampling")??;
            if profiled {
                // SAFETY: as above; forward_sampled has synchronised (its tokens are on the host).
                unsafe { cudarc::driver::sys::cuProfilerStop() };
            }
            if rep >= warm {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        *slot = times[times.len() / 2];
    }
    Ok(out)
}

/// Median wall time of one prefill step of `tokens` tokens of one sequence (no logits).
fn prefill_ms(model: &mut dyn CausalLm, tokens: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let blocks = tokens.div_ceil(model.block_size());
    if blocks > model.num_kv_blocks() {
        return Err(format!("{tokens} tokens do not fit the KV cache").into());
    }
    let table: Vec<u32> = (0..blocks as u32).collect();
    let ids: Vec<u32> = (0..tokens)
        .map(|i| ((i * 7919) % 30000) as u32 + 100)
        .collect();
    let mut times = Vec::new();
    for rep in 0..7 {
        let t = Instant::now();
        model.forward(&[SeqChunk {
            tokens: &ids,
            start_pos: 0,
            block_table: &table,
            need_logits: false,
        }])?;
        if rep >= 2 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Median wall time of one decode step of `batch` sequences at `context` tokens, after a
/// prefill and a warm-up: synchronous steps, then overlapped ones (from one collected step to
/// the next; NaN where the model cannot launch steps).
fn decode_step_ms(
    model: &mut dyn CausalLm,
    batch: usize,
    context: usize,
    steps: usize,
) -> Result<(f64, f64), Box<dyn std::error::Error>> {
    let bs = model.block_size();
    let per_seq = (context + steps + 8).div_ceil(bs);
    if per_seq * batch > model.num_kv_blocks() {
        return Err(format!("{batch} x {context} tokens do not fit the KV cache").into());
    }
    let tables: Vec<Vec<u32>> = (0..batch)
        .map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect())
        .collect();
    // Random-looking prompt ids, never all equal.
    let mut tokens: Vec<Vec<u32>> = (0..batch)
        .map(|s| {
            (0..context)
                .map(|i| ((i * 7919 + s * 104729) % 30000) as u32 + 100)
                .collect()
        })
        .collect();
    // Prefill in chunks of at most 8192 tokens per step.
    for (s, t) in tokens.iter().enumerate() {
        for start in (0..context).step_by(8192) {
            let end = (start + 8192).min(context);
            model.forward(&[SeqChunk {
                tokens: &t[start..end],
                start_pos: start,
                block_table: &tables[s],
                need_logits: false,
            }])?;
        }
    }
    let mut times = Vec::with_capacity(steps);
    for step in 0..steps + 3 {
        let pos = context - 1 + step;
        let batch_chunks: Vec<SeqChunk<'_>> = tokens
            .iter()
            .zip(&tables)
            .map(|(t, table)| SeqChunk {
                tokens: &t[pos..pos + 1],
                start_pos: pos,
                block_table: table,
                need_logits: true,
            })
            .collect();
        let params = vec![Some(GREEDY); batch];
        let t = Instant::now();
        let picked = model
            .forward_sampled(&batch_chunks, &params)
            .ok_or("no device sampling")??;
        let dt = t.elapsed().as_secs_f64() * 1e3;
        if step >= 3 {
            times.push(dt);
        }
        for (t, p) in tokens.iter_mut().zip(picked) {
            match p {
                pagedserve_shard::model::Picked::Token(id) => t.push(id),
                pagedserve_shard::model::Picked::Logits(_) => return Err("logits".into()),
            }
        }
    }
    times.sort_by(f64::total_cmp);
    let sync = times[times.len() / 2];
    if !model.can_launch() {
        return Ok((sync, f64::NAN));
    }
    // Overlapped: the same steps again, at the same positions (so the same KV bytes a step),
    // every step's input the last step's draw, fed on the device (the host's token is a 0
    // placeholder). Greedy draws over the same inputs must repeat the synchronous run's.
    let start = context - 1;
    let params = vec![GREEDY; batch];
    let placeholder = [0u32];
    let mut times = Vec::with_capacity(steps);
    let mut last = Instant::now();
    let mut differ = 0;
    for step in 0..steps + 3 {
        let pos = start + step;
        let chunks: Vec<SeqChunk<'_>> = tokens
            .iter()
            .zip(&tables)
            .map(|(t, table)| SeqChunk {
                tokens: if step == 0 {
                    &t[pos..pos + 1]
                } else {
                    &placeholder
                },
                start_pos: pos,
                block_table: table,
                need_logits: true,
            })
            .collect();
        let feeds: Vec<(usize, u32)> = match step {
            0 => Vec::new(),
            _ => (0..batch).map(|i| (i, i as u32)).collect(),
        };
        model.launch(&chunks, &params, &feeds)?;
        if step > 0 {
            let drawn = model.collect()?;
            if drawn.len() != batch {
                return Err(format!("{} draws for {batch} sequences", drawn.len()).into());
            }
            // Draws of step - 1, the token at position pos.
            differ += drawn
                .iter()
                .zip(&tokens)
                .filter(|&(d, t)| t.get(pos) != Some(d))
                .count();
            let now = Instant::now();
            if step >= 4 {
                times.push((now - last).as_secs_f64() * 1e3);
            }
            last = now;
        }
    }
    model.collect()?;
    if differ > 0 {
        eprintln!("batch {batch}: {differ} overlapped draws differ from the synchronous run's");
    }
    times.sort_by(f64::total_cmp);
    Ok((sync, times[times.len() / 2]))
}

/// Bytes read + written per second by a 2 GiB device-to-device copy (median of 20).
fn copy_bandwidth() -> Result<f64, Box<dyn std::error::Error>> {
    let ctx = CudaContext::new(0)?;
    let stream = ctx.new_stream()?;
    let n = 1usize << 31;
    // Random data, never zeros (METHOD.md).
    let kernels = pagedserve_kernels::Kernels::load(&ctx, None)?;
    let mut src = stream.alloc_zeros::<half::bf16>(n / 2)?;
    kernels.fill_random_bf16(&stream, &mut src.as_view_mut(), 7, 1.0)?;
    let mut dst = stream.alloc_zeros::<half::bf16>(n / 2)?;
    let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let (start, end) = (ctx.new_event(timing)?, ctx.new_event(timing)?);
    let mut times = Vec::new();
    for i in 0..23 {
        start.record(&stream)?;
        stream.memcpy_dtod(&src, &mut dst)?;
        end.record(&stream)?;
        end.synchronize()?;
        if i >= 3 {
            times.push(start.elapsed_ms(&end)? as f64);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(2.0 * n as f64 / (times[times.len() / 2] / 1e3))
}
