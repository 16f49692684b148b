//! Streaming chunk bodies (`chat.completion.chunk`, streamed `text_completion`).

use serde::Serialize;

use super::response::{ChatLogprobs, CompletionLogprobs, Usage};

/// Chat delta: the first chunk of a choice carries the role, later ones content.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// `usage` in chunks: absent unless `include_usage`; then `null` until the last chunk.
pub type ChunkUsage = Option<Option<Usage>>;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: ChunkUsage,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CompletionChunkChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: ChunkUsage,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(usage: ChunkUsage, choices: Vec<ChatChunkChoice>) -> String {
        serde_json::to_string(&ChatCompletionChunk {
            id: "chatcmpl-1".into(),
            object: "chat.completion.chunk",
            created: 1,
            model: "m".into(),
            choices,
            usage,
        })
        .expect("serializes")
    }

    #[test]
    fn role_chunk_and_usage_variants() {
        let role = ChatChunkChoice {
            index: 0,
            delta: ChatDelta {
                role: Some("assistant"),
                content: Some(String::new()),
            },
            logprobs: None,
            finish_reason: None,
        };
        assert_eq!(
            chunk(None, vec![role.clone()]),
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#
        );
        assert!(chunk(Some(None), vec![role]).ends_with(r#"}],"usage":null}"#));
        assert!(chunk(Some(Some(Usage::new(2, 3))), vec![]).ends_with(
            r#""choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#
        ));
    }

    #[test]
    fn finish_chunk_has_empty_delta() {
        let fin = ChatChunkChoice {
            index: 1,
            delta: ChatDelta::default(),
            logprobs: None,
            finish_reason: Some("length"),
        };
        assert!(
            chunk(None, vec![fin])
                .contains(r#"{"index":1,"delta":{},"logprobs":null,"finish_reason":"length"}"#)
        );
    }
}
