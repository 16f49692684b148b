//! Fetching a repo's serving files into the HF cache with `hf-hub`: config first (so an
//! unsupported architecture fails before gigabytes move), then tokenizer files, then the
//! weights. hf-hub downloads in 10 MB ranges and records progress in `<blob>.sync.part`, so
//! an interrupted download resumes where it stopped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hf_hub::api::tokio::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use super::cache::shard_names;
use super::error::{HubError, HubResult};
use super::settings::HubSettings;

/// Small files used when present (tokenizer and generation defaults).
const OPTIONAL: &[&str] = &[
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// Downloads what serving `repo` at `revision` needs; returns its snapshot directory.
pub async fn download(repo: &str, revision: &str, s: &HubSettings) -> HubResult<PathBuf> {
    let api = ApiBuilder::from_cache(Cache::new(s.cache_dir.clone()))
        .with_endpoint(s.endpoint.clone())
        .with_token(s.token.clone())
        .with_progress(s.progress)
        .build()
        .map_err(|e| classify(e, repo, revision, "client", s))?;
    let api = api.repo(Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.to_string(),
    ));
    let info = api
        .info()
        .await
        .map_err(|e| classify(e, repo, revision, "repo info", s))?;
    let files: BTreeSet<String> = info.siblings.into_iter().map(|f| f.rfilename).collect();
    for needed in ["config.json", "tokenizer.json"] {
        if !files.contains(needed) {
            return Err(HubError::MissingFiles {
                repo: repo.into(),
                what: needed.into(),
            });
        }
    }
    let config = fetch(&api, "config.json", repo, revision, s).await?;
    super::check_architecture(&config, repo)?;
    let snapshot = config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| HubError::Local {
            path: config.clone(),
            detail: "no parent directory".into(),
        })?;
    fetch(&api, "tokenizer.json", repo, revision, s).await?;
    for name in OPTIONAL.iter().filter(|f| files.contains(**f)) {
        fetch(&api, name, repo, revision, s).await?;
    }
    if s.skip_weights {
        return Ok(snapshot);
    }
    for name in weight_files(&api, &files, repo, revision, s).await? {
        fetch(&api, &name, repo, revision, s).await?;
    }
    Ok(snapshot)
}

/// `model.safetensors`, else the index's shards (the index itself is fetched here).
async fn weight_files(
    api: &ApiRepo,
    files: &BTreeSet<String>,
    repo: &str,
    revision: &str,
    s: &HubSettings,
) -> HubResult<Vec<String>> {
    if files.contains("model.safetensors") {
        return Ok(vec!["model.safetensors".into()]);
    }
    let index_name = "model.safetensors.index.json";
    if !files.contains(index_name) {
        return Err(HubError::MissingFiles {
            repo: repo.into(),
            what: "model.safetensors or model.safetensors.index.json".into(),
        });
    }
    let index = fetch(api, index_name, repo, revision, s).await?;
    let shards = shard_names(&index).ok_or_else(|| HubError::Local {
        path: index.clone(),
        detail: "not a safetensors index (no weight_map)".into(),
    })?;
    match shards.iter().find(|f| !files.contains(*f)) {
        Some(absent) => Err(HubError::MissingFiles {
            repo: repo.into(),
            what: format!("{absent} (listed in {index_name})"),
        }),
        None => Ok(shards),
    }
}

/// One file: from the cache when this revision already has it, else downloaded.
async fn fetch(
    api: &ApiRepo,
    name: &str,
    repo: &str,
    revision: &str,
    s: &HubSettings,
) -> HubResult<PathBuf> {
    api.get(name)
        .await
        .map_err(|e| classify(e, repo, revision, name, s))
}

/// hf-hub's error as what the user needs to know.
fn classify(e: ApiError, repo: &str, revision: &str, file: &str, s: &HubSettings) -> HubError {
    match e {
        ApiError::RequestError(ref r) => match r.status().map(|s| s.as_u16()) {
            Some(status @ (401 | 403)) => HubError::Unauthorized {
                repo: repo.into(),
                status,
                hint: if s.token.is_some() {
                    " with the token given"
                } else {
                    " without a token"
                },
            },
            Some(404) => HubError::NotFound {
                repo: repo.into(),
                revision: revision.into(),
                what: file.into(),
            },
            _ => download_error(repo, file, &e),
        },
        ApiError::IoError(ref io) if io.raw_os_error() == Some(libc::ENOSPC) => {
            HubError::DiskFull {
                path: s.cache_dir.clone(),
            }
        }
        ApiError::TooManyRetries(inner) => classify(*inner, repo, revision, file, s),
        other => download_error(repo, file, &other),
    }
}

/// The error with its causes ("error sending request" alone hides "connection refused").
fn download_error(repo: &str, file: &str, e: &ApiError) -> HubError {
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !detail.contains(&text) {
            detail = format!("{detail}: {text}");
        }
        source = cause.source();
    }
    HubError::Download {
        repo: repo.into(),
        file: file.into(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_name_a_full_disk() {
        let s = HubSettings {
            cache_dir: "/cache".into(),
            endpoint: "http://127.0.0.1:1".into(),
            token: None,
            offline: false,
            progress: false,
            skip_weights: false,
        };
        let full = ApiError::IoError(std::io::Error::from_raw_os_error(libc::ENOSPC));
        let err = classify(full, "o/m", "main", "x", &s);
        assert!(matches!(err, HubError::DiskFull { .. }), "{err}");
        assert!(err.to_string().contains("disk full"), "{err}");
        let other = ApiError::IoError(std::io::Error::from_raw_os_error(libc::EACCES));
        assert!(matches!(
            classify(other, "o/m", "main", "x", &s),
            HubError::Download { .. }
        ));
    }
}
