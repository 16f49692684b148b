//! `--max-model-len` end to end (the real launcher, router and a shard on the default model,
//! whose own context is 8,192): the limit is what `/v1/models` reports, longer prompts get an
//! OpenAI-style 400 naming it, shorter ones still complete, and a limit above the model's own
//! stops the launcher at start with both numbers on stderr. The server is also given
//! `--kv-cache-dtype auto` (passed to the shard), so its completions show that `auto` serves
//! as before (kv_cache_dtype.rs has the refusals).

use std::process::{Command, Stdio};

use pagedserve_integration_tests::http::{self, Response};
use pagedserve_integration_tests::server::{free_port, profile_dir};
use pagedserve_integration_tests::{Server, ServerOptions};
use serde_json::{Value, json};

const MAX_MODEL_LEN: u64 = 64;

fn server() -> &'static Server {
    Server::shared(|| ServerOptions {
        num_shards: 1,
        extra_args: [
            "--max-model-len",
            &MAX_MODEL_LEN.to_string(),
            "--kv-cache-dtype",
            "auto",
        ]
        .map(String::from)
        .to_vec(),
        ..ServerOptions::new("max_model_len")
    })
}

fn post(path: &str, body: &Value) -> Response {
    let s = server();
    http::post_json(s.port, path, Some(&s.api_key), body)
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// Far more than 64 tokens (checked through /tokenize below).
fn long_prompt() -> String {
    " hello".repeat(200)
}

#[test]
fn models_and_tokenize_report_the_limit() {
    let s = server();
    let resp = http::get(s.port, "/v1/models", Some(&s.api_key)).expect("GET /v1/models");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body = resp.json();
    let model = &body["data"][0];
    assert_eq!(model["id"], s.model.as_str(), "{body}");
    assert_eq!(model["max_model_len"], MAX_MODEL_LEN, "{body}");

    let resp = post(
        "/tokenize",
        &json!({"model": s.model, "prompt": long_prompt()}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["max_model_len"], MAX_MODEL_LEN, "{body}");
    let count = body["count"].as_u64().unwrap_or_default();
    assert!(count > MAX_MODEL_LEN, "the long prompt has {count} tokens");
}

/// A 400 with an OpenAI error body whose message names the limit.
fn assert_names_the_limit(resp: &Response, what: &str, param: &str) {
    assert_eq!(resp.status, 400, "{what}: {}", resp.text());
    let body = resp.json();
    let error = &body["error"];
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("maximum context length is {MAX_MODEL_LEN} tokens")),
        "{what}: the message names the limit: {body}"
    );
    assert_eq!(error["type"], "invalid_request_error", "{what}: {body}");
    assert_eq!(error["param"], param, "{what}: {body}");
}

#[test]
fn a_prompt_longer_than_the_limit_is_400_naming_it() {
    let s = server();
    let completion = json!({"model": s.model, "prompt": long_prompt(), "max_tokens": 4});
    assert_names_the_limit(
        &post("/v1/completions", &completion),
        "completions",
        "prompt",
    );
    let chat = json!({
        "model": s.model,
        "messages": [{"role": "user", "content": long_prompt()}],
        "max_tokens": 4,
    });
    assert_names_the_limit(&post("/v1/chat/completions", &chat), "chat", "messages");
    // Within the limit alone, but not with the tokens asked for.
    let too_many = json!({"model": s.model, "prompt": "Hello", "max_tokens": 100});
    assert_names_the_limit(
        &post("/v1/completions", &too_many),
        "prompt + max_tokens",
        "max_tokens",
    );
}

#[test]
fn a_short_prompt_still_completes_within_the_limit() {
    let s = server();
    let resp = post(
        "/v1/completions",
        &json!({"model": s.model, "prompt": "The capital of France is", "max_tokens": 8,
                "temperature": 0}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["object"], "text_completion", "{body}");
    assert!(body["choices"][0]["text"].is_string(), "{body}");
    let completion = body["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    assert!((1..=8).contains(&completion), "{body}");

    // Without max_tokens the router fills in what is left of the 64 tokens; generation stops
    // there at the latest.
    let resp = post(
        "/v1/chat/completions",
        &json!({"model": s.model, "messages": [{"role": "user", "content": "Hi!"}],
                "temperature": 0}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body = resp.json();
    let usage = &body["usage"];
    let total = usage["total_tokens"].as_u64().unwrap_or(u64::MAX);
    assert!(
        usage["completion_tokens"].as_u64().unwrap_or(0) >= 1 && total <= MAX_MODEL_LEN,
        "{body}"
    );
}

#[test]
fn a_limit_above_the_models_own_stops_the_launcher() {
    let bin = profile_dir().join("pagedserve");
    assert!(bin.is_file(), "{} is missing: build first", bin.display());
    let out = Command::new(&bin)
        .args(["--host", "127.0.0.1", "--port", &free_port().to_string()])
        .args(["--num-shards", "1", "--startup-timeout-secs", "120"])
        .args(["--max-model-len", "10000000"])
        .env_remove("MODEL_NAME")
        .env_remove("PAGEDSERVE_MODEL")
        .env_remove("PORT")
        .env_remove("API_KEY")
        .env_remove("MAX_MODEL_LEN")
        .env_remove("KV_CACHE_DTYPE")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the launcher must fail ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let line = stderr
        .lines()
        .find(|l| l.contains("--max-model-len 10000000"))
        .unwrap_or_else(|| panic!("no error on stderr:\n{stderr}\nstdout:\n{stdout}"));
    assert!(
        line.contains("maximum context of 8192 tokens"),
        "names the model's own limit: {line}"
    );
    assert!(
        !stdout.contains("pagedserve ready"),
        "nothing was served:\n{stdout}"
    );
}
