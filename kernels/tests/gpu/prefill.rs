//! Paged prefill attention (causal, chunked) against the f64 reference, for each kernel variant
//! a device may run: the one this device picks, 32-key tiles (what sm_86 / sm_89 GPUs pick at
//! D = 128), and 32-key tiles compiled for sm_86 (what an L4 or A10 runs, emulated here).

use pagedserve_kernels::{KernelError, Kernels, prefill_tiles};

use crate::attention_ref::{HostCache, block_tables};
use crate::common::*;

struct Case {
    h: usize,
    kvh: usize,
    d: usize,
    bs: usize,
    /// (num_rows, start_pos) per sequence: start_pos > 0 is a later chunk of a prompt whose
    /// earlier K/V are already in the cache.
    seqs: Vec<(usize, usize)>,
}

const ATTN_TOL: f64 = 1e-2;

/// The prefill kernel this device picks (64-key tiles on sm_80 / sm_90, 32 where shared
/// memory is smaller).
#[test]
fn paged_prefill_attention_matches_reference() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    run_cases(g, "paged_prefill_attention")
}

/// The 32-key kernels forced on this device (its own kernels, loaded again so the shared ones
/// keep their choice), and the key-tile setting's checks.
#[test]
fn paged_prefill_attention_k32_matches_reference() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let k = Kernels::load(g.k.context(), Some(&kernel_cache_dir()))?;
    for d in [64, 128] {
        let kt = k.prefill_key_tile(d);
        assert!(matches!(kt, Some(32 | 64)), "D = {d}: key tile {kt:?}");
    }
    assert_eq!(k.prefill_key_tile(96), None);
    let r = k.set_prefill_key_tile(Some(48));
    assert!(matches!(r, Err(KernelError::Shape { .. })), "{r:?}");
    let defaults = [k.prefill_key_tile(64), k.prefill_key_tile(128)];
    k.set_prefill_key_tile(Some(32))?;
    assert_eq!(k.prefill_key_tile(64), Some(32));
    assert_eq!(k.prefill_key_tile(128), Some(32));
    let v = Gpu {
        stream: g.stream.clone(),
        k,
    };
    run_cases(&v, "paged_prefill_attention_k32")?;
    v.k.set_prefill_key_tile(None)?;
    assert_eq!(
        [v.k.prefill_key_tile(64), v.k.prefill_key_tile(128)],
        defaults
    );
    Ok(())
}

/// What an sm_86 / sm_89 GPU (A10, L4, L40S) runs: the kernels compiled for sm_86 (the driver
/// compiles that PTX for this device at load; no PDL below sm_90) with 32-key tiles.
#[test]
fn paged_prefill_attention_sm86_k32_matches_reference() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    // sm_XY as the number XY (sm_100: 100), which orders architectures.
    let device: u32 = g.k.arch().trim_start_matches("sm_").parse().unwrap_or(0);
    if device < 86 {
        eprintln!("skipped: {} cannot run sm_86 code", g.k.arch());
        return Ok(());
    }
    let ctx = g.k.context();
    // Architectures the device cannot run are refused before anything compiles.
    for arch in ["sm_75", "sm_90a", "sm_999"] {
        let r = Kernels::load_for_arch(ctx, arch, None);
        assert!(
            matches!(r, Err(KernelError::ArchUnusable { .. })),
            "{arch}: {:?}",
            r.err()
        );
    }
    let k = Kernels::load_for_arch(ctx, "sm_86", Some(&kernel_cache_dir()))?;
    assert_eq!(k.arch(), "sm_86");
    assert!(!k.pdl(), "PDL follows the compiled architecture");
    k.set_prefill_key_tile(Some(32))?;
    let v = Gpu {
        stream: g.stream.clone(),
        k,
    };
    run_cases(&v, "paged_prefill_attention_sm86_k32")
}

/// Every case of [`cases`] on `g`'s kernels.
fn run_cases(g: &Gpu, name: &str) -> TestResult {
    let mut rng = rng(name);
    for c in cases() {
        run_case(g, &mut rng, &c)?;
    }
    Ok(())
}

