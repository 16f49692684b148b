//! Completions, auxiliary routes, balancing, admission and shard failures, against
//! fake shards.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Harness, Options, config, eventually, json_body, script_of, sse_payloads};
use pagedserve_proto::v1::ErrorKind;
use serde_json::{Value, json};
use tokio_stream::StreamExt;

const ANSWER: &str = " Paris is the capital of France.";

async fn harness() -> Option<(Harness, Vec<u32>)> {
    let tokenizer = common::tokenizer()?;
    let script = script_of(&tokenizer, ANSWER);
    let h = Harness::start(vec![config(script.clone())], Options::default()).await?;
    Some((h, script))
}

async fn get(h: &Harness, path: &str) -> (StatusCode, String) {
    let response = h
        .send(Request::get(path).body(Body::empty()).expect("request"))
        .await;
    let status = response.status();
    (status, common::body_text(response).await)
}

#[tokio::test]
async fn completions_with_several_prompt_forms() {
    let Some((h, script)) = harness().await else {
        return;
    };
    let ids = h.tokenizer.encode("Hello there", false).expect("encode");
    for (prompt, prompts) in [
        (json!("Hello there"), 1),
        (json!(["Hello there", "Bonjour"]), 2),
        (json!(ids.clone()), 1),
        (json!([ids.clone(), [5, 6, 7]]), 2),
    ] {
        let body = json!({"model": common::MODEL, "prompt": prompt, "max_tokens": 3});
        let (status, body) = h.post_json("/v1/completions", body).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["object"], "text_completion");
        let choices = body["choices"].as_array().cloned().unwrap_or_default();
        assert_eq!(choices.len(), prompts, "one choice group per prompt");
        let want = h.tokenizer.decode(&script[..3], true).expect("decode");
        for (i, choice) in choices.iter().enumerate() {
            assert_eq!(choice["index"], i);
            assert_eq!(choice["text"], want.as_str());
            assert_eq!(choice["finish_reason"], "length");
        }
        assert_eq!(body["usage"]["completion_tokens"], 3 * prompts);
    }
    let (_, body) = h
        .post_json(
            "/v1/completions",
            json!({"prompt": [ids.clone(), [5, 6, 7]], "max_tokens": 1}),
        )
        .await;
    assert_eq!(body["usage"]["prompt_tokens"], ids.len() + 3);
}

#[tokio::test]
async fn completions_echo_prefixes_the_prompt() {
    let Some((h, script)) = harness().await else {
        return;
    };
    let want = h.tokenizer.decode(&script[..2], true).expect("decode");
    let body = json!({"prompt": ["Say:", "Do:"], "max_tokens": 2, "echo": true, "n": 2});
    let (status, body) = h.post_json("/v1/completions", body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let texts: Vec<_> = (0..4).map(|i| body["choices"][i]["text"].clone()).collect();
    let say = format!("Say:{want}");
    let dos = format!("Do:{want}");
    assert_eq!(texts, vec![json!(say), json!(say), json!(dos), json!(dos)]);
    let stream = json!({"prompt": "Say:", "max_tokens": 2, "echo": true, "stream": true});
    let response = h.post("/v1/completions", &stream.to_string(), None).await;
    let payloads = sse_payloads(&common::body_text(response).await);
    let first: Value = serde_json::from_str(&payloads[0]).expect("json");
    assert_eq!(first["choices"][0]["text"], "Say:");
}

#[tokio::test]
async fn completions_stream_and_logprobs() {
    let Some((h, script)) = harness().await else {
        return;
    };
    let body = json!({"prompt": "Hi", "max_tokens": 4, "stream": true, "logprobs": 2});
    let response = h.post("/v1/completions", &body.to_string(), None).await;
    let payloads = sse_payloads(&common::body_text(response).await);
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).expect("chunk JSON"))
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "text_completion" && c.get("usage").is_none())
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(
        text,
        h.tokenizer.decode(&script[..4], true).expect("decode")
    );
    let lp = &chunks[0]["choices"][0]["logprobs"];
    assert_eq!(lp["token_logprobs"], json!([-0.5]));
    assert_eq!(lp["text_offset"], json!([0]));
    assert_eq!(lp["top_logprobs"][0].as_object().map(|o| o.len()), Some(2));
    assert_eq!(
        chunks
            .last()
            .map(|c| c["choices"][0]["finish_reason"].clone()),
        Some(json!("length"))
    );

    let chat = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
        "logprobs": true, "top_logprobs": 3});
    let (status, body) = h.post_json("/v1/chat/completions", chat).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let content = &body["choices"][0]["logprobs"]["content"];
    assert_eq!(content.as_array().map(Vec::len), Some(2));
    let first_bytes = h.tokenizer.token_bytes(script[0]).expect("token bytes");
    assert_eq!(content[0]["bytes"], json!(first_bytes));
    assert_eq!(content[0]["top_logprobs"].as_array().map(Vec::len), Some(3));
    let submitted = h.shards[0].submits().concat();
    assert!(submitted.iter().all(|r| r.logprobs));
    assert_eq!(submitted.last().map(|r| r.top_logprobs), Some(3));
}

