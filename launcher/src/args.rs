//! Command line: `pagedserve [serve] [OPTIONS]`, with env fallbacks.
//!
//! `serve` is the default subcommand, so `pagedserve --port 8000` serves; `bench` is the
//! load generator; `download` prefetches a model into the HF cache.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Upper bound of the timeout flags (a year: "forever" in practice). Deadlines are
/// `now + timeout`, and std's `Instant` addition panics on overflow: a value like
/// u64::MAX, given to mean "never", crashed the launcher (and each shard on SIGTERM).
pub const MAX_TIMEOUT_SECS: u64 = 365 * 24 * 3600;

#[derive(Debug, Parser)]
#[command(
    name = "pagedserve",
    version,
    about = "OpenAI-compatible LLM server: one router, N shards"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl Cli {
    /// The subcommand to run; no subcommand means `serve` with the top-level flags.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.serve))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the shards and the router and watch them (the default).
    Serve(ServeArgs),
    /// Load an OpenAI-compatible server and report vLLM-comparable latency and throughput.
    Bench(crate::bench::BenchArgs),
    /// Fetch a model into the HF cache (or the default model into $PAGEDSERVE_CACHE) without
    /// serving it; prints the path `serve` will load.
    Download(DownloadArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DownloadArgs {
    /// A hub id (`org/name`); absent: the embedded default model.
    #[arg(env = "MODEL_NAME")]
    pub model: Option<String>,

    /// Branch, tag or commit of the hub repo.
    #[arg(long, env = "REVISION")]
    pub revision: Option<String>,

    /// Hugging Face token for gated or private repos (else the token file of `huggingface-cli
    /// login`).
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    pub hf_token: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A hub id (`mistralai/Mistral-7B-Instruct-v0.2`, found in the HF cache or downloaded
    /// into it), a local HF model directory, or a .gguf file. Absent: the embedded default
    /// model (SmolLM2-135M-Instruct Q4_1), fetched into $PAGEDSERVE_CACHE on first use.
    #[arg(long, env = "MODEL_NAME")]
    pub model: Option<String>,

    /// Branch, tag or commit of a hub model (default `main`).
    #[arg(long, env = "REVISION")]
    pub revision: Option<String>,

    /// Model name clients must send in `model`; default: the hub id, the directory's name or
    /// the .gguf file's stem.
    #[arg(long, env = "SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,

    /// Address the HTTP API listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,

    /// Port of the HTTP API.
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,

    /// Require `Authorization: Bearer <key>` on every /v1 route.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Hugging Face token for gated or private hub repos (else the token file of
    /// `huggingface-cli login`).
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    pub hf_token: Option<String>,

    /// Number of shard processes (model replicas; with `--device cuda`, one GPU each). Also
    /// `--data-parallel-size`, vLLM's name for the same.
    #[arg(
        long,
        visible_alias = "data-parallel-size",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=256)
    )]
    pub num_shards: u16,

    /// GPUs each replica is split over (Megatron tensor parallelism, NCCL all-reduce; needs
    /// `--device cuda` and libnccl.so.2). With `--data-parallel-size D`, T x D GPUs: replica d's
    /// rank r runs on GPU d*T + r.
    #[arg(
        long,
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=64)
    )]
    pub tensor_parallel_size: u16,

    /// First shard's gRPC port; shard i listens on base + i. Default: free ports picked for you.
    #[arg(long)]
    pub shard_base_port: Option<u16>,

    /// Device of the shards: `cpu`; `cuda` (shard i on GPU i, one shard per GPU); `cuda:N`
    /// (every shard on GPU N); `auto` (GPUs when a CUDA driver and GPUs are found, else the CPU).
    #[arg(long, env = "PAGEDSERVE_DEVICE", default_value = "cpu")]
    pub device: String,

    /// Share of each GPU's memory a shard may use; the KV cache gets what weights and buffers
    /// leave. CUDA only.
    #[arg(long)]
    pub gpu_memory_utilization: Option<f32>,

    /// `auto` reads the model's weights; `dummy` draws random weights of --model-shape on the
    /// GPU (benchmarks without a checkpoint; the model file still gives the tokenizer).
    #[arg(long)]
    pub load_format: Option<String>,

    /// Shape of dummy weights: llama3-8b, mistral-7b, smollm2-135m.
    #[arg(long)]
    pub model_shape: Option<String>,

    /// Run the shards without CUDA graphs (debugging).
    #[arg(long)]
    pub enforce_eager: bool,

    /// KV blocks per shard (overrides --kv-cache-memory-mb). Also
    /// `--num-gpu-blocks-override`, vLLM's name for the same.
    #[arg(long, visible_alias = "num-gpu-blocks-override")]
    pub num_kv_blocks: Option<u32>,

    /// KV cache budget per shard, in MiB.
    #[arg(long)]
    pub kv_cache_memory_mb: Option<u64>,

    /// Tokens per KV block.
    #[arg(long)]
    pub block_size: Option<u32>,

    /// Per-step token budget of each shard's engine. Also `--max-num-batched-tokens`, vLLM's
    /// name for the same.
    #[arg(long, visible_alias = "max-num-batched-tokens")]
    pub max_batch_tokens: Option<u32>,

    /// Longest sequence served, prompt and generated tokens together, as vLLM's
    /// `--max-model-len`; default: the model's own context (GGUF `llama.context_length`, HF
    /// `max_position_embeddings`). Bounds memory and latency: every shard sizes its buffers
    /// from it, `/v1/models` reports it, and longer prompts get a 400. More than the model's
    /// own context is refused at start. Where a shard's KV cache cannot hold one sequence this
    /// long, the shard caps sequences at what it holds and warns at start (vLLM refuses to
    /// start there).
    #[arg(
        long,
        env = "MAX_MODEL_LEN",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_model_len: Option<u32>,

    /// What each shard's KV cache stores, vLLM's flag and names: `auto` (default; the model's
    /// dtype, bf16 on CUDA), `bf16` (or `bfloat16`), or `fp8` (or `fp8_e4m3`): e4m3 with a
    /// scale of 1.0, as vLLM without calibrated scales, half the bytes a token so twice the
    /// KV blocks in the same memory, outputs slightly different from bf16's. fp8 is CUDA
    /// only: the CPU backend's cache is f32, so `--device cpu` refuses it at start. `fp8_e5m2`
    /// is refused.
    #[arg(long, env = "KV_CACHE_DTYPE")]
    pub kv_cache_dtype: Option<KvCacheDtype>,

    /// Maximum sequences in each shard's running batch.
    #[arg(long)]
    pub max_num_seqs: Option<u32>,

    /// Order in which each shard admits waiting requests: `fcfs` (default; first come, first
    /// served, as vLLM) or `lof` (longest output first, SGLang's policy for offline
    /// throughput: the request with the most tokens left to generate, by its `max_tokens`,
    /// starts first, so a batch of requests sent at once ends sooner; short requests wait
    /// behind long ones) or `lof-paced` (`lof`, and each step's token budget paced to the
    /// queue: the rows still to compute over the steps its longest answer still needs, at
    /// least 256 tokens, at most `--max-num-batched-tokens`). Also `--schedule-policy`,
    /// SGLang's name.
    #[arg(long, visible_alias = "schedule-policy", value_parser = ["fcfs", "lof", "lof-paced"])]
    pub scheduling_policy: Option<String>,

    /// Automatic prefix caching, on by default as in vLLM V1 (this flag only confirms it): full
    /// KV blocks of earlier requests, prompts and answers, stay cached after they finish, and a
    /// later request whose tokens start with the same blocks reuses them instead of recomputing
    /// them; least recently used blocks are evicted when blocks run short. Of this pair, the
    /// last one given wins.
    #[arg(long, overrides_with_all = ["enable_prefix_caching", "no_enable_prefix_caching"])]
    pub enable_prefix_caching: bool,

    /// Turn automatic prefix caching off in every shard: each prompt is computed in full and
    /// nothing is kept for later requests.
    #[arg(long, overrides_with_all = ["enable_prefix_caching", "no_enable_prefix_caching"])]
    pub no_enable_prefix_caching: bool,

    /// Overlapped steps on GPUs, on by default (this flag only confirms it): the shard schedules
    /// and launches step n+1 while the GPU still runs step n, so the GPU does not wait for the
    /// host between steps (vLLM's `--async-scheduling`). Steps are synchronous anyway while a
    /// queued request needs the host's sampler (penalties, logprobs, min_p), and on the CPU and
    /// with tensor parallelism. Of this pair, the last one given wins.
    #[arg(long, overrides_with_all = ["async_scheduling", "no_async_scheduling"])]
    pub async_scheduling: bool,

    /// Turn overlapped steps off in every shard: each step waits for the last one's tokens.
    #[arg(long, overrides_with_all = ["async_scheduling", "no_async_scheduling"])]
    pub no_async_scheduling: bool,

    /// Requests the router holds before they start generating; beyond this it answers 429
    /// (router default: 1024).
    #[arg(long)]
    pub max_waiting_requests: Option<usize>,

    /// Compute threads per shard; default: available cores / num-shards, at least 1.
    #[arg(long)]
    pub threads_per_shard: Option<usize>,

    /// Seconds to wait, in all, for every shard and then the router to become ready: one
    /// deadline from the start of the shards (a model download before it does not count).
    #[arg(
        long,
        default_value_t = 600,
        value_parser = clap::value_parser!(u64).range(..=MAX_TIMEOUT_SECS)
    )]
    pub startup_timeout_secs: u64,

    /// Seconds running requests get to finish after SIGTERM/SIGINT (passed to the shards);
    /// children still running 5 s later are killed.
    #[arg(
        long,
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(..=MAX_TIMEOUT_SECS)
    )]
    pub shutdown_timeout_secs: u64,

    /// Directory holding pagedserve-shard and pagedserve-router; default: next to this binary.
    #[arg(long, env = "PAGEDSERVE_BIN_DIR", hide = true)]
    pub bin_dir: Option<PathBuf>,
}

