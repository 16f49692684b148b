//! Hub settings from the environment, as the `huggingface_hub` Python client reads them:
//! `HF_HUB_CACHE`, else the legacy `HUGGINGFACE_HUB_CACHE` (TGI's images set it), else
//! `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`;
//! `HF_ENDPOINT`; `HF_HUB_OFFLINE`; the token from `--hf-token`/`HF_TOKEN`, else the legacy
//! `HUGGING_FACE_HUB_TOKEN`, else `$HF_HOME/token`.

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
        Self::from_vars(token, |name| std::env::var(name).ok())
    }

    /// [`Self::from_env`] over any variable lookup (tests pass a map).
    fn from_vars(
        token: Option<String>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> HubResult<Self> {
        let var = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let hf_home = var("HF_HOME").map(PathBuf::from).or_else(|| {
            let xdg_cache = var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")));
            xdg_cache.map(|c| c.join("huggingface"))
        });
        // The legacy names still work in huggingface_hub, and deployments moved over from
        // TGI set them: ignoring them put the model on ephemeral disk, fetched on every start.
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .or_else(|| hf_home.as_ref().map(|h| h.join("hub")))
            .ok_or(HubError::NoCacheDir)?;
        let token = token
            .filter(|t| !t.is_empty())
            .or_else(|| var("HF_TOKEN"))
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
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

    fn settings(vars: &[(&str, &str)]) -> HubSettings {
        let lookup = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        };
        HubSettings::from_vars(None, lookup).expect("settings")
    }

    #[test]
    fn cache_dir_follows_huggingface_hub_including_legacy_names() {
        let home = [("HOME", "/home/u")];
        assert_eq!(
            settings(&home).cache_dir,
            PathBuf::from("/home/u/.cache/huggingface/hub")
        );
        let xdg = [("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")];
        assert_eq!(
            settings(&xdg).cache_dir,
            PathBuf::from("/xdg/huggingface/hub")
        );
        let hf_home = [("XDG_CACHE_HOME", "/xdg"), ("HF_HOME", "/hf")];
        assert_eq!(settings(&hf_home).cache_dir, PathBuf::from("/hf/hub"));
        let legacy = [("HF_HOME", "/hf"), ("HUGGINGFACE_HUB_CACHE", "/data")];
        assert_eq!(settings(&legacy).cache_dir, PathBuf::from("/data"));
        let both = [("HUGGINGFACE_HUB_CACHE", "/data"), ("HF_HUB_CACHE", "/new")];
        assert_eq!(settings(&both).cache_dir, PathBuf::from("/new"));
    }

    #[test]
    fn legacy_token_variable_is_read_after_hf_token() {
        let legacy = [
            ("HOME", "/nonexistent"),
            ("HUGGING_FACE_HUB_TOKEN", "hf_old"),
        ];
        assert_eq!(settings(&legacy).token.as_deref(), Some("hf_old"));
        let both = [
            ("HF_HOME", "/nonexistent"),
            ("HUGGING_FACE_HUB_TOKEN", "hf_old"),
            ("HF_TOKEN", "hf_new"),
        ];
        assert_eq!(settings(&both).token.as_deref(), Some("hf_new"));
        let flag = HubSettings::from_vars(Some("hf_flag".into()), |_| Some("hf_env".into()));
        assert_eq!(flag.expect("settings").token.as_deref(), Some("hf_flag"));
    }

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
