//! Sampling defaults from the model's `generation_config.json` (temperature, top_p, top_k,
//! min_p, repetition_penalty), applied where a request leaves the parameter out — what vLLM
//! does with `--generation-config auto`. A request's own value always wins.

use std::path::Path;

use serde::Deserialize;

use crate::api::types::CommonParams;

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {detail}")]
pub struct GenerationConfigError {
    pub path: String,
    pub detail: String,
}

impl GenerationDefaults {
    /// No defaults (a GGUF model).
    pub const NONE: Self = Self {
        temperature: None,
        top_p: None,
        top_k: None,
        min_p: None,
        repetition_penalty: None,
    };

    /// `dir/generation_config.json` when `dir` is a model directory that has one; none
    /// otherwise (a GGUF file carries no generation config).
    pub fn from_model_path(model: &Path) -> Result<Self, GenerationConfigError> {
        let path = model.join("generation_config.json");
        if !model.is_dir() || !path.is_file() {
            return Ok(Self::default());
        }
        let err = |detail: String| GenerationConfigError {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
        Self::parse(&text).map_err(err)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// `common` with every parameter it leaves out taken from these defaults.
    pub fn apply(&self, common: &CommonParams) -> CommonParams {
        let mut out = common.clone();
        out.temperature = out.temperature.or(self.temperature);
        out.top_p = out.top_p.or(self.top_p);
        out.top_k = out.top_k.or(self.top_k);
        out.min_p = out.min_p.or(self.min_p);
        out.repetition_penalty = out.repetition_penalty.or(self.repetition_penalty);
        out
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // unwrap is the assertion in tests
mod tests {
    use super::*;

    /// Qwen2-7B-Instruct's generation_config.json.
    const QWEN2: &str = r#"{"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": true,
        "eos_token_id": [151645, 151643], "repetition_penalty": 1.05, "temperature": 0.7,
        "top_p": 0.8, "top_k": 20, "transformers_version": "4.37.0"}"#;

    #[test]
    fn fills_only_what_the_request_leaves_out() {
        let d = GenerationDefaults::parse(QWEN2).unwrap();
        assert_eq!(
            (
                d.temperature,
                d.top_p,
                d.top_k,
                d.repetition_penalty,
                d.min_p
            ),
            (Some(0.7), Some(0.8), Some(20), Some(1.05), None)
        );
        let request: CommonParams = serde_json::from_str(r#"{"temperature": 0}"#).unwrap();
        let applied = d.apply(&request);
        assert_eq!(applied.temperature, Some(0.0), "the request wins");
        assert_eq!((applied.top_p, applied.top_k), (Some(0.8), Some(20)));
        assert_eq!(applied.repetition_penalty, Some(1.05));
        assert_eq!(applied.min_p, None);
        assert!(GenerationDefaults::default().apply(&request) == request);
    }

    #[test]
    fn validation_uses_the_defaults() {
        let limits = crate::validation::Limits {
            max_context: 100,
            vocab_size: 1000,
            prompt_param: "prompt",
            max_n: 1,
            defaults: GenerationDefaults::parse(QWEN2).unwrap(),
        };
        let silent: CommonParams = serde_json::from_str(r#"{"max_tokens": 4}"#).unwrap();
        let req = crate::validation::validate(&silent, vec![vec![1, 2]], None, limits).unwrap();
        assert_eq!((req.sampling.temperature, req.sampling.top_p), (0.7, 0.8));
        assert_eq!(
            (req.sampling.top_k, req.sampling.repetition_penalty),
            (20, 1.05)
        );
        let explicit: CommonParams =
            serde_json::from_str(r#"{"temperature": 0.2, "top_k": -1}"#).unwrap();
        let req = crate::validation::validate(&explicit, vec![vec![1]], None, limits).unwrap();
        assert_eq!((req.sampling.temperature, req.sampling.top_k), (0.2, 0));
    }

    #[test]
    fn reads_model_directories_only() {
        let dir = std::env::temp_dir().join(format!("pagedserve-gencfg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(
            GenerationDefaults::from_model_path(&dir)
                .unwrap()
                .is_empty()
        );
        std::fs::write(dir.join("generation_config.json"), QWEN2).unwrap();
        let d = GenerationDefaults::from_model_path(&dir).unwrap();
        assert_eq!(d.top_k, Some(20));
        std::fs::write(dir.join("generation_config.json"), "{not json").unwrap();
        let err = GenerationDefaults::from_model_path(&dir).unwrap_err();
        assert!(err.to_string().contains("generation_config.json"), "{err}");
        let gguf = dir.join("generation_config.json");
        assert!(
            GenerationDefaults::from_model_path(&gguf)
                .unwrap()
                .is_empty()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
