//! `/metrics` of a real pagedserve (launcher, router, two shards) under load: token counters
//! equal the responses' usage, every per-request histogram counted each sequence once, the
//! KV cache drains to 0, rejected requests are counted by status, `promtool check metrics`
//! is clean, and a real Prometheus scrapes it and answers every dashboard query.

use std::collections::BTreeSet;
use std::time::Duration;

use pagedserve_integration_tests::http::{self, EventStream};
use pagedserve_integration_tests::prometheus::{self, Prometheus};
use pagedserve_integration_tests::{Server, ServerOptions};
use serde_json::{Value, json};

const PROMETHEUS_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus/prometheus.yml"
);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/grafana/dashboards/pagedserve.json"
);

/// What the responses' `usage` added up to.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Totals {
    prompt: f64,
    completion: f64,
    sequences: f64,
}

impl Totals {
    fn add(&mut self, usage: &Value, sequences: f64) {
        self.prompt += usage["prompt_tokens"].as_f64().unwrap_or(f64::NAN);
        self.completion += usage["completion_tokens"].as_f64().unwrap_or(f64::NAN);
        self.sequences += sequences;
    }
}

/// Sum of the samples of `name` whose labels include every `k="v"` of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let metric = key.split('{').next().unwrap_or_default();
        let all = labels
            .iter()
            .all(|(k, v)| key.contains(&format!("{k}=\"{v}\"")));
        if metric == name && all {
            let value: f64 = value.parse().unwrap_or(f64::NAN);
            found = Some(found.unwrap_or(0.0) + value);
        }
    }
    found
}

fn scrape(server: &Server) -> String {
    let response = http::get(server.port, "/metrics", None).expect("GET /metrics");
    assert_eq!(response.status, 200, "{}", response.text());
    response.text()
}

fn post(server: &Server, path: &str, body: &Value) -> Value {
    let response = http::post_json(server.port, path, Some(&server.api_key), body)
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    assert_eq!(response.status, 200, "{path}: {}", response.text());
    response.json()
}

/// A streamed completion; returns its usage chunk.
fn stream(server: &Server, body: &Value) -> Value {
    let key = Some(server.api_key.as_str());
    let mut events =
        EventStream::open(server.port, "/v1/completions", key, body).expect("open stream");
    assert_eq!(events.status, 200);
    let mut usage = Value::Null;
    while let Some(data) = events.next_data().expect("read stream") {
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(&data).expect("chunk is JSON");
        if !chunk["usage"].is_null() {
            usage = chunk["usage"].clone();
        }
    }
    usage
}

/// Concurrent chat, streamed and n=2 requests over both shards.
fn drive_load(server: &Server) -> Totals {
    let model = server.model.as_str();
    let chat = |i: u32| {
        json!({"model": model, "max_tokens": 6 + i, "temperature": 0,
               "messages": [{"role": "user", "content": format!("Count to {i}.")}]})
    };
    let streamed = json!({"model": model, "prompt": "The capital of France is", "max_tokens": 8,
        "stream": true, "stream_options": {"include_usage": true}});
    let two = json!({"model": model, "prompt": "Once upon a time", "max_tokens": 5, "n": 2});
    std::thread::scope(|s| {
        let mut jobs = Vec::new();
        for i in 0..3 {
            let body = chat(i);
            jobs.push(s.spawn(move || {
                (
                    post(server, "/v1/chat/completions", &body)["usage"].clone(),
                    1.0,
                )
            }));
        }
        for _ in 0..2 {
            let body = streamed.clone();
            jobs.push(s.spawn(move || (stream(server, &body), 1.0)));
        }
        jobs.push(s.spawn(|| (post(server, "/v1/completions", &two)["usage"].clone(), 2.0)));
        let mut totals = Totals::default();
        for job in jobs {
            let (usage, sequences) = job.join().expect("load thread");
            assert!(usage.is_object(), "every response has usage: {usage}");
            totals.add(&usage, sequences);
        }
        totals
    })
}

