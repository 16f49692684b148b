//! A paged KV cache on the host and the attention reference (f64) both attention tests use.

use half::bf16;
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
