//! Tests of `qweight`: every SIMD level against the scalar block kernels.
#![allow(clippy::unwrap_used)] // unwrap is the assertion in tests

use super::*;

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 1999) as f32 / 1000.0 - 1.0)
        .collect()
}

/// Every SIMD level this CPU has agrees with the scalar code, for single and 4-row dots.
#[test]
fn simd_levels_agree_with_scalar() {
    let (rows, cols) = (5, 96);
    let nb = cols / QK;
    let w =
        candle_core::Tensor::from_vec(data(rows * cols, 1), (rows, cols), &Device::Cpu).unwrap();
    let x = CpuTensor::new(5, cols, data(5 * cols, 2)).unwrap();
    let xsum: Vec<f32> = x.data.chunks_exact(QK).map(|c| c.iter().sum()).collect();
    let mut levels = vec![Simd::None];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            levels.push(Simd::Avx2);
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            levels.push(Simd::Avx512);
        }
    }
    for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
        let CpuWeight::Blocks(b) =
            CpuWeight::from_qtensor(QTensor::quantize(&w, dtype).unwrap()).unwrap()
        else {
            panic!("block format expected");
        };
        let per = if dtype == GgmlDType::Q4_1 { 16 } else { QK };
        for n in 0..rows {
            let (qs, d) = (
                &b.qs[n * nb * per..(n + 1) * nb * per],
                &b.scales[n * nb..(n + 1) * nb],
            );
            let dot = |t: usize, simd| match dtype {
                GgmlDType::Q4_1 => dot_q4_1(
                    qs,
                    d,
                    &b.mins[n * nb..(n + 1) * nb],
                    x.row(t),
                    &xsum[t * nb..(t + 1) * nb],
                    simd,
                ),
                _ => dot_q8_0(qs, d, x.row(t), simd),
            };
            for t in 0..x.rows {
                let want = dot(t, Simd::None);
                for &l in &levels {
                    assert!((dot(t, l) - want).abs() < 1e-4, "{dtype:?} {l:?}");
                }
            }
            #[cfg(target_arch = "x86_64")]
            if dtype == GgmlDType::Q8_0 && levels.contains(&Simd::Avx512) {
                // SAFETY: AVX-512F was detected; one weight row, four activation rows.
                let r = unsafe { simd_x86::avx512::dot_q8_0_x4(qs, d, &x.data[..4 * cols]) };
                for (t, v) in r.iter().enumerate() {
                    // Same summation order as the single-row kernel: bit-identical.
                    assert_eq!(
                        v.to_bits(),
                        dot(t, Simd::Avx512).to_bits(),
                        "q8_0 x4 row {t}"
                    );
                }
            }
            #[cfg(target_arch = "x86_64")]
            if dtype == GgmlDType::Q4_1 {
                let (m, xs, sums) = (
                    &b.mins[n * nb..(n + 1) * nb],
                    &x.data[..4 * cols],
                    &xsum[..4 * nb],
                );
                for &l in &levels[1..] {
                    // SAFETY: the level was detected; lengths are the kernel's contract.
                    let r = unsafe {
                        match l {
                            Simd::Avx512 => simd_x86::avx512::dot_q4_1_x4(qs, d, m, xs, sums),
                            _ => simd_x86::avx2::dot_q4_1_x4(qs, d, m, xs, sums),
                        }
                    };
                    for (t, v) in r.iter().enumerate() {
                        // Same summation order as that level's single-row kernel.
                        assert_eq!(v.to_bits(), dot(t, l).to_bits(), "x4 {l:?} row {t}");
                    }
                }
            }
        }
    }
}
