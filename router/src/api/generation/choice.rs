//! One choice's text: incremental detokenization, stop strings and logprob details.

use pagedserve_proto::v1::Logprobs;

use crate::client::{Finish, StepTokens};
use crate::error::ApiError;
use crate::tokenize::{IncrementalDecoder, ModelTokenizer, StopMatcher, StopOutcome};

/// A token as shown in logprobs: its text (lossy for partial UTF-8) and raw bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenText {
    pub text: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// A generated token with its logprob, alternatives and offset in the choice's text.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenDetail {
    pub token: TokenText,
    pub top: Vec<TokenText>,
    pub text_offset: usize,
}

/// What one step added to one choice.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceUpdate {
    pub index: u32,
    pub text: String,
    /// Filled only when logprobs were requested.
    pub tokens: Vec<TokenDetail>,
    pub finish: Option<Finish>,
}

impl ChoiceUpdate {
    /// Nothing a client would see.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty() && self.tokens.is_empty() && self.finish.is_none()
    }
}

pub struct ChoiceState {
    index: u32,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    want_logprobs: bool,
    /// Characters (code points, as OpenAI and vLLM count) decoded so far, before
    /// stop-string hold-back, for `text_offset`.
    decoded_chars: usize,
    pub completion_tokens: u32,
    pub finished: bool,
}

impl ChoiceState {
    pub fn new(
        index: u32,
        decoder: IncrementalDecoder,
        stop: Vec<String>,
        want_logprobs: bool,
    ) -> Self {
        Self {
            index,
            decoder,
            stop: StopMatcher::new(stop),
            want_logprobs,
            decoded_chars: 0,
            completion_tokens: 0,
            finished: false,
        }
    }

    /// Applies one step; a stop-string match finishes the choice with `Finish::Stop`.
    pub fn apply(
        &mut self,
        step: StepTokens,
        tokenizer: &ModelTokenizer,
    ) -> Result<ChoiceUpdate, ApiError> {
        let mut decoded = String::new();
        let mut chars = self.decoded_chars;
        let mut tokens = Vec::new();
        for (i, &id) in step.token_ids.iter().enumerate() {
            let text_offset = chars;
            let piece = self.decoder.push(id).map_err(detok_error)?;
            chars += piece.chars().count();
            decoded.push_str(&piece);
            if self.want_logprobs {
                tokens.push(token_detail(
                    tokenizer,
                    id,
                    step.logprobs.get(i),
                    text_offset,
                ));
            }
        }
        self.completion_tokens += step.token_ids.len() as u32;
        if step.finish.is_some() {
            decoded.push_str(&self.decoder.flush().map_err(detok_error)?);
        }
        self.decoded_chars += decoded.chars().count();
        let (mut text, finish) = match self.stop.push(&decoded) {
            StopOutcome::Stopped { emit } => (emit, Some(Finish::Stop)),
            StopOutcome::Continue { emit } => (emit, step.finish),
        };
        if step.finish.is_some() && finish == step.finish {
            text.push_str(&self.stop.flush());
        }
        self.finished = finish.is_some();
        Ok(ChoiceUpdate {
            index: self.index,
            text,
            tokens,
            finish,
        })
    }
}

fn detok_error(err: crate::tokenize::TokenizeError) -> ApiError {
    ApiError::Internal(format!("detokenizing the shard's output failed: {err}"))
}

fn token_text(tokenizer: &ModelTokenizer, id: u32, logprob: f32) -> TokenText {
    let bytes = tokenizer.token_bytes(id).unwrap_or_default();
    TokenText {
        text: String::from_utf8_lossy(&bytes).into_owned(),
        bytes,
        logprob,
    }
}

fn token_detail(
    tokenizer: &ModelTokenizer,
    id: u32,
    logprobs: Option<&Logprobs>,
    text_offset: usize,
) -> TokenDetail {
    let logprob = logprobs.map_or(f32::NAN, |lp| lp.logprob);
    let top = logprobs
        .map(|lp| {
            lp.top
                .iter()
                .map(|alt| token_text(tokenizer, alt.token_id, alt.logprob))
                .collect()
        })
        .unwrap_or_default();
    TokenDetail {
        token: token_text(tokenizer, id, logprob),
        top,
        text_offset,
    }
}
