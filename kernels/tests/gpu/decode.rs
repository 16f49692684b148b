//! Paged decode attention against the f64 reference.

use std::error::Error;

use cudarc::driver::CudaSlice;
use rand::Rng;
use rand::seq::SliceRandom;

use crate::attention_ref::{HostCache, block_tables};
use crate::common::*;
use pagedserve_kernels::{decode_partition, decode_workspace_len};

struct Case {
    h: usize,
    kvh: usize,
    d: usize,
    bs: usize,
    lens: Vec<usize>,
    max_ctx: usize,
}

/// Attention over cached tokens: bf16 inputs, f32 accumulation, bf16 output.
const ATTN_TOL: f64 = 1e-2;

#[test]
fn paged_decode_attention_matches_reference() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("paged_decode_attention");
    let cases = [
        // SmolLM2 heads: one partition, several, a padding sequence (0) and 1-token contexts.
        Case {
            h: 9,
            kvh: 3,
            d: 64,
            bs: 16,
            lens: vec![1, 17, 300, 0, 700, 256],
            max_ctx: 1024,
        },
        // Llama-3-8B heads, contexts spanning many blocks and partitions.
        Case {
            h: 32,
            kvh: 8,
            d: 128,
            bs: 16,
            lens: vec![5, 257, 1500, 2048, 0, 33],
            max_ctx: 2048,
        },
        // Other groups and block sizes.
        Case {
            h: 8,
            kvh: 1,
            d: 128,
            bs: 32,
            lens: vec![600, 3],
            max_ctx: 700,
        },
        Case {
            h: 14,
            kvh: 2,
            d: 64,
            bs: 8,
            lens: vec![129, 511, 512, 513],
            max_ctx: 600,
        },
        // Launches big enough for 256-token partitions (S * ceil(max_ctx / 256) >= 64), and for
        // 512-token ones (>= 256).
        Case {
            h: 32,
            kvh: 8,
            d: 128,
            bs: 16,
            lens: (0..18).map(|_| rng.random_range(0..=1024)).collect(),
            max_ctx: 1024,
        },
        Case {
            h: 9,
            kvh: 3,
            d: 64,
            bs: 16,
            lens: (0..70).map(|_| rng.random_range(1..=256)).collect(),
            max_ctx: 256,
        },
        Case {
            h: 32,
            kvh: 8,
            d: 128,
            bs: 16,
            lens: (0..40).map(|_| rng.random_range(0..=1800)).collect(),
            max_ctx: 1800,
        },
        Case {
            h: 9,
            kvh: 3,
            d: 64,
            bs: 32,
            lens: (0..64).map(|_| rng.random_range(1..=1100)).collect(),
            max_ctx: 1100,
        },
    ];
    for c in &cases {
        run_case(g, &mut rng, c)?;
    }
    Ok(())
}

/// Out-of-range inputs the kernel must tolerate, per sequence index.
#[derive(Default)]
struct Faults {
    /// Sequences whose q row is -1 (nothing written, no partition counted).
    no_q_row: Vec<usize>,
    /// (sequence, table entry) holding a block id outside the cache: read as block 0.
    bad_block: Vec<(usize, usize)>,
}

/// A workspace of `len` f32 whose last `counters` elements are zero (the combine's counters, as
/// `alloc_zeros` leaves them) and the rest poison.
fn workspace(g: &Gpu, len: usize, counters: usize) -> Result<CudaSlice<f32>, Box<dyn Error>> {
    let mut ws = poison_f32(len);
    ws[len - counters..].fill(0.0);
    up(g, &ws)
}

/// After a launch, the counter words at the end of the workspace are back to zero.
fn check_counters_reset(g: &Gpu, ws: &CudaSlice<f32>, counters: usize, label: &str) -> TestResult {
    let host = down(g, ws)?;
    let tail = &host[host.len() - counters..];
    let bad: Vec<(usize, u32)> = tail
        .iter()
        .enumerate()
        .filter(|(_, x)| x.to_bits() != 0)
        .map(|(i, x)| (host.len() - counters + i, x.to_bits()))
        .collect();
    assert!(bad.is_empty(), "{label}: counters not reset: {bad:?}");
    Ok(())
}

fn run_case(g: &Gpu, rng: &mut rand::rngs::StdRng, c: &Case) -> TestResult {
    let s = c.lens.len();
    let ws_len = decode_workspace_len(s, c.h, c.d, c.max_ctx) + rng.random_range(0..5);
    let mut ws = workspace(g, ws_len, s * c.h)?;
    launch_and_check(g, rng, c, &mut ws, &Faults::default())?;
    check_counters_reset(g, &ws, s * c.h, &format!("{:?}", c.lens))
}

