//! The tokenizer that counts prompt and output tokens: `--tokenizer` (a .gguf file or a
//! HF model directory), else the default model's GGUF, which is what `pagedserve` serves
//! when given no model.

use std::path::{Path, PathBuf};

use pagedserve_router::tokenize::ModelTokenizer;

use crate::bench::error::{BenchError, Result};
use crate::default_model;

/// The tokenizer and the path it came from.
pub async fn load(spec: Option<&Path>) -> Result<(ModelTokenizer, PathBuf)> {
    let path = match spec {
        Some(p) => p.to_owned(),
        None => default_model::resolve_model(None)
            .await
            .map_err(|e| BenchError::Fetch(format!("default model: {e}")))?,
    };
    let loaded = if path.is_dir() {
        ModelTokenizer::from_hf_dir(&path)
    } else if path.is_file() {
        ModelTokenizer::from_gguf(&path)
    } else {
        return Err(BenchError::Usage(format!(
            "--tokenizer {}: no such .gguf file or model directory",
            path.display()
        )));
    };
    let tokenizer = loaded.map_err(|source| BenchError::TokenizerLoad {
        path: path.clone(),
        source,
    })?;
    Ok((tokenizer, path))
}

/// The model name of the default tokenizer's file, to warn when another model is served.
pub fn default_model_name() -> String {
    default_model::default_served_name(Path::new(default_model::DEFAULT_MODEL_FILE))
}
