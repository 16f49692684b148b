//! Overlapped steps on the device ([`crate::model::CausalLm::launch`]): a launched step's
//! draws are copied into one of two page-locked buffers behind its kernels, and an event says
//! when they are there, so the host waits for step n's tokens only after it has queued step
//! n+1. Step n+1 reads step n's draws on the device (`feed_tokens`), from the sampled-token
//! buffer, before its own sampling overwrites it.

use std::collections::VecDeque;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, PinnedHostSlice};

use super::device::cuda_err;
use crate::backend::{BackendError, BackendResult};

/// At most this many launched steps wait to be collected (the engine collects step n right
/// after launching step n+1).
const DEPTH: usize = 2;

struct Slot {
    host: PinnedHostSlice<u32>,
    /// Recorded after the copy of the draws into `host`.
    drawn: CudaEvent,
}

pub struct Launches {
    slots: Vec<Slot>,
    /// Launched steps not yet collected, oldest first: their slot and number of draws.
    in_flight: VecDeque<(usize, usize)>,
    next: usize,
    /// Draws of the step launched last, which `bufs.sampled` still holds until the next
    /// step samples: what the next launch may feed from. 0 after a synchronous step.
    pub last_draws: usize,
}

impl Launches {
    /// Page-locked buffers of `s_max` draws each.
    pub fn new(ctx: &Arc<CudaContext>, s_max: usize) -> BackendResult<Self> {
        let slots = (0..DEPTH)
            .map(|_| {
                let alloc = |e| BackendError::Alloc(format!("page-locked draws: {e}"));
                // SAFETY: a slot is read only after a copy into it completed (`drawn`).
                let host = unsafe { ctx.alloc_pinned_with_flags::<u32>(s_max.max(1), 0) }
                    .map_err(alloc)?;
                let drawn = ctx.new_event(None).map_err(cuda_err("create an event"))?;
                Ok(Slot { host, drawn })
            })
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
        let slot = &mut self.slots[idx];
        let host = slot
            .host
            .as_mut_slice()
            .map_err(cuda_err("page-locked draws"))?;
        let (Some(dst), Some(src)) = (host.get_mut(..n), sampled.try_slice(..n)) else {
            return Err(BackendError::Shape {
                op: "launch",
                detail: format!("{n} draws > the draw buffers'"),
            });
        };
        if n > 0 {
            // A plain slice: the driver knows the memory is page-locked and queues a DMA;
            // `drawn` says when it is done.
            stream
                .memcpy_dtoh(&src, dst)
                .map_err(cuda_err("copy draws to the host"))?;
        }
        slot.drawn
            .record(stream)
            .map_err(cuda_err("record the draws' copy"))?;
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
        let slot = &self.slots[idx];
        slot.drawn
            .synchronize()
            .map_err(cuda_err("wait for a launched step"))?;
        let host = slot
            .host
            .as_slice()
            .map_err(cuda_err("page-locked draws"))?;
        Ok(host.get(..n).unwrap_or(host).to_vec())
    }
}

impl Drop for Launches {
    /// The buffers are freed only after the copies into them.
    fn drop(&mut self) {
        for slot in &self.slots {
            let _ = slot.drawn.synchronize();
        }
    }
}
