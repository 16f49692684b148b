//! Wrappers of paged decode attention (cuda/decode_attention.cu) and paged prefill attention
//! (cuda/prefill_attention.cu), plus their host-side helpers.

use std::sync::PoisonError;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut,
    DeviceRepr, LaunchConfig,
};
use half::bf16;

use crate::error::{ensure, expect_len, to_u32};
use crate::kv::{KV_DTYPES, KvDtype, KvElem};
use crate::loader::Loaded;
use crate::{KernelError, Kernels};

/// Tokens per decode partition of medium launches (small ones use DECODE_PARTITION_SMALL, large
/// ones DECODE_PARTITION_LARGE).
pub const DECODE_PARTITION: usize = 256;
/// Tokens per decode partition when the launch would otherwise have too few CTAs to fill the GPU.
pub const DECODE_PARTITION_SMALL: usize = 64;
/// Tokens per decode partition of large launches: half the partials of 256 to write and
/// combine (H200, Llama-3-8B heads: 84.9% vs 79.3% of copy bandwidth at 4k x 128).
pub const DECODE_PARTITION_LARGE: usize = 512;
/// Query rows per prefill tile of [`prefill_tiles`] (PF_M in prefill_attention.cu): one CTA.
/// The default; steps with little prefill take [`PREFILL_TILE_SMALL`] (see [`prefill_tile_rows`]).
pub const PREFILL_TILE: usize = 128;
/// Query rows per prefill tile of the `_m64` kernels (one m16 tile a warp instead of two), for
/// steps whose prefill would leave the GPU mostly idle with 128-row tiles.
pub const PREFILL_TILE_SMALL: usize = 64;
/// The query rows a prefill tile may have, the default first.
pub const PREFILL_TILE_ROWS: [usize; 2] = [PREFILL_TILE, PREFILL_TILE_SMALL];
/// 128-row CTAs an SM up to which a step's prefill takes 64-row tiles (see
/// [`prefill_tile_rows`]).
const PREFILL_SMALL_CTAS_PER_SM: usize = 1;
/// Keys per K/V tile of the compiled prefill kernels (KT in prefill_attention.cu), the preferred
/// first: 64 where the device's shared memory allows it, else 32 (see
/// [`Kernels::set_prefill_key_tile`]).
pub const PREFILL_KEY_TILES: [usize; 2] = [64, 32];
/// Most partition slots per decode sequence (`ceil(max_ctx / P)`, the grid's z): bounds the
/// workspace and the in-kernel combine's serial work.
pub const DECODE_MAX_PARTITIONS: usize = 2048;
/// Largest KV block size (a decode partition must span whole blocks).
pub const MAX_BLOCK_SIZE: usize = 64;
/// Head dims with a compiled kernel.
pub const SUPPORTED_HEAD_DIMS: [usize; 2] = [64, 128];
/// Largest H / KVH the decode kernel is instantiated for.
pub const MAX_GQA_GROUP: usize = 8;
/// Threads per decode CTA (DEC_THREADS in decode_attention.cu).
const DECODE_THREADS: u32 = 128;

/// `paged_decode[_fp8]_d{D}_g{G}_p{P}`: the decode kernel for caches of `dtype`.
pub(crate) fn decode_kernel_name(
    dtype: KvDtype,
    head_dim: usize,
    group: usize,
    part: usize,
) -> String {
    format!("paged_decode{}_d{head_dim}_g{group}_p{part}", dtype.tag())
}

/// decode_partition's bands: launches with fewer (sequence, 256-token partition) pairs than
/// these take 64- and 256-token partitions.
const SMALL_PAIRS: usize = 64;
const LARGE_PAIRS: usize = 256;

/// The longest partition of a decode launch (its grid has `ceil(max_ctx / P)` partition slots
/// per sequence), from the number of (sequence, 256-token partition) pairs: under 64,
/// 64-token partitions (batch 1: too few CTAs to keep the memory system busy); under 256, 256;
/// else 512 (fewer partials to write and combine). Depends only on the launch shape, never on
/// the actual lengths. On the device a sequence shorter than `max_ctx` may split into more,
/// shorter partitions (down to 64 tokens) where the launch would not fill the GPU.
pub fn decode_partition(num_seqs: usize, max_ctx: usize) -> usize {
    if let Some(part) = forced_decode_partition() {
        return part;
    }
    let pairs = num_seqs * max_ctx.div_ceil(DECODE_PARTITION);
    if pairs < SMALL_PAIRS {
        DECODE_PARTITION_SMALL
    } else if pairs < LARGE_PAIRS {
        DECODE_PARTITION
    } else {
        DECODE_PARTITION_LARGE
    }
}

/// `PAGEDSERVE_DECODE_PARTITION` (64, 256 or 512; for measurements; any other value is
/// ignored): every decode launch's longest partition, whatever its size. Read once, so
/// workspaces sized at start and later launches agree.
fn forced_decode_partition() -> Option<usize> {
    static FORCED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| {
        let value = std::env::var("PAGEDSERVE_DECODE_PARTITION").ok()?;
        value.trim().parse().ok().filter(|p| {
            [
                DECODE_PARTITION_SMALL,
                DECODE_PARTITION,
                DECODE_PARTITION_LARGE,
            ]
            .contains(p)
        })
    })
}

/// Waves of CTAs a decode launch's grid may hold (see [`decode_grid_z`]).
const DECODE_GRID_WAVES: usize = 4;

/// The decode grid's z: a sequence's `parts` partition slots, capped at what keeps the launch
/// within [`DECODE_GRID_WAVES`] waves of `target_ctas` CTAs (the kernel loops over the
/// partitions of a sequence beyond z). Without the cap a long-context engine launched mostly
/// CTAs with nothing to do: with max_ctx 131,072, 32 sequences of 1k tokens took 111.9 us
/// against 57.6 at max_ctx 1,024, 8 sequences 31.9 against 19.1 at 8,192 (H100, attn_bench,
/// 2026-11-26).
pub fn decode_grid_z(
    num_seqs: usize,
    num_kv_heads: usize,
    parts: usize,
    target_ctas: u32,
) -> usize {
    let per_wave = (target_ctas as usize).div_ceil((num_seqs * num_kv_heads).max(1));
    parts.min(DECODE_GRID_WAVES * per_wave).max(1)
}

/// f32 elements of the decode workspace for up to `num_seqs` sequences of up to `max_ctx`
/// tokens: per (sequence, head, partition slot) a D-vector of partial outputs plus its max and
/// sum, and at the end one u32 counter per (sequence, KV head) (`num_seqs * num_heads` words
/// reserved). Nondecreasing in `num_seqs` (the partials part is the largest of any batch size up
/// to `num_seqs`), so one buffer sized for the largest batch serves launches of every smaller
/// one: their partials never reach the counters, which sit at fixed places from the end.
pub fn decode_workspace_len(
    num_seqs: usize,
    num_heads: usize,
    head_dim: usize,
    max_ctx: usize,
) -> usize {
    let partials = |s: usize| {
        let parts = max_ctx.div_ceil(decode_partition(s, max_ctx)).max(1);
        s * num_heads * parts * (head_dim + 2)
    };
    // decode_partition only grows with s, in three bands; per band the partials peak at the
    // band's largest s.
    let per_seq = max_ctx.div_ceil(DECODE_PARTITION).max(1);
    let largest = [
        (SMALL_PAIRS - 1) / per_seq,
        (LARGE_PAIRS - 1) / per_seq,
        num_seqs,
    ]
    .into_iter()
    .filter(|&s| s >= 1)
    .map(|s| partials(s.min(num_seqs)))
    .max()
    .unwrap_or(0);
    largest + num_seqs * num_heads
}

