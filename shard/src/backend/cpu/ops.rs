//! Element-wise and per-row CPU ops.

use crate::backend::cpu::tensor::{CpuTensor, same_shape};
use crate::backend::{BackendError, BackendResult, RopeTable};

/// `x / sqrt(mean(x^2) + eps) * w` per row.
pub fn rms_norm(x: &CpuTensor, w: &[f32], eps: f32) -> BackendResult<CpuTensor> {
    if w.len() != x.cols {
        return Err(BackendError::Shape {
            op: "rms_norm",
            detail: format!("weight {} for {} cols", w.len(), x.cols),
        });
    }
    let mut out = Vec::with_capacity(x.data.len());
    for r in 0..x.rows {
        let row = x.row(r);
        let ss: f32 = row.iter().map(|v| v * v).sum();
        let inv = 1.0 / (ss / x.cols as f32 + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(v, g)| v * inv * g));
    }
    CpuTensor::new(x.rows, x.cols, out)
}

/// Interleaved rotary embedding in place: pairs `(2i, 2i+1)` of each head's first `rope_dim`
/// dims are rotated by `theta_i(pos)`.
pub fn rope(
    x: &mut CpuTensor,
    table: &RopeTable,
    positions: &[u32],
    num_heads: usize,
) -> BackendResult<()> {
    let hd = table.head_dim;
    if x.cols != num_heads * hd || positions.len() != x.rows {
        return Err(BackendError::Shape {
            op: "rope",
            detail: format!("[{}, {}] for {num_heads} heads x {hd}", x.rows, x.cols),
        });
    }
    let half = table.rope_dim / 2;
    for (r, &pos) in positions.iter().enumerate() {
        let pos = pos as usize;
        if pos >= table.max_pos {
            return Err(BackendError::Shape {
                op: "rope",
                detail: format!("position {pos} beyond table of {}", table.max_pos),
            });
        }
        let cos = &table.cos[pos * half..(pos + 1) * half];
        let sin = &table.sin[pos * half..(pos + 1) * half];
        let row = &mut x.data[r * x.cols..(r + 1) * x.cols];
        for head in row.chunks_exact_mut(hd) {
            for i in 0..half {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * cos[i] - b * sin[i];
                head[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        }
    }
    Ok(())
}

/// `silu(gate) * up`.
pub fn silu_mul(gate: &CpuTensor, up: &CpuTensor) -> BackendResult<CpuTensor> {
    same_shape("silu_mul", gate, up)?;
    let data = gate
        .data
        .iter()
        .zip(&up.data)
        .map(|(&g, &u)| g / (1.0 + (-g).exp()) * u)
        .collect();
    CpuTensor::new(gate.rows, gate.cols, data)
}

pub fn add_assign(x: &mut CpuTensor, y: &CpuTensor) -> BackendResult<()> {
    same_shape("add", x, y)?;
    x.data.iter_mut().zip(&y.data).for_each(|(a, b)| *a += b);
    Ok(())
}

/// `x[r] += bias` for every row (Qwen2's q/k/v projection biases).
pub fn add_bias(x: &mut CpuTensor, bias: &[f32]) -> BackendResult<()> {
    if bias.len() != x.cols {
        return Err(BackendError::Shape {
            op: "add_bias",
            detail: format!("bias {} for {} cols", bias.len(), x.cols),
        });
    }
    for row in x.data.chunks_exact_mut(x.cols) {
        row.iter_mut().zip(bias).for_each(|(a, b)| *a += b);
    }
    Ok(())
}

pub fn gather_rows(x: &CpuTensor, rows: &[usize]) -> BackendResult<CpuTensor> {
    let mut data = Vec::with_capacity(rows.len() * x.cols);
    for &r in rows {
        if r >= x.rows {
            return Err(BackendError::Shape {
                op: "gather_rows",
                detail: format!("row {r} of {}", x.rows),
            });
        }
        data.extend_from_slice(x.row(r));
    }
    CpuTensor::new(rows.len(), x.cols, data)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // unwrap is the assertion in tests
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn rms_norm_matches_naive() {
        let x = CpuTensor::new(3, 8, pseudo_random(24, 1)).unwrap();
        let w = pseudo_random(8, 2);
        let out = rms_norm(&x, &w, 1e-5).unwrap();
        for r in 0..3 {
            let row = x.row(r);
            let mean = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / 8.0;
            for c in 0..8 {
                let want = row[c] as f64 / (mean + 1e-5).sqrt() * w[c] as f64;
                assert!((out.row(r)[c] as f64 - want).abs() < 1e-5);
            }
        }
        assert!(rms_norm(&x, &w[..4], 1e-5).is_err());
    }

    #[test]
    fn rope_rotates_interleaved_pairs() {
        let (hd, heads) = (8, 2);
        let table = RopeTable::new(hd, hd, 10000.0, None, 16);
        let data = pseudo_random(2 * heads * hd, 3);
        let mut x = CpuTensor::new(2, heads * hd, data.clone()).unwrap();
        let positions = [0u32, 5];
        rope(&mut x, &table, &positions, heads).unwrap();
        // Position 0 is the identity.
        assert_eq!(x.row(0), &data[..heads * hd]);
        for h in 0..heads {
            for i in 0..hd / 2 {
                let theta = 5.0f64 * 10000f64.powf(-2.0 * i as f64 / hd as f64);
                let (a, b) = (
                    data[16 + h * hd + 2 * i] as f64,
                    data[16 + h * hd + 2 * i + 1] as f64,
                );
                let got = (
                    x.row(1)[h * hd + 2 * i] as f64,
                    x.row(1)[h * hd + 2 * i + 1] as f64,
                );
                assert!((got.0 - (a * theta.cos() - b * theta.sin())).abs() < 1e-5);
                assert!((got.1 - (a * theta.sin() + b * theta.cos())).abs() < 1e-5);
            }
        }
        assert!(rope(&mut x, &table, &[0, 16], heads).is_err());
    }

    #[test]
    fn rope_freq_factors_slow_down_rotation() {
        let plain = RopeTable::new(4, 4, 10000.0, None, 4);
        let scaled = RopeTable::new(4, 4, 10000.0, Some(&[1.0, 2.0]), 4);
        assert_eq!(plain.cos[2], scaled.cos[2]);
        let theta = 3.0f64 * 10000f64.powf(-0.5) / 2.0;
        assert!((scaled.sin[3 * 2 + 1] as f64 - theta.sin()).abs() < 1e-6);
    }

    #[test]
    fn silu_mul_add_and_gather() {
        let g = CpuTensor::new(1, 3, vec![0.0, 1.0, -2.0]).unwrap();
        let u = CpuTensor::new(1, 3, vec![5.0, 2.0, 1.0]).unwrap();
        let out = silu_mul(&g, &u).unwrap();
        let want = [0.0, 2.0 / (1.0 + (-1f32).exp()), -2.0 / (1.0 + 2f32.exp())];
        for (o, w) in out.data.iter().zip(want) {
            assert!((o - w).abs() < 1e-6);
        }
        let mut x = CpuTensor::new(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let y = CpuTensor::new(2, 2, vec![10.0, 20.0, 30.0, 40.0]).unwrap();
        add_assign(&mut x, &y).unwrap();
        assert_eq!(x.data, vec![11.0, 22.0, 33.0, 44.0]);
        assert_eq!(gather_rows(&x, &[1]).unwrap().data, vec![33.0, 44.0]);
        assert!(gather_rows(&x, &[2]).is_err());
        assert!(add_assign(&mut x, &g).is_err());
    }
}
