//! Paged prefill attention (causal, chunked) against the f64 reference, over bf16 and fp8 (e4m3)
//! caches, for each kernel variant a device may run: the one this device picks, 32-key tiles
//! (what sm_86 / sm_89 GPUs pick at D = 128), and 32-key tiles compiled for sm_86 (what an L4 or
//! A10 runs, emulated here; for fp8 also the e4m3 widening of GPUs without e4m3 conversions).
//! Each variant with both tile sizes: 128 query rows a tile and 64 (the `_m64` kernels of short
//! prompts), every case run with each; and once with the size the device picks per step.

use half::bf16;
use pagedserve_kernels::{
    F8E4M3, KernelError, Kernels, KvDtype, KvElem, PREFILL_TILE_ROWS, prefill_tiles,
};

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
    /// Whether the second block-table entry of each sequence that has one is a block id outside
    /// the cache (-1 or past the last block, alternately): the kernel reads its keys as zeros.
    bad_ids: bool,
}

const ATTN_TOL: f64 = 1e-2;

/// A cache element type of the tests.
trait CacheElem: KvElem {
    /// A NaN of the type, in the cache slots no sequence's keys occupy (which are never read).
    const NAN: Self;
    /// The device copies of `cache`'s K and V, after rounding the host values to what the type
    /// holds (so the f64 reference sees the values the kernel reads).
    fn encode(cache: &mut HostCache) -> (Vec<Self>, Vec<Self>);
}

impl CacheElem for bf16 {
    const NAN: Self = bf16::from_bits(POISON_BF16);
    fn encode(cache: &mut HostCache) -> (Vec<Self>, Vec<Self>) {
        (cache.k.clone(), cache.v.clone())
    }
}

impl CacheElem for F8E4M3 {
    const NAN: Self = F8E4M3::from_bits(0x7f);
    /// e4m3 of the bf16 values (what rope_kv_write stores), and the host values widened back
    /// (exact: every e4m3 value is a bf16 value).
    fn encode(cache: &mut HostCache) -> (Vec<Self>, Vec<Self>) {
        let round = |x: &mut Vec<bf16>| {
            let e: Vec<F8E4M3> = x.iter().map(|v| F8E4M3::from_f32(v.to_f32())).collect();
            *x = e.iter().map(|v| bf16::from_f32(v.to_f32())).collect();
            e
        };
        (round(&mut cache.k), round(&mut cache.v))
    }
}

/// The prefill kernel this device picks (64-key tiles on sm_80 / sm_90, 32 where shared
/// memory is smaller).
#[test]
fn paged_prefill_attention_matches_reference() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    run_cases::<bf16>(g, "paged_prefill_attention")
}

/// The same over an fp8 cache (its own key-tile choice: the raw e4m3 stages take more shared
/// memory).
#[test]
fn paged_prefill_attention_fp8_matches_reference() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    for d in [64, 128] {
        let kt = g.k.prefill_key_tile_for(KvDtype::Fp8E4m3, d);
        assert!(matches!(kt, Some(32 | 64)), "fp8 D = {d}: key tile {kt:?}");
    }
    run_cases::<F8E4M3>(g, "paged_prefill_attention_fp8")
}

/// The 32-key kernels forced on this device (its own kernels, loaded again so the shared ones
/// keep their choice), over both cache types, and the key-tile setting's checks.
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
    let tiles = |k: &Kernels| {
        [KvDtype::Bf16, KvDtype::Fp8E4m3].map(|t| [64, 128].map(|d| k.prefill_key_tile_for(t, d)))
    };
    let defaults = tiles(&k);
    k.set_prefill_key_tile(Some(32))?;
    assert_eq!(tiles(&k), [[Some(32); 2]; 2]);
    let v = Gpu {
        stream: g.stream.clone(),
        k,
    };
    run_cases::<bf16>(&v, "paged_prefill_attention_k32")?;
    run_cases::<F8E4M3>(&v, "paged_prefill_attention_fp8_k32")?;
    v.k.set_prefill_key_tile(None)?;
    assert_eq!(tiles(&v.k), defaults);
    Ok(())
}

