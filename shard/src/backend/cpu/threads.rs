//! How many threads the CPU backend computes with.
//!
//! One number per process, set once from `--threads` before the model loads: N shards on one
//! machine each get cores / N (the launcher does that split), so they never oversubscribe the
//! cores and spin against each other.

use std::sync::OnceLock;

static THREADS: OnceLock<usize> = OnceLock::new();

/// Fixes the compute thread count for this process. Returns false (and changes nothing) when it
/// was already fixed, e.g. by an earlier call or because the backend already started.
pub fn set_compute_threads(threads: usize) -> bool {
    THREADS.set(threads.max(1)).is_ok()
}

/// The compute thread count: the value set by [`set_compute_threads`], else every core.
pub fn compute_threads() -> usize {
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