#[tokio::test]
async fn models_tokenize_detokenize() {
    let Some((h, _)) = harness().await else {
        return;
    };
    let (status, body) = get(&h, "/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    let models: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], common::MODEL);
    assert_eq!(models["data"][0]["object"], "model");

    let (status, tok) = h
        .post_json("/tokenize", json!({"prompt": "Hello world"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{tok}");
    let want = h.tokenizer.encode("Hello world", true).expect("encode");
    assert_eq!(tok["tokens"], json!(want));
    assert_eq!(tok["count"], want.len());
    assert_eq!(tok["max_model_len"], 256);
    let chat = json!({"messages": [{"role": "user", "content": "Hi"}]});
    let (_, chat_tok) = h.post_json("/tokenize", chat).await;
    assert_eq!(chat_tok["count"], h.chat_prompt_len("Hi"));
    let (status, detok) = h.post_json("/detokenize", json!({"tokens": want})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detok["prompt"], "Hello world");
    let (status, _) = h
        .post_json("/tokenize", json!({"model": "other", "prompt": "x"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn health_is_503_without_a_shard() {
    let Some(tokenizer) = common::tokenizer() else {
        return;
    };
    let _ = tokenizer;
    let options = Options {
        extra_urls: vec!["http://127.0.0.1:1".into()],
        ..Options::default()
    };
    let Some(h) = Harness::start(Vec::new(), options).await else {
        return;
    };
    let (status, _) = get(&h, "/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body = json!({"messages": [{"role": "user", "content": "Hi"}]});
    let (status, err) = h.post_json("/v1/chat/completions", body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(err["error"]["type"], "server_error");
}

#[tokio::test]
async fn least_loaded_shard_gets_the_next_request() {
    let Some(tokenizer) = common::tokenizer() else {
        return;
    };
    let mut cfg = config(script_of(&tokenizer, ANSWER));
    cfg.cycle = true;
    cfg.step = Duration::from_millis(20);
    let Some(h) = Harness::start(vec![cfg.clone(), cfg], Options::default()).await else {
        return;
    };
    let long = json!({"prompt": "x ".repeat(50), "max_tokens": 200, "stream": true}).to_string();
    let busy = h.post("/v1/completions", &long, None).await;
    let mut busy = busy.into_body().into_data_stream();
    assert!(busy.next().await.is_some());
    let (status, _) = h
        .post_json("/v1/completions", json!({"prompt": "y", "max_tokens": 2}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        h.shards[0].submits().len(),
        1,
        "first request went to shard 0"
    );
    assert_eq!(
        h.shards[1].submits().len(),
        1,
        "second avoided the busy shard"
    );
    drop(busy);
    let shard0 = &h.shards[0];
    assert!(eventually(|| shard0.cancelled_ids().len() == 1).await);
}

#[tokio::test]
async fn waiting_limit_gives_429_with_retry_after() {
    let Some(tokenizer) = common::tokenizer() else {
        return;
    };
    let options = Options {
        max_waiting: 0,
        ..Options::default()
    };
    let cfg = config(script_of(&tokenizer, ANSWER));
    let Some(h) = Harness::start(vec![cfg], options).await else {
        return;
    };
    let body = json!({"prompt": "Hi", "max_tokens": 2}).to_string();
    let response = h.post("/v1/completions", &body, None).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    let err = json_body(response).await;
    assert_eq!(err["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn broken_shard_stream_fails_requests_then_reconnects() {
    let Some(tokenizer) = common::tokenizer() else {
        return;
    };
    let mut cfg = config(script_of(&tokenizer, ANSWER));
    cfg.cycle = true;
    cfg.fail_at_step = Some(3);
    let Some(h) = Harness::start(vec![cfg], Options::default()).await else {
        return;
    };
    // Streaming: the failure arrives as an SSE error event, then [DONE].
    let stream = json!({"prompt": "Hi", "max_tokens": 50, "stream": true});
    let response = h.post("/v1/completions", &stream.to_string(), None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let payloads = sse_payloads(&common::body_text(response).await);
    let error: Value = serde_json::from_str(&payloads[payloads.len() - 2]).expect("json");
    assert_eq!(error["error"]["type"], "server_error", "{payloads:?}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("fake engine crashed"))
    );
    let state = &h.state;
    assert!(eventually(|| state.shards.any_ready()).await, "reconnected");
    // Non-streaming: a 500 with an OpenAI body.
    let (status, err) = h
        .post_json("/v1/completions", json!({"prompt": "Hi", "max_tokens": 50}))
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{err}");
    assert_eq!(err["error"]["type"], "server_error");
    assert!(
        eventually(|| state.shards.any_ready()).await,
        "reconnected again"
    );
    // Short requests finish before the crash step: served normally.
    let (status, body) = h
        .post_json("/v1/completions", json!({"prompt": "Hi", "max_tokens": 2}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn a_sequence_the_shard_fails_is_a_500_or_an_error_event_naming_the_cause() {
    let Some(tokenizer) = common::tokenizer() else {
        return;
    };
    // An ERROR finish of kind INTERNAL is the engine's own failure: a server error, whose
    // message says it came from the model shard and carries the shard's reason.
    let mut cfg = config(script_of(&tokenizer, ANSWER));
    cfg.fail_sequence_at = Some((3, "forward pass failed: out of memory"));
    let Some(h) = Harness::start(vec![cfg], Options::default()).await else {
        return;
    };
    let expected = "the model shard failed the request: forward pass failed: out of memory";
    let body = json!({"prompt": "Hi", "max_tokens": 50});
    let (status, err) = h.post_json("/v1/completions", body).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{err}");
    assert_eq!(err["error"]["type"], "server_error", "{err}");
    assert_eq!(err["error"]["message"], expected, "{err}");
    // Streamed: the status was sent with the first byte, so the tokens so far, then one
    // OpenAI error event, then [DONE] (checked by sse_payloads).
    let stream = json!({"prompt": "Hi", "max_tokens": 50, "stream": true});
    let response = h.post("/v1/completions", &stream.to_string(), None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let payloads = sse_payloads(&common::body_text(response).await);
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).expect("json"))
        .collect();
    let (error, tokens) = chunks.split_last().expect("an error event");
    assert_eq!(error["error"]["type"], "server_error", "{payloads:?}");
    assert_eq!(error["error"]["message"], expected, "{payloads:?}");
    assert!(!tokens.is_empty(), "{payloads:?}");
    assert!(
        tokens
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null()),
        "{payloads:?}"
    );
}

#[tokio::test]
async fn a_request_the_shard_rejects_is_a_400_naming_the_cause() {
    let Some(tokenizer) = common::tokenizer() else {
        return;
    };
    // The router checks what the shard checks at submit, but against the limits of the
    // shards that were ready when it validated; a shard that rejects the request anyway
    // (INVALID_REQUEST) answers it with the client's 400, not a 500.
    let mut cfg = config(script_of(&tokenizer, ANSWER));
    let reason = "prompt has 5 tokens, more than the maximum context of 4";
    cfg.fail_sequence_at = Some((0, reason));
    cfg.fail_sequence_kind = ErrorKind::InvalidRequest;
    let Some(h) = Harness::start(vec![cfg], Options::default()).await else {
        return;
    };
    let expected = format!("the model shard rejected the request: {reason}");
    let body = json!({"prompt": "Hi", "max_tokens": 50});
    let (status, err) = h.post_json("/v1/completions", body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"]["type"], "invalid_request_error", "{err}");
    assert_eq!(err["error"]["message"], expected.as_str(), "{err}");
    // Streamed: the 200 went out with the first byte, so one OpenAI error event of the
    // client's type, then [DONE].
    let stream = json!({"prompt": "Hi", "max_tokens": 50, "stream": true});
    let response = h.post("/v1/completions", &stream.to_string(), None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let payloads = sse_payloads(&common::body_text(response).await);
    let error: Value = serde_json::from_str(&payloads[0]).expect("json");
    assert_eq!(
        error["error"]["type"], "invalid_request_error",
        "{payloads:?}"
    );
    assert_eq!(error["error"]["message"], expected.as_str(), "{payloads:?}");
}
