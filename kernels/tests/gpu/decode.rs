//! Paged decode attention against the f64 reference, over bf16 and fp8 (e4m3) caches.

use std::error::Error;

use cudarc::driver::CudaSlice;
use half::bf16;
use rand::Rng;
use rand::seq::SliceRandom;

use crate::attention_ref::{Fp8Cache, Fp8Values, HostCache, block_tables};
use crate::common::*;
use pagedserve_kernels::{F8E4M3, Kernels, KvElem, decode_partition, decode_workspace_len};

struct Case {
    h: usize,
    kvh: usize,
    d: usize,
    bs: usize,
    lens: Vec<usize>,
    max_ctx: usize,
}

/// What a test's cache holds: bf16 values, or fp8 e4m3 values drawn as `Fp8Values` says (q
/// drawn to match).
#[derive(Clone, Copy, Debug)]
enum Kv {
    Bf16,
    Fp8(Fp8Values),
}

/// Attention over cached tokens: bf16 (or e4m3, exact in bf16) inputs, f32 accumulation, bf16
/// output.
const ATTN_TOL: f64 = 1e-2;

#[test]
fn paged_decode_attention_matches_reference() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("paged_decode_attention");
    for c in &reference_cases(&mut rng) {
        run_case(g, &mut rng, c)?;
    }
    Ok(())
}

/// The cases of paged_decode_attention_matches_reference (random lengths from `rng`).
fn reference_cases(rng: &mut rand::rngs::StdRng) -> Vec<Case> {
    vec![
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
    ]
}

/// The same over fp8 caches, for each kind of values (plain, e4m3 subnormals, large and
/// saturated ones), plus the groups the reference cases lack (G = 1, 2, 5, 6) and launches whose
/// CTAs loop over partitions: the fp8 kernels read the same layout at one byte an element and
/// must match the reference as closely as the bf16 ones (their inputs are exact in both).
#[test]
fn paged_decode_attention_fp8_matches_reference() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    fp8_matches_reference(g)
}

fn fp8_matches_reference(g: &Gpu) -> TestResult {
    let mut rng = rng("paged_decode_attention_fp8");
    let mut cases = reference_cases(&mut rng);
    cases.extend([
        // G = 1 (MHA), several partitions.
        Case {
            h: 4,
            kvh: 4,
            d: 64,
            bs: 16,
            lens: vec![1, 90, 1000, 0, 256],
            max_ctx: 1024,
        },
        // G = 2, block 64.
        Case {
            h: 16,
            kvh: 8,
            d: 128,
            bs: 64,
            lens: vec![700, 64, 65, 3],
            max_ctx: 768,
        },
        // G = 5 and 6, 256- and 512-token partitions.
        Case {
            h: 20,
            kvh: 4,
            d: 64,
            bs: 16,
            lens: (0..24).map(|_| rng.random_range(0..=900)).collect(),
            max_ctx: 900,
        },
        Case {
            h: 12,
            kvh: 2,
            d: 128,
            bs: 32,
            lens: (0..48).map(|_| rng.random_range(1..=1500)).collect(),
            max_ctx: 1500,
        },
    ]);
    for c in &cases {
        for values in Fp8Values::ALL {
            run_case_kv(g, &mut rng, c, Kv::Fp8(values))?;
        }
    }
    // Batch 1 at 64-token partitions, and 64 sequences whose CTAs take several partitions in
    // turn (decode_grid_z), as in paged_decode_attention_splits_by_length.
    let long = [
        llama(vec![8192], 8192),
        llama(
            (0..64)
                .map(|i| [8192, 4096, 1, 700, 5000, 0, 8000, 130][i % 8])
                .collect(),
            8192,
        ),
    ];
    for c in &long {
        run_case_kv(g, &mut rng, c, Kv::Fp8(Fp8Values::Bulk))?;
    }
    Ok(())
}

