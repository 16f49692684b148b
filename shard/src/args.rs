//! Command-line arguments of `pagedserve-shard`.

use crate::engine::{EngineConfig, PrefillPolicy, SchedulePolicy};
use crate::model::{GpuOptions, KvCacheDtype, LoadOptions};
use clap::Parser;
use clap::builder::RangedU64ValueParser;
use std::path::PathBuf;

fn at_least_one() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::<usize>::new().range(1..)
}

/// `auto`: GPU `shard_id` modulo the GPUs found, else the CPU.
fn auto_device(shard_id: usize) -> String {
    match crate::backend::cuda::cuda_device_count() {
        Ok(n) if n > 0 => format!("cuda:{}", shard_id % n),
        _ => "cpu".into(),
    }
}

/// The CPU's default step budget (`--max-batch-tokens`): ShareGPT at 3 requests/s on 2 cores
/// (docs/perf.md, 07:50 UTC): median TTFT 763 ms and 190 output tok/s at 256, 1,128 ms and
/// 180 at 512, 1,707 ms and 184 at 1,024.
const CPU_MAX_BATCH_TOKENS: usize = 256;

fn utilization(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!("must be a number in (0, 1], got {s}")),
    }
}

/// One model replica on one device, served over gRPC (`proto/shard.proto`).
#[derive(Debug, Clone, Parser)]
#[command(name = "pagedserve-shard", version, about)]
pub struct Args {
    /// The model: a `.gguf` file, or a HF model directory (config.json, safetensors; the
    /// launcher resolves hub ids and the HF cache to such a directory).
    #[arg(long)]
    pub model: PathBuf,
    /// Model name reported by `Info` (default: the file stem).
    #[arg(long)]
    pub served_model_name: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 50051)]
    pub port: u16,
    #[arg(long, default_value_t = 0)]
    pub shard_id: u32,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16, value_parser = at_least_one())]
    pub block_size: usize,
    /// Exact number of KV blocks (overrides --kv-cache-memory-mb).
    #[arg(long, value_parser = at_least_one())]
    pub num_kv_blocks: Option<usize>,
    /// KV cache memory budget when --num-kv-blocks is not given.
    #[arg(long, default_value_t = 1024, value_parser = at_least_one())]
    pub kv_cache_memory_mb: usize,
    /// Longest sequence served, prompt and generated tokens together (vLLM's flag, same
    /// meaning); default: the model's own context (GGUF `llama.context_length`, HF
    /// `max_position_embeddings`). Applied to the model's config before anything is sized from
    /// it, so it also bounds the RoPE table, block tables and (CUDA) decode workspace; `Info`
    /// reports it. More than the model's own context is refused at start. A KV cache too small
    /// for one sequence this long caps sequences at what it holds, with a warning at start
    /// (vLLM refuses to start there).
    #[arg(long, value_parser = at_least_one())]
    pub max_model_len: Option<usize>,
    /// What the KV cache stores (vLLM's flag and names): `auto` (the model's dtype: bf16 on
    /// CUDA), `bf16`/`bfloat16`, or `fp8`/`fp8_e4m3` (e4m3 with a scale of 1.0, as vLLM without
    /// calibrated scales: half the bytes a token, so twice the KV blocks in the same memory;
    /// slightly different outputs). `fp8_e5m2` is refused. fp8 is CUDA only: the CPU backend's
    /// cache is f32, so a CPU shard refuses fp8 at start (and serves bf16 as auto, warning).
    #[arg(long, default_value = "auto")]
    pub kv_cache_dtype: KvCacheDtype,
    /// Per-step token budget (prefill chunk tokens + decode tokens); default 2048 on a GPU,
    /// 256 on the CPU, where a 2,048-token step takes seconds and stalls every running stream.
    #[arg(long, value_parser = at_least_one())]
    pub max_batch_tokens: Option<usize>,
    /// Most sequences in the running batch.
    #[arg(long, default_value_t = 256, value_parser = at_least_one())]
    pub max_num_seqs: usize,
    /// Order in which waiting requests are admitted: `fcfs` (first come, first served; vLLM's
    /// and SGLang's default) or `lof` (longest output first, SGLang's policy for offline
    /// throughput: the request with the most tokens left to generate, by its `max_tokens`,
    /// goes first; short requests wait behind long ones) or `lof-paced` (`lof`, and each step's
    /// token budget paced to the queue: the rows left over the steps the longest answer still
    /// needs, at least 256, at most `--max-batch-tokens`). Also `--schedule-policy` (SGLang).
    #[arg(long, visible_alias = "schedule-policy", default_value = "fcfs",
          value_parser = ["fcfs", "lof", "lof-paced"])]
    pub scheduling_policy: String,
    /// CPU compute threads (default: every core). The launcher gives each of N shards cores / N.
    #[arg(long, env = "PAGEDSERVE_THREADS", value_parser = at_least_one())]
    pub threads: Option<usize>,
    /// "cpu", "cuda" (the first GPU), "cuda:N", or "auto" (the first GPU when a CUDA driver
    /// and a GPU are found, else the CPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Share of the GPU's memory the shard may use (weights, buffers and KV cache); the KV cache
    /// gets what is left when --num-kv-blocks is not given. CUDA only.
    #[arg(long, default_value_t = 0.9, value_parser = utilization)]
    pub gpu_memory_utilization: f32,
    /// `auto` reads the model file's weights; `dummy` draws random weights of --model-shape on
    /// the device (for benchmarks, like vLLM's dummy load format). CUDA only.
    #[arg(long, default_value = "auto", value_parser = ["auto", "dummy"])]
    pub load_format: String,
    /// Shape of the dummy weights.
    #[arg(long, value_parser = ["llama3-8b", "mistral-7b", "smollm2-135m"])]
    pub model_shape: Option<String>,
    /// Run every step without CUDA graphs (debugging).
    #[arg(long)]
    pub enforce_eager: bool,
    /// On SIGTERM/SIGINT, how long running sequences may finish before the shard exits
    /// (a second signal exits at once).
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
    /// Tensor parallelism: GPUs (shard processes) in this shard's group, each holding a slice
    /// of every layer. CUDA only; the launcher's --tensor-parallel-size sets it.
    #[arg(long, default_value_t = 1, value_parser = at_least_one())]
    pub tp_size: usize,
    /// This process's rank in its group: 0 serves gRPC and runs the engine, the others follow.
    #[arg(long, default_value_t = 0)]
    pub tp_rank: usize,
    /// HOST:PORT rank 0 listens on for its followers (needed when --tp-size > 1).
    #[arg(long)]
    pub tp_addr: Option<String>,
    /// Automatic prefix caching, on by default as in vLLM V1 (this flag only confirms it): full
    /// KV blocks of earlier requests, prompts and answers, stay cached after they finish, and a
    /// later request whose tokens start with the same blocks reuses them instead of recomputing
    /// them; least recently used blocks are evicted when blocks run short. Of this pair, the
    /// last one given wins (either may repeat, as with vLLM's argparse flag).
    #[arg(long, overrides_with_all = ["enable_prefix_caching", "no_enable_prefix_caching"])]
    pub enable_prefix_caching: bool,
    /// Turn automatic prefix caching off: every prompt is computed in full and nothing is kept
    /// for later requests.
    #[arg(long, overrides_with_all = ["enable_prefix_caching", "no_enable_prefix_caching"])]
    pub no_enable_prefix_caching: bool,
    /// Overlapped steps on GPUs, on by default (this flag only confirms it): the shard schedules
    /// and launches step n+1 while the GPU still runs step n, so the GPU does not wait for the
    /// host between steps (vLLM's `--async-scheduling`). Steps are synchronous anyway while a
    /// queued request needs the host's sampler (penalties, logprobs, min_p), and on the CPU and
    /// with tensor parallelism. Of this pair, the last one given wins.
    #[arg(long, overrides_with_all = ["async_scheduling", "no_async_scheduling"])]
    pub async_scheduling: bool,
    /// Turn overlapped steps off: each step waits for the last one's tokens (for comparison).
    #[arg(long, overrides_with_all = ["async_scheduling", "no_async_scheduling"])]
    pub no_async_scheduling: bool,
}

