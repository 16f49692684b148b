//! Paged attention and KV writes against a naive contiguous reference.
#![allow(clippy::unwrap_used)] // unwrap is the assertion in tests

use super::*;
use crate::backend::AttnSeq;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| (self.next() % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }
    /// A random permutation of `0..n`.
    fn perm(&mut self, n: usize) -> Vec<u32> {
        let mut v: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            v.swap(i, self.next() as usize % (i + 1));
        }
        v
    }
}

/// softmax(q k^T * scale) v over contiguous keys `0..=pos`, in f64.
fn naive(q: &[f32], keys: &[Vec<f32>], vals: &[Vec<f32>], scale: f32) -> Vec<f32> {
    let s: Vec<f64> = keys
        .iter()
        .map(|k| {
            q.iter()
                .zip(k)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum::<f64>()
                * scale as f64
        })
        .collect();
    let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    (0..q.len())
        .map(|d| {
            (e.iter()
                .zip(vals)
                .map(|(p, v)| p * v[d] as f64)
                .sum::<f64>()
                / sum) as f32
        })
        .collect()
}

const BS: usize = 4;
const KV_HEADS: usize = 2;
const HD: usize = 8;
const HEADS: usize = 6;

/// One sequence: its full K/V history (`[pos][kv_heads * hd]`) and its block table.
struct Seq {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    table: Vec<u32>,
    start_pos: usize,
}

fn layout() -> KvLayout {
    KvLayout {
        num_layers: 2,
        num_blocks: 13,
        block_size: BS,
        num_kv_heads: KV_HEADS,
        head_dim: HD,
    }
}

fn slot(table: &[u32], pos: usize) -> u32 {
    table[pos / BS] * BS as u32 + (pos % BS) as u32
}

fn write_all(cache: &mut CpuKvCache, layer: usize, seq: &Seq) {
    let w = KV_HEADS * HD;
    let n = seq.k.len();
    let k = CpuTensor::new(n, w, seq.k.concat()).unwrap();
    let v = CpuTensor::new(n, w, seq.v.concat()).unwrap();
    let slots: Vec<u32> = (0..n).map(|p| slot(&seq.table, p)).collect();
    cache.write(layer, &k, &v, &slots).unwrap();
}

#[test]
fn paged_attention_matches_naive_with_gqa_and_random_tables() {
    let mut rng = Rng(7);
    let blocks = rng.perm(13);
    // Odd lengths: 11 tokens (last 4 queried, as a later prefill chunk) and 5 (all queried).
    let lens = [(11usize, 7usize), (5, 0), (1, 0)];
    let mut used = 0;
    let seqs: Vec<Seq> = lens
        .iter()
        .map(|&(len, start_pos)| {
            let nb = len.div_ceil(BS);
            let table = blocks[used..used + nb].to_vec();
            used += nb;
            Seq {
                k: (0..len).map(|_| rng.f32s(KV_HEADS * HD)).collect(),
                v: (0..len).map(|_| rng.f32s(KV_HEADS * HD)).collect(),
                table,
                start_pos,
            }
        })
        .collect();
    let mut cache = CpuKvCache::new(layout()).unwrap();
    for s in &seqs {
        write_all(&mut cache, 1, s);
    }
    let (mut attn, mut tables, mut q_data, mut row) = (vec![], vec![], vec![], 0);
    for s in &seqs {
        let rows = s.k.len() - s.start_pos;
        attn.push(AttnSeq {
            row_start: row,
            num_rows: rows,
            start_pos: s.start_pos,
            table_start: tables.len(),
            table_len: s.table.len(),
        });
        tables.extend_from_slice(&s.table);
        q_data.extend(rng.f32s(rows * HEADS * HD));
        row += rows;
    }
    let q = CpuTensor::new(row, HEADS * HD, q_data).unwrap();
    let scale = 1.0 / (HD as f32).sqrt();
    let out = paged_attention(&q, &cache, 1, &attn, &tables, HEADS, scale).unwrap();
    for (s, a) in seqs.iter().zip(&attn) {
        for i in 0..a.num_rows {
            let pos = s.start_pos + i;
            for h in 0..HEADS {
                let g = h / (HEADS / KV_HEADS);
                let keys: Vec<Vec<f32>> = s.k[..=pos]
                    .iter()
                    .map(|k| k[g * HD..(g + 1) * HD].to_vec())
                    .collect();
                let vals: Vec<Vec<f32>> = s.v[..=pos]
                    .iter()
                    .map(|v| v[g * HD..(g + 1) * HD].to_vec())
                    .collect();
                let qh = &q.row(a.row_start + i)[h * HD..(h + 1) * HD];
                let want = naive(qh, &keys, &vals, scale);
                let got = &out.row(a.row_start + i)[h * HD..(h + 1) * HD];
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() < 1e-5,
                        "seq at row {} pos {pos} head {h}: {g} vs {w}",
                        a.row_start
                    );
                }
            }
        }
    }
}

