//! `--scheduling-policy lof` end to end (the real launcher, router and one CPU shard on the
//! default model, one sequence at a time): while a long answer runs, a short request and then
//! a longer one arrive; the longer one is admitted first and finishes before the short one,
//! which first-come-first-served would have run first.

use std::thread;
use std::time::{Duration, Instant};

use pagedserve_integration_tests::http::EventStream;
use pagedserve_integration_tests::{Server, ServerOptions};
use serde_json::{Value, json};

fn server() -> &'static Server {
    Server::shared(|| ServerOptions {
        num_shards: 1,
        extra_args: ["--scheduling-policy", "lof", "--max-num-seqs", "1"]
            .map(String::from)
            .to_vec(),
        ..ServerOptions::new("scheduling_policy")
    })
}

/// Opens a streamed completion of exactly `max_tokens` tokens.
fn open(max_tokens: u32) -> EventStream {
    let s = server();
    let body: Value = json!({
        "model": s.model,
        "prompt": "Write a long story about a lighthouse keeper.",
        "max_tokens": max_tokens,
        "ignore_eos": true,
        "temperature": 0.0,
        "stream": true,
    });
    let stream = EventStream::open(s.port, "/v1/completions", Some(&s.api_key), &body)
        .unwrap_or_else(|e| panic!("POST /v1/completions: {e}"));
    assert_eq!(stream.status, 200, "max_tokens {max_tokens}");
    stream
}

/// Reads `stream` to its end and returns when that was, and how many text chunks came.
fn finish(mut stream: EventStream) -> (Instant, usize) {
    let mut chunks = 0;
    while let Some(data) = stream.next_data().expect("read the stream") {
        if data != "[DONE]" {
            chunks += 1;
        }
    }
    (Instant::now(), chunks)
}

#[test]
fn longest_output_first_overtakes_an_earlier_short_request() {
    // The long answer runs first (one sequence at a time): its first event means the shard
    // is busy, so the next two wait in its queue.
    let mut running = open(96);
    assert!(
        running.next_data().expect("first event").is_some(),
        "the long request streams"
    );
    let short = open(4);
    // Let the short one reach the shard's queue first, so arrival order alone would run it
    // before the longer one.
    thread::sleep(Duration::from_millis(300));
    let longer = open(24);
    let ((short_end, short_chunks), (longer_end, longer_chunks)) = thread::scope(|scope| {
        let a = scope.spawn(|| finish(short));
        let b = scope.spawn(|| finish(longer));
        let _ = finish(running);
        (
            a.join().expect("short reader"),
            b.join().expect("longer reader"),
        )
    });
    assert!(
        short_chunks >= 1 && longer_chunks >= 1,
        "both produced text"
    );
    assert!(
        longer_end < short_end,
        "lof: the 24-token request, though it came later, finishes before the 4-token one \
         (short ended {:?} after the longer)",
        short_end.saturating_duration_since(longer_end)
    );
}
