//! Compiles every kernel with NVRTC (no GPU needed) and writes the PTX to the given path, so the
//! sources can be checked, and fed to `ptxas -v` for a register report, on a machine without a
//! GPU. Usage: `compile_ptx [sm_90] [out.ptx]` (needs libnvrtc on LD_LIBRARY_PATH and CUDA
//! headers under $CUDA_HOME/include). Then times the shard's own way: the units of
//! `cached_units`, compiled in parallel.

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
    // What a shard does at its first start: the same kernels as separate units, in parallel.
    let t = std::time::Instant::now();
    let units = pagedserve_kernels::cached_units(&arch, None)?;
    eprintln!(
        "compiled for {arch} as {} units in parallel in {:.2} s ({} threads available)",
        units.len(),
        t.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    Ok(())
}