fn cases() -> Vec<Case> {
    vec![
        // GQA 3, several sequences: a 1-row chunk after 40 cached tokens, 130 rows after 200
        // (a 2-row last tile), 64 rows (half a tile: two warps without rows).
        Case {
            h: 9,
            kvh: 3,
            d: 64,
            bs: 16,
            seqs: vec![(70, 0), (1, 40), (130, 200), (64, 0)],
        },
        // Llama-3-8B heads (GQA 4).
        Case {
            h: 32,
            kvh: 8,
            d: 128,
            bs: 16,
            seqs: vec![(100, 0), (65, 300), (1, 0), (17, 3)],
        },
        Case {
            h: 8,
            kvh: 2,
            d: 128,
            bs: 32,
            seqs: vec![(300, 1000)],
        },
        // No GQA, block size 8.
        Case {
            h: 4,
            kvh: 4,
            d: 64,
            bs: 8,
            seqs: vec![(129, 7), (2, 0)],
        },
        // GQA 8, block size 64; full 128-row tiles and ones whose last warps have no rows
        // (33 and 97 rows), start positions off the 64-key grid.
        Case {
            h: 16,
            kvh: 2,
            d: 128,
            bs: 64,
            seqs: vec![(256, 0), (33, 61), (97, 129), (128, 64)],
        },
        // GQA 2, D 64, many short chunks after long contexts.
        Case {
            h: 4,
            kvh: 2,
            d: 64,
            bs: 32,
            seqs: vec![(5, 500), (31, 1), (64, 63), (1, 1), (200, 0), (3, 777)],
        },
        // More blocks than the kernel stages in shared memory (1024): the rest of the table is
        // read from global memory.
        Case {
            h: 2,
            kvh: 1,
            d: 64,
            bs: 8,
            seqs: vec![(70, 8300)],
        },
        Case {
            h: 1,
            kvh: 1,
            d: 128,
            bs: 8,
            seqs: vec![(150, 8150)],
        },
        // Start positions on and just off the 32-key grid, a 1-row chunk on it.
        Case {
            h: 6,
            kvh: 2,
            d: 128,
            bs: 16,
            seqs: vec![(32, 31), (95, 33), (1, 32), (160, 0), (40, 97)],
        },
    ]
}

/// One case: the kernel's output against the f64 reference.
fn run_case(g: &Gpu, rng: &mut rand::rngs::StdRng, c: &Case) -> TestResult {
    let keys: Vec<usize> = c.seqs.iter().map(|&(n, start)| n + start).collect();
    let num_blocks = keys.iter().map(|k| k.div_ceil(c.bs)).sum::<usize>() + 5;
    let cache = HostCache::random(rng, num_blocks, c.kvh, c.bs, c.d);
    let (tables, bt_stride) = block_tables(rng, &keys, c.bs, num_blocks);
    let t: usize = c.seqs.iter().map(|s| s.0).sum::<usize>() + 3; // 3 rows of no sequence
    let stride = (c.h + 2 * c.kvh) * c.d;
    let qkv = to_bf16(&rand_vec(rng, t * stride, -2.0, 2.0));
    let mut seq_info = Vec::new();
    let mut row = 1; // row 0 and the last two rows belong to no sequence
    for &(n, start) in &c.seqs {
        seq_info.push([row as i32, n as i32, start as i32]);
        row += n;
    }
    let tiles = prefill_tiles(&seq_info);
    let scale = 1.0 / (c.d as f64).sqrt();
    let flat_info: Vec<i32> = seq_info.iter().flatten().copied().collect();
    let flat_tiles: Vec<i32> = tiles.iter().flatten().copied().collect();
    let (d_qkv, d_tables, d_info, d_tiles) = (
        up(g, &qkv)?,
        up(g, &tables)?,
        up(g, &flat_info)?,
        up(g, &flat_tiles)?,
    );
    let (d_k, d_v) = (up(g, &cache.k)?, up(g, &cache.v)?);

    // The reference, and where each row's heads sit in `out`.
    let mut want = Vec::new();
    let mut at = Vec::new();
    let mut owned = vec![false; t];
    for (si, &[row_start, n, start]) in seq_info.iter().enumerate() {
        let table = &tables[si * bt_stride..(si + 1) * bt_stride];
        for j in 0..n as usize {
            let r = row_start as usize + j;
            owned[r] = true;
            for h in 0..c.h {
                let q = &qkv[r * stride + h * c.d..][..c.d];
                want.extend(cache.attend(
                    q,
                    table,
                    h / (c.h / c.kvh),
                    start as usize + j + 1,
                    scale,
                ));
                at.push((r * c.h + h) * c.d);
            }
        }
    }

    let mut d_out = up(g, &poison_bf16(t * c.h * c.d))?;
    g.k.paged_prefill_attention(
        &g.stream,
        &mut d_out.as_view_mut(),
        &d_qkv.as_view(),
        stride,
        &d_k.as_view(),
        &d_v.as_view(),
        &d_tables.as_view(),
        bt_stride,
        &d_info.as_view(),
        &d_tiles.as_view(),
        c.h,
        c.kvh,
        c.d,
        c.bs,
        scale as f32,
    )?;
    let out = down(g, &d_out)?;
    let got: Vec<f64> = at
        .iter()
        .flat_map(|&i| out[i..i + c.d].iter().map(|x| x.to_f32() as f64))
        .collect();
    check_rows_written(&out, &owned, c.h * c.d);
    let label = format!(
        "prefill {} KT={} H={} KVH={} D={} bs={} seqs={:?}",
        g.k.arch(),
        g.k.prefill_key_tile(c.d).unwrap_or(0),
        c.h,
        c.kvh,
        c.d,
        c.bs,
        c.seqs
    );
    check_attention(&label, &got, &want, c.d, ATTN_TOL);
    Ok(())
}
