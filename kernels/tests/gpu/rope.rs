//! RoPE on q and k fused with the KV-cache write, into bf16 and fp8 (e4m3) caches.

use half::bf16;
use rand::Rng;
use rand::seq::SliceRandom;

use crate::common::*;
use pagedserve_kernels::{F8E4M3, KvElem, RopeHeads, RopeKv};

struct Case {
    h: usize,
    kvh: usize,
    d: usize,
    rope_dim: usize,
    bs: usize,
    t: usize,
}

/// A cache element type as the test sees it: what the kernel must store for a bf16 value, and a
/// poison value it never stores.
trait CacheElem: KvElem {
    const POISON: Self;
    fn store(x: bf16) -> Self;
    fn bits(self) -> u16;
}

impl CacheElem for bf16 {
    const POISON: Self = bf16::from_bits(POISON_BF16);
    fn store(x: bf16) -> Self {
        x
    }
    fn bits(self) -> u16 {
        self.to_bits()
    }
}

impl CacheElem for F8E4M3 {
    /// An e4m3 NaN, which the saturating conversion of a finite value never gives.
    const POISON: Self = F8E4M3::from_bits(0x7f);
    /// e4m3 of the bf16 value, rounded to nearest even and saturated to ±448 (float8 follows
    /// cuda_fp8.hpp's `__NV_SATFINITE` conversion).
    fn store(x: bf16) -> Self {
        F8E4M3::from_f32(x.to_f32())
    }
    fn bits(self) -> u16 {
        self.to_bits().into()
    }
}

/// Values the e4m3 conversion must get exactly right, all exact in bf16: saturation (past 448,
/// and 464, halfway between 448 and the 480 e4m3 lacks), ties to even (1 + 1/16 -> 1,
/// 1 + 3/16 -> 1.25, 3 x 2^-10 -> 2^-8 among the subnormals), the smallest subnormal, underflow
/// (2^-10, halfway to it, and below) and signed zeros. They go to the start of every v head, and
/// of every k head's dims past rope_dim (stored as they are).
const EDGE_VALUES: [f32; 18] = [
    1000.0,
    -1000.0,
    464.0,
    -464.0,
    460.0,
    448.0,
    -448.0,
    1.0625,
    -1.0625,
    1.1875,
    0.0029296875,  // 3 x 2^-10
    0.001953125,   // 2^-9
    -0.0009765625, // -2^-10
    0.00048828125, // 2^-11
    0.0,
    -0.0,
    240.0,
    -0.01171875, // -3 x 2^-8
];

#[test]
fn rope_kv_write_rotates_q_k_and_fills_slots() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    run::<bf16>(g, "rope_kv_write")
}

/// The fp8 cache: the same rotation in qkv, and the cache bytes are the e4m3 of the rotated bf16
/// k and of the bf16 v, bit for bit.
#[test]
fn rope_kv_write_fp8_stores_e4m3_of_k_and_v() -> TestResult {
    let Some(g) = gpu() else { return Ok(()) };
    run::<F8E4M3>(g, "rope_kv_write_fp8")
}

fn run<C: CacheElem>(g: &Gpu, name: &str) -> TestResult {
    let mut rng = rng(name);
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
        let mut qkv = to_bf16(&rand_vec(&mut rng, c.t * stride, -2.0, 2.0));
        for r in 0..c.t {
            for kh in 0..c.kvh {
                let n = EDGE_VALUES.len();
                let v_head = r * stride + (c.h + c.kvh + kh) * c.d;
                let k_tail = r * stride + (c.h + kh) * c.d + c.rope_dim;
                for (j, &x) in EDGE_VALUES.iter().cycle().skip(r + kh).take(n).enumerate() {
                    qkv[v_head + j] = bf16::from_f32(x);
                    if c.rope_dim + j < c.d {
                        qkv[k_tail + j] = bf16::from_f32(x);
                    }
                }
            }
        }
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
        let poison = vec![C::POISON; cache_len];
        let (mut kc, mut vc) = (up(g, &poison)?, up(g, &poison)?);
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

        // The cache holds exactly the rotated k (as the kernel rounded it to bf16 in qkv) and
        // the v of each non-padding row, stored as C; every other slot is still poison.
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
                        kc[at + j].bits(),
                        C::store(k_row[j]).bits(),
                        "k slot {slot} head {kh} dim {j}: stored from {}",
                        k_row[j]
                    );
                    assert_eq!(
                        vc[at + j].bits(),
                        C::store(v_row[j]).bits(),
                        "v slot {slot} head {kh} dim {j}: stored from {}",
                        v_row[j]
                    );
                    written[at + j] = true;
                }
            }
        }
        let poison = C::POISON.bits();
        for i in 0..cache_len {
            if !written[i] {
                assert!(
                    kc[i].bits() == poison && vc[i].bits() == poison,
                    "cache element {i} was written"
                );
            }
        }
    }
    Ok(())
}
