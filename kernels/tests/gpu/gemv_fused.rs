//! The tensor-core GEMV with its fused epilogues (gemv.cu, "Fused epilogues") against f64
//! references: RoPE + KV-cache write (`gemv_rope_kv`), at row counts
//! that reach every kernel family (m2..m16 with x in registers, m24 and m32 through shared
//! memory), and the shapes each wrapper refuses.

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::common::*;
use cudarc::driver::CudaSlice;
use half::bf16;
use pagedserve_kernels::{GEMV_MAX_ROWS, RopeHeads, RopeKv};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// One bf16 rounding of each output: 2^-9 relative at most, about 1.1e-3 in relative L2.
const BF16_TOL: f64 = 4e-3;

/// `y[m, c] = sum_i x[m, i] * w[c, i]` in f64 over `x` `[rows, k]` and `w` `[n, k]` (bf16 values
/// held as f32, exactly), one thread a row: the largest case here (32 x 6144 x 4096) is 0.8 G
/// multiply-adds in a debug build.
fn matmul_ref(x: &[f32], w: &[f32], n: usize, k: usize) -> Vec<f64> {
    let rows = x.len() / k;
    let mut y = vec![0.0; rows * n];
    std::thread::scope(|s| {
        for (yr, xr) in y.chunks_mut(n).zip(x.chunks(k)) {
            s.spawn(move || {
                for (out, wr) in yr.iter_mut().zip(w.chunks(k)) {
                    *out = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
                }
            });
        }
    });
    y
}

/// Random bf16 `w` `[n, k]` and `x` `[rows, k]` in [-1, 1], their upload and the f64 product of
/// all `rows` rows (a run of fewer rows takes the first ones).
struct Product {
    d_w: CudaSlice<bf16>,
    d_x: CudaSlice<bf16>,
    y: Vec<f64>,
}

fn product(g: &Gpu, rng: &mut StdRng, rows: usize, n: usize, k: usize) -> Res<Product> {
    let w = to_bf16(&rand_vec(rng, n * k, -1.0, 1.0));
    let x = to_bf16(&rand_vec(rng, rows * k, -1.0, 1.0));
    let y = matmul_ref(&from_bf16(&x), &from_bf16(&w), n, k);
    Ok(Product {
        d_w: up(g, &w)?,
        d_x: up(g, &x)?,
        y,
    })
}

fn to_f64(v: &[bf16]) -> Vec<f64> {
    v.iter().map(|x| x.to_f64()).collect()
}

/// Every element written (no poison left), relative L2 over everything within `tol` and every
/// vector of `d` values (one head, one row) within `3 * tol`, naming the worst vector.
fn check(label: &str, got: &[bf16], want: &[f64], d: usize, tol: f64) {
    assert_eq!(got.len(), want.len(), "{label}: lengths");
    if let Some(i) = got.iter().position(|&v| is_poison_bf16(v)) {
        panic!("{label}: element {i} (vector {}) not written", i / d);
    }
    let got = to_f64(got);
    let err = rel_l2(&got, want);
    let (at, worst) = got
        .chunks(d)
        .zip(want.chunks(d))
        .map(|(a, b)| rel_l2(a, b))
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, 0.0));
    assert!(err < tol, "{label}: rel L2 {err:.3e} >= {tol}");
    assert!(
        worst < 3.0 * tol,
        "{label}: vector {at} ({d} values) is off: rel L2 {worst:.3e}"
    );
}

/// The reference QKV rows: the f64 sums `y` `[rows, stride]` with the q and k heads rotated at
/// `positions` (clamped to the last table row), v heads as they are.
fn rope_ref(y: &[f64], positions: &[u32], cos: &[f32], sin: &[f32], h: RopeHeads) -> Vec<f64> {
    let (d, half) = (h.head_dim, h.rope_dim / 2);
    let max_pos = cos.len() / half;
    let mut want = y.to_vec();
    for (row, &pos) in want.chunks_mut(h.stride()).zip(positions) {
        let p = (pos as usize).min(max_pos - 1);
        let (c, s) = (&cos[p * half..][..half], &sin[p * half..][..half]);
        for head in row.chunks_mut(d).take(h.num_heads + h.num_kv_heads) {
            for ((pair, &c), &s) in head.chunks_mut(2).zip(c).zip(s) {
                let (a, b, c, s) = (pair[0], pair[1], c as f64, s as f64);
                pair[0] = a * c - b * s;
                pair[1] = a * s + b * c;
            }
        }
    }
    want
}