/// Query rows per prefill tile (one of [`PREFILL_TILE_ROWS`]) for a step whose prefill chunks
/// hold `prefill_tokens` rows in all, over `num_heads` query heads (of this GPU), on a GPU of
/// `sm_count` SMs: [`PREFILL_TILE_SMALL`] when the 128-row grid, `ceil(prefill_tokens / 128) x
/// num_heads` CTAs, would be at most one CTA an SM, else [`PREFILL_TILE`].
///
/// Why: a prefill CTA is 4 warps, and at D = 128 an SM holds two of them (shared memory, ~90 to
/// 108 KB a CTA, either tile size). With one CTA an SM or fewer, its 4 warps cannot hide their
/// latency (1 x 512 tokens, 32 heads: 128 CTAs on an H100's 132 SMs, 68 TFLOP/s over an fp8
/// cache against 250-290 for 2k-8k-token prompts). 64-row tiles double the CTAs, which still fit
/// one wave (two an SM); past that bound the 128-row grid already fills both slots of most SMs,
/// and doubling it would only add a wave of CTAs that reuse each K/V fragment half as much. The
/// count is of the step's tokens, not of its per-sequence tiles, so that the launch can derive
/// the same choice from the step's shape (rows less decode rows) as the host did from the
/// sequence table: the two must agree, or rows go missing. On an H100 with 32 heads: up to 512
/// prefill tokens a step (e.g. 1 x 512, 3 x 150, 1 x 200).
pub fn prefill_tile_rows(prefill_tokens: usize, num_heads: usize, sm_count: usize) -> usize {
    let ctas = prefill_tokens.div_ceil(PREFILL_TILE) * num_heads;
    if ctas <= PREFILL_SMALL_CTAS_PER_SM * sm_count {
        PREFILL_TILE_SMALL
    } else {
        PREFILL_TILE
    }
}

/// The prefill tiles `(seq index, first query row within the chunk)` for `seq_info` rows
/// `(row_start, num_rows, start_pos)`: `tile_rows` rows each (one of [`PREFILL_TILE_ROWS`],
/// from [`prefill_tile_rows`]; the launch must run the kernel of the same rows), the tiles with
/// the most keys first so the long ones start early and the grid's tail is short.
pub fn prefill_tiles(seq_info: &[[i32; 3]], tile_rows: usize) -> Vec<[i32; 2]> {
    assert!(
        PREFILL_TILE_ROWS.contains(&tile_rows),
        "{tile_rows} rows a prefill tile: one of {PREFILL_TILE_ROWS:?}"
    );
    let m = tile_rows as i32;
    let mut tiles: Vec<[i32; 2]> = Vec::new();
    for (s, &[_, rows, _]) in seq_info.iter().enumerate() {
        let mut j = 0;
        while j < rows {
            tiles.push([s as i32, j]);
            j += m;
        }
    }
    let keys = |t: &[i32; 2]| {
        let [_, rows, start] = seq_info[t[0] as usize];
        start + rows.min(t[1] + m)
    };
    tiles.sort_by_key(|t| std::cmp::Reverse(keys(t)));
    tiles
}

/// Mirrors `struct DecodeArgs` in decode_attention.cu field by field.
#[repr(C)]
#[derive(Clone, Copy)]
struct DecodeArgs {
    out: u64,
    qkv: u64,
    q_rows: u64,
    kc: u64,
    vc: u64,
    block_tables: u64,
    ctx_lens: u64,
    ws: u64,
    ws_len: u64,
    qkv_stride: u32,
    out_rows: u32,
    h: u32,
    kvh: u32,
    block_size: u32,
    bt_stride: u32,
    num_blocks: u32,
    max_ctx: u32,
    bs_log2: u32,
    target_ctas: u32,
    max_parts: u32,
    scale_log2: f32,
    fp8_mma: u32,
}

// SAFETY: plain old data with the C layout of the kernel's parameter.
unsafe impl DeviceRepr for DecodeArgs {}

/// How decode attention over fp8 caches computes its scores and P·V, by name: `mma` (tensor
/// cores: mma.sync m16n8k16, f16 operands, f32 sums, four 16-token steps a warp in flight in
/// 256- and 512-token partitions; the default), `mma-half` (the same with two steps in flight:
/// 3-15% slower on an H100, kept to time against) or `cuda` (the CUDA-core f16x2 path that
/// came before: 5-15% slower). Both paths live in the same `paged_decode_fp8_*`
/// kernels, picked by `DecodeArgs::fp8_mma` (the value next to each name here), so one binary
/// can time both ([`Kernels::set_fp8_decode`]).
const FP8_DECODE_PATHS: [(&str, u32); 3] = [("mma", 4), ("mma-half", 1), ("cuda", 0)];

/// The fp8 decode path of `PAGEDSERVE_FP8_DECODE` (read once, when a [`Kernels`] loads; unset
/// or not a name of [`FP8_DECODE_PATHS`]: `mma`), as its `fp8_mma` value.
fn fp8_decode_from_env() -> u32 {
    let v = std::env::var("PAGEDSERVE_FP8_DECODE").unwrap_or_default();
    fp8_decode_mode(&v.trim().to_ascii_lowercase()).unwrap_or(FP8_DECODE_PATHS[0].1)
}

/// The `fp8_mma` value of the fp8 decode path named exactly `path`.
fn fp8_decode_mode(path: &str) -> Option<u32> {
    FP8_DECODE_PATHS
        .iter()
        .find(|&&(name, _)| name == path)
        .map(|&(_, mode)| mode)
}

/// Threads per prefill CTA (PF_THREADS in prefill_attention.cu).
const PREFILL_THREADS: u32 = 128;
/// Block ids of a sequence staged in shared memory (PF_BT_SMEM).
const PREFILL_BT_SMEM: usize = 1024;

/// The 128-row prefill kernel for caches of `dtype`, head dim `head_dim` and `kt` keys a K/V
/// tile: `paged_prefill[_fp8]_d{D}` for 64, `paged_prefill[_fp8]_d{D}_k{kt}` otherwise.
pub(crate) fn prefill_kernel_name(dtype: KvDtype, head_dim: usize, kt: usize) -> String {
    prefill_kernel_name_rows(dtype, head_dim, kt, PREFILL_TILE)
}

/// [`prefill_kernel_name`] for tiles of `rows` query rows: the 128-row name, with `_m{rows}`
/// after it for other rows (`paged_prefill_fp8_d128_k32_m64`).
pub(crate) fn prefill_kernel_name_rows(
    dtype: KvDtype,
    head_dim: usize,
    kt: usize,
    rows: usize,
) -> String {
    let tag = dtype.tag();
    let k = if kt == PREFILL_KEY_TILES[0] {
        String::new()
    } else {
        format!("_k{kt}")
    };
    let m = if rows == PREFILL_TILE {
        String::new()
    } else {
        format!("_m{rows}")
    };
    format!("paged_prefill{tag}_d{head_dim}{k}{m}")
}

