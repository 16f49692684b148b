//! Errors of model resolution and hub downloads: each says what happened and what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "access to `{repo}` was denied (HTTP {status}){hint}; gated models need a token of an \
         account that accepted the model's license: set HF_TOKEN (or --hf-token)"
    )]
    Unauthorized {
        repo: String,
        status: u16,
        /// Whether a token was sent at all.
        hint: &'static str,
    },

    #[error("`{repo}` (revision {revision}) was not found on the hub ({what})")]
    NotFound {
        repo: String,
        revision: String,
        what: String,
    },

    #[error(
        "`{repo}` is not complete in the HF cache at {cache} and HF_HUB_OFFLINE is set, so \
         nothing is downloaded: {missing}"
    )]
    OfflineMissing {
        repo: String,
        cache: PathBuf,
        missing: String,
    },

    #[error("`{repo}` has no {what}; pagedserve serves safetensors checkpoints (or a .gguf file)")]
    MissingFiles { repo: String, what: String },

    #[error(
        "`{model}` is a {architecture} model, which pagedserve does not serve (supported: {supported})"
    )]
    UnsupportedArchitecture {
        model: String,
        architecture: String,
        supported: String,
    },

    #[error(
        "disk full while writing {path}: free some space or point HF_HUB_CACHE/HF_HOME elsewhere"
    )]
    DiskFull { path: PathBuf },

    #[error("downloading {file} of `{repo}`: {detail}")]
    Download {
        repo: String,
        file: String,
        detail: String,
    },

    #[error("{path}: {detail}")]
    Local { path: PathBuf, detail: String },

    #[error("model `{0}` is neither a .gguf file, a model directory, nor a hub id (`org/name`)")]
    BadSpec(String),

    #[error("no HF cache directory: set HF_HUB_CACHE, HF_HOME or HOME")]
    NoCacheDir,
}

pub type HubResult<T> = Result<T, HubError>;
