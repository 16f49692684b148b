//! Each instrument at its update point, read back from the rendered exposition.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pagedserve_proto::v1::{InfoResponse, SequenceTimings, ShardStats};

use super::{Metrics, RequestMeta, RequestTimer, SeqOutcome};
use crate::client::Finish;

/// Sum of the samples of `name` whose labels include every `k="v"` of `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let metric = key.split('{').next().unwrap_or_default();
        let matches = labels
            .iter()
            .all(|(k, v)| key.contains(&format!("{k}=\"{v}\"")));
        if metric == name && matches {
            let value: f64 = value.parse().ok()?;
            found = Some(found.unwrap_or(0.0) + value);
        }
    }
    found
}

fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new("smol").expect("exporter builds"))
}

fn render(m: &Metrics) -> String {
    m.render().expect("renders")
}

#[test]
fn step_stats_set_gauges_and_preemptions_add_differences() {
    let m = metrics();
    let stats = ShardStats {
        free_kv_blocks: 75,
        total_kv_blocks: 100,
        running: 3,
        waiting: 2,
        preempted_waiting: 1,
        step_prefill_tokens: 30,
        step_decode_tokens: 2,
        step_time_us: 20_000,
        preemptions_total: 4,
        prefix_cache_queries_total: 0,
        prefix_cache_hits_total: 0,
    };
    m.record_step(1, &stats);
    m.record_step(
        1,
        &ShardStats {
            preemptions_total: 6,
            ..stats
        },
    );
    // A restarted shard counts from 0 again.
    m.record_step(
        1,
        &ShardStats {
            preemptions_total: 1,
            ..stats
        },
    );
    let text = render(&m);
    let shard = [("shard", "1"), ("model_name", "smol")];
    assert_eq!(
        sample(&text, "pagedserve_kv_cache_usage_perc", &shard),
        Some(0.25)
    );
    assert_eq!(
        sample(&text, "pagedserve_num_requests_running", &shard),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, "pagedserve_num_requests_waiting", &shard),
        Some(2.0)
    );
    let preempted = sample(&text, "pagedserve_num_requests_preempted_waiting", &shard);
    assert_eq!(preempted, Some(1.0));
    assert_eq!(
        sample(&text, "pagedserve_num_preemptions_total", &shard),
        Some(7.0)
    );
    let steps = sample(&text, "pagedserve_iteration_tokens_count", &shard);
    assert_eq!(steps, Some(3.0));
    assert_eq!(
        sample(&text, "pagedserve_iteration_tokens_sum", &shard),
        Some(96.0)
    );
    let le32 = [("shard", "1"), ("le", "32")];
    assert_eq!(
        sample(&text, "pagedserve_iteration_tokens_bucket", &le32),
        Some(3.0)
    );
    let step_sum = sample(&text, "pagedserve_engine_step_duration_seconds_sum", &shard);
    assert!((step_sum.unwrap_or(0.0) - 0.06).abs() < 1e-9);

    m.record_info(
        1,
        &InfoResponse {
            total_kv_blocks: 100,
            free_kv_blocks: 100,
            ..Default::default()
        },
    );
    let text = render(&m);
    assert_eq!(
        sample(&text, "pagedserve_kv_cache_usage_perc", &shard),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "pagedserve_num_requests_running", &shard),
        Some(0.0)
    );
}

#[test]
fn prefix_cache_counters_add_differences_per_shard() {
    let m = metrics();
    let step = |shard: usize, queries: u64, hits: u64| {
        let stats = ShardStats {
            prefix_cache_queries_total: queries,
            prefix_cache_hits_total: hits,
            ..Default::default()
        };
        m.record_step(shard, &stats);
    };
    step(0, 100, 0);
    step(0, 250, 64);
    step(0, 250, 64); // a step that admitted nothing
    step(1, 40, 32);
    // Shard 1 restarted and already looked up more tokens than before: its smaller hit count
    // alone tells, and both counts are new.
    step(1, 56, 16);
    let text = render(&m);
    let get = |name: &str, shard: &str| sample(&text, name, &[("shard", shard)]);
    let queries = "pagedserve_prefix_cache_queries_total";
    let hits = "pagedserve_prefix_cache_hits_total";
    assert_eq!(get(queries, "0"), Some(250.0));
    assert_eq!(get(hits, "0"), Some(64.0));
    assert_eq!(get(queries, "1"), Some(96.0));
    assert_eq!(get(hits, "1"), Some(48.0));
    // What a dashboard sums over shards.
    assert_eq!(
        sample(&text, queries, &[("model_name", "smol")]),
        Some(346.0)
    );
    assert_eq!(sample(&text, hits, &[]), Some(112.0));
    let line = format!("{queries}{{model_name=\"smol\",shard=\"1\"}} 96");
    assert!(
        text.contains(&line),
        "a counter with the shard's labels: {text}"
    );
    assert!(text.contains(&format!("# TYPE {hits} counter")), "{text}");
}

