//! Runs the whole load: every request waits for its arrival time, then for a concurrency
//! slot (`--max-concurrency`, like vLLM's semaphore), then is sent; a progress bar counts
//! finished requests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::Semaphore;

use crate::bench::client::{Endpoint, send};
use crate::bench::dataset::BenchRequest;
use crate::bench::metrics::RequestOutput;

/// Outputs in request order and the wall time from the first send to the last answer.
pub struct RunOutcome {
    pub outputs: Vec<RequestOutput>,
    pub duration_s: f64,
}

pub async fn run_load(
    client: &reqwest::Client,
    ep: &Endpoint,
    requests: &[BenchRequest],
    offsets: &[Duration],
    max_concurrency: Option<usize>,
    show_progress: bool,
) -> RunOutcome {
    let bar = progress_bar(requests.len(), show_progress);
    let slots = max_concurrency.map(|n| Arc::new(Semaphore::new(n.max(1))));
    let start = Instant::now();
    let mut pending: FuturesUnordered<_> = requests
        .iter()
        .zip(offsets)
        .enumerate()
        .map(|(index, (req, offset))| {
            let slots = slots.clone();
            let bar = bar.clone();
            async move {
                tokio::time::sleep_until((start + *offset).into()).await;
                // Never closed, so acquire only fails if it were; then send without a slot.
                let _permit = match &slots {
                    Some(s) => s.clone().acquire_owned().await.ok(),
                    None => None,
                };
                let out = send(client, ep, req).await;
                bar.inc(1);
                (index, out)
            }
        })
        .collect();
    let mut outputs = vec![RequestOutput::default(); requests.len()];
    while let Some((index, out)) = pending.next().await {
        if let Some(slot) = outputs.get_mut(index) {
            *slot = out;
        }
    }
    let duration_s = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    RunOutcome {
        outputs,
        duration_s,
    }
}

fn progress_bar(len: usize, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    let template = "{elapsed_precise} [{bar:40}] {pos}/{len} requests ({per_sec}, eta {eta})";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
