//! Overlapped steps on the device ([`crate::model::CausalLm::launch`]): a launched step's
//! draws are copied into one of two page-locked buffers behind its kernels, and an event says
//! when they are there, so the host waits for step n's tokens only after it has queued step
//! n+1. Step n+1 reads step n's draws on the device (`feed_tokens`), from the sampled-token
//! buffer, before its own sampling overwrites it.

use std::collections::VecDeque;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};

use super::pinned::Pinned;
use crate::backend::{BackendError, BackendResult};

/// At most this many launched steps wait to be collected (the engine collects step n right
/// after launching step n+1).
const DEPTH: usize = 2;

pub struct Launches {
    /// One page-locked buffer of draws per step in flight.
    slots: Vec<Pinned>,
    /// Launched steps not yet collected, oldest first: their slot and number of draws.
    in_flight: VecDeque<(usize, usize)>,
    next: usize,
    /// Draws of the step launched last, which `bufs.sampled` still holds until the next
    /// step samples: what the next launch may feed from. 0 once any other step has run.
    pub last_draws: usize,
}

impl Launches {
    /// Page-locked buffers of `s_max` draws each.
    pub fn new(ctx: &Arc<CudaContext>, s_max: usize) -> BackendResult<Self> {
        let slots = (0..DEPTH)
            .map(|_| Pinned::zeroed(ctx, s_max, "draws"))
            .collect::<BackendResult<Vec<_>>>()?;
        Ok(Self {
            slots,
            in_flight: VecDeque::new(),
            next: 0,
            last_draws: 0,
        })
    }

    pub fn is_full(&self) -> bool {
        self.in_flight.len() >= DEPTH
    }

    /// After a launched step's kernels: queues the copy of its `n` draws out of `sampled`.
    pub fn queue(
        &mut self,
        stream: &Arc<CudaStream>,
        sampled: &CudaSlice<u32>,
        n: usize,
    ) -> BackendResult<()> {
        if self.is_full() {
            return Err(BackendError::Shape {
                op: "launch",
                detail: format!("{DEPTH} steps already in flight"),
            });
        }
        let idx = self.next;
        self.slots[idx].download(stream, sampled, n)?;
        self.in_flight.push_back((idx, n));
        self.next = (idx + 1) % DEPTH;
        self.last_draws = n;
        Ok(())
    }

    /// Waits for the oldest launched step and returns its draws.
    pub fn collect(&mut self) -> BackendResult<Vec<u32>> {
        let (idx, n) = self.in_flight.pop_front().ok_or(BackendError::Shape {
            op: "collect",
            detail: "no launched step to collect".into(),
        })?;
        Ok(self.slots[idx].downloaded(n)?.to_vec())
    }
}