/// One-token contexts over V rows that hold every finite e4m3 value: the output is the V row
/// itself, which bf16 holds exactly, so every value (subnormals, ±448, both zeros) must come
/// back exactly (-0 as +0). With max_ctx 1024, 3, 32 and 80 sequences make the host pick 64-,
/// 256- and 512-token partitions (each a kernel of its own, with its own unrolling).
#[test]
fn paged_decode_attention_fp8_widens_every_value_exactly() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    fp8_widens_every_value_exactly(g)
}

/// The fp8 decode kernels as an sm_80 / sm_86 GPU runs them: compiled for sm_86, where e4m3 is
/// widened by PRMT and masks instead of sm_89's conversion instruction (which the device's own
/// build uses on an H100), against the same reference and exactness checks, on the
/// tensor-core path and the CUDA-core one.
#[test]
fn paged_decode_attention_fp8_sm86_matches_reference() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let device: u32 = g.k.arch().trim_start_matches("sm_").parse().unwrap_or(0);
    if device < 86 {
        eprintln!("skipped: {} cannot run sm_86 code", g.k.arch());
        return Ok(());
    }
    let k = Kernels::load_for_arch(g.k.context(), "sm_86", Some(&kernel_cache_dir()))?;
    assert_eq!(k.arch(), "sm_86");
    let v = Gpu {
        stream: g.stream.clone(),
        k,
    };
    // Both paths: tensor cores and CUDA cores widen through the same PRMT code there.
    for path in ["mma", "cuda"] {
        v.k.set_fp8_decode(path)?;
        fp8_matches_reference(&v)?;
        fp8_widens_every_value_exactly(&v)?;
    }
    Ok(())
}

/// The fp8 tests above run the default path (`mma`, tensor cores, unless the environment sets
/// `PAGEDSERVE_FP8_DECODE`); this runs them on every other one of `Kernels::fp8_decode_paths`
/// (`Kernels` of its own, so that the tests running beside it keep theirs): today `mma-half`
/// (fewer loads in flight) and `cuda` (the CUDA-core f16x2 path).
#[test]
fn paged_decode_attention_fp8_other_paths_match_reference() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let k = Kernels::load(g.k.context(), Some(&kernel_cache_dir()))?;
    let v = Gpu {
        stream: g.stream.clone(),
        k,
    };
    for path in Kernels::fp8_decode_paths() {
        if path == g.k.fp8_decode() {
            continue;
        }
        v.k.set_fp8_decode(path)?;
        fp8_matches_reference(&v)?;
        fp8_widens_every_value_exactly(&v)?;
        fp8_large_scores_stay_finite(&v)?;
    }
    Ok(())
}

