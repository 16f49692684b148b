//! Paged decode attention against the f64 reference.

use rand::Rng;
use rand::seq::SliceRandom;

use crate::attention_ref::{HostCache, block_tables};
use crate::common::*;
use pagedserve_kernels::decode_workspace_len;

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
        let part = pagedserve_kernels::decode_partition(c.lens.len(), c.max_ctx);
        eprintln!("partition {part}");
        run_case(g, &mut rng, c)?;
    }
    Ok(())
}

fn run_case(g: &Gpu, rng: &mut rand::rngs::StdRng, c: &Case) -> TestResult {
    let s = c.lens.len();
    let num_blocks = c
        .lens
        .iter()
        .map(|l| l.div_ceil(c.bs).max(1))
        .sum::<usize>()
        + 7;
    let cache = HostCache::random(rng, num_blocks, c.kvh, c.bs, c.d);
    let (tables, bt_stride) = block_tables(rng, &c.lens, c.bs, num_blocks);
    // Rows of qkv / out: two more than sequences, in shuffled order; unused rows stay poison.
    let t = s + 2;
    let stride = (c.h + 2 * c.kvh) * c.d;
    let qkv = to_bf16(&rand_vec(rng, t * stride, -2.0, 2.0));
    let mut rows: Vec<i32> = (0..t as i32).collect();
    rows.shuffle(rng);
    let q_rows = rows[..s].to_vec();
    let ctx: Vec<i32> = c.lens.iter().map(|&l| l as i32).collect();
    let scale = 1.0 / (c.d as f64).sqrt();
    let ws_len = decode_workspace_len(s, c.h, c.d, c.max_ctx) + rng.random_range(0..5);

    let (d_qkv, d_rows, d_tables, d_ctx) =
        (up(g, &qkv)?, up(g, &q_rows)?, up(g, &tables)?, up(g, &ctx)?);
    let (d_k, d_v) = (up(g, &cache.k)?, up(g, &cache.v)?);
    let mut d_out = up(g, &poison_bf16(t * c.h * c.d))?;
    let mut d_ws = up(g, &poison_f32(ws_len))?;
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
        &mut d_ws.as_view_mut(),
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
        let row = q_rows[si] as usize;
        if c.lens[si] == 0 {
            continue;
        }
        expect_written[row] = true;
        let table = &tables[si * bt_stride..(si + 1) * bt_stride];
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
        "decode H={} KVH={} D={} bs={} lens={:?}",
        c.h, c.kvh, c.d, c.bs, c.lens
    );
    check_attention(&label, &got, &want, c.d, ATTN_TOL);
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
