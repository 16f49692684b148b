//! A model in Hugging Face layout served end to end through the launcher: the tiny Mistral
//! checkpoint (bf16 safetensors in five shards with an index, sliding window of 8 tokens,
//! chat template as a list of named templates) laid out in a private HF hub cache as the hub
//! client writes it (blobs, `refs/main`, symlinked snapshot), served as
//! `--model pagedserve-test/tiny-mistral` with `HF_HUB_OFFLINE=1`, so resolution must come
//! from the cache and never from the network.

use std::path::{Path, PathBuf};

use pagedserve_integration_tests::http::{self, Response};
use pagedserve_integration_tests::{Server, ServerOptions};
use serde_json::{Value, json};

const REPO: &str = "pagedserve-test/tiny-mistral";
const COMMIT: &str = "aaaabbbbccccddddeeeeffff0000111122223333";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shard/tests/data/hf/mistral")
}

/// `<cache>/models--pagedserve-test--tiny-mistral` with every fixture file as a blob.
fn hf_cache() -> PathBuf {
    let cache = std::env::temp_dir().join(format!("pagedserve-it-hfcache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let repo = cache.join("models--pagedserve-test--tiny-mistral");
    let snapshot = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(repo.join("blobs")).expect("blobs");
    std::fs::create_dir_all(repo.join("refs")).expect("refs");
    std::fs::create_dir_all(&snapshot).expect("snapshot");
    let entries = std::fs::read_dir(fixture()).expect("fixture dir");
    for (i, entry) in entries.enumerate() {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let blob = format!("{i:040x}");
        std::fs::copy(&path, repo.join("blobs").join(&blob)).expect("blob");
        std::os::unix::fs::symlink(format!("../../blobs/{blob}"), snapshot.join(&name))
            .expect("symlink");
    }
    std::fs::write(repo.join("refs/main"), COMMIT).expect("refs/main");
    cache
}

fn post(server: &Server, path: &str, body: &Value) -> Response {
    http::post_json(server.port, path, Some(&server.api_key), body)
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

#[test]
fn tiny_mistral_from_the_hf_cache_serves_like_transformers() {
    let cache = hf_cache();
    // SAFETY: set before the server (and any other thread of this test binary) starts; the
    // launcher child inherits them.
    unsafe {
        std::env::set_var("HF_HUB_CACHE", &cache);
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    let mut opts = ServerOptions::new("hf_model");
    opts.num_shards = 1;
    opts.extra_args = ["--model", REPO, "--num-kv-blocks", "64"]
        .map(String::from)
        .to_vec();
    let server = Server::start(&opts);

    let models = http::get(server.port, "/v1/models", Some(&server.api_key)).expect("models");
    assert_eq!(models.json()["data"][0]["id"], REPO, "{}", models.text());

    // Greedy tokens of transformers for the 27-token prompt, which only a correct sliding
    // window, shard loading and Q/K permutation reproduce.
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture().join("expected.json")).expect("expected.json"),
    )
    .expect("parses");
    let case = &expected["cases"][1];
    let prompt: Vec<u64> = case["prompt_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let want: Vec<u64> = case["generated_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let body = json!({"model": REPO, "prompt": prompt, "max_tokens": want.len(),
                      "temperature": 0, "ignore_eos": true});
    let resp = post(&server, "/v1/completions", &body);
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), server.log_tail(30));
    let text = resp.json()["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string();
    let detok = post(&server, "/detokenize", &json!({"tokens": want}));
    assert_eq!(
        text,
        detok.json()["prompt"],
        "greedy text vs transformers' tokens"
    );
    assert_eq!(resp.json()["usage"]["completion_tokens"], want.len());

    // The chat template comes from tokenizer_config.json; its own error is a 400 with its
    // message.
    let chat = |messages: Value| {
        post(
            &server,
            "/v1/chat/completions",
            &json!({"model": REPO, "messages": messages, "max_tokens": 3}),
        )
    };
    let ok = chat(json!([{"role": "user", "content": "Hello world"}]));
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(ok.json()["usage"]["prompt_tokens"].as_u64() > Some(3));
    let refused = chat(json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"}
    ]));
    assert_eq!(refused.status, 400, "{}", refused.text());
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("Conversation roles must alternate"),
        "{message}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&cache);
}
