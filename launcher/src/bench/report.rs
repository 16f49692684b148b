//! The human summary, laid out like vLLM's "Serving Benchmark Result" table, plus the
//! errors of failed requests grouped by message.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::bench::metrics::{Metrics, RequestOutput};
use crate::bench::result::latency_summaries;

const WIDTH: usize = 50;

pub fn summary_table(m: &Metrics, duration_s: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{:=^WIDTH$}", " Serving Benchmark Result ");
    let mut row = |label: &str, value: String| {
        let _ = writeln!(s, "{label:<40} {value:<10}");
    };
    row("Successful requests:", m.completed.to_string());
    row("Failed requests:", m.failed.to_string());
    row("Benchmark duration (s):", format!("{duration_s:.2}"));
    row("Total input tokens:", m.total_input.to_string());
    row("Total generated tokens:", m.total_output.to_string());
    row(
        "Request throughput (req/s):",
        format!("{:.2}", m.request_throughput),
    );
    row(
        "Input token throughput (tok/s):",
        format!("{:.2}", m.input_throughput),
    );
    row(
        "Output token throughput (tok/s):",
        format!("{:.2}", m.output_throughput),
    );
    row(
        "Total Token throughput (tok/s):",
        format!("{:.2}", m.total_token_throughput),
    );
    let titles = [
        "Time to First Token",
        "Time per Output Token (excl. 1st token)",
        "Inter-token Latency",
        "End-to-end Latency",
    ];
    for (title, (_, label, summary)) in titles.iter().zip(latency_summaries(m)) {
        let _ = writeln!(s, "{:-^WIDTH$}", title);
        for (stat, value) in [
            ("Mean", summary.mean),
            ("Median", summary.median),
            ("P90", summary.p90),
            ("P99", summary.p99),
        ] {
            let _ = writeln!(s, "{:<40} {value:<10.2}", format!("{stat} {label} (ms):"));
        }
    }
    let _ = writeln!(s, "{}", "=".repeat(WIDTH));
    s
}

/// "N x message" lines for the failed requests, most frequent first; empty when none.
pub fn error_summary(outputs: &[RequestOutput]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in outputs.iter().filter_map(|o| o.error.as_deref()) {
        *counts.entry(e).or_default() += 1;
    }
    let mut sorted: Vec<_> = counts.into_iter().collect();
    sorted.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    let mut s = String::new();
    for (message, n) in sorted {
        let _ = writeln!(s, "failed request(s): {n} x {message}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::metrics::compute;

    #[test]
    fn table_has_vllm_rows_and_values() {
        let ok = RequestOutput {
            success: true,
            prompt_len: 5,
            ttft: 0.25,
            latency: 1.25,
            itl: vec![0.5, 0.5],
            usage_output_tokens: Some(3),
            ..RequestOutput::default()
        };
        let m = compute(&[ok], 2.0, |_| 0);
        let t = summary_table(&m, 2.0);
        assert!(
            t.starts_with("============ Serving Benchmark Result ============\n"),
            "{t}"
        );
        assert!(
            t.contains("Successful requests:                     1 "),
            "{t}"
        );
        assert!(
            t.contains("Benchmark duration (s):                  2.00"),
            "{t}"
        );
        assert!(
            t.contains("Mean TTFT (ms):                          250.00"),
            "{t}"
        );
        assert!(
            t.contains("Median TPOT (ms):                        500.00"),
            "{t}"
        );
        assert!(
            t.contains("-----Time per Output Token (excl. 1st token)------"),
            "{t}"
        );
        assert!(t.lines().all(|l| l.trim_end().len() <= WIDTH), "{t}");
    }

    #[test]
    fn errors_are_grouped() {
        let err = |e: &str| RequestOutput {
            error: Some(e.into()),
            ..RequestOutput::default()
        };
        let s = error_summary(&[err("a"), err("b"), err("b"), RequestOutput::default()]);
        assert_eq!(s, "failed request(s): 2 x b\nfailed request(s): 1 x a\n");
    }
}
