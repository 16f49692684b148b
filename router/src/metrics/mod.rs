//! The router's one Prometheus exporter: OpenTelemetry instruments, defined here in one
//! place, exported through `opentelemetry-prometheus` over a `prometheus` registry and served
//! at `GET /metrics`. Shards are never scraped: their per-step stats arrive on the Serve
//! stream and their occupancy through `Info`.
//!
//! Names and semantics follow vLLM's `vllm:*` metrics with the prefix `pagedserve_`; see
//! docs/metrics.md for the table.

pub mod buckets;
pub mod endpoint;
pub mod http;
pub mod request;
pub mod shard;

#[cfg(test)]
mod tests;

use std::sync::Mutex;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, MeterProvider};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, Registry, TextEncoder};

pub use request::{RequestMeta, RequestTimer, SeqOutcome};

/// Largest bucket of the tokens-per-request histograms (vLLM bounds them by the model's
/// context length, which the router only learns from the shards after start-up).
const MAX_TOKENS_BUCKET: u64 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("building the Prometheus exporter: {0}")]
    Exporter(String),
    #[error("encoding metrics: {0}")]
    Encode(#[from] prometheus::Error),
}

/// Every instrument of the router. Cheap to share (`Arc`); recording never blocks for long.
pub struct Metrics {
    registry: Registry,
    /// Keeps the SDK pipeline alive; dropping it would stop collection.
    _provider: SdkMeterProvider,
    model_name: String,
    // Engine state per shard (gauges, set from every StepOutput and Info).
    pub(crate) running: Gauge<u64>,
    pub(crate) waiting: Gauge<u64>,
    pub(crate) preempted_waiting: Gauge<u64>,
    pub(crate) kv_usage: Gauge<f64>,
    pub(crate) kv_free_blocks: Gauge<u64>,
    pub(crate) kv_total_blocks: Gauge<u64>,
    pub(crate) shard_up: Gauge<u64>,
    pub(crate) shard_restarts: Counter<u64>,
    pub(crate) preemptions: Counter<u64>,
    pub(crate) prefix_cache_queries: Counter<u64>,
    pub(crate) prefix_cache_hits: Counter<u64>,
    pub(crate) iteration_tokens: Histogram<u64>,
    pub(crate) step_seconds: Histogram<f64>,
    pub(crate) rpc_seconds: Histogram<f64>,
    /// Last cumulative counts (`ShardStats`' `*_total`) seen per shard, to add only the
    /// difference.
    pub(crate) totals_seen: Mutex<Vec<shard::Totals>>,
    // Tokens and requests.
    pub(crate) prompt_tokens: Counter<u64>,
    pub(crate) generation_tokens: Counter<u64>,
    pub(crate) request_success: Counter<u64>,
    pub(crate) request_failure: Counter<u64>,
    pub(crate) ttft: Histogram<f64>,
    pub(crate) inter_token: Histogram<f64>,
    pub(crate) tpot: Histogram<f64>,
    pub(crate) e2e: Histogram<f64>,
    pub(crate) queue_time: Histogram<f64>,
    pub(crate) prefill_time: Histogram<f64>,
    pub(crate) decode_time: Histogram<f64>,
    pub(crate) inference_time: Histogram<f64>,
    pub(crate) request_prompt_tokens: Histogram<u64>,
    pub(crate) request_generation_tokens: Histogram<u64>,
    // HTTP.
    pub(crate) http_requests: Counter<u64>,
    pub(crate) http_seconds: Histogram<f64>,
}

