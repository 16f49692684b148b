//! `POST /tokenize` and `POST /detokenize` (vLLM's shapes).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;

use crate::api::chat::chat_prompt_ids;
use crate::api::json::ApiJson;
use crate::api::types::{DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse};
use crate::error::ApiError;
use crate::state::AppState;

pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    state.check_model(request.model.as_deref())?;
    let tokens = match (&request.prompt, &request.messages) {
        (Some(prompt), None) => state
            .tokenizer
            .encode(prompt, request.add_special_tokens.unwrap_or(true))
            .map_err(|e| ApiError::Internal(format!("tokenization failed: {e}")))?,
        (None, Some(messages)) => {
            let add_generation_prompt = request.add_generation_prompt.unwrap_or(true);
            chat_prompt_ids(&state, messages, add_generation_prompt)?
        }
        _ => {
            return Err(ApiError::bad_request(
                "Provide exactly one of `prompt` or `messages`.",
            ));
        }
    };
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        tokens,
        max_model_len: state.shards.max_context(),
    }))
}

pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    state.check_model(request.model.as_deref())?;
    let prompt = state
        .tokenizer
        .decode(&request.tokens, false)
        .map_err(|e| ApiError::invalid_param("tokens", e.to_string()))?;
    Ok(Json(DetokenizeResponse { prompt }))
}
