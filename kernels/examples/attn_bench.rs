//! Attention microbenchmark: device copy bandwidth, paged decode attention (Llama-3-8B heads:
//! H=32, KVH=8, D=128, block 16, shuffled blocks) at context 1k/4k/16k x batch 1/32/128
//! (max_ctx = context), the small batches 1-16 at 1k/4k as the engine launches them (max_ctx
//! 8192, Llama-3-8B's, so the grid is sized for 8k and the kernel splits by actual length), the
//! same decode shapes again over an fp8 (e4m3) cache (`--kv-cache-dtype fp8`: half the bytes),
//! and causal prefill attention over short prompts as ShareGPT steps prefill them (1 x 200,
//! 3 x 150, 1 x 512 tokens), one sequence of 2k and 8k tokens and 4 chunks of 1k after 1k cached
//! tokens each, with the device's own key tile (64 keys where shared memory allows) and again
//! with 32-key tiles (what sm_86 / sm_89 GPUs run at D = 128). Times are per call, medians over
//! samples of back-to-back calls timed with CUDA events after warm-up, on random inputs; small
//! cases rotate over several block sets so repeats do not measure L2. Usage:
//! `attn_bench [ptx-cache-dir]`; prints a table.
//!
//! Environment:
//! - `ATTN_BENCH_PREFILL_TILE`: the prefill tile sizes to time, comma-separated, each `auto`
//!   (the size the kernels pick for the step, as the shard launches: 64 query rows a tile for
//!   short prompts, 128 otherwise), `128` or `64` (forced); default `auto`. E.g.
//!   `ATTN_BENCH_PREFILL_TILE=128,64,auto` for an A/B of the tile sizes on every prefill shape
//!   (the `vs` column: TFLOP/s against the first size listed, same shape and key tile).
//! - `ATTN_BENCH_PREFILL_ONLY=1`: only the prefill tables (no copy bandwidth, decode or sample).
//! - `ATTN_BENCH_DECODE_ONLY=1`: only copy bandwidth and the decode tables (no prefill or
//!   sample).
//! - `ATTN_BENCH_DECODE_SHAPES`: only copy bandwidth and these decode launches, at the engine's
//!   max_ctx, fp8 then bf16: comma-separated `SxLEN` (S sequences of LEN tokens) or `SxLO-HI`
//!   (lengths spread evenly over LO..=HI), e.g. `120x600,120x100-1100,300x500`.
//! - `ATTN_BENCH_FP8_DECODE`: the fp8 decode paths to time, comma-separated, each `mma`
//!   (tensor cores), `mma-half` (the same, half the loads in flight) or `cuda` (the CUDA-core
//!   f16x2 path; see `Kernels::set_fp8_decode`); default: the kernels' own
//!   (`PAGEDSERVE_FP8_DECODE`, else mma). E.g. `ATTN_BENCH_FP8_DECODE=cuda,mma-half,mma` times every
//!   fp8 decode shape on each (the `vs` column: time of the first path listed / this one, same
//!   shape).

mod common;

use common::{Bench, Res};
use cudarc::driver::CudaSlice;
use pagedserve_kernels::{F8E4M3, KvElem, decode_partition, decode_workspace_len, prefill_tiles};

/// A prefill tile size to time: the kernels' own per-step choice, or forced rows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tile {
    Auto,
    Rows(usize),
}

impl Tile {
    /// The rows of a launch over `tokens` prefill rows.
    fn rows(self, b: &Bench, tokens: usize) -> usize {
        match self {
            Tile::Auto => b.k.prefill_tile_rows(tokens, H),
            Tile::Rows(r) => r,
        }
    }

    fn label(self) -> String {
        match self {
            Tile::Auto => "auto".into(),
            Tile::Rows(r) => r.to_string(),
        }
    }
}