#[test]
fn paged_attention_rejects_bad_plans() {
    let cache = CpuKvCache::new(layout()).unwrap();
    let q = CpuTensor::zeros(3, HEADS * HD);
    let ok = AttnSeq {
        row_start: 0,
        num_rows: 3,
        start_pos: 2,
        table_start: 0,
        table_len: 2,
    };
    assert!(paged_attention(&q, &cache, 0, &[ok], &[0, 1], HEADS, 1.0).is_ok());
    let short = AttnSeq { start_pos: 6, ..ok };
    assert!(paged_attention(&q, &cache, 0, &[short], &[0, 1], HEADS, 1.0).is_err());
    assert!(paged_attention(&q, &cache, 0, &[ok], &[0, 13], HEADS, 1.0).is_err());
    assert!(paged_attention(&q, &cache, 2, &[ok], &[0, 1], HEADS, 1.0).is_err());
    assert!(paged_attention(&q, &cache, 0, &[ok], &[0, 1], 4, 1.0).is_err());
    let wrong_rows = AttnSeq { num_rows: 2, ..ok };
    assert!(paged_attention(&q, &cache, 0, &[wrong_rows], &[0, 1], HEADS, 1.0).is_err());
}

#[test]
fn kv_write_lands_in_the_right_slot_and_layer() {
    let mut cache = CpuKvCache::new(layout()).unwrap();
    let w = KV_HEADS * HD;
    let k = CpuTensor::new(1, w, (0..w).map(|i| i as f32).collect()).unwrap();
    let v = CpuTensor::new(1, w, (0..w).map(|i| -(i as f32)).collect()).unwrap();
    // Block 5, offset 3.
    cache.write(1, &k, &v, &[5 * BS as u32 + 3]).unwrap();
    let off = cache.offset(1, 5, 1, 3);
    assert_eq!(&cache.k[off..off + HD], &k.data[HD..2 * HD]);
    assert_eq!(&cache.v[off..off + HD], &v.data[HD..2 * HD]);
    let nonzero = cache.k.iter().filter(|x| **x != 0.0).count();
    assert_eq!(
        nonzero,
        w - 1,
        "only the written slot changes (one element is 0.0)"
    );
    assert!(cache.write(0, &k, &v, &[13 * BS as u32]).is_err());
    assert!(cache.write(2, &k, &v, &[0]).is_err());
}

#[test]
fn backend_matmul_matches_naive_in_every_weight_format() {
    let mut rng = Rng(3);
    // 67 output rows: uneven shares over the pool's threads.
    let (n, k) = (67, 96);
    let w = rng.f32s(n * k);
    let wt = Tensor::from_slice(&w, (n, k), &Device::Cpu).unwrap();
    // 6 rows: the 4-row prefill kernel plus the single-row tail; 1 row: the decode kernels.
    for rows in [6, 1] {
        check_formats(
            &wt,
            &CpuTensor::new(rows, k, rng.f32s(rows * k)).unwrap(),
            n,
            k,
        );
    }
}

