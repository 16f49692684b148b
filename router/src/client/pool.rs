//! All shards of this router: readiness, shared limits, and balanced submission.

use std::sync::Arc;
use std::time::Duration;

use pagedserve_proto::v1::{InfoResponse, Request};

use crate::balance;
use crate::client::connection;
use crate::client::shard::{SequenceHandle, ShardHandle};
use crate::error::ApiError;
use crate::metrics::Metrics;

pub struct ShardPool {
    shards: Vec<Arc<ShardHandle>>,
}

impl ShardPool {
    /// Creates the pool and spawns one connection task per shard URL.
    pub fn start(urls: &[String], metrics: Arc<Metrics>) -> Arc<Self> {
        let shards = urls
            .iter()
            .enumerate()
            .map(|(index, url)| {
                let (shard, queue) = ShardHandle::new(index, url.clone());
                let metrics = Arc::clone(&metrics);
                tokio::spawn(connection::run(Arc::clone(&shard), queue, metrics));
                shard
            })
            .collect();
        Arc::new(Self { shards })
    }

    pub fn shards(&self) -> &[Arc<ShardHandle>] {
        &self.shards
    }

    pub fn any_ready(&self) -> bool {
        self.shards.iter().any(|s| s.is_ready())
    }

    /// Waits until some shard is ready; false on timeout.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.any_ready() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// The `Info` of every ready shard that has sent one.
    fn ready_infos(&self) -> impl Iterator<Item = InfoResponse> + '_ {
        self.shards
            .iter()
            .filter(|s| s.is_ready())
            .filter_map(|s| s.info())
    }

    /// The context limit every ready shard honours (the smallest), if any is ready.
    pub fn max_context(&self) -> Option<u32> {
        self.ready_infos().map(|info| info.max_context).min()
    }

    /// The token ids every ready shard's model takes (the smallest `vocab_size`), if any
    /// ready shard reports one (0 is proto3's "unset").
    pub fn vocab_size(&self) -> Option<u32> {
        self.ready_infos()
            .map(|info| info.vocab_size)
            .filter(|size| *size > 0)
            .min()
    }

    /// Submits the sequences of one request to the least-loaded ready shard, together,
    /// so they share one Submit and (later) the shard's prefix cache.
    pub fn submit_group(&self, requests: Vec<Request>) -> Result<Vec<SequenceHandle>, ApiError> {
        let loads: Vec<_> = self.shards.iter().map(|s| s.load()).collect();
        let shard = balance::pick(&loads)
            .and_then(|index| self.shards.get(index))
            .ok_or_else(|| ApiError::Unavailable("No shard is ready to serve requests.".into()))?;
        Ok(requests.into_iter().map(|r| shard.submit(r)).collect())
    }
}
