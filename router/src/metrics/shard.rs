//! Engine state per shard, from the Serve stream's per-step stats and from `Info`.

use std::time::Duration;

use opentelemetry::KeyValue;
use pagedserve_proto::v1::{InfoResponse, ShardStats};

use crate::metrics::Metrics;

/// Fraction of blocks in use; 0 for an empty cache.
pub fn kv_usage(free: u32, total: u32) -> f64 {
    if total == 0 {
        return 0.0;
    }
    f64::from(total.saturating_sub(free)) / f64::from(total)
}

impl Metrics {
    /// One engine step's stats (sent with every `StepOutput`).
    pub fn record_step(&self, shard: usize, stats: &ShardStats) {
        let labels = self.shard_labels(shard);
        self.record_occupancy(&labels, stats.running, stats.waiting);
        self.record_kv(&labels, stats.free_kv_blocks, stats.total_kv_blocks);
        self.preempted_waiting
            .record(u64::from(stats.preempted_waiting), &labels);
        let tokens = u64::from(stats.step_prefill_tokens) + u64::from(stats.step_decode_tokens);
        if tokens > 0 {
            self.iteration_tokens.record(tokens, &labels);
            let step = Duration::from_micros(stats.step_time_us).as_secs_f64();
            self.step_seconds.record(step, &labels);
        }
        let added = self.totals_since_last(shard, Totals::of(stats));
        for (counter, added) in [
            (&self.preemptions, added.preemptions),
            (&self.prefix_cache_queries, added.prefix_cache_queries),
            (&self.prefix_cache_hits, added.prefix_cache_hits),
        ] {
            if added > 0 {
                counter.add(added, &labels);
            }
        }
    }

    /// Occupancy read with `Info` (at connect and at every scrape).
    pub fn record_info(&self, shard: usize, info: &InfoResponse) {
        let labels = self.shard_labels(shard);
        self.record_occupancy(&labels, info.running, info.waiting);
        self.record_kv(&labels, info.free_kv_blocks, info.total_kv_blocks);
    }

    /// Before the first connection: the shard is down and its counters exist at 0, so
    /// dashboards and `rate()`/`increase()` see them from the start. (A series that first
    /// appears at its end value shows no increase: a load that fits between two scrapes would
    /// read as no traffic.)
    pub fn register_shard(&self, shard: usize) {
        let labels = self.shard_labels(shard);
        self.shard_up.record(0, &labels);
        self.shard_restarts.add(0, &labels);
        self.preemptions.add(0, &labels);
        self.prefix_cache_queries.add(0, &labels);
        self.prefix_cache_hits.add(0, &labels);
        self.prompt_tokens.add(0, &labels);
        self.generation_tokens.add(0, &labels);
    }

    pub fn record_shard_up(&self, shard: usize, up: bool) {
        self.shard_up
            .record(u64::from(up), &self.shard_labels(shard));
    }

    /// The shard is serving again after its connection was lost.
    pub fn record_shard_restart(&self, shard: usize) {
        self.shard_restarts.add(1, &self.shard_labels(shard));
    }

    /// Latency of one unary gRPC call (`rpc`: "Health", "Info").
    pub fn record_rpc(&self, shard: usize, rpc: &'static str, elapsed: Duration) {
        let [model, shard] = self.shard_labels(shard);
        let labels = [model, shard, KeyValue::new("rpc", rpc)];
        self.rpc_seconds.record(elapsed.as_secs_f64(), &labels);
    }

    fn record_occupancy(&self, labels: &[KeyValue], running: u32, waiting: u32) {
        self.running.record(u64::from(running), labels);
        self.waiting.record(u64::from(waiting), labels);
    }

    fn record_kv(&self, labels: &[KeyValue], free: u32, total: u32) {
        self.kv_usage.record(kv_usage(free, total), labels);
        self.kv_free_blocks.record(u64::from(free), labels);
        self.kv_total_blocks.record(u64::from(total), labels);
    }

    /// The shard reports cumulative counts; any smaller than last time means it restarted
    /// from 0, and then every count is new (one decision for all of them, so hits never
    /// outrun queries).
    fn totals_since_last(&self, shard: usize, totals: Totals) -> Totals {
        let Ok(mut seen) = self.totals_seen.lock() else {
            return Totals::default();
        };
        if seen.len() <= shard {
            seen.resize(shard + 1, Totals::default());
        }
        let last = std::mem::replace(&mut seen[shard], totals);
        let restarted = totals.preemptions < last.preemptions
            || totals.prefix_cache_queries < last.prefix_cache_queries
            || totals.prefix_cache_hits < last.prefix_cache_hits;
        match restarted {
            true => totals,
            false => Totals {
                preemptions: totals.preemptions - last.preemptions,
                prefix_cache_queries: totals.prefix_cache_queries - last.prefix_cache_queries,
                prefix_cache_hits: totals.prefix_cache_hits - last.prefix_cache_hits,
            },
        }
    }
}

/// A shard's cumulative counters, as its last `ShardStats` gave them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    preemptions: u64,
    prefix_cache_queries: u64,
    prefix_cache_hits: u64,
}

impl Totals {
    fn of(stats: &ShardStats) -> Self {
        Self {
            preemptions: stats.preemptions_total,
            prefix_cache_queries: stats.prefix_cache_queries_total,
            prefix_cache_hits: stats.prefix_cache_hits_total,
        }
    }
}