/// Dynamic shared memory of the prefill kernel of `dtype`, `head_dim`, `kt` keys a tile and
/// `rows` query rows a tile (`PfSmem<D, KT, FP8, MT = rows / 64>::BYTES`): Q of `rows` rows and
/// K and V stages of `kt` keys, rows padded to D + 8 bf16, then the staged block ids. A bf16
/// cache has two stages of K and V (its copies' pipeline); an fp8 cache one, into which the
/// kernel widens each tile, then two stages of the raw e4m3 K and V tiles (`kt * D` bytes each)
/// for its copies: `32 * kt` bytes less than a bf16 cache's kernel (106,496 B at D = 128,
/// kt = 64, 128 rows). 64 rows take `64 * (D + 8) * 2` bytes less (17,408 at D = 128).
fn prefill_smem_bytes(dtype: KvDtype, head_dim: usize, kt: usize, rows: usize) -> usize {
    let (stages, raw) = match dtype {
        KvDtype::Bf16 => (2, 0),
        KvDtype::Fp8E4m3 => (1, 4 * kt * head_dim),
    };
    (rows + 2 * stages * kt) * (head_dim + 8) * 2 + PREFILL_BT_SMEM * 4 + raw
}

/// Whether the 128-row prefill kernel of `dtype`, `head_dim` and `kt` keys a tile fits `avail`
/// bytes of dynamic shared memory per block (then so does its 64-row one, which needs less).
fn key_tile_fits(dtype: KvDtype, head_dim: usize, kt: usize, avail: usize) -> bool {
    prefill_smem_bytes(dtype, head_dim, kt, PREFILL_TILE) <= avail
}

/// The key tile a device with `avail` bytes of dynamic shared memory per block runs at
/// `head_dim` for caches of `dtype`: the first of [`PREFILL_KEY_TILES`] that fits.
fn default_key_tile(dtype: KvDtype, head_dim: usize, avail: usize) -> Option<usize> {
    PREFILL_KEY_TILES
        .into_iter()
        .find(|&kt| key_tile_fits(dtype, head_dim, kt, avail))
}

/// What attention runs, per [`Kernels`]: which prefill kernel, per cache type and head dim of
/// [`SUPPORTED_HEAD_DIMS`] (chosen at load from the device's opt-in shared memory per block,
/// which is also when the kernels that fit get their dynamic shared memory allowance: a
/// function attribute, set once, not at every launch), the prefill tile rows, and the fp8
/// decode path.
pub(crate) struct AttentionChoices {
    /// The device's opt-in shared memory per block, bytes.
    limit: usize,
    /// Static shared memory of each (cache type, head dim)'s prefill kernels (none today: it is
    /// all dynamic).
    static_bytes: [[usize; SUPPORTED_HEAD_DIMS.len()]; KV_DTYPES.len()],
    /// The key tile of each (cache type, head dim) chosen at load.
    default: [[usize; SUPPORTED_HEAD_DIMS.len()]; KV_DTYPES.len()],
    /// The key tile each (cache type, head dim) runs now (`default` unless a test or benchmark
    /// forced one).
    current: [[AtomicUsize; SUPPORTED_HEAD_DIMS.len()]; KV_DTYPES.len()],
    /// The device's SMs, for [`prefill_tile_rows`].
    sm_count: usize,
    /// Query rows a tile forced by a test or benchmark for every step (0: per step, by
    /// [`prefill_tile_rows`]).
    forced_rows: AtomicUsize,
    /// The fp8 decode path, as `DecodeArgs::fp8_mma` ([`FP8_DECODE_PATHS`]).
    fp8_decode: AtomicU32,
    device: usize,
    device_arch: String,
}

/// Index of `dtype` in [`KV_DTYPES`].
fn dtype_index(dtype: KvDtype) -> usize {
    match dtype {
        KvDtype::Bf16 => 0,
        KvDtype::Fp8E4m3 => 1,
    }
}

impl AttentionChoices {
    /// Reads the device's limit, picks each (cache type, head dim)'s key tile and raises the
    /// dynamic shared memory allowance of every prefill kernel that fits; `Err(SharedMemory)`
    /// when some pair has no kernel that fits.
    pub(crate) fn init(ctx: &CudaContext, loaded: &Loaded) -> Result<Self, KernelError> {
        let limit = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?
            .max(0) as usize;
        let sm_count = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?
            .max(1) as usize;
        let device = ctx.ordinal();
        let device_arch = crate::loader::device_arch(ctx)?;
        ctx.bind_to_thread()?;
        let mut tiles = AttentionChoices {
            limit,
            static_bytes: Default::default(),
            default: Default::default(),
            current: Default::default(),
            sm_count,
            forced_rows: AtomicUsize::new(0),
            fp8_decode: AtomicU32::new(fp8_decode_from_env()),
            device,
            device_arch,
        };
        for (t, &dtype) in KV_DTYPES.iter().enumerate() {
            for (i, &d) in SUPPORTED_HEAD_DIMS.iter().enumerate() {
                // (kt, rows, kernel) of every key tile and tile size.
                let funcs = PREFILL_KEY_TILES
                    .iter()
                    .flat_map(|&kt| PREFILL_TILE_ROWS.map(|rows| (kt, rows)))
                    .map(|(kt, rows)| {
                        let f = loaded.get(&prefill_kernel_name_rows(dtype, d, kt, rows))?;
                        Ok((kt, rows, f))
                    })
                    .collect::<Result<Vec<_>, KernelError>>()?;
                for (_, _, f) in &funcs {
                    let b =
                        f.get_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?;
                    tiles.static_bytes[t][i] = tiles.static_bytes[t][i].max(b.max(0) as usize);
                }
                let avail = tiles.avail(t, i);
                let last = PREFILL_KEY_TILES[PREFILL_KEY_TILES.len() - 1];
                tiles.default[t][i] =
                    default_key_tile(dtype, d, avail).ok_or_else(|| tiles.too_big(t, i, last))?;
                tiles.current[t][i].store(tiles.default[t][i], Ordering::Relaxed);
                for (kt, rows, f) in funcs {
                    // A key tile runs where its 128-row kernel fits (key_tile_fits), with
                    // either tile size; the 64-row kernel needs less.
                    if key_tile_fits(dtype, d, kt, avail) {
                        // Over the 48 KB default: allowed per function, up to the opt-in limit.
                        f.set_attribute(
                            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                            prefill_smem_bytes(dtype, d, kt, rows) as i32,
                        )?;
                    }
                }
            }
        }
        Ok(tiles)
    }

    /// Dynamic shared memory per block left to the prefill kernels of cache type
    /// `KV_DTYPES[t]` and head dim `SUPPORTED_HEAD_DIMS[i]`: the device's opt-in limit less
    /// their static shared memory.
    fn avail(&self, t: usize, i: usize) -> usize {
        self.limit.saturating_sub(self.static_bytes[t][i])
    }

    /// `Err` unless the prefill kernel of (`KV_DTYPES[t]`, `SUPPORTED_HEAD_DIMS[i]`) and `kt`
    /// keys fits.
    fn check_fits(&self, t: usize, i: usize, kt: usize) -> Result<(), KernelError> {
        if key_tile_fits(KV_DTYPES[t], SUPPORTED_HEAD_DIMS[i], kt, self.avail(t, i)) {
            Ok(())
        } else {
            Err(self.too_big(t, i, kt))
        }
    }

    fn too_big(&self, t: usize, i: usize, kt: usize) -> KernelError {
        let (dtype, d) = (KV_DTYPES[t], SUPPORTED_HEAD_DIMS[i]);
        KernelError::SharedMemory {
            kernel: prefill_kernel_name(dtype, d, kt),
            need: prefill_smem_bytes(dtype, d, kt, PREFILL_TILE) + self.static_bytes[t][i],
            device: self.device,
            arch: self.device_arch.clone(),
            limit: self.limit,
        }
    }

    fn index(head_dim: usize) -> Option<usize> {
        SUPPORTED_HEAD_DIMS.iter().position(|&d| d == head_dim)
    }
}

