//! `pagedserve bench` (the real binary) against a real default-model server: the ShareGPT
//! fixture and the `random` dataset, checked through the result JSON.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pagedserve_integration_tests::server::{profile_dir, random_u64, target_dir};
use pagedserve_integration_tests::{Server, ServerOptions};
use serde_json::Value;

fn server() -> &'static Server {
    Server::shared(|| ServerOptions {
        num_shards: 1,
        ..ServerOptions::new("bench")
    })
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sharegpt_small.json")
}

fn result_path(tag: &str) -> PathBuf {
    let dir = target_dir().join("integration-logs");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir.join(format!("bench-{tag}-{:08x}.json", random_u64() as u32))
}

/// Runs `pagedserve bench <args>` against the shared server.
fn bench(args: &[&str]) -> Output {
    let s = server();
    Command::new(profile_dir().join("pagedserve"))
        .arg("bench")
        .args(["--base-url", &s.base_url(), "--no-progress"])
        .args(args)
        .env("API_KEY", &s.api_key)
        .env("RUST_LOG", "info")
        .output()
        .unwrap_or_else(|e| panic!("run pagedserve bench: {e}"))
}

/// Runs a benchmark that must succeed and returns its result JSON and stdout.
fn bench_ok(tag: &str, args: &[&str]) -> (Value, String) {
    let path = result_path(tag);
    let path_arg = path.to_string_lossy().into_owned();
    let out = bench(&[args, &["--result-json", &path_arg]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench {tag} failed ({}):\n{stdout}\n{stderr}\nserver log:\n{}",
        out.status,
        server().log_tail(30)
    );
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("result JSON: {e}"));
    (json, stdout)
}

fn assert_all_succeeded(r: &Value, expected: usize) {
    assert_eq!(r["completed"], expected, "errors: {}", r["errors"]);
    assert_eq!(r["failed"], 0, "errors: {}", r["errors"]);
    let errors = r["errors"].as_array().expect("errors column");
    assert_eq!(errors.len(), expected);
    assert!(errors.iter().all(|e| e == ""), "{errors:?}");
    // ignore_eos: the server produced exactly the max_tokens each request asked for.
    assert_eq!(r["output_lens"], r["requested_output_lens"]);
    let total: u64 = r["output_lens"]
        .as_array()
        .expect("output_lens")
        .iter()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(r["total_output_tokens"], total);
    for key in [
        "mean_ttft_ms",
        "p99_itl_ms",
        "median_e2el_ms",
        "mean_tpot_ms",
    ] {
        let v = r[key].as_f64().unwrap_or(-1.0);
        assert!(v > 0.0, "{key} = {}", r[key]);
    }
    assert!(r["p99_e2el_ms"].as_f64() >= r["p99_ttft_ms"].as_f64());
}

#[test]
fn sharegpt_fixture_over_completions() {
    let fixture = fixture();
    let (r, stdout) = bench_ok(
        "sharegpt",
        &[
            "--dataset-name",
            "sharegpt",
            "--dataset-path",
            &fixture.to_string_lossy(),
            "--num-prompts",
            "10",
            "--max-concurrency",
            "2",
        ],
    );
    // 7 complete records; one-turn, <4-token prompt and <4-token answer ones are filtered.
    assert!(stdout.contains("kept 7 complete conversations"), "{stdout}");
    assert!(stdout.contains("Serving Benchmark Result"), "{stdout}");
    assert_eq!(r["num_prompts"], 4);
    assert_eq!(r["backend"], "openai");
    assert_eq!(r["model_id"], server().model, "discovered from /v1/models");
    assert_all_succeeded(&r, 4);
    let outputs: Vec<u64> = r["output_lens"]
        .as_array()
        .expect("lens")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert!(
        outputs.iter().all(|&n| n >= 4),
        "answers of 4+ tokens: {outputs:?}"
    );
}

#[test]
fn random_prompts_over_chat_and_compare() {
    let (r, _) = bench_ok(
        "random",
        &[
            "--dataset-name",
            "random",
            "--random-input-len",
            "24",
            "--random-output-len",
            "6",
            "--random-range-ratio",
            "0.5",
            "--num-prompts",
            "3",
            "--request-rate",
            "20",
            "--seed",
            "5",
            "--endpoint",
            "/v1/chat/completions",
        ],
    );
    assert_eq!(r["backend"], "openai-chat");
    assert_eq!(r["request_rate"], 20.0);
    assert_all_succeeded(&r, 3);
    let lens = r["requested_output_lens"].as_array().expect("lens");
    assert!(
        lens.iter()
            .filter_map(Value::as_u64)
            .all(|n| (3..=6).contains(&n)),
        "{lens:?}"
    );

    let a = result_path("cmp");
    std::fs::write(&a, r.to_string()).expect("write copy");
    let cmp = Command::new(profile_dir().join("pagedserve"))
        .args(["bench", "--compare"])
        .args([&a, &a])
        .output()
        .expect("run --compare");
    let text = String::from_utf8_lossy(&cmp.stdout);
    assert!(cmp.status.success(), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("Successful requests"))
        .unwrap_or_else(|| panic!("no row in\n{text}"));
    assert!(row.ends_with("1.000"), "same file, ratio 1: {row}");
}

#[test]
fn jsonl_prompts_with_their_output_lengths() {
    let data = result_path("prompts").with_extension("jsonl");
    let lines = "{\"prompt\": \"Tell me a fact about the Moon.\", \"output_len\": 5}\n\n\
                 {\"prompt\": \"List two fruits.\"}\n";
    std::fs::write(&data, lines).expect("write prompts");
    let (r, _) = bench_ok(
        "jsonl",
        &[
            "--dataset-name",
            "jsonl",
            "--dataset-path",
            &data.to_string_lossy(),
            "--jsonl-output-len",
            "3",
            "--num-prompts",
            "5",
        ],
    );
    assert_all_succeeded(&r, 2);
    assert_eq!(r["output_lens"], serde_json::json!([5, 3]));
}

#[test]
fn unknown_model_fails_fast_with_the_servers_error() {
    let out = bench(&[
        "--dataset-name",
        "random",
        "--random-input-len",
        "8",
        "--random-output-len",
        "2",
        "--num-prompts",
        "2",
        "--model",
        "no-such-model",
    ]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("initial test request failed") && all.contains("404"),
        "{all}"
    );
}
