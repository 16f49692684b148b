//! Wrapper of device-side sampling (cuda/sample.cu).

use cudarc::driver::{
    CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};

use crate::error::{ensure, expect_len, to_u32};
use crate::{KernelError, Kernels};

impl Kernels {
    /// One token per row of `logits` f32 `[B, V]` into `out` u32 `[B]`. Row b: temperature
    /// < 1e-5 → argmax (ties → lowest index); else softmax(logits / temperature) restricted to
    /// the `top_k` largest (k <= 0: off; ties at the k-th value are kept), then to the smallest
    /// set of most likely tokens whose mass reaches `top_p` (p >= 1: off; by value too: a token
    /// is kept when the tokens strictly more likely weigh less than p, so ties at the boundary
    /// are all kept and p <= 0 keeps every token tied for the maximum), one draw by Gumbel-max
    /// with noise from a hash of (seeds[b], counters[b], token): equal (seed, counter) give equal
    /// tokens. NaN logits are never drawn.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        stream: &CudaStream,
        out: &mut CudaViewMut<'_, u32>,
        logits: &CudaView<'_, f32>,
        temperature: &CudaView<'_, f32>,
        top_k: &CudaView<'_, i32>,
        top_p: &CudaView<'_, f32>,
        seeds: &CudaView<'_, u64>,
        counters: &CudaView<'_, u64>,
    ) -> Result<(), KernelError> {
        const K: &str = "sample";
        let b = out.len();
        for (what, len) in [
            ("temperature", temperature.len()),
            ("top_k", top_k.len()),
            ("top_p", top_p.len()),
            ("seeds", seeds.len()),
            ("counters", counters.len()),
        ] {
            expect_len(K, what, len, b)?;
        }
        if b == 0 {
            return Ok(());
        }
        ensure(K, logits.len() % b == 0 && !logits.is_empty(), || {
            format!("logits has {} elements, not [{b}, V]", logits.len())
        })?;
        let vocab = to_u32(K, "vocab", logits.len() / b)?;
        let (o, _g0) = out.device_ptr_mut(stream);
        let (l, _g1) = logits.device_ptr(stream);
        let (t, _g2) = temperature.device_ptr(stream);
        let (k, _g3) = top_k.device_ptr(stream);
        let (p, _g4) = top_p.device_ptr(stream);
        let (s, _g5) = seeds.device_ptr(stream);
        let (c, _g6) = counters.device_ptr(stream);
        let mut lb = self.dependent_launch(stream, "sample_kernel")?;
        lb.arg(&o)
            .arg(&l)
            .arg(&t)
            .arg(&k)
            .arg(&p)
            .arg(&s)
            .arg(&c)
            .arg(&vocab);
        let cfg = LaunchConfig {
            grid_dim: (to_u32(K, "batch", b)?, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: every per-row array has B elements and logits B * V.
        unsafe { lb.launch(cfg) }?;
        Ok(())
    }

    /// Overlapped steps: `tokens[feeds[2i]] = draws[feeds[2i + 1]]` for `i < n`, so a step
    /// launched before the host read the last step's draws runs on them. Pairs whose row or
    /// draw is out of `tokens` or `draws` are skipped.
    pub fn feed_tokens(
        &self,
        stream: &CudaStream,
        tokens: &mut CudaViewMut<'_, u32>,
        draws: &CudaView<'_, u32>,
        feeds: &CudaView<'_, u32>,
        n: usize,
    ) -> Result<(), KernelError> {
        const K: &str = "feed_tokens";
        ensure(K, feeds.len() >= 2 * n, || {
            format!("{} feed words for {n} pairs", feeds.len())
        })?;
        if n == 0 {
            return Ok(());
        }
        let (num_tokens, num_draws) = (
            to_u32(K, "tokens", tokens.len())?,
            to_u32(K, "draws", draws.len())?,
        );
        let count = to_u32(K, "pairs", n)?;
        let (t, _g0) = tokens.device_ptr_mut(stream);
        let (d, _g1) = draws.device_ptr(stream);
        let (f, _g2) = feeds.device_ptr(stream);
        let mut lb = stream.launch_builder(self.func("feed_tokens_kernel")?);
        lb.arg(&t)
            .arg(&num_tokens)
            .arg(&d)
            .arg(&num_draws)
            .arg(&f)
            .arg(&count);
        let cfg = LaunchConfig {
            grid_dim: (count.div_ceil(256), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the kernel reads 2n feed words (checked) and bounds every index it writes.
        unsafe { lb.launch(cfg) }?;
        Ok(())
    }
}
