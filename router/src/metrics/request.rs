//! Per-request accounting: the token counters as the response's `usage` counts them, and
//! the per-sequence latency histograms (vLLM semantics: one observation per sequence; a
//! request with `n` choices or several prompts is that many sequences).

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use pagedserve_proto::v1::SequenceTimings;
use tracing::field::Empty;

use crate::client::Finish;
use crate::metrics::Metrics;

/// How a sequence ended, as far as metrics care.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SeqOutcome {
    /// Finished normally, with the shard's timings when the shard ended the sequence
    /// (absent when the router ended it on a stop string).
    Finished(Finish, Option<SequenceTimings>),
    /// The shard or the connection failed it.
    Error,
}

#[derive(Debug, Clone, Default)]
struct SeqTimes {
    prompt_tokens: u32,
    generated: u32,
    first: Option<Instant>,
    last: Option<Instant>,
    /// The shard's timings sent with the first token (queue and prefill time).
    first_timings: Option<SequenceTimings>,
    ended: bool,
}

/// Who a generation is for: the response id (for logs) and when the request arrived.
pub struct RequestMeta<'a> {
    pub id: &'a str,
    pub arrival: Instant,
}

/// Times every sequence of one request from the request's arrival at the router.
/// Sequences still open when it drops (client gone) count as `abort` failures.
pub struct RequestTimer {
    metrics: Arc<Metrics>,
    arrival: Instant,
    shard: usize,
    /// Prompt tokens as `usage` counts them (once per prompt, not per choice).
    usage_prompt_tokens: u32,
    prompt_counted: bool,
    seqs: Vec<SeqTimes>,
    /// One span per request; its fields are filled in when the request ends.
    span: tracing::Span,
    /// Shard timings of the first sequence that finished, for the log line.
    logged_timings: Option<SequenceTimings>,
}

impl RequestTimer {
    /// `prompt_lens` has one entry per sequence (choice).
    pub fn new(
        metrics: Arc<Metrics>,
        meta: RequestMeta<'_>,
        shard: usize,
        prompt_lens: &[u32],
        usage_prompt_tokens: u32,
    ) -> Self {
        let seqs = prompt_lens
            .iter()
            .map(|&prompt_tokens| SeqTimes {
                prompt_tokens,
                ..Default::default()
            })
            .collect();
        let span = tracing::info_span!(
            "request",
            id = %meta.id,
            shard,
            sequences = prompt_lens.len(),
            prompt_tokens = usage_prompt_tokens,
            completion_tokens = Empty,
            ttft_ms = Empty,
            e2e_ms = Empty,
            queue_ms = Empty,
            prefill_ms = Empty,
            decode_ms = Empty,
        );
        Self {
            metrics,
            arrival: meta.arrival,
            shard,
            usage_prompt_tokens,
            prompt_counted: false,
            seqs,
            span,
            logged_timings: None,
        }
    }

    /// `count` new tokens of sequence `seq` arrived at `now` (one engine step's worth),
    /// with the shard's timings if the step carried them.
    pub fn on_tokens(
        &mut self,
        seq: usize,
        count: u32,
        now: Instant,
        timings: Option<SequenceTimings>,
    ) {
        let labels = self.metrics.shard_labels(self.shard);
        if !self.prompt_counted {
            // The prompt is processed once the first output of the request comes back.
            self.prompt_counted = true;
            let prompt = u64::from(self.usage_prompt_tokens);
            self.metrics.prompt_tokens.add(prompt, &labels);
        }
        let Some(times) = self.seqs.get_mut(seq) else {
            return;
        };
        if count == 0 || times.ended {
            return;
        }
        self.metrics
            .generation_tokens
            .add(u64::from(count), &labels);
        match times.last {
            None => {
                let ttft = now.saturating_duration_since(self.arrival);
                self.metrics.ttft.record(ttft.as_secs_f64(), &labels);
                times.first = Some(now);
                times.first_timings = timings;
            }
            Some(last) => {
                let gap = now.saturating_duration_since(last);
                self.metrics.inter_token.record(gap.as_secs_f64(), &labels);
            }
        }
        times.last = Some(now);
        times.generated += count;
    }

    /// Sequence `seq` ended at `now`; records its request-level histograms once.
    pub fn on_end(&mut self, seq: usize, outcome: SeqOutcome, now: Instant) {
        let Some(times) = self.seqs.get_mut(seq) else {
            return;
        };
        if std::mem::replace(&mut times.ended, true) {
            return;
        }
        let times = times.clone();
        let (finish, timings) = match outcome {
            SeqOutcome::Finished(finish, timings) => (finish, timings),
            SeqOutcome::Error => return self.record_failure("error"),
        };
        let m = &self.metrics;
        let labels = m.shard_labels(self.shard);
        let e2e = now.saturating_duration_since(self.arrival);
        m.e2e.record(e2e.as_secs_f64(), &labels);
        let ttft = times.first.map_or(e2e, |t| t - self.arrival);
        let tpot = match times.generated {
            0 | 1 => 0.0,
            n => e2e.saturating_sub(ttft).as_secs_f64() / f64::from(n - 1),
        };
        m.tpot.record(tpot, &labels);
        m.request_prompt_tokens
            .record(u64::from(times.prompt_tokens), &labels);
        m.request_generation_tokens
            .record(u64::from(times.generated), &labels);
        // A stop string ends the sequence in the router: decode time as seen from here.
        let timings = timings.or_else(|| {
            let decode = times.last.zip(times.first).map(|(l, f)| l - f);
            times.first_timings.map(|t| SequenceTimings {
                decode_time_us: decode.map_or(0, |d| d.as_micros() as u64),
                ..t
            })
        });
        if self.logged_timings.is_none() {
            self.logged_timings = timings;
        }
        if let Some(t) = timings {
            let secs = |us: u64| Duration::from_micros(us).as_secs_f64();
            m.queue_time.record(secs(t.queue_time_us), &labels);
            m.prefill_time.record(secs(t.prefill_time_us), &labels);
            m.decode_time.record(secs(t.decode_time_us), &labels);
            let inference = t.prefill_time_us + t.decode_time_us;
            m.inference_time.record(secs(inference), &labels);
        }
        let reason = KeyValue::new("finished_reason", finish.as_str());
        let [model, shard] = labels;
        m.request_success.add(1, &[model, shard, reason]);
    }

    fn record_failure(&self, reason: &'static str) {
        let [model, shard] = self.metrics.shard_labels(self.shard);
        let reason = KeyValue::new("reason", reason);
        self.metrics.request_failure.add(1, &[model, shard, reason]);
    }
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        let open = self.seqs.iter().filter(|s| !s.ended).count();
        for _ in 0..open {
            self.record_failure("abort");
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let span = &self.span;
        let completion: u32 = self.seqs.iter().map(|s| s.generated).sum();
        span.record("completion_tokens", completion);
        if let Some(first) = self.seqs.iter().filter_map(|s| s.first).min() {
            span.record("ttft_ms", ms(first - self.arrival));
        }
        span.record("e2e_ms", ms(self.arrival.elapsed()));
        if let Some(t) = self.logged_timings {
            span.record("queue_ms", t.queue_time_us as f64 / 1e3);
            span.record("prefill_ms", t.prefill_time_us as f64 / 1e3);
            span.record("decode_ms", t.decode_time_us as f64 / 1e3);
        }
        tracing::info!(parent: span, aborted = open, "request finished");
    }
}
