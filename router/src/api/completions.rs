//! `POST /v1/completions`: each prompt is a group of `n` choices.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::api::collect::{CollectedChoice, collect};
use crate::api::generation::{ChoiceUpdate, Generation, RequestMeta};
use crate::api::json::ApiJson;
use crate::api::offload::tokenize_off_worker;
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
    let arrival = Instant::now();
    state.check_model(request.common.model.as_deref())?;
    let input = request.prompt;
    let bytes = match &input {
        PromptInput::Text(text) => text.len(),
        PromptInput::Texts(texts) => texts.iter().map(String::len).sum(),
        PromptInput::Tokens(_) | PromptInput::TokenLists(_) => 0, // nothing to tokenize
    };
    let want_echo = request.echo.unwrap_or(false);
    let st = Arc::clone(&state);
    let (prompts, echo) = tokenize_off_worker(bytes, move || {
        let ids = prompt_ids(&st, &input)?;
        // The echo's error, if any, is raised after the context check below, as before.
        let echo = want_echo.then(|| echo_texts(&st, &input, &ids));
        Ok((ids, echo))
    })
    .await?;
    let limits = validation::Limits {
        max_context: state.max_context()?,
        vocab_size: state.vocab_size(),
        prompt_param: "prompt",
        max_n: state.max_n,
        defaults: state.generation_defaults,
    };
    let echo = echo.transpose()?.unwrap_or_default();
    let logprobs = validation::validate_logprobs("logprobs", request.logprobs)?;
    let validated = validation::validate(&request.common, prompts, logprobs, limits)?;
    let n = validated.n as usize;
    // Per choice (prompt index × n + i): the prompt text to echo, if asked.
    let echo: Vec<String> = echo
        .iter()
        .flat_map(|text| std::iter::repeat_n(text.clone(), n))
        .collect();
    let permit = state.waiting.try_acquire()?;
    let format = CompletionFormat {
        id: ids::response_id("cmpl"),
        created: ids::now_unix(),
        model: state.model_name.clone(),
        include_usage: validated.include_usage,
        echo_chars: echo.iter().map(|text| text.chars().count()).collect(),
        echo,
    };
    let meta = RequestMeta {
        id: &format.id,
        arrival,
    };
    let generation = Generation::start(Arc::clone(&state), &validated, permit, meta)?;
    if validated.stream {
        return Ok(sse_response(generation, format));
    }
    let (choices, usage) = collect(generation).await?;
    let want_logprobs = validated.logprobs.is_some();
    Ok(Json(completion_body(format, choices, usage, want_logprobs)).into_response())
}

fn completion_body(
    format: CompletionFormat,
    choices: Vec<CollectedChoice>,
    usage: Usage,
    want_logprobs: bool,
) -> Completion {
    let choices = choices
        .into_iter()
        .enumerate()
        .map(|(index, c)| {
            let prefix = format.echo.get(index).map_or("", String::as_str);
            // Offsets count characters, as the tokens' own offsets do.
            let base = format.echo_chars.get(index).copied().unwrap_or(0);
            CompletionChoice {
                index: index as u32,
                logprobs: want_logprobs.then(|| logprobs::completion(&c.tokens, base)),
                text: format!("{prefix}{}", c.text),
                finish_reason: c.finish.map(|f| f.as_str()),
            }
        })
        .collect();
    Completion {
        id: format.id,
        object: "text_completion",
        created: format.created,
        model: format.model,
        choices,
        usage,
    }
}

/// Tokenizes (or checks) every prompt of the request.
pub fn prompt_ids(state: &AppState, prompt: &PromptInput) -> Result<Vec<Vec<u32>>, ApiError> {
    let encode = |text: &str| {
        state
            .tokenizer
            .encode(text, true)
            .map_err(|e| ApiError::Internal(format!("tokenization failed: {e}")))
    };
    let prompts = match prompt {
        PromptInput::Text(text) => vec![encode(text)?],
        PromptInput::Texts(texts) => texts.iter().map(|t| encode(t)).collect::<Result<_, _>>()?,
        PromptInput::Tokens(ids) => vec![ids.clone()],
        PromptInput::TokenLists(lists) => lists.clone(),
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid_param(
            "prompt",
            "prompt must not be empty.",
        ));
    }
    Ok(prompts)
}

/// The text of each prompt, for `echo` (token prompts are decoded; ids only the model has,
/// past the tokenizer's, are empty text).
fn echo_texts(
    state: &AppState,
    prompt: &PromptInput,
    ids: &[Vec<u32>],
) -> Result<Vec<String>, ApiError> {
    match prompt {
        PromptInput::Text(text) => Ok(vec![text.clone()]),
        PromptInput::Texts(texts) => Ok(texts.clone()),
        PromptInput::Tokens(_) | PromptInput::TokenLists(_) => ids
            .iter()
            .map(|p| {
                state
                    .tokenizer
                    .decode_known(p, false)
                    .map_err(|e| ApiError::invalid_param("prompt", e.to_string()))
            })
            .collect(),
    }
}

/// Streamed `text_completion` chunks.
pub struct CompletionFormat {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
    /// Per choice: the prompt text sent first when `echo` is on (else empty).
    pub echo: Vec<String>,
    /// Per choice: the echo's length in characters, which shifts streamed `text_offset`s
    /// as it does unstreamed ones (counted once, not per chunk).
    pub echo_chars: Vec<usize>,
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
        self.echo
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let choice = CompletionChunkChoice {
                    index: index as u32,
                    text: text.clone(),
                    logprobs: None,
                    finish_reason: None,
                };
                self.chunk(vec![choice], None)
            })
            .collect()
    }

    fn update(&self, update: ChoiceUpdate) -> Vec<String> {
        let base = self.echo_chars.get(update.index as usize).copied();
        let lp = (!update.tokens.is_empty())
            .then(|| logprobs::completion(&update.tokens, base.unwrap_or(0)));
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