impl Metrics {
    /// A fresh registry and instruments; `model_name` labels every engine metric.
    pub fn new(model_name: &str) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            // Names carry their unit already (`_seconds`), as vLLM's do.
            .without_units()
            .without_target_info()
            .scope_info_enabled(false)
            .build()
            .map_err(|e| MetricsError::Exporter(e.to_string()))?;
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let meter = provider.meter("pagedserve-router");
        Ok(Self::with_meter(&meter, registry, provider, model_name))
    }

    fn with_meter(
        m: &Meter,
        registry: Registry,
        provider: SdkMeterProvider,
        model_name: &str,
    ) -> Self {
        use buckets::*;
        let tokens = one_two_five(MAX_TOKENS_BUCKET);
        Self {
            registry,
            _provider: provider,
            model_name: model_name.to_string(),
            running: gauge(m, "num_requests_running", "Requests in the shard's running batch."),
            waiting: gauge(m, "num_requests_waiting", "Requests waiting on the shard, preempted ones included."),
            preempted_waiting: gauge(m, "num_requests_preempted_waiting", "Waiting requests that were preempted (to be recomputed)."),
            kv_usage: m.f64_gauge("pagedserve_kv_cache_usage_perc").with_description("KV cache usage: fraction of the shard's KV blocks in use (0 to 1, as vLLM's *_usage_perc).").build(),
            kv_free_blocks: gauge(m, "kv_cache_free_blocks", "Free KV cache blocks."),
            kv_total_blocks: gauge(m, "kv_cache_total_blocks", "KV cache blocks in all."),
            shard_up: gauge(m, "shard_up", "1 while the router has a working Serve stream to the shard, else 0."),
            shard_restarts: counter(m, "shard_restarts", "Times a shard came back after its connection was lost (restart or network)."),
            preemptions: counter(m, "num_preemptions", "Sequences preempted (KV cache full) and later recomputed."),
            iteration_tokens: m.u64_histogram("pagedserve_iteration_tokens").with_description("Tokens (prefill + decode) scheduled per engine step.").with_boundaries(ITERATION_TOKENS.to_vec()).build(),
            step_seconds: hist(m, "engine_step_duration_seconds", "Wall time of one engine step (forward + sampling) on the shard.", STEP_SECONDS),
            rpc_seconds: hist(m, "shard_rpc_duration_seconds", "Latency of unary router-to-shard gRPC calls (Health, Info).", RPC_SECONDS),
            prefix_cache_queries: counter(m, "prefix_cache_queries", "Prompt tokens looked up in the prefix cache (those of each admitted sequence that could match)."),
            prefix_cache_hits: counter(m, "prefix_cache_hits", "Prompt tokens found in the prefix cache (not recomputed), of those looked up."),
            totals_seen: Mutex::new(Vec::new()),
            prompt_tokens: counter(m, "prompt_tokens", "Prompt tokens processed (as in the responses' usage)."),
            generation_tokens: counter(m, "generation_tokens", "Tokens generated (as in the responses' usage)."),
            request_success: counter(m, "request_success", "Sequences finished successfully, by finished_reason (stop, length)."),
            request_failure: counter(m, "request_failure", "Sequences that ended without finishing: abort (client gone) or error."),
            ttft: hist(m, "time_to_first_token_seconds", "Time from the request's arrival at the router to its first token.", TTFT_SECONDS),
            inter_token: hist(m, "inter_token_latency_seconds", "Time between consecutive tokens of a sequence.", TOKEN_LATENCY_SECONDS),
            tpot: hist(m, "time_per_output_token_seconds", "Per sequence: (E2E latency - TTFT) / (generated tokens - 1).", TOKEN_LATENCY_SECONDS),
            e2e: hist(m, "e2e_request_latency_seconds", "Time from the request's arrival at the router to its last token.", REQUEST_LATENCY_SECONDS),
            queue_time: hist(m, "request_queue_time_seconds", "Time the sequence waited on the shard before it was first scheduled.", REQUEST_LATENCY_SECONDS),
            prefill_time: hist(m, "request_prefill_time_seconds", "Time from first scheduling on the shard to the first token.", REQUEST_LATENCY_SECONDS),
            decode_time: hist(m, "request_decode_time_seconds", "Time from the first token to the last on the shard.", REQUEST_LATENCY_SECONDS),
            inference_time: hist(m, "request_inference_time_seconds", "Prefill + decode time on the shard.", REQUEST_LATENCY_SECONDS),
            request_prompt_tokens: m.u64_histogram("pagedserve_request_prompt_tokens").with_description("Prompt tokens per sequence.").with_boundaries(tokens.clone()).build(),
            request_generation_tokens: m.u64_histogram("pagedserve_request_generation_tokens").with_description("Generated tokens per sequence.").with_boundaries(tokens).build(),
            http_requests: counter(m, "http_requests", "HTTP requests handled by the router, by route, method and status."),
            http_seconds: hist(m, "http_request_duration_seconds", "Time to the router's response head (streams: until streaming starts).", RPC_SECONDS),
        }
    }

    /// The Prometheus text exposition of every instrument.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    pub(crate) fn shard_labels(&self, shard: usize) -> [KeyValue; 2] {
        [
            KeyValue::new("model_name", self.model_name.clone()),
            KeyValue::new("shard", shard.to_string()),
        ]
    }
}

fn gauge(m: &Meter, name: &str, help: &'static str) -> Gauge<u64> {
    m.u64_gauge(format!("pagedserve_{name}"))
        .with_description(help)
        .build()
}

/// `_total` is appended by the exporter.
fn counter(m: &Meter, name: &str, help: &'static str) -> Counter<u64> {
    m.u64_counter(format!("pagedserve_{name}"))
        .with_description(help)
        .build()
}

fn hist(m: &Meter, name: &str, help: &'static str, bounds: &[f64]) -> Histogram<f64> {
    m.f64_histogram(format!("pagedserve_{name}"))
        .with_description(help)
        .with_boundaries(bounds.to_vec())
        .build()
}
