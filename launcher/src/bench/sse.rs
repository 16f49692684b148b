//! Server-sent events of an OpenAI-compatible stream: bytes -> `data:` lines -> events.
//!
//! Parsing follows vLLM's benchmark client: a chunk counts as a token only when it
//! carries non-empty text (`choices[0].text`, or `choices[0].delta.content` for chat);
//! role-only, empty and usage-only chunks don't.

use serde_json::Value;

/// Which OpenAI endpoint the stream comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Completions,
    Chat,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `data: [DONE]`.
    Done,
    /// A JSON chunk: its text (if any) and `usage.completion_tokens` (if any).
    Chunk {
        text: Option<String>,
        completion_tokens: Option<usize>,
    },
    /// A chunk with an `error` object, or one that is not JSON.
    Error(String),
}

/// Splits a byte stream into lines, keeping a partial last line until the next bytes.
#[derive(Debug, Default)]
pub struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    /// Appends `bytes` and returns the complete lines they finish (without `\n`/`\r\n`).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut lines = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line);
            lines.push(text.trim_end_matches(['\n', '\r']).to_owned());
        }
        lines
    }

    /// The unterminated rest, at the end of the stream.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.pending);
        let text = String::from_utf8_lossy(&rest).trim().to_owned();
        (!text.is_empty()).then_some(text)
    }
}

/// The event of one line; `None` for blank lines, comments and non-`data` fields.
pub fn parse_line(line: &str, api: Api) -> Option<Event> {
    let data = line.trim().strip_prefix("data:")?.trim();
    if data.is_empty() {
        return None;
    }
    if data == "[DONE]" {
        return Some(Event::Done);
    }
    let value: Value = match serde_json::from_str(data) {
        Ok(v) => v,
        Err(e) => return Some(Event::Error(format!("bad stream chunk ({e}): {data}"))),
    };
    if let Some(err) = value.get("error") {
        let message = err.get("message").and_then(Value::as_str);
        return Some(Event::Error(
            message.map_or_else(|| err.to_string(), str::to_owned),
        ));
    }
    let choice = value.get("choices").and_then(|c| c.get(0));
    let text = match api {
        Api::Completions => choice.and_then(|c| c.get("text")),
        Api::Chat => choice
            .and_then(|c| c.get("delta"))
            .and_then(|d| d.get("content")),
    };
    let text = text
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let completion_tokens = value
        .get("usage")
        .and_then(|u| u.get("completion_tokens"))
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok());
    Some(Event::Chunk {
        text,
        completion_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_survive_arbitrary_splits() {
        let mut buf = LineBuffer::default();
        assert!(buf.push(b"data: {\"a\"").is_empty());
        assert_eq!(buf.push(b":1}\r\n\ndata: [DO"), vec!["data: {\"a\":1}", ""]);
        assert_eq!(buf.push(b"NE]\n"), vec!["data: [DONE]"]);
        assert_eq!(buf.finish(), None);
        buf.push(b"data: tail");
        assert_eq!(buf.finish().as_deref(), Some("data: tail"));
    }

    #[test]
    fn completion_and_chat_chunks() {
        let c = parse_line(
            r#"data: {"choices":[{"index":0,"text":"Hi"}]}"#,
            Api::Completions,
        );
        assert_eq!(
            c,
            Some(Event::Chunk {
                text: Some("Hi".into()),
                completion_tokens: None
            })
        );
        let role_only = parse_line(
            r#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
            Api::Chat,
        );
        assert_eq!(
            role_only,
            Some(Event::Chunk {
                text: None,
                completion_tokens: None
            })
        );
        let chat = parse_line(
            r#"data:{"choices":[{"delta":{"content":"yo"}}]}"#,
            Api::Chat,
        );
        assert!(matches!(chat, Some(Event::Chunk { text: Some(t), .. }) if t == "yo"));
        let usage = parse_line(
            r#"data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":9}}"#,
            Api::Chat,
        );
        assert_eq!(
            usage,
            Some(Event::Chunk {
                text: None,
                completion_tokens: Some(9)
            })
        );
    }

    #[test]
    fn done_errors_and_ignored_lines() {
        assert_eq!(parse_line("data: [DONE]", Api::Chat), Some(Event::Done));
        assert_eq!(parse_line("", Api::Chat), None);
        assert_eq!(parse_line(": keep-alive", Api::Chat), None);
        assert_eq!(parse_line("event: message", Api::Chat), None);
        let err = parse_line(r#"data: {"error":{"message":"boom"}}"#, Api::Chat);
        assert_eq!(err, Some(Event::Error("boom".into())));
        assert!(matches!(
            parse_line("data: {oops", Api::Chat),
            Some(Event::Error(_))
        ));
    }
}