/// What an sm_86 / sm_89 GPU (A10, L4, L40S) runs: the kernels compiled for sm_86 (the driver
/// compiles that PTX for this device at load; no PDL below sm_90, and the fp8 kernels widen e4m3
/// without sm_89's conversion instructions) with 32-key tiles, over both cache types.
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
    run_cases::<bf16>(&v, "paged_prefill_attention_sm86_k32")?;
    run_cases::<F8E4M3>(&v, "paged_prefill_attention_fp8_sm86_k32")
}

/// The tile sizes by hand: bad sizes refused (set_prefill_tile_rows and the launch), a forced
/// size returned for every step, `None` the device's own rule again; then every case with the
/// tile size the device picks for its rows (what the shard launches), over both cache types.
#[test]
fn paged_prefill_attention_tile_rows_auto_matches_reference() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let k = Kernels::load(g.k.context(), Some(&kernel_cache_dir()))?;
    let sms = k.sm_count();
    assert!(sms > 0);
    for (tokens, h) in [(1, 32), (512, 32), (2048, 32), (200, 8), (100_000, 1)] {
        assert_eq!(
            k.prefill_tile_rows(tokens, h),
            pagedserve_kernels::prefill_tile_rows(tokens, h, sms)
        );
    }
    // A short prompt takes 64-row tiles, a long one 128 (on any GPU of 16 SMs or more).
    assert_eq!(k.prefill_tile_rows(200, 8), 64);
    assert_eq!(k.prefill_tile_rows(1 << 20, 32), 128);
    for bad in [0, 32, 48, 256] {
        let r = k.set_prefill_tile_rows(Some(bad));
        assert!(matches!(r, Err(KernelError::Shape { .. })), "{bad}: {r:?}");
    }
    assert_eq!(
        k.prefill_tile_rows(200, 8),
        64,
        "a refused size changes nothing"
    );
    k.set_prefill_tile_rows(Some(128))?;
    assert_eq!(k.prefill_tile_rows(200, 8), 128);
    k.set_prefill_tile_rows(Some(64))?;
    assert_eq!(k.prefill_tile_rows(1 << 20, 32), 64);
    k.set_prefill_tile_rows(None)?;
    assert_eq!(k.prefill_tile_rows(1 << 20, 32), 128);
    let v = Gpu {
        stream: g.stream.clone(),
        k,
    };
    // A launch of a tile size without kernels is refused before anything runs.
    let c = &cases()[1];
    let mut bad_rng = rng("paged_prefill_attention_bad_rows");
    let r = run_case::<bf16>(&v, &mut bad_rng, c, Rows::Fixed(32));
    assert!(
        r.as_ref().is_err_and(|e| matches!(
            e.downcast_ref::<KernelError>(),
            Some(KernelError::Shape { .. })
        )),
        "{r:?}"
    );
    let mut auto_rng = rng("paged_prefill_attention_auto");
    for c in cases() {
        run_case::<bf16>(&v, &mut auto_rng, &c, Rows::Auto)?;
        run_case::<F8E4M3>(&v, &mut auto_rng, &c, Rows::Auto)?;
    }
    Ok(())
}

/// The query rows a tile of a case's launch.
#[derive(Clone, Copy, Debug)]
enum Rows {
    /// These rows (the list and the kernel).
    Fixed(usize),
    /// What the kernels pick for the case's prefill rows and heads (as the shard does).
    Auto,
}