fn check_formats(wt: &Tensor, x: &CpuTensor, n: usize, k: usize) {
    use candle_core::quantized::GgmlDType;
    let cases = [
        (WeightFormat::Blocks, GgmlDType::Q4_1),
        (WeightFormat::Blocks, GgmlDType::Q8_0),
        (WeightFormat::Blocks, GgmlDType::F32),
        (WeightFormat::F32, GgmlDType::Q4_1),
        (WeightFormat::Candle, GgmlDType::Q8_0),
    ];
    for (format, dtype) in cases {
        let q = QTensor::quantize(wt, dtype).unwrap();
        // The reference multiplies the dequantized weights in f64.
        let deq = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // Only candle's path rounds activations to 8 bits.
        let tol = if format == WeightFormat::Candle {
            0.05
        } else {
            1e-4
        };
        let be = CpuBackend::new(format);
        let qw = be.load_weight(q).unwrap();
        let out = be.matmul(x, &[&qw, &qw]).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!((out[1].rows, out[1].cols), (x.rows, n));
        for r in 0..x.rows {
            for c in 0..n {
                let want: f64 = x
                    .row(r)
                    .iter()
                    .zip(&deq[c * k..(c + 1) * k])
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum();
                let got = out[1].row(r)[c];
                assert!(
                    (got as f64 - want).abs() < tol,
                    "{format:?} {dtype:?} [{r}, {c}]: {got} vs {want}"
                );
            }
        }
        let bad = CpuTensor::zeros(1, k + 1);
        assert!(be.matmul(&bad, &[&qw]).is_err() || format != WeightFormat::Blocks);
    }
}

/// SmolLM2's attention shape (head_dim 64, 9 query heads on 3 KV heads, blocks of 16): the
/// AVX-512 group kernel on CPUs that have it, through the backend's pool, against the naive
/// reference; a prefill chunk of 29 rows after 8 cached tokens, in shuffled blocks.
#[test]
fn paged_attention_at_the_default_model_shape_matches_naive() {
    let (bs, kvh, hd, heads, len, start): (usize, usize, usize, usize, usize, usize) =
        (16, 3, 64, 9, 37, 8);
    let lay = KvLayout {
        num_layers: 1,
        num_blocks: 5,
        block_size: bs,
        num_kv_heads: kvh,
        head_dim: hd,
    };
    let mut rng = Rng(11);
    let table: Vec<u32> = rng.perm(5)[..len.div_ceil(bs)].to_vec();
    let (k, v) = (rng.f32s(len * kvh * hd), rng.f32s(len * kvh * hd));
    let mut cache = CpuKvCache::new(lay).unwrap();
    let slots: Vec<u32> = (0..len)
        .map(|p| table[p / bs] * bs as u32 + (p % bs) as u32)
        .collect();
    let (kt, vt) = (
        CpuTensor::new(len, kvh * hd, k.clone()).unwrap(),
        CpuTensor::new(len, kvh * hd, v.clone()).unwrap(),
    );
    cache.write(0, &kt, &vt, &slots).unwrap();
    let rows = len - start;
    let q = CpuTensor::new(rows, heads * hd, rng.f32s(rows * heads * hd)).unwrap();
    let plan = StepPlan {
        tokens: vec![0; rows],
        positions: (start as u32..len as u32).collect(),
        slots: slots[start..].to_vec(),
        seqs: vec![AttnSeq {
            row_start: 0,
            num_rows: rows,
            start_pos: start,
            table_start: 0,
            table_len: table.len(),
        }],
        block_tables: table.clone(),
        logit_rows: vec![],
    };
    let scale = 1.0 / (hd as f32).sqrt();
    let backend = CpuBackend::new(WeightFormat::Blocks);
    let out = backend
        .paged_attention(&q, &cache, 0, &plan, heads, scale, None)
        .unwrap();
    for i in 0..rows {
        for h in 0..heads {
            let g = h / (heads / kvh);
            let head =
                |data: &[f32], p: usize| data[(p * kvh + g) * hd..(p * kvh + g + 1) * hd].to_vec();
            let keys: Vec<Vec<f32>> = (0..=start + i).map(|p| head(&k, p)).collect();
            let vals: Vec<Vec<f32>> = (0..=start + i).map(|p| head(&v, p)).collect();
            let want = naive(&q.row(i)[h * hd..(h + 1) * hd], &keys, &vals, scale);
            let got = &out.row(i)[h * hd..(h + 1) * hd];
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "row {i} head {h}: {a} vs {b}");
            }
        }
    }
}
