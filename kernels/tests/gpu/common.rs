//! Shared set-up and helpers of the GPU tests.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};
use half::bf16;
use pagedserve_kernels::{Kernels, open_device};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub struct Gpu {
    pub stream: Arc<CudaStream>,
    pub k: Kernels,
}

/// The device and the loaded kernels, or `None` (after printing why) where there is no CUDA.
/// A driver that exists but fails to load the kernels is a test failure, not a skip.
pub fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    let g = GPU.get_or_init(|| {
        let ctx = match open_device(0) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("skipped: no CUDA driver ({e})");
                return None;
            }
        };
        let k = Kernels::load(&ctx, Some(&kernel_cache_dir())).expect("kernels compile and load");
        let stream = ctx.default_stream();
        Some(Gpu { stream, k })
    });
    if g.is_none() {
        eprintln!("skipped: no CUDA driver");
    }
    g.as_ref()
}

/// Where the tests keep compiled PTX between runs (per architecture and source hash).
pub fn kernel_cache_dir() -> PathBuf {
    std::env::temp_dir().join("pagedserve-kernels-test-cache")
}

/// A fresh RNG per test; the seed is printed so a failure can be replayed.
pub fn rng(name: &str) -> StdRng {
    let seed = std::env::var("KERNEL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    eprintln!("{name}: seed {seed}");
    StdRng::seed_from_u64(seed)
}

pub fn rand_vec(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

pub fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

pub fn from_bf16(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// NaN bit patterns that no kernel produces from finite inputs, to find unwritten outputs.
pub const POISON_BF16: u16 = 0x7fa5;
pub const POISON_F32: u32 = 0x7fc0_dead;
pub const POISON_U32: u32 = 0xdead_beef;

pub fn poison_bf16(n: usize) -> Vec<bf16> {
    vec![bf16::from_bits(POISON_BF16); n]
}

pub fn poison_f32(n: usize) -> Vec<f32> {
    vec![f32::from_bits(POISON_F32); n]
}

pub fn is_poison_bf16(x: bf16) -> bool {
    x.to_bits() == POISON_BF16
}

pub fn up<T: DeviceRepr>(g: &Gpu, v: &[T]) -> Result<CudaSlice<T>, Box<dyn std::error::Error>> {
    Ok(g.stream.clone_htod(v)?)
}

pub fn down<T: DeviceRepr>(
    g: &Gpu,
    s: &CudaSlice<T>,
) -> Result<Vec<T>, Box<dyn std::error::Error>> {
    let v = g.stream.clone_dtoh(s)?;
    g.stream.synchronize()?;
    Ok(v)
}

/// ‖out − ref‖ / ‖ref‖ in f64.
pub fn rel_l2(out: &[f64], reference: &[f64]) -> f64 {
    let num: f64 = out
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    let den: f64 = reference.iter().map(|b| b * b).sum();
    (num / den.max(1e-300)).sqrt()
}

/// Asserts |out − ref| <= rel·|ref| + abs for every element, naming the first that fails.
pub fn assert_close(what: &str, out: &[f32], reference: &[f64], rel: f64, abs: f64) {
    assert_eq!(out.len(), reference.len(), "{what}: lengths");
    for (i, (&o, &r)) in out.iter().zip(reference).enumerate() {
        let err = (o as f64 - r).abs();
        assert!(
            err <= rel * r.abs() + abs,
            "{what}[{i}]: got {o}, want {r} (err {err:.3e})"
        );
    }
}

/// The largest relative L2 error over consecutive vectors of `d` elements (one head's output),
/// so a single wrong row cannot hide in the average.
pub fn max_vec_err(got: &[f64], want: &[f64], d: usize) -> f64 {
    got.chunks(d)
        .zip(want.chunks(d))
        .map(|(a, b)| rel_l2(a, b))
        .fold(0.0, f64::max)
}

/// Rows of `out` (`width` values each) marked in `written` hold finite values; the others
/// still hold the poison they were filled with.
pub fn check_rows_written(out: &[bf16], written: &[bool], width: usize) {
    for (r, &w) in written.iter().enumerate() {
        let vals = &out[r * width..(r + 1) * width];
        if w {
            assert!(
                vals.iter().all(|x| x.is_finite()),
                "row {r}: unwritten or NaN output"
            );
        } else {
            assert!(
                vals.iter().all(|&x| is_poison_bf16(x)),
                "row {r} must stay untouched"
            );
        }
    }
}

/// Attention output against its reference: relative L2 over everything within `tol`, and
/// every head (`d` values) within `3 * tol`.
pub fn check_attention(label: &str, got: &[f64], want: &[f64], d: usize, tol: f64) {
    let err = rel_l2(got, want);
    let worst = max_vec_err(got, want, d);
    eprintln!("{label}: rel L2 {err:.2e}, worst head {worst:.2e}");
    assert!(err <= tol, "{label}: rel L2 {err} > {tol}");
    assert!(
        worst <= 3.0 * tol,
        "{label}: one head's output is off: rel L2 {worst}"
    );
}

/// RoPE tables `[max_pos, rope_dim / 2]` for theta `base`: cos and sin of p * base^(-2i / rope_dim).
pub fn rope_tables(max_pos: usize, rope_dim: usize, base: f64) -> (Vec<f32>, Vec<f32>) {
    let half = rope_dim / 2;
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in 0..max_pos {
        for i in 0..half {
            let a = p as f64 * base.powf(-2.0 * i as f64 / rope_dim as f64);
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    (cos, sin)
}