/// `ATTN_BENCH_PREFILL_TILE` (see the header): the tile sizes to time, in order.
fn tile_modes() -> Res<Vec<Tile>> {
    let Ok(list) = std::env::var("ATTN_BENCH_PREFILL_TILE") else {
        return Ok(vec![Tile::Auto]);
    };
    let mut modes = Vec::new();
    for m in list.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        modes.push(match m {
            "auto" => Tile::Auto,
            _ => match m.parse::<usize>() {
                Ok(r) if pagedserve_kernels::PREFILL_TILE_ROWS.contains(&r) => Tile::Rows(r),
                _ => {
                    return Err(
                        format!("ATTN_BENCH_PREFILL_TILE: {m:?} is not auto, 128 or 64").into(),
                    );
                }
            },
        });
    }
    if modes.is_empty() {
        modes.push(Tile::Auto);
    }
    Ok(modes)
}

/// One prefill timing: the shape's name, key tile, tile-size mode and the rows it ran, (ms,
/// TFLOP/s).
struct PrefillRow {
    name: &'static str,
    kt: usize,
    mode: Tile,
    rows: usize,
    r: (f64, f64),
}

const H: usize = 32;
const KVH: usize = 8;
const D: usize = 128;
const BS: usize = 16;
const REPS: usize = 10;

/// `ATTN_BENCH_FP8_DECODE` (see the header): the fp8 decode paths to time, in order (names as
/// `Kernels::set_fp8_decode` takes them); `None`: the kernels' own.
fn fp8_decode_modes() -> Vec<Option<String>> {
    let list = std::env::var("ATTN_BENCH_FP8_DECODE").unwrap_or_default();
    let modes: Vec<Option<String>> = list
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(|m| Some(m.to_string()))
        .collect();
    if modes.is_empty() { vec![None] } else { modes }
}

/// Random distinct block ids: `sets` tables of `[batch, ceil(ctx / BS)]`, each set from other
/// blocks where the pool allows.
fn tables(pool: usize, batch: usize, ctx: usize, sets: usize, seed: u64) -> Vec<i32> {
    let per = batch * ctx.div_ceil(BS);
    let mut perm: Vec<i32> = (0..pool as i32).collect();
    let mut x = seed | 1;
    for i in (1..perm.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        perm.swap(i, (x % (i as u64 + 1)) as usize);
    }
    (0..sets * per).map(|i| perm[i % pool]).collect()
}

/// max_ctx of the small-batch decode cases: the engine's for Llama-3-8B.
const ENGINE_MAX_CTX: usize = 8192;
/// max_ctx of a long-context model's engine (Llama-3.1-8B: 131,072).
const LONG_MAX_CTX: usize = 131_072;

struct DecodeRow {
    ctx: usize,
    max_ctx: usize,
    batch: usize,
    us: f64,
    gbs: f64,
}

/// `n` random e4m3 values of [-1, 1] (never NaN) on the device: a 16 Mi-element pattern from the
/// host, copied over the whole buffer (the block tables are random anyway).
fn random_fp8(b: &Bench, n: usize, seed: u64) -> Res<CudaSlice<F8E4M3>> {
    let m = n.min(1 << 24);
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let host: Vec<F8E4M3> = (0..m)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            F8E4M3::from_f32((x >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        })
        .collect();
    let pattern = b.stream.clone_htod(&host)?;
    // SAFETY: every element is written by the copies below before any read.
    let mut dst = unsafe { b.stream.alloc::<F8E4M3>(n) }?;
    let mut at = 0;
    while at < n {
        let len = m.min(n - at);
        b.stream
            .memcpy_dtod(&pattern.slice(..len), &mut dst.slice_mut(at..at + len))?;
        at += len;
    }
    Ok(dst)
}

/// One decode shape over caches of `C` (bf16 or e4m3): bytes = the K and V rows read, at
/// `size_of::<C>()` bytes an element.
fn decode_case<C: KvElem>(
    b: &Bench,
    kv: &(CudaSlice<C>, CudaSlice<C>),
    pool: usize,
    ctx: usize,
    max_ctx: usize,
    batch: usize,
) -> Res<DecodeRow> {
    decode_case_lens(b, kv, pool, &vec![ctx; batch], max_ctx)
}

