//! CUDA kernels of the shard's GPU backend, with typed launch wrappers.
//!
//! The sources live in `kernels/cuda/*.cu`; [`Kernels::load`] compiles them with NVRTC for the
//! device's architecture at shard start (caching the PTX on disk) and loads every function once;
//! [`Kernels::load_for_kv`] leaves out the decode attention of KV-cache types a server does not
//! use (a bf16 server compiles 7 units instead of 11 on its first start).
//! The kernels need compute capability 8.0 or newer (`KernelError::ArchTooOld` below that).
//! Wrappers take a stream and typed device views, check sizes (`KernelError::Shape`), launch, and
//! never synchronize, so a caller can capture them in a CUDA graph. Layouts are those of the
//! CUDA backend: bf16 activations row-major with one row per token, f32 residual stream, the KV
//! cache of one layer as K and V each `[num_blocks, KVH, block_size, D]`.
//!
//! cudarc loads libcuda and libnvrtc at run time: [`open_device`] returns
//! `KernelError::NoCuda` where they are missing instead of letting cudarc panic.

mod attention;
mod bias;
mod device;
mod error;
mod gemv;
mod kv;
mod launch;
mod loader;
mod ops;
mod rope;
mod sample;
mod units;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, LaunchConfig};

pub use attention::{
    DECODE_MAX_PARTITIONS, DECODE_PARTITION, DECODE_PARTITION_LARGE, DECODE_PARTITION_SMALL,
    MAX_GQA_GROUP, PREFILL_KEY_TILES, PREFILL_TILE, PREFILL_TILE_ROWS, PREFILL_TILE_SMALL,
    SUPPORTED_HEAD_DIMS, decode_partition, decode_workspace_len, prefill_tile_rows, prefill_tiles,
};
pub use device::{driver_present, nvrtc_present, open_device};
pub use error::KernelError;
pub use gemv::{GEMV_MAX_ROWS, GemvOut};
pub use kv::{F8E4M3, KvDtype, KvElem};
pub use loader::{cached_units, compile_ptx, device_arch, full_source};
pub use rope::{RopeHeads, RopeKv};

/// The compiled kernels of one device.
pub struct Kernels {
    ctx: Arc<CudaContext>,
    loaded: loader::Loaded,
    /// Programmatic dependent launch for the kernels that support it (launch.rs).
    pdl: bool,
    /// CTAs the GPU holds at once, per decode attention kernel (attention.rs): a device
    /// constant, asked of the driver at a kernel's first launch only.
    decode_ctas: Mutex<HashMap<String, u32>>,
    /// Attention's choices (attention.rs): the prefill kernel's key tile per head dim, chosen
    /// at load from the device's shared memory per block, its tile rows, the fp8 decode path.
    attention: attention::AttentionChoices,
}

/// Every KV-cache type, as [`Kernels::load`] loads them.
const ALL_KV_DTYPES: &[KvDtype] = &kv::KV_DTYPES;

impl Kernels {
    /// Compiles (or reads from `cache_dir`) and loads every kernel for `ctx`'s device, decode
    /// attention over KV caches of every [`KvDtype`] included (tests and benchmarks; a server
    /// needs only its cache's type: [`Kernels::load_for_kv`]). `Err(ArchTooOld)` below compute
    /// capability 8.0; `Err(SharedMemory)` where a prefill kernel fits no variant into the
    /// device's shared memory per block.
    pub fn load(ctx: &Arc<CudaContext>, cache_dir: Option<&Path>) -> Result<Kernels, KernelError> {
        Self::load_for_kv(ctx, cache_dir, ALL_KV_DTYPES)
    }

    /// [`Kernels::load`] with the decode attention of the KV-cache types in `kv_dtypes` only
    /// (repeats and order do not matter): decode attention is the only code compiled per cache
    /// type (4 NVRTC units of the 11 each), while RoPE + KV write, prefill attention and
    /// everything else come for both types always. Asking these kernels for decode attention
    /// over another type is `Err(KvDtypeNotLoaded)`. An empty list loads no decode attention.
    pub fn load_for_kv(
        ctx: &Arc<CudaContext>,
        cache_dir: Option<&Path>,
        kv_dtypes: &[KvDtype],
    ) -> Result<Kernels, KernelError> {
        Self::from_loaded(ctx, loader::Loaded::load(ctx, cache_dir, kv_dtypes)?)
    }

    /// For tests and benchmarks: [`Kernels::load`] (every KV-cache type) with the kernels
    /// compiled for `arch` (e.g. `sm_86`) instead of the device's own architecture; the driver
    /// compiles that PTX for the device at load, so an H100 runs the code an L4 or A10 would get.
    /// `arch` must be sm_80 or newer and not newer than the device (`Err(ArchUnusable)`). PDL
    /// follows `arch` (off below sm_90, see launch.rs); the prefill key tile still follows this
    /// device's shared memory, so pair it with [`Kernels::set_prefill_key_tile`] to run what the
    /// smaller GPU would.
    pub fn load_for_arch(
        ctx: &Arc<CudaContext>,
        arch: &str,
        cache_dir: Option<&Path>,
    ) -> Result<Kernels, KernelError> {
        Self::from_loaded(ctx, loader::Loaded::load_for_arch(ctx, arch, cache_dir)?)
    }

