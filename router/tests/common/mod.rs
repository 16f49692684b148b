//! Test harness: a router (real AppState, real tokenizer) in front of fake shards,
//! driven through `tower::ServiceExt::oneshot`.

#![allow(dead_code)]

pub mod fake_shard;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use pagedserve_proto::v1::ErrorKind;
use pagedserve_router::batching::WaitingGate;
use pagedserve_router::client::ShardPool;
use pagedserve_router::metrics::Metrics;
use pagedserve_router::tokenize::ModelTokenizer;
use pagedserve_router::{AppState, router};
use serde_json::Value;
use tower::ServiceExt;

pub use fake_shard::{FakeConfig, FakeShard};

pub const MODEL: &str = "smol-test";

/// The default model's GGUF (tokenizer source); None when it is not on disk.
pub fn model_path() -> Option<PathBuf> {
    let cache = std::env::var_os("PAGEDSERVE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/pagedserve")))?;
    let path = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        Some(path)
    } else {
        eprintln!("skipping: {} not found", path.display());
        None
    }
}

pub fn tokenizer() -> Option<ModelTokenizer> {
    let path = model_path()?;
    Some(ModelTokenizer::from_gguf(&path).expect("tokenizer loads"))
}

pub struct Harness {
    pub state: Arc<AppState>,
    pub shards: Vec<FakeShard>,
    pub tokenizer: ModelTokenizer,
}

pub struct Options {
    pub api_key: Option<String>,
    pub max_waiting: usize,
    pub extra_urls: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            api_key: None,
            max_waiting: 64,
            extra_urls: Vec::new(),
        }
    }
}

/// Encodes `text` for a fake shard's script.
pub fn script_of(tokenizer: &ModelTokenizer, text: &str) -> Vec<u32> {
    tokenizer.encode(text, false).expect("encode")
}

pub fn config(script: Vec<u32>) -> FakeConfig {
    FakeConfig {
        script,
        eos: 2,
        cycle: false,
        step: Duration::from_millis(2),
        max_context: 256,
        vocab_size: 49152,
        fail_at_step: None,
        fail_sequence_at: None,
        fail_sequence_kind: ErrorKind::Internal,
    }
}

impl Harness {
    /// One router over one fake shard per config; waits until all are ready.
    pub async fn start(configs: Vec<FakeConfig>, options: Options) -> Option<Harness> {
        let tokenizer = tokenizer()?;
        let mut urls = Vec::new();
        let mut shards = Vec::new();
        for config in configs {
            let (url, shard) = FakeShard::start(config).await;
            urls.push(url);
            shards.push(shard);
        }
        let expected = urls.len();
        urls.extend(options.extra_urls);
        let metrics = Arc::new(Metrics::new(MODEL).expect("metrics exporter"));
        let pool = ShardPool::start(&urls, Arc::clone(&metrics));
        let state = Arc::new(AppState {
            model_name: MODEL.into(),
            tokenizer: tokenizer.clone(),
            shards: pool,
            api_key: options.api_key,
            waiting: WaitingGate::new(options.max_waiting),
            max_n: 8,
            generation_defaults: Default::default(),
            metrics,
        });
        for _ in 0..250 {
            let ready = state
                .shards
                .shards()
                .iter()
                .filter(|s| s.is_ready())
                .count();
            if ready >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(Harness {
            state,
            shards,
            tokenizer,
        })
    }

    pub async fn send(&self, request: Request<Body>) -> Response {
        router(Arc::clone(&self.state))
            .oneshot(request)
            .await
            .expect("router is infallible")
    }

    pub async fn post(&self, path: &str, body: &str, key: Option<&str>) -> Response {
        self.send(post_request(path, body, key)).await
    }

    pub async fn post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self.post(path, &body.to_string(), None).await;
        let status = response.status();
        (status, json_body(response).await)
    }

    /// Prompt length as the router computes it for a user message.
    pub fn chat_prompt_len(&self, user: &str) -> usize {
        self.chat_prompt_ids(user).len()
    }

    /// Prompt ids as the router computes them for a user message.
    pub fn chat_prompt_ids(&self, user: &str) -> Vec<u32> {
        let messages = [pagedserve_router::tokenize::ChatMessage {
            role: "user".into(),
            content: user.into(),
            name: None,
        }];
        let text = self
            .tokenizer
            .apply_chat_template(&messages, true)
            .expect("template renders");
        self.tokenizer.encode(&text, false).expect("encode")
    }
}

pub fn post_request(path: &str, body: &str, key: Option<&str>) -> Request<Body> {
    let mut builder = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    builder
        .body(Body::from(body.to_string()))
        .expect("request builds")
}

pub async fn body_text(response: Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body reads");
    String::from_utf8(bytes.to_vec()).expect("utf-8 body")
}

pub async fn json_body(response: Response) -> Value {
    let text = body_text(response).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Splits an SSE body into its `data:` payloads, checking the framing as it goes.
pub fn sse_payloads(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("data: [DONE]\n\n"),
        "stream must end with [DONE]: {body}"
    );
    body.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("bad SSE event: {event:?}"))
                .to_string()
        })
        .collect()
}

/// Polls `check` for up to two seconds.
pub async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