/// Mirrors `struct PrefillArgs` in prefill_attention.cu.
#[repr(C)]
#[derive(Clone, Copy)]
struct PrefillArgs {
    out: u64,
    qkv: u64,
    kc: u64,
    vc: u64,
    block_tables: u64,
    seq_info: u64,
    tiles: u64,
    qkv_stride: u32,
    h: u32,
    kvh: u32,
    block_size: u32,
    bt_stride: u32,
    num_blocks: u32,
    num_seqs: u32,
    bs_log2: u32,
    scale_log2: f32,
}

// SAFETY: as above.
unsafe impl DeviceRepr for PrefillArgs {}

/// Checks shared by both attention kernels; returns (group, num_blocks).
fn check_heads_and_cache(
    kernel: &'static str,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    cache_len: usize,
    v_len: usize,
) -> Result<(usize, usize), KernelError> {
    ensure(kernel, SUPPORTED_HEAD_DIMS.contains(&head_dim), || {
        format!("head_dim {head_dim} unsupported (64 or 128)")
    })?;
    ensure(
        kernel,
        num_kv_heads > 0 && num_heads.is_multiple_of(num_kv_heads),
        || format!("num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}"),
    )?;
    ensure(
        kernel,
        block_size.is_power_of_two() && (8..=MAX_BLOCK_SIZE).contains(&block_size),
        || format!("block_size {block_size} must be a power of two in 8..={MAX_BLOCK_SIZE}"),
    )?;
    let block_elems = num_kv_heads * block_size * head_dim;
    ensure(kernel, cache_len.is_multiple_of(block_elems), || {
        format!(
            "k_cache has {cache_len} elements, not a multiple of KVH*block_size*D = {block_elems}"
        )
    })?;
    expect_len(kernel, "v_cache", v_len, cache_len)?;
    Ok((num_heads / num_kv_heads, cache_len / block_elems))
}

fn check_qkv(
    kernel: &'static str,
    len: usize,
    stride: usize,
    q_width: usize,
) -> Result<usize, KernelError> {
    ensure(
        kernel,
        stride >= q_width && stride.is_multiple_of(8) && len.is_multiple_of(stride),
        || {
            format!(
                "qkv ({len} elements) with stride {stride}: stride must be a multiple of 8, >= H*D = {q_width}, and divide the length"
            )
        },
    )?;
    Ok(len / stride)
}

impl Kernels {
    /// The keys per K/V tile of the prefill kernel that runs at `head_dim` over a bf16 cache
    /// (`None` for an unsupported head dim): 64 where the device's shared memory per block
    /// allows it (sm_80, sm_90: 163 / 227 KB), else 32 (sm_86 / sm_89: 99 KB, too little for 64
    /// at D = 128).
    pub fn prefill_key_tile(&self, head_dim: usize) -> Option<usize> {
        self.prefill_key_tile_for(KvDtype::Bf16, head_dim)
    }

    /// [`Kernels::prefill_key_tile`] for a cache of `dtype` (an fp8 kernel has one bf16 K/V
    /// stage instead of two, plus `4 * kt * D` bytes of raw e4m3 tiles: a little less shared
    /// memory than a bf16 one, so the same key tiles).
    pub fn prefill_key_tile_for(&self, dtype: KvDtype, head_dim: usize) -> Option<usize> {
        AttentionChoices::index(head_dim)
            .map(|i| self.attention.current[dtype_index(dtype)][i].load(Ordering::Relaxed))
    }

