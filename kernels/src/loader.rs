//! NVRTC compilation of the `.cu` sources for the device's architecture, an on-disk PTX cache,
//! and the loaded functions.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};

use crate::KernelError;
use crate::kv::{KV_DTYPES, KvDtype};
use crate::units::{GEMV_UNIT, PREFILL_UNIT, SMALL_UNIT, UNITS, Unit, decode_unit, units_for};

/// The sources, in the order they are concatenated (common helpers first).
const COMMON: &str = include_str!("../cuda/common.cuh");
const SOURCES: [(&str, &str); 7] = [
    ("elementwise.cu", include_str!("../cuda/elementwise.cu")),
    ("rope.cu", include_str!("../cuda/rope.cu")),
    (
        "decode_attention.cu",
        include_str!("../cuda/decode_attention.cu"),
    ),
    (
        "prefill_attention.cu",
        include_str!("../cuda/prefill_attention.cu"),
    ),
    ("sample.cu", include_str!("../cuda/sample.cu")),
    ("gemv.cu", include_str!("../cuda/gemv.cu")),
    ("bias.cu", include_str!("../cuda/bias.cu")),
];

/// Where NVRTC finds `cuda_bf16.h` (the CUDA toolkit's include folder); `CUDA_HOME` or
/// `CUDA_PATH` override the default `/usr/local/cuda`.
fn cuda_include_dir() -> String {
    let home = std::env::var("CUDA_HOME")
        .or_else(|_| std::env::var("CUDA_PATH"))
        .unwrap_or_else(|_| "/usr/local/cuda".into());
    format!("{home}/include")
}

/// Every kernel source as one translation unit: common.cuh once, then each file without its
/// `#include "common.cuh"` line.
pub fn full_source() -> String {
    let all: Vec<&str> = SOURCES.iter().map(|(name, _)| *name).collect();
    source_of(&all)
}

/// common.cuh once, then the named files of [`SOURCES`] in that order, each without its
/// `#include "common.cuh"` line.
fn source_of(files: &[&str]) -> String {
    let mut src = COMMON.replace("#pragma once", "");
    for (name, text) in SOURCES.iter().filter(|(name, _)| files.contains(name)) {
        src.push_str(&format!("\n// ---- {name} ----\n"));
        for line in text.lines() {
            if line.trim() != "#include \"common.cuh\"" {
                src.push_str(line);
                src.push('\n');
            }
        }
    }
    src
}

fn compile_options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        format!("--include-path={}", cuda_include_dir()),
        "--std=c++17".into(),
        "--use_fast_math".into(),
    ]
}

/// The cache key: a hash of the source, the options and the NVRTC-relevant arch.
fn cache_name(arch: &str, src: &str, opts: &[String]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    src.hash(&mut h);
    opts.hash(&mut h);
    format!("{arch}-{:016x}.ptx", h.finish())
}

/// Compiles all kernels to PTX for `arch` (e.g. `sm_90`) as one translation unit. Needs
/// libnvrtc, not a GPU. (The shard compiles them as [`UNITS`], in parallel.)
pub fn compile_ptx(arch: &str) -> Result<String, KernelError> {
    compile_source(
        arch,
        &full_source(),
        &compile_options(arch),
        "pagedserve_kernels.cu",
    )
}