/// Every case of [`cases`] on `g`'s kernels over a cache of `C`, with each tile size.
fn run_cases<C: CacheElem>(g: &Gpu, name: &str) -> TestResult {
    let mut rng = rng(name);
    for rows in PREFILL_TILE_ROWS {
        for c in cases() {
            run_case::<C>(g, &mut rng, &c, Rows::Fixed(rows))?;
        }
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
            bad_ids: false,
            seqs: vec![(70, 0), (1, 40), (130, 200), (64, 0)],
        },
        // Llama-3-8B heads (GQA 4).
        Case {
            h: 32,
            kvh: 8,
            d: 128,
            bs: 16,
            bad_ids: false,
            seqs: vec![(100, 0), (65, 300), (1, 0), (17, 3)],
        },
        Case {
            h: 8,
            kvh: 2,
            d: 128,
            bs: 32,
            bad_ids: false,
            seqs: vec![(300, 1000)],
        },
        // No GQA, block size 8.
        Case {
            h: 4,
            kvh: 4,
            d: 64,
            bs: 8,
            bad_ids: false,
            seqs: vec![(129, 7), (2, 0)],
        },
        // GQA 8, block size 64; full 128-row tiles and ones whose last warps have no rows
        // (33 and 97 rows), start positions off the 64-key grid.
        Case {
            h: 16,
            kvh: 2,
            d: 128,
            bs: 64,
            bad_ids: false,
            seqs: vec![(256, 0), (33, 61), (97, 129), (128, 64)],
        },
        // GQA 2, D 64, many short chunks after long contexts.
        Case {
            h: 4,
            kvh: 2,
            d: 64,
            bs: 32,
            bad_ids: false,
            seqs: vec![(5, 500), (31, 1), (64, 63), (1, 1), (200, 0), (3, 777)],
        },
        // More blocks than the kernel stages in shared memory (1024): the rest of the table is
        // read from global memory.
        Case {
            h: 2,
            kvh: 1,
            d: 64,
            bs: 8,
            bad_ids: false,
            seqs: vec![(70, 8300)],
        },
        Case {
            h: 1,
            kvh: 1,
            d: 128,
            bs: 8,
            bad_ids: false,
            seqs: vec![(150, 8150)],
        },
        // Start positions on and just off the 32-key grid, a 1-row chunk on it.
        Case {
            h: 6,
            kvh: 2,
            d: 128,
            bs: 16,
            bad_ids: false,
            seqs: vec![(32, 31), (95, 33), (1, 32), (160, 0), (40, 97)],
        },
        // Block ids outside the cache in the tables (each sequence's second block where it has
        // one), read by first and later chunks alike.
        Case {
            h: 8,
            kvh: 2,
            d: 128,
            bs: 16,
            bad_ids: true,
            seqs: vec![(150, 40), (33, 0), (20, 300)],
        },
        Case {
            h: 4,
            kvh: 4,
            d: 64,
            bs: 8,
            bad_ids: true,
            seqs: vec![(64, 100), (1, 20), (9, 0)],
        },
        // Short prompts, the 64-row tiles' target: lengths on and off the 16- and 64-row grids
        // (1, 17, 63, 64, 65, 200), whole prompts, Llama-3-8B heads (GQA 4).
        Case {
            h: 32,
            kvh: 8,
            d: 128,
            bs: 16,
            bad_ids: false,
            seqs: vec![(1, 0), (17, 0), (63, 0), (64, 0), (65, 0), (200, 0)],
        },
        // The same lengths as later chunks (earlier keys from the cache), GQA 8, D 64.
        Case {
            h: 8,
            kvh: 1,
            d: 64,
            bs: 16,
            bad_ids: false,
            seqs: vec![(17, 100), (63, 64), (65, 1), (200, 37), (64, 500), (1, 63)],
        },
        // One short prompt alone (a ShareGPT step's), D 128, GQA 2, and a chunk after it.
        Case {
            h: 4,
            kvh: 2,
            d: 128,
            bs: 32,
            bad_ids: false,
            seqs: vec![(150, 0), (150, 150)],
        },
    ]
}

