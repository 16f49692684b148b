//! Tests that look inside the shards over gRPC: KV blocks freed on client disconnect,
//! 16 concurrent streams, and `Generate` straight to one shard. They run one at a time
//! (a lock) so each sees the shards' KV occupancy undisturbed.

use std::time::{Duration, Instant};

use pagedserve_integration_tests::http::EventStream;
use pagedserve_integration_tests::{Server, ServerOptions, python};
use pagedserve_proto::ShardClient;
use pagedserve_proto::v1::{
    FinishReason, GenerateRequest, InfoRequest, SamplingParams, StoppingCriteria,
};
use serde_json::json;
use tokio::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

fn server() -> &'static Server {
    Server::shared(|| ServerOptions::new("shards"))
}

/// KV occupancy summed over all shards.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Kv {
    free: u32,
    total: u32,
    running: u32,
}

async fn kv(server: &Server) -> Kv {
    let mut sum = Kv {
        free: 0,
        total: 0,
        running: 0,
    };
    for i in 0..server.shard_ports.len() {
        let mut client = ShardClient::connect(server.shard_url(i))
            .await
            .expect("connect shard");
        let info = client
            .info(InfoRequest {})
            .await
            .expect("Info")
            .into_inner();
        sum.free += info.free_kv_blocks;
        sum.total += info.total_kv_blocks;
        sum.running += info.running;
    }
    sum
}

async fn wait_for_kv(
    server: &Server,
    timeout: Duration,
    ok: impl Fn(Kv) -> bool,
) -> (Kv, Duration) {
    let started = Instant::now();
    loop {
        let now = kv(server).await;
        if ok(now) || started.elapsed() > timeout {
            return (now, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_frees_kv_blocks() {
    let _one = ONE_AT_A_TIME.lock().await;
    let server = server();
    let (before, _) = wait_for_kv(server, Duration::from_secs(30), |k| k.running == 0).await;
    println!("before: {before:?}");
    assert!(
        before.total > 0 && before.free == before.total,
        "idle shards hold no blocks: {before:?}"
    );

    // Counting keeps a small model going until max_tokens: nothing ends it but the disconnect.
    let body = json!({
        "model": server.model, "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
        "max_tokens": 3000, "temperature": 0, "stream": true,
    });
    let (port, key) = (server.port, server.api_key.clone());
    let stream = tokio::task::spawn_blocking(move || {
        let mut stream =
            EventStream::open(port, "/v1/completions", Some(&key), &body).expect("open stream");
        assert_eq!(stream.status, 200);
        for _ in 0..3 {
            let data = stream
                .next_data()
                .expect("read")
                .expect("stream still open");
            let chunk: serde_json::Value = serde_json::from_str(&data).expect("chunk is JSON");
            let finish = &chunk["choices"][0]["finish_reason"];
            assert!(finish.is_null(), "still generating, not finished: {data}");
        }
        stream
    })
    .await
    .expect("stream task");

    let during = kv(server).await;
    println!("during: {during:?}");
    assert_eq!(during.running, 1, "one sequence running");
    assert!(
        during.free < before.free,
        "the running sequence holds KV blocks: {during:?}"
    );

    drop(stream); // the client goes away mid-stream
    let (after, took) = wait_for_kv(server, Duration::from_secs(20), |k| k == before).await;
    println!("after: {after:?} ({took:?} after the disconnect)");
    assert_eq!(
        after, before,
        "all blocks back and nothing running after the disconnect"
    );
}

#[test]
fn sixteen_concurrent_streams_complete() {
    let _one = ONE_AT_A_TIME.blocking_lock();
    python::run_script(server(), "many_streams.py", &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_on_one_shard_streams_until_length() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut client = ShardClient::connect(server().shard_url(0))
        .await
        .expect("connect shard 0");
    let info = client
        .info(InfoRequest {})
        .await
        .expect("Info")
        .into_inner();
    assert_eq!(info.device, "cpu");
    assert!(info.vocab_size >= 49152, "{info:?}");
    let prompt: Vec<u32> = vec![504, 3575, 282, 4649, 314];
    let run = |mut client: ShardClient<_>| {
        let prompt = prompt.clone();
        async move {
            let request = GenerateRequest {
                prompt_ids: prompt,
                sampling: Some(SamplingParams {
                    temperature: 0.0,
                    top_p: 1.0,
                    ..Default::default()
                }),
                stopping: Some(StoppingCriteria {
                    max_tokens: 8,
                    stop_token_ids: vec![],
                    ignore_eos: true,
                }),
                logprobs: false,
                top_logprobs: 0,
            };
            let mut stream = client
                .generate(request)
                .await
                .expect("Generate")
                .into_inner();
            let mut messages = Vec::new();
            while let Some(msg) = stream.message().await.expect("stream message") {
                messages.push(msg);
            }
            messages
        }
    };
    let messages = run(client.clone()).await;
    assert!(
        messages.len() > 1,
        "tokens arrive as a stream, not one reply: {messages:?}"
    );
    let tokens: Vec<u32> = messages
        .iter()
        .flat_map(|m| m.token_ids.iter().copied())
        .collect();
    println!("generated {tokens:?} in {} messages", messages.len());
    assert_eq!(
        tokens.len(),
        8,
        "max_tokens 8 with ignore_eos gives 8 tokens"
    );
    assert!(tokens.iter().all(|&t| t < info.vocab_size));
    let last = messages.last().expect("messages");
    assert_eq!(last.finish_reason(), FinishReason::Length);
    assert_eq!(last.generated_tokens, 8);
    assert_eq!(last.prompt_tokens, 5);
    let early = &messages[..messages.len() - 1];
    assert!(
        early
            .iter()
            .all(|m| m.finish_reason() == FinishReason::Unspecified),
        "only the last message finishes"
    );
    let again: Vec<u32> = run(client)
        .await
        .iter()
        .flat_map(|m| m.token_ids.clone())
        .collect();
    assert_eq!(again, tokens, "greedy is deterministic");
}
