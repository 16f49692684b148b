//! Kernel launches through `cuLaunchKernelEx`, so that a kernel may start while the stream's
//! previous kernel is still finishing (programmatic dependent launch, PDL, sm_90 and later).
//!
//! A decode step at batch 1 is ~320 kernels; between two of them the GPU drains one grid and
//! ramps up the next, about a microsecond each time, and the small kernels between the weight
//! GEMVs (norms, RoPE, attention) run on a few SMs while HBM idles. With PDL the next kernel's
//! CTAs are scheduled as soon as the running one lets them (`pdl_launch_dependents()` in
//! common.cuh); they may do work that does not depend on it (a GEMV issues its first weight
//! loads), then block in `pdl_wait()` until it has finished and its writes are visible.
//!
//! The rule that keeps this correct: a kernel launched with PDL calls `pdl_wait()` in every CTA
//! before it reads anything an earlier kernel writes or writes anything an earlier kernel reads,
//! and before it exits (so its completion implies its predecessors'). Only kernels whose source
//! follows the rule are launched through [`Kernels::dependent_launch`]; every other launch keeps
//! the stream's ordinary serialization. Inside a captured CUDA graph the dependency becomes a
//! programmatic edge, so graph replays keep the overlap.
//!
//! `PAGEDSERVE_PDL=0` turns it off (for before/after measurements in one run).

use std::ffi::c_void;

use cudarc::driver::sys::{
    CUlaunchAttribute, CUlaunchAttributeID, CUlaunchAttributeValue, CUlaunchConfig,
    cuLaunchKernelEx,
};
use cudarc::driver::{CudaFunction, CudaStream, DeviceRepr, DriverError, LaunchConfig};

use crate::{KernelError, Kernels};

/// Whether PDL launches are on for kernels compiled for `arch` (e.g. "sm_90"): sm_90 and later,
/// unless `PAGEDSERVE_PDL=0`.
pub(crate) fn pdl_enabled(arch: &str) -> bool {
    let major = arch
        .trim_start_matches("sm_")
        .trim_start_matches("compute_")
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .parse::<u32>()
        .map_or(0, |v| v / 10);
    let off = std::env::var("PAGEDSERVE_PDL").is_ok_and(|v| v == "0");
    major >= 9 && !off
}

/// One kernel launch being built: the function, the stream and pointers to the arguments,
/// which must outlive the launch call (`'a`).
pub(crate) struct Launch<'a> {
    func: &'a CudaFunction,
    stream: &'a CudaStream,
    args: Vec<*mut c_void>,
    pdl: bool,
}

impl<'a> Launch<'a> {
    /// Appends one kernel argument (a device pointer, a scalar or a `#[repr(C)]` struct).
    pub(crate) fn arg<T: DeviceRepr>(&mut self, value: &'a T) -> &mut Self {
        self.args.push(value as *const T as *mut c_void);
        self
    }

    /// Launches the kernel.
    ///
    /// # Safety
    /// The arguments must match the kernel's parameters in number, order and type, and the
    /// kernel must stay inside the buffers they point to (the wrappers check the sizes).
    pub(crate) unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<(), DriverError> {
        self.stream.context().bind_to_thread()?;
        let mut attr = CUlaunchAttribute {
            id: CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value: CUlaunchAttributeValue { pad: [0; 64] },
        };
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: u32::from(self.pdl),
        };
        // SAFETY: `config` and `attr` live across the call; the argument pointers point to
        // values borrowed for 'a; the caller vouches for their types (see above).
        unsafe {
            cuLaunchKernelEx(
                &config,
                self.func.cu_function(),
                self.args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
            .result()
        }
    }
}

impl Kernels {
    /// A launch of kernel `name` that may overlap the stream's previous kernel when PDL is on.
    /// Only for kernels that follow the rule in this module's comment.
    pub(crate) fn dependent_launch<'a>(
        &'a self,
        stream: &'a CudaStream,
        name: &str,
    ) -> Result<Launch<'a>, KernelError> {
        Ok(self.dependent_launch_of(stream, self.func(name)?))
    }

    /// [`Kernels::dependent_launch`] of a function already looked up.
    pub(crate) fn dependent_launch_of<'a>(
        &self,
        stream: &'a CudaStream,
        func: &'a CudaFunction,
    ) -> Launch<'a> {
        Launch {
            func,
            stream,
            args: Vec::with_capacity(16),
            pdl: self.pdl,
        }
    }

    /// Whether kernels launched through [`Kernels::dependent_launch`] use PDL on this device.
    pub fn pdl(&self) -> bool {
        self.pdl
    }
}

#[cfg(test)]
mod tests {
    use super::pdl_enabled;

    #[test]
    fn pdl_needs_sm_90() {
        if std::env::var_os("PAGEDSERVE_PDL").is_some() {
            return; // the environment decides; nothing to check
        }
        assert!(pdl_enabled("sm_90"));
        assert!(pdl_enabled("sm_90a"));
        assert!(pdl_enabled("sm_100"));
        assert!(pdl_enabled("compute_120"));
        assert!(!pdl_enabled("sm_89"));
        assert!(!pdl_enabled("sm_80"));
        assert!(!pdl_enabled("nonsense"));
    }
}
