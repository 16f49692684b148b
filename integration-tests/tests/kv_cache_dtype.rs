//! `--kv-cache-dtype` end to end on the CPU, whose KV cache is f32: fp8 stops the launcher at
//! start (the flag or `KV_CACHE_DTYPE`) with a message on stderr that says why and what to use,
//! and a CPU shard started on its own refuses it too, before it reads the model; `fp8_e5m2` is
//! refused when the flags are parsed, naming the values that are supported. (`auto` serving
//! normally: the shared server of max_model_len.rs is started with it.)

use std::path::Path;
use std::process::{Command, Output, Stdio};

use pagedserve_integration_tests::server::{free_port, profile_dir};

const SUPPORTED: &str = "auto, bf16 (or bfloat16), fp8 (or fp8_e4m3)";

fn binary(name: &str) -> std::path::PathBuf {
    let bin = profile_dir().join(name);
    assert!(bin.is_file(), "{} is missing: build first", bin.display());
    bin
}

/// The launcher on the CPU with the default model, its environment cleaned of every variable
/// that would change what this test sees.
fn launcher() -> Command {
    let mut cmd = Command::new(binary("pagedserve"));
    cmd.args(["--host", "127.0.0.1", "--port", &free_port().to_string()])
        .args(["--num-shards", "1", "--device", "cpu"])
        .args(["--startup-timeout-secs", "120"])
        .env_remove("MODEL_NAME")
        .env_remove("PAGEDSERVE_MODEL")
        .env_remove("PAGEDSERVE_DEVICE")
        .env_remove("PORT")
        .env_remove("API_KEY")
        .env_remove("KV_CACHE_DTYPE")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

/// The process failed, and its stderr has a line with `needle`; returns that line.
fn failed_saying(out: &Output, needle: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "must fail ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        !stdout.contains("pagedserve ready") && !stdout.contains("shard ready"),
        "nothing was served:\n{stdout}"
    );
    stderr
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no `{needle}` on stderr:\n{stderr}\nstdout:\n{stdout}"))
        .to_owned()
}

/// What the fp8-on-CPU refusal must say: the flag, that it needs CUDA, what the CPU cache
/// holds, and what to use instead.
fn assert_explains_fp8_on_cpu(line: &str) {
    for part in ["needs a CUDA device", "f32", "use auto", "--device cuda"] {
        assert!(line.contains(part), "`{part}` missing: {line}");
    }
}

#[test]
fn fp8_on_the_cpu_stops_the_launcher_with_the_reason_on_stderr() {
    for spelling in ["fp8", "fp8_e4m3"] {
        let out = run(launcher().args(["--kv-cache-dtype", spelling]));
        let line = failed_saying(&out, "--kv-cache-dtype fp8 needs a CUDA device");
        assert_explains_fp8_on_cpu(&line);
    }
}

#[test]
fn fp8_from_the_environment_stops_the_launcher_too() {
    let out = run(launcher().env("KV_CACHE_DTYPE", "fp8"));
    let line = failed_saying(&out, "--kv-cache-dtype fp8 needs a CUDA device");
    assert_explains_fp8_on_cpu(&line);
}

/// A shard started by hand (or by a launcher whose `--device auto` found no GPU) refuses fp8
/// itself, before it opens the model file: the path here does not exist.
#[test]
fn a_cpu_shard_refuses_fp8_before_reading_the_model() {
    let missing = Path::new("/nonexistent/pagedserve-kv-cache-dtype-test.gguf");
    let out = run(Command::new(binary("pagedserve-shard"))
        .arg("--model")
        .arg(missing)
        .args(["--host", "127.0.0.1", "--port", &free_port().to_string()])
        .args(["--device", "cpu", "--kv-cache-dtype", "fp8"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null()));
    let line = failed_saying(&out, "--kv-cache-dtype fp8 needs a CUDA device");
    assert_explains_fp8_on_cpu(&line);
}

#[test]
fn e5m2_and_unknown_values_are_refused_naming_the_supported_ones() {
    let out = run(launcher().args(["--kv-cache-dtype", "fp8_e5m2"]));
    let line = failed_saying(&out, "fp8_e5m2");
    assert!(
        line.contains("e4m3 only") && line.contains(SUPPORTED),
        "{line}"
    );
    let out = run(launcher().args(["--kv-cache-dtype", "int4"]));
    let line = failed_saying(&out, "int4");
    assert!(line.contains(SUPPORTED), "{line}");
    // The shard's parser says the same.
    let out = run(Command::new(binary("pagedserve-shard"))
        .args(["--model", "x.gguf", "--kv-cache-dtype", "fp8_e5m2"])
        .stdin(Stdio::null()));
    let line = failed_saying(&out, "fp8_e5m2");
    assert!(
        line.contains("e4m3 only") && line.contains(SUPPORTED),
        "{line}"
    );
}
