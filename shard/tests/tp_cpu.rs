//! Tensor-parallel sharding math on the CPU: a tiny random Llama's weights are split with the
//! same `model::tp` functions the CUDA loader uses (fused q/k/v and gate/up by rows, o_proj
//! and down by columns), each of T in-process ranks runs its partial forward, and an
//! in-process all-reduce (sum) of the o_proj and down outputs joins them. The logits must equal
//! the unsharded forward's; a split with the ranks' order crossed must not.

#[path = "tp_cpu/tiny.rs"]
mod tiny;

use pagedserve_shard::model::LlamaConfig;
use pagedserve_shard::model::tp::{TpShard, slice_cols, stack_rows};
use tiny::{Model, add, attention, embed, matmul, rms_norm, rope, silu_mul};

/// One rank's weights, as the CUDA backend holds them: fused `[q; k; v]` and `[gate; up]`.
struct RankLayer {
    qkv: Vec<f32>,
    o: Vec<f32>,
    gate_up: Vec<f32>,
    down: Vec<f32>,
}

struct Rank {
    local: LlamaConfig,
    layers: Vec<RankLayer>,
}

/// What to get wrong on purpose, to show the test notices.
#[derive(Clone, Copy, PartialEq)]
enum Mistake {
    None,
    /// o_proj's columns from the mirrored rank (heads and o_proj inputs no longer match).
    CrossedOProj,
    /// down's columns from the mirrored rank.
    CrossedDown,
}

fn split(m: &Model, size: usize, mistake: Mistake) -> Vec<Rank> {
    let c = &m.cfg;
    (0..size)
        .map(|rank| {
            let tp = TpShard::new(c, size, rank).expect("divisible");
            let mirror = TpShard::new(c, size, size - 1 - rank).expect("divisible");
            let o_src = if mistake == Mistake::CrossedOProj {
                mirror
            } else {
                tp
            };
            let d_src = if mistake == Mistake::CrossedDown {
                mirror
            } else {
                tp
            };
            let layers = m
                .layers
                .iter()
                .map(|l| {
                    let qkv: Vec<f32> = [&l.q[..], &l.k, &l.v].concat();
                    let gate_up: Vec<f32> = [&l.gate[..], &l.up].concat();
                    RankLayer {
                        qkv: stack_rows(&qkv, c.hidden, &tp.fused_qkv_rows()).expect("rows"),
                        o: slice_cols(&l.o, c.num_heads * c.head_dim, o_src.o_cols())
                            .expect("cols"),
                        gate_up: stack_rows(&gate_up, c.hidden, &tp.fused_gate_up_rows())
                            .expect("rows"),
                        down: slice_cols(&l.down, c.ffn, d_src.down_cols()).expect("cols"),
                    }
                })
                .collect();
            Rank {
                local: tp.local_config(c),
                layers,
            }
        })
        .collect()
}

/// Sums every rank's partial output, as NCCL's all-reduce does.
fn all_reduce(parts: Vec<Vec<f32>>) -> Vec<f32> {
    let mut sum = vec![0.0; parts[0].len()];
    for p in &parts {
        add(&mut sum, p);
    }
    sum
}

/// Rank `r`'s attention block: its heads, then its partial o_proj output.
fn attn_partial(r: &Rank, layer: usize, hn: &[f32], n: usize) -> Vec<f32> {
    let c = &r.local;
    let (h, d) = (c.hidden, c.head_dim);
    let (qd, kvd) = (c.num_heads * d, c.num_kv_heads * d);
    let qkv = matmul(hn, &r.layers[layer].qkv, n, h);
    let w = qd + 2 * kvd;
    let cols = |a: usize, b: usize| -> Vec<f32> {
        qkv.chunks_exact(w)
            .flat_map(|row| row[a..b].iter().copied())
            .collect()
    };
    let (mut q, mut k, v) = (cols(0, qd), cols(qd, qd + kvd), cols(qd + kvd, w));
    rope(&mut q, c.num_heads, c);
    rope(&mut k, c.num_kv_heads, c);
    let a = attention(&q, &k, &v, n, c.num_heads, c.num_kv_heads, d);
    matmul(&a, &r.layers[layer].o, n, qd)
}

fn mlp_partial(r: &Rank, layer: usize, hn: &[f32], n: usize) -> Vec<f32> {
    let c = &r.local;
    let gu = matmul(hn, &r.layers[layer].gate_up, n, c.hidden);
    let f = c.ffn;
    let (g, u): (Vec<f32>, Vec<f32>) = (
        gu.chunks_exact(2 * f)
            .flat_map(|row| row[..f].to_vec())
            .collect(),
        gu.chunks_exact(2 * f)
            .flat_map(|row| row[f..].to_vec())
            .collect(),
    );
    matmul(&silu_mul(&g, &u), &r.layers[layer].down, n, f)
}

/// The sharded forward: replicated embedding and norms, partial blocks joined by all-reduce,
/// lm_head on rank 0.
fn forward_tp(m: &Model, ranks: &[Rank], tokens: &[u32]) -> Vec<f32> {
    let c = &m.cfg;
    let n = tokens.len();
    let mut x = embed(&m.embed, c.hidden, tokens);
    for (i, l) in m.layers.iter().enumerate() {
        let hn = rms_norm(&x, &l.attn_norm, c.rms_eps);
        add(
            &mut x,
            &all_reduce(ranks.iter().map(|r| attn_partial(r, i, &hn, n)).collect()),
        );
        let hn = rms_norm(&x, &l.ffn_norm, c.rms_eps);
        add(
            &mut x,
            &all_reduce(ranks.iter().map(|r| mlp_partial(r, i, &hn, n)).collect()),
        );
    }
    matmul(
        &rms_norm(&x, &m.final_norm, c.rms_eps),
        &m.lm_head,
        n,
        c.hidden,
    )
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const PROMPT: [u32; 7] = [3, 17, 42, 8, 8, 29, 1];

#[test]
fn sharded_forward_equals_the_unsharded_one() {
    let m = Model::random(7);
    let want = m.forward(&PROMPT);
    assert_eq!(want.len(), PROMPT.len() * tiny::VOCAB);
    let spread = want.iter().copied().fold(0.0f32, |a, v| a.max(v.abs()));
    assert!(spread > 0.1, "logits carry signal: max |logit| {spread}");
    for size in [1, 2, 4] {
        let got = forward_tp(&m, &split(&m, size, Mistake::None), &PROMPT);
        let diff = max_diff(&got, &want);
        eprintln!("T={size}: max |logit diff| {diff:e}");
        assert!(diff < 1e-4, "T={size}: logits differ by {diff}");
    }
}

#[test]
fn crossed_rank_order_is_caught() {
    let m = Model::random(11);
    let want = m.forward(&PROMPT);
    for size in [2, 4] {
        for mistake in [Mistake::CrossedOProj, Mistake::CrossedDown] {
            let got = forward_tp(&m, &split(&m, size, mistake), &PROMPT);
            let diff = max_diff(&got, &want);
            assert!(
                diff > 1e-2,
                "T={size}: a crossed split went unnoticed ({diff})"
            );
        }
    }
}

#[test]
fn sizes_that_do_not_divide_the_heads_are_refused() {
    let c = tiny::config();
    let e = TpShard::new(&c, 8, 0).expect_err("4 KV heads cannot split 8 ways");
    assert!(e.to_string().contains("KV heads"), "{e}");
    assert!(TpShard::new(&c, 3, 0).is_err());
}
