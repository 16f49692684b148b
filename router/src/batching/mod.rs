//! Per-shard submit queue: everything that arrived in the same tick goes to the shard
//! as ONE `Submit` (and at most one `Cancel`), plus admission of waiting requests.

pub mod admission;

use pagedserve_proto::v1::{Cancel, Request, ShardInput, Submit, shard_input};
use tokio::sync::mpsc::UnboundedReceiver;

pub use admission::{WaitingGate, WaitingPermit};

/// What request handlers hand to a shard's connection task.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    Submit(Request),
    Cancel(u64),
}

/// Drains `first` and everything already queued behind it into at most one `Submit`
/// followed by at most one `Cancel`. `is_live(id)` says whether a request still has a
/// listener: a request cancelled before it was sent is dropped instead of submitted,
/// and its cancel is dropped with it (the shard never heard of it).
pub fn drain_tick(
    first: Outbound,
    queue: &mut UnboundedReceiver<Outbound>,
    is_live: impl Fn(u64) -> bool,
) -> Vec<ShardInput> {
    let mut submits = Vec::new();
    let mut cancels = Vec::new();
    let mut next = Some(first);
    while let Some(item) = next {
        match item {
            Outbound::Submit(request) => submits.push(request),
            Outbound::Cancel(id) => cancels.push(id),
        }
        next = queue.try_recv().ok();
    }
    let mut dropped = Vec::new();
    submits.retain(|r| {
        let live = is_live(r.id);
        if !live {
            dropped.push(r.id);
        }
        live
    });
    cancels.retain(|id| !dropped.contains(id));
    let mut messages = Vec::with_capacity(2);
    if !submits.is_empty() {
        messages.push(ShardInput {
            kind: Some(shard_input::Kind::Submit(Submit { requests: submits })),
        });
    }
    if !cancels.is_empty() {
        messages.push(ShardInput {
            kind: Some(shard_input::Kind::Cancel(Cancel { ids: cancels })),
        });
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn request(id: u64) -> Request {
        Request {
            id,
            prompt_ids: vec![1, 2, 3],
            ..Default::default()
        }
    }

    fn submitted_ids(message: &ShardInput) -> Vec<u64> {
        match &message.kind {
            Some(shard_input::Kind::Submit(s)) => s.requests.iter().map(|r| r.id).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn same_tick_requests_become_one_submit() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for id in 2..=4 {
            tx.send(Outbound::Submit(request(id))).expect("queue open");
        }
        tx.send(Outbound::Cancel(9)).expect("queue open");
        let messages = drain_tick(Outbound::Submit(request(1)), &mut rx, |_| true);
        assert_eq!(messages.len(), 2);
        assert_eq!(submitted_ids(&messages[0]), vec![1, 2, 3, 4]);
        assert!(matches!(
            &messages[1].kind,
            Some(shard_input::Kind::Cancel(c)) if c.ids == vec![9]
        ));
        assert!(rx.try_recv().is_err(), "queue fully drained");
    }

    #[test]
    fn cancelled_before_send_is_never_submitted() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(Outbound::Submit(request(2))).expect("queue open");
        tx.send(Outbound::Cancel(1)).expect("queue open");
        let messages = drain_tick(Outbound::Submit(request(1)), &mut rx, |id| id != 1);
        assert_eq!(
            messages.len(),
            1,
            "no Cancel for a request the shard never saw"
        );
        assert_eq!(submitted_ids(&messages[0]), vec![2]);
    }

    #[test]
    fn lone_cancel_is_sent() {
        let (_tx, mut rx) = mpsc::unbounded_channel();
        let messages = drain_tick(Outbound::Cancel(5), &mut rx, |_| true);
        assert_eq!(messages.len(), 1);
        assert!(submitted_ids(&messages[0]).is_empty());
    }
}