#[test]
fn request_timer_counts_usage_and_observes_each_sequence_once() {
    let m = metrics();
    let arrival = Instant::now();
    let at = |ms: u64| arrival + Duration::from_millis(ms);
    let meta = RequestMeta {
        id: "cmpl-1",
        arrival,
    };
    // Two choices of one 5-token prompt: usage counts the prompt once.
    let mut timer = RequestTimer::new(Arc::clone(&m), meta, 0, &[5, 5], 5);
    let first = SequenceTimings {
        queue_time_us: 1_000,
        prefill_time_us: 9_000,
        decode_time_us: 0,
    };
    timer.on_tokens(0, 1, at(100), Some(first));
    timer.on_tokens(1, 1, at(120), Some(first));
    timer.on_tokens(0, 1, at(150), None);
    timer.on_tokens(0, 1, at(250), None);
    let last = SequenceTimings {
        decode_time_us: 150_000,
        ..first
    };
    timer.on_end(0, SeqOutcome::Finished(Finish::Length, Some(last)), at(250));
    timer.on_end(0, SeqOutcome::Finished(Finish::Length, Some(last)), at(260)); // ignored
    // Choice 1 ends on a router stop string: decode time as the router saw it.
    timer.on_tokens(1, 1, at(220), None);
    timer.on_end(1, SeqOutcome::Finished(Finish::Stop, None), at(220));
    drop(timer);
    let text = render(&m);
    let s = [("shard", "0")];
    assert_eq!(
        sample(&text, "pagedserve_prompt_tokens_total", &s),
        Some(5.0)
    );
    assert_eq!(
        sample(&text, "pagedserve_generation_tokens_total", &s),
        Some(5.0)
    );
    let length = [("finished_reason", "length")];
    assert_eq!(
        sample(&text, "pagedserve_request_success_total", &length),
        Some(1.0)
    );
    let stop = [("finished_reason", "stop")];
    assert_eq!(
        sample(&text, "pagedserve_request_success_total", &stop),
        Some(1.0)
    );
    assert_eq!(sample(&text, "pagedserve_request_failure_total", &[]), None);
    for name in [
        "time_to_first_token_seconds",
        "e2e_request_latency_seconds",
        "time_per_output_token_seconds",
        "request_queue_time_seconds",
        "request_prefill_time_seconds",
        "request_decode_time_seconds",
        "request_prompt_tokens",
        "request_generation_tokens",
    ] {
        let count = sample(&text, &format!("pagedserve_{name}_count"), &s);
        assert_eq!(count, Some(2.0), "{name}");
    }
    let close = |name: &str, want: f64| {
        let got = sample(&text, &format!("pagedserve_{name}_sum"), &s).unwrap_or(f64::NAN);
        assert!((got - want).abs() < 1e-6, "{name}: {got} != {want}");
    };
    close("time_to_first_token_seconds", 0.100 + 0.120);
    close("e2e_request_latency_seconds", 0.250 + 0.220);
    // Choice 0: (0.25 - 0.1) / 2; choice 1: (0.22 - 0.12) / 1.
    close("time_per_output_token_seconds", 0.075 + 0.1);
    // Gaps: 50 ms and 100 ms (choice 0), 100 ms (choice 1).
    close("inter_token_latency_seconds", 0.25);
    close("request_decode_time_seconds", 0.150 + 0.100);
    close("request_queue_time_seconds", 0.002);
    close("request_generation_tokens", 5.0);
    close("request_prompt_tokens", 10.0);
}

#[test]
fn dropped_and_failed_sequences_count_as_failures() {
    let m = metrics();
    let meta = RequestMeta {
        id: "chatcmpl-1",
        arrival: Instant::now(),
    };
    let mut timer = RequestTimer::new(Arc::clone(&m), meta, 2, &[3, 3, 3], 9);
    timer.on_tokens(0, 1, Instant::now(), None);
    timer.on_end(1, SeqOutcome::Error, Instant::now());
    drop(timer); // choices 0 and 2 never finished: the client went away
    let text = render(&m);
    let abort = [("shard", "2"), ("reason", "abort")];
    assert_eq!(
        sample(&text, "pagedserve_request_failure_total", &abort),
        Some(2.0)
    );
    let error = [("reason", "error")];
    assert_eq!(
        sample(&text, "pagedserve_request_failure_total", &error),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "pagedserve_generation_tokens_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "pagedserve_e2e_request_latency_seconds_count", &[]),
        None
    );
}

#[test]
fn shard_up_restarts_and_rpc_latency() {
    let m = metrics();
    m.register_shard(0);
    let text = render(&m);
    assert_eq!(
        sample(&text, "pagedserve_shard_up", &[("shard", "0")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "pagedserve_shard_restarts_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "pagedserve_num_preemptions_total", &[]),
        Some(0.0)
    );
    m.record_shard_up(0, true);
    m.record_shard_restart(0);
    m.record_rpc(0, "Info", Duration::from_millis(3));
    let text = render(&m);
    assert_eq!(
        sample(&text, "pagedserve_shard_up", &[("shard", "0")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "pagedserve_shard_restarts_total", &[]),
        Some(1.0)
    );
    let info = [("rpc", "Info"), ("le", "0.005")];
    let bucket = sample(&text, "pagedserve_shard_rpc_duration_seconds_bucket", &info);
    assert_eq!(bucket, Some(1.0));
    assert!(!text.contains("otel_scope"), "no scope labels: {text}");
    assert!(!text.contains("target_info"));
}

#[test]
fn registered_shards_export_their_counters_at_zero_before_any_traffic() {
    let m = metrics();
    assert!(!render(&m).contains("pagedserve_generation_tokens_total"));
    m.register_shard(0);
    m.register_shard(1);
    let text = render(&m);
    for shard in ["0", "1"] {
        for name in [
            "pagedserve_prompt_tokens_total",
            "pagedserve_generation_tokens_total",
            "pagedserve_num_preemptions_total",
            "pagedserve_prefix_cache_queries_total",
            "pagedserve_prefix_cache_hits_total",
        ] {
            let line = format!("{name}{{model_name=\"smol\",shard=\"{shard}\"}} 0");
            assert!(text.contains(&line), "missing `{line}` in:\n{text}");
        }
    }
}