/// [`decode_case`] over sequences of the given lengths (`ctx` of the row: the longest).
fn decode_case_lens<C: KvElem>(
    b: &Bench,
    kv: &(CudaSlice<C>, CudaSlice<C>),
    pool: usize,
    ctx_lens: &[usize],
    max_ctx: usize,
) -> Res<DecodeRow> {
    let batch = ctx_lens.len();
    let ctx = ctx_lens.iter().copied().max().unwrap_or(1);
    let tokens: usize = ctx_lens.iter().sum();
    let bytes = (tokens * KVH * D * 2 * size_of::<C>()) as f64;
    let sets = ((256e6 / bytes).ceil() as usize).clamp(1, 16);
    let per = batch * ctx.div_ceil(BS);
    let bt = b
        .stream
        .clone_htod(&tables(pool, batch, ctx, sets, (ctx * 131 + batch) as u64))?;
    let stride = (H + 2 * KVH) * D;
    let qkv = b.random_bf16(batch * stride, 9, 1.0)?;
    let rows = b
        .stream
        .clone_htod(&(0..batch as i32).collect::<Vec<_>>())?;
    let lens: Vec<i32> = ctx_lens.iter().map(|&l| l as i32).collect();
    let lens = b.stream.clone_htod(&lens)?;
    let mut out = b.random_bf16(batch * H * D, 3, 1.0)?;
    // Zeroed: its last words are the combine's counters.
    let mut ws = b
        .stream
        .alloc_zeros::<f32>(decode_workspace_len(batch, H, D, max_ctx))?;
    let scale = 1.0 / (D as f32).sqrt();
    let ms = b.time(|i| {
        let s = i % sets;
        b.k.paged_decode_attention(
            &b.stream,
            &mut out.as_view_mut(),
            &qkv.as_view(),
            stride,
            &rows.as_view(),
            &kv.0.as_view(),
            &kv.1.as_view(),
            &bt.slice(s * per..(s + 1) * per),
            ctx.div_ceil(BS),
            &lens.as_view(),
            &mut ws.as_view_mut(),
            H,
            KVH,
            D,
            BS,
            scale,
            max_ctx,
        )?;
        Ok(())
    })?;
    Ok(DecodeRow {
        ctx,
        max_ctx,
        batch,
        us: ms * 1e3,
        gbs: bytes / (ms * 1e-3) / 1e9,
    })
}

/// (ms, TFLOP/s) of causal prefill over `seqs` = (rows, earlier tokens) chunks, each sequence
/// with its own (shuffled) blocks of a `C` cache (bf16, or fp8 e4m3); flops = 4 * H * D *
/// (causal query-key pairs), i.e. 4*H*D*n(n+1)/2 for one sequence of n tokens (Q·K^T and P·V,
/// 2 flops per multiply-add).
fn prefill_case<C: pagedserve_kernels::KvElem>(
    b: &Bench,
    kv: &(CudaSlice<C>, CudaSlice<C>),
    pool: usize,
    seqs: &[(usize, usize)],
    tile_rows: usize,
) -> Res<(f64, f64)> {
    let ctx = seqs.iter().map(|&(n, start)| n + start).max().unwrap_or(0);
    let bt_stride = ctx.div_ceil(BS);
    let bt = b.stream.clone_htod(&tables(
        pool,
        seqs.len(),
        bt_stride * BS,
        1,
        (ctx * 7 + seqs.len()) as u64,
    ))?;
    let stride = (H + 2 * KVH) * D;
    let t: usize = seqs.iter().map(|s| s.0).sum();
    let qkv = b.random_bf16(t * stride, 11, 1.0)?;
    let mut info = Vec::new();
    let mut row = 0;
    for &(n, start) in seqs {
        info.push([row as i32, n as i32, start as i32]);
        row += n;
    }
    let tiles: Vec<i32> = prefill_tiles(&info, tile_rows)
        .into_iter()
        .flatten()
        .collect();
    let (info, tiles) = (
        b.stream.clone_htod(&info.concat())?,
        b.stream.clone_htod(&tiles)?,
    );
    let mut out = b.random_bf16(t * H * D, 5, 1.0)?;
    let scale = 1.0 / (D as f32).sqrt();
    let ms = b.time(|_| {
        b.k.paged_prefill_attention(
            &b.stream,
            &mut out.as_view_mut(),
            &qkv.as_view(),
            stride,
            &kv.0.as_view(),
            &kv.1.as_view(),
            &bt.as_view(),
            bt_stride,
            &info.as_view(),
            &tiles.as_view(),
            tile_rows,
            H,
            KVH,
            D,
            BS,
            scale,
        )?;
        Ok(())
    })?;
    let pairs: usize = seqs
        .iter()
        .map(|&(n, start)| n * start + n * (n + 1) / 2)
        .sum();
    let flops = 4.0 * (H * D) as f64 * pairs as f64;
    Ok((ms, flops / (ms * 1e-3) / 1e12))
}

