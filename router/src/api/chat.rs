//! `POST /v1/chat/completions`.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use crate::api::collect::collect;
use crate::api::generation::{ChoiceUpdate, Generation, RequestMeta};
use crate::api::json::ApiJson;
use crate::api::offload::tokenize_off_worker;
use crate::api::sse::{ChunkFormat, sse_response};
use crate::api::types::*;
use crate::api::{ids, logprobs};
use crate::error::ApiError;
use crate::state::AppState;
use crate::tokenize::{ChatMessage, TemplateError};
use crate::validation::{self, GenerationRequest};

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    ApiJson(mut request): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    state.check_model(request.common.model.as_deref())?;
    let messages = std::mem::take(&mut request.messages);
    let st = Arc::clone(&state);
    let bytes = messages_bytes(&messages);
    let prompt = tokenize_off_worker(bytes, move || chat_prompt_ids(&st, &messages, true)).await?;
    let validated = validate_chat(&state, &request, prompt)?;
    let permit = state.waiting.try_acquire()?;
    let format = ChatFormat {
        id: ids::response_id("chatcmpl"),
        created: ids::now_unix(),
        model: state.model_name.clone(),
        include_usage: validated.include_usage,
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
    let body = ChatCompletion {
        id: format.id,
        object: "chat.completion",
        created: format.created,
        model: format.model,
        choices: choices
            .into_iter()
            .enumerate()
            .map(|(index, c)| ChatChoice {
                index: index as u32,
                message: AssistantMessage {
                    role: "assistant",
                    content: c.text,
                },
                logprobs: validated.logprobs.map(|_| logprobs::chat(&c.tokens)),
                finish_reason: c.finish.map(|f| f.as_str()),
            })
            .collect(),
        usage,
    };
    Ok(Json(body).into_response())
}

fn validate_chat(
    state: &AppState,
    request: &ChatCompletionRequest,
    prompt: Vec<u32>,
) -> Result<GenerationRequest, ApiError> {
    let top = request.common.top_logprobs;
    let logprobs = match (request.logprobs.unwrap_or(false), top) {
        (true, top) => Some(top.unwrap_or(0)),
        (false, Some(k)) if k > 0 => {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "top_logprobs requires logprobs to be true.",
            ));
        }
        (false, _) => None,
    };
    let limits = validation::Limits {
        max_context: state.max_context()?,
        vocab_size: state.vocab_size(),
        prompt_param: "messages",
        max_n: state.max_n,
        defaults: state.generation_defaults,
    };
    let logprobs = validation::validate_logprobs("top_logprobs", logprobs)?;
    validation::validate(&request.common, vec![prompt], logprobs, limits)
}

/// Converts OpenAI messages for the chat template (text parts are concatenated).
pub fn to_chat_messages(messages: &[RequestMessage]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must not be empty.",
        ));
    }
    messages
        .iter()
        .map(|m| {
            let content = match &m.content {
                None => String::new(),
                Some(MessageContent::Text(text)) => text.clone(),
                Some(MessageContent::Parts(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        match (part.kind.as_str(), &part.text) {
                            ("text", Some(t)) => text.push_str(t),
                            (kind, _) => {
                                return Err(ApiError::invalid_param(
                                    "messages",
                                    format!("Unsupported content part type `{kind}`."),
                                ));
                            }
                        }
                    }
                    text
                }
            };
            Ok(ChatMessage {
                role: m.role.clone(),
                content,
                name: m.name.clone(),
            })
        })
        .collect()
}

/// The text the chat template and tokenizer will go through, roughly.
pub fn messages_bytes(messages: &[RequestMessage]) -> usize {
    let content = |m: &RequestMessage| match &m.content {
        None => 0,
        Some(MessageContent::Text(text)) => text.len(),
        Some(MessageContent::Parts(parts)) => parts
            .iter()
            .map(|p| p.text.as_ref().map_or(0, String::len))
            .sum(),
    };
    messages.iter().map(content).sum()
}

/// Renders the model's chat template and tokenizes the result.
pub fn chat_prompt_ids(
    state: &AppState,
    messages: &[RequestMessage],
    add_generation_prompt: bool,
) -> Result<Vec<u32>, ApiError> {
    let messages = to_chat_messages(messages)?;
    let text = state
        .tokenizer
        .apply_chat_template(&messages, add_generation_prompt)
        .map_err(|err| match err {
            TemplateError::Raised(m) => ApiError::invalid_param("messages", m),
            TemplateError::Render(m) => ApiError::invalid_param("messages", m),
            TemplateError::Missing => {
                ApiError::bad_request("This model has no chat template; use /v1/completions.")
            }
        })?;
    state
        .tokenizer
        .encode(&text, false)
        .map_err(|e| ApiError::Internal(format!("tokenization failed: {e}")))
}

/// `chat.completion.chunk` stream.
pub struct ChatFormat {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
}

impl ChatFormat {
    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> String {
        let chunk = ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
        };
        serde_json::to_string(&chunk).unwrap_or_default()
    }
}

impl ChunkFormat for ChatFormat {
    fn preamble(&self, num_choices: usize) -> Vec<String> {
        (0..num_choices as u32)
            .map(|index| {
                let delta = ChatDelta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                };
                self.chunk(vec![chunk_choice(index, delta, None, None)], None)
            })
            .collect()
    }

    fn update(&self, update: ChoiceUpdate) -> Vec<String> {
        let mut out = Vec::new();
        if !update.text.is_empty() || !update.tokens.is_empty() {
            let delta = ChatDelta {
                role: None,
                content: Some(update.text),
            };
            let lp = (!update.tokens.is_empty()).then(|| logprobs::chat(&update.tokens));
            out.push(self.chunk(vec![chunk_choice(update.index, delta, lp, None)], None));
        }
        if let Some(finish) = update.finish {
            let choice = chunk_choice(
                update.index,
                ChatDelta::default(),
                None,
                Some(finish.as_str()),
            );
            out.push(self.chunk(vec![choice], None));
        }
        out
    }

    fn usage(&self, usage: Usage) -> String {
        self.chunk(Vec::new(), Some(usage))
    }

    fn include_usage(&self) -> bool {
        self.include_usage
    }
}

fn chunk_choice(
    index: u32,
    delta: ChatDelta,
    logprobs: Option<ChatLogprobs>,
    finish_reason: Option<&'static str>,
) -> ChatChunkChoice {
    ChatChunkChoice {
        index,
        delta,
        logprobs,
        finish_reason,
    }
}
