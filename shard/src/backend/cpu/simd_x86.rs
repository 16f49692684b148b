//! x86 SIMD dot products of GGUF weight blocks with f32 activations, chosen at run time
//! (the build targets baseline x86-64). Callers check lengths; see each `# Safety`.
//!
//! Batch invariance: within one SIMD level, the single-row, 4-activation-row and
//! 4-weight-row variants add in exactly the same order (one accumulator, same per-block
//! expression, same final reduction), so a sequence's logits are bit-identical whether it
//! runs alone or in a batch of any size.

pub mod avx2 {
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2+FMA; `qs.len() == 16 * d.len()`, `x.len() == 32 * d.len()`, `m`/`xsum` as `d`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q4_1(qs: &[u8], d: &[f32], m: &[f32], x: &[f32], xsum: &[f32]) -> f32 {
        let mask = _mm_set1_epi8(0x0F);
        let (mut acc, mut acc_m) = (_mm256_setzero_ps(), 0f32);
        for b in 0..d.len() {
            // SAFETY: block b's 16 bytes and 32 floats are in bounds (caller's lengths).
            let (q, xp) = unsafe {
                (
                    _mm_loadu_si128(qs.as_ptr().add(b * 16).cast()),
                    x.as_ptr().add(b * 32),
                )
            };
            let lo = _mm_and_si128(q, mask);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask);
            let (f0, f1) = (widen(lo), widen(_mm_srli_si128::<8>(lo)));
            let (f2, f3) = (widen(hi), widen(_mm_srli_si128::<8>(hi)));
            // SAFETY: as above.
            let s = unsafe {
                let s = _mm256_mul_ps(f0, _mm256_loadu_ps(xp));
                let s = _mm256_fmadd_ps(f1, _mm256_loadu_ps(xp.add(8)), s);
                let t = _mm256_mul_ps(f2, _mm256_loadu_ps(xp.add(16)));
                let t = _mm256_fmadd_ps(f3, _mm256_loadu_ps(xp.add(24)), t);
                _mm256_add_ps(s, t)
            };
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d[b]), s, acc);
            acc_m += m[b] * xsum[b];
        }
        hsum(acc) + acc_m
    }

    /// Four activation rows (`x` is `[4, 32 * d.len()]`, `xsum` `[4, d.len()]`) against one
    /// weight row.
    ///
    /// # Safety
    /// AVX2+FMA; `qs.len() == 16 * d.len()`, `m.len() == d.len()`, lengths of `x`/`xsum` as said.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q4_1_x4(
        qs: &[u8],
        d: &[f32],
        m: &[f32],
        x: &[f32],
        xsum: &[f32],
    ) -> [f32; 4] {
        let (nb, cols) = (d.len(), d.len() * 32);
        let mask = _mm_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut acc_m = [0f32; 4];
        for b in 0..nb {
            // SAFETY: block b's 16 bytes are in bounds (caller's lengths).
            let q = unsafe { _mm_loadu_si128(qs.as_ptr().add(b * 16).cast()) };
            let lo = _mm_and_si128(q, mask);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask);
            let f = [
                widen(lo),
                widen(_mm_srli_si128::<8>(lo)),
                widen(hi),
                widen(_mm_srli_si128::<8>(hi)),
            ];
            let db = _mm256_set1_ps(d[b]);
            for r in 0..4 {
                // SAFETY: row r's 32 floats of block b are in bounds (caller's lengths).
                let s = unsafe {
                    let xp = x.as_ptr().add(r * cols + b * 32);
                    let s = _mm256_mul_ps(f[0], _mm256_loadu_ps(xp));
                    let s = _mm256_fmadd_ps(f[1], _mm256_loadu_ps(xp.add(8)), s);
                    let t = _mm256_mul_ps(f[2], _mm256_loadu_ps(xp.add(16)));
                    _mm256_add_ps(s, _mm256_fmadd_ps(f[3], _mm256_loadu_ps(xp.add(24)), t))
                };
                acc[r] = _mm256_fmadd_ps(db, s, acc[r]);
                acc_m[r] += m[b] * xsum[r * nb + b];
            }
        }
        [0, 1, 2, 3].map(|r| hsum(acc[r]) + acc_m[r])
    }

    /// # Safety
    /// AVX2+FMA; `qs.len() == 32 * d.len() == x.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q8_0(qs: &[u8], d: &[f32], x: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (b, &db) in d.iter().enumerate() {
            let mut s = _mm256_setzero_ps();
            for k in 0..4 {
                // SAFETY: 8 bytes and 8 floats of block b, in bounds by the caller's lengths.
                unsafe {
                    let q = _mm_loadl_epi64(qs.as_ptr().add(b * 32 + k * 8).cast());
                    let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                    s = _mm256_fmadd_ps(f, _mm256_loadu_ps(x.as_ptr().add(b * 32 + k * 8)), s);
                }
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(db), s, acc);
        }
        hsum(acc)
    }

    /// # Safety
    /// AVX2+FMA; `a.len() == b.len()`, a multiple of 8.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for i in (0..a.len()).step_by(8) {
            // SAFETY: i + 8 <= len by the caller's lengths.
            unsafe {
                acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                    acc,
                );
            }
        }
        hsum(acc)
    }

    /// The low 8 unsigned bytes of `v` as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn widen(v: __m128i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }
}

