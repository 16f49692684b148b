//! Request-size limits and the parameter each 400 names, through the whole router.

mod common;

use axum::http::StatusCode;
use common::{Harness, Options, config, script_of};
use serde_json::{Value, json};

async fn harness() -> Option<Harness> {
    let tokenizer = common::tokenizer()?;
    let script = script_of(&tokenizer, " Seoul.");
    Harness::start(vec![config(script)], Options::default()).await
}

fn param(err: &Value) -> &str {
    err["error"]["param"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn too_many_sequences_and_bad_logprobs_are_400s_naming_the_param() {
    let Some(h) = harness().await else {
        return;
    };
    // 4,097 one-token prompts: over the per-request bound of 4,096 sequences.
    let many = json!({"prompt": vec![vec![17]; 4097], "max_tokens": 1});
    let (status, err) = h.post_json("/v1/completions", many).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(param(&err), "prompt", "{err}");
    assert_eq!(err["error"]["type"], "invalid_request_error");
    // 600 prompts × n = 8 (the harness's max_n) = 4,800.
    let times_n = json!({"prompt": vec![vec![17]; 600], "max_tokens": 1, "n": 8});
    let (status, err) = h.post_json("/v1/completions", times_n).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(param(&err), "n", "{err}");
    // Completions call it `logprobs`; the 400 used to name chat's `top_logprobs`.
    let lp = json!({"prompt": "Hi", "max_tokens": 1, "logprobs": 21});
    let (status, err) = h.post_json("/v1/completions", lp).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(param(&err), "logprobs", "{err}");
    let chat = json!({"messages": [{"role": "user", "content": "Hi"}],
        "logprobs": true, "top_logprobs": 21});
    let (status, err) = h.post_json("/v1/chat/completions", chat).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(param(&err), "top_logprobs", "{err}");
    assert!(
        h.shards[0].submits().is_empty(),
        "nothing reached the shard"
    );
    // At the bound it is served: 512 prompts × n = 8 = 4,096 choices.
    let at_bound = json!({"prompt": vec![vec![17]; 512], "max_tokens": 1, "n": 8});
    let (status, body) = h.post_json("/v1/completions", at_bound).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["choices"].as_array().map(Vec::len), Some(4096));
}

#[tokio::test]
async fn context_overflow_names_the_param_the_client_sent() {
    let Some(h) = harness().await else {
        return;
    };
    // The fake shard's context is 256 tokens. A completions prompt has no `messages`.
    let long = json!({"prompt": vec![17; 300]});
    let (status, err) = h.post_json("/v1/completions", long).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(param(&err), "prompt", "{err}");
    let long_chat = json!({"messages": [{"role": "user", "content": "Hi ".repeat(300)}]});
    let (status, err) = h.post_json("/v1/chat/completions", long_chat).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(param(&err), "messages", "{err}");
    // Too many new tokens: the error names the parameter the client used.
    for name in ["max_completion_tokens", "max_tokens"] {
        let body = json!({"messages": [{"role": "user", "content": "Hi"}], name: 300});
        let (status, err) = h.post_json("/v1/chat/completions", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
        assert_eq!(param(&err), name, "{err}");
    }
    assert!(
        h.shards[0].submits().is_empty(),
        "nothing reached the shard"
    );
}

#[tokio::test]
async fn stop_strings_are_bounded_with_a_400_naming_stop() {
    let Some(h) = harness().await else {
        return;
    };
    let too_many = json!({"prompt": "Hi", "max_tokens": 1, "stop": vec!["x"; 65]});
    let (status, err) = h.post_json("/v1/completions", too_many).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(param(&err), "stop", "{err}");
    let too_long = json!({"messages": [{"role": "user", "content": "Hi"}],
        "stop": "x".repeat(257)});
    let (status, err) = h.post_json("/v1/chat/completions", too_long).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(param(&err), "stop", "{err}");
    assert!(
        h.shards[0].submits().is_empty(),
        "nothing reached the shard"
    );
    let at_bound = json!({"prompt": "Hi", "max_tokens": 1, "stop": vec!["x".repeat(256); 64]});
    let (status, body) = h.post_json("/v1/completions", at_bound).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
