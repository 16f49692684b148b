//! HTTP API: routes, handlers and OpenAI wire types.

pub mod chat;
pub mod collect;
pub mod completions;
pub mod generation;
pub mod ids;
pub mod json;
pub mod logprobs;
pub mod models;
pub mod offload;
pub mod sse;
pub mod tokenize;
pub mod types;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::auth;
use crate::error::ApiError;
use crate::metrics;
use crate::state::AppState;

/// Large enough for long prompts given as token-id lists.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Every route, with the API-key check in front of all but /health.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(models::list_models))
        .route("/health", get(models::health))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/metrics", get(metrics::endpoint::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::require_api_key,
        ))
        // Outside the key check, so rejected requests are counted too.
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            metrics::http::track,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("Not found.".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("Method not allowed for this route.".into())
}