impl Args {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            model_path: self.model.clone(),
            served_model_name: self.served_model_name.clone(),
            block_size: self.block_size,
            num_kv_blocks: self.num_kv_blocks,
            kv_cache_bytes: self.kv_cache_memory_mb.saturating_mul(1 << 20),
            max_model_len: self.max_model_len,
            kv_cache_dtype: self.kv_cache_dtype,
            device: match self.device.as_str() {
                "auto" => auto_device(self.shard_id as usize),
                d => d.to_string(),
            },
            gpu: GpuOptions {
                memory_utilization: self.gpu_memory_utilization,
                max_batch_tokens: self.max_batch_tokens(),
                max_num_seqs: self.max_num_seqs,
                dummy_shape: match self.load_format.as_str() {
                    "dummy" => Some(
                        self.model_shape
                            .clone()
                            .unwrap_or_else(|| "llama3-8b".to_string()),
                    ),
                    _ => None,
                },
                enforce_eager: self.enforce_eager,
                async_scheduling: !self.no_async_scheduling,
                kernel_cache_dir: std::env::var_os("PAGEDSERVE_CACHE")
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME")
                            .map(|h| PathBuf::from(h).join(".cache").join("pagedserve"))
                    })
                    .map(|c| c.join("kernels")),
            },
        }
    }

    /// The tensor-parallel group this process belongs to.
    pub fn tp_config(&self) -> crate::backend::cuda::TpConfig {
        crate::backend::cuda::TpConfig {
            size: self.tp_size,
            rank: self.tp_rank,
            addr: self.tp_addr.clone(),
            ..crate::backend::cuda::TpConfig::single()
        }
    }

    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            max_batch_tokens: self.max_batch_tokens(),
            max_num_seqs: self.max_num_seqs,
            prefill_policy: match self.on_cpu() {
                true => PrefillPolicy::Shared,
                false => PrefillPolicy::Fifo,
            },
            schedule_policy: match self.scheduling_policy.as_str() {
                "lof" => SchedulePolicy::Lof,
                "lof-paced" => SchedulePolicy::LofPaced,
                _ => SchedulePolicy::Fcfs,
            },
            prefix_caching: self.prefix_caching(),
        }
    }

    /// `--max-batch-tokens`, or the default of the device this shard runs on.
    pub fn max_batch_tokens(&self) -> usize {
        self.max_batch_tokens.unwrap_or(match self.on_cpu() {
            true => CPU_MAX_BATCH_TOKENS,
            false => 2048,
        })
    }

    /// Automatic prefix caching: on unless `--no-enable-prefix-caching` is the last of the
    /// pair given (clap keeps only the last, like vLLM's argparse `BooleanOptionalAction`).
    pub fn prefix_caching(&self) -> bool {
        !self.no_enable_prefix_caching
    }

    /// Whether this shard computes on the CPU (`--device cpu`, or `auto` without a GPU).
    fn on_cpu(&self) -> bool {
        match self.device.as_str() {
            "cpu" => true,
            "auto" => auto_device(self.shard_id as usize) == "cpu",
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        let argv = ["pagedserve-shard", "--model", "m.gguf"];
        Args::try_parse_from(argv.iter().chain(extra))
    }

    #[test]
    fn defaults() {
        let args = parse(&[]).expect("parses");
        let opts = args.load_options();
        assert_eq!((args.host.as_str(), args.port), ("127.0.0.1", 50051));
        assert_eq!(opts.block_size, 16);
        assert_eq!(opts.num_kv_blocks, None);
        assert_eq!(opts.kv_cache_bytes, 1024 << 20);
        assert_eq!(opts.device, "cpu");
        assert_eq!(opts.max_model_len, None, "the model's own context");
        let config = args.engine_config();
        assert_eq!((config.max_batch_tokens, config.max_num_seqs), (256, 256));
        assert_eq!(config.prefill_policy, PrefillPolicy::Shared);
        let gpu = parse(&["--device", "cuda"]).expect("parses");
        assert_eq!(gpu.engine_config().max_batch_tokens, 2048);
        assert_eq!(gpu.load_options().gpu.max_batch_tokens, 2048);
        let small_gpu = parse(&["--device", "cuda", "--max-batch-tokens", "512"]).expect("parses");
        assert_eq!(
            small_gpu.engine_config().prefill_policy,
            PrefillPolicy::Fifo,
            "the policy follows the device, not the budget"
        );
        let set = parse(&["--max-batch-tokens", "64"]).expect("parses");
        assert_eq!(set.engine_config().max_batch_tokens, 64);
    }

    #[test]
    fn scheduling_policy() {
        let default = parse(&[]).expect("parses").engine_config();
        assert_eq!(default.schedule_policy, SchedulePolicy::Fcfs);
        for flag in ["--scheduling-policy", "--schedule-policy"] {
            let lof = parse(&[flag, "lof"]).expect("parses");
            assert_eq!(lof.engine_config().schedule_policy, SchedulePolicy::Lof);
        }
        let paced = parse(&["--scheduling-policy", "lof-paced"]).expect("parses");
        assert_eq!(
            paced.engine_config().schedule_policy,
            SchedulePolicy::LofPaced
        );
        assert!(parse(&["--scheduling-policy", "priority"]).is_err());
    }

    #[test]
    fn overrides() {
        let args =
            parse(&["--num-kv-blocks", "12", "--block-size", "8", "--port", "7"]).expect("parses");
        assert_eq!(args.load_options().num_kv_blocks, Some(12));
        assert_eq!(args.block_size, 8);
        assert_eq!(args.port, 7);
        let capped = parse(&["--max-model-len", "8192"]).expect("parses");
        assert_eq!(capped.load_options().max_model_len, Some(8192));
        let dummy =
            parse(&["--load-format", "dummy", "--model-shape", "mistral-7b"]).expect("parses");
        let gpu = dummy.load_options().gpu;
        assert_eq!(gpu.dummy_shape.as_deref(), Some("mistral-7b"));
        assert_eq!(gpu.memory_utilization, 0.9);
        let tp = parse(&[
            "--tp-size",
            "2",
            "--tp-rank",
            "1",
            "--tp-addr",
            "127.0.0.1:9",
        ])
        .expect("parses")
        .tp_config();
        assert_eq!(
            (tp.size, tp.rank, tp.addr.as_deref()),
            (2, 1, Some("127.0.0.1:9"))
        );
        assert_eq!(parse(&[]).expect("parses").tp_config().size, 1);
    }

    /// The flag goes through the shared parser (pagedserve_proto::kv_cache_dtype, where vLLM's
    /// names and the refusals are tested).
    #[test]
    fn kv_cache_dtype_binds_the_shared_parser() {
        let dtype = |extra: &[&str]| parse(extra).expect("parses").load_options().kv_cache_dtype;
        assert_eq!(
            dtype(&[]),
            KvCacheDtype::Auto,
            "the model's dtype by default"
        );
        assert_eq!(dtype(&["--kv-cache-dtype", "fp8"]), KvCacheDtype::Fp8E4m3);
        let err = parse(&["--kv-cache-dtype", "fp8_e5m2"])
            .expect_err("e5m2")
            .to_string();
        assert!(err.contains("e4m3 only"), "{err}");
    }

    #[test]
    fn prefix_caching_is_on_unless_turned_off() {
        let on = |extra: &[&str]| parse(extra).expect("parses").engine_config().prefix_caching;
        assert!(on(&[]), "on by default, as in vLLM V1");
        assert!(on(&["--enable-prefix-caching"]));
        assert!(!on(&["--no-enable-prefix-caching"]));
        // The last of the pair wins, as with vLLM's argparse flag.
        assert!(on(&[
            "--no-enable-prefix-caching",
            "--enable-prefix-caching"
        ]));
        assert!(!on(&[
            "--enable-prefix-caching",
            "--no-enable-prefix-caching"
        ]));
        assert!(!on(&[
            "--no-enable-prefix-caching",
            "--no-enable-prefix-caching"
        ]));
        assert!(parse(&["--enable-prefix-caching", "false"]).is_err());
    }

    #[test]
    fn async_scheduling_is_on_unless_turned_off() {
        let on = |extra: &[&str]| {
            let args = parse(extra).expect("parses");
            args.load_options().gpu.async_scheduling
        };
        assert!(on(&[]), "on by default, as in vLLM");
        assert!(on(&["--async-scheduling"]));
        assert!(!on(&["--no-async-scheduling"]));
        assert!(on(&["--no-async-scheduling", "--async-scheduling"]));
        assert!(!on(&["--async-scheduling", "--no-async-scheduling"]));
    }

    #[test]
    fn rejects_zero_and_missing_model() {
        assert!(parse(&["--block-size", "0"]).is_err());
        assert!(parse(&["--max-batch-tokens", "0"]).is_err());
        assert!(parse(&["--max-model-len", "0"]).is_err());
        assert!(parse(&["--gpu-memory-utilization", "1.5"]).is_err());
        assert!(parse(&["--load-format", "pt"]).is_err());
        assert!(parse(&["--tp-size", "0"]).is_err());
        assert!(Args::try_parse_from(["pagedserve-shard"]).is_err());
    }
}