fn fp8_widens_every_value_exactly(g: &Gpu) -> TestResult {
    let mut rng = rng("paged_decode_attention_fp8_widens_every_value_exactly");
    // G = 4, D = 128: one token's V over both KV heads is 256 values, one per byte (the NaN
    // bytes 0x7f and 0xff replaced by zeros).
    let (h, kvh, d, bs, max_ctx) = (8, 2, 128, 16, 1024);
    for s in [3, 32, 80] {
        let part = decode_partition(s, max_ctx);
        let num_blocks = s + 3;
        let n = num_blocks * kvh * bs * d;
        let k: Vec<F8E4M3> = (0..n)
            .map(|_| F8E4M3::from_f32(rng.random_range(-1.0..1.0)))
            .collect();
        // Sequence i reads block i + 1, whose token 0 holds byte (j + 37 i) % 256 at position j
        // of its two V rows: the bytes move across lanes and word positions from one sequence to
        // the next.
        let mut v = vec![F8E4M3::from_bits(0); n];
        for i in 0..s {
            for j in 0..kvh * d {
                let (head, e) = (j / d, j % d);
                let byte = ((j + 37 * i) % 256) as u8;
                let byte = if byte & 0x7f == 0x7f {
                    byte & 0x80
                } else {
                    byte
                };
                v[(((i + 1) * kvh + head) * bs) * d + e] = F8E4M3::from_bits(byte);
            }
        }
        let cache = Fp8Cache::from_values(k, v, kvh, bs, d);
        let stride = (h + 2 * kvh) * d;
        let qkv = to_bf16(&rand_vec(&mut rng, s * stride, -2.0, 2.0));
        let rows: Vec<i32> = (0..s as i32).collect();
        let tables: Vec<i32> = (0..s as i32).map(|i| i + 1).collect();
        let ctx = vec![1i32; s];
        let (d_qkv, d_rows, d_tables, d_ctx) =
            (up(g, &qkv)?, up(g, &rows)?, up(g, &tables)?, up(g, &ctx)?);
        let mut ws = workspace(g, decode_workspace_len(s, h, d, max_ctx), s * h)?;
        let mut d_out = up(g, &poison_bf16(s * h * d))?;
        let c = Case {
            h,
            kvh,
            d,
            bs,
            lens: vec![1; s],
            max_ctx,
        };
        let inputs = DecodeInputs {
            qkv: &d_qkv,
            stride,
            rows: &d_rows,
            tables: &d_tables,
            bt_stride: 1,
            ctx: &d_ctx,
            scale: 1.0 / (d as f32).sqrt(),
        };
        let (d_k, d_v) = (up(g, &cache.k)?, up(g, &cache.v)?);
        inputs.launch(g, &c, &mut d_out, &d_k, &d_v, &mut ws)?;
        let out = down(g, &d_out)?;
        for i in 0..s {
            for hh in 0..h {
                let head = hh / (h / kvh);
                for e in 0..d {
                    let want = cache.widened.v[(((i + 1) * kvh + head) * bs) * d + e].to_f32();
                    let got = out[(i * h + hh) * d + e].to_f32();
                    assert!(
                        got == want,
                        "{} S={s} part={part} seq {i} head {hh} [{e}]: got {got}, want {want} \
                         (byte {:#04x})",
                        fp8_path(g, Kv::Fp8(Fp8Values::Bulk)),
                        cache.v[(((i + 1) * kvh + head) * bs) * d + e].to_bits()
                    );
                }
            }
        }
        check_counters_reset(g, &ws, s * h, &format!("exact S={s}"))?;
    }
    Ok(())
}

/// Dot products far past f16's range in the fp8 kernels (which take q and k as f16, see
/// decode_attention.cu): every K element 448 (the e4m3 maximum) and q of one sign a head, so
/// that the products of a dot product are all as large as they get and add up; |q| up to 2^17,
/// past the kernels' clamp (|q * scale * log2 e| <= 2048). Every token of a head then has the
/// same score, in the kernel as in the reference, so the weights are uniform and the output is
/// the mean of the V rows: finite, and as the reference has it (G = 4 and G = 5, whose last head
/// takes the kernels' odd-head path).
#[test]
fn paged_decode_attention_fp8_large_scores_stay_finite() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    fp8_large_scores_stay_finite(g)
}