fn rejected_requests(server: &Server) {
    let body = json!({"model": server.model, "messages": [{"role": "user", "content": "hi"}]});
    let no_key = http::post_json(server.port, "/v1/chat/completions", None, &body);
    assert_eq!(no_key.map(|r| r.status).ok(), Some(401));
    let empty = json!({"model": server.model, "messages": []});
    let key = Some(server.api_key.as_str());
    let bad = http::post_json(server.port, "/v1/chat/completions", key, &empty);
    assert_eq!(bad.map(|r| r.status).ok(), Some(400));
}

/// Waits until no sequence runs or waits and the KV cache is empty on every shard.
fn wait_idle(server: &Server) -> String {
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(server);
        let busy = [
            "pagedserve_num_requests_running",
            "pagedserve_num_requests_waiting",
        ]
        .iter()
        .map(|name| sample(&text, name, &[]).unwrap_or(f64::NAN))
        .sum::<f64>();
        let kv = sample(&text, "pagedserve_kv_cache_usage_perc", &[]);
        if busy == 0.0 && kv == Some(0.0) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the shards did not go idle with an empty KV cache:\n{text}");
}

fn check_exposition(text: &str, totals: Totals) {
    let get = |name: &str| sample(text, name, &[]);
    assert_eq!(get("pagedserve_prompt_tokens_total"), Some(totals.prompt));
    assert_eq!(
        get("pagedserve_generation_tokens_total"),
        Some(totals.completion)
    );
    assert_eq!(
        get("pagedserve_request_success_total"),
        Some(totals.sequences)
    );
    for name in [
        "time_to_first_token_seconds",
        "e2e_request_latency_seconds",
        "time_per_output_token_seconds",
        "request_queue_time_seconds",
        "request_prefill_time_seconds",
        "request_decode_time_seconds",
        "request_inference_time_seconds",
        "request_prompt_tokens",
        "request_generation_tokens",
    ] {
        let count = get(&format!("pagedserve_{name}_count"));
        assert_eq!(count, Some(totals.sequences), "{name}_count");
        let inf = sample(
            text,
            &format!("pagedserve_{name}_bucket"),
            &[("le", "+Inf")],
        );
        assert_eq!(inf, count, "{name} +Inf bucket");
    }
    // One token per step per sequence: every token after a sequence's first is one gap.
    let gaps = get("pagedserve_inter_token_latency_seconds_count");
    assert_eq!(gaps, Some(totals.completion - totals.sequences));
    assert_eq!(
        get("pagedserve_request_generation_tokens_sum"),
        Some(totals.completion)
    );
    let chat = ("route", "/v1/chat/completions");
    for (status, want) in [("200", 3.0), ("401", 1.0), ("400", 1.0)] {
        let got = sample(
            text,
            "pagedserve_http_requests_total",
            &[chat, ("status", status)],
        );
        assert_eq!(got, Some(want), "chat requests with status {status}");
    }
    assert_eq!(get("pagedserve_shard_up"), Some(2.0), "both shards up");
    assert!(get("pagedserve_iteration_tokens_count").is_some_and(|n| n > 0.0));
}

/// Every dashboard expression, with Grafana's variables filled in as the dashboard would.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(DASHBOARD).expect("read the dashboard JSON");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    let exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .map(|e| {
            e.replace("$__rate_interval", "1m")
                .replace("$model_name", ".*")
        })
        .collect();
    assert!(exprs.len() >= 12, "the dashboard has its panels: {exprs:?}");
    exprs
}

fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("pagedserve_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

fn check_prometheus(prom: &Prometheus, totals: Totals) {
    let value = |answer: &Value| {
        let v = &answer["data"]["result"][0]["value"][1];
        v.as_str().and_then(|s| s.parse::<f64>().ok())
    };
    let rate = "sum(rate(pagedserve_generation_tokens_total[1m]))";
    let positive = prom.wait_for(Duration::from_secs(30), |p| {
        value(&p.query(rate)).is_some_and(|r| r > 0.0)
    });
    assert!(positive, "{rate} never became > 0: {}", prom.query(rate));
    let total = "sum(pagedserve_generation_tokens_total)";
    let scraped = prom.wait_for(Duration::from_secs(10), |p| {
        value(&p.query(total)) == Some(totals.completion)
    });
    assert!(scraped, "{total}: {}", prom.query(total));
    let known = prom.api("/api/v1/label/__name__/values");
    let known: BTreeSet<String> = known["data"]
        .as_array()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for expr in dashboard_queries() {
        // Series born during the load need two scrapes before rate() sees them.
        let has_series = |answer: &Value| {
            answer["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        };
        prom.wait_for(Duration::from_secs(15), |p| has_series(&p.query(&expr)));
        let answer = prom.query(&expr);
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        assert!(has_series(&answer), "{expr} returned no series: {answer}");
        for name in metric_names(&expr) {
            assert!(
                known.contains(&name),
                "{expr} names {name}, which Prometheus does not have"
            );
        }
    }
}

#[test]
fn metrics_match_usage_and_a_real_prometheus_answers_the_dashboard() {
    let tools = prometheus::binaries();
    let server = Server::start(&ServerOptions::new("metrics"));
    let prom = tools.as_ref().map(|(_, bin)| {
        let prom = Prometheus::start(bin, &format!("127.0.0.1:{}", server.port));
        // Scrape once before the load, so the counters' rate has a baseline.
        let up = prom.wait_for(Duration::from_secs(30), |p| {
            p.query("up")["data"]["result"][0]["value"][1] == "1"
        });
        assert!(up, "prometheus never scraped the router: {}", prom.log());
        prom
    });
    let totals = drive_load(&server);
    rejected_requests(&server);
    let text = wait_idle(&server);
    check_exposition(&text, totals);
    let Some((promtool, _)) = tools else {
        return;
    };
    if let Err(problems) = prometheus::check_metrics(&promtool, &text) {
        panic!("{problems}");
    }
    let config = std::path::Path::new(PROMETHEUS_CONFIG);
    if let Err(problems) = prometheus::check_config(&promtool, config) {
        panic!("the shipped Prometheus config: {problems}");
    }
    if let Some(prom) = &prom {
        check_prometheus(prom, totals);
    }
}

#[test]
fn preemptions_under_kv_pressure_reach_the_router() {
    // 8 blocks of 16 tokens: four 60-token sequences cannot all stay resident.
    let mut options = ServerOptions::new("metrics_preemption");
    options.num_shards = 1;
    options.extra_args = ["--num-kv-blocks", "8", "--block-size", "16"]
        .map(String::from)
        .to_vec();
    let server = Server::start(&options);
    let body = json!({"model": server.model, "prompt": "Write a long story about a cat.",
        "max_tokens": 48, "ignore_eos": true, "temperature": 0});
    let usages: Vec<Value> = std::thread::scope(|s| {
        let jobs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| post(&server, "/v1/completions", &body)["usage"].clone()))
            .collect();
        jobs.into_iter()
            .map(|j| j.join().expect("request thread"))
            .collect()
    });
    let generated: f64 = usages
        .iter()
        .filter_map(|u| u["completion_tokens"].as_f64())
        .sum();
    assert_eq!(
        generated,
        4.0 * 48.0,
        "every request ran to max_tokens: {usages:?}"
    );
    let text = wait_idle(&server);
    let preemptions = sample(&text, "pagedserve_num_preemptions_total", &[]);
    assert!(
        preemptions.is_some_and(|n| n > 0.0),
        "no preemption counted:\n{text}"
    );
    assert_eq!(
        sample(&text, "pagedserve_request_success_total", &[]),
        Some(4.0)
    );
    assert_eq!(
        sample(&text, "pagedserve_generation_tokens_total", &[]),
        Some(generated)
    );
}
