//! Compiles every kernel with NVRTC (no GPU needed) and writes the PTX to the given path, so the
//! sources can be checked, and fed to `ptxas -v` for a register report, on a machine without a
//! GPU. Usage: `compile_ptx [sm_90] [out.ptx]` (needs libnvrtc on LD_LIBRARY_PATH and CUDA
//! headers under $CUDA_HOME/include).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let arch = args.next().unwrap_or_else(|| "sm_90".into());
    let out = args.next().unwrap_or_else(|| "kernels.ptx".into());
    let t = std::time::Instant::now();
    let ptx = pagedserve_kernels::compile_ptx(&arch)?;
    std::fs::write(&out, ptx)?;
    eprintln!(
        "compiled for {arch} in {:.2} s -> {out}",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