fn fp8_large_scores_stay_finite(g: &Gpu) -> TestResult {
    let mut rng = rng("paged_decode_attention_fp8_large_scores_stay_finite");
    let g5 = Case {
        h: 20,
        kvh: 4,
        d: 64,
        bs: 16,
        lens: vec![3, 900, 64, 257],
        max_ctx: 900,
    };
    for c in [llama(vec![1, 700, 3000, 64, 0], 3000), g5] {
        for (q_lo, q_hi) in [(100.0f32, 2000.0f32), (2000.0, 131072.0)] {
            let s = c.lens.len();
            let num_blocks = c
                .lens
                .iter()
                .map(|l| l.div_ceil(c.bs).max(1))
                .sum::<usize>()
                + 3;
            let n = num_blocks * c.kvh * c.bs * c.d;
            let k = vec![F8E4M3::from_f32(448.0); n];
            let v: Vec<F8E4M3> = (0..n)
                .map(|_| F8E4M3::from_f32(Fp8Values::Large.sample(&mut rng)))
                .collect();
            let cache = Fp8Cache::from_values(k, v, c.kvh, c.bs, c.d);
            let (tables, bt_stride) = block_tables(&mut rng, &c.lens, c.bs, num_blocks);
            let stride = (c.h + 2 * c.kvh) * c.d;
            let qkv: Vec<f32> = (0..s * stride)
                .map(|i| {
                    let sign = if (i % stride) / c.d % 2 == 0 {
                        1.0
                    } else {
                        -1.0
                    };
                    sign * rng.random_range(q_lo..q_hi)
                })
                .collect();
            let qkv = to_bf16(&qkv);
            let rows: Vec<i32> = (0..s as i32).collect();
            let ctx: Vec<i32> = c.lens.iter().map(|&l| l as i32).collect();
            let scale = 1.0 / (c.d as f64).sqrt();
            let (d_qkv, d_rows, d_tables, d_ctx) =
                (up(g, &qkv)?, up(g, &rows)?, up(g, &tables)?, up(g, &ctx)?);
            let mut ws = workspace(g, decode_workspace_len(s, c.h, c.d, c.max_ctx), s * c.h)?;
            let mut d_out = up(g, &poison_bf16(s * c.h * c.d))?;
            let inputs = DecodeInputs {
                qkv: &d_qkv,
                stride,
                rows: &d_rows,
                tables: &d_tables,
                bt_stride,
                ctx: &d_ctx,
                scale: scale as f32,
            };
            let (d_k, d_v) = (up(g, &cache.k)?, up(g, &cache.v)?);
            inputs.launch(g, &c, &mut d_out, &d_k, &d_v, &mut ws)?;
            let out = down(g, &d_out)?;
            let (mut got, mut want) = (Vec::new(), Vec::new());
            for (si, &len) in c.lens.iter().enumerate() {
                if len == 0 {
                    continue;
                }
                let table = &tables[si * bt_stride..(si + 1) * bt_stride];
                for h in 0..c.h {
                    let q = &qkv[si * stride + h * c.d..][..c.d];
                    let head = h / (c.h / c.kvh);
                    want.extend(cache.widened.attend(q, table, head, len, scale));
                    got.extend(out[(si * c.h + h) * c.d..][..c.d].iter().map(|x| {
                        let x = x.to_f32();
                        assert!(x.is_finite(), "q in ±[{q_lo}, {q_hi}]: output {x}");
                        x as f64
                    }));
                }
            }
            let label = format!(
                "decode fp8{} large scores, q in ±[{q_lo}, {q_hi}], H={} KVH={} D={} lens={:?}",
                fp8_path(g, Kv::Fp8(Fp8Values::Large)),
                c.h,
                c.kvh,
                c.d,
                c.lens
            );
            check_attention(&label, &got, &want, c.d, ATTN_TOL);
            check_counters_reset(g, &ws, s * c.h, &label)?;
        }
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

/// Which fp8 path `g` runs, for failure messages (empty for bf16 caches).
fn fp8_path(g: &Gpu, kv: Kv) -> String {
    match kv {
        Kv::Bf16 => String::new(),
        Kv::Fp8(_) => format!(" ({} path)", g.k.fp8_decode()),
    }
}

fn run_case(g: &Gpu, rng: &mut rand::rngs::StdRng, c: &Case) -> TestResult {
    run_case_kv(g, rng, c, Kv::Bf16)
}

fn run_case_kv(g: &Gpu, rng: &mut rand::rngs::StdRng, c: &Case, kv: Kv) -> TestResult {
    let s = c.lens.len();
    let ws_len = decode_workspace_len(s, c.h, c.d, c.max_ctx) + rng.random_range(0..5);
    let mut ws = workspace(g, ws_len, s * c.h)?;
    launch_and_check(g, rng, c, &mut ws, &Faults::default(), kv)?;
    check_counters_reset(g, &ws, s * c.h, &format!("{kv:?} {:?}", c.lens))
}

/// The device inputs of a decode launch other than the caches, the output and the workspace.
struct DecodeInputs<'a> {
    qkv: &'a CudaSlice<bf16>,
    stride: usize,
    rows: &'a CudaSlice<i32>,
    tables: &'a CudaSlice<i32>,
    bt_stride: usize,
    ctx: &'a CudaSlice<i32>,
    scale: f32,
}

impl DecodeInputs<'_> {
    /// paged_decode_attention of case `c`'s shape over caches of `C`.
    fn launch<C: KvElem>(
        &self,
        g: &Gpu,
        c: &Case,
        out: &mut CudaSlice<bf16>,
        k: &CudaSlice<C>,
        v: &CudaSlice<C>,
        ws: &mut CudaSlice<f32>,
    ) -> TestResult {
        g.k.paged_decode_attention(
            &g.stream,
            &mut out.as_view_mut(),
            &self.qkv.as_view(),
            self.stride,
            &self.rows.as_view(),
            &k.as_view(),
            &v.as_view(),
            &self.tables.as_view(),
            self.bt_stride,
            &self.ctx.as_view(),
            &mut ws.as_view_mut(),
            c.h,
            c.kvh,
            c.d,
            c.bs,
            self.scale,
            c.max_ctx,
        )?;
        Ok(())
    }
}

