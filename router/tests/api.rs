//! The whole router (HTTP -> validation -> batching -> gRPC -> SSE) against fake shards.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{Harness, Options, config, eventually, json_body, script_of, sse_payloads};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

const ANSWER: &str = " The capital of South Korea is Seoul. It is a large city.";

async fn harness() -> Option<(Harness, Vec<u32>)> {
    let tokenizer = common::tokenizer()?;
    let script = script_of(&tokenizer, ANSWER);
    let h = Harness::start(vec![config(script.clone())], Options::default()).await?;
    Some((h, script))
}

fn chat_body(extra: Value) -> Value {
    let mut body = json!({
        "model": common::MODEL,
        "messages": [{"role": "user", "content": "What is the capital of South Korea?"}],
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

#[tokio::test]
async fn chat_completion_returns_text_and_usage() {
    let Some((h, script)) = harness().await else {
        return;
    };
    let (status, body) = h
        .post_json("/v1/chat/completions", chat_body(json!({})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(
        body["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-"))
    );
    assert_eq!(body["model"], common::MODEL);
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], ANSWER);
    assert_eq!(choice["finish_reason"], "stop");
    let prompt = h.chat_prompt_len("What is the capital of South Korea?");
    // The script plus the EOS token the fake shard ends with.
    let completion = script.len() + 1;
    assert_eq!(body["usage"]["prompt_tokens"], prompt);
    assert_eq!(body["usage"]["completion_tokens"], completion);
    assert_eq!(body["usage"]["total_tokens"], prompt + completion);
    let submits = h.shards[0].submits();
    assert_eq!(submits.len(), 1);
    assert_eq!(submits[0][0].prompt_ids.len(), prompt);
    let stopping = submits[0][0].stopping.clone().unwrap_or_default();
    assert_eq!(
        stopping.max_tokens as usize,
        256 - prompt,
        "absent max_tokens fills the context"
    );
}

#[tokio::test]
async fn chat_stream_with_include_usage() {
    let Some((h, script)) = harness().await else {
        return;
    };
    let body = chat_body(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let response = h
        .post("/v1/chat/completions", &body.to_string(), None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers().get("content-type").cloned();
    assert_eq!(
        content_type.as_ref().and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let payloads = sse_payloads(&common::body_text(response).await);
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).expect("chunk is JSON"))
        .collect();
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let mut text = String::new();
    let mut finishes = Vec::new();
    for chunk in &chunks[..chunks.len() - 1] {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["usage"], Value::Null);
        assert!(chunk.as_object().is_some_and(|o| o.contains_key("usage")));
        let choice = &chunk["choices"][0];
        text.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        if !choice["finish_reason"].is_null() {
            finishes.push(choice["finish_reason"].clone());
        }
    }
    assert_eq!(text, ANSWER);
    assert_eq!(finishes, vec![json!("stop")]);
    let last = &chunks[chunks.len() - 1];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], script.len() + 1);
}

#[tokio::test]
async fn n_two_gives_two_seeded_choices_in_one_submit() {
    let Some((h, script)) = harness().await else {
        return;
    };
    let body = chat_body(json!({"n": 2, "seed": 0, "max_tokens": 4}));
    let (status, body) = h.post_json("/v1/chat/completions", body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let choices = body["choices"].as_array().cloned().unwrap_or_default();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[1]["index"], 1);
    assert_ne!(
        choices[0]["message"]["content"],
        choices[1]["message"]["content"]
    );
    for choice in &choices {
        assert_eq!(choice["finish_reason"], "length");
    }
    let want0 = h.tokenizer.decode(&script[..4], true).expect("decode");
    assert_eq!(choices[0]["message"]["content"], want0.as_str());
    assert_eq!(body["usage"]["completion_tokens"], 8);
    assert_eq!(
        body["usage"]["prompt_tokens"],
        h.chat_prompt_len("What is the capital of South Korea?")
    );
    let submits = h.shards[0].submits();
    assert_eq!(submits.len(), 1, "both sequences go out in one Submit");
    let seeds: Vec<_> = submits[0]
        .iter()
        .map(|r| r.sampling.and_then(|s| s.seed))
        .collect();
    assert_eq!(seeds, vec![Some(0), Some(1)]);
}

