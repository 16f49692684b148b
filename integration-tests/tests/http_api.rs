//! Raw HTTP against a real pagedserve: exact status codes, OpenAI error bodies, SSE bytes.

use pagedserve_integration_tests::http::{self, EventStream, Response};
use pagedserve_integration_tests::{Server, ServerOptions};
use serde_json::{Value, json};

fn server() -> &'static Server {
    Server::shared(|| ServerOptions::new("http_api"))
}

fn key() -> Option<&'static str> {
    Some(server().api_key.as_str())
}

fn chat_body(extra: Value) -> Value {
    let mut body = json!({
        "model": server().model,
        "messages": [{"role": "user", "content": "Hello!"}],
        "max_tokens": 4,
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

fn post(path: &str, api_key: Option<&str>, body: &Value) -> Response {
    http::post_json(server().port, path, api_key, body)
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// `status` with an OpenAI error body: `{"error": {"message": "...", "type": "...", ...}}`.
fn assert_openai_error(resp: &Response, status: u16, what: &str) -> Value {
    assert_eq!(resp.status, status, "{what}: body {}", resp.text());
    let body = resp.json();
    let error = &body["error"];
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        !message.is_empty(),
        "{what}: error.message missing in {body}"
    );
    assert!(
        error["type"].is_string(),
        "{what}: error.type missing in {body}"
    );
    error.clone()
}

#[test]
fn health_is_200_without_a_key() {
    let resp = http::get(server().port, "/health", None).expect("GET /health");
    assert_eq!(resp.status, 200);
}

#[test]
fn models_lists_the_served_name() {
    let resp = http::get(server().port, "/v1/models", key()).expect("GET /v1/models");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body = resp.json();
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"].as_array().map_or(vec![], |d| {
        d.iter().filter_map(|m| m["id"].as_str()).collect()
    });
    assert_eq!(ids, [server().model.as_str()]);
}

#[test]
fn missing_or_wrong_key_is_401() {
    let body = chat_body(json!({}));
    let none = post("/v1/chat/completions", None, &body);
    assert_openai_error(&none, 401, "no key");
    let wrong = post("/v1/chat/completions", Some("not-the-key"), &body);
    assert_openai_error(&wrong, 401, "wrong key");
    let models =
        http::get(server().port, "/v1/models", Some("not-the-key")).expect("GET /v1/models");
    assert_openai_error(&models, 401, "wrong key on /v1/models");
}

#[test]
fn unknown_model_is_404_model_not_found() {
    let resp = post(
        "/v1/chat/completions",
        key(),
        &chat_body(json!({"model": "no-such-model"})),
    );
    let error = assert_openai_error(&resp, 404, "unknown model");
    assert_eq!(error["code"], "model_not_found", "{error}");
    let completion = json!({"model": "no-such-model", "prompt": "hi", "max_tokens": 2});
    let resp = post("/v1/completions", key(), &completion);
    assert_eq!(
        assert_openai_error(&resp, 404, "unknown model (completions)")["code"],
        "model_not_found"
    );
}

#[test]
fn invalid_json_is_400() {
    let resp = http::request(
        server().port,
        "POST",
        "/v1/chat/completions",
        key(),
        Some(b"{\"model\": "),
    )
    .expect("POST invalid JSON");
    assert_openai_error(&resp, 400, "invalid JSON");
}

#[test]
fn empty_messages_is_400() {
    let resp = post(
        "/v1/chat/completions",
        key(),
        &chat_body(json!({"messages": []})),
    );
    assert_openai_error(&resp, 400, "empty messages");
}

#[test]
fn max_tokens_below_one_is_400() {
    for bad in [0, -1] {
        let resp = post(
            "/v1/chat/completions",
            key(),
            &chat_body(json!({"max_tokens": bad})),
        );
        assert_openai_error(&resp, 400, &format!("chat max_tokens {bad}"));
        let completion = json!({"model": server().model, "prompt": "hi", "max_tokens": bad});
        let resp = post("/v1/completions", key(), &completion);
        assert_openai_error(&resp, 400, &format!("completions max_tokens {bad}"));
    }
}

#[test]
fn prompt_longer_than_the_context_is_400() {
    // Far more than the 8192-token context: one token per " hello" at least.
    let long = " hello".repeat(10_000);
    let chat = chat_body(json!({"messages": [{"role": "user", "content": long}]}));
    assert_openai_error(
        &post("/v1/chat/completions", key(), &chat),
        400,
        "chat prompt too long",
    );
    let completion = json!({"model": server().model, "prompt": long, "max_tokens": 4});
    assert_openai_error(
        &post("/v1/completions", key(), &completion),
        400,
        "completion prompt too long",
    );
}

#[test]
fn sse_stream_is_openai_shaped_and_ends_with_done() {
    let body = chat_body(json!({"stream": true, "max_tokens": 8, "temperature": 0}));
    let mut stream = EventStream::open(server().port, "/v1/chat/completions", key(), &body)
        .expect("open stream");
    assert_eq!(stream.status, 200);
    let content_type = stream
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    assert!(
        content_type.is_some_and(|(_, v)| v.starts_with("text/event-stream")),
        "{:?}",
        stream.headers
    );
    let mut events = Vec::new();
    while let Some(data) = stream.next_data().expect("read event") {
        events.push(data);
    }
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "events: {events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| {
            serde_json::from_str(e).unwrap_or_else(|err| panic!("event {e:?} is not JSON: {err}"))
        })
        .collect();
    assert!(!chunks.is_empty());
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"),
        "{chunks:?}"
    );
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes.len(), 1, "exactly one finish_reason: {chunks:?}");
}
