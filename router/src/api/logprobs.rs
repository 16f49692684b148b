//! Token details rendered in OpenAI's two logprobs shapes.

use std::collections::BTreeMap;

use crate::api::generation::TokenDetail;
use crate::api::types::{ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs};

/// Chat shape: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
pub fn chat(tokens: &[TokenDetail]) -> ChatLogprobs {
    ChatLogprobs {
        content: tokens
            .iter()
            .map(|t| ChatTokenLogprob {
                token: t.token.text.clone(),
                logprob: t.token.logprob,
                bytes: t.token.bytes.clone(),
                top_logprobs: t
                    .top
                    .iter()
                    .map(|alt| ChatTopLogprob {
                        token: alt.text.clone(),
                        logprob: alt.logprob,
                        bytes: alt.bytes.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Legacy completions shape; `base_offset` shifts `text_offset` (e.g. past an echo).
/// Offsets are in characters (Unicode code points), as OpenAI and vLLM give them.
pub fn completion(tokens: &[TokenDetail], base_offset: usize) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for t in tokens {
        out.tokens.push(t.token.text.clone());
        out.token_logprobs.push(t.token.logprob);
        let top: BTreeMap<String, f32> = t
            .top
            .iter()
            .map(|alt| (alt.text.clone(), alt.logprob))
            .collect();
        out.top_logprobs.push(top);
        out.text_offset.push(base_offset + t.text_offset);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::generation::TokenText;

    fn detail() -> TokenDetail {
        let text = |t: &str, lp| TokenText {
            text: t.into(),
            bytes: t.as_bytes().to_vec(),
            logprob: lp,
        };
        TokenDetail {
            token: text("Hi", -0.1),
            top: vec![text("Hi", -0.1), text("Hey", -2.5)],
            text_offset: 3,
        }
    }

    #[test]
    fn both_shapes() {
        let chat = chat(&[detail()]);
        assert_eq!(chat.content[0].token, "Hi");
        assert_eq!(chat.content[0].bytes, b"Hi".to_vec());
        assert_eq!(chat.content[0].top_logprobs.len(), 2);
        let legacy = completion(&[detail()], 10);
        assert_eq!(legacy.tokens, vec!["Hi".to_string()]);
        assert_eq!(legacy.text_offset, vec![13]);
        assert_eq!(legacy.top_logprobs[0].get("Hey"), Some(&-2.5));
    }
}
