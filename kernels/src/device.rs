//! Finding a CUDA device without panicking where none exists.
//!
//! cudarc (`fallback-dynamic-loading`) loads libcuda and libnvrtc on first use and panics when
//! they are missing, so we probe for the libraries first and turn their absence into
//! `KernelError::NoCuda`.

use std::sync::Arc;

use cudarc::driver::CudaContext;

use crate::KernelError;

/// `Ok` when the CUDA driver library can be loaded; else why not.
pub fn driver_present() -> Result<(), KernelError> {
    // SAFETY: only tries to dlopen the candidate library names; nothing is called.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(KernelError::NoCuda(
            "libcuda (the NVIDIA driver library) was not found".into(),
        ))
    }
}

/// `Ok` when NVRTC can be loaded (needed only when the PTX is not cached yet).
pub fn nvrtc_present() -> Result<(), KernelError> {
    // SAFETY: as above, a dlopen probe.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(KernelError::NoCuda(
            "libnvrtc was not found (add the CUDA lib64 folder to LD_LIBRARY_PATH)".into(),
        ))
    }
}

/// Opens device `ordinal`, or says clearly why there is none.
pub fn open_device(ordinal: usize) -> Result<Arc<CudaContext>, KernelError> {
    driver_present()?;
    let count = CudaContext::device_count().map_err(|e| KernelError::NoCuda(e.to_string()))?;
    if ordinal >= count.max(0) as usize {
        return Err(KernelError::NoCuda(format!(
            "device {ordinal} requested, {count} present"
        )));
    }
    CudaContext::new(ordinal).map_err(|e| KernelError::NoCuda(e.to_string()))
}