/// Blocks of the fp8 prefill rows' K or V cache: `blocks` x [KVH, BS, D] random e4m3 values of
/// magnitude 1/64..1.875 (never zeros), made on the host.
fn prefill_fp8_cache(
    b: &Bench,
    blocks: usize,
    seed: u64,
) -> Res<CudaSlice<pagedserve_kernels::F8E4M3>> {
    let mut x = seed | 1;
    let host: Vec<_> = (0..blocks * KVH * BS * D)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Sign and 3 mantissa bits, exponent 1..=7 (2^-6..2^0).
            let (sign_mantissa, exponent) = ((x >> 56) as u8 & 0x87, 1 + (x >> 40) as u8 % 7);
            pagedserve_kernels::F8E4M3::from_bits(sign_mantissa | exponent << 3)
        })
        .collect();
    Ok(b.stream.clone_htod(&host)?)
}

/// Microseconds of one sample launch over [batch, vocab] logits for (temperature, top_k,
/// top_p): uniform in [-8, 8] (flat: at temperature 0.8 the top 1,024 tokens hold ~15% of the
/// mass), or `peaked` like a model's next-token distribution (4 tokens at 13.1, 12.0, 11.3,
/// 10.8 over a flat [-0.5, 0.5]: they hold ~99% of the mass at 0.8).
fn sample_case(
    b: &Bench,
    batch: usize,
    vocab: usize,
    (t, k, p): (f32, i32, f32),
    peaked: bool,
) -> Res<f64> {
    let logits = if peaked {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut host: Vec<f32> = (0..batch * vocab)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        for (r, row) in host.chunks_mut(vocab).enumerate() {
            for (j, z) in [13.12f32, 12.02, 11.33, 10.82].into_iter().enumerate() {
                row[(r * 7_919 + j * 31_337) % vocab] = z;
            }
        }
        b.stream.clone_htod(&host)?
    } else {
        // SAFETY: filled by the kernel right away.
        let mut logits = unsafe { b.stream.alloc::<f32>(batch * vocab) }?;
        b.k.fill_random_f32(&b.stream, &mut logits.as_view_mut(), 31, 0.0, 8.0)?;
        logits
    };
    let temp = b.stream.clone_htod(&vec![t; batch])?;
    let top_k = b.stream.clone_htod(&vec![k; batch])?;
    let top_p = b.stream.clone_htod(&vec![p; batch])?;
    let seeds = b
        .stream
        .clone_htod(&(0..batch as u64).collect::<Vec<_>>())?;
    let counters = b.stream.clone_htod(&vec![7u64; batch])?;
    let mut out = b.stream.clone_htod(&vec![0u32; batch])?;
    let ms = b.time(|_| {
        b.k.sample(
            &b.stream,
            &mut out.as_view_mut(),
            &logits.as_view(),
            &temp.as_view(),
            &top_k.as_view(),
            &top_p.as_view(),
            &seeds.as_view(),
            &counters.as_view(),
        )?;
        Ok(())
    })?;
    Ok(ms * 1e3)
}

