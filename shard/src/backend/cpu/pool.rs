//! A persistent worker pool for the matmuls.
//!
//! Spawning threads per matmul costs tens of microseconds and a decode step runs ~120
//! matmuls, so workers live as long as the backend and take jobs over channels. Work is cut
//! into many small chunks that every thread, the caller included, claims from a shared
//! counter: on a busy 2-core machine a worker may not be scheduled for milliseconds, and
//! with fixed halves the caller would wait for it; here the caller just does the rest, and
//! only ever waits for chunks a worker has already started.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::backend::{BackendError, BackendResult};

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Debug)]
pub struct Pool {
    workers: Vec<mpsc::Sender<Job>>,
}

/// One `run_chunks` call, shared by the threads working on it.
struct Batch<R> {
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    failed: AtomicBool,
    results: Mutex<Vec<Option<R>>>,
    f: Arc<dyn Fn(usize) -> R + Send + Sync>,
}

impl<R> Batch<R> {
    /// Claims and runs chunks until none are left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return;
            }
            match catch_unwind(AssertUnwindSafe(|| (self.f)(i))) {
                Ok(r) => match self.results.lock() {
                    Ok(mut g) => g[i] = Some(r),
                    Err(_) => self.failed.store(true, Ordering::Relaxed),
                },
                Err(_) => self.failed.store(true, Ordering::Relaxed),
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

impl Pool {
    /// One worker per compute thread beyond the calling thread (fewer if spawning fails).
    pub fn new() -> Self {
        let threads = super::compute_threads();
        let workers = (1..threads)
            .map_while(|i| {
                let (tx, rx) = mpsc::channel::<Job>();
                std::thread::Builder::new()
                    .name(format!("cpu-matmul-{i}"))
                    .spawn(move || {
                        while let Some(job) = spin_recv(&rx) {
                            job();
                        }
                    })
                    .ok()
                    .map(|_| tx)
            })
            .collect();
        Self { workers }
    }

    /// Threads that may work on a call (workers plus the caller).
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(i)` for every chunk `i` in `0..n` over the pool and the calling thread;
    /// results in chunk order.
    pub fn run_chunks<R: Send + 'static>(
        &self,
        n: usize,
        f: Arc<dyn Fn(usize) -> R + Send + Sync>,
    ) -> BackendResult<Vec<R>> {
        let batch = Arc::new(Batch {
            n,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            results: Mutex::new((0..n).map(|_| None).collect()),
            f,
        });
        if n > 1 {
            for worker in &self.workers {
                let b = Arc::clone(&batch);
                // A dead worker only means the caller does its chunks.
                let _ = worker.send(Box::new(move || b.work()));
            }
        }
        batch.work();
        wait_until(|| batch.done.load(Ordering::Acquire) >= n);
        if batch.failed.load(Ordering::Relaxed) {
            return Err(BackendError::Alloc("a CPU matmul chunk panicked".into()));
        }
        let results = std::mem::take(&mut *batch.results.lock().map_err(|_| lost())?);
        results.into_iter().map(|r| r.ok_or_else(lost)).collect()
    }
}

impl Pool {
    /// [`Pool::run_chunks`] for a closure that borrows from the caller's stack.
    pub fn run_scoped(&self, n: usize, f: &(dyn Fn(usize) + Sync)) -> BackendResult<()> {
        // SAFETY: only the lifetime is erased. `run_chunks` returns only after every chunk
        // index below `n` has run to completion, and a worker that claims an index `>= n`
        // never calls `f`, so no call of `f` outlives the borrow; a worker may drop its `Arc`
        // of the wrapper later, which drops only a reference.
        let f: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        self.run_chunks(n, Arc::new(f))?;
        Ok(())
    }
}

/// How long an idle worker polls before it sleeps. The matmuls of one step come a few
/// microseconds apart, far less than a futex sleep/wake round trip, which profiling showed
/// taking ~15% of a decode step; after a step the workers sleep again within this window.
const SPIN: Duration = Duration::from_micros(200);

/// `rx.recv()`, polling for up to [`SPIN`] first. Polls yield the core, so on a busy machine
/// the poller does not take time from the thread that will send it work. `None` once the
/// sender is gone.
fn spin_recv<T>(rx: &mpsc::Receiver<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(v) => return Some(v),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if start.elapsed() > SPIN => return rx.recv().ok(),
            Err(mpsc::TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
}

/// Waits for chunks other threads already claimed: spins, then yields so a descheduled
/// worker sharing this core can finish.
fn wait_until(ready: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !ready() {
        if spins < 1 << 12 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
}

fn lost() -> BackendError {
    BackendError::Alloc("a CPU matmul result went missing".into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // unwrap is the assertion in tests
mod tests {
    use super::*;

    #[test]
    fn runs_every_chunk_once_in_order() {
        let pool = Pool::new();
        for n in [0, 1, 2, 37] {
            let out = pool.run_chunks(n, Arc::new(|i| i * 10)).unwrap();
            assert_eq!(out, (0..n).map(|i| i * 10).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_panicking_chunk_is_an_error_not_a_hang() {
        let pool = Pool::new();
        let out = pool.run_chunks(8, Arc::new(|i| if i == 5 { panic!("chunk 5") } else { i }));
        assert!(out.is_err());
        // The pool still works afterwards.
        assert_eq!(pool.run_chunks(3, Arc::new(|i| i)).unwrap(), vec![0, 1, 2]);
    }
}
