//! Request bodies of the OpenAI-compatible routes (plus vLLM's common extensions).

use serde::Deserialize;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

impl StopSpec {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// Parameters shared by chat and text completions. Integers are signed so that a
/// negative value reaches validation (and a 400 naming the parameter) instead of a
/// generic parse error.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct CommonParams {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub n: Option<i64>,
    pub stop: Option<StopSpec>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub seed: Option<i64>,
    pub top_logprobs: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub user: Option<String>,
    // vLLM extensions.
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub ignore_eos: Option<bool>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub skip_special_tokens: Option<bool>,
}

/// A text part of a multi-part message content.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// Message content: a string or a list of parts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RequestMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default)]
    pub name: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ChatCompletionRequest {
    pub messages: Vec<RequestMessage>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(flatten)]
    pub common: CommonParams,
}

/// `prompt`: a string, strings, token ids, or lists of token ids.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CompletionRequest {
    pub prompt: PromptInput,
    #[serde(default)]
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(flatten)]
    pub common: CommonParams,
}

/// `POST /tokenize`: either a prompt or chat messages (vLLM's shape).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TokenizeRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<RequestMessage>>,
    #[serde(default)]
    pub add_special_tokens: Option<bool>,
    #[serde(default)]
    pub add_generation_prompt: Option<bool>,
}

/// `POST /detokenize`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct DetokenizeRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn chat_request_accepts_parts_and_ignores_unknown_fields() {
        let req: Result<ChatCompletionRequest, _> = parse(
            r#"{"model":"m","messages":[{"role":"system","content":"s"},
                {"role":"user","content":[{"type":"text","text":"hi"}]}],
                "max_completion_tokens":5,"stop":"x","stream_options":{"include_usage":true},
                "logprobs":true,"top_logprobs":2,"tools_whatever":{"a":1},"top_k":4}"#,
        );
        let req = req.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(req.messages.len(), 2);
        assert_eq!(
            req.messages[1].content,
            Some(MessageContent::Parts(vec![ContentPart {
                kind: "text".into(),
                text: Some("hi".into())
            }]))
        );
        assert_eq!(req.common.max_completion_tokens, Some(5));
        assert_eq!(req.common.stop, Some(StopSpec::One("x".into())));
        assert_eq!(req.common.top_k, Some(4));
        assert_eq!(req.logprobs, Some(true));
        assert_eq!(
            req.common.stream_options.and_then(|o| o.include_usage),
            Some(true)
        );
    }

    #[test]
    fn prompt_variants() {
        let cases = [
            (r#"{"prompt":"a"}"#, PromptInput::Text("a".into())),
            (
                r#"{"prompt":["a","b"]}"#,
                PromptInput::Texts(vec!["a".into(), "b".into()]),
            ),
            (r#"{"prompt":[1,2]}"#, PromptInput::Tokens(vec![1, 2])),
            (
                r#"{"prompt":[[1],[2,3]]}"#,
                PromptInput::TokenLists(vec![vec![1], vec![2, 3]]),
            ),
        ];
        for (json, want) in cases {
            let req: CompletionRequest = parse(json).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(req.prompt, want, "{json}");
        }
    }

    #[test]
    fn wrong_types_are_rejected() {
        assert!(parse::<ChatCompletionRequest>(r#"{"messages":"hi"}"#).is_err());
        assert!(parse::<ChatCompletionRequest>(r#"{"messages":[],"temperature":"hot"}"#).is_err());
        assert!(parse::<CompletionRequest>(r#"{"prompt":{"a":1}}"#).is_err());
    }

    #[test]
    fn negative_max_tokens_parses_for_validation() {
        let req: ChatCompletionRequest =
            parse(r#"{"messages":[],"max_tokens":-1}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(req.common.max_tokens, Some(-1));
    }
}