    fn from_loaded(ctx: &Arc<CudaContext>, loaded: loader::Loaded) -> Result<Kernels, KernelError> {
        Ok(Kernels {
            ctx: ctx.clone(),
            pdl: launch::pdl_enabled(&loaded.arch),
            attention: attention::AttentionChoices::init(ctx, &loaded)?,
            loaded,
            decode_ctas: Mutex::new(HashMap::new()),
        })
    }

    /// The architecture the kernels were compiled for, e.g. `sm_90`.
    pub fn arch(&self) -> &str {
        &self.loaded.arch
    }

    /// The KV-cache types whose decode attention is loaded, in declaration order (both for
    /// [`Kernels::load`]).
    pub fn kv_dtypes(&self) -> &[KvDtype] {
        &self.loaded.kv_dtypes
    }

    /// The context the kernels were loaded into.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    fn func(&self, name: &str) -> Result<&CudaFunction, KernelError> {
        self.loaded.get(name)
    }
}

/// Grid-stride launch shape for `n` independent items: enough blocks to fill the device many
/// times over, capped so the grid stays small.
pub(crate) fn grid_for(n: usize, threads: u32) -> LaunchConfig {
    let blocks = n.div_ceil(threads as usize).clamp(1, 65_536) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

// Re-exported so callers name one crate for the types in the wrappers' signatures.
pub use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
pub use half::bf16;

#[cfg(test)]
mod tests {
    use super::*;

    /// Kernels loaded for a bf16 cache only: a bf16 decode launches, an fp8 one is
    /// `KvDtypeNotLoaded`, and the fp8 prefill and RoPE/KV-write kernels are there. Skips
    /// without a CUDA driver.
    #[test]
    fn kernels_for_bf16_refuse_fp8_decode_by_type() -> Result<(), Box<dyn std::error::Error>> {
        use attention::{decode_kernel_name, prefill_kernel_name};
        let ctx = match open_device(0) {
            Ok(ctx) => ctx,
            Err(e) => {
                eprintln!("skipped: no CUDA driver ({e})");
                return Ok(());
            }
        };
        // The GPU tests' cache (kernels/tests/gpu/common.rs), so their runs share the PTX.
        let cache = std::env::temp_dir().join("pagedserve-kernels-test-cache");
        let k = Kernels::load_for_kv(&ctx, Some(&cache), &[KvDtype::Bf16, KvDtype::Bf16])?;
        assert_eq!(k.kv_dtypes(), [KvDtype::Bf16]);
        for name in [
            "rope_kv_write_fp8_kernel".to_string(),
            prefill_kernel_name(KvDtype::Fp8E4m3, 128, PREFILL_KEY_TILES[0]),
            decode_kernel_name(KvDtype::Bf16, 128, 4, DECODE_PARTITION),
        ] {
            k.func(&name)?;
        }
        let (h, kvh, d, bs, blocks, max_ctx) = (8, 2, 128, 16, 4, 32);
        let stream = ctx.default_stream();
        let qkv = stream.alloc_zeros::<bf16>((h + 2 * kvh) * d)?;
        let mut out = stream.alloc_zeros::<bf16>(h * d)?;
        let q_rows = stream.clone_htod(&[0i32])?;
        let tables = stream.clone_htod(&[0i32, 1])?;
        let ctx_lens = stream.clone_htod(&[max_ctx as i32])?;
        let mut ws = stream.alloc_zeros::<f32>(decode_workspace_len(1, h, d, max_ctx))?;
        let cache_len = blocks * kvh * bs * d;
        let kb = stream.alloc_zeros::<bf16>(cache_len)?;
        let vb = stream.alloc_zeros::<bf16>(cache_len)?;
        let kf = stream.alloc_zeros::<F8E4M3>(cache_len)?;
        let vf = stream.alloc_zeros::<F8E4M3>(cache_len)?;
        macro_rules! decode {
            ($k:expr, $v:expr) => {
                k.paged_decode_attention(
                    &stream,
                    &mut out.as_view_mut(),
                    &qkv.as_view(),
                    (h + 2 * kvh) * d,
                    &q_rows.as_view(),
                    &$k.as_view(),
                    &$v.as_view(),
                    &tables.as_view(),
                    2,
                    &ctx_lens.as_view(),
                    &mut ws.as_view_mut(),
                    h,
                    kvh,
                    d,
                    bs,
                    0.1,
                    max_ctx,
                )
            };
        }
        decode!(kb, vb)?;
        stream.synchronize()?;
        let err = decode!(kf, vf).expect_err("fp8 decode is not loaded");
        assert!(
            matches!(
                &err,
                KernelError::KvDtypeNotLoaded { dtype: KvDtype::Fp8E4m3, loaded, .. }
                    if *loaded == [KvDtype::Bf16]
            ),
            "{err}"
        );
        Ok(())
    }
}
