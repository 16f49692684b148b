//! Per-request measurements and the run's metrics, defined as in vLLM's
//! `benchmark_serving.py` (`calculate_metrics`):
//! - TTFT: request start to the first chunk carrying text;
//! - TPOT: per request, `(latency - ttft) / (output_tokens - 1)`, only when it produced
//!   more than one token (the first token is excluded);
//! - ITL: every gap between consecutive text chunks, pooled over all requests;
//! - E2E latency: request start to the end of the stream.
//!
//! Only successful requests count; their output tokens come from the server's `usage`
//! when it sent one, else from tokenizing the generated text.

use serde::{Deserialize, Serialize};

use crate::bench::stats::Summary;

/// What one request measured (times in seconds since it was sent).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestOutput {
    pub success: bool,
    pub error: Option<String>,
    pub generated_text: String,
    pub prompt_len: usize,
    /// The `max_tokens` asked for.
    pub requested_output_len: usize,
    pub ttft: f64,
    pub latency: f64,
    pub itl: Vec<f64>,
    /// `usage.completion_tokens` from the server, when present.
    pub usage_output_tokens: Option<usize>,
}

/// The run's metrics; latencies in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub completed: usize,
    pub failed: usize,
    pub total_input: usize,
    pub total_output: usize,
    pub request_throughput: f64,
    pub input_throughput: f64,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub ttft_ms: Summary,
    pub tpot_ms: Summary,
    pub itl_ms: Summary,
    pub e2el_ms: Summary,
    /// Output tokens of each request (0 for failed ones), in request order.
    pub output_lens: Vec<usize>,
}

/// Metrics of `outputs` over a run of `duration_s` seconds; `count_tokens` tokenizes a
/// generated text when the server gave no usage.
pub fn compute(
    outputs: &[RequestOutput],
    duration_s: f64,
    count_tokens: impl Fn(&str) -> usize,
) -> Metrics {
    let mut m = Metrics::default();
    let (mut ttfts, mut tpots, mut itls, mut e2els) = (vec![], vec![], vec![], vec![]);
    for out in outputs {
        if !out.success {
            m.failed += 1;
            m.output_lens.push(0);
            continue;
        }
        let output_len = out
            .usage_output_tokens
            .unwrap_or_else(|| count_tokens(&out.generated_text));
        m.output_lens.push(output_len);
        m.total_input += out.prompt_len;
        m.total_output += output_len;
        if output_len > 1 {
            tpots.push((out.latency - out.ttft) / (output_len - 1) as f64);
        }
        itls.extend_from_slice(&out.itl);
        ttfts.push(out.ttft);
        e2els.push(out.latency);
        m.completed += 1;
    }
    let per_s = |x: usize| {
        if duration_s > 0.0 {
            x as f64 / duration_s
        } else {
            0.0
        }
    };
    m.request_throughput = per_s(m.completed);
    m.input_throughput = per_s(m.total_input);
    m.output_throughput = per_s(m.total_output);
    m.total_token_throughput = per_s(m.total_input + m.total_output);
    m.ttft_ms = Summary::of(&ttfts).scaled(1000.0);
    m.tpot_ms = Summary::of(&tpots).scaled(1000.0);
    m.itl_ms = Summary::of(&itls).scaled(1000.0);
    m.e2el_ms = Summary::of(&e2els).scaled(1000.0);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(prompt_len: usize, ttft: f64, itl: &[f64], usage: Option<usize>) -> RequestOutput {
        RequestOutput {
            success: true,
            generated_text: "x".repeat(itl.len() + 1),
            prompt_len,
            ttft,
            latency: ttft + itl.iter().sum::<f64>(),
            itl: itl.to_vec(),
            usage_output_tokens: usage,
            ..RequestOutput::default()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn tpot_is_per_request_and_itl_is_per_gap() {
        // A: 5 tokens, ttft 0.1 s, gaps 0.1 0.1 0.1 0.5 -> latency 0.9, TPOT 0.2 s.
        // B: 3 tokens, ttft 0.3 s, gaps 0.05 0.05      -> latency 0.4, TPOT 0.05 s.
        let outs = [
            ok(10, 0.1, &[0.1, 0.1, 0.1, 0.5], Some(5)),
            ok(20, 0.3, &[0.05, 0.05], Some(3)),
        ];
        let m = compute(&outs, 2.0, |_| unreachable!("usage given"));
        assert_eq!(
            (m.completed, m.failed, m.total_input, m.total_output),
            (2, 0, 30, 8)
        );
        // TPOT: mean of per-request values (0.2 + 0.05) / 2 = 125 ms.
        assert!(close(m.tpot_ms.mean, 125.0), "{:?}", m.tpot_ms);
        // ITL: mean over all 6 gaps = 0.9 s / 6 = 150 ms, so the long request weighs more.
        assert!(close(m.itl_ms.mean, 150.0), "{:?}", m.itl_ms);
        // ITL median of [.05 .05 .1 .1 .1 .5] is 0.1; p90 interpolates 0.1..0.5 at 0.5.
        assert!(close(m.itl_ms.median, 100.0));
        assert!(close(m.itl_ms.p90, 300.0), "{:?}", m.itl_ms);
        assert!(close(m.ttft_ms.mean, 200.0));
        assert!(close(m.e2el_ms.median, 650.0));
        assert!(close(m.request_throughput, 1.0));
        assert!(close(m.output_throughput, 4.0));
        assert!(close(m.total_token_throughput, 19.0));
    }

    #[test]
    fn failures_count_zero_tokens_and_no_latency() {
        let failed = RequestOutput {
            error: Some("HTTP 500".into()),
            prompt_len: 99,
            ..RequestOutput::default()
        };
        let outs = [failed, ok(4, 0.2, &[], None)];
        // No usage: the generated text is counted with the tokenizer.
        let m = compute(&outs, 1.0, |text| text.len() * 7);
        assert_eq!((m.completed, m.failed), (1, 1));
        assert_eq!(m.output_lens, vec![0, 7]);
        assert_eq!(m.total_input, 4, "failed requests' prompts don't count");
        assert!(close(m.ttft_ms.mean, 200.0));
        // One token: TPOT undefined for that request, so no TPOT sample at all.
        let one = compute(&[ok(4, 0.2, &[], Some(1))], 1.0, |_| 0);
        assert_eq!(one.tpot_ms, Summary::default());
    }
}
