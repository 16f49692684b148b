//! Legacy completions `logprobs.text_offset` with text outside ASCII.

mod common;

use axum::http::StatusCode;
use common::{Harness, Options, config, script_of};
use serde_json::{Value, json};

/// Multi-byte characters: Hangul (3 bytes each) and an emoji (4 bytes).
const ANSWER: &str = " 서울은 수도입니다 🙂";
const PROMPT: &str = "한국의 수도는? 🇰🇷";

fn offsets(logprobs: &Value) -> Vec<u64> {
    logprobs["text_offset"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn text_offset_counts_characters_not_bytes() {
    let Some(tokenizer) = common::tokenizer() else {
        return;
    };
    let script = script_of(&tokenizer, ANSWER);
    let Some(h) = Harness::start(vec![config(script.clone())], Options::default()).await else {
        return;
    };
    // OpenAI and vLLM (Python `len(str)`) count code points, so a client can slice the
    // returned text by them; the echoed prompt shifts every offset.
    let body = json!({"prompt": PROMPT, "max_tokens": 50, "echo": true, "logprobs": 1});
    let (status, body) = h.post_json("/v1/completions", body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["text"], format!("{PROMPT}{ANSWER}"));
    let offsets = offsets(&choice["logprobs"]);
    // One offset per token, the closing EOS included.
    assert_eq!(offsets.len(), script.len() + 1, "{body}");
    let echo = PROMPT.chars().count() as u64;
    assert_eq!(offsets[0], echo, "{body}");
    let end = echo + ANSWER.chars().count() as u64;
    assert_eq!(offsets.last().copied(), Some(end), "{body}");
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
    // Each offset starts a token's text; ASCII-only offsets would pass the checks above.
    let text: Vec<char> = format!("{PROMPT}{ANSWER}").chars().collect();
    assert_eq!(text[offsets[1] as usize], ' ', "{offsets:?}");
}

#[tokio::test]
async fn streamed_text_offset_counts_the_echoed_prompt() {
    let Some(tokenizer) = common::tokenizer() else {
        return;
    };
    let script = script_of(&tokenizer, ANSWER);
    let Some(h) = Harness::start(vec![config(script)], Options::default()).await else {
        return;
    };
    // Offsets index the choice's whole text, as unstreamed: the echoed prompt (sent in the
    // first chunk) included, so both forms give the same offsets.
    let body = json!({"prompt": PROMPT, "max_tokens": 50, "echo": true, "logprobs": 1});
    let (_, whole) = h.post_json("/v1/completions", body.clone()).await;
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let response = h.post("/v1/completions", &streamed.to_string(), None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let payloads = common::sse_payloads(&common::body_text(response).await);
    let mut text = String::new();
    let mut streamed_offsets = Vec::new();
    for payload in &payloads[..payloads.len() - 1] {
        let chunk: Value = serde_json::from_str(payload).expect("json");
        text.push_str(chunk["choices"][0]["text"].as_str().unwrap_or_default());
        streamed_offsets.extend(offsets(&chunk["choices"][0]["logprobs"]));
    }
    assert_eq!(text, format!("{PROMPT}{ANSWER}"));
    assert_eq!(streamed_offsets, offsets(&whole["choices"][0]["logprobs"]));
}
