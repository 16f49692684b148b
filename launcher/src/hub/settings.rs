//! Hub settings from the environment, as the `huggingface_hub` Python client reads them:
//! `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`; `HF_ENDPOINT`;
//! `HF_HUB_OFFLINE`; the token from `HF_TOKEN` (or `--hf-token`), else `$HF_HOME/token`.

use std::path::PathBuf;

use super::error::{HubError, HubResult};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

#[derive(Debug, Clone)]
pub struct HubSettings {
    /// The hub cache: `models--org--name/{blobs,refs,snapshots}` live under it.
    pub cache_dir: PathBuf,
    pub endpoint: String,
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE=1`: only the cache is read.
    pub offline: bool,
    /// Show indicatif progress bars while downloading.
    pub progress: bool,
    /// Config and tokenizer only, no weights (`--load-format dummy`, as vLLM fetches then).
    pub skip_weights: bool,
}

impl HubSettings {
    /// Reads the environment; `token` (from `--hf-token`/`HF_TOKEN`) wins over the token file.
    pub fn from_env(token: Option<String>) -> HubResult<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let hf_home = var("HF_HOME")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface")));
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| hf_home.as_ref().map(|h| h.join("hub")))
            .ok_or(HubError::NoCacheDir)?;
        let token = token
            .filter(|t| !t.is_empty())
            .or_else(|| var("HF_TOKEN"))
            .or_else(|| read_token_file(hf_home?.join("token")));
        Ok(Self {
            cache_dir,
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
                .trim_end_matches('/')
                .to_string(),
            token,
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| is_true(&v)),
            progress: true,
            skip_weights: false,
        })
    }
}

fn read_token_file(path: PathBuf) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.trim().to_string()).filter(|t| !t.is_empty())
}

/// huggingface_hub's truthy values.
fn is_true(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "on" | "yes" | "true"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_values_follow_huggingface_hub() {
        for v in ["1", "ON", "yes", "True"] {
            assert!(is_true(v), "{v}");
        }
        for v in ["0", "off", "", "no"] {
            assert!(!is_true(v), "{v}");
        }
    }
}
