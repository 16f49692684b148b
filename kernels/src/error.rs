//! Errors of kernel compilation and launch.

use cudarc::driver::DriverError;

use crate::kv::KvDtype;

/// Everything a kernel call or the loader can fail with.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// No usable CUDA driver or NVRTC library on this machine.
    #[error("no CUDA: {0}")]
    NoCuda(String),
    /// NVRTC rejected the sources (the log says why).
    #[error("NVRTC failed to compile the kernels for {arch}: {log}")]
    Compile { arch: String, log: String },
    /// A driver call (module load, launch) failed.
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    /// The PTX cache directory could not be read or written.
    #[error("kernel cache {path}: {source}")]
    Cache {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The device is older than the kernels allow: they use bf16 `mma.sync` and `cp.async`,
    /// instructions of compute capability 8.0 and newer.
    #[error(
        "pagedserve's CUDA kernels need compute capability 8.0 or newer (bf16 tensor cores, \
         cp.async); device {device} is {arch}"
    )]
    ArchTooOld { device: usize, arch: String },
    /// `Kernels::load_for_arch` was asked for an architecture whose PTX this device cannot run
    /// (newer than the device, older than sm_80, or not an `sm_XY` name).
    #[error("kernels for {arch} cannot run on device {device} ({device_arch}): {reason}")]
    ArchUnusable {
        arch: String,
        device: usize,
        device_arch: String,
        reason: String,
    },
    /// A kernel needs more shared memory per block than the device allows (opt-in limit).
    #[error(
        "{kernel} needs {need} B of shared memory per block; device {device} ({arch}) allows at \
         most {limit} B"
    )]
    SharedMemory {
        kernel: String,
        need: usize,
        device: usize,
        arch: String,
        limit: usize,
    },
    /// Decode attention over a KV cache of `dtype` was asked of kernels loaded without that
    /// cache type (`Kernels::load_for_kv` with `loaded`, which does not list it).
    #[error(
        "{kernel}: the kernels were loaded without decode attention over {} KV caches (loaded \
         for: {}); use Kernels::load, or list {} in Kernels::load_for_kv",
        .dtype.name(),
        kv_dtype_names(.loaded),
        .dtype.name()
    )]
    KvDtypeNotLoaded {
        kernel: String,
        dtype: KvDtype,
        loaded: Vec<KvDtype>,
    },
    /// Arguments whose sizes do not fit together.
    #[error("{kernel}: {msg}")]
    Shape { kernel: &'static str, msg: String },
}

impl KernelError {
    pub(crate) fn shape(kernel: &'static str, msg: impl Into<String>) -> Self {
        KernelError::Shape {
            kernel,
            msg: msg.into(),
        }
    }
}

/// `bf16, fp8_e4m3`; `none` for no type.
fn kv_dtype_names(dtypes: &[KvDtype]) -> String {
    if dtypes.is_empty() {
        return "none".into();
    }
    let names: Vec<&str> = dtypes.iter().map(|d| d.name()).collect();
    names.join(", ")
}

/// `Err(Shape)` unless `got == want`; `what` names the argument.
pub(crate) fn expect_len(
    kernel: &'static str,
    what: &str,
    got: usize,
    want: usize,
) -> Result<(), KernelError> {
    if got == want {
        Ok(())
    } else {
        Err(KernelError::shape(
            kernel,
            format!("{what} has {got} elements, expected {want}"),
        ))
    }
}

/// `Err(Shape)` unless `cond`; the message is built only on failure.
pub(crate) fn ensure(
    kernel: &'static str,
    cond: bool,
    msg: impl FnOnce() -> String,
) -> Result<(), KernelError> {
    if cond {
        Ok(())
    } else {
        Err(KernelError::shape(kernel, msg()))
    }
}

/// A size as the u32 the kernels take.
pub(crate) fn to_u32(kernel: &'static str, what: &str, v: usize) -> Result<u32, KernelError> {
    u32::try_from(v).map_err(|_| KernelError::shape(kernel, format!("{what} = {v} exceeds u32")))
}
