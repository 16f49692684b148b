//! `pagedserve bench`: a load generator for OpenAI-compatible servers whose numbers are
//! comparable with vLLM's `benchmarks/benchmark_serving.py` (same datasets and filters,
//! same request bodies, same metric definitions).

mod args;
mod base_url;
mod client;
mod compare;
mod dataset;
mod error;
mod fetch;
mod load;
mod metrics;
mod report;
mod result;
mod runner;
mod schedule;
mod sse;
mod stats;
mod tokenizer;

use serde_json::Value;

pub use args::BenchArgs;
pub use error::BenchError;

use client::Endpoint;
use error::Result;
use sse::Api;

/// Longest answer the warm-up request asks for: it only proves the server answers.
const PROBE_MAX_TOKENS: usize = 16;

pub async fn run(args: BenchArgs) -> Result<()> {
    if let Some(files) = &args.compare {
        return print_comparison(files);
    }
    let client = reqwest::Client::builder()
        .build()
        .map_err(BenchError::Client)?;
    let base_url = base_url::parse(&args.base_url)?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => discover_model(&client, &base_url, args.api_key.as_deref()).await?,
    };
    let (tokenizer, tokenizer_path) = tokenizer::load(args.tokenizer.as_deref()).await?;
    if args.tokenizer.is_none() && model != tokenizer::default_model_name() {
        tracing::warn!(
            "the server serves `{model}` but tokens are counted with the default model's \
             tokenizer; pass --tokenizer for exact counts"
        );
    }
    let (requests, dataset) = load::requests(&args, &tokenizer).await?;
    let Some(first) = requests.first() else {
        return Err(BenchError::NoRequests);
    };
    let offsets = schedule::arrival_offsets(requests.len(), args.request_rate, args.seed)?;
    let ep = endpoint(&args, &base_url, model);
    probe(&client, &ep, first).await?;
    let max_concurrency = args.max_concurrency.map(|n| n as usize);
    tracing::info!(
        "sending {} requests to {} (rate {}, max concurrency {})",
        requests.len(),
        ep.url,
        args.request_rate,
        max_concurrency.map_or("none".to_owned(), |n| n.to_string())
    );
    let outcome = runner::run_load(
        &client,
        &ep,
        &requests,
        &offsets,
        max_concurrency,
        !args.no_progress,
    )
    .await;
    let count = |text: &str| tokenizer.encode(text, false).map_or(0, |ids| ids.len());
    let m = metrics::compute(&outcome.outputs, outcome.duration_s, count);
    print!("{}", report::summary_table(&m, outcome.duration_s));
    print!("{}", report::error_summary(&outcome.outputs));
    if let Some(path) = &args.result_json {
        let info = run_info(
            &args,
            &ep,
            base_url,
            &tokenizer_path,
            dataset,
            requests.len(),
        );
        let json = result::to_json(&info, &m, &outcome.outputs, outcome.duration_s);
        result::write(path, &json)?;
        tracing::info!("results written to {}", path.display());
    }
    Ok(())
}

fn endpoint(args: &BenchArgs, base_url: &str, model: String) -> Endpoint {
    Endpoint {
        url: format!("{base_url}{}", args.endpoint),
        api: if args.endpoint.ends_with("chat/completions") {
            Api::Chat
        } else {
            Api::Completions
        },
        model,
        api_key: args.api_key.clone(),
        ignore_eos: args.ignore_eos,
    }
}

fn run_info(
    args: &BenchArgs,
    ep: &Endpoint,
    base_url: String,
    tokenizer_path: &std::path::Path,
    dataset: String,
    num_prompts: usize,
) -> result::RunInfo {
    result::RunInfo {
        backend: match ep.api {
            Api::Chat => "openai-chat",
            Api::Completions => "openai",
        },
        base_url,
        endpoint: args.endpoint.clone(),
        model_id: ep.model.clone(),
        tokenizer: tokenizer_path.display().to_string(),
        dataset,
        num_prompts,
        request_rate: args.request_rate,
        max_concurrency: args.max_concurrency.map(|n| n as usize),
        seed: args.seed,
        ignore_eos: args.ignore_eos,
    }
}

/// vLLM's "initial single prompt test run": one short request must succeed before the
/// load starts, so a wrong URL, key or model fails fast with the server's own message.
async fn probe(
    client: &reqwest::Client,
    ep: &Endpoint,
    first: &dataset::BenchRequest,
) -> Result<()> {
    let mut req = first.clone();
    req.output_len = req.output_len.min(PROBE_MAX_TOKENS);
    let out = client::send(client, ep, &req).await;
    match out.error {
        None if out.success => Ok(()),
        error => Err(BenchError::Server {
            url: ep.url.clone(),
            message: format!(
                "the initial test request failed: {}",
                error.unwrap_or_else(|| "no output".into())
            ),
        }),
    }
}

/// The first model id of `GET /v1/models`.
async fn discover_model(client: &reqwest::Client, base: &str, key: Option<&str>) -> Result<String> {
    let url = format!("{base}/v1/models");
    let fail = |message: String| BenchError::Server {
        url: url.clone(),
        message,
    };
    let mut req = client.get(&url);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    // No answer at all is a wrong --base-url or a server that is down: --model would not help.
    let resp = req.send().await.map_err(|e| {
        fail(format!(
            "no server answered ({e}); check --base-url and that the server is running"
        ))
    })?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| fail(e.to_string()))?;
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(fail(format!(
            "HTTP {status}: no model list here; check --base-url (without /v1), or pass --model"
        )));
    }
    if !status.is_success() {
        return Err(fail(format!("HTTP {status}: {}", body.trim())));
    }
    let value: Value = serde_json::from_str(&body).map_err(|e| fail(format!("bad JSON: {e}")))?;
    value["data"][0]["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| fail("the server lists no model; pass --model".into()))
}

fn print_comparison(files: &[std::path::PathBuf]) -> Result<()> {
    let [a, b] = files else {
        return Err(BenchError::Usage("--compare takes two result files".into()));
    };
    let (va, vb) = (compare::load(a)?, compare::load(b)?);
    print!(
        "{}",
        compare::table(&va, &vb, &a.display().to_string(), &b.display().to_string())
    );
    Ok(())
}