/// The prefill shapes: (name, (rows, earlier tokens) per sequence).
const PREFILL_CASES: [(&str, &[(usize, usize)]); 6] = [
    // Short prompts as ShareGPT steps prefill them (next to hundreds of decodes).
    ("1 x 200", &[(200, 0)]),
    ("3 x 150", &[(150, 0); 3]),
    ("1 x 512", &[(512, 0)]),
    ("1 x 2048", &[(2048, 0)]),
    ("1 x 8192", &[(8192, 0)]),
    ("4 x 1024 @1024", &[(1024, 1024); 4]),
];

/// Every prefill shape over `kv` (a cache of `C`), with the device's own key tile and then 32
/// keys, each with every tile-size mode of `modes`, in that order.
fn prefill_rows<C: KvElem>(
    b: &Bench,
    kv: &(CudaSlice<C>, CudaSlice<C>),
    pool: usize,
    modes: &[Tile],
) -> Res<Vec<PrefillRow>> {
    let own_kt = b.k.prefill_key_tile_for(C::DTYPE, D).unwrap_or(0);
    let mut out = Vec::new();
    for kt in [None, Some(32)] {
        b.k.set_prefill_key_tile(kt)?;
        for (name, seqs) in PREFILL_CASES {
            let tokens = seqs.iter().map(|s| s.0).sum();
            for &mode in modes {
                let rows = mode.rows(b, tokens);
                let r = prefill_case(b, kv, pool, seqs, rows)?;
                out.push(PrefillRow {
                    name,
                    kt: kt.unwrap_or(own_kt),
                    mode,
                    rows,
                    r,
                });
            }
        }
    }
    b.k.set_prefill_key_tile(None)?;
    Ok(out)
}

/// Prints one prefill table; `vs`: each row's TFLOP/s against `base(i)`'s (in percent).
fn print_prefill(rows: &[PrefillRow], vs: &str, base: impl Fn(usize) -> f64) {
    println!(
        "{:>16} {:>3} {:>5} {:>4} {:>10} {:>9} {:>8}",
        "sequences", "KT", "tile", "rows", "time_ms", "TFLOP/s", vs
    );
    for (i, p) in rows.iter().enumerate() {
        let (ms, tf) = p.r;
        let pct = 100.0 * tf / base(i);
        println!(
            "{:>16} {:>3} {:>5} {:>4} {ms:>10.3} {tf:>9.1} {pct:>7.1}%",
            p.name,
            p.kt,
            p.mode.label(),
            p.rows
        );
    }
}

