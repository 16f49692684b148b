//! The `--result-json` file. Keys follow vLLM's result JSON (`mean_ttft_ms`,
//! `p99_itl_ms`, `output_throughput`, ...) so `--compare` reads files of both tools.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::bench::error::{BenchError, Result};
use crate::bench::metrics::{Metrics, RequestOutput};
use crate::bench::stats::Summary;

/// What the run was: everything about it that isn't a measurement.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub backend: &'static str,
    pub base_url: String,
    pub endpoint: String,
    pub model_id: String,
    pub tokenizer: String,
    pub dataset: String,
    pub num_prompts: usize,
    pub request_rate: f64,
    pub max_concurrency: Option<usize>,
    pub seed: u64,
    pub ignore_eos: bool,
}

/// The four latency metrics: (key infix used in JSON keys, label, summary).
pub fn latency_summaries(m: &Metrics) -> [(&'static str, &'static str, Summary); 4] {
    [
        ("ttft", "TTFT", m.ttft_ms),
        ("tpot", "TPOT", m.tpot_ms),
        ("itl", "ITL", m.itl_ms),
        ("e2el", "E2EL", m.e2el_ms),
    ]
}

pub fn to_json(info: &RunInfo, m: &Metrics, outputs: &[RequestOutput], duration_s: f64) -> Value {
    let rate = if info.request_rate.is_finite() {
        json!(info.request_rate)
    } else {
        json!("inf")
    };
    let mut obj = Map::new();
    let mut put = |k: &str, v: Value| {
        obj.insert(k.to_owned(), v);
    };
    put("unix_time", json!(unix_time()));
    put("backend", json!(info.backend));
    put("base_url", json!(info.base_url));
    put("endpoint", json!(info.endpoint));
    put("model_id", json!(info.model_id));
    put("tokenizer_id", json!(info.tokenizer));
    put("dataset", json!(info.dataset));
    put("num_prompts", json!(info.num_prompts));
    put("request_rate", rate);
    put("max_concurrency", json!(info.max_concurrency));
    put("seed", json!(info.seed));
    put("ignore_eos", json!(info.ignore_eos));
    put("duration", json!(duration_s));
    put("completed", json!(m.completed));
    put("failed", json!(m.failed));
    put("total_input_tokens", json!(m.total_input));
    put("total_output_tokens", json!(m.total_output));
    put("request_throughput", json!(m.request_throughput));
    put("input_throughput", json!(m.input_throughput));
    put("output_throughput", json!(m.output_throughput));
    put("total_token_throughput", json!(m.total_token_throughput));
    for (key, _, s) in latency_summaries(m) {
        put(&format!("mean_{key}_ms"), json!(s.mean));
        put(&format!("median_{key}_ms"), json!(s.median));
        put(&format!("std_{key}_ms"), json!(s.std));
        put(&format!("p90_{key}_ms"), json!(s.p90));
        put(&format!("p99_{key}_ms"), json!(s.p99));
    }
    let col = |f: &dyn Fn(&RequestOutput) -> Value| outputs.iter().map(f).collect::<Vec<_>>();
    put("input_lens", json!(col(&|o| json!(o.prompt_len))));
    put("output_lens", json!(m.output_lens));
    // Not in vLLM's file: shows whether the server produced exactly max_tokens.
    put(
        "requested_output_lens",
        json!(col(&|o| json!(o.requested_output_len))),
    );
    put("ttfts", json!(col(&|o| json!(o.ttft))));
    put("itls", json!(col(&|o| json!(o.itl))));
    put(
        "errors",
        json!(col(&|o| json!(o.error.clone().unwrap_or_default()))),
    );
    Value::Object(obj)
}

pub fn write(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| BenchError::Write {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(path, text + "\n").map_err(|source| BenchError::Write {
        path: path.to_owned(),
        source,
    })
}

fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::metrics::compute;

    #[test]
    fn json_has_vllm_keys_and_per_request_columns() {
        let ok = RequestOutput {
            success: true,
            prompt_len: 5,
            requested_output_len: 3,
            ttft: 0.5,
            latency: 1.5,
            itl: vec![0.5, 0.5],
            usage_output_tokens: Some(3),
            ..RequestOutput::default()
        };
        let bad = RequestOutput {
            error: Some("HTTP 429".into()),
            ..RequestOutput::default()
        };
        let outs = [ok, bad];
        let m = compute(&outs, 2.0, |_| 0);
        let info = RunInfo {
            backend: "openai",
            base_url: "http://h".into(),
            endpoint: "/v1/completions".into(),
            model_id: "m".into(),
            tokenizer: "t".into(),
            dataset: "random".into(),
            num_prompts: 2,
            request_rate: f64::INFINITY,
            max_concurrency: None,
            seed: 0,
            ignore_eos: true,
        };
        let v = to_json(&info, &m, &outs, 2.0);
        assert_eq!(v["request_rate"], "inf");
        assert_eq!(v["completed"], 1);
        assert_eq!(v["failed"], 1);
        assert_eq!(v["total_output_tokens"], 3);
        assert_eq!(v["mean_tpot_ms"], 500.0);
        assert_eq!(v["p99_ttft_ms"], 500.0);
        assert_eq!(v["output_lens"], json!([3, 0]));
        assert_eq!(v["requested_output_lens"], json!([3, 0]));
        assert_eq!(v["errors"], json!(["", "HTTP 429"]));
        assert_eq!(v["itls"][0], json!([0.5, 0.5]));
    }
}
