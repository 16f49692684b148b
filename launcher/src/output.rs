//! The launcher's stdout and stderr: its own log and every child's lines. They are written
//! by one thread per stream from a bounded queue; a line that finds the queue full is dropped
//! and counted, and the count is printed where the gap is.
//!
//! Why drop instead of wait: whoever reads our output (`pagedserve | less` paused, a logging
//! sidecar that stalls, a pipe nobody drains) must not be able to stop the server. Writing on
//! the runtime thread stalled supervision and signal handling, so SIGTERM was never acted on.
//! Async writes on their own tasks would free that thread but still push back on the
//! children: a pump waiting on a write stops reading the child's pipe, and once that fills
//! the shard blocks in write(2) mid-generation. Logs are diagnostics; serving and stopping
//! come first (the same choice as Docker's non-blocking log mode or tracing-appender's lossy
//! writer). The queue is large enough that a reader that keeps up never loses a line.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Lines held for a slow reader before new ones are dropped (a few MB of typical log lines).
const QUEUE_LINES: usize = 8192;

enum Message {
    Line(Vec<u8>),
    /// `n` lines were dropped just before the lines that follow.
    Dropped(u64),
    /// Flush the writer, then acknowledge.
    Flush(mpsc::Sender<()>),
}

/// One output stream, written by its own thread; `send` never blocks.
pub struct Sink {
    name: &'static str,
    queue: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

impl Sink {
    pub fn new(name: &'static str, writer: impl Write + Send + 'static, lines: usize) -> Self {
        let (queue, rx) = mpsc::sync_channel(lines);
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-writer"))
            .spawn(move || write_all(name, writer, rx));
        if let Err(err) = spawned {
            // Without the thread the queue fills and every line is dropped (counted); better
            // than failing the launch over its logs.
            eprintln!("[pagedserve] could not start the {name} writer: {err}");
        }
        Self {
            name,
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Queues `line` (which should end with a newline); drops it if the queue is full.
    pub fn send(&self, line: Vec<u8>) {
        let pending = self.dropped.load(Ordering::Relaxed);
        if pending > 0 {
            match self.queue.try_send(Message::Dropped(pending)) {
                Ok(()) => {
                    self.dropped.fetch_sub(pending, Ordering::Relaxed);
                }
                Err(_) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        if self.queue.try_send(Message::Line(line)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits up to `limit` for every queued line to be written; false if the reader is stuck.
    pub fn flush(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let (ack, acked) = mpsc::channel();
        let mut message = Message::Flush(ack);
        loop {
            match self.queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    message = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TrySendError::Full(_)) => return false,
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let flushed = acked.recv_timeout(left).is_ok();
        if !flushed {
            tracing::debug!("{} was not drained in {limit:?}", self.name);
        }
        flushed
    }
}

fn write_all(name: &str, mut writer: impl Write, queue: Receiver<Message>) {
    // After a write error (the reader is gone: EPIPE) lines are still taken off the queue and
    // discarded, so the pumps keep reading and no child ever blocks on its output.
    let mut broken = false;
    for message in queue {
        let written = match message {
            Message::Line(line) => broken || writer.write_all(&line).is_ok(),
            Message::Dropped(n) => {
                let notice = format!(
                    "[pagedserve] {n} lines of output dropped: {name} was not read fast enough\n"
                );
                broken || writer.write_all(notice.as_bytes()).is_ok()
            }
            Message::Flush(ack) => {
                let _ = writer.flush();
                let _ = ack.send(());
                true
            }
        };
        broken |= !written; // once broken, stays broken: no more writes are tried
    }
}

/// The launcher's stdout: its log and the children's stdout.
pub fn stdout() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| Sink::new("stdout", std::io::stdout(), QUEUE_LINES))
}

/// The launcher's stderr: its own errors and the children's stderr.
pub fn stderr() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| Sink::new("stderr", std::io::stderr(), QUEUE_LINES))
}

/// Waits a little for both streams to drain (at exit, so the last error is seen); a stuck
/// reader cannot keep the launcher from exiting.
pub fn flush_at_exit() {
    let limit = Duration::from_secs(2);
    stdout().flush(limit);
    stderr().flush(limit);
}

/// A `tracing` writer: one formatted event, queued whole on `stdout()` when dropped
/// (`LogWriter::default`), or on `stderr()` (`LogWriter::stderr`, for ERROR events: why the
/// launcher stopped, e.g. a shard that exited during start-up, is what a script or a
/// container runtime reading stderr needs, as the shards' own errors already are).
#[derive(Default)]
pub struct LogWriter {
    buf: Vec<u8>,
    to_stderr: bool,
}

impl LogWriter {
    pub fn stderr() -> Self {
        Self {
            buf: Vec::new(),
            to_stderr: true,
        }
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let sink = if self.to_stderr { stderr() } else { stdout() };
            sink.send(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A writer that blocks until `open` is set, like a pipe nobody reads; keeps what it gets.
    #[derive(Clone, Default)]
    struct Gate {
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, cvar) = &*self.open;
            let mut open = lock.lock().expect("lock");
            while !*open {
                open = cvar.wait(open).expect("wait");
            }
            self.got.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_reader_drops_counted_lines_instead_of_blocking() {
        let gate = Gate::default();
        let sink = Sink::new("test", gate.clone(), 4);
        // Far more than the queue holds; returns at once although nothing can be written.
        for i in 0..100 {
            sink.send(format!("line {i}\n").into_bytes());
        }
        assert!(
            !sink.flush(Duration::from_millis(100)),
            "the reader is stuck"
        );
        *gate.open.0.lock().expect("lock") = true;
        gate.open.1.notify_all();
        assert!(
            sink.flush(Duration::from_secs(30)),
            "drained once the reader reads"
        );
        sink.send(b"after\n".to_vec());
        assert!(
            sink.flush(Duration::from_secs(30)),
            "drained once the reader reads"
        );
        let text = String::from_utf8(gate.got.lock().expect("lock").clone()).expect("utf8");
        assert!(text.starts_with("line 0\n"), "{text}");
        let notice = text
            .lines()
            .find(|l| l.contains("lines of output dropped"))
            .unwrap_or_else(|| panic!("no notice of the drops:\n{text}"));
        let kept = text.lines().filter(|l| l.starts_with("line ")).count();
        let dropped: usize = notice
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{notice}"));
        assert_eq!(
            kept + dropped,
            100,
            "every line is written or counted:\n{text}"
        );
        assert!(
            text.ends_with("after\n"),
            "the notice comes before later lines:\n{text}"
        );
    }

    #[test]
    fn a_closed_reader_does_not_stop_the_queue() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::new("closed", Closed, 4);
        for _ in 0..100 {
            sink.send(b"x\n".to_vec());
            assert!(sink.flush(Duration::from_secs(30)), "still drained");
        }
    }

    #[test]
    fn a_broken_writer_is_not_written_again() {
        struct Counting(Arc<AtomicU64>);
        impl Write for Counting {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                self.0.fetch_add(1, Ordering::Relaxed);
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let attempts = Arc::new(AtomicU64::new(0));
        let sink = Sink::new("broken", Counting(Arc::clone(&attempts)), 16);
        for _ in 0..5 {
            sink.send(b"x\n".to_vec());
        }
        assert!(sink.flush(Duration::from_secs(30)), "drained");
        assert_eq!(
            attempts.load(Ordering::Relaxed),
            1,
            "one failed write is enough"
        );
    }
}
