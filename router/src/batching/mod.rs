//! Per-shard submit queue: everything that arrived in the same tick goes to the shard
//! as ONE `Submit` (and at most one `Cancel`), plus admission of waiting requests.

pub mod admission;

use std::collections::HashSet;

use pagedserve_proto::v1::{Cancel, Request, ShardInput, Submit, shard_input};
use tokio::sync::mpsc::UnboundedReceiver;

pub use admission::{WaitingGate, WaitingPermit};

/// What request handlers hand to a shard's connection task.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    Submit(Request),
    Cancel(u64),
}

/// Most request bytes put in one `Submit`. The shard refuses any message over 64 MiB (its
/// `MAX_MESSAGE_BYTES`), and a refused message ends the whole Serve stream, failing every
/// sequence on the shard; so a tick whose submits add up to more (many prompts, a large
/// `n`, several big requests at once) is split well below that.
pub const MAX_SUBMIT_BYTES: usize = 16 << 20;

/// An upper bound on `request`'s protobuf size inside a `Submit`: at most 5 bytes per
/// `uint32` id, and 128 for the id, the sampling and stopping scalars and the framing.
pub fn encoded_len_bound(request: &Request) -> usize {
    let stop_ids = request
        .stopping
        .as_ref()
        .map_or(0, |s| s.stop_token_ids.len());
    128 + 5 * (request.prompt_ids.len() + stop_ids)
}

/// Splits `requests` (in order) into Submits of at most [`MAX_SUBMIT_BYTES`] each; a single
/// request is never split (one prompt is bounded by the context).
fn submit_messages(requests: Vec<Request>) -> Vec<ShardInput> {
    let mut batches: Vec<Vec<Request>> = Vec::new();
    let mut bytes = 0;
    for request in requests {
        let len = encoded_len_bound(&request);
        match batches.last_mut() {
            Some(batch) if bytes + len <= MAX_SUBMIT_BYTES => batch.push(request),
            _ => {
                bytes = 0;
                batches.push(vec![request]);
            }
        }
        bytes += len;
    }
    batches
        .into_iter()
        .map(|requests| ShardInput {
            kind: Some(shard_input::Kind::Submit(Submit { requests })),
        })
        .collect()
}

/// Drains `first` and everything already queued behind it into one `Submit` (more only when
/// it would pass [`MAX_SUBMIT_BYTES`]) followed by at most one `Cancel`. `is_live(id)` says
/// whether a request still has a listener: a request cancelled before it was sent is dropped
/// instead of submitted, and its cancel is dropped with it (the shard never heard of it).
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
    // A set: a tick can hold many thousands of both (a big request whose client left at
    // once), and a scan per cancel made that tick quadratic.
    let mut dropped = HashSet::new();
    submits.retain(|r| {
        let live = is_live(r.id);
        if !live {
            dropped.insert(r.id);
        }
        live
    });
    cancels.retain(|id| !dropped.contains(id));
    let mut messages = submit_messages(submits);
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
    fn a_tick_over_the_message_limit_is_split_in_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        // 5 requests of 7.5 MB (ids of 5 bytes each): 37.5 MB in one Submit, and a few
        // such requests in a tick pass the shard's 64 MiB; split, each message stays
        // under 16 MiB.
        let big = |id| Request {
            id,
            prompt_ids: vec![u32::MAX; 1_500_000],
            ..Default::default()
        };
        for id in 2..=5 {
            tx.send(Outbound::Submit(big(id))).expect("queue open");
        }
        tx.send(Outbound::Cancel(9)).expect("queue open");
        let messages = drain_tick(Outbound::Submit(big(1)), &mut rx, |_| true);
        let submits: Vec<Vec<u64>> = messages
            .iter()
            .map(submitted_ids)
            .filter(|ids| !ids.is_empty())
            .collect();
        assert_eq!(submits, vec![vec![1, 2], vec![3, 4], vec![5]]);
        for message in &messages {
            if let Some(shard_input::Kind::Submit(s)) = &message.kind {
                let bytes: usize = s.requests.iter().map(encoded_len_bound).sum();
                assert!(bytes <= MAX_SUBMIT_BYTES, "{bytes}");
            }
        }
        assert!(matches!(
            &messages.last().and_then(|m| m.kind.clone()),
            Some(shard_input::Kind::Cancel(c)) if c.ids == vec![9]
        ));
    }

    #[test]
    fn many_dropped_submits_and_cancels_drain_together() {
        // 100k sequences submitted and cancelled in one tick (a large request whose client
        // left at once). Scanning the dropped ids per cancel took 10^10 steps (26 s in a
        // debug build); with a set it is milliseconds. No time bound here (speed is for
        // benchmarks): a quadratic scan back would show as this test taking half a minute.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let count = 100_000;
        for id in 2..=count {
            tx.send(Outbound::Submit(request(id))).expect("queue open");
        }
        for id in 1..=count + 1 {
            tx.send(Outbound::Cancel(id)).expect("queue open");
        }
        let messages = drain_tick(Outbound::Submit(request(1)), &mut rx, |_| false);
        // Only the cancel of the id that was never submitted here is sent.
        assert_eq!(messages.len(), 1);
        assert!(matches!(
            &messages[0].kind,
            Some(shard_input::Kind::Cancel(c)) if c.ids == vec![count + 1]
        ));
    }

    #[test]
    fn lone_cancel_is_sent() {
        let (_tx, mut rx) = mpsc::unbounded_channel();
        let messages = drain_tick(Outbound::Cancel(5), &mut rx, |_| true);
        assert_eq!(messages.len(), 1);
        assert!(submitted_ids(&messages[0]).is_empty());
    }
}
