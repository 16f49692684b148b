//! Command-line arguments of `pagedserve-shard`.

use crate::engine::EngineConfig;
use crate::model::LoadOptions;
use clap::Parser;
use clap::builder::RangedU64ValueParser;
use std::path::PathBuf;

fn at_least_one() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::<usize>::new().range(1..)
}

/// One model replica on one device, served over gRPC (`proto/shard.proto`).
#[derive(Debug, Clone, Parser)]
#[command(name = "pagedserve-shard", version, about)]
pub struct Args {
    /// Path of the model's `.gguf` file.
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
    /// Per-step token budget (prefill chunk tokens + decode tokens).
    #[arg(long, default_value_t = 2048, value_parser = at_least_one())]
    pub max_batch_tokens: usize,
    /// Most sequences in the running batch.
    #[arg(long, default_value_t = 256, value_parser = at_least_one())]
    pub max_num_seqs: usize,
    /// CPU compute threads (default: every core). The launcher gives each of N shards cores / N.
    #[arg(long, env = "PAGEDSERVE_THREADS", value_parser = at_least_one())]
    pub threads: Option<usize>,
    /// "cpu" (CUDA devices come with the CUDA backend).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// On SIGTERM/SIGINT, how long running sequences may finish before the shard exits
    /// (a second signal exits at once).
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
}

impl Args {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            model_path: self.model.clone(),
            served_model_name: self.served_model_name.clone(),
            block_size: self.block_size,
            num_kv_blocks: self.num_kv_blocks,
            kv_cache_bytes: self.kv_cache_memory_mb.saturating_mul(1 << 20),
            device: self.device.clone(),
        }
    }

    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            max_batch_tokens: self.max_batch_tokens,
            max_num_seqs: self.max_num_seqs,
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
        let config = args.engine_config();
        assert_eq!((config.max_batch_tokens, config.max_num_seqs), (2048, 256));
    }

    #[test]
    fn overrides() {
        let args =
            parse(&["--num-kv-blocks", "12", "--block-size", "8", "--port", "7"]).expect("parses");
        assert_eq!(args.load_options().num_kv_blocks, Some(12));
        assert_eq!(args.block_size, 8);
        assert_eq!(args.port, 7);
    }

    #[test]
    fn rejects_zero_and_missing_model() {
        assert!(parse(&["--block-size", "0"]).is_err());
        assert!(parse(&["--max-batch-tokens", "0"]).is_err());
        assert!(Args::try_parse_from(["pagedserve-shard"]).is_err());
    }
}
