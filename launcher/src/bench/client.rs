//! One streamed request to an OpenAI-compatible server, timed the way vLLM's benchmark
//! client times it (`backend_request_func.py`, openai and openai-chat backends).

use std::time::Instant;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::bench::dataset::BenchRequest;
use crate::bench::metrics::RequestOutput;
use crate::bench::sse::{Api, Event, LineBuffer, parse_line};

/// Where and how requests are sent.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    pub api: Api,
    pub model: String,
    pub api_key: Option<String>,
    /// Ask the server to ignore EOS so it produces exactly `max_tokens` (vLLM extension);
    /// sent only when true, so servers without it aren't given an unknown field.
    pub ignore_eos: bool,
}

/// The JSON body vLLM's benchmark sends (greedy, streaming), plus `include_usage` so the
/// server's own token count is used when it reports one.
pub fn payload(ep: &Endpoint, req: &BenchRequest) -> Value {
    let mut body = json!({
        "model": ep.model,
        "temperature": 0.0,
        "max_tokens": req.output_len,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    match ep.api {
        Api::Completions => body["prompt"] = json!(req.prompt),
        Api::Chat => body["messages"] = json!([{"role": "user", "content": req.prompt}]),
    }
    if ep.ignore_eos {
        body["ignore_eos"] = json!(true);
    }
    body
}

/// Sends `req` and measures it; every failure ends up in the returned output's `error`.
pub async fn send(client: &reqwest::Client, ep: &Endpoint, req: &BenchRequest) -> RequestOutput {
    let mut out = RequestOutput {
        prompt_len: req.prompt_len,
        requested_output_len: req.output_len,
        ..RequestOutput::default()
    };
    let start = Instant::now();
    let body = payload(ep, req).to_string();
    let mut builder = client
        .post(&ep.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(key) = &ep.api_key {
        builder = builder.bearer_auth(key);
    }
    let response = match builder.send().await {
        Ok(r) => r,
        Err(e) => return failed(out, format!("request failed: {}", error_chain(&e))),
    };
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let body: String = body.chars().take(400).collect();
        return failed(out, format!("HTTP {status}: {}", body.trim()));
    }
    let mut stream = response.bytes_stream();
    let mut lines = LineBuffer::default();
    let mut timing = Timing::new(start);
    while let Some(bytes) = stream.next().await {
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => return failed(out, format!("stream broke: {}", error_chain(&e))),
        };
        let now = Instant::now();
        for line in lines.push(&bytes) {
            if let Err(message) = timing.on_line(&line, ep.api, now, &mut out) {
                return failed(out, message);
            }
        }
    }
    if let Some(line) = lines.finish()
        && let Err(message) = timing.on_line(&line, ep.api, Instant::now(), &mut out)
    {
        return failed(out, message);
    }
    timing.finish(out)
}

/// The clock of one request: first-token time, the previous chunk's time, end of stream.
struct Timing {
    start: Instant,
    got_token: bool,
    /// Where the next ITL gap starts. vLLM's completions client moves it on text chunks
    /// only, its chat client on every chunk (role-only and empty ones too); we do the same.
    last_chunk: Instant,
    done: Option<Instant>,
}

impl Timing {
    fn new(start: Instant) -> Self {
        Timing {
            start,
            got_token: false,
            last_chunk: start,
            done: None,
        }
    }

    fn on_line(
        &mut self,
        line: &str,
        api: Api,
        now: Instant,
        out: &mut RequestOutput,
    ) -> Result<(), String> {
        match parse_line(line, api) {
            None => {}
            Some(Event::Done) => self.done = Some(now),
            Some(Event::Error(message)) => {
                return Err(format!("server error in stream: {message}"));
            }
            Some(Event::Chunk {
                text,
                completion_tokens,
            }) => {
                if let Some(text) = &text {
                    if self.got_token {
                        out.itl
                            .push(now.duration_since(self.last_chunk).as_secs_f64());
                    } else {
                        out.ttft = now.duration_since(self.start).as_secs_f64();
                        self.got_token = true;
                    }
                    out.generated_text.push_str(text);
                }
                if text.is_some() || api == Api::Chat {
                    self.last_chunk = now;
                }
                if completion_tokens.is_some() {
                    out.usage_output_tokens = completion_tokens;
                }
            }
        }
        Ok(())
    }

    fn finish(self, mut out: RequestOutput) -> RequestOutput {
        if !self.got_token {
            return failed(out, "never received a chunk with text (no TTFT)".into());
        }
        // Latency ends at `[DONE]` like vLLM's; a server that just closes ends it there.
        let end = self.done.unwrap_or_else(Instant::now);
        out.latency = end.duration_since(self.start).as_secs_f64();
        out.success = true;
        out
    }
}

fn failed(mut out: RequestOutput, error: String) -> RequestOutput {
    out.success = false;
    out.error = Some(error);
    out
}

/// reqwest's error with its causes ("connection refused" lives in a source).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(api: Api, ignore_eos: bool) -> Endpoint {
        Endpoint {
            url: "http://127.0.0.1:1/v1/completions".into(),
            api,
            model: "m".into(),
            api_key: None,
            ignore_eos,
        }
    }

    fn request() -> BenchRequest {
        BenchRequest {
            prompt: "Hello".into(),
            prompt_len: 1,
            output_len: 12,
        }
    }

    #[test]
    fn payloads_match_vllm_backends() {
        let c = payload(&endpoint(Api::Completions, true), &request());
        assert_eq!(c["prompt"], "Hello");
        assert_eq!(c["max_tokens"], 12);
        assert_eq!(c["temperature"], 0.0);
        assert_eq!(c["stream"], true);
        assert_eq!(c["ignore_eos"], true);
        assert_eq!(c["stream_options"]["include_usage"], true);
        let chat = payload(&endpoint(Api::Chat, false), &request());
        assert_eq!(chat["messages"][0]["role"], "user");
        assert_eq!(chat["messages"][0]["content"], "Hello");
        assert!(chat.get("ignore_eos").is_none(), "not sent when off");
        assert!(chat.get("prompt").is_none());
    }

    #[test]
    fn timing_counts_text_chunks_only() {
        let start = Instant::now();
        let at = |ms| start + std::time::Duration::from_millis(ms);
        let mut t = Timing::new(start);
        let mut out = RequestOutput::default();
        let lines = [
            (10, r#"data: {"choices":[{"delta":{"role":"assistant"}}]}"#),
            (50, r#"data: {"choices":[{"delta":{"content":"a"}}]}"#),
            (80, r#"data: {"choices":[{"delta":{"content":"b"}}]}"#),
            (130, r#"data: {"choices":[{"delta":{"content":"c"}}]}"#),
            (
                140,
                r#"data: {"choices":[],"usage":{"completion_tokens":3}}"#,
            ),
            (150, "data: [DONE]"),
        ];
        for (ms, line) in lines {
            t.on_line(line, Api::Chat, at(ms), &mut out)
                .expect("no error");
        }
        let out = t.finish(out);
        assert!(out.success);
        assert_eq!(out.generated_text, "abc");
        assert!((out.ttft - 0.050).abs() < 1e-9);
        assert_eq!(out.itl.len(), 2);
        assert!((out.itl[1] - 0.050).abs() < 1e-9);
        assert!((out.latency - 0.150).abs() < 1e-9);
        assert_eq!(out.usage_output_tokens, Some(3));
    }

    #[test]
    fn empty_chunks_move_the_itl_clock_for_chat_only() {
        let start = Instant::now();
        let at = |ms| start + std::time::Duration::from_millis(ms);
        let chat = [
            (50, r#"data: {"choices":[{"delta":{"content":"a"}}]}"#),
            (90, r#"data: {"choices":[{"delta":{"content":""}}]}"#),
            (100, r#"data: {"choices":[{"delta":{"content":"b"}}]}"#),
        ];
        let completions = [
            (50, r#"data: {"choices":[{"text":"a"}]}"#),
            (90, r#"data: {"choices":[{"text":""}]}"#),
            (100, r#"data: {"choices":[{"text":"b"}]}"#),
        ];
        let mut gaps = Vec::new();
        for (api, lines) in [(Api::Chat, chat), (Api::Completions, completions)] {
            let mut t = Timing::new(start);
            let mut out = RequestOutput::default();
            for (ms, line) in lines {
                t.on_line(line, api, at(ms), &mut out).expect("no error");
            }
            gaps.push(out.itl);
        }
        assert_eq!(gaps[0].len(), 1);
        assert!(
            (gaps[0][0] - 0.010).abs() < 1e-9,
            "chat: since the empty chunk"
        );
        assert!(
            (gaps[1][0] - 0.050).abs() < 1e-9,
            "completions: since the last text"
        );
    }

    #[test]
    fn stream_without_text_fails() {
        let out = Timing::new(Instant::now()).finish(RequestOutput::default());
        assert!(!out.success);
        assert!(out.error.is_some_and(|e| e.contains("TTFT")));
    }

    #[tokio::test]
    async fn unreachable_server_is_a_failed_request() {
        let client = reqwest::Client::new();
        let out = send(&client, &endpoint(Api::Completions, false), &request()).await;
        assert!(!out.success);
        assert!(out.error.is_some_and(|e| e.starts_with("request failed")));
    }
}
