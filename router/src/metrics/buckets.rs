//! Histogram bucket boundaries, the same as vLLM's so dashboards and SLOs carry over.

/// `vllm:time_to_first_token_seconds`.
pub const TTFT_SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// `vllm:inter_token_latency_seconds` and `vllm:time_per_output_token_seconds`.
pub const TOKEN_LATENCY_SECONDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];

/// vLLM's request latency buckets: E2E, queue, prefill, decode and inference time.
pub const REQUEST_LATENCY_SECONDS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// `vllm:iteration_tokens_total`: tokens scheduled in one engine step.
pub const ITERATION_TOKENS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];

/// Short latencies: router HTTP handling and unary gRPC calls to a shard.
pub const RPC_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Engine step wall time (forward + sampling).
pub const STEP_SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0,
];

/// vLLM's `build_1_2_5_buckets(max_model_len)`: 1, 2, 5, 10, 20, 50, ... up to `max`.
/// Used for prompt and generation tokens per request.
pub fn one_two_five(max: u64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut exponent = 1u64;
    loop {
        for mantissa in [1, 2, 5] {
            let value = mantissa * exponent;
            if value > max {
                return out;
            }
            out.push(value as f64);
        }
        exponent = match exponent.checked_mul(10) {
            Some(next) => next,
            None => return out,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_two_five_matches_vllm() {
        assert_eq!(
            one_two_five(100),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
        assert_eq!(one_two_five(8192).last(), Some(&5000.0));
        assert!(one_two_five(0).is_empty());
    }

    #[test]
    fn boundaries_increase() {
        for bounds in [
            TTFT_SECONDS,
            TOKEN_LATENCY_SECONDS,
            REQUEST_LATENCY_SECONDS,
            ITERATION_TOKENS,
            RPC_SECONDS,
            STEP_SECONDS,
        ] {
            assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        }
    }
}
