//! What a request sees of its sequence: tokens per step, a finish, or a failure.

use pagedserve_proto::v1::{ErrorKind, FinishReason, Logprobs, SequenceOutput, SequenceTimings};

use crate::error::ApiError;

/// Why a sequence ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// max_tokens or the context limit.
    Length,
    /// EOS or a stop token id.
    Stop,
}

impl Finish {
    /// OpenAI's `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Length => "length",
            Self::Stop => "stop",
        }
    }
}

/// New tokens of one sequence from one engine step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepTokens {
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<Logprobs>,
    pub finish: Option<Finish>,
    pub prompt_tokens: u32,
    pub generated_tokens: u32,
    /// The shard's timings (with the first token and with the finish).
    pub timings: Option<SequenceTimings>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SeqEvent {
    Step(StepTokens),
    /// The shard refused the request's content (an ERROR finish of kind INVALID_REQUEST):
    /// the client's fault; nothing more follows.
    Rejected(String),
    /// The shard failed the sequence or the connection broke; nothing more follows.
    Failed(String),
}

impl SeqEvent {
    /// True when no further event can follow this one.
    pub fn is_terminal(&self) -> bool {
        match self {
            Self::Step(step) => step.finish.is_some(),
            Self::Rejected(_) | Self::Failed(_) => true,
        }
    }

    /// The step's tokens, or the error the client gets: a 400 `invalid_request_error` for a
    /// rejection, a 500 `server_error` for a failure.
    pub fn into_step(self) -> Result<StepTokens, ApiError> {
        match self {
            Self::Step(step) => Ok(step),
            Self::Rejected(message) => Err(ApiError::bad_request(message)),
            Self::Failed(message) => Err(ApiError::Internal(message)),
        }
    }
}

impl From<SequenceOutput> for SeqEvent {
    fn from(out: SequenceOutput) -> Self {
        let finish = match FinishReason::try_from(out.finish_reason) {
            Ok(FinishReason::Unspecified) => None,
            Ok(FinishReason::Length) => Some(Finish::Length),
            Ok(FinishReason::Stop) => Some(Finish::Stop),
            Ok(FinishReason::Cancelled) => {
                return Self::Failed("the model shard cancelled the request".into());
            }
            Ok(FinishReason::Error) => return shard_error(out.error_kind, &out.error),
            Err(_) => {
                let reason = out.finish_reason;
                return Self::Failed(format!(
                    "the model shard ended the request with unknown finish reason {reason}"
                ));
            }
        };
        Self::Step(StepTokens {
            token_ids: out.token_ids,
            logprobs: out.logprobs,
            finish,
            prompt_tokens: out.prompt_tokens,
            generated_tokens: out.generated_tokens,
            timings: out.timings,
        })
    }
}

/// The event for an ERROR finish, by the shard's `error_kind`. The router validates what
/// the shard checks at submit (prompt length, vocabulary, max_tokens, sampling ranges)
/// against the ready shards' limits, so a rejection is rare (a shard whose limits changed
/// between validation and submit); the kind keeps it a 400 rather than a 500. INTERNAL
/// (also an older shard's unset field) and kinds this router does not know stay failures.
fn shard_error(kind: i32, error: &str) -> SeqEvent {
    let rejected = matches!(ErrorKind::try_from(kind), Ok(ErrorKind::InvalidRequest));
    let verb = if rejected { "rejected" } else { "failed" };
    let message = if error.is_empty() {
        format!("the model shard {verb} the request without giving a reason")
    } else {
        format!("the model shard {verb} the request: {error}")
    };
    if rejected {
        SeqEvent::Rejected(message)
    } else {
        SeqEvent::Failed(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn finish_reasons_map() {
        let mut out = SequenceOutput {
            id: 1,
            token_ids: vec![5],
            finish_reason: FinishReason::Stop as i32,
            generated_tokens: 3,
            ..Default::default()
        };
        let event = SeqEvent::from(out.clone());
        assert!(event.is_terminal());
        assert!(matches!(&event, SeqEvent::Step(s) if s.finish == Some(Finish::Stop)));
        out.finish_reason = FinishReason::Unspecified as i32;
        assert!(!SeqEvent::from(out.clone()).is_terminal());
        out.finish_reason = FinishReason::Error as i32;
        out.error = "oom".into();
        assert!(matches!(SeqEvent::from(out.clone()), SeqEvent::Failed(m) if m.contains("oom")));
        out.error.clear();
        let expected = "the model shard failed the request without giving a reason";
        assert_eq!(
            SeqEvent::from(out.clone()),
            SeqEvent::Failed(expected.into())
        );
        out.finish_reason = 99;
        assert!(matches!(SeqEvent::from(out), SeqEvent::Failed(m) if m.contains("99")));
    }

    fn error_finish(kind: i32, error: &str) -> SequenceOutput {
        SequenceOutput {
            id: 1,
            finish_reason: FinishReason::Error as i32,
            error: error.into(),
            error_kind: kind,
            ..Default::default()
        }
    }

    /// A rejection by the shard is the client's 400; a failure of the shard (or an older
    /// shard that does not set the kind, or a kind this router does not know) is a 500.
    #[test]
    fn error_kind_picks_400_or_500() {
        let reason = "prompt token id 99999 is outside the vocabulary of 1000";
        let rejected = SeqEvent::from(error_finish(ErrorKind::InvalidRequest as i32, reason));
        assert!(rejected.is_terminal());
        let err = rejected.into_step().expect_err("a rejection is an error");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        let body = err.body().error;
        assert_eq!(body.kind, "invalid_request_error");
        assert_eq!(
            body.message,
            format!("the model shard rejected the request: {reason}")
        );

        let reason = "model forward failed: out of memory";
        for kind in [ErrorKind::Internal as i32, 7] {
            let failed = SeqEvent::from(error_finish(kind, reason));
            assert!(failed.is_terminal());
            let err = failed.into_step().expect_err("a failure is an error");
            assert_eq!(
                err.status(),
                StatusCode::INTERNAL_SERVER_ERROR,
                "kind {kind}"
            );
            let body = err.body().error;
            assert_eq!(body.kind, "server_error");
            assert_eq!(
                body.message,
                format!("the model shard failed the request: {reason}")
            );
        }

        let err = SeqEvent::from(error_finish(ErrorKind::InvalidRequest as i32, ""))
            .into_step()
            .expect_err("a rejection is an error");
        let expected = "the model shard rejected the request without giving a reason";
        assert_eq!(err.to_string(), expected);
    }

    /// The kind only classifies errors: a normal finish with a stray kind is still a step.
    #[test]
    fn error_kind_is_ignored_without_an_error_finish() {
        let out = SequenceOutput {
            token_ids: vec![5],
            finish_reason: FinishReason::Stop as i32,
            error_kind: ErrorKind::InvalidRequest as i32,
            ..Default::default()
        };
        let step = SeqEvent::from(out).into_step().expect("a step");
        assert_eq!(step.finish, Some(Finish::Stop));
    }
}
