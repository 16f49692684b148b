//! What the kernel microbenchmarks share: the device and its kernels, CUDA-event timing of
//! back-to-back calls, random inputs (never zeros) and the copy bandwidth they are measured
//! against.

use std::error::Error;
use std::path::Path;
use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use half::bf16;
use pagedserve_kernels::{Kernels, open_device};

pub type Res<T> = Result<T, Box<dyn Error>>;

pub struct Bench {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub k: Kernels,
    /// Calls timed back to back between two events (as a replayed graph would run them).
    pub reps: usize,
}

impl Bench {
    /// GPU 0, its kernels (PTX from `cache` when it holds them) and its default stream.
    pub fn new(cache: Option<&Path>, reps: usize) -> Res<Self> {
        let ctx = open_device(0)?;
        let k = Kernels::load(&ctx, cache)?;
        Ok(Bench {
            stream: ctx.default_stream(),
            ctx,
            k,
            reps,
        })
    }

    /// Milliseconds per call of `f`: the median over 7 samples of `reps` calls each, after 3
    /// warm-up calls. `f` gets a running call index (to rotate inputs).
    pub fn time(&self, mut f: impl FnMut(usize) -> Res<()>) -> Res<f64> {
        let mut call = 0;
        for _ in 0..3 {
            f(call)?;
            call += 1;
        }
        let mut ms = Vec::new();
        for _ in 0..7 {
            let a = self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
            let b = self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
            a.record(&self.stream)?;
            for _ in 0..self.reps {
                f(call)?;
                call += 1;
            }
            b.record(&self.stream)?;
            b.synchronize()?;
            ms.push(a.elapsed_ms(&b)? as f64 / self.reps as f64);
        }
        ms.sort_by(f64::total_cmp);
        Ok(ms[ms.len() / 2])
    }

    /// `n` random bf16 values in [-scale, scale].
    pub fn random_bf16(&self, n: usize, seed: u64, scale: f32) -> Res<CudaSlice<bf16>> {
        // SAFETY: filled by the kernel right away.
        let mut s = unsafe { self.stream.alloc::<bf16>(n) }?;
        self.k
            .fill_random_bf16(&self.stream, &mut s.as_view_mut(), seed, scale)?;
        Ok(s)
    }

    /// GB/s of a 1 GiB device-to-device copy, counting bytes read + written.
    pub fn copy_bandwidth(&self) -> Res<f64> {
        let n = 1usize << 29; // bf16 elements: 1 GiB
        let src = self.random_bf16(n, 1, 1.0)?;
        let mut dst = self.random_bf16(n, 2, 1.0)?;
        let ms = self.time(|_| Ok(self.stream.memcpy_dtod(&src, &mut dst)?))?;
        Ok(2.0 * (n * 2) as f64 / (ms * 1e-3) / 1e9)
    }
}
