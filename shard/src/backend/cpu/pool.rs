//! A persistent worker pool for the matmuls. Spawning threads per matmul costs tens of
//! microseconds, and a decode step runs ~120 matmuls, so the workers live as long as the
//! backend and take jobs over channels. The calling thread does one share itself.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::backend::{BackendError, BackendResult};

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Debug)]
pub struct Pool {
    workers: Vec<mpsc::Sender<Job>>,
}

impl Pool {
    /// One worker per core beyond the calling thread's (fewer if spawning fails).
    pub fn new() -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
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

    /// Number of shares `run` splits work into.
    pub fn parts(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(part)` for every part in `0..parts()`, part 0 on the calling thread; results in
    /// part order.
    pub fn run<R: Send + 'static>(
        &self,
        f: Arc<dyn Fn(usize) -> R + Send + Sync>,
    ) -> BackendResult<Vec<R>> {
        let (tx, rx) = mpsc::channel();
        for (i, worker) in self.workers.iter().enumerate() {
            let (f, tx) = (f.clone(), tx.clone());
            let job: Job = Box::new(move || {
                // The receiver only goes away if the caller already failed.
                let _ = tx.send((i + 1, f(i + 1)));
            });
            worker.send(job).map_err(|_| lost())?;
        }
        drop(tx);
        let mut out: Vec<Option<R>> = (0..self.parts()).map(|_| None).collect();
        out[0] = Some(f(0));
        for _ in 0..self.workers.len() {
            let (i, r) = spin_recv(&rx).ok_or_else(lost)?;
            out[i] = Some(r);
        }
        out.into_iter().map(|r| r.ok_or_else(lost)).collect()
    }
}

/// How long a waiting thread polls before it sleeps. The matmuls of one step come a few
/// microseconds apart, far less than a futex sleep/wake round trip, which profiling showed
/// taking ~15% of a decode step; after a step the threads sleep again within this window.
const SPIN: Duration = Duration::from_micros(200);

/// `rx.recv()`, polling for up to [`SPIN`] first. `None` once the sender is gone.
fn spin_recv<T>(rx: &mpsc::Receiver<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(v) => return Some(v),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if start.elapsed() > SPIN => return rx.recv().ok(),
            Err(mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
        }
    }
}

fn lost() -> BackendError {
    BackendError::Alloc("a CPU worker thread died".into())
}

/// The `part`-th of `parts` near-equal slices of `0..n`.
pub fn share(n: usize, parts: usize, part: usize) -> std::ops::Range<usize> {
    let per = n.div_ceil(parts.max(1));
    (part * per).min(n)..((part + 1) * per).min(n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // unwrap is the assertion in tests
mod tests {
    use super::*;

    #[test]
    fn runs_every_part_once_in_order() {
        let pool = Pool::new();
        let out = pool.run(Arc::new(|p| p * 10)).unwrap();
        assert_eq!(out, (0..pool.parts()).map(|p| p * 10).collect::<Vec<_>>());
    }

    #[test]
    fn shares_cover_the_range() {
        for (n, parts) in [(10, 3), (2, 4), (0, 2), (1536, 2)] {
            let all: Vec<usize> = (0..parts).flat_map(|p| share(n, parts, p)).collect();
            assert_eq!(all, (0..n).collect::<Vec<_>>());
        }
    }
}