/// One decode launch on fresh random inputs over `ws`, checked against the reference.
fn launch_and_check(
    g: &Gpu,
    rng: &mut rand::rngs::StdRng,
    c: &Case,
    ws: &mut CudaSlice<f32>,
    faults: &Faults,
) -> TestResult {
    let s = c.lens.len();
    let num_blocks = c
        .lens
        .iter()
        .map(|l| l.div_ceil(c.bs).max(1))
        .sum::<usize>()
        + 7;
    let cache = HostCache::random(rng, num_blocks, c.kvh, c.bs, c.d);
    let (mut tables, bt_stride) = block_tables(rng, &c.lens, c.bs, num_blocks);
    // What the kernel reads for an out-of-range id (block 0), for the reference.
    let mut ref_tables = tables.clone();
    for (i, &(si, e)) in faults.bad_block.iter().enumerate() {
        tables[si * bt_stride + e] = if i % 2 == 0 {
            num_blocks as i32 + 3
        } else {
            -7
        };
        ref_tables[si * bt_stride + e] = 0;
    }
    // Rows of qkv / out: two more than sequences, in shuffled order; unused rows stay poison.
    let t = s + 2;
    let stride = (c.h + 2 * c.kvh) * c.d;
    let qkv = to_bf16(&rand_vec(rng, t * stride, -2.0, 2.0));
    let mut rows: Vec<i32> = (0..t as i32).collect();
    rows.shuffle(rng);
    let mut q_rows = rows[..s].to_vec();
    for &si in &faults.no_q_row {
        q_rows[si] = -1;
    }
    let ctx: Vec<i32> = c.lens.iter().map(|&l| l as i32).collect();
    let scale = 1.0 / (c.d as f64).sqrt();

    let (d_qkv, d_rows, d_tables, d_ctx) =
        (up(g, &qkv)?, up(g, &q_rows)?, up(g, &tables)?, up(g, &ctx)?);
    let (d_k, d_v) = (up(g, &cache.k)?, up(g, &cache.v)?);
    let mut d_out = up(g, &poison_bf16(t * c.h * c.d))?;
    g.k.paged_decode_attention(
        &g.stream,
        &mut d_out.as_view_mut(),
        &d_qkv.as_view(),
        stride,
        &d_rows.as_view(),
        &d_k.as_view(),
        &d_v.as_view(),
        &d_tables.as_view(),
        bt_stride,
        &d_ctx.as_view(),
        &mut ws.as_view_mut(),
        c.h,
        c.kvh,
        c.d,
        c.bs,
        scale as f32,
        c.max_ctx,
    )?;
    let out = down(g, &d_out)?;

    let (mut got, mut want) = (Vec::new(), Vec::new());
    let mut expect_written = vec![false; t];
    for si in 0..s {
        if c.lens[si] == 0 || q_rows[si] < 0 {
            continue;
        }
        let row = q_rows[si] as usize;
        expect_written[row] = true;
        let table = &ref_tables[si * bt_stride..(si + 1) * bt_stride];
        for h in 0..c.h {
            let q = &qkv[row * stride + h * c.d..][..c.d];
            want.extend(cache.attend(q, table, h / (c.h / c.kvh), c.lens[si], scale));
            got.extend(
                out[(row * c.h + h) * c.d..][..c.d]
                    .iter()
                    .map(|x| x.to_f32() as f64),
            );
        }
    }
    check_rows_written(&out, &expect_written, c.h * c.d);
    let label = format!(
        "decode H={} KVH={} D={} bs={} max_ctx={} part={} lens={:?}",
        c.h,
        c.kvh,
        c.d,
        c.bs,
        c.max_ctx,
        decode_partition(s, c.max_ctx),
        c.lens
    );
    if !want.is_empty() {
        check_attention(&label, &got, &want, c.d, ATTN_TOL);
    }
    Ok(())
}

/// Llama-3-8B heads (H 32, KVH 8, D 128, block 16).
fn llama(lens: Vec<usize>, max_ctx: usize) -> Case {
    Case {
        h: 32,
        kvh: 8,
        d: 128,
        bs: 16,
        lens,
        max_ctx,
    }
}