fn main() -> Res<()> {
    let cache = std::env::args().nth(1).map(std::path::PathBuf::from);
    let b = Bench::new(cache.as_deref(), REPS)?;
    let modes = tile_modes()?;
    let prefill_only = std::env::var("ATTN_BENCH_PREFILL_ONLY").is_ok_and(|v| v == "1");
    let decode_only = std::env::var("ATTN_BENCH_DECODE_ONLY").is_ok_and(|v| v == "1");
    let fp8_modes = fp8_decode_modes();
    // Unknown names fail here, not after the bf16 tables.
    let own = b.k.fp8_decode();
    for path in fp8_modes.iter().flatten() {
        b.k.set_fp8_decode(path)?;
    }
    b.k.set_fp8_decode(own)?;
    if prefill_only {
        let (prefill, prefill8) = prefill_tables(&b, &modes)?;
        println!("\n== attn_bench ({}, {}) ==", b.ctx.name()?, b.k.arch());
        print_prefill_tables(&prefill, &prefill8, modes.len());
        return Ok(());
    }
    let copy = b.copy_bandwidth()?;
    let pool = 128 * 16384 / BS; // blocks for the largest case
    let n = pool * KVH * BS * D;
    if let Some(shapes) = decode_shapes()? {
        return decode_shapes_table(&b, pool, n, copy, &shapes);
    }
    let kv = (b.random_bf16(n, 21, 1.0)?, b.random_bf16(n, 22, 1.0)?);
    let mut rows = Vec::new();
    for ctx_len in [1024, 4096, 16384] {
        for batch in [1, 32, 128] {
            rows.push(decode_case(&b, &kv, pool, ctx_len, ctx_len, batch)?);
        }
    }
    let mut small = Vec::new();
    for ctx_len in [1024, 4096] {
        for batch in [1, 2, 4, 8, 16] {
            small.push(decode_case(&b, &kv, pool, ctx_len, ENGINE_MAX_CTX, batch)?);
        }
    }
    // A long-context model's engine (Llama-3.1's 131,072): the grid is sized for max_ctx.
    for (ctx_len, batch) in [(1024, 1), (1024, 8), (1024, 32), (4096, 32)] {
        small.push(decode_case(&b, &kv, pool, ctx_len, LONG_MAX_CTX, batch)?);
    }
    // The big steps of a ShareGPT run at request rate inf: hundreds of sequences of a few
    // hundred tokens each (prompts ~230 tokens, answers ~200), the engine's max_ctx.
    // And a real ShareGPT serving step's decode (Llama-3-8B, fp8 cache: 300 and 200 sequences
    // of ~500 tokens; 500 is no multiple of the block size, the last block is partial).
    for (ctx_len, batch) in [(256, 1024), (512, 512), (512, 1024), (500, 300), (500, 200)] {
        small.push(decode_case(&b, &kv, pool, ctx_len, ENGINE_MAX_CTX, batch)?);
    }
    // Every decode shape again over fp8 caches of the same size (pool and block tables as
    // above, half the bytes), their rows next to the bf16 ones in the table: once per fp8
    // decode path of ATTN_BENCH_FP8_DECODE.
    let kv8 = (random_fp8(&b, n, 23)?, random_fp8(&b, n, 24)?);
    let mut fp8_tables = Vec::new();
    for mode in &fp8_modes {
        if let Some(path) = mode {
            b.k.set_fp8_decode(path)?;
        }
        let path = b.k.fp8_decode();
        let mut fp8_rows = Vec::new();
        for r in rows.iter().chain(&small) {
            fp8_rows.push(decode_case(&b, &kv8, pool, r.ctx, r.max_ctx, r.batch)?);
        }
        fp8_tables.push((path, fp8_rows));
    }
    drop(kv8);
    drop(kv);
    let (prefill, prefill8) = if decode_only {
        (Vec::new(), Vec::new())
    } else {
        prefill_tables(&b, &modes)?
    };
    let modes = [
        ("greedy", 0.0, 0, 1.0),
        ("temperature", 0.8, 0, 1.0),
        ("top-p 0.9", 0.8, 0, 0.9),
        ("top-k 50", 0.8, 50, 1.0),
        ("top-k 50 + top-p 0.9", 0.8, 50, 0.9),
    ];
    let mut samples = Vec::new();
    for (name, t, k, p) in modes.into_iter().filter(|_| !decode_only) {
        for batch in [1, 128] {
            samples.push((
                name,
                batch,
                sample_case(&b, batch, 128_256, (t, k, p), false)?,
            ));
        }
    }
    // Top-p alone where the nucleus is small, as with a real model (candidate path), and the
    // same with top-k 50 for comparison.
    for (name, t, k, p) in [
        ("top-p 0.9, peaked", 0.8, 0, 0.9),
        ("top-k 50 + top-p 0.9, peaked", 0.8, 50, 0.9),
    ]
    .into_iter()
    .filter(|_| !decode_only)
    {
        for batch in [1, 128] {
            samples.push((
                name,
                batch,
                sample_case(&b, batch, 128_256, (t, k, p), true)?,
            ));
        }
    }
    println!("\n== attn_bench ({}, {}) ==", b.ctx.name()?, b.k.arch());
    println!("device copy bandwidth (read + write): {copy:.0} GB/s");
    println!(
        "paged decode attention, H=32 KVH=8 D=128 block 16 (bytes = K+V read; part = longest \
         partition, shorter ones where the launch would not fill the GPU):"
    );
    println!(
        "{:>7} {:>7} {:>6} {:>5} {:>10} {:>9} {:>7}",
        "context", "max_ctx", "batch", "part", "time_us", "GB/s", "%copy"
    );
    for (i, r) in rows.iter().chain(&small).enumerate() {
        if i == rows.len() {
            println!(
                "small batches (and ShareGPT-like wide ones, last), max_ctx as in the engine:"
            );
        }
        let (part, pct) = (decode_partition(r.batch, r.max_ctx), 100.0 * r.gbs / copy);
        println!(
            "{:>7} {:>7} {:>6} {part:>5} {:>10.1} {:>9.0} {pct:>6.1}%",
            r.ctx, r.max_ctx, r.batch, r.us, r.gbs
        );
    }
    let first = &fp8_tables[0].1;
    for (path, fp8_rows) in &fp8_tables {
        println!(
            "paged decode attention over an fp8 e4m3 cache, {path} path, the same shapes (bytes = \
             K+V read at 1 byte an element; x bf16 = bf16 time / fp8 time; vs {} = its time / \
             this one's):",
            fp8_tables[0].0
        );
        println!(
            "{:>7} {:>7} {:>6} {:>5} {:>10} {:>9} {:>7} {:>7} {:>7}",
            "context", "max_ctx", "batch", "part", "time_us", "GB/s", "%copy", "x bf16", "vs"
        );
        for ((r, r16), r0) in fp8_rows.iter().zip(rows.iter().chain(&small)).zip(first) {
            let (part, pct) = (decode_partition(r.batch, r.max_ctx), 100.0 * r.gbs / copy);
            println!(
                "{:>7} {:>7} {:>6} {part:>5} {:>10.1} {:>9.0} {pct:>6.1}% {:>7.2} {:>7.3}",
                r.ctx,
                r.max_ctx,
                r.batch,
                r.us,
                r.gbs,
                r16.us / r.us,
                r0.us / r.us
            );
        }
    }
    if decode_only {
        return Ok(());
    }
    print_prefill_tables(&prefill, &prefill8, modes.len());
    println!("sample over a 128256-token vocabulary:");
    for (name, batch, us) in samples {
        println!("{name:>29} batch {batch:>4}: {us:>8.1} us");
    }
    Ok(())
}

