//! Megatron-style tensor-parallel sharding: which rows and columns of each weight rank `r` of
//! `T` holds. Pure functions, shared by the CUDA loader and the CPU test of the math
//! (`shard/tests/tp_cpu.rs`), so what is tested is what runs.
//!
//! Per layer: q/k/v are column-parallel by heads (rank `r` holds query heads
//! `r*H/T..(r+1)*H/T` and KV heads `r*KVH/T..(r+1)*KVH/T`, so each query head's KV head stays
//! on its rank); o_proj is row-parallel (the input columns of the rank's query heads) and its
//! partial outputs are summed across ranks (all-reduce); gate/up are column-parallel (FFN/T
//! rows each); down is row-parallel over the same FFN columns plus an all-reduce. Embedding,
//! norms and lm_head are replicated (lm_head runs on rank 0 only).

use std::ops::Range;

use crate::model::LlamaConfig;

/// Why a model cannot be split `size` ways.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TpError {
    #[error("tensor-parallel size must be at least 1")]
    ZeroSize,
    #[error("tensor-parallel rank {rank} out of range for size {size}")]
    RankOutOfRange { rank: usize, size: usize },
    #[error("tensor-parallel size {size} must divide the {what} ({count}); pick a divisor of it")]
    Indivisible {
        size: usize,
        what: &'static str,
        count: usize,
    },
}

/// Rank `rank` of a tensor-parallel group of `size` over a model of `cfg`'s shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TpShard {
    pub size: usize,
    pub rank: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ffn: usize,
}

impl TpShard {
    /// Checks that `size` divides the query heads, the KV heads and the FFN width.
    pub fn new(cfg: &LlamaConfig, size: usize, rank: usize) -> Result<Self, TpError> {
        if size == 0 {
            return Err(TpError::ZeroSize);
        }
        if rank >= size {
            return Err(TpError::RankOutOfRange { rank, size });
        }
        for (what, count) in [
            ("query heads", cfg.num_heads),
            ("KV heads", cfg.num_kv_heads),
            ("FFN width", cfg.ffn),
        ] {
            if !count.is_multiple_of(size) {
                return Err(TpError::Indivisible { size, what, count });
            }
        }
        Ok(Self {
            size,
            rank,
            heads: cfg.num_heads,
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            ffn: cfg.ffn,
        })
    }

