//! `pagedserve bench` options; names and defaults follow vLLM's `benchmark_serving.py`.

use std::path::PathBuf;

use clap::{ArgAction, Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatasetName {
    /// ShareGPT conversations (default: the cached `ShareGPT_V3_unfiltered_cleaned_split.json`).
    Sharegpt,
    /// Seeded random token strings of `--random-input-len` tokens.
    Random,
    /// A JSONL file of `{"prompt": ..., "output_len": N}` lines (`--dataset-path`).
    Jsonl,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Server to load, any OpenAI-compatible one (pagedserve, vLLM, TGI, llama.cpp); http only.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub base_url: String,

    /// API route the requests go to (streaming).
    #[arg(long, default_value = "/v1/completions",
          value_parser = ["/v1/completions", "/v1/chat/completions"])]
    pub endpoint: String,

    /// Sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Model name to request; default: the first model the server lists at /v1/models.
    #[arg(long)]
    pub model: Option<String>,

    /// Tokenizer counting tokens: a .gguf file or a HF model directory; default: the
    /// default model's GGUF (what `pagedserve` serves without --model).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,

    /// Where the prompts come from.
    #[arg(long, value_enum, default_value_t = DatasetName::Sharegpt)]
    pub dataset_name: DatasetName,

    /// Dataset file (ShareGPT JSON or JSONL); ShareGPT defaults to the cached copy,
    /// fetched on first use.
    #[arg(long)]
    pub dataset_path: Option<PathBuf>,

    /// Number of requests to send.
    #[arg(long, default_value_t = 1000)]
    pub num_prompts: usize,

    /// ShareGPT: ask for this many tokens instead of each answer's length.
    #[arg(long)]
    pub sharegpt_output_len: Option<usize>,

    /// random: prompt length in tokens (upper end of the range).
    #[arg(long, default_value_t = 1024)]
    pub random_input_len: usize,

    /// random: output length in tokens (upper end of the range).
    #[arg(long, default_value_t = 128)]
    pub random_output_len: usize,

    /// random: lengths are drawn from [len * ratio, len].
    #[arg(long, default_value_t = 1.0)]
    pub random_range_ratio: f64,

    /// jsonl: output length of lines without `output_len`.
    #[arg(long, default_value_t = 128)]
    pub jsonl_output_len: usize,

    /// Requests per second (Poisson arrivals), or `inf` to send all at once.
    #[arg(long, default_value_t = f64::INFINITY)]
    pub request_rate: f64,

    /// At most this many requests in flight; default: no limit.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrency: Option<u32>,

    /// Seed of the dataset shuffle, the random dataset and the arrival times.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Send `ignore_eos: true` so the server produces exactly max_tokens (vLLM extension).
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    pub ignore_eos: bool,

    /// Write the metrics and per-request measurements to this JSON file.
    #[arg(long)]
    pub result_json: Option<PathBuf>,

    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,

    /// Print two result JSON files side by side with ratios B/A, and send nothing.
    #[arg(long, num_args = 2, value_names = ["A_JSON", "B_JSON"])]
    pub compare: Option<Vec<PathBuf>>,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command};

    fn parse(args: &[&str]) -> Result<BenchArgs, String> {
        let argv = ["pagedserve", "bench"]
            .into_iter()
            .chain(args.iter().copied());
        match Cli::try_parse_from(argv).map(Cli::into_command) {
            Ok(Command::Bench(b)) => Ok(b),
            Ok(other) => Err(format!("not bench: {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn vllm_defaults() {
        let a = parse(&[]).expect("defaults parse");
        assert_eq!(a.num_prompts, 1000);
        assert!(a.request_rate.is_infinite());
        assert_eq!(a.seed, 0);
        assert_eq!(a.endpoint, "/v1/completions");
        assert_eq!(a.dataset_name, DatasetName::Sharegpt);
        assert!(a.ignore_eos);
        assert!(a.max_concurrency.is_none() && a.compare.is_none());
    }

    #[test]
    fn load_options() {
        let a = parse(&[
            "--request-rate",
            "2.5",
            "--max-concurrency",
            "4",
            "--num-prompts",
            "7",
            "--endpoint",
            "/v1/chat/completions",
            "--dataset-name",
            "random",
            "--ignore-eos",
            "false",
            "--seed",
            "3",
        ])
        .expect("valid");
        assert_eq!(
            (a.request_rate, a.max_concurrency, a.num_prompts),
            (2.5, Some(4), 7)
        );
        assert_eq!(a.endpoint, "/v1/chat/completions");
        assert_eq!(a.dataset_name, DatasetName::Random);
        assert!(!a.ignore_eos);
        assert!(parse(&["--request-rate", "inf"]).is_ok_and(|a| a.request_rate.is_infinite()));
    }

    #[test]
    fn invalid_options_are_rejected() {
        assert!(parse(&["--endpoint", "/v1/embeddings"]).is_err());
        assert!(parse(&["--max-concurrency", "0"]).is_err());
        assert!(parse(&["--dataset-name", "sonnet"]).is_err());
        assert!(parse(&["--compare", "only-one.json"]).is_err());
        let cmp = parse(&["--compare", "a.json", "b.json"]).expect("two files");
        assert_eq!(cmp.compare.map(|v| v.len()), Some(2));
    }
}