// `--kv-cache-dtype` is checked here, so a bad value stops the launcher before anything
// starts; each shard gets the canonical name (`KvCacheDtype::name`).
pub use pagedserve_proto::kv_cache_dtype::KvCacheDtype;

impl ServeArgs {
    /// Automatic prefix caching: on unless `--no-enable-prefix-caching` is the last of the
    /// pair given (clap keeps only the last, like vLLM's argparse `BooleanOptionalAction`).
    pub fn prefix_caching(&self) -> bool {
        !self.no_enable_prefix_caching
    }

    /// Threads each shard may use so that N shards together don't oversubscribe the cores.
    pub fn effective_threads_per_shard(&self) -> usize {
        self.threads_per_shard
            .filter(|&t| t > 0)
            .unwrap_or_else(|| {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                (cores / usize::from(self.num_shards)).max(1)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagedserve_proto::kv_cache_dtype::SUPPORTED_KV_CACHE_DTYPES;
    use std::time::Duration;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        let argv = std::iter::once("pagedserve").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(Cli::into_command)
    }

    fn serve(args: &[&str]) -> ServeArgs {
        match parse(args) {
            Ok(Command::Serve(s)) => s,
            Ok(other) => panic!("parse {args:?}: not serve: {other:?}"),
            Err(e) => panic!("parse {args:?}: {e}"),
        }
    }

    #[test]
    fn serve_is_the_default_subcommand() {
        let top = serve(&["--port", "8123", "--num-shards", "2"]);
        let sub = serve(&["serve", "--port", "8123", "--num-shards", "2"]);
        assert_eq!(top.port, 8123);
        assert_eq!(sub.port, 8123);
        assert_eq!(top.num_shards, 2);
        assert_eq!(sub.num_shards, 2);
    }

    #[test]
    fn defaults() {
        let s = serve(&[]);
        assert_eq!(s.host, "0.0.0.0");
        assert_eq!(s.num_shards, 1);
        assert_eq!(s.device, "cpu");
        assert!(s.shard_base_port.is_none());
        assert!(s.num_kv_blocks.is_none());
    }

    #[test]
    fn prefix_caching_is_on_unless_turned_off() {
        assert!(serve(&[]).prefix_caching(), "on by default, as in vLLM V1");
        assert!(serve(&["--enable-prefix-caching"]).prefix_caching());
        assert!(!serve(&["--no-enable-prefix-caching"]).prefix_caching());
        // The last of the pair wins, and either may repeat, as with vLLM's argparse flag.
        let last = |a: &str, b: &str| serve(&[a, b]).prefix_caching();
        assert!(last(
            "--no-enable-prefix-caching",
            "--enable-prefix-caching"
        ));
        assert!(!last(
            "--enable-prefix-caching",
            "--no-enable-prefix-caching"
        ));
        assert!(!last(
            "--no-enable-prefix-caching",
            "--no-enable-prefix-caching"
        ));
        assert!(parse(&["--no-enable-prefix-caching", "true"]).is_err());
    }

    #[test]
    fn download_takes_a_model_and_a_revision() {
        match parse(&["download", "org/name", "--revision", "v1"]) {
            Ok(Command::Download(d)) => {
                assert_eq!(d.model.as_deref(), Some("org/name"));
                assert_eq!(d.revision.as_deref(), Some("v1"));
            }
            other => panic!("{other:?}"),
        }
        let s = serve(&["--model", "org/name", "--revision", "abc"]);
        assert_eq!(
            (s.model.as_deref(), s.revision.as_deref()),
            (Some("org/name"), Some("abc"))
        );
    }

    #[test]
    fn zero_shards_is_rejected() {
        assert!(parse(&["--num-shards", "0"]).is_err());
        // vLLM's name for replicas.
        assert_eq!(serve(&["--data-parallel-size", "2"]).num_shards, 2);
        assert_eq!(serve(&[]).tensor_parallel_size, 1);
        assert_eq!(
            serve(&["--tensor-parallel-size", "2"]).tensor_parallel_size,
            2
        );
        assert!(parse(&["--tensor-parallel-size", "0"]).is_err());
    }

    #[test]
    fn timeouts_are_bounded_so_deadlines_cannot_overflow() {
        let max = MAX_TIMEOUT_SECS.to_string();
        let s = serve(&[
            "--startup-timeout-secs",
            &max,
            "--shutdown-timeout-secs",
            &max,
        ]);
        assert_eq!(s.startup_timeout_secs, MAX_TIMEOUT_SECS);
        // The largest accepted values still make valid deadlines (grace adds 5 s).
        let later = Duration::from_secs(s.shutdown_timeout_secs.saturating_add(5));
        assert!(tokio::time::Instant::now().checked_add(later).is_some());
        for flag in ["--startup-timeout-secs", "--shutdown-timeout-secs"] {
            let err = parse(&[flag, "18446744073709551615"]).expect_err("u64::MAX");
            assert!(err.to_string().contains(flag), "{err}");
        }
    }

    #[test]
    fn max_model_len_is_optional_and_positive() {
        assert_eq!(serve(&[]).max_model_len, None, "the model's own context");
        assert_eq!(
            serve(&["--max-model-len", "8192"]).max_model_len,
            Some(8192)
        );
        assert!(parse(&["--max-model-len", "0"]).is_err());
        assert!(parse(&["--max-model-len", "-1"]).is_err());
    }

    /// The flag goes through the shared parser (pagedserve_proto::kv_cache_dtype, where vLLM's
    /// names and the refusals are tested): a value binds, and a refusal stops the parse with
    /// the parser's message.
    #[test]
    fn kv_cache_dtype_binds_the_shared_parser() {
        assert_eq!(
            serve(&[]).kv_cache_dtype,
            None,
            "the shard's default (auto)"
        );
        let got = serve(&["--kv-cache-dtype", "fp8"]).kv_cache_dtype;
        assert_eq!(got, Some(KvCacheDtype::Fp8E4m3));
        let err = parse(&["--kv-cache-dtype", "fp8_e5m2"])
            .expect_err("e5m2 is refused")
            .to_string();
        assert!(
            err.contains("e4m3 only") && err.contains(SUPPORTED_KV_CACHE_DTYPES),
            "says why and what is supported: {err}"
        );
    }

    /// `KV_CACHE_DTYPE` in the environment sets it, as the other flags' env fallbacks (read
    /// off the parser: setting the variable here would race the other tests' parses; the
    /// integration test `kv_cache_dtype` runs the launcher with it).
    #[test]
    fn kv_cache_dtype_has_an_env_fallback() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let env = |cmd: &clap::Command| {
            cmd.get_arguments()
                .find(|a| a.get_id() == "kv_cache_dtype")
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(env(&cli).as_deref(), Some("KV_CACHE_DTYPE"));
        let sub = cli.find_subcommand("serve").expect("serve");
        assert_eq!(env(sub).as_deref(), Some("KV_CACHE_DTYPE"));
    }

    /// A vLLM command line, flag for flag, parses to the same settings.
    #[test]
    fn vllm_flag_names_are_accepted() {
        let s = serve(&[
            "--model",
            "meta-llama/Llama-3.1-8B-Instruct",
            "--served-model-name",
            "llama",
            "--host",
            "127.0.0.1",
            "--port",
            "8001",
            "--tensor-parallel-size",
            "2",
            "--data-parallel-size",
            "2",
            "--gpu-memory-utilization",
            "0.85",
            "--max-model-len",
            "8192",
            "--max-num-batched-tokens",
            "4096",
            "--max-num-seqs",
            "128",
            "--scheduling-policy",
            "lof",
            "--block-size",
            "16",
            "--num-gpu-blocks-override",
            "2000",
            "--load-format",
            "dummy",
            "--enforce-eager",
            "--no-enable-prefix-caching",
            "--no-async-scheduling",
            "--kv-cache-dtype",
            "fp8",
        ]);
        assert_eq!(s.model.as_deref(), Some("meta-llama/Llama-3.1-8B-Instruct"));
        assert_eq!(s.served_model_name.as_deref(), Some("llama"));
        assert_eq!((s.host.as_str(), s.port), ("127.0.0.1", 8001));
        assert_eq!((s.tensor_parallel_size, s.num_shards), (2, 2));
        assert_eq!(s.gpu_memory_utilization, Some(0.85));
        assert_eq!(s.max_model_len, Some(8192));
        assert_eq!(s.max_batch_tokens, Some(4096));
        assert_eq!(s.max_num_seqs, Some(128));
        assert_eq!(s.scheduling_policy.as_deref(), Some("lof"));
        assert_eq!(s.block_size, Some(16));
        assert_eq!(s.num_kv_blocks, Some(2000));
        assert_eq!(s.load_format.as_deref(), Some("dummy"));
        assert!(s.enforce_eager);
        assert!(!s.prefix_caching());
        assert!(s.no_async_scheduling);
        assert_eq!(s.kv_cache_dtype, Some(KvCacheDtype::Fp8E4m3));
        // Each alias is the same argument as its own name: giving both is a repeat.
        assert!(parse(&["--max-batch-tokens", "1", "--max-num-batched-tokens", "2"]).is_err());
        assert!(parse(&["--num-kv-blocks", "1", "--num-gpu-blocks-override", "2"]).is_err());
        // Flags of vLLM's that pagedserve does not implement are refused, not ignored.
        assert!(parse(&["--pipeline-parallel-size", "2"]).is_err());
        assert!(parse(&["--trust-remote-code"]).is_err());
    }

    #[test]
    fn unknown_flag_is_rejected() {
        assert!(parse(&["--no-such-flag"]).is_err());
    }

    #[test]
    fn threads_split_cores_between_shards() {
        let mut s = serve(&["--num-shards", "256"]);
        assert_eq!(s.effective_threads_per_shard(), 1, "never below one thread");
        s.threads_per_shard = Some(3);
        assert_eq!(s.effective_threads_per_shard(), 3, "explicit value wins");
        s.threads_per_shard = Some(0);
        assert_eq!(s.effective_threads_per_shard(), 1, "zero means automatic");
    }
}
