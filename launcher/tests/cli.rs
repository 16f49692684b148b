//! The `pagedserve` binary's own failure modes, without starting any model.

use std::process::{Command, Output};

fn pagedserve(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pagedserve"))
        .args(args)
        .env_remove("PAGEDSERVE_MODEL")
        .env_remove("PAGEDSERVE_BIN_DIR")
        .output()
        .unwrap_or_else(|e| panic!("run pagedserve: {e}"))
}

fn combined(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn empty_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pagedserve-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    dir
}

#[test]
fn help_lists_the_serve_flags() {
    let out = pagedserve(&["--help"]);
    assert!(out.status.success());
    let text = combined(&out);
    for flag in [
        "--model",
        "--served-model-name",
        "--port",
        "--api-key",
        "--num-shards",
        "--shard-base-port",
        "--threads-per-shard",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}

#[test]
fn a_model_that_is_not_a_file_names_what_is_supported() {
    let bins = empty_dir("model");
    for name in ["pagedserve-shard", "pagedserve-router"] {
        std::fs::write(bins.join(name), b"").unwrap_or_else(|e| panic!("{e}"));
    }
    let bin_dir = bins.to_string_lossy().into_owned();
    let out = pagedserve(&[
        "--model",
        "mistralai/Mistral-7B-Instruct-v0.2",
        "--bin-dir",
        &bin_dir,
    ]);
    let _ = std::fs::remove_dir_all(&bins);
    assert!(!out.status.success());
    let text = combined(&out);
    assert!(
        text.contains("Mistral-7B-Instruct-v0.2") && text.contains(".gguf"),
        "{text}"
    );
}

#[test]
fn missing_child_binaries_are_named() {
    let bins = empty_dir("bins");
    let bin_dir = bins.to_string_lossy().into_owned();
    let out = pagedserve(&["--bin-dir", &bin_dir]);
    let _ = std::fs::remove_dir_all(&bins);
    assert!(!out.status.success());
    assert!(
        combined(&out).contains("pagedserve-shard"),
        "{}",
        combined(&out)
    );
}

#[test]
fn serve_subcommand_takes_the_same_flags() {
    let out = pagedserve(&["serve", "--help"]);
    assert!(out.status.success());
    assert!(combined(&out).contains("--num-shards"));
}
