//! `--compare a.json b.json`: two result files side by side with the ratio b/a. Works on
//! vLLM's result JSON too, since the keys are the same; metrics a file lacks show `-`.

use std::fmt::Write;
use std::path::Path;

use serde_json::Value;

use crate::bench::error::{BenchError, Result};

/// (label, key): the rows of the comparison.
const ROWS: &[(&str, &str)] = &[
    ("Successful requests", "completed"),
    ("Failed requests", "failed"),
    ("Benchmark duration (s)", "duration"),
    ("Total input tokens", "total_input_tokens"),
    ("Total generated tokens", "total_output_tokens"),
    ("Request throughput (req/s)", "request_throughput"),
    ("Output token throughput (tok/s)", "output_throughput"),
    ("Total token throughput (tok/s)", "total_token_throughput"),
    ("Mean TTFT (ms)", "mean_ttft_ms"),
    ("Median TTFT (ms)", "median_ttft_ms"),
    ("P90 TTFT (ms)", "p90_ttft_ms"),
    ("P99 TTFT (ms)", "p99_ttft_ms"),
    ("Mean TPOT (ms)", "mean_tpot_ms"),
    ("Median TPOT (ms)", "median_tpot_ms"),
    ("P90 TPOT (ms)", "p90_tpot_ms"),
    ("P99 TPOT (ms)", "p99_tpot_ms"),
    ("Mean ITL (ms)", "mean_itl_ms"),
    ("Median ITL (ms)", "median_itl_ms"),
    ("P90 ITL (ms)", "p90_itl_ms"),
    ("P99 ITL (ms)", "p99_itl_ms"),
    ("Mean E2EL (ms)", "mean_e2el_ms"),
    ("Median E2EL (ms)", "median_e2el_ms"),
    ("P90 E2EL (ms)", "p90_e2el_ms"),
    ("P99 E2EL (ms)", "p99_e2el_ms"),
];

pub fn load(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Read {
        path: path.to_owned(),
        source,
    })?;
    let value: Value = serde_json::from_str(&text).map_err(|e| BenchError::ResultFile {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    if value.get("completed").and_then(Value::as_f64).is_none() {
        return Err(BenchError::ResultFile {
            path: path.to_owned(),
            message: "no `completed` count".into(),
        });
    }
    Ok(value)
}

/// The side-by-side table of `a` and `b`, named `name_a` and `name_b` in its header.
pub fn table(a: &Value, b: &Value, name_a: &str, name_b: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "A: {name_a}  ({})", describe(a));
    let _ = writeln!(s, "B: {name_b}  ({})", describe(b));
    let _ = writeln!(s, "{:<34} {:>12} {:>12} {:>8}", "metric", "A", "B", "B/A");
    let _ = writeln!(s, "{}", "-".repeat(69));
    for (label, key) in ROWS {
        let (va, vb) = (number(a, key), number(b, key));
        let ratio = match (va, vb) {
            (Some(x), Some(y)) if x != 0.0 => format!("{:.3}", y / x),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            s,
            "{label:<34} {:>12} {:>12} {ratio:>8}",
            cell(va),
            cell(vb)
        );
    }
    s
}

fn number(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64).filter(|x| x.is_finite())
}

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"))
}

fn describe(v: &Value) -> String {
    let field = |k: &str| match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    };
    format!(
        "model {}, {} prompts, rate {}, concurrency {}",
        field("model_id"),
        field("num_prompts"),
        field("request_rate"),
        field("max_concurrency")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ratios_and_missing_values() {
        let a = json!({"completed": 10, "request_throughput": 2.0, "mean_ttft_ms": 0.0,
                       "model_id": "x", "request_rate": "inf"});
        let b = json!({"completed": 20, "request_throughput": 3.0, "mean_ttft_ms": 5.0});
        let t = table(&a, &b, "a.json", "b.json");
        let row = |label: &str| {
            t.lines()
                .find(|l| l.starts_with(label))
                .unwrap_or_else(|| panic!("no row {label} in\n{t}"))
                .split_whitespace()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
        };
        assert_eq!(row("Successful requests"), vec!["2.000", "20.00", "10.00"]);
        assert_eq!(row("Request throughput"), vec!["1.500", "3.00", "2.00"]);
        assert_eq!(
            row("Mean TTFT"),
            vec!["-", "5.00", "0.00"],
            "no ratio over zero"
        );
        assert_eq!(row("P99 ITL"), vec!["-", "-", "-"]);
        assert!(t.contains("model x") && t.contains("rate inf"), "{t}");
    }

    #[test]
    fn load_rejects_non_results() {
        let dir = std::env::temp_dir().join(format!("pagedserve-cmp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{\"x\": 1}").expect("write");
        let good = dir.join("good.json");
        std::fs::write(&good, "{\"completed\": 3}").expect("write");
        let (bad_res, good_res) = (load(&bad), load(&good));
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert!(matches!(bad_res, Err(BenchError::ResultFile { .. })));
        assert_eq!(good_res.expect("valid")["completed"], 3);
        assert!(matches!(
            load(&dir.join("none")),
            Err(BenchError::Read { .. })
        ));
    }
}
