//! A paged KV cache on the host and the attention reference (f64) both attention tests use, and
//! fp8 (e4m3) caches whose values the reference reads widened.

use half::bf16;
use pagedserve_kernels::F8E4M3;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::common::{rand_vec, to_bf16};

pub struct HostCache {
    pub k: Vec<bf16>,
    pub v: Vec<bf16>,
    pub kvh: usize,
    pub bs: usize,
    pub d: usize,
}

impl HostCache {
    /// Random K and V in every slot of `num_blocks` blocks (never zeros).
    pub fn random(rng: &mut StdRng, num_blocks: usize, kvh: usize, bs: usize, d: usize) -> Self {
        let n = num_blocks * kvh * bs * d;
        HostCache {
            k: to_bf16(&rand_vec(rng, n, -1.0, 1.0)),
            v: to_bf16(&rand_vec(rng, n, -1.0, 1.0)),
            kvh,
            bs,
            d,
        }
    }

    fn row<'a>(&self, data: &'a [bf16], table: &[i32], pos: usize, head: usize) -> &'a [bf16] {
        let blk = table[pos / self.bs] as usize;
        &data[((blk * self.kvh + head) * self.bs + pos % self.bs) * self.d..][..self.d]
    }

    /// softmax(q·K^T · scale) · V over keys 0..n_keys of one sequence and KV head, in f64.
    pub fn attend(
        &self,
        q: &[bf16],
        table: &[i32],
        kv_head: usize,
        n_keys: usize,
        scale: f64,
    ) -> Vec<f64> {
        let scores: Vec<f64> = (0..n_keys)
            .map(|p| {
                let k = self.row(&self.k, table, p, kv_head);
                q.iter()
                    .zip(k)
                    .map(|(a, b)| a.to_f32() as f64 * b.to_f32() as f64)
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let z: f64 = w.iter().sum();
        let mut out = vec![0.0; self.d];
        for (p, wp) in w.iter().enumerate() {
            let v = self.row(&self.v, table, p, kv_head);
            for (o, x) in out.iter_mut().zip(v) {
                *o += wp / z * x.to_f32() as f64;
            }
        }
        out
    }
}

/// Block tables `[S, bt_stride]`: each sequence gets distinct blocks drawn from a shuffled pool
/// (never in order), padding entries are -1.
pub fn block_tables(
    rng: &mut StdRng,
    tokens: &[usize],
    bs: usize,
    num_blocks: usize,
) -> (Vec<i32>, usize) {
    let need: Vec<usize> = tokens.iter().map(|t| t.div_ceil(bs).max(1)).collect();
    let bt_stride = need.iter().copied().max().unwrap_or(1) + 1;
    let mut pool: Vec<i32> = (0..num_blocks as i32).collect();
    pool.shuffle(rng);
    assert!(
        need.iter().sum::<usize>() <= num_blocks,
        "cache too small for the test"
    );
    let mut tables = vec![-1; tokens.len() * bt_stride];
    let mut next = 0;
    for (s, &n) in need.iter().enumerate() {
        tables[s * bt_stride..s * bt_stride + n].copy_from_slice(&pool[next..next + n]);
        next += n;
    }
    (tables, bt_stride)
}

/// How the values of an fp8 test cache are drawn (each rounded to e4m3 with
/// `F8E4M3::from_f32`: to nearest even, saturating to ±448), with the range of q that keeps the
/// scores O(1) over them, so that every value moves the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Values {
    /// Uniform in [-1, 1], like the bf16 tests (about 1.6% of them e4m3 subnormals, below 2^-6).
    Bulk,
    /// Uniform in ±2^-6: e4m3 subnormals (and zeros, and a few that round up to 2^-6), which a
    /// kernel that flushed subnormals would read as zero.
    Subnormal,
    /// Magnitudes log-uniform over [2^-9, 1024) with random signs: every exponent, and about 6%
    /// past 448, which saturate.
    Large,
}

impl Fp8Values {
    pub const ALL: [Fp8Values; 3] = [Fp8Values::Bulk, Fp8Values::Subnormal, Fp8Values::Large];

    /// One value before rounding to e4m3.
    pub fn sample(self, rng: &mut StdRng) -> f32 {
        match self {
            Fp8Values::Bulk => rng.random_range(-1.0..1.0),
            Fp8Values::Subnormal => rng.random_range(-1.0..1.0) / 64.0,
            Fp8Values::Large => {
                let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
                sign * 2f32.powf(rng.random_range(-9.0..10.0))
            }
        }
    }

    /// q is drawn uniform in ±this: scores (q·k / sqrt(D)) with a standard deviation of about
    /// one (0.7 for Bulk, as in the bf16 tests; 1.0 for Subnormal; 1.3 for Large, where one
    /// saturated element moves a score by up to ~0.9).
    pub fn q_range(self) -> f32 {
        match self {
            Fp8Values::Bulk => 2.0,
            Fp8Values::Subnormal => 200.0,
            Fp8Values::Large => 1.0 / 64.0,
        }
    }
}

/// A paged fp8 (e4m3) KV cache: `k` and `v` as the kernels read them, and `widened`, the same
/// values as a bf16 [`HostCache`] for the reference (every finite e4m3 value is a bf16 value, so
/// the widening is exact; checked).
pub struct Fp8Cache {
    pub k: Vec<F8E4M3>,
    pub v: Vec<F8E4M3>,
    pub widened: HostCache,
}

impl Fp8Cache {
    pub fn random(
        rng: &mut StdRng,
        values: Fp8Values,
        num_blocks: usize,
        kvh: usize,
        bs: usize,
        d: usize,
    ) -> Self {
        let n = num_blocks * kvh * bs * d;
        let draw = |rng: &mut StdRng| -> Vec<F8E4M3> {
            (0..n)
                .map(|_| F8E4M3::from_f32(values.sample(rng)))
                .collect()
        };
        let (k, v) = (draw(rng), draw(rng));
        Self::from_values(k, v, kvh, bs, d)
    }

    /// The cache of these values (finite ones; `k` and `v` `[num_blocks, kvh, bs, d]`).
    pub fn from_values(k: Vec<F8E4M3>, v: Vec<F8E4M3>, kvh: usize, bs: usize, d: usize) -> Self {
        let widen = |x: &[F8E4M3]| -> Vec<bf16> {
            x.iter()
                .map(|e| {
                    let f = e.to_f32();
                    let b = bf16::from_f32(f);
                    assert!(f.is_finite() && b.to_f32() == f, "{:#04x}", e.to_bits());
                    b
                })
                .collect()
        };
        let widened = HostCache {
            k: widen(&k),
            v: widen(&v),
            kvh,
            bs,
            d,
        };
        Fp8Cache { k, v, widened }
    }
}
