//! Admission: a bound on requests that are admitted but not yet generating.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::ApiError;

/// Counts waiting requests; beyond `max` new ones get 429 with Retry-After.
#[derive(Debug)]
pub struct WaitingGate {
    waiting: AtomicUsize,
    max: usize,
}

/// One waiting request; dropping it (first token, finish or disconnect) frees the slot.
#[derive(Debug)]
pub struct WaitingPermit {
    gate: Arc<WaitingGate>,
}

impl WaitingGate {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            waiting: AtomicUsize::new(0),
            max,
        })
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub fn try_acquire(self: &Arc<Self>) -> Result<WaitingPermit, ApiError> {
        let admitted = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        match admitted {
            Ok(_) => Ok(WaitingPermit {
                gate: Arc::clone(self),
            }),
            Err(_) => Err(ApiError::Overloaded {
                message: format!(
                    "The server is overloaded: {} requests are already waiting. Please retry.",
                    self.max
                ),
                retry_after_s: 1,
            }),
        }
    }
}

impl Drop for WaitingPermit {
    fn drop(&mut self) {
        self.gate.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_and_release() {
        let gate = WaitingGate::new(2);
        let a = gate.try_acquire();
        let b = gate.try_acquire();
        assert!(a.is_ok() && b.is_ok());
        let c = gate.try_acquire();
        assert!(matches!(c, Err(ApiError::Overloaded { .. })));
        drop(a);
        assert_eq!(gate.waiting(), 1);
        assert!(gate.try_acquire().is_ok());
        assert_eq!(gate.waiting(), 1, "the permit above was dropped at once");
    }
}
