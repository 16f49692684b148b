//! RoPE on q and k fused with the KV-cache write.

use rand::Rng;
use rand::seq::SliceRandom;

use crate::common::*;
use pagedserve_kernels::{RopeHeads, RopeKv};

struct Case {
    h: usize,
    kvh: usize,
    d: usize,
    rope_dim: usize,
    bs: usize,
    t: usize,
}

#[test]
fn rope_kv_write_rotates_q_k_and_fills_slots() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    let mut rng = rng("rope_kv_write");
    let cases = [
        Case {
            h: 9,
            kvh: 3,
            d: 64,
            rope_dim: 64,
            bs: 16,
            t: 7,
        },
        Case {
            h: 32,
            kvh: 8,
            d: 128,
            rope_dim: 128,
            bs: 16,
            t: 5,
        },
        Case {
            h: 4,
            kvh: 2,
            d: 128,
            rope_dim: 64,
            bs: 32,
            t: 4,
        },
    ];
    for c in cases {
        let (max_pos, num_blocks) = (4096, 12);
        let stride = (c.h + 2 * c.kvh) * c.d;
        let qkv = to_bf16(&rand_vec(&mut rng, c.t * stride, -2.0, 2.0));
        let positions: Vec<u32> = (0..c.t)
            .map(|_| rng.random_range(0..max_pos as u32))
            .collect();
        let mut all_slots: Vec<u32> = (0..(num_blocks * c.bs) as u32).collect();
        all_slots.shuffle(&mut rng);
        let mut slots = all_slots[..c.t].to_vec();
        slots[1] = u32::MAX; // padding row: rotated in qkv, never written to the cache
        let (cos, sin) = rope_tables(max_pos, c.rope_dim, 100_000.0);
        let cache_len = num_blocks * c.kvh * c.bs * c.d;
        let mut d_qkv = up(g, &qkv)?;
        let (mut kc, mut vc) = (
            up(g, &poison_bf16(cache_len))?,
            up(g, &poison_bf16(cache_len))?,
        );
        let (d_pos, d_slots, d_cos, d_sin) = (
            up(g, &positions)?,
            up(g, &slots)?,
            up(g, &cos)?,
            up(g, &sin)?,
        );
        let mut rope = RopeKv {
            k_cache: kc.as_view_mut(),
            v_cache: vc.as_view_mut(),
            positions: d_pos.as_view(),
            slots: d_slots.as_view(),
            cos: d_cos.as_view(),
            sin: d_sin.as_view(),
            heads: RopeHeads {
                num_heads: c.h,
                num_kv_heads: c.kvh,
                head_dim: c.d,
                rope_dim: c.rope_dim,
                block_size: c.bs,
            },
        };
        g.k.rope_kv_write(&g.stream, &mut d_qkv.as_view_mut(), &mut rope)?;
        let (out, kc, vc) = (down(g, &d_qkv)?, down(g, &kc)?, down(g, &vc)?);

        // Reference: rotate q and k heads in f64; v heads unchanged.
        let half = c.rope_dim / 2;
        let mut want = Vec::with_capacity(out.len());
        for r in 0..c.t {
            let p = positions[r] as usize;
            for head in 0..c.h + 2 * c.kvh {
                let x = &qkv[r * stride + head * c.d..][..c.d];
                for j in 0..c.d {
                    let v = x[j].to_f32() as f64;
                    let rotate = head < c.h + c.kvh && j < c.rope_dim;
                    want.push(if !rotate {
                        v
                    } else {
                        let i = j / 2;
                        let (cs, sn) = (cos[p * half + i] as f64, sin[p * half + i] as f64);
                        let (a, b) = (x[2 * i].to_f32() as f64, x[2 * i + 1].to_f32() as f64);
                        if j % 2 == 0 {
                            a * cs - b * sn
                        } else {
                            a * sn + b * cs
                        }
                    });
                }
            }
        }
        assert_close("rotated qkv", &from_bf16(&out), &want, 1.0 / 128.0, 1e-5);

        // The cache holds exactly the rotated k and the v of each non-padding row; every other
        // slot is still poison.
        let mut written = vec![false; cache_len];
        for (r, &slot) in slots.iter().enumerate() {
            if slot == u32::MAX {
                continue;
            }
            let (blk, off) = (slot as usize / c.bs, slot as usize % c.bs);
            for kh in 0..c.kvh {
                let at = ((blk * c.kvh + kh) * c.bs + off) * c.d;
                let k_row = &out[r * stride + (c.h + kh) * c.d..][..c.d];
                let v_row = &qkv[r * stride + (c.h + c.kvh + kh) * c.d..][..c.d];
                for j in 0..c.d {
                    assert_eq!(
                        kc[at + j].to_bits(),
                        k_row[j].to_bits(),
                        "k slot {slot} head {kh} dim {j}"
                    );
                    assert_eq!(
                        vc[at + j].to_bits(),
                        v_row[j].to_bits(),
                        "v slot {slot} head {kh} dim {j}"
                    );
                    written[at + j] = true;
                }
            }
        }
        for i in 0..cache_len {
            if !written[i] {
                assert!(
                    is_poison_bf16(kc[i]) && is_poison_bf16(vc[i]),
                    "cache element {i} was written"
                );
            }
        }
    }
    Ok(())
}
