//! `/metrics` after real requests through the whole router (fake shards behind it).

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Harness, Options, body_text, config, json_body, script_of};
use serde_json::{Value, json};

fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (key, value) = line.rsplit_once(' ')?;
        let metric = key.split('{').next().unwrap_or_default();
        let all = labels
            .iter()
            .all(|(k, v)| key.contains(&format!("{k}=\"{v}\"")));
        if metric == name && all {
            found = Some(found.unwrap_or(0.0) + value.parse::<f64>().ok()?);
        }
    }
    found
}

fn usage(body: &Value, key: &str) -> f64 {
    body["usage"][key].as_f64().unwrap_or(f64::NAN)
}

#[tokio::test]
async fn counters_match_usage_and_http_statuses_are_counted() {
    let Some(tokenizer) = common::tokenizer() else {
        return;
    };
    let script = script_of(&tokenizer, " Seoul is the capital. It is large.");
    let options = Options {
        api_key: Some("k".into()),
        ..Options::default()
    };
    let Some(h) = Harness::start(vec![config(script)], options).await else {
        return;
    };
    let chat = json!({"model": common::MODEL, "max_tokens": 5,
        "messages": [{"role": "user", "content": "Capital of South Korea?"}]});
    let completion = json!({"model": common::MODEL, "prompt": "Hello", "n": 2});
    let mut bodies = Vec::new();
    for (path, body) in [
        ("/v1/chat/completions", &chat),
        ("/v1/completions", &completion),
    ] {
        let response = h.post(path, &body.to_string(), Some("k")).await;
        assert_eq!(response.status(), StatusCode::OK);
        bodies.push(json_body(response).await);
    }
    let unauthorized = h
        .post("/v1/chat/completions", &chat.to_string(), None)
        .await;
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    let bad = h.post("/v1/chat/completions", "{not json", Some("k")).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    let request = Request::get("/metrics")
        .body(Body::empty())
        .expect("request");
    let response = h.send(request).await;
    assert_eq!(response.status(), StatusCode::OK, "no key needed");
    let text = body_text(response).await;
    let sum = |key: &str| bodies.iter().map(|b| usage(b, key)).sum::<f64>();
    let tokens = |name: &str| sample(&text, name, &[("model_name", common::MODEL)]);
    assert_eq!(
        tokens("pagedserve_prompt_tokens_total"),
        Some(sum("prompt_tokens"))
    );
    assert_eq!(
        tokens("pagedserve_generation_tokens_total"),
        Some(sum("completion_tokens"))
    );
    // One chat choice + two completion choices: three sequences.
    for name in ["e2e_request_latency_seconds", "time_to_first_token_seconds"] {
        let count = sample(&text, &format!("pagedserve_{name}_count"), &[]);
        assert_eq!(count, Some(3.0), "{name}");
    }
    assert_eq!(
        sample(&text, "pagedserve_request_success_total", &[]),
        Some(3.0)
    );
    let route = ("route", "/v1/chat/completions");
    let status = |code: &str| {
        sample(
            &text,
            "pagedserve_http_requests_total",
            &[route, ("status", code)],
        )
    };
    assert_eq!(status("200"), Some(1.0));
    assert_eq!(status("401"), Some(1.0));
    assert_eq!(status("400"), Some(1.0));
    assert_eq!(
        sample(&text, "pagedserve_shard_up", &[("shard", "0")]),
        Some(1.0)
    );
    let info_calls = sample(
        &text,
        "pagedserve_shard_rpc_duration_seconds_count",
        &[("rpc", "Info")],
    );
    assert!(
        info_calls.is_some_and(|n| n >= 2.0),
        "connect + scrape: {info_calls:?}"
    );
}

#[tokio::test]
async fn broken_stream_counts_an_error_and_a_restart() {
    let Some(tokenizer) = common::tokenizer() else {
        return;
    };
    let mut cfg = config(script_of(&tokenizer, " Seoul is the capital."));
    cfg.cycle = true;
    cfg.fail_at_step = Some(3);
    let Some(h) = Harness::start(vec![cfg], Options::default()).await else {
        return;
    };
    let body = json!({"prompt": "Hi", "max_tokens": 50});
    let (status, _) = h.post_json("/v1/completions", body).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let state = &h.state;
    assert!(common::eventually(|| state.shards.any_ready()).await);
    let request = Request::get("/metrics")
        .body(Body::empty())
        .expect("request");
    let text = body_text(h.send(request).await).await;
    let get = |name: &str, labels: &[(&str, &str)]| sample(&text, name, labels);
    assert_eq!(get("pagedserve_shard_restarts_total", &[]), Some(1.0));
    assert_eq!(get("pagedserve_shard_up", &[]), Some(1.0));
    let error = [("reason", "error")];
    assert_eq!(get("pagedserve_request_failure_total", &error), Some(1.0));
    assert_eq!(get("pagedserve_request_success_total", &[]), None);
    // Two steps produced tokens before the crash; they were generated, so they count.
    assert_eq!(get("pagedserve_generation_tokens_total", &[]), Some(2.0));
    let status = [("route", "/v1/completions"), ("status", "500")];
    assert_eq!(get("pagedserve_http_requests_total", &status), Some(1.0));
}
