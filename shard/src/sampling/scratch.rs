//! Vocabulary-sized scratch buffers, one set per thread rather than per request: a running
//! batch of hundreds of sequences would otherwise hold hundreds of V-sized buffers
//! (~0.5 MB each for a 128k vocabulary) that are only ever used one at a time.

use std::cell::Cell;

use super::select::Cand;

#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// Penalized, scaled logits.
    pub(crate) work: Vec<f32>,
    /// Candidate tokens after top-k / top-p / min-p, or the top logprobs.
    pub(crate) cands: Vec<Cand>,
}

thread_local! {
    static SCRATCH: Cell<Option<Scratch>> = const { Cell::new(None) };
}

/// Runs `f` with this thread's scratch buffers, moved out of the thread-local and back, so a
/// re-entrant call or one during thread teardown just gets fresh buffers and nothing panics.
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    let mut scratch = SCRATCH
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_default();
    let result = f(&mut scratch);
    let _ = SCRATCH.try_with(|cell| cell.set(Some(scratch)));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_reentry_gets_fresh_ones() {
        with_scratch(|s| s.work = vec![1.0; 100]);
        let capacity = with_scratch(|s| {
            let inner = with_scratch(|inner| inner.work.capacity());
            (s.work.capacity(), inner)
        });
        assert_eq!(capacity, (100, 0));
        let other_thread = std::thread::spawn(|| with_scratch(|s| s.work.capacity())).join();
        assert_eq!(other_thread.ok(), Some(0));
    }
}
