//! The rendezvous and step channel of a tensor-parallel group: rank 0 listens on `--tp-addr`,
//! ranks 1.. connect (retrying while the leader starts), say who they are, and receive the
//! NCCL unique id; afterwards the leader sends one frame per step to every follower.
//!
//! A follower that disconnects while the leader runs ends the leader process with an error:
//! the leader's next all-reduce would wait for it forever, so the group must fail loudly
//! instead (the launcher then stops the rest).

use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::wire::{Frame, LinkError, NCCL_ID_BYTES, StepFrame, io_err, read_frame, write_frame};

/// How long a hello may take once a follower has connected.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// The leader's end: one stream per follower, in rank order (rank 1 first).
pub struct LeaderLink {
    followers: Vec<TcpStream>,
    closing: Arc<AtomicBool>,
}

impl LeaderLink {
    /// Listens on `addr` until ranks `1..size` have all said hello (or `timeout`), then sends
    /// each the NCCL id.
    pub fn accept(
        addr: &str,
        size: usize,
        nccl_id: &[u8; NCCL_ID_BYTES],
        timeout: Duration,
    ) -> Result<Self, LinkError> {
        let listener = TcpListener::bind(addr).map_err(io_err("listen on --tp-addr"))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("configure listener"))?;
        let deadline = Instant::now() + timeout;
        let mut slots: Vec<Option<TcpStream>> = (1..size).map(|_| None).collect();
        while slots.iter().any(Option::is_none) {
            let (mut stream, peer) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        let missing: Vec<usize> =
                            (1..size).filter(|r| slots[r - 1].is_none()).collect();
                        return Err(LinkError::Protocol(format!(
                            "ranks {missing:?} did not join {addr} within {timeout:?}"
                        )));
                    }
                    std::thread::sleep(POLL);
                    continue;
                }
                Err(e) => return Err(io_err("accept a follower")(e)),
            };
            configure(&stream, Some(HELLO_TIMEOUT))?;
            let rank = match read_frame(&mut stream)? {
                Some(Frame::Hello { rank, size: s }) if s as usize == size => rank as usize,
                other => {
                    return Err(LinkError::Protocol(format!(
                        "{peer} sent {other:?} instead of a hello for a group of {size}"
                    )));
                }
            };
            match slots.get_mut(rank.wrapping_sub(1)) {
                Some(slot @ None) => *slot = Some(stream),
                _ => {
                    return Err(LinkError::Protocol(format!(
                        "{peer} claims rank {rank}, taken or outside 1..{size}"
                    )));
                }
            }
            tracing::info!(rank, %peer, "tensor-parallel follower joined");
        }
        let mut followers: Vec<TcpStream> = slots.into_iter().flatten().collect();
        for f in &mut followers {
            write_frame(f, &Frame::Init { nccl_id: *nccl_id })?;
            f.set_read_timeout(None)
                .map_err(io_err("configure stream"))?;
        }
        let link = Self {
            followers,
            closing: Arc::new(AtomicBool::new(false)),
        };
        link.watch()?;
        Ok(link)
    }

    /// Sends `step` to every follower.
    pub fn send(&mut self, step: StepFrame) -> Result<(), LinkError> {
        let frame = Frame::Step(step);
        for f in &mut self.followers {
            write_frame(f, &frame)?;
        }
        Ok(())
    }

    /// One thread per follower waits for its stream to close (followers never write after
    /// their hello) and then ends the process, unless the leader is closing the link itself.
    fn watch(&self) -> Result<(), LinkError> {
        for (i, f) in self.followers.iter().enumerate() {
            let mut stream = f.try_clone().map_err(io_err("clone stream"))?;
            let closing = self.closing.clone();
            let rank = i + 1;
            std::thread::Builder::new()
                .name(format!("tp-watch-{rank}"))
                .spawn(move || {
                    let mut byte = [0u8; 1];
                    let got = std::io::Read::read(&mut stream, &mut byte);
                    if !closing.load(Ordering::SeqCst) {
                        tracing::error!(
                            rank,
                            ?got,
                            "tensor-parallel follower disconnected; the group cannot run \
                             without it: exiting"
                        );
                        std::process::exit(1);
                    }
                })
                .map_err(io_err("spawn watcher"))?;
        }
        Ok(())
    }
}