#[tokio::test]
async fn stop_string_truncates_and_cancels_the_sequence() {
    let Some(tokenizer) = common::tokenizer() else {
        return;
    };
    // Slow and endless, so the sequence is surely still running at the stop string.
    let mut cfg = config(script_of(&tokenizer, ANSWER));
    cfg.cycle = true;
    cfg.step = Duration::from_millis(10);
    let Some(h) = Harness::start(vec![cfg], Options::default()).await else {
        return;
    };
    let body = chat_body(json!({"stop": ["Seoul", "never"], "max_tokens": 100}));
    let (status, body) = h.post_json("/v1/chat/completions", body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        " The capital of South Korea is "
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let id = h.shards[0].submits()[0][0].id;
    let shard = &h.shards[0];
    assert!(
        eventually(|| shard.cancelled_ids().contains(&id)).await,
        "shard saw Cancel"
    );
}

#[tokio::test]
async fn client_disconnect_cancels_on_the_shard() {
    let Some(tokenizer) = common::tokenizer() else {
        return;
    };
    let mut cfg = config(script_of(&tokenizer, ANSWER));
    cfg.cycle = true;
    cfg.step = Duration::from_millis(20);
    let Some(h) = Harness::start(vec![cfg], Options::default()).await else {
        return;
    };
    let body = chat_body(json!({"stream": true, "max_tokens": 200}));
    let response = h
        .post("/v1/chat/completions", &body.to_string(), None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.into_body().into_data_stream();
    let first = stream.next().await;
    assert!(matches!(first, Some(Ok(ref b)) if b.starts_with(b"data: ")));
    let shard = &h.shards[0];
    assert!(eventually(|| !shard.submits().is_empty()).await);
    let id = shard.submits()[0][0].id;
    assert!(
        shard.cancelled_ids().is_empty(),
        "nothing cancelled while connected"
    );
    drop(stream);
    assert!(
        eventually(|| shard.cancelled_ids() == vec![id]).await,
        "disconnect sends Cancel"
    );
    assert!(eventually(|| h.state.shards.shards()[0].load().sequences == 0).await);
}

#[tokio::test]
async fn api_key_is_required_except_for_health() {
    let Some(tokenizer) = common::tokenizer() else {
        return;
    };
    let options = Options {
        api_key: Some("sk-test".into()),
        ..Options::default()
    };
    let cfg = config(script_of(&tokenizer, ANSWER));
    let Some(h) = Harness::start(vec![cfg], options).await else {
        return;
    };
    let body = chat_body(json!({"max_tokens": 2})).to_string();
    for key in [None, Some("sk-wrong")] {
        let response = h.post("/v1/chat/completions", &body, key).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let err = json_body(response).await;
        assert_eq!(err["error"]["code"], "invalid_api_key");
        assert_eq!(err["error"]["type"], "invalid_request_error");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let ok = h.post("/v1/chat/completions", &body, Some("sk-test")).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let models = axum::http::Request::get("/v1/models").body(axum::body::Body::empty());
    let models = h.send(models.expect("request")).await;
    assert_eq!(models.status(), StatusCode::UNAUTHORIZED);
    let health = axum::http::Request::get("/health").body(axum::body::Body::empty());
    assert_eq!(
        h.send(health.expect("request")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn invalid_requests_get_openai_error_bodies() {
    let Some((h, _)) = harness().await else {
        return;
    };
    let cases = [
        (
            chat_body(json!({"model": "gpt-4"})).to_string(),
            StatusCode::NOT_FOUND,
            "model_not_found",
        ),
        ("{not json".to_string(), StatusCode::BAD_REQUEST, ""),
        (
            json!({"messages": []}).to_string(),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            chat_body(json!({"max_tokens": 0})).to_string(),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            chat_body(json!({"temperature": 9})).to_string(),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            json!({"messages": "hi"}).to_string(),
            StatusCode::BAD_REQUEST,
            "",
        ),
    ];
    for (body, status, code) in cases {
        let response = h.post("/v1/chat/completions", &body, None).await;
        assert_eq!(response.status(), status, "{body}");
        let err = json_body(response).await;
        assert_eq!(err["error"]["type"], "invalid_request_error", "{body}");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        if !code.is_empty() {
            assert_eq!(err["error"]["code"], code);
            assert_eq!(err["error"]["message"], "The model `gpt-4` does not exist.");
        }
    }
    let too_long = json!({"prompt": vec![17; 300], "max_tokens": 5});
    let (status, err) = h.post_json("/v1/completions", too_long).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("maximum context length is 256"))
    );
    let over = json!({"prompt": vec![17; 200], "max_tokens": 100});
    let (status, err) = h.post_json("/v1/completions", over).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("(200 in the messages, 100 in the completion)"))
    );
    assert!(
        h.shards[0].submits().is_empty(),
        "nothing invalid reached the shard"
    );
}

#[tokio::test]
async fn concurrent_requests_share_one_submit_and_all_complete() {
    let Some((h, _)) = harness().await else {
        return;
    };
    let body = chat_body(json!({"stream": true})).to_string();
    // One current-thread runtime: all handlers enqueue before the shard task runs.
    let responses =
        futures::future::join_all((0..8).map(|_| h.post("/v1/chat/completions", &body, None)))
            .await;
    let texts = futures::future::join_all(responses.into_iter().map(|r| async move {
        let payloads = sse_payloads(&common::body_text(r).await);
        payloads
            .iter()
            .filter_map(|p| serde_json::from_str::<Value>(p).ok())
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(String::from)
            })
            .collect::<String>()
    }))
    .await;
    assert!(texts.iter().all(|t| t == ANSWER), "{texts:?}");
    let submits = h.shards[0].submits();
    assert_eq!(
        submits.len(),
        1,
        "same-tick requests batched into one Submit"
    );
    let mut ids: Vec<u64> = submits[0].iter().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 8, "ids unique per stream");
}