    /// The whole model (size 1).
    pub fn single(cfg: &LlamaConfig) -> Self {
        Self {
            size: 1,
            rank: 0,
            heads: cfg.num_heads,
            kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            ffn: cfg.ffn,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    /// The config one rank runs: its share of heads, KV heads and FFN width; everything else
    /// (hidden size, head_dim, layers, RoPE) unchanged.
    pub fn local_config(&self, cfg: &LlamaConfig) -> LlamaConfig {
        LlamaConfig {
            num_heads: cfg.num_heads / self.size,
            num_kv_heads: cfg.num_kv_heads / self.size,
            ffn: cfg.ffn / self.size,
            ..cfg.clone()
        }
    }

    fn part(&self, total: usize) -> Range<usize> {
        let n = total / self.size;
        self.rank * n..(self.rank + 1) * n
    }

    /// Rows of `attn_q` (`[H * D, hidden]`) this rank holds: its query heads.
    pub fn q_rows(&self) -> Range<usize> {
        self.part(self.heads * self.head_dim)
    }

    /// Rows of `attn_k` and of `attn_v` (`[KVH * D, hidden]`): its KV heads.
    pub fn kv_rows(&self) -> Range<usize> {
        self.part(self.kv_heads * self.head_dim)
    }

    /// Columns of `attn_output` (`[hidden, H * D]`): the inputs from its query heads.
    pub fn o_cols(&self) -> Range<usize> {
        self.q_rows()
    }

    /// Rows of `ffn_gate` and of `ffn_up` (`[ffn, hidden]`).
    pub fn ffn_rows(&self) -> Range<usize> {
        self.part(self.ffn)
    }

    /// Columns of `ffn_down` (`[hidden, ffn]`).
    pub fn down_cols(&self) -> Range<usize> {
        self.ffn_rows()
    }

    /// Rows of the fused `[q; k; v]` matrix (`[(H + 2 KVH) * D, hidden]`) this rank holds, in
    /// the order its own fused matrix stacks them: its q rows, its k rows, its v rows.
    pub fn fused_qkv_rows(&self) -> [Range<usize>; 3] {
        let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let shift = |r: Range<usize>, by: usize| r.start + by..r.end + by;
        [
            self.q_rows(),
            shift(self.kv_rows(), q),
            shift(self.kv_rows(), q + kv),
        ]
    }

    /// Rows of the fused `[gate; up]` matrix (`[2 * ffn, hidden]`) this rank holds.
    pub fn fused_gate_up_rows(&self) -> [Range<usize>; 2] {
        let f = self.ffn_rows();
        [f.clone(), f.start + self.ffn..f.end + self.ffn]
    }
}

/// Why a slice cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot take {what} {range:?} of a {len}-element matrix with {cols} columns")]
pub struct SliceError {
    what: &'static str,
    range: Range<usize>,
    len: usize,
    cols: usize,
}

/// Rows `rows` of a row-major matrix with `cols` columns.
pub fn slice_rows<T: Copy>(m: &[T], cols: usize, rows: Range<usize>) -> Result<Vec<T>, SliceError> {
    let (start, end) = (rows.start * cols, rows.end * cols);
    if cols == 0 || !m.len().is_multiple_of(cols) || end > m.len() || start > end {
        return Err(SliceError {
            what: "rows",
            range: rows,
            len: m.len(),
            cols,
        });
    }
    Ok(m[start..end].to_vec())
}

/// Columns `range` of every row of a row-major matrix with `cols` columns.
pub fn slice_cols<T: Copy>(
    m: &[T],
    cols: usize,
    range: Range<usize>,
) -> Result<Vec<T>, SliceError> {
    if cols == 0 || !m.len().is_multiple_of(cols) || range.end > cols || range.start > range.end {
        return Err(SliceError {
            what: "columns",
            range,
            len: m.len(),
            cols,
        });
    }
    Ok(m.chunks_exact(cols)
        .flat_map(|row| row[range.clone()].iter().copied())
        .collect())
}

/// The given row ranges of a row-major matrix, stacked in order.
pub fn stack_rows<T: Copy>(
    m: &[T],
    cols: usize,
    parts: &[Range<usize>],
) -> Result<Vec<T>, SliceError> {
    let mut out = Vec::with_capacity(parts.iter().map(|r| r.len() * cols).sum());
    for r in parts {
        out.extend(slice_rows(m, cols, r.clone())?);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // unwrap is the assertion in tests
mod tests {
    use super::*;

    fn cfg(heads: usize, kv: usize, ffn: usize) -> LlamaConfig {
        LlamaConfig {
            num_layers: 2,
            hidden: 8,
            ffn,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim: 2,
            rope_dim: 2,
            rope_base: 10000.0,
            rms_eps: 1e-5,
            max_context: 64,
        }
    }

    #[test]
    fn refuses_sizes_that_do_not_divide() {
        let c = cfg(9, 3, 1536);
        assert!(TpShard::new(&c, 3, 2).is_ok());
        let e = TpShard::new(&c, 2, 0).unwrap_err();
        assert!(e.to_string().contains("query heads (9)"), "{e}");
        assert!(matches!(
            TpShard::new(&cfg(8, 2, 16), 4, 0),
            Err(TpError::Indivisible {
                what: "KV heads",
                ..
            })
        ));
        assert_eq!(TpShard::new(&c, 0, 0), Err(TpError::ZeroSize));
        assert!(TpShard::new(&c, 3, 3).is_err());
    }

    #[test]
    fn ranks_tile_every_weight_exactly_once() {
        let c = cfg(8, 4, 12);
        let shards: Vec<TpShard> = (0..4).map(|r| TpShard::new(&c, 4, r).unwrap()).collect();
        let mut fused: Vec<usize> = shards
            .iter()
            .flat_map(|s| s.fused_qkv_rows())
            .flatten()
            .collect();
        fused.sort_unstable();
        assert_eq!(fused, (0..(8 + 2 * 4) * 2).collect::<Vec<_>>());
        let mut gu: Vec<usize> = shards
            .iter()
            .flat_map(|s| s.fused_gate_up_rows())
            .flatten()
            .collect();
        gu.sort_unstable();
        assert_eq!(gu, (0..24).collect::<Vec<_>>());
        assert_eq!(shards[1].q_rows(), 4..8);
        assert_eq!(shards[1].kv_rows(), 2..4);
        assert_eq!(shards[3].down_cols(), 9..12);
        let local = shards[0].local_config(&c);
        assert_eq!((local.num_heads, local.num_kv_heads, local.ffn), (2, 1, 3));
        assert_eq!(local.hidden, 8);
    }

    #[test]
    fn slices_rows_and_columns() {
        // 3 x 4 matrix with values 10 * row + col.
        let m: Vec<u32> = (0..3)
            .flat_map(|r| (0..4).map(move |c| 10 * r + c))
            .collect();
        assert_eq!(slice_rows(&m, 4, 1..2).unwrap(), vec![10, 11, 12, 13]);
        assert_eq!(slice_cols(&m, 4, 2..4).unwrap(), vec![2, 3, 12, 13, 22, 23]);
        assert_eq!(
            stack_rows(&m, 4, &[2..3, 0..1]).unwrap(),
            vec![20, 21, 22, 23, 0, 1, 2, 3]
        );
        assert!(slice_rows(&m, 4, 2..4).is_err());
        assert!(slice_cols(&m, 4, 3..5).is_err());
        assert!(slice_cols(&m, 5, 0..1).is_err());
    }
}