pub mod avx512 {
    use std::arch::x86_64::*;

    /// 32 weights of a Q4_1 block as two 16-lane f32 vectors (low nibbles, high nibbles).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn q4_1_block(q: __m128i) -> (__m512, __m512) {
        let mask = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(q, mask);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask);
        (
            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)),
            _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)),
        )
    }

    /// # Safety
    /// AVX-512F; `qs.len() == 16 * d.len()`, `x.len() == 32 * d.len()`, `m`/`xsum` as `d`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_q4_1(qs: &[u8], d: &[f32], m: &[f32], x: &[f32], xsum: &[f32]) -> f32 {
        let mut acc = _mm512_setzero_ps();
        for (b, &scale) in d.iter().enumerate() {
            // SAFETY: block b's 16 bytes and 32 floats are in bounds (caller's lengths).
            let s = unsafe {
                let (lo, hi) = q4_1_block(_mm_loadu_si128(qs.as_ptr().add(b * 16).cast()));
                let xp = x.as_ptr().add(b * 32);
                _mm512_fmadd_ps(
                    hi,
                    _mm512_loadu_ps(xp.add(16)),
                    _mm512_mul_ps(lo, _mm512_loadu_ps(xp)),
                )
            };
            acc = _mm512_fmadd_ps(_mm512_set1_ps(scale), s, acc);
        }
        let mins: f32 = m.iter().zip(xsum).map(|(a, b)| a * b).sum();
        _mm512_reduce_add_ps(acc) + mins
    }

    /// Four activation rows (`x` `[4, 32 * d.len()]`, `xsum` `[4, d.len()]`), one weight row.
    ///
    /// # Safety
    /// AVX-512F; `qs.len() == 16 * d.len()`, `m.len() == d.len()`, `x`/`xsum` as said.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_q4_1_x4(
        qs: &[u8],
        d: &[f32],
        m: &[f32],
        x: &[f32],
        xsum: &[f32],
    ) -> [f32; 4] {
        let (nb, cols) = (d.len(), d.len() * 32);
        let mut acc = [_mm512_setzero_ps(); 4];
        for (b, &scale) in d.iter().enumerate() {
            // SAFETY: block b's 16 bytes are in bounds (caller's lengths).
            let (lo, hi) = q4_1_block(unsafe { _mm_loadu_si128(qs.as_ptr().add(b * 16).cast()) });
            let db = _mm512_set1_ps(scale);
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: row r's 32 floats of block b are in bounds (caller's lengths).
                let s = unsafe {
                    let xp = x.as_ptr().add(r * cols + b * 32);
                    _mm512_fmadd_ps(
                        hi,
                        _mm512_loadu_ps(xp.add(16)),
                        _mm512_mul_ps(lo, _mm512_loadu_ps(xp)),
                    )
                };
                *a = _mm512_fmadd_ps(db, s, *a);
            }
        }
        [0, 1, 2, 3].map(|r| {
            let mins: f32 = (0..nb).map(|b| m[b] * xsum[r * nb + b]).sum();
            _mm512_reduce_add_ps(acc[r]) + mins
        })
    }

    /// Four consecutive Q4_1 weight rows against one activation row (decode): the activation
    /// block is loaded once for four rows and the four FMA chains run side by side.
    ///
    /// # Safety
    /// AVX-512F; with `nb = x.len() / 32`: `qs.len() == 64 * nb`, `d`/`m` `4 * nb`,
    /// `xsum.len() == nb`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_q4_1_rows4(
        qs: &[u8],
        d: &[f32],
        m: &[f32],
        x: &[f32],
        xsum: &[f32],
    ) -> [f32; 4] {
        let nb = xsum.len();
        let mut acc = [_mm512_setzero_ps(); 4];
        for b in 0..nb {
            // SAFETY: block b's 32 floats are in bounds (caller's lengths).
            let (x0, x1) = unsafe {
                let xp = x.as_ptr().add(b * 32);
                (_mm512_loadu_ps(xp), _mm512_loadu_ps(xp.add(16)))
            };
            for (r, a) in acc.iter_mut().enumerate() {
                let blk = r * nb + b;
                // SAFETY: row r's block b is in bounds (caller's lengths).
                let (lo, hi) =
                    q4_1_block(unsafe { _mm_loadu_si128(qs.as_ptr().add(blk * 16).cast()) });
                let s = _mm512_fmadd_ps(hi, x1, _mm512_mul_ps(lo, x0));
                *a = _mm512_fmadd_ps(_mm512_set1_ps(d[blk]), s, *a);
            }
        }
        [0, 1, 2, 3].map(|r| {
            let mins: f32 = (0..nb).map(|b| m[r * nb + b] * xsum[b]).sum();
            _mm512_reduce_add_ps(acc[r]) + mins
        })
    }

    /// One Q8_0 weight row against four activation rows (`x` `[4, 32 * d.len()]`): several
    /// sequences' logits from the tied output layer, each block widened once.
    ///
    /// # Safety
    /// AVX-512F; `qs.len() == 32 * d.len()`, `x.len() == 4 * 32 * d.len()`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_q8_0_x4(qs: &[u8], d: &[f32], x: &[f32]) -> [f32; 4] {
        let cols = d.len() * 32;
        let mut acc = [_mm512_setzero_ps(); 4];
        for (b, &db) in d.iter().enumerate() {
            // SAFETY: block b's 32 bytes and each row's 32 floats are in bounds (caller's lengths).
            unsafe {
                let p = qs.as_ptr().add(b * 32);
                let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast())));
                let hi =
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(16).cast())));
                for (r, a) in acc.iter_mut().enumerate() {
                    let xp = x.as_ptr().add(r * cols + b * 32);
                    let s = _mm512_fmadd_ps(
                        hi,
                        _mm512_loadu_ps(xp.add(16)),
                        _mm512_mul_ps(lo, _mm512_loadu_ps(xp)),
                    );
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(db), s, *a);
                }
            }
        }
        [0, 1, 2, 3].map(|r| _mm512_reduce_add_ps(acc[r]))
    }

    /// Four consecutive Q8_0 weight rows against one activation row.
    ///
    /// # Safety
    /// AVX-512F; with `nb = x.len() / 32`: `qs.len() == 128 * nb`, `d.len() == 4 * nb`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_q8_0_rows4(qs: &[u8], d: &[f32], x: &[f32]) -> [f32; 4] {
        let nb = x.len() / 32;
        let mut acc = [_mm512_setzero_ps(); 4];
        for b in 0..nb {
            // SAFETY: block b's 32 floats and each row's block b are in bounds (caller's lengths).
            unsafe {
                let xp = x.as_ptr().add(b * 32);
                let (x0, x1) = (_mm512_loadu_ps(xp), _mm512_loadu_ps(xp.add(16)));
                for (r, a) in acc.iter_mut().enumerate() {
                    let p = qs.as_ptr().add((r * nb + b) * 32);
                    let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast())));
                    let hi =
                        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(16).cast())));
                    let s = _mm512_fmadd_ps(hi, x1, _mm512_mul_ps(lo, x0));
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(d[r * nb + b]), s, *a);
                }
            }
        }
        [0, 1, 2, 3].map(|r| _mm512_reduce_add_ps(acc[r]))
    }

    /// # Safety
    /// AVX-512F; `qs.len() == 32 * d.len() == x.len()`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_q8_0(qs: &[u8], d: &[f32], x: &[f32]) -> f32 {
        let mut acc = _mm512_setzero_ps();
        for (b, &db) in d.iter().enumerate() {
            // SAFETY: block b's 32 bytes and 32 floats are in bounds (caller's lengths).
            let s = unsafe {
                let p = qs.as_ptr().add(b * 32);
                let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast())));
                let hi =
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(16).cast())));
                let xp = x.as_ptr().add(b * 32);
                _mm512_fmadd_ps(
                    hi,
                    _mm512_loadu_ps(xp.add(16)),
                    _mm512_mul_ps(lo, _mm512_loadu_ps(xp)),
                )
            };
            acc = _mm512_fmadd_ps(_mm512_set1_ps(db), s, acc);
        }
        _mm512_reduce_add_ps(acc)
    }
}