impl Drop for LeaderLink {
    /// Closing the streams tells the followers to exit cleanly.
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        for f in &self.followers {
            let _ = f.shutdown(Shutdown::Both);
        }
    }
}

/// A follower's end: connects to the leader at `addr` (retrying until `timeout`: the leader
/// may still be starting), says hello, and returns the stream and the NCCL id.
pub fn join(
    addr: &str,
    rank: usize,
    size: usize,
    timeout: Duration,
) -> Result<(TcpStream, [u8; NCCL_ID_BYTES]), LinkError> {
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => {
                return Err(LinkError::Io {
                    what: "connect to the tensor-parallel leader (--tp-addr)",
                    source: e,
                });
            }
            Err(_) => std::thread::sleep(POLL),
        }
    };
    // The leader answers once every rank joined, which may take a while (others load too).
    configure(
        &stream,
        Some(deadline.saturating_duration_since(Instant::now()).max(POLL)),
    )?;
    write_frame(
        &mut stream,
        &Frame::Hello {
            rank: rank as u32,
            size: size as u32,
        },
    )?;
    match read_frame(&mut stream)? {
        Some(Frame::Init { nccl_id }) => {
            stream
                .set_read_timeout(None)
                .map_err(io_err("configure stream"))?;
            Ok((stream, nccl_id))
        }
        other => Err(LinkError::Protocol(format!(
            "leader at {addr} sent {other:?} instead of the NCCL id"
        ))),
    }
}

fn configure(stream: &TcpStream, read_timeout: Option<Duration>) -> Result<(), LinkError> {
    stream
        .set_nonblocking(false)
        .map_err(io_err("configure stream"))?;
    // Step frames are small and latency-bound.
    stream
        .set_nodelay(true)
        .map_err(io_err("configure stream"))?;
    stream
        .set_read_timeout(read_timeout)
        .map_err(io_err("configure stream"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // unwrap is the assertion in tests
mod tests {
    use super::*;
    use crate::backend::cuda::model::StepShape;

    fn free_addr() -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    #[test]
    fn followers_join_in_any_order_and_get_steps() {
        let addr = free_addr();
        let id = [42u8; NCCL_ID_BYTES];
        // Followers start first and retry until the leader listens.
        let followers: Vec<_> = [2usize, 1]
            .into_iter()
            .map(|rank| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    let (mut s, got) = join(&addr, rank, 3, Duration::from_secs(20)).unwrap();
                    assert_eq!(got, [42u8; NCCL_ID_BYTES]);
                    let mut steps = Vec::new();
                    while let Some(Frame::Step(f)) = read_frame(&mut s).unwrap() {
                        steps.push(f.meta);
                    }
                    (rank, steps)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut leader = LeaderLink::accept(&addr, 3, &id, Duration::from_secs(20)).unwrap();
        let shape = StepShape {
            rows: 1,
            decode_seqs: 1,
            prefill_seqs: 0,
            num_tiles: 0,
            tile_rows: 0,
            logit_rows: 1,
            sample: true,
        };
        for i in 0..3 {
            let meta = vec![i; 4];
            leader
                .send(StepFrame {
                    shape,
                    graph: true,
                    meta,
                })
                .unwrap();
        }
        drop(leader);
        for f in followers {
            let (rank, steps) = f.join().unwrap();
            assert_eq!(
                steps,
                vec![vec![0; 4], vec![1; 4], vec![2; 4]],
                "rank {rank}"
            );
        }
    }

    #[test]
    fn a_missing_follower_times_out_with_its_rank() {
        let addr = free_addr();
        let err = LeaderLink::accept(&addr, 2, &[0; NCCL_ID_BYTES], Duration::from_millis(200))
            .err()
            .unwrap();
        assert!(err.to_string().contains("[1]"), "{err}");
    }

    #[test]
    fn a_follower_without_a_leader_gives_up() {
        let addr = free_addr();
        let err = join(&addr, 1, 2, Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("--tp-addr"), "{err}");
    }
}
