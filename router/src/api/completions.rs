//! `POST /v1/completions`: each prompt is a group of `n` choices.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::api::collect::collect;
use crate::api::generation::{ChoiceUpdate, Generation};
use crate::api::json::ApiJson;
use crate::api::sse::{ChunkFormat, sse_response};
use crate::api::types::*;
use crate::api::{ids, logprobs};
use crate::error::ApiError;
use crate::state::AppState;
use crate::validation;

pub async fn completions(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    state.check_model(request.common.model.as_deref())?;
    let prompts = prompt_ids(&state, &request.prompt)?;
    let limits = validation::Limits {
        max_context: state.max_context()?,
        vocab_size: state.tokenizer.vocab_size(),
        max_n: state.max_n,
    };
    let validated = validation::validate(&request.common, prompts, request.logprobs, limits)?;
    let permit = state.waiting.try_acquire()?;
    let generation = Generation::start(Arc::clone(&state), &validated, permit)?;
    let format = CompletionFormat {
        id: ids::response_id("cmpl"),
        created: ids::now_unix(),
        model: state.model_name.clone(),
        include_usage: validated.include_usage,
    };
    if validated.stream {
        return Ok(sse_response(generation, format));
    }
    let (choices, usage) = collect(generation).await?;
    let body = Completion {
        id: format.id,
        object: "text_completion",
        created: format.created,
        model: format.model,
        choices: choices
            .into_iter()
            .enumerate()
            .map(|(index, c)| CompletionChoice {
                index: index as u32,
                logprobs: validated
                    .logprobs
                    .map(|_| logprobs::completion(&c.tokens, 0)),
                text: c.text,
                finish_reason: c.finish.map(|f| f.as_str()),
            })
            .collect(),
        usage,
    };
    Ok(Json(body).into_response())
}

/// Tokenizes (or checks) every prompt of the request.
pub fn prompt_ids(state: &AppState, prompt: &PromptInput) -> Result<Vec<Vec<u32>>, ApiError> {
    let encode = |text: &str| {
        state
            .tokenizer
            .encode(text, true)
            .map_err(|e| ApiError::Internal(format!("tokenization failed: {e}")))
    };
    let vocab = state.tokenizer.vocab_size();
    let check = |ids: &Vec<u32>| match ids.iter().find(|id| **id as usize >= vocab) {
        Some(bad) => Err(ApiError::invalid_param(
            "prompt",
            format!("Token id {bad} is out of vocabulary (size {vocab})."),
        )),
        None => Ok(ids.clone()),
    };
    let prompts = match prompt {
        PromptInput::Text(text) => vec![encode(text)?],
        PromptInput::Texts(texts) => texts.iter().map(|t| encode(t)).collect::<Result<_, _>>()?,
        PromptInput::Tokens(ids) => vec![check(ids)?],
        PromptInput::TokenLists(lists) => lists.iter().map(check).collect::<Result<_, _>>()?,
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid_param(
            "prompt",
            "prompt must not be empty.",
        ));
    }
    Ok(prompts)
}

/// Streamed `text_completion` chunks.
pub struct CompletionFormat {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
}

impl CompletionFormat {
    fn chunk(&self, choices: Vec<CompletionChunkChoice>, usage: Option<Usage>) -> String {
        let chunk = CompletionChunk {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
        };
        serde_json::to_string(&chunk).unwrap_or_default()
    }
}

impl ChunkFormat for CompletionFormat {
    fn preamble(&self, _num_choices: usize) -> Vec<String> {
        Vec::new()
    }

    fn update(&self, update: ChoiceUpdate) -> Vec<String> {
        let lp = (!update.tokens.is_empty()).then(|| logprobs::completion(&update.tokens, 0));
        let choice = CompletionChunkChoice {
            index: update.index,
            text: update.text,
            logprobs: lp,
            finish_reason: update.finish.map(|f| f.as_str()),
        };
        vec![self.chunk(vec![choice], None)]
    }

    fn usage(&self, usage: Usage) -> String {
        self.chunk(Vec::new(), Some(usage))
    }

    fn include_usage(&self) -> bool {
        self.include_usage
    }
}
