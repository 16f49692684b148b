//! What a request sees of its sequence: tokens per step, a finish, or a failure.

use pagedserve_proto::v1::{FinishReason, Logprobs, SequenceOutput, SequenceTimings};

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
    /// The shard failed the sequence or the connection broke; nothing more follows.
    Failed(String),
}

impl SeqEvent {
    /// True when no further event can follow this one.
    pub fn is_terminal(&self) -> bool {
        match self {
            Self::Step(step) => step.finish.is_some(),
            Self::Failed(_) => true,
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
            Ok(FinishReason::Error) => return Self::Failed(shard_error(&out.error)),
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

/// The client's message for an ERROR finish. It stays a server error: the proto carries
/// only a free-text reason, and every rejection the shard makes at submit (prompt length,
/// vocabulary, max_tokens, sampling ranges) the router validates first, so what is left
/// is the engine failing (a forward pass) or the router itself (a duplicate id).
fn shard_error(error: &str) -> String {
    if error.is_empty() {
        "the model shard failed the request without giving a reason".into()
    } else {
        format!("the model shard failed the request: {error}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
