//! One shard as the router sees it: readiness, load, and the routes of its sequences.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;
use pagedserve_proto::ShardClient;
use pagedserve_proto::v1::{InfoResponse, Request, StepOutput};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tonic::transport::Channel;

use crate::balance::ShardLoad;
use crate::batching::Outbound;
use crate::client::events::SeqEvent;

/// A sequence's listener plus what it still counts toward the shard's load.
struct Route {
    events: UnboundedSender<SeqEvent>,
    /// Prompt tokens not yet reflected in the shard's KV stats (0 once output arrived).
    pending_prompt: u64,
}

/// Shared state of one shard; its connection task and request handlers both hold it.
pub struct ShardHandle {
    pub index: usize,
    pub url: String,
    ready: AtomicBool,
    info: RwLock<Option<InfoResponse>>,
    /// For unary calls beside the Serve stream (`Info` at each metrics scrape).
    client: RwLock<Option<ShardClient<Channel>>>,
    kv_tokens: AtomicU64,
    block_size: AtomicU64,
    pending_tokens: AtomicU64,
    next_id: AtomicU64,
    routes: DashMap<u64, Route>,
    queue: UnboundedSender<Outbound>,
}

impl ShardHandle {
    /// A new, not-yet-connected shard and the receiving end of its submit queue.
    pub fn new(index: usize, url: String) -> (Arc<Self>, UnboundedReceiver<Outbound>) {
        let (queue, rx) = mpsc::unbounded_channel();
        let handle = Arc::new(Self {
            index,
            url,
            ready: AtomicBool::new(false),
            info: RwLock::new(None),
            client: RwLock::new(None),
            kv_tokens: AtomicU64::new(0),
            block_size: AtomicU64::new(0),
            pending_tokens: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            routes: DashMap::new(),
            queue,
        });
        (handle, rx)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The last `Info` read from the shard.
    pub fn info(&self) -> Option<InfoResponse> {
        self.info.read().ok().and_then(|info| info.clone())
    }

    /// A client of the current connection, once one was made.
    pub fn client(&self) -> Option<ShardClient<Channel>> {
        self.client.read().ok().and_then(|c| c.clone())
    }

    pub(crate) fn set_client(&self, client: ShardClient<Channel>) {
        if let Ok(mut slot) = self.client.write() {
            *slot = Some(client);
        }
    }

    pub fn load(&self) -> ShardLoad {
        ShardLoad {
            ready: self.is_ready(),
            kv_tokens: self.kv_tokens.load(Ordering::Relaxed),
            pending_tokens: self.pending_tokens.load(Ordering::Relaxed),
            sequences: self.routes.len() as u64,
        }
    }

    pub(crate) fn mark_ready(&self, info: InfoResponse) {
        let used = info.total_kv_blocks.saturating_sub(info.free_kv_blocks);
        let block = u64::from(info.block_size);
        self.block_size.store(block, Ordering::Relaxed);
        self.kv_tokens
            .store(u64::from(used) * block, Ordering::Relaxed);
        if let Ok(mut slot) = self.info.write() {
            *slot = Some(info);
        }
        self.ready.store(true, Ordering::Release);
    }

    /// Marks the shard down and fails every sequence in flight on it.
    pub(crate) fn mark_down(&self, reason: &str) {
        self.ready.store(false, Ordering::Release);
        let ids: Vec<u64> = self.routes.iter().map(|r| *r.key()).collect();
        for id in ids {
            self.fail(id, &format!("shard {} failed: {reason}", self.url));
        }
    }

    pub(crate) fn is_live(&self, id: u64) -> bool {
        self.routes.contains_key(&id)
    }

    /// Registers a sequence and queues it for the next Submit.
    pub(crate) fn submit(self: &Arc<Self>, mut request: Request) -> SequenceHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request.id = id;
        let prompt = request.prompt_ids.len() as u64;
        let (events, rx) = mpsc::unbounded_channel();
        self.pending_tokens.fetch_add(prompt, Ordering::Relaxed);
        self.routes.insert(
            id,
            Route {
                events,
                pending_prompt: prompt,
            },
        );
        if self.queue.send(Outbound::Submit(request)).is_err() {
            // The connection task is gone (runtime shutting down): fail at once.
            self.fail(id, "shard queue closed");
        }
        SequenceHandle {
            id,
            shard: self.index,
            events: rx,
            guard: SequenceGuard {
                shard: Arc::clone(self),
                id,
            },
        }
    }

    /// Routes one engine step's outputs to their sequences and records the stats.
    pub(crate) fn dispatch(&self, step: StepOutput) {
        if let Some(stats) = &step.stats {
            let used = stats.total_kv_blocks.saturating_sub(stats.free_kv_blocks);
            let block = self.block_size.load(Ordering::Relaxed);
            self.kv_tokens
                .store(u64::from(used) * block, Ordering::Relaxed);
        }
        for output in step.outputs {
            let id = output.id;
            let event = SeqEvent::from(output);
            if event.is_terminal() {
                if let Some(route) = self.remove_route(id) {
                    let _ = route.events.send(event);
                }
            } else if let Some(mut route) = self.routes.get_mut(&id) {
                let pending = std::mem::take(&mut route.pending_prompt);
                self.pending_tokens.fetch_sub(pending, Ordering::Relaxed);
                let _ = route.events.send(event);
            }
        }
    }