/// Sequences that split into many partitions of different sizes in one launch: the kernel
/// picks each one's partition count from its own length, so these mix 1, 2, ~10 and the full
/// ceil(max_ctx / P) partitions, for each partition size the host can pick.
#[test]
fn paged_decode_attention_splits_by_length() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("paged_decode_attention_splits_by_length");
    let cases = [
        // 64-token slots (3 x 16 pairs < 64).
        llama(vec![4096, 70, 1000], 4096),
        // 256-token slots, lengths from 1 to max_ctx.
        llama(vec![4096, 70, 1000, 1, 0, 2500], 4096),
        // 512-token slots (16 x 16 pairs >= 256), short and long.
        llama(
            (0..16)
                .map(|i| [4096, 1, 65, 700, 2049, 16, 3333, 0][i % 8])
                .collect(),
            4096,
        ),
        // Block size 64 (partitions are whole blocks), G = 4, D = 64.
        Case {
            h: 16,
            kvh: 4,
            d: 64,
            bs: 64,
            lens: vec![1, 64, 65, 3000, 129],
            max_ctx: 3000,
        },
        // 64 sequences: the grid's z is capped at a few waves (decode_grid_z: 8 on an H100,
        // against 16 slots of 512 tokens), so CTAs take several partitions in turn.
        llama(
            (0..64)
                .map(|i| [8192, 4096, 1, 700, 5000, 0, 8000, 130][i % 8])
                .collect(),
            8192,
        ),
    ];
    for c in &cases {
        run_case(g, &mut rng, c)?;
    }
    Ok(())
}

/// Batch 1 at long contexts: 128 partitions of 64 tokens, ~80 of 256, and 512-token ones with
/// G = 8 (the kernel whose V prefetch shares shared memory with the cross-warp sums).
#[test]
fn paged_decode_attention_batch1_long_context() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("paged_decode_attention_batch1_long_context");
    let g8 = |len: usize, max_ctx: usize| Case {
        h: 8,
        kvh: 1,
        d: 128,
        bs: 16,
        lens: vec![len],
        max_ctx,
    };
    for c in [
        llama(vec![8192], 8192),
        llama(vec![1024], 8192),
        g8(20_000, 20_000),
        g8(60_000, 65_536),
        g8(777, 65_536),
    ] {
        run_case(g, &mut rng, &c)?;
    }
    Ok(())
}

/// Out-of-range block ids read block 0, a sequence without a q row (-1) writes nothing and
/// leaves its counters alone, zero lengths write nothing.
#[test]
fn paged_decode_attention_tolerates_bad_inputs() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("paged_decode_attention_tolerates_bad_inputs");
    let c = llama(vec![300, 2000, 0, 900, 1], 2048);
    let s = c.lens.len();
    let mut ws = workspace(g, decode_workspace_len(s, c.h, c.d, c.max_ctx), s * c.h)?;
    let faults = Faults {
        no_q_row: vec![1],
        bad_block: vec![(0, 3), (3, 0), (3, 40), (4, 0)],
    };
    launch_and_check(g, &mut rng, &c, &mut ws, &faults)?;
    check_counters_reset(g, &ws, s * c.h, "bad inputs")
}

/// Like CUDA graph replays: one workspace, sized for the largest batch, serves launches of
/// several batch sizes and lengths in a row; every launch must find the counters at zero and
/// leave them so (a stale count would make the wrong CTA combine).
#[test]
fn paged_decode_attention_reuses_its_workspace() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("paged_decode_attention_reuses_its_workspace");
    let (h, d, max_ctx, s_max) = (32, 128, 4096, 8);
    let counters = s_max * h;
    let mut ws = workspace(g, decode_workspace_len(s_max, h, d, max_ctx), counters)?;
    let steps = [
        vec![4096, 100, 3000, 1, 0, 2048, 777, 64],
        vec![4096, 100, 3000, 1, 0, 2048, 778, 65],
        vec![50, 4000],
        vec![1],
        vec![4096],
        vec![2000, 2000, 2000, 2000, 5, 6, 7, 8],
        vec![3, 4095],
    ];
    for lens in steps {
        let c = llama(lens, max_ctx);
        launch_and_check(g, &mut rng, &c, &mut ws, &Faults::default())?;
        check_counters_reset(g, &ws, counters, &format!("{:?}", c.lens))?;
    }
    Ok(())
}

#[test]
fn paged_decode_attention_rejects_bad_shapes() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let (h, kvh, d, bs) = (9, 3, 64, 16);
    let stride = (h + 2 * kvh) * d;
    let qkv = up(g, &poison_bf16(2 * stride))?;
    let rows = up(g, &[0i32, 1])?;
    let cache = up(g, &poison_bf16(4 * kvh * bs * d))?;
    let tables = up(g, &[0i32, 1, 2, 3])?;
    let ctx = up(g, &[3i32, 5])?;
    let mut out = up(g, &poison_bf16(2 * h * d))?;
    let mut ws = up(g, &poison_f32(3))?; // far too small for two sequences
    let r = g.k.paged_decode_attention(
        &g.stream,
        &mut out.as_view_mut(),
        &qkv.as_view(),
        stride,
        &rows.as_view(),
        &cache.as_view(),
        &cache.as_view(),
        &tables.as_view(),
        2,
        &ctx.as_view(),
        &mut ws.as_view_mut(),
        h,
        kvh,
        d,
        bs,
        0.125,
        32,
    );
    assert!(
        matches!(r, Err(pagedserve_kernels::KernelError::Shape { .. })),
        "{r:?}"
    );
    Ok(())
}