/// The prefill rows over a bf16 cache, then over an fp8 (e4m3) one (each its own pool of 8192
/// tokens' blocks, twice over), each case's blocks shuffled.
fn prefill_tables(b: &Bench, modes: &[Tile]) -> Res<(Vec<PrefillRow>, Vec<PrefillRow>)> {
    let pool = 2 * 8192 / BS; // twice the blocks of the largest case (8192 tokens)
    let n = pool * KVH * BS * D;
    let kv = (b.random_bf16(n, 21, 1.0)?, b.random_bf16(n, 22, 1.0)?);
    let prefill = prefill_rows(b, &kv, pool, modes)?;
    drop(kv);
    let pool8 = 2 * 8192 / BS;
    let kv8 = (
        prefill_fp8_cache(b, pool8, 41)?,
        prefill_fp8_cache(b, pool8, 42)?,
    );
    let prefill8 = prefill_rows(b, &kv8, pool8, modes)?;
    Ok((prefill, prefill8))
}

/// Both prefill tables: bf16 (`vs`: against the first tile-size mode of the same shape and key
/// tile), then fp8 (`vs`: against the bf16 row of the same shape, key tile and mode).
fn print_prefill_tables(prefill: &[PrefillRow], prefill8: &[PrefillRow], modes: usize) {
    println!(
        "prefill attention, causal, H=32 KVH=8 D=128 block 16 (rows x tokens @earlier tokens; \
         flops = 4*H*D*causal pairs; tile: the tile-size mode, rows: the query rows a tile it ran):"
    );
    print_prefill(prefill, "vs 1st", |i| prefill[i - i % modes].r.1);
    println!(
        "prefill attention over an fp8 (e4m3) cache, same shapes (vs 1st: against the first \
         tile-size mode, vs bf16: against the bf16 row of the same shape, key tile and mode):"
    );
    print_prefill(prefill8, "vs 1st", |i| prefill8[i - i % modes].r.1);
    println!("fp8 against bf16:");
    print_prefill(prefill8, "vs bf16", |i| prefill[i].r.1);
}