/// One decode launch on fresh random inputs over `ws`, checked against the reference.
fn launch_and_check(
    g: &Gpu,
    rng: &mut rand::rngs::StdRng,
    c: &Case,
    ws: &mut CudaSlice<f32>,
    faults: &Faults,
    kv: Kv,
) -> TestResult {
    let s = c.lens.len();
    let num_blocks = c
        .lens
        .iter()
        .map(|l| l.div_ceil(c.bs).max(1))
        .sum::<usize>()
        + 7;
    // The reference reads `cache`; an fp8 launch reads `fp8`, the same values in e4m3.
    let (cache, fp8) = match kv {
        Kv::Bf16 => (HostCache::random(rng, num_blocks, c.kvh, c.bs, c.d), None),
        Kv::Fp8(values) => {
            let f = Fp8Cache::random(rng, values, num_blocks, c.kvh, c.bs, c.d);
            (f.widened, Some((f.k, f.v)))
        }
    };
    let q_range = match kv {
        Kv::Bf16 => 2.0,
        Kv::Fp8(values) => values.q_range(),
    };
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
    let qkv = to_bf16(&rand_vec(rng, t * stride, -q_range, q_range));
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
    let mut d_out = up(g, &poison_bf16(t * c.h * c.d))?;
    let inputs = DecodeInputs {
        qkv: &d_qkv,
        stride,
        rows: &d_rows,
        tables: &d_tables,
        bt_stride,
        ctx: &d_ctx,
        scale: scale as f32,
    };
    match &fp8 {
        None => {
            let (d_k, d_v) = (up(g, &cache.k)?, up(g, &cache.v)?);
            inputs.launch(g, c, &mut d_out, &d_k, &d_v, ws)?;
        }
        Some((k, v)) => {
            let (d_k, d_v) = (up(g, k)?, up(g, v)?);
            inputs.launch(g, c, &mut d_out, &d_k, &d_v, ws)?;
        }
    }
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
        "decode {kv:?}{} H={} KVH={} D={} bs={} max_ctx={} part={} lens={:?}",
        fp8_path(g, kv),
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
    launch_and_check(g, &mut rng, &c, &mut ws, &faults, Kv::Bf16)?;
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
        launch_and_check(g, &mut rng, &c, &mut ws, &Faults::default(), Kv::Bf16)?;
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