#[test]
fn gemv_rope_kv_rotates_and_fills_slots_for_every_kernel() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("gemv_rope_kv");
    let (max_pos, num_blocks) = (4096, 5);
    // (H, KVH, D, rope_dim, block_size, k): Llama-3-8B's QKV; partial RoPE (half of each head)
    // with a K that is not a multiple of the 64-wide k steps; 9 q and 3 kv heads of 64.
    for (nh, nkv, d, rope_dim, bs, k) in [
        (32, 8, 128, 128, 16, 4096),
        (4, 2, 128, 64, 32, 1000),
        (9, 3, 64, 64, 16, 576),
    ] {
        let heads = RopeHeads {
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: d,
            rope_dim,
            block_size: bs,
        };
        let n = heads.stride();
        let p = product(g, &mut rng, GEMV_MAX_ROWS, n, k)?;
        let (cos, sin) = rope_tables(max_pos, rope_dim, 500_000.0);
        let (d_cos, d_sin) = (up(g, &cos)?, up(g, &sin)?);
        let num_slots = num_blocks * bs;
        let block_elems = nkv * bs * d;
        let cache_len = num_blocks * block_elems;
        // 1 row: m2; 2..=16: the register kernels (16 columns a CTA); 17-32: m24 (17 and 24
        // its ends) and m32 (32 columns a CTA).
        for rows in [1, 2, 5, 8, 16, 17, 24, 32] {
            let label = format!("H={nh} KVH={nkv} D={d} rope_dim={rope_dim} k={k} rows={rows}");
            // Random positions; from 2 rows, row 0 past the tables (clamped to max_pos - 1).
            let mut positions: Vec<u32> = (0..rows)
                .map(|_| rng.random_range(0..max_pos as u32))
                .collect();
            if rows >= 2 {
                positions[0] = max_pos as u32 + 7;
            }
            // Distinct slots; from 2 rows one padding row (u32::MAX), from 5 rows also one
            // slot just past the cache: neither is written.
            let mut all_slots: Vec<u32> = (0..num_slots as u32).collect();
            all_slots.shuffle(&mut rng);
            let mut slots = all_slots[..rows].to_vec();
            if rows >= 2 {
                slots[rows / 2] = u32::MAX;
            }
            if rows >= 5 {
                slots[rows - 1] = num_slots as u32;
            }
            let (d_pos, d_slots) = (up(g, &positions)?, up(g, &slots)?);
            let mut d_qkv = up(g, &poison_bf16(rows * n))?;
            // One poisoned block more than the kernel is given: a write past the cache it was
            // handed would land there.
            let mut d_kc = up(g, &poison_bf16(cache_len + block_elems))?;
            let mut d_vc = up(g, &poison_bf16(cache_len + block_elems))?;
            let mut rope = RopeKv {
                k_cache: d_kc.slice_mut(..cache_len),
                v_cache: d_vc.slice_mut(..cache_len),
                positions: d_pos.as_view(),
                slots: d_slots.as_view(),
                cos: d_cos.as_view(),
                sin: d_sin.as_view(),
                heads,
            };
            let x = p.d_x.slice(..rows * k);
            g.k.gemv_rope_kv(
                &g.stream,
                &mut d_qkv.as_view_mut(),
                &x,
                &p.d_w.as_view(),
                k,
                &mut rope,
            )?;
            let (qkv, kc, vc) = (down(g, &d_qkv)?, down(g, &d_kc)?, down(g, &d_vc)?);

            // q and k rotated, v as summed; padding rows too.
            let want = rope_ref(&p.y[..rows * n], &positions, &cos, &sin, heads);
            check(&format!("{label} qkv"), &qkv, &want, d, BF16_TOL);

            // Each cached row is bit for bit the kernel's own k or v row of qkv.
            let mut written = vec![false; kc.len()];
            for (r, &slot) in slots.iter().enumerate() {
                if slot as usize >= num_slots {
                    continue;
                }
                let (blk, off) = (slot as usize / bs, slot as usize % bs);
                for kh in 0..nkv {
                    let at = ((blk * nkv + kh) * bs + off) * d;
                    let k_row = &qkv[r * n + (nh + kh) * d..][..d];
                    let v_row = &qkv[r * n + (nh + nkv + kh) * d..][..d];
                    for (cache, row, what) in [(&kc, k_row, "k"), (&vc, v_row, "v")] {
                        for (j, (c, q)) in cache[at..at + d].iter().zip(row).enumerate() {
                            assert_eq!(
                                c.to_bits(),
                                q.to_bits(),
                                "{label}: {what} cache, row {r} slot {slot} head {kh} dim {j}"
                            );
                        }
                    }
                    written[at..at + d].fill(true);
                }
            }
            // Every other element, the padding rows' and past the cache included, is poison.
            for (i, &wr) in written.iter().enumerate() {
                if !wr {
                    let slot = i / block_elems * bs + i / d % bs;
                    assert!(
                        is_poison_bf16(kc[i]) && is_poison_bf16(vc[i]),
                        "{label}: cache element {i} (slot {slot}) was written"
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn gemv_fused_rejects_bad_shapes() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let k = 64;

    // gemv_rope_kv: a qkv buffer one head longer than [rows, (H + 2 KVH) D].
    let heads = RopeHeads {
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        rope_dim: 64,
        block_size: 16,
    };
    let (rows, n, max_pos) = (2, heads.stride(), 64);
    let w = up(g, &to_bf16(&vec![0.5; n * k]))?;
    let x = up(g, &to_bf16(&vec![0.5; rows * k]))?;
    let cache_len = 2 * heads.num_kv_heads * heads.block_size * heads.head_dim;
    let mut kc = up(g, &poison_bf16(cache_len))?;
    let mut vc = up(g, &poison_bf16(cache_len))?;
    let (pos, slots) = (up(g, &[0u32, 1])?, up(g, &[0u32, 1])?);
    let table = up(g, &vec![0.5f32; max_pos * heads.rope_dim / 2])?;
    let mut qkv = up(g, &poison_bf16(rows * n + heads.head_dim))?;
    let mut rope = RopeKv {
        k_cache: kc.as_view_mut(),
        v_cache: vc.as_view_mut(),
        positions: pos.as_view(),
        slots: slots.as_view(),
        cos: table.as_view(),
        sin: table.as_view(),
        heads,
    };
    let r = g.k.gemv_rope_kv(
        &g.stream,
        &mut qkv.as_view_mut(),
        &x.as_view(),
        &w.as_view(),
        k,
        &mut rope,
    );
    assert!(
        r.is_err(),
        "rope_kv: qkv of {} elements must be refused",
        qkv.len()
    );
    let kc = down(g, &kc)?;
    assert!(
        kc.iter().all(|&v| is_poison_bf16(v)),
        "rope_kv: refused, cache untouched"
    );
    Ok(())
}
