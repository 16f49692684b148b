//! Command-line arguments of `pagedserve-router`.

use std::path::PathBuf;

use clap::Parser;

/// OpenAI-compatible HTTP router in front of pagedserve gRPC shards.
#[derive(Debug, Clone, Parser)]
#[command(name = "pagedserve-router", version, about)]
pub struct Args {
    /// GGUF model file or HF model directory; the tokenizer and chat template come from it
    /// (and, for a directory, sampling defaults from generation_config.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Model name clients must send; defaults to the model file stem.
    #[arg(long, env = "MODEL_NAME")]
    pub served_model_name: Option<String>,
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,
    /// Shard gRPC URL, e.g. http://127.0.0.1:50051 (repeatable).
    #[arg(long = "shard", required = true)]
    pub shards: Vec<String>,
    /// When set, every route but /health requires `Authorization: Bearer <key>`.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests admitted but not yet generating; beyond this the router answers 429.
    #[arg(long, default_value_t = 1024)]
    pub max_waiting_requests: usize,
    /// Largest `n` (choices per prompt) a request may ask for.
    #[arg(long, default_value_t = 128)]
    pub max_n: u32,
}

impl Args {
    /// The served model name: the flag, else the file stem.
    pub fn model_name(&self) -> String {
        if let Some(name) = &self.served_model_name {
            return name.clone();
        }
        self.model
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_name_defaults_to_file_stem() {
        let args = Args::try_parse_from([
            "pagedserve-router",
            "--model",
            "/m/SmolLM2-135M-Instruct.Q4_1.gguf",
            "--shard",
            "http://127.0.0.1:1",
        ]);
        let args = args.map_err(|e| e.to_string());
        assert!(args.is_ok(), "{args:?}");
        if let Ok(args) = args {
            if std::env::var_os("MODEL_NAME").is_none() {
                assert_eq!(args.model_name(), "SmolLM2-135M-Instruct.Q4_1");
            }
            assert_eq!(args.shards, vec!["http://127.0.0.1:1".to_string()]);
        }
    }

    #[test]
    fn shards_are_repeatable_and_required() {
        let missing = Args::try_parse_from(["pagedserve-router", "--model", "m.gguf"]);
        assert!(missing.is_err());
        let two = Args::try_parse_from([
            "pagedserve-router",
            "--model",
            "m.gguf",
            "--shard",
            "http://a:1",
            "--shard",
            "http://b:2",
            "--served-model-name",
            "smol",
        ]);
        assert_eq!(
            two.map(|a| (a.shards.len(), a.model_name())).ok(),
            Some((2, "smol".into()))
        );
    }
}