fn compile_source(
    arch: &str,
    src: &str,
    options: &[String],
    name: &str,
) -> Result<String, KernelError> {
    crate::device::nvrtc_present()?;
    let opts = CompileOptions {
        options: options.to_vec(),
        name: Some(name.into()),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(|e| match e {
        CompileError::CompileError { log, .. } => KernelError::Compile {
            arch: arch.into(),
            log: log.to_string_lossy().into_owned(),
        },
        other => KernelError::Compile {
            arch: arch.into(),
            log: other.to_string(),
        },
    })?;
    Ok(ptx.to_src())
}

/// PTX of `unit` for `arch`, from `cache_dir` when it holds a copy for these exact sources and
/// options, else compiled and stored there (written to a temporary name, then renamed, so
/// concurrent shards never read a half-written file).
fn cached_unit(arch: &str, unit: &Unit, cache_dir: Option<&Path>) -> Result<String, KernelError> {
    let src = source_of(unit.files);
    let mut opts = compile_options(arch);
    opts.extend(unit.defines.iter().map(|d| d.to_string()));
    let file = format!("{}.cu", unit.name);
    let Some(dir) = cache_dir else {
        return compile_source(arch, &src, &opts, &file);
    };
    let path = dir.join(cache_name(&format!("{arch}-{}", unit.name), &src, &opts));
    if let Ok(ptx) = std::fs::read_to_string(&path) {
        return Ok(ptx);
    }
    let ptx = compile_source(arch, &src, &opts, &file)?;
    let io = |source| KernelError::Cache {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = PathBuf::from(format!("{}.{}.tmp", path.display(), std::process::id()));
    std::fs::write(&tmp, &ptx).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(ptx)
}

/// The PTX of every unit of [`UNITS`] for `arch`, in that order: cached ones read, the others
/// compiled each on its own thread (NVRTC compiles separate programs concurrently). A shard
/// needs fewer: the decode units of its KV cache's type only (`Kernels::load_for_kv`).
pub fn cached_units(arch: &str, cache_dir: Option<&Path>) -> Result<Vec<String>, KernelError> {
    let all: Vec<usize> = (0..UNITS.len()).collect();
    cached_unit_set(arch, &all, cache_dir)
}

/// The PTX of the units of [`UNITS`] at indices `units`, in that order, as [`cached_units`]
/// gets them.
fn cached_unit_set(
    arch: &str,
    units: &[usize],
    cache_dir: Option<&Path>,
) -> Result<Vec<String>, KernelError> {
    std::thread::scope(|scope| {
        let jobs: Vec<_> = units
            .iter()
            .map(|&u| scope.spawn(move || cached_unit(arch, &UNITS[u], cache_dir)))
            .collect();
        jobs.into_iter()
            .map(|job| {
                job.join().unwrap_or_else(|_| {
                    Err(KernelError::Compile {
                        arch: arch.into(),
                        log: "the NVRTC thread panicked".into(),
                    })
                })
            })
            .collect()
    })
}

/// `sm_XY` of the context's device.
pub fn device_arch(ctx: &CudaContext) -> Result<String, KernelError> {
    let (major, minor) = ctx.compute_capability()?;
    Ok(format!("sm_{major}{minor}"))
}

/// The oldest compute capability the kernels run on: bf16 `mma.sync` (m16n8k16) and `cp.async`
/// are sm_80 instructions.
const MIN_ARCH: (u32, u32) = (8, 0);

/// (major, minor) of an `sm_XY` name (`sm_86`: 8.6, `sm_100`: 10.0); `None` for anything else,
/// suffixed names such as `sm_90a` included.
pub(crate) fn parse_arch(arch: &str) -> Option<(u32, u32)> {
    let digits = arch.strip_prefix("sm_")?;
    if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = digits.parse().ok()?;
    Some((n / 10, n % 10))
}

/// `Err(ArchTooOld)` unless device `device`, of architecture `arch`, can run the kernels
/// (instead of the compile log NVRTC would give for an sm_75 target).
pub(crate) fn check_device_arch(device: usize, arch: &str) -> Result<(), KernelError> {
    if parse_arch(arch).is_some_and(|v| v >= MIN_ARCH) {
        Ok(())
    } else {
        Err(KernelError::ArchTooOld {
            device,
            arch: arch.into(),
        })
    }
}

/// `Err(ArchUnusable)` unless PTX compiled for `arch` runs on device `device` of architecture
/// `device_arch`: the driver compiles PTX for the device's own architecture at load, from that
/// of the same or an older one only.
pub(crate) fn check_target_arch(
    arch: &str,
    device: usize,
    device_arch: &str,
) -> Result<(), KernelError> {
    let reason = match (parse_arch(arch), parse_arch(device_arch)) {
        (None, _) => Some("not an sm_XY architecture name".to_string()),
        (Some(a), _) if a < MIN_ARCH => {
            Some("the kernels need sm_80 or newer (bf16 tensor cores, cp.async)".into())
        }
        (Some(a), Some(d)) if a > d => {
            Some("PTX runs only on its own architecture or a newer one".into())
        }
        _ => None,
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(KernelError::ArchUnusable {
            arch: arch.into(),
            device,
            device_arch: device_arch.into(),
            reason,
        }),
    }
}

/// The loaded modules and their functions by name.
pub(crate) struct Loaded {
    pub(crate) arch: String,
    /// The KV-cache types whose decode attention is loaded, in [`KV_DTYPES`] order.
    pub(crate) kv_dtypes: Vec<KvDtype>,
    _modules: Vec<Arc<CudaModule>>,
    functions: HashMap<String, CudaFunction>,
}

/// `kv_dtypes` in [`KV_DTYPES`] order, each once.
fn normalize_kv_dtypes(kv_dtypes: &[KvDtype]) -> Vec<KvDtype> {
    KV_DTYPES
        .into_iter()
        .filter(|d| kv_dtypes.contains(d))
        .collect()
}

/// The error of asking for kernel `name` where it is not loaded: `KvDtypeNotLoaded` for decode
/// attention over a cache type missing from `kv_dtypes` (the types loaded), else `Shape`.
fn not_loaded(name: &str, kv_dtypes: &[KvDtype]) -> KernelError {
    let unit = kernel_names()
        .into_iter()
        .find_map(|(n, unit)| (n == name).then_some(unit));
    match unit.and_then(|u| UNITS[u].decode_kv) {
        Some(dtype) if !kv_dtypes.contains(&dtype) => KernelError::KvDtypeNotLoaded {
            kernel: name.into(),
            dtype,
            loaded: kv_dtypes.to_vec(),
        },
        _ => KernelError::shape("load", format!("kernel {name} is not loaded")),
    }
}

/// Every `extern "C"` kernel in the sources, with the index in [`UNITS`] of the unit that
/// compiles it.
pub(crate) fn kernel_names() -> Vec<(String, usize)> {
    use crate::attention::{
        DECODE_PARTITION, DECODE_PARTITION_LARGE, DECODE_PARTITION_SMALL, MAX_GQA_GROUP,
        PREFILL_KEY_TILES, PREFILL_TILE_ROWS, SUPPORTED_HEAD_DIMS, decode_kernel_name,
        prefill_kernel_name_rows,
    };
    let mut names: Vec<(String, usize)> = [
        "embedding_kernel",
        "rms_norm_kernel",
        "add_rms_norm_kernel",
        "silu_mul_kernel",
        "fill_random_bf16_kernel",
        "fill_random_f32_kernel",
        "rope_kv_write_kernel",
        "add_bias_kernel",
        "sample_kernel",
        "feed_tokens_kernel",
    ]
    .iter()
    .map(|s| (s.to_string(), SMALL_UNIT))
    .collect();
    names.push(("rope_kv_write_fp8_kernel".to_string(), SMALL_UNIT));
    for dtype in KV_DTYPES {
        for d in SUPPORTED_HEAD_DIMS {
            for kt in PREFILL_KEY_TILES {
                for rows in PREFILL_TILE_ROWS {
                    names.push((prefill_kernel_name_rows(dtype, d, kt, rows), PREFILL_UNIT));
                }
            }
            for g in 1..=MAX_GQA_GROUP {
                for p in [
                    DECODE_PARTITION_SMALL,
                    DECODE_PARTITION,
                    DECODE_PARTITION_LARGE,
                ] {
                    let name = decode_kernel_name(dtype, d, g, p);
                    names.push((name, decode_unit(dtype, d, g)));
                }
            }
        }
    }
    let gemv = crate::gemv::gemv_kernel_ms()
        .into_iter()
        .flat_map(|m| [format!("gemv_bf16_m{m}"), format!("gemv_f32_m{m}")])
        .chain(crate::gemv::gemv_fused_kernel_names());
    names.extend(gemv.map(|name| (name, GEMV_UNIT)));
    names
}

impl Loaded {
    /// The kernels for KV caches of `kv_dtypes` (every kernel but the decode attention of the
    /// other types), compiled for the device's own architecture.
    pub(crate) fn load(
        ctx: &Arc<CudaContext>,
        cache_dir: Option<&Path>,
        kv_dtypes: &[KvDtype],
    ) -> Result<Self, KernelError> {
        let arch = device_arch(ctx)?;
        check_device_arch(ctx.ordinal(), &arch)?;
        Self::load_arch(ctx, arch, cache_dir, kv_dtypes)
    }

    /// Every kernel compiled for `arch`, which the device must be able to run (the same
    /// architecture or an older one, sm_80 or newer).
    pub(crate) fn load_for_arch(
        ctx: &Arc<CudaContext>,
        arch: &str,
        cache_dir: Option<&Path>,
    ) -> Result<Self, KernelError> {
        let device = device_arch(ctx)?;
        check_device_arch(ctx.ordinal(), &device)?;
        check_target_arch(arch, ctx.ordinal(), &device)?;
        Self::load_arch(ctx, arch.to_string(), cache_dir, &KV_DTYPES)
    }

    fn load_arch(
        ctx: &Arc<CudaContext>,
        arch: String,
        cache_dir: Option<&Path>,
        kv_dtypes: &[KvDtype],
    ) -> Result<Self, KernelError> {
        let kv_dtypes = normalize_kv_dtypes(kv_dtypes);
        let units = units_for(&kv_dtypes);
        let modules = cached_unit_set(&arch, &units, cache_dir)?
            .into_iter()
            .map(|ptx| ctx.load_module(Ptx::from_src(ptx)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut functions = HashMap::new();
        for (name, unit) in kernel_names() {
            // `units` is sorted: a unit's module sits at the unit's place in it.
            if let Ok(i) = units.binary_search(&unit) {
                let f = modules[i].load_function(&name)?;
                functions.insert(name, f);
            }
        }
        Ok(Loaded {
            arch,
            kv_dtypes,
            _modules: modules,
            functions,
        })
    }

    pub(crate) fn get(&self, name: &str) -> Result<&CudaFunction, KernelError> {
        self.functions
            .get(name)
            .ok_or_else(|| not_loaded(name, &self.kv_dtypes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_name_is_defined_in_the_source() {
        let src = full_source();
        assert!(!src.lines().any(|l| l.trim() == "#include \"common.cuh\""));
        for (name, _) in kernel_names() {
            let direct =
                src.contains(&format!(" {name}(")) || src.contains(&format!("    {name}("));
            // Decode kernels, bf16 and fp8 alike, come from DECODE_INST(D, G).
            let inst = name
                .strip_prefix("paged_decode_d")
                .or_else(|| name.strip_prefix("paged_decode_fp8_d"))
                .and_then(|r| r.split_once("_g"))
                .and_then(|(d, r)| Some((d, r.split_once("_p")?.0)))
                .is_some_and(|(d, g)| src.contains(&format!("DECODE_INST({d}, {g})")));
            // GEMV kernels come from GEMV_KERNELS(M), the RoPE-fused ones from GEMV_FUSED(M).
            let gemv = name.rsplit_once("_m").is_some_and(|(k, m)| match k {
                "gemv_bf16" | "gemv_f32" => src.contains(&format!("GEMV_KERNELS({m})")),
                "gemv_rope" => src.contains(&format!("GEMV_FUSED({m})")),
                _ => false,
            });
            assert!(direct || inst || gemv, "{name} is not in the sources");
        }
    }

    #[test]
    fn every_kernel_defined_in_the_source_is_loaded() {
        let src = full_source();
        let names: Vec<String> = kernel_names().into_iter().map(|(name, _)| name).collect();
        for def in src.split("extern \"C\" __global__").skip(1) {
            // `void [__launch_bounds__(N)] name(...) {`; macro instances (`name##D`) are
            // checked above.
            let decl = def.split('{').next().unwrap_or_default();
            let decl = decl
                .split_once("__launch_bounds__(")
                .and_then(|(_, rest)| rest.split_once(')'))
                .map_or(decl, |(_, rest)| rest);
            let name = decl
                .split('(')
                .next()
                .and_then(|d| d.split_whitespace().last())
                .unwrap_or_default();
            assert!(
                name.contains("##") || names.iter().any(|n| n == name),
                "{name} is defined but not in kernel_names"
            );
        }
    }

    #[test]
    fn only_decode_attention_of_other_kv_dtypes_is_left_out() {
        use crate::attention::decode_kernel_name;
        let (b, f) = (KvDtype::Bf16, KvDtype::Fp8E4m3);
        let sets: [&[KvDtype]; 5] = [&[], &[b], &[f], &[b, f], &[f, b]];
        for set in sets {
            let units = units_for(set);
            for (name, unit) in kernel_names() {
                let loaded = units.contains(&unit);
                // What a set leaves out is exactly the decode attention of the types not in it.
                let decode_of = KV_DTYPES
                    .into_iter()
                    .find(|&d| name.starts_with(&format!("paged_decode{}_d", d.tag())));
                assert_eq!(
                    loaded,
                    decode_of.is_none_or(|d| set.contains(&d)),
                    "{name} with {set:?}"
                );
            }
            // An fp8 server's prefill and RoPE/KV-write kernels live in the shared units.
            let names: Vec<String> = kernel_names()
                .into_iter()
                .filter(|(_, u)| units.contains(u))
                .map(|(n, _)| n)
                .collect();
            for needed in [
                "rope_kv_write_kernel",
                "rope_kv_write_fp8_kernel",
                "paged_prefill_d128",
                "paged_prefill_fp8_d128",
                "paged_prefill_fp8_d64_k32",
            ] {
                assert!(names.iter().any(|n| n == needed), "{needed} with {set:?}");
            }
            for d in KV_DTYPES {
                assert_eq!(
                    names.contains(&decode_kernel_name(d, 128, 4, 256)),
                    set.contains(&d),
                    "{d:?} decode with {set:?}"
                );
            }
        }
    }

    #[test]
    fn a_decode_kernel_of_an_unloaded_kv_dtype_is_a_typed_error() {
        use crate::attention::decode_kernel_name;
        let (b, f) = (KvDtype::Bf16, KvDtype::Fp8E4m3);
        assert_eq!(normalize_kv_dtypes(&[f, b, f]), [b, f]);
        assert_eq!(normalize_kv_dtypes(&[f]), [f]);
        let fp8 = decode_kernel_name(f, 128, 4, 256);
        let err = not_loaded(&fp8, &[b]);
        assert!(
            matches!(
                &err,
                KernelError::KvDtypeNotLoaded { kernel, dtype: KvDtype::Fp8E4m3, loaded }
                    if *kernel == fp8 && *loaded == [b]
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "paged_decode_fp8_d128_g4_p256: the kernels were loaded without decode attention \
             over fp8_e4m3 KV caches (loaded for: bf16); use Kernels::load, or list fp8_e4m3 in \
             Kernels::load_for_kv"
        );
        let bf = decode_kernel_name(b, 64, 8, 64);
        assert!(matches!(
            not_loaded(&bf, &[f]),
            KernelError::KvDtypeNotLoaded {
                dtype: KvDtype::Bf16,
                ..
            }
        ));
        assert!(
            not_loaded(&bf, &[])
                .to_string()
                .contains("(loaded for: none)")
        );
        // Anything else missing stays a plain "not loaded".
        for (name, set) in [
            ("paged_decode_d96_g4_p256", &[b][..]),
            ("no_such_kernel", &[b][..]),
            (fp8.as_str(), &[b, f][..]),
        ] {
            assert!(
                matches!(
                    not_loaded(name, set),
                    KernelError::Shape { kernel: "load", .. }
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn every_source_file_is_compiled_in_some_unit() {
        for (name, _) in SOURCES {
            let units: Vec<&str> = UNITS
                .iter()
                .filter(|u| u.files.contains(&name))
                .map(|u| u.name)
                .collect();
            assert!(!units.is_empty(), "{name} is in no unit");
            // Only decode_attention.cu is split (by PS_DECODE_PART); any other file twice would
            // define its kernels in two modules.
            assert!(
                units.len() == 1 || name == "decode_attention.cu",
                "{name}: {units:?}"
            );
        }
    }

    #[test]
    fn arch_names_parse() {
        assert_eq!(parse_arch("sm_80"), Some((8, 0)));
        assert_eq!(parse_arch("sm_86"), Some((8, 6)));
        assert_eq!(parse_arch("sm_90"), Some((9, 0)));
        assert_eq!(parse_arch("sm_100"), Some((10, 0)));
        assert_eq!(parse_arch("sm_121"), Some((12, 1)));
        for bad in ["sm_90a", "compute_90", "sm_8", "sm_", "90", "sm_8x", ""] {
            assert_eq!(parse_arch(bad), None, "{bad}");
        }
    }

    #[test]
    fn devices_below_sm_80_are_refused_by_name() {
        for ok in ["sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120"] {
            assert!(check_device_arch(0, ok).is_ok(), "{ok}");
        }
        let err = check_device_arch(0, "sm_75").expect_err("sm_75 is refused");
        assert!(matches!(err, KernelError::ArchTooOld { device: 0, .. }));
        assert_eq!(
            err.to_string(),
            "pagedserve's CUDA kernels need compute capability 8.0 or newer (bf16 tensor cores, \
             cp.async); device 0 is sm_75"
        );
        assert!(check_device_arch(1, "sm_70").is_err());
        assert!(check_device_arch(0, "nonsense").is_err());
    }

    #[test]
    fn target_arch_must_run_on_the_device() {
        for (arch, device) in [("sm_86", "sm_90"), ("sm_80", "sm_90"), ("sm_90", "sm_90")] {
            assert!(
                check_target_arch(arch, 0, device).is_ok(),
                "{arch} on {device}"
            );
            assert!(
                check_target_arch(arch, 0, "sm_100").is_ok(),
                "{arch} on sm_100"
            );
        }
        for (arch, device) in [
            ("sm_100", "sm_90"),
            ("sm_89", "sm_86"),
            ("sm_75", "sm_90"),
            ("sm_90a", "sm_90"),
            ("86", "sm_90"),
        ] {
            let err = check_target_arch(arch, 0, device).expect_err("refused");
            assert!(
                matches!(err, KernelError::ArchUnusable { .. }),
                "{arch} on {device}"
            );
        }
        let msg = check_target_arch("sm_100", 2, "sm_90")
            .expect_err("sm_100 on sm_90 is refused")
            .to_string();
        assert!(msg.starts_with("kernels for sm_100 cannot run on device 2 (sm_90): "));
    }

    #[test]
    fn cache_name_changes_with_arch_and_source() {
        let opts = compile_options("sm_90");
        let a = cache_name("sm_90", "x", &opts);
        assert_ne!(a, cache_name("sm_80", "x", &opts));
        assert_ne!(a, cache_name("sm_90", "y", &opts));
        assert!(a.starts_with("sm_90-") && a.ends_with(".ptx"));
    }
}