    /// Fails one sequence (e.g. it was queued while the shard went down).
    pub(crate) fn fail(&self, id: u64, reason: &str) {
        if let Some(route) = self.remove_route(id) {
            let _ = route.events.send(SeqEvent::Failed(reason.to_string()));
        }
    }

    /// Removes a route exactly once, settling its load accounting.
    fn remove_route(&self, id: u64) -> Option<Route> {
        let (_, route) = self.routes.remove(&id)?;
        self.pending_tokens
            .fetch_sub(route.pending_prompt, Ordering::Relaxed);
        Some(route)
    }

    /// The client went away: forget the sequence and tell the shard, unless it ended.
    fn cancel(&self, id: u64) {
        if self.remove_route(id).is_some() {
            let _ = self.queue.send(Outbound::Cancel(id));
        }
    }
}

/// Cancels its sequence on the shard when dropped before the sequence finished.
pub struct SequenceGuard {
    shard: Arc<ShardHandle>,
    id: u64,
}

impl Drop for SequenceGuard {
    fn drop(&mut self) {
        self.shard.cancel(self.id);
    }
}

/// A submitted sequence: its events and the guard that cancels it on drop.
pub struct SequenceHandle {
    pub id: u64,
    /// Index of the shard it runs on.
    pub shard: usize,
    pub events: UnboundedReceiver<SeqEvent>,
    pub guard: SequenceGuard,
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagedserve_proto::v1::{FinishReason, SequenceOutput, ShardStats};

    fn ready_shard() -> (Arc<ShardHandle>, UnboundedReceiver<Outbound>) {
        let (shard, rx) = ShardHandle::new(0, "http://test".into());
        shard.mark_ready(InfoResponse {
            block_size: 16,
            total_kv_blocks: 100,
            free_kv_blocks: 100,
            ..Default::default()
        });
        (shard, rx)
    }

    fn output(id: u64, finish: FinishReason) -> SequenceOutput {
        SequenceOutput {
            id,
            token_ids: vec![7],
            finish_reason: finish as i32,
            ..Default::default()
        }
    }

    #[test]
    fn drop_before_finish_sends_cancel_and_settles_load() {
        let (shard, mut queue) = ready_shard();
        let handle = shard.submit(Request {
            prompt_ids: vec![1; 10],
            ..Default::default()
        });
        assert_eq!(shard.load().pending_tokens, 10);
        assert!(matches!(queue.try_recv(), Ok(Outbound::Submit(r)) if r.id == handle.id));
        let id = handle.id;
        drop(handle);
        assert_eq!(queue.try_recv().ok(), Some(Outbound::Cancel(id)));
        assert_eq!(
            shard.load(),
            ShardLoad {
                ready: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn finished_sequence_is_not_cancelled() {
        let (shard, mut queue) = ready_shard();
        let mut handle = shard.submit(Request::default());
        let _ = queue.try_recv();
        shard.dispatch(StepOutput {
            step: 1,
            outputs: vec![output(handle.id, FinishReason::Length)],
            stats: Some(ShardStats {
                free_kv_blocks: 90,
                total_kv_blocks: 100,
                ..Default::default()
            }),
        });
        assert!(matches!(handle.events.try_recv(), Ok(SeqEvent::Step(s)) if s.finish.is_some()));
        assert_eq!(shard.load().kv_tokens, 160);
        drop(handle);
        assert!(queue.try_recv().is_err(), "no Cancel after a finish");
    }

    #[test]
    fn first_output_moves_prompt_out_of_pending_and_down_fails_all() {
        let (shard, _queue) = ready_shard();
        let mut a = shard.submit(Request {
            prompt_ids: vec![1; 4],
            ..Default::default()
        });
        let mut b = shard.submit(Request {
            prompt_ids: vec![1; 6],
            ..Default::default()
        });
        shard.dispatch(StepOutput {
            step: 1,
            outputs: vec![output(a.id, FinishReason::Unspecified)],
            stats: None,
        });
        assert_eq!(shard.load().pending_tokens, 6);
        shard.mark_down("stream broke");
        assert!(!shard.is_ready());
        assert!(matches!(a.events.try_recv(), Ok(SeqEvent::Step(_))));
        assert!(matches!(a.events.try_recv(), Ok(SeqEvent::Failed(_))));
        assert!(
            matches!(b.events.try_recv(), Ok(SeqEvent::Failed(m)) if m.contains("stream broke"))
        );
        assert_eq!(shard.load().pending_tokens, 0);
        assert_eq!(shard.load().sequences, 0);
    }
}