/// One case over a cache of `C` with tiles of `rows` query rows: the kernel's output against the
/// f64 reference.
fn run_case<C: CacheElem>(
    g: &Gpu,
    rng: &mut rand::rngs::StdRng,
    c: &Case,
    rows: Rows,
) -> TestResult {
    let keys: Vec<usize> = c.seqs.iter().map(|&(n, start)| n + start).collect();
    let num_blocks = keys.iter().map(|k| k.div_ceil(c.bs)).sum::<usize>() + 5;
    // The host cache has one block more than the device's, all zeros: the reference reads the
    // keys of a block id outside the cache from it.
    let block = c.kvh * c.bs * c.d;
    let mut cache = HostCache::random(rng, num_blocks + 1, c.kvh, c.bs, c.d);
    cache.k[num_blocks * block..].fill(bf16::ZERO);
    cache.v[num_blocks * block..].fill(bf16::ZERO);
    let (mut dev_k, mut dev_v) = C::encode(&mut cache);
    dev_k.truncate(num_blocks * block);
    dev_v.truncate(num_blocks * block);
    // `tables` for the kernel, `ref_tables` for the reference (a bad id there: the zero block).
    let (mut tables, bt_stride) = block_tables(rng, &keys, c.bs, num_blocks);
    let mut ref_tables = tables.clone();
    if c.bad_ids {
        for (s, &k) in keys.iter().enumerate() {
            if k > c.bs {
                tables[s * bt_stride + 1] = if s % 2 == 0 {
                    -1
                } else {
                    num_blocks as i32 + 3
                };
                ref_tables[s * bt_stride + 1] = num_blocks as i32;
            }
        }
    }
    // NaN in every slot no sequence's keys occupy: the kernel must never read them (keys past
    // a sequence's end load as zeros, not from the cache).
    let mut used = vec![false; num_blocks * block];
    for (s, &k) in keys.iter().enumerate() {
        for p in 0..k {
            let b = tables[s * bt_stride + p / c.bs];
            if b >= 0 && (b as usize) < num_blocks {
                for kh in 0..c.kvh {
                    let at = ((b as usize * c.kvh + kh) * c.bs + p % c.bs) * c.d;
                    used[at..at + c.d].fill(true);
                }
            }
        }
    }
    for (i, _) in used.iter().enumerate().filter(|(_, u)| !**u) {
        dev_k[i] = C::NAN;
        dev_v[i] = C::NAN;
    }
    let t: usize = c.seqs.iter().map(|s| s.0).sum::<usize>() + 3; // 3 rows of no sequence
    let stride = (c.h + 2 * c.kvh) * c.d;
    let qkv = to_bf16(&rand_vec(rng, t * stride, -2.0, 2.0));
    let mut seq_info = Vec::new();
    let mut row = 1; // row 0 and the last two rows belong to no sequence
    for &(n, start) in &c.seqs {
        seq_info.push([row as i32, n as i32, start as i32]);
        row += n;
    }
    let tile_rows = match rows {
        Rows::Fixed(r) => r,
        Rows::Auto => g.k.prefill_tile_rows(c.seqs.iter().map(|s| s.0).sum(), c.h),
    };
    // The list of a size without kernels (refused by the launch) is cut as for 64 rows.
    let tiles = prefill_tiles(
        &seq_info,
        if PREFILL_TILE_ROWS.contains(&tile_rows) {
            tile_rows
        } else {
            64
        },
    );
    let scale = 1.0 / (c.d as f64).sqrt();
    let flat_info: Vec<i32> = seq_info.iter().flatten().copied().collect();
    let flat_tiles: Vec<i32> = tiles.iter().flatten().copied().collect();
    let (d_qkv, d_tables, d_info, d_tiles) = (
        up(g, &qkv)?,
        up(g, &tables)?,
        up(g, &flat_info)?,
        up(g, &flat_tiles)?,
    );
    let (d_k, d_v) = (up(g, &dev_k)?, up(g, &dev_v)?);

    // The reference, and where each row's heads sit in `out`.
    let mut want = Vec::new();
    let mut at = Vec::new();
    let mut owned = vec![false; t];
    for (si, &[row_start, n, start]) in seq_info.iter().enumerate() {
        let table = &ref_tables[si * bt_stride..(si + 1) * bt_stride];
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
        tile_rows,
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
        "prefill {} {} KT={} M={tile_rows} ({rows:?}) H={} KVH={} D={} bs={} seqs={:?} bad_ids={}",
        C::DTYPE.name(),
        g.k.arch(),
        g.k.prefill_key_tile_for(C::DTYPE, c.d).unwrap_or(0),
        c.h,
        c.kvh,
        c.d,
        c.bs,
        c.seqs,
        c.bad_ids
    );
    check_attention(&label, &got, &want, c.d, ATTN_TOL);
    Ok(())
}