    /// For tests and benchmarks: makes every head dim's prefill launches use `kt` keys a K/V
    /// tile (one of [`PREFILL_KEY_TILES`]), or with `None` the device's own choice again (see
    /// [`Kernels::prefill_key_tile`]), e.g. to run on an H100 what an L4 would. Takes effect
    /// for launches after it (a CUDA graph captured before keeps the kernel it captured).
    /// `Err(Shape)` for another `kt`, `Err(SharedMemory)` where a head dim's kernel of `kt` keys
    /// does not fit this device; either way nothing changes.
    pub fn set_prefill_key_tile(&self, kt: Option<usize>) -> Result<(), KernelError> {
        let p = &self.attention;
        let Some(kt) = kt else {
            for (cur, def) in p.current.iter().zip(&p.default) {
                for (cur, &kt) in cur.iter().zip(def) {
                    cur.store(kt, Ordering::Relaxed);
                }
            }
            return Ok(());
        };
        ensure(
            "set_prefill_key_tile",
            PREFILL_KEY_TILES.contains(&kt),
            || format!("{kt} keys a tile: one of {PREFILL_KEY_TILES:?}"),
        )?;
        for t in 0..KV_DTYPES.len() {
            for i in 0..SUPPORTED_HEAD_DIMS.len() {
                p.check_fits(t, i, kt)?;
            }
        }
        for cur in p.current.iter().flatten() {
            cur.store(kt, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Query rows a prefill tile for a step whose prefill chunks hold `prefill_tokens` rows in
    /// all over `num_heads` query heads: [`prefill_tile_rows`] with this device's SM count, or
    /// what [`Kernels::set_prefill_tile_rows`] forced. The tile list ([`prefill_tiles`]) and the
    /// launch ([`Kernels::paged_prefill_attention`]'s `tile_rows`) must both take this value.
    pub fn prefill_tile_rows(&self, prefill_tokens: usize, num_heads: usize) -> usize {
        match self.attention.forced_rows.load(Ordering::Relaxed) {
            0 => prefill_tile_rows(prefill_tokens, num_heads, self.attention.sm_count),
            rows => rows,
        }
    }

    /// The device's SM count, as [`Kernels::prefill_tile_rows`] uses it.
    pub fn sm_count(&self) -> usize {
        self.attention.sm_count
    }

    /// For tests and benchmarks: makes [`Kernels::prefill_tile_rows`] return `rows` (one of
    /// [`PREFILL_TILE_ROWS`]) for every step, or with `None` choose per step again. `Err(Shape)`
    /// for other rows (nothing changes). Only the choice changes: a launch runs the kernel of
    /// the `tile_rows` it is given.
    pub fn set_prefill_tile_rows(&self, rows: Option<usize>) -> Result<(), KernelError> {
        // `Some(0)` is refused like any other size without kernels: 0 is only how `None` (the
        // device's own rule) is stored.
        if let Some(r) = rows {
            ensure(
                "set_prefill_tile_rows",
                PREFILL_TILE_ROWS.contains(&r),
                || format!("{r} rows a tile: one of {PREFILL_TILE_ROWS:?}"),
            )?;
        }
        self.attention
            .forced_rows
            .store(rows.unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    /// The path decode attention over fp8 caches takes for its scores and P·V: `mma` (tensor
    /// cores, the default), `mma-half` or `cuda` (CUDA cores), see [`FP8_DECODE_PATHS`]; from
    /// `PAGEDSERVE_FP8_DECODE` at load, or [`Kernels::set_fp8_decode`].
    pub fn fp8_decode(&self) -> &'static str {
        let mode = self.attention.fp8_decode.load(Ordering::Relaxed);
        FP8_DECODE_PATHS
            .iter()
            .find(|&&(_, m)| m == mode)
            .map_or(FP8_DECODE_PATHS[0].0, |&(name, _)| name)
    }

    /// The names [`Kernels::set_fp8_decode`] takes, the default first.
    pub fn fp8_decode_paths() -> impl Iterator<Item = &'static str> {
        FP8_DECODE_PATHS.iter().map(|&(name, _)| name)
    }

    /// Picks the fp8 decode path (`mma`, `mma-half` or `cuda`) for this `Kernels`' later launches
    /// (benchmarks and tests compare them; a server takes `PAGEDSERVE_FP8_DECODE`'s). A captured
    /// CUDA graph keeps the path it was captured with.
    pub fn set_fp8_decode(&self, path: &str) -> Result<(), KernelError> {
        let mode = fp8_decode_mode(path).ok_or_else(|| {
            KernelError::shape(
                "set_fp8_decode",
                format!(
                    "{path:?}: the fp8 decode paths are {}",
                    Self::fp8_decode_paths().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        self.attention.fp8_decode.store(mode, Ordering::Relaxed);
        Ok(())
    }

    /// CTAs of decode kernel `name` the GPU holds at once (SMs × resident CTAs a SM), asked of
    /// the driver at the kernel's first launch and kept: eager steps launch it once a layer.
    fn decode_target_ctas(&self, name: &str, func: &CudaFunction) -> Result<u32, KernelError> {
        let mut known = self
            .decode_ctas
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(&n) = known.get(name) {
            return Ok(n);
        }
        let sms = self
            .ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let per_sm =
            func.occupancy_max_active_blocks_per_multiprocessor(DECODE_THREADS, 0, None)?;
        let n = (sms.max(1) as u32).saturating_mul(per_sm.max(1));
        known.insert(name.to_string(), n);
        Ok(n)
    }
    /// Paged decode attention for `S = q_rows.len()` sequences, one query row each: sequence s
    /// reads q from row `q_rows[s]` of `qkv` (row stride `qkv_stride`), attends to its first
    /// `ctx_lens[s]` cached tokens (0: padding, nothing written) through row s of
    /// `block_tables` i32 `[S, bt_stride]`, and writes row `q_rows[s]` of `out` bf16
    /// `[T, H*D]`. The launch shape depends only on S and `max_ctx` (lengths are clamped to it),
    /// so it can be captured in a CUDA graph and replayed with new lengths and tables.
    /// `workspace` needs `decode_workspace_len(S, H, D, max_ctx)` f32 elements, and its last
    /// `S * H` elements must be zero (bits) before the first launch (`alloc_zeros`): they hold
    /// the per-(sequence, KV head) counters of the in-kernel combine, which every launch leaves
    /// at zero again. Launches of different S may share one buffer sized for the largest S.
    #[allow(clippy::too_many_arguments)]
    pub fn paged_decode_attention<C: KvElem>(
        &self,
        stream: &CudaStream,
        out: &mut CudaViewMut<'_, bf16>,
        qkv: &CudaView<'_, bf16>,
        qkv_stride: usize,
        q_rows: &CudaView<'_, i32>,
        k_cache: &CudaView<'_, C>,
        v_cache: &CudaView<'_, C>,
        block_tables: &CudaView<'_, i32>,
        bt_stride: usize,
        ctx_lens: &CudaView<'_, i32>,
        workspace: &mut CudaViewMut<'_, f32>,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        block_size: usize,
        scale: f32,
        max_ctx: usize,
    ) -> Result<(), KernelError> {
        const K: &str = "paged_decode_attention";
        let (group, num_blocks) = check_heads_and_cache(
            K,
            num_heads,
            num_kv_heads,
            head_dim,
            block_size,
            k_cache.len(),
            v_cache.len(),
        )?;
        ensure(K, group <= MAX_GQA_GROUP, || {
            format!("H/KVH = {group} > {MAX_GQA_GROUP}")
        })?;
        let s = q_rows.len();
        expect_len(K, "ctx_lens", ctx_lens.len(), s)?;
        expect_len(K, "block_tables", block_tables.len(), s * bt_stride)?;
        let q_rows_avail = check_qkv(K, qkv.len(), qkv_stride, num_heads * head_dim)?;
        ensure(K, out.len() % (num_heads * head_dim) == 0, || {
            format!(
                "out has {} elements, not [T, H*D = {}]",
                out.len(),
                num_heads * head_dim
            )
        })?;
        ensure(K, max_ctx > 0, || "max_ctx must be > 0".into())?;
        let need = decode_workspace_len(s, num_heads, head_dim, max_ctx);
        ensure(K, workspace.len() >= need, || {
            format!("workspace has {} f32, needs {need}", workspace.len())
        })?;
        if s == 0 {
            return Ok(());
        }
        let part = decode_partition(s, max_ctx);
        let kernel = decode_kernel_name(C::DTYPE, head_dim, group, part);
        let parts = max_ctx.div_ceil(part);
        ensure(K, parts <= DECODE_MAX_PARTITIONS, || {
            format!(
                "max_ctx {max_ctx} needs {parts} partitions of {part}, at most {DECODE_MAX_PARTITIONS}"
            )
        })?;
        let func = self.func(&kernel)?;
        // The kernel splits short sequences until the launch's busy CTAs fill this (a device
        // constant, so graph replays stay valid).
        let target_ctas = self.decode_target_ctas(&kernel, func)?;
        let out_rows = (out.len() / (num_heads * head_dim)).min(q_rows_avail);
        let ws_len = workspace.len() as u64;
        let (o, _g0) = out.device_ptr_mut(stream);
        let (q, _g1) = qkv.device_ptr(stream);
        let (qr, _g2) = q_rows.device_ptr(stream);
        let (kc, _g3) = k_cache.device_ptr(stream);
        let (vc, _g4) = v_cache.device_ptr(stream);
        let (bt, _g5) = block_tables.device_ptr(stream);
        let (cl, _g6) = ctx_lens.device_ptr(stream);
        let (ws, _g7) = workspace.device_ptr_mut(stream);
        let args = DecodeArgs {
            out: o,
            qkv: q,
            q_rows: qr,
            kc,
            vc,
            block_tables: bt,
            ctx_lens: cl,
            ws,
            ws_len,
            qkv_stride: to_u32(K, "qkv_stride", qkv_stride)?,
            out_rows: to_u32(K, "out rows", out_rows)?,
            h: to_u32(K, "num_heads", num_heads)?,
            kvh: to_u32(K, "num_kv_heads", num_kv_heads)?,
            block_size: block_size as u32,
            bt_stride: to_u32(K, "bt_stride", bt_stride)?,
            num_blocks: to_u32(K, "num_blocks", num_blocks)?,
            max_ctx: to_u32(K, "max_ctx", max_ctx)?,
            bs_log2: block_size.trailing_zeros(),
            target_ctas,
            max_parts: to_u32(K, "partitions", parts)?,
            scale_log2: scale * std::f32::consts::LOG2_E,
            fp8_mma: match C::DTYPE {
                KvDtype::Fp8E4m3 => self.attention.fp8_decode.load(Ordering::Relaxed),
                KvDtype::Bf16 => 0,
            },
        };
        let mut b = self.dependent_launch_of(stream, func);
        b.arg(&args);
        let cfg = LaunchConfig {
            grid_dim: (
                to_u32(K, "num_seqs", s)?,
                num_kv_heads as u32,
                to_u32(
                    K,
                    "grid z",
                    decode_grid_z(s, num_kv_heads, parts, target_ctas),
                )?,
            ),
            block_dim: (DECODE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: sizes checked above (the workspace holds the partials and, at its end, the
        // counters); the kernel clamps lengths to max_ctx and the table width and maps
        // out-of-range block ids to block 0.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// Causal paged prefill attention over chunks: `seq_info` i32 `[S, 3]` holds
    /// `(row_start, num_rows, start_pos)` per sequence; query row j of sequence s is row
    /// `row_start + j` of `qkv`/`out`, sits at position `start_pos + j` and attends to cached
    /// keys `0..=start_pos + j` through row s of `block_tables`. `tiles` i32 `[num_tiles, 2]`
    /// comes from [`prefill_tiles`] (uploaded) with tiles of `tile_rows` query rows (128 or 64,
    /// from [`Kernels::prefill_tile_rows`]: the list and the launch must agree, or rows are left
    /// unwritten). The host must keep rows and positions within the buffers; the kernel clamps
    /// keys to the block-table width. Runs `paged_prefill_d{D}` (64 keys a step) or, where the
    /// device's shared memory is too small for it, `paged_prefill_d{D}_k32`
    /// ([`Kernels::prefill_key_tile`]), with `_m64` after the name for 64-row tiles: one CTA of
    /// `tile_rows` query rows (a tile) x one head.
    #[allow(clippy::too_many_arguments)]
    pub fn paged_prefill_attention<C: KvElem>(
        &self,
        stream: &CudaStream,
        out: &mut CudaViewMut<'_, bf16>,
        qkv: &CudaView<'_, bf16>,
        qkv_stride: usize,
        k_cache: &CudaView<'_, C>,
        v_cache: &CudaView<'_, C>,
        block_tables: &CudaView<'_, i32>,
        bt_stride: usize,
        seq_info: &CudaView<'_, i32>,
        tiles: &CudaView<'_, i32>,
        tile_rows: usize,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        block_size: usize,
        scale: f32,
    ) -> Result<(), KernelError> {
        const K: &str = "paged_prefill_attention";
        ensure(K, PREFILL_TILE_ROWS.contains(&tile_rows), || {
            format!("{tile_rows} rows a tile: one of {PREFILL_TILE_ROWS:?}")
        })?;
        let (_, num_blocks) = check_heads_and_cache(
            K,
            num_heads,
            num_kv_heads,
            head_dim,
            block_size,
            k_cache.len(),
            v_cache.len(),
        )?;
        ensure(K, seq_info.len() % 3 == 0, || {
            "seq_info must be [S, 3]".into()
        })?;
        ensure(K, tiles.len() % 2 == 0, || {
            "tiles must be [num_tiles, 2]".into()
        })?;
        let s = seq_info.len() / 3;
        expect_len(K, "block_tables", block_tables.len(), s * bt_stride)?;
        check_qkv(K, qkv.len(), qkv_stride, num_heads * head_dim)?;
        ensure(K, out.len() % (num_heads * head_dim) == 0, || {
            format!(
                "out has {} elements, not [T, H*D = {}]",
                out.len(),
                num_heads * head_dim
            )
        })?;
        let num_tiles = tiles.len() / 2;
        if num_tiles == 0 {
            return Ok(());
        }
        // One CTA a tile, heads along x (neighbours in launch order share K/V in L2).
        ensure(K, num_tiles <= 65_535, || {
            format!("{num_tiles} tiles: at most 65535 (the grid's y)")
        })?;
        let (o, _g0) = out.device_ptr_mut(stream);
        let (q, _g1) = qkv.device_ptr(stream);
        let (kc, _g3) = k_cache.device_ptr(stream);
        let (vc, _g4) = v_cache.device_ptr(stream);
        let (bt, _g5) = block_tables.device_ptr(stream);
        let (si, _g6) = seq_info.device_ptr(stream);
        let (ti, _g7) = tiles.device_ptr(stream);
        let args = PrefillArgs {
            out: o,
            qkv: q,
            kc,
            vc,
            block_tables: bt,
            seq_info: si,
            tiles: ti,
            qkv_stride: to_u32(K, "qkv_stride", qkv_stride)?,
            h: to_u32(K, "num_heads", num_heads)?,
            kvh: to_u32(K, "num_kv_heads", num_kv_heads)?,
            block_size: block_size as u32,
            bt_stride: to_u32(K, "bt_stride", bt_stride)?,
            num_blocks: to_u32(K, "num_blocks", num_blocks)?,
            num_seqs: to_u32(K, "num_seqs", s)?,
            bs_log2: block_size.trailing_zeros(),
            scale_log2: scale * std::f32::consts::LOG2_E,
        };
        // The kernel's shared memory allowance was raised at load (AttentionChoices::init).
        let kt = self
            .prefill_key_tile_for(C::DTYPE, head_dim)
            .ok_or_else(|| KernelError::shape(K, format!("head_dim {head_dim}")))?;
        let smem = prefill_smem_bytes(C::DTYPE, head_dim, kt, tile_rows) as u32;
        let func = self.func(&prefill_kernel_name_rows(C::DTYPE, head_dim, kt, tile_rows))?;
        let mut b = self.dependent_launch_of(stream, func);
        b.arg(&args);
        let cfg = LaunchConfig {
            grid_dim: (num_heads as u32, num_tiles as u32, 1),
            block_dim: (PREFILL_THREADS, 1, 1),
            shared_mem_bytes: smem,
        };
        // SAFETY: sizes checked above; see the doc comment for what the host guarantees.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_grid_z_caps_at_a_few_waves() {
        // An H100's 528 resident CTAs, Llama-3-8B's 8 KV heads.
        assert_eq!(decode_grid_z(1, 8, 128, 528), 128);
        assert_eq!(decode_grid_z(1, 8, 2048, 528), 4 * 66);
        assert_eq!(decode_grid_z(32, 8, 256, 528), 12);
        assert_eq!(decode_grid_z(128, 8, 16, 528), 4);
        assert_eq!(decode_grid_z(4096, 8, 1, 528), 1);
        assert_eq!(decode_grid_z(0, 8, 16, 528), 16);
    }

    /// The rows each tile of `tiles_of` covers, sorted, against every row of `info` once.
    fn assert_tiles_cover(info: &[[i32; 3]], tiles: &[[i32; 2]], m: usize) {
        let mut rows: Vec<(i32, i32)> = Vec::new();
        for &[s, j] in tiles {
            let [_, n, _] = info[s as usize];
            assert_eq!(j % m as i32, 0, "tile start {j} off the {m}-row grid");
            rows.extend((j..n.min(j + m as i32)).map(|r| (s, r)));
        }
        rows.sort_unstable();
        let want: Vec<(i32, i32)> = info
            .iter()
            .enumerate()
            .flat_map(|(s, &[_, n, _])| (0..n).map(move |r| (s as i32, r)))
            .collect();
        assert_eq!(rows, want, "{m}-row tiles");
    }

    /// Keys of the last row of each tile, in list order: nonincreasing (heaviest first).
    fn assert_heaviest_first(info: &[[i32; 3]], tiles: &[[i32; 2]], m: i32) {
        let keys: Vec<i32> = tiles
            .iter()
            .map(|&[s, j]| {
                let [_, n, start] = info[s as usize];
                start + n.min(j + m)
            })
            .collect();
        assert!(keys.windows(2).all(|w| w[0] >= w[1]), "{keys:?}");
    }

    #[test]
    fn prefill_tiles_cover_every_row_once_heaviest_first() {
        let info = [[0, 130, 0], [130, 1, 500], [131, 64, 10]];
        let tiles = prefill_tiles(&info, PREFILL_TILE);
        assert_tiles_cover(&info, &tiles, PREFILL_TILE);
        assert_heaviest_first(&info, &tiles, 128);
        assert_eq!(tiles.len(), 4);
        assert_eq!(
            tiles[0],
            [1, 0],
            "the 501-key tile of sequence 1 goes first"
        );
    }

    #[test]
    fn prefill_tiles_of_64_rows() {
        // Lengths off the 16- and 64-row grids, a 1-row chunk, later chunks.
        let info = [
            [0, 130, 0],
            [130, 1, 500],
            [131, 64, 10],
            [195, 65, 0],
            [260, 17, 3],
            [277, 63, 200],
            [340, 200, 0],
        ];
        let tiles = prefill_tiles(&info, PREFILL_TILE_SMALL);
        assert_tiles_cover(&info, &tiles, PREFILL_TILE_SMALL);
        assert_heaviest_first(&info, &tiles, 64);
        // ceil(rows / 64) each: 3 + 1 + 1 + 2 + 1 + 1 + 4.
        assert_eq!(tiles.len(), 13);
        assert_eq!(tiles[0], [1, 0], "501 keys");
        assert_eq!(tiles[1], [5, 0], "263 keys");
        // The 128-row list of the same step: ceil(rows / 128) each, at most half as many + 1 a
        // sequence.
        let big = prefill_tiles(&info, PREFILL_TILE);
        assert_tiles_cover(&info, &big, PREFILL_TILE);
        assert_eq!(big.len(), 2 + 1 + 1 + 1 + 1 + 1 + 2);
        assert!(prefill_tiles(&[], PREFILL_TILE_SMALL).is_empty());
    }

    #[test]
    #[should_panic(expected = "rows a prefill tile")]
    fn prefill_tiles_refuse_other_tile_sizes() {
        prefill_tiles(&[[0, 10, 0]], 32);
    }

    #[test]
    fn prefill_tile_rows_take_64_while_the_128_row_grid_is_one_cta_an_sm() {
        // H100: 132 SMs; Llama-3-8B: 32 query heads (16 a GPU with tensor parallelism 2).
        let (sms, h) = (132, 32);
        for tokens in [1, 2, 17, 63, 64, 65, 128, 150, 200, 450, 511, 512] {
            assert_eq!(prefill_tile_rows(tokens, h, sms), 64, "{tokens} tokens");
        }
        // 5 x 128 rows x 32 heads = 160 CTAs > 132: 128-row tiles.
        for tokens in [513, 640, 1024, 2048, 8192, 1 << 20] {
            assert_eq!(prefill_tile_rows(tokens, h, sms), 128, "{tokens} tokens");
        }
        // Fewer heads a GPU: more tokens before the 128-row grid covers the SMs.
        assert_eq!(prefill_tile_rows(1024, 16, sms), 64);
        assert_eq!(prefill_tile_rows(1152, 16, sms), 128);
        // A smaller GPU (L4: 58 SMs): one 128-row tile x 32 heads fits, two do not.
        assert_eq!(prefill_tile_rows(128, h, 58), 64);
        assert_eq!(prefill_tile_rows(129, h, 58), 128);
        // Exactly at the bound: 132 CTAs of 128 rows with 33 heads x 4 tiles.
        assert_eq!(prefill_tile_rows(512, 33, 132), 64);
        assert_eq!(prefill_tile_rows(513, 33, 132), 128);
        // Every choice is a tile size with kernels.
        for tokens in 0..3000 {
            assert!(PREFILL_TILE_ROWS.contains(&prefill_tile_rows(tokens, h, sms)));
        }
    }

    #[test]
    fn fp8_decode_paths_are_found_by_exact_name() {
        assert_eq!(fp8_decode_mode("mma"), Some(4));
        assert_eq!(fp8_decode_mode("mma-half"), Some(1));
        assert_eq!(fp8_decode_mode("cuda"), Some(0));
        assert_eq!(fp8_decode_mode("MMA"), None);
        assert_eq!(fp8_decode_mode(" mma"), None);
        assert_eq!(fp8_decode_mode("mma4"), None);
        // The default first: the GPU tests run every other one.
        let names: Vec<_> = Kernels::fp8_decode_paths().collect();
        assert_eq!(names, ["mma", "mma-half", "cuda"]);
    }

    #[test]
    fn prefill_kernel_names_carry_the_tile_rows() {
        let (b, f) = (KvDtype::Bf16, KvDtype::Fp8E4m3);
        assert_eq!(
            prefill_kernel_name_rows(b, 128, 64, 128),
            "paged_prefill_d128"
        );
        assert_eq!(
            prefill_kernel_name_rows(b, 128, 64, 64),
            "paged_prefill_d128_m64"
        );
        assert_eq!(
            prefill_kernel_name_rows(b, 64, 32, 64),
            "paged_prefill_d64_k32_m64"
        );
        assert_eq!(
            prefill_kernel_name_rows(f, 128, 32, 64),
            "paged_prefill_fp8_d128_k32_m64"
        );
        assert_eq!(
            prefill_kernel_name_rows(f, 64, 64, 128),
            prefill_kernel_name(f, 64, 64)
        );
    }

    #[test]
    fn prefill_constants_mirror_the_source() {
        let src = include_str!("../cuda/prefill_attention.cu");
        for line in [
            format!("#define PF_M {PREFILL_TILE}"),
            format!("#define PF_THREADS {PREFILL_THREADS}"),
            "#define PF_WARPS (PF_THREADS / 32)".to_string(),
        ] {
            assert!(
                src.lines().any(|l| l.trim() == line),
                "{line} not in the source"
            );
        }
        assert!(src.contains(&format!("#define PF_BT_SMEM {PREFILL_BT_SMEM} ")));
        // Each kernel name instantiates its head dim, key tile and cache type (`true`: fp8);
        // the 64-row ones MT = 1 (rows = 64 MT: PfSmem's M = PF_WARPS x 16 x MT), the 128-row
        // ones the default MT = 2.
        assert_eq!(PREFILL_THREADS as usize / 32 * 16 * 2, PREFILL_TILE);
        assert_eq!(PREFILL_THREADS as usize / 32 * 16, PREFILL_TILE_SMALL);
        assert!(
            src.lines().any(|l| l.trim()
                == "static constexpr int M = PF_WARPS * 16 * MT;  // query rows a tile")
        );
        for dtype in KV_DTYPES {
            let fp8 = match dtype {
                KvDtype::Bf16 => "",
                KvDtype::Fp8E4m3 => ", true",
            };
            for d in SUPPORTED_HEAD_DIMS {
                for kt in PREFILL_KEY_TILES {
                    for rows in PREFILL_TILE_ROWS {
                        let name = prefill_kernel_name_rows(dtype, d, kt, rows);
                        let def = src
                            .split(&format!(" {name}(PrefillArgs a) {{"))
                            .nth(1)
                            .unwrap_or_else(|| panic!("{name} not in the source"));
                        let body = def.split('}').next().unwrap_or_default();
                        let args = match (rows, dtype) {
                            (PREFILL_TILE, _) => format!("{d}, {kt}{fp8}"),
                            (_, KvDtype::Bf16) => format!("{d}, {kt}, false, {}", rows / 64),
                            (_, KvDtype::Fp8E4m3) => format!("{d}, {kt}, true, {}", rows / 64),
                        };
                        assert_eq!(body.trim(), format!("prefill_impl<{args}>(a);"), "{name}");
                    }
                }
            }
        }
        // The bf16 K/V stages (two, one for FP8) and the fp8 kernels' raw e4m3 stages: PfSmem
        // adds 4 * KT * D bytes for FP8, after the block ids.
        for line in [
            "static constexpr int ST = FP8 ? 1 : 2;",
            "static constexpr int RAW = (Q + 2 * ST * KV) * 2 + PF_BT_SMEM * 4;",
            "static constexpr int RAW_KV = KT * D;",
            "static constexpr int BYTES = RAW + (FP8 ? 4 * RAW_KV : 0);",
        ] {
            assert!(
                src.lines().any(|l| l.trim().starts_with(line)),
                "{line} not in the source"
            );
        }
        // Q is the only part PfSmem sizes by MT.
        assert!(
            src.lines()
                .any(|l| l.trim() == "static constexpr int Q = M * LDS;")
        );
        // 106 KB for D = 128: two CTAs fit an H100 SM (228 KB), none an sm_86 / sm_89 block
        // (99 KB opt-in); 72 KB with 32-key tiles.
        let b = KvDtype::Bf16;
        assert_eq!(prefill_smem_bytes(b, 128, 64, 128), 108_544);
        assert_eq!(prefill_smem_bytes(b, 64, 64, 128), 59_392);
        assert_eq!(prefill_smem_bytes(b, 128, 32, 128), 73_728);
        assert_eq!(prefill_smem_bytes(b, 64, 32, 128), 40_960);
        // 64 rows: 64 x (D + 8) x 2 bytes less Q. At D = 128, KT = 64: 91,136 B, still two CTAs
        // an H100 SM (and within a 99 KB card's limit, though those run KT = 32).
        for (d, kt) in [(128, 64), (64, 64), (128, 32), (64, 32)] {
            assert_eq!(
                prefill_smem_bytes(b, d, kt, 64),
                prefill_smem_bytes(b, d, kt, 128) - 64 * (d + 8) * 2
            );
        }
        assert_eq!(prefill_smem_bytes(b, 128, 64, 64), 91_136);
        assert_eq!(prefill_smem_bytes(b, 128, 32, 64), 56_320);
        assert!(2 * (prefill_smem_bytes(b, 128, 64, 64) + 1024) <= 233_472);
        assert_eq!(
            prefill_kernel_name(KvDtype::Bf16, 128, 64),
            "paged_prefill_d128"
        );
        assert_eq!(
            prefill_kernel_name(KvDtype::Bf16, 64, 32),
            "paged_prefill_d64_k32"
        );
        // fp8: one bf16 K/V stage (less 2 x kt x (D + 8) x 2 bytes) plus the raw e4m3 stages
        // (4 x kt x D): 104 KB for D = 128, so two CTAs an H100 SM (210 KB with the 1 KB each
        // reserves, of 228 KB), as with a bf16 cache.
        let f = KvDtype::Fp8E4m3;
        assert_eq!(prefill_smem_bytes(f, 128, 64, 128), 106_496);
        assert_eq!(
            prefill_smem_bytes(f, 128, 64, 128),
            108_544 - 2 * 64 * 136 * 2 + 4 * 64 * 128
        );
        assert!(2 * (prefill_smem_bytes(f, 128, 64, 128) + 1024) <= 233_472);
        assert_eq!(prefill_smem_bytes(f, 64, 64, 128), 57_344);
        assert_eq!(prefill_smem_bytes(f, 128, 32, 128), 72_704);
        assert_eq!(prefill_smem_bytes(f, 64, 32, 128), 39_936);
        // fp8, 64 rows: 89,088 B at D = 128, KT = 64.
        assert_eq!(prefill_smem_bytes(f, 128, 64, 64), 89_088);
        assert_eq!(prefill_smem_bytes(f, 128, 32, 64), 55_296);
        assert_eq!(prefill_smem_bytes(f, 64, 64, 64), 48_128);
        assert_eq!(prefill_smem_bytes(f, 64, 32, 64), 30_720);
        assert_eq!(prefill_kernel_name(f, 64, 64), "paged_prefill_fp8_d64");
    }

    #[test]
    fn prefill_key_tile_follows_the_shared_memory_limit() {
        // Opt-in bytes per block: H100 227 KB, A100 163 KB, sm_86 / sm_89 99 KB.
        for limit in [232_448, 166_912] {
            assert_eq!(default_key_tile(KvDtype::Bf16, 128, limit), Some(64));
            assert_eq!(default_key_tile(KvDtype::Bf16, 64, limit), Some(64));
        }
        assert_eq!(default_key_tile(KvDtype::Bf16, 128, 101_376), Some(32));
        assert_eq!(default_key_tile(KvDtype::Bf16, 64, 101_376), Some(64));
        assert_eq!(default_key_tile(KvDtype::Bf16, 128, 108_544), Some(64));
        assert_eq!(default_key_tile(KvDtype::Bf16, 128, 108_543), Some(32));
        assert_eq!(default_key_tile(KvDtype::Bf16, 64, 49_152), Some(32));
        assert_eq!(default_key_tile(KvDtype::Bf16, 128, 73_727), None);
        // fp8: one bf16 K/V stage plus the raw e4m3 stages (4 x kt x D bytes), 106,496 B at
        // D = 128: 64 keys on an H100 or A100; on a 99 KB card (101,376 B) still past the limit,
        // so 32 keys (72,704 B) there, and 64 at D = 64 (57,344 B), as with a bf16 cache.
        let f = KvDtype::Fp8E4m3;
        assert_eq!(prefill_smem_bytes(f, 128, 64, 128), 106_496);
        for limit in [232_448, 166_912] {
            assert_eq!(default_key_tile(f, 128, limit), Some(64));
            assert_eq!(default_key_tile(f, 64, limit), Some(64));
        }
        assert_eq!(default_key_tile(f, 128, 101_376), Some(32));
        assert_eq!(default_key_tile(f, 64, 101_376), Some(64));
        assert_eq!(default_key_tile(f, 128, 106_496), Some(64));
        assert_eq!(default_key_tile(f, 128, 106_495), Some(32));
        assert_eq!(default_key_tile(f, 128, 72_703), None);
        assert_eq!(
            prefill_kernel_name(f, 128, 32),
            "paged_prefill_fp8_d128_k32"
        );
        assert_eq!(
            decode_kernel_name(f, 128, 4, 256),
            "paged_decode_fp8_d128_g4_p256"
        );
    }

    #[test]
    fn workspace_counts_partitions_and_counters() {
        // Partials of (S, H, slots, D + 2) plus S * H counter words.
        assert_eq!(decode_workspace_len(2, 4, 64, 1), 2 * 4 * 66 + 2 * 4);
        // Batch 1: 64-token partitions.
        assert_eq!(decode_workspace_len(1, 1, 128, 257), 5 * 130 + 1);
        // 64 sequences take 256-token partitions (2 slots), but 31 sequences of 64-token ones
        // (5 slots) need more: the workspace covers every batch size up to S.
        assert_eq!(decode_workspace_len(64, 1, 128, 257), 31 * 5 * 130 + 64);
        assert_eq!(decode_workspace_len(128, 1, 128, 1025), 128 * 3 * 130 + 128);
    }

    #[test]
    fn workspace_fits_every_smaller_batch() {
        for max_ctx in [1usize, 100, 257, 1025, 4096, 8192, 131_072] {
            let partials =
                |s: usize| s * 32 * max_ctx.div_ceil(decode_partition(s, max_ctx)) * (128 + 2);
            let mut prev = 0;
            for s in 1..=300 {
                let len = decode_workspace_len(s, 32, 128, max_ctx);
                assert!(len >= prev, "max_ctx {max_ctx}: shrinks at S = {s}");
                prev = len;
                // A buffer for S holds the partials of any S' <= S below the counters of S.
                let most = (1..=s).map(partials).max().unwrap_or(0);
                assert_eq!(len, most + s * 32, "max_ctx {max_ctx}, S = {s}");
            }
        }
    }
}
