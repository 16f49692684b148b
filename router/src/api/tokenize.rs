//! `POST /tokenize` and `POST /detokenize` (vLLM's shapes).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;

use crate::api::chat::{chat_prompt_ids, messages_bytes};
use crate::api::json::ApiJson;
use crate::api::offload::tokenize_off_worker;
use crate::api::types::{DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse};
use crate::error::ApiError;
use crate::state::AppState;

pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    state.check_model(request.model.as_deref())?;
    let st = Arc::clone(&state);
    let tokens = match (request.prompt, request.messages) {
        (Some(prompt), None) => {
            let add_special_tokens = request.add_special_tokens.unwrap_or(true);
            tokenize_off_worker(prompt.len(), move || {
                st.tokenizer
                    .encode(&prompt, add_special_tokens)
                    .map_err(|e| ApiError::Internal(format!("tokenization failed: {e}")))
            })
            .await?
        }
        (None, Some(messages)) => {
            let add_generation_prompt = request.add_generation_prompt.unwrap_or(true);
            let bytes = messages_bytes(&messages);
            tokenize_off_worker(bytes, move || {
                chat_prompt_ids(&st, &messages, add_generation_prompt)
            })
            .await?
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
    let prompt = detokenize_ids(&state, &request.tokens)?;
    Ok(Json(DetokenizeResponse { prompt }))
}

/// Decodes like generation and echo do: an id only a padded model has (past the
/// tokenizer's, below the model's `vocab_size`) is empty text, so the ids of any generated
/// text round-trip. An id neither has is the client's mistake, a 400 naming `tokens`.
fn detokenize_ids(state: &AppState, ids: &[u32]) -> Result<String, ApiError> {
    // Every id the tokenizer has decodes, even past a smaller model's vocabulary.
    let vocab = state.vocab_size().max(state.tokenizer.vocab_size());
    if let Some(bad) = ids.iter().find(|id| **id as usize >= vocab) {
        return Err(ApiError::invalid_param(
            "tokens",
            format!("Token id {bad} is out of vocabulary (size {vocab})."),
        ));
    }
    state
        .tokenizer
        .decode_known(ids, false)
        .map_err(|e| ApiError::invalid_param("tokens", e.to_string()))
}
