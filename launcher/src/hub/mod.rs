//! Where the model comes from: a `.gguf` file, a local HF model directory, or a hub id
//! (`mistralai/Mistral-7B-Instruct-v0.2`) resolved in the HF cache layout and downloaded
//! with `hf-hub` when the cache lacks it (never with `HF_HUB_OFFLINE=1`).

mod cache;
mod download;
mod error;
mod settings;

#[cfg(test)]
mod mock_hub;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use cache::{RepoCache, missing_serving_files};
pub use error::{HubError, HubResult};
pub use settings::HubSettings;

/// `architectures[0]` values the shards serve (HF checkpoints); the same list as
/// `pagedserve_shard::model::hf::SUPPORTED_ARCHITECTURES` (the launcher does not link the
/// shard crate).
pub const SUPPORTED_ARCHITECTURES: &[&str] =
    &["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"];

/// A model ready to hand to the shards and the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// A `.gguf` file or a HF model directory.
    pub path: PathBuf,
    /// The name clients send: the hub id, the directory's name, or the GGUF's stem.
    pub served_name: String,
}

/// Resolves `spec` (a path or a hub id) at `revision` (hub ids only; default `main`).
pub async fn resolve(
    spec: &str,
    revision: Option<&str>,
    s: &HubSettings,
) -> HubResult<ResolvedModel> {
    let path = Path::new(spec);
    if path.is_file() {
        return local_gguf(path);
    }
    if path.is_dir() {
        return local_dir(path, !s.skip_weights);
    }
    if spec.to_ascii_lowercase().ends_with(".gguf") || !is_repo_id(spec) {
        return Err(HubError::BadSpec(spec.to_string()));
    }
    let revision = revision.unwrap_or("main");
    let dir = cached_or_downloaded(spec, revision, s).await?;
    Ok(ResolvedModel {
        path: dir,
        served_name: spec.to_string(),
    })
}

async fn cached_or_downloaded(repo: &str, revision: &str, s: &HubSettings) -> HubResult<PathBuf> {
    let cache = RepoCache::new(&s.cache_dir, repo);
    let snapshot = cache.snapshot(revision);
    let missing = |d: &Path| missing_serving_files(d, !s.skip_weights);
    if let Some(dir) = snapshot.as_ref().filter(|d| missing(d).is_empty()) {
        check_architecture(&dir.join("config.json"), repo)?;
        tracing::info!(model = repo, revision, dir = %dir.display(), "model found in the HF cache");
        return Ok(dir.clone());
    }
    if s.offline {
        let missing = match &snapshot {
            Some(dir) => format!("its snapshot lacks {}", missing(dir).join(", ")),
            None => format!("no snapshot for revision `{revision}`"),
        };
        return Err(HubError::OfflineMissing {
            repo: repo.into(),
            cache: cache.dir,
            missing,
        });
    }
    tracing::info!(model = repo, revision, cache = %s.cache_dir.display(), "downloading from the hub");
    let dir = download::download(repo, revision, s).await?;
    let missing = missing(&dir);
    if !missing.is_empty() {
        return Err(HubError::MissingFiles {
            repo: repo.into(),
            what: missing.join(", "),
        });
    }
    Ok(dir)
}

fn local_gguf(path: &Path) -> HubResult<ResolvedModel> {
    let is_gguf = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if !is_gguf {
        return Err(HubError::Local {
            path: path.into(),
            detail: "not a .gguf file (give a .gguf file, a model directory or a hub id)".into(),
        });
    }
    Ok(ResolvedModel {
        path: path.into(),
        served_name: file_name(path, true),
    })
}

fn local_dir(path: &Path, weights: bool) -> HubResult<ResolvedModel> {
    let missing = missing_serving_files(path, weights);
    if !missing.is_empty() {
        return Err(HubError::Local {
            path: path.into(),
            detail: format!(
                "not a servable HF model directory: lacks {}",
                missing.join(", ")
            ),
        });
    }
    check_architecture(&path.join("config.json"), &path.display().to_string())?;
    Ok(ResolvedModel {
        path: path.into(),
        served_name: file_name(path, false),
    })
}

fn file_name(path: &Path, stem: bool) -> String {
    let name = if stem {
        path.file_stem()
    } else {
        path.file_name()
    };
    name.map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
}

/// `org/name` or `name`: letters, digits, `-`, `_`, `.`; not a path.
fn is_repo_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

/// Refuses a checkpoint the shards cannot serve before any weight is read, naming its
/// architecture.
pub fn check_architecture(config: &Path, model: &str) -> HubResult<()> {
    let local = |detail: String| HubError::Local {
        path: config.into(),
        detail,
    };
    let text = std::fs::read_to_string(config).map_err(|e| local(e.to_string()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| local(format!("invalid JSON: {e}")))?;
    let architecture = json
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str())
        .or_else(|| json.get("model_type").and_then(|m| m.as_str()))
        .unwrap_or("unknown");
    if SUPPORTED_ARCHITECTURES.contains(&architecture) {
        return Ok(());
    }
    Err(HubError::UnsupportedArchitecture {
        model: model.into(),
        architecture: architecture.into(),
        supported: SUPPORTED_ARCHITECTURES.join(", "),
    })
}