/// A decode launch of `ATTN_BENCH_DECODE_SHAPES`: its sequences' lengths.
type DecodeShape = Vec<usize>;

/// `ATTN_BENCH_DECODE_SHAPES` (see the header): decode launches of `S` sequences whose lengths
/// spread evenly over `LO..=HI` tokens (`SxLEN`: all `LEN`).
fn decode_shapes() -> Res<Option<Vec<DecodeShape>>> {
    let Ok(spec) = std::env::var("ATTN_BENCH_DECODE_SHAPES") else {
        return Ok(None);
    };
    let bad = |what: &str| format!("ATTN_BENCH_DECODE_SHAPES: `{what}` is not SxLEN or SxLO-HI");
    let mut shapes = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (s, lens) = item.split_once('x').ok_or_else(|| bad(item))?;
        let s: usize = s.parse().map_err(|_| bad(item))?;
        let (lo, hi) = match lens.split_once('-') {
            Some((lo, hi)) => (lo.parse(), hi.parse()),
            None => (lens.parse(), lens.parse()),
        };
        let (lo, hi): (usize, usize) = (lo.map_err(|_| bad(item))?, hi.map_err(|_| bad(item))?);
        if s == 0 || lo == 0 || hi < lo {
            return Err(bad(item).into());
        }
        let lens = (0..s)
            .map(|i| lo + (hi - lo) * i / (s - 1).max(1))
            .collect();
        shapes.push(lens);
    }
    Ok(Some(shapes))
}

/// Only the `ATTN_BENCH_DECODE_SHAPES` launches, at the engine's max_ctx, over an fp8 cache
/// with the kernels' own fp8 path (PAGEDSERVE_FP8_DECODE) and over a bf16 cache.
fn decode_shapes_table(
    b: &Bench,
    pool: usize,
    n: usize,
    copy: f64,
    shapes: &[DecodeShape],
) -> Res<()> {
    let kv8 = (random_fp8(b, n, 23)?, random_fp8(b, n, 24)?);
    let mut fp8 = Vec::new();
    for lens in shapes {
        fp8.push(decode_case_lens(b, &kv8, pool, lens, ENGINE_MAX_CTX)?);
    }
    drop(kv8);
    let kv = (b.random_bf16(n, 21, 1.0)?, b.random_bf16(n, 22, 1.0)?);
    let mut bf = Vec::new();
    for lens in shapes {
        bf.push(decode_case_lens(b, &kv, pool, lens, ENGINE_MAX_CTX)?);
    }
    println!(
        "\n== attn_bench decode shapes ({}, {}) ==",
        b.ctx.name()?,
        b.k.arch()
    );
    println!(
        "device copy bandwidth (read + write): {copy:.0} GB/s; fp8 path {}",
        b.k.fp8_decode()
    );
    println!(
        "{:>6} {:>11} {:>5} {:>10} {:>7} {:>10} {:>7}",
        "batch", "lengths", "part", "fp8 us", "%copy", "bf16 us", "%copy"
    );
    for ((lens, r8), r16) in shapes.iter().zip(&fp8).zip(&bf) {
        let (s, lo) = (lens.len(), lens.iter().min().copied().unwrap_or(0));
        println!(
            "{s:>6} {:>11} {:>5} {:>10.1} {:>6.1}% {:>10.1} {:>6.1}%",
            format!("{lo}-{}", r8.ctx),
            decode_partition(s, ENGINE_MAX_CTX),
            r8.us,
            100.0 * r8.gbs / copy,
            r16.us,
            100.0 * r16.gbs / copy
        );
    }
    Ok(())
}
