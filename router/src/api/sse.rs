//! Server-sent events in OpenAI's format: `data: {json}\n\n` chunks, then `data: [DONE]`.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::api::generation::{ChoiceUpdate, Generation};
use crate::api::types::Usage;
use crate::error::ApiError;

pub const DONE: &str = "data: [DONE]\n\n";

/// Turns generation events into chunk JSON for one endpoint (chat or completions).
pub trait ChunkFormat: Send + Sync + 'static {
    /// Chunks before any token (chat: each choice's role delta).
    fn preamble(&self, num_choices: usize) -> Vec<String>;
    /// Chunks for one update (may be empty).
    fn update(&self, update: ChoiceUpdate) -> Vec<String>;
    /// The last chunk: no choices, just usage.
    fn usage(&self, usage: Usage) -> String;
    /// Whether to send the usage chunk (`stream_options.include_usage`).
    fn include_usage(&self) -> bool;
}

/// One SSE event.
pub fn frame(json: &str) -> String {
    format!("data: {json}\n\n")
}

/// An error after streaming started: an error event, then [DONE].
pub fn error_frames(err: &ApiError) -> String {
    let json = serde_json::to_string(&err.body()).unwrap_or_else(|_| "{}".into());
    format!("{}{DONE}", frame(&json))
}

enum Phase {
    Start,
    Running,
    Done,
}

/// The next batch of frames; the bool says the stream is over.
async fn next_frames<F: ChunkFormat>(generation: &mut Generation, format: &F) -> (String, bool) {
    loop {
        match generation.next().await {
            Some(Ok(update)) if update.is_empty() => continue,
            Some(Ok(update)) => {
                let frames: String = format.update(update).iter().map(|c| frame(c)).collect();
                if frames.is_empty() {
                    continue;
                }
                return (frames, false);
            }
            Some(Err(err)) => {
                tracing::warn!(error = %err, "generation failed mid-stream");
                return (error_frames(&err), true);
            }
            None => {
                let mut out = String::new();
                if format.include_usage() {
                    out.push_str(&frame(&format.usage(generation.usage())));
                }
                out.push_str(DONE);
                return (out, true);
            }
        }
    }
}

/// Streams a generation. Dropping the body (client gone) drops the generation, whose
/// sequence guards cancel the sequences on the shard.
pub fn sse_response<F: ChunkFormat>(generation: Generation, format: F) -> Response {
    let stream = futures::stream::unfold(
        (generation, format, Phase::Start),
        |(mut generation, format, phase)| async move {
            let (text, next) = match phase {
                Phase::Done => return None,
                Phase::Start => {
                    let pre = format.preamble(generation.num_choices());
                    (pre.iter().map(|c| frame(c)).collect(), Phase::Running)
                }
                Phase::Running => match next_frames(&mut generation, &format).await {
                    (text, true) => (text, Phase::Done),
                    (text, false) => (text, Phase::Running),
                },
            };
            Some((Ok::<_, Infallible>(text), (generation, format, next)))
        },
    );
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_openai_sse() {
        assert_eq!(frame(r#"{"a":1}"#), "data: {\"a\":1}\n\n");
        assert_eq!(DONE, "data: [DONE]\n\n");
        let err = error_frames(&ApiError::Internal("boom".into()));
        assert_eq!(
            err,
            "data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\",\"param\":null,\
             \"code\":\"internal_error\"}}\n\ndata: [DONE]\n\n"
        );
    }
}
