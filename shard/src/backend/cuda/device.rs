//! Finding a CUDA device: parse `--device`, probe for the driver without panicking, and open a
//! context with one stream (the engine drives one stream; no cross-stream events needed).

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream};

use crate::backend::BackendError;

/// Which GPU a `--device` value names: `cuda` (the first), `cuda:N`, or `auto` (resolved by the
/// caller to a GPU when one exists).
pub fn parse_cuda_device(device: &str) -> Option<usize> {
    match device {
        "cuda" => Some(0),
        _ => device.strip_prefix("cuda:")?.parse().ok(),
    }
}

/// Number of CUDA devices, or why none can be used. Never panics: cudarc loads libcuda lazily
/// and panics inside its loader when the library is missing, so presence is checked first.
pub fn cuda_device_count() -> Result<usize, String> {
    // SAFETY: only probes whether the driver library can be opened.
    let present = std::panic::catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() })
        .unwrap_or(false);
    if !present {
        return Err("no CUDA driver library (libcuda.so) found".into());
    }
    cudarc::driver::result::init().map_err(|e| format!("CUDA driver init failed: {e}"))?;
    let n = CudaContext::device_count().map_err(|e| format!("cannot count CUDA devices: {e}"))?;
    usize::try_from(n).map_err(|_| format!("driver reported {n} devices"))
}

/// An opened GPU: its context and the stream every op of the shard runs on.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub ordinal: usize,
    pub name: String,
    /// `sm_90` for an H100.
    pub arch: String,
}

impl Gpu {
    pub fn open(ordinal: usize) -> Result<Self, BackendError> {
        let count = cuda_device_count().map_err(BackendError::Cuda)?;
        if ordinal >= count {
            return Err(BackendError::Cuda(format!(
                "cuda:{ordinal} requested but {count} CUDA device(s) found"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda_err("open context"))?;
        // SAFETY: every op of the shard runs on the one stream below, so cudarc's cross-stream
        // events are not needed; they would also invalidate CUDA graph capture (a capture may
        // not wait on events recorded outside it).
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(cuda_err("compute capability"))?;
        let name = ctx.name().map_err(cuda_err("device name"))?;
        let stream = ctx.new_stream().map_err(cuda_err("create stream"))?;
        Ok(Self {
            ctx,
            stream,
            ordinal,
            name,
            arch: format!("sm_{major}{minor}"),
        })
    }

    /// `(free, total)` device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize), BackendError> {
        self.ctx.mem_get_info().map_err(cuda_err("memory info"))
    }
}

/// Maps a driver/cuBLAS/kernel error into a [`BackendError`] naming what was being done.
pub fn cuda_err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> BackendError {
    move |e| BackendError::Cuda(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!(parse_cuda_device("cuda"), Some(0));
        assert_eq!(parse_cuda_device("cuda:3"), Some(3));
        assert_eq!(parse_cuda_device("cuda:x"), None);
        assert_eq!(parse_cuda_device("cpu"), None);
    }

    #[test]
    fn probing_never_panics() {
        // On a machine without a driver this is an error, with one a count; never a panic.
        match cuda_device_count() {
            Ok(n) => eprintln!("{n} CUDA device(s)"),
            Err(e) => eprintln!("skipped: no CUDA driver ({e})"),
        }
    }
}
