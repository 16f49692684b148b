//! A tiny Llama in plain f32 for the tensor-parallel test: random weights, the unsharded
//! forward over separate q/k/v/o/gate/up/down matrices, and the primitives (matmul, RMSNorm,
//! RoPE, causal GQA attention) both forwards share.

use pagedserve_shard::model::LlamaConfig;

pub fn config() -> LlamaConfig {
    LlamaConfig {
        num_layers: 2,
        hidden: 32,
        ffn: 48,
        num_heads: 8,
        num_kv_heads: 4,
        head_dim: 4,
        rope_dim: 4,
        rope_base: 10000.0,
        rms_eps: 1e-5,
        max_context: 64,
    }
}

pub const VOCAB: usize = 50;

/// Deterministic uniform values in [-scale, scale) (an LCG: no dependency, same on every run).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }
}

/// One layer's full (unsharded) weights, each `[out, in]` row-major.
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub o: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
}

pub struct Model {
    pub cfg: LlamaConfig,
    pub embed: Vec<f32>,
    pub layers: Vec<Layer>,
    pub final_norm: Vec<f32>,
    pub lm_head: Vec<f32>,
}

impl Model {
    pub fn random(seed: u64) -> Self {
        let cfg = config();
        let mut r = Rng::new(seed);
        let (h, d, f) = (cfg.hidden, cfg.head_dim, cfg.ffn);
        let (qd, kvd) = (cfg.num_heads * d, cfg.num_kv_heads * d);
        let s = |n: usize| (3.0 / n as f32).sqrt();
        let layers = (0..cfg.num_layers)
            .map(|_| Layer {
                attn_norm: r.vec(h, 0.2).iter().map(|x| 1.0 + x).collect(),
                q: r.vec(qd * h, s(h)),
                k: r.vec(kvd * h, s(h)),
                v: r.vec(kvd * h, s(h)),
                o: r.vec(h * qd, s(qd)),
                ffn_norm: r.vec(h, 0.2).iter().map(|x| 1.0 + x).collect(),
                gate: r.vec(f * h, s(h)),
                up: r.vec(f * h, s(h)),
                down: r.vec(h * f, s(f)),
            })
            .collect();
        Self {
            embed: r.vec(VOCAB * h, 1.0),
            layers,
            final_norm: r.vec(h, 0.2).iter().map(|x| 1.0 + x).collect(),
            lm_head: r.vec(VOCAB * h, s(h)),
            cfg,
        }
    }

    /// Logits `[tokens, vocab]` of the unsharded model.
    pub fn forward(&self, tokens: &[u32]) -> Vec<f32> {
        let c = &self.cfg;
        let (n, h) = (tokens.len(), c.hidden);
        let mut x = embed(&self.embed, h, tokens);
        for l in &self.layers {
            let hn = rms_norm(&x, &l.attn_norm, c.rms_eps);
            let mut q = matmul(&hn, &l.q, n, h);
            let mut k = matmul(&hn, &l.k, n, h);
            let v = matmul(&hn, &l.v, n, h);
            rope(&mut q, c.num_heads, c);
            rope(&mut k, c.num_kv_heads, c);
            let a = attention(&q, &k, &v, n, c.num_heads, c.num_kv_heads, c.head_dim);
            add(&mut x, &matmul(&a, &l.o, n, c.num_heads * c.head_dim));
            let hn = rms_norm(&x, &l.ffn_norm, c.rms_eps);
            let g = matmul(&hn, &l.gate, n, h);
            let u = matmul(&hn, &l.up, n, h);
            add(&mut x, &matmul(&silu_mul(&g, &u), &l.down, n, c.ffn));
        }
        let hn = rms_norm(&x, &self.final_norm, c.rms_eps);
        matmul(&hn, &self.lm_head, n, h)
    }
}

pub fn embed(table: &[f32], h: usize, tokens: &[u32]) -> Vec<f32> {
    tokens
        .iter()
        .flat_map(|&t| table[t as usize * h..(t as usize + 1) * h].iter().copied())
        .collect()
}

/// `x[n, k] @ w[out, k]^T`.
pub fn matmul(x: &[f32], w: &[f32], n: usize, k: usize) -> Vec<f32> {
    let out = w.len() / k;
    let mut y = vec![0.0; n * out];
    for i in 0..n {
        let xi = &x[i * k..(i + 1) * k];
        for j in 0..out {
            let wj = &w[j * k..(j + 1) * k];
            y[i * out + j] = xi.iter().zip(wj).map(|(a, b)| a * b).sum();
        }
    }
    y
}

pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    x.chunks_exact(w.len())
        .flat_map(|row| {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
            let inv = 1.0 / (ms + eps).sqrt();
            row.iter().zip(w).map(move |(v, g)| v * inv * g)
        })
        .collect()
}

/// Rotates each head's halves (NeoX layout); positions are the row indices.
pub fn rope(x: &mut [f32], heads: usize, c: &LlamaConfig) {
    let d = c.head_dim;
    let half = d / 2;
    for (pos, row) in x.chunks_exact_mut(heads * d).enumerate() {
        for head in row.chunks_exact_mut(d) {
            for i in 0..half {
                let freq = c.rope_base.powf(-((2 * i) as f32) / d as f32);
                let (sin, cos) = (pos as f32 * freq).sin_cos();
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * cos - b * sin;
                head[i + half] = a * sin + b * cos;
            }
        }
    }
}

/// Causal attention with grouped KV heads: query head `j` reads KV head `j / (heads / kv)`.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n: usize,
    heads: usize,
    kv_heads: usize,
    d: usize,
) -> Vec<f32> {
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0.0; n * heads * d];
    for i in 0..n {
        for hq in 0..heads {
            let hk = hq / group;
            let qi = &q[(i * heads + hq) * d..][..d];
            let scores: Vec<f32> = (0..=i)
                .map(|j| {
                    let kj = &k[(j * kv_heads + hk) * d..][..d];
                    qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f32::MIN, f32::max);
            let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let z: f32 = e.iter().sum();
            let o = &mut out[(i * heads + hq) * d..][..d];
            for (j, w) in e.iter().enumerate() {
                let vj = &v[(j * kv_heads + hk) * d..][..d];
                for (o, vv) in o.iter_mut().zip(vj) {
                    *o += w / z * vv;
                }
            }
        }
    }
    out
}

pub fn silu_mul(g: &[f32], u: &[f32]) -> Vec<f32> {
    g.iter()
        .zip(u)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect()
}

pub fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
