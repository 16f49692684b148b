//! The async-side handle to the engine thread, and the per-stream output receiver.

use super::runner::Engine;
use super::{Command, EngineConfig, EngineError, EngineSnapshot, StreamId, actor};
use crate::model::CausalLm;
use futures::Stream;
use pagedserve_proto::v1 as pb;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc as std_mpsc};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot};

/// Starts the engine on its own OS thread, owning `model`.
pub fn spawn_engine(
    model: Box<dyn CausalLm>,
    config: EngineConfig,
) -> Result<EngineHandle, EngineError> {
    let (commands, receiver) = std_mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("engine".into())
        // The pool's `Rc`s are built here, on the thread that uses them.
        .spawn(move || actor::run(Engine::new(model, config), receiver))
        .map_err(EngineError::Spawn)?;
    Ok(EngineHandle {
        inner: Arc::new(Inner {
            commands,
            next_stream: AtomicU64::new(1),
            thread: Mutex::new(Some(thread)),
        }),
    })
}

struct Inner {
    commands: std_mpsc::Sender<Command>,
    next_stream: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Cheap to clone; every method only sends a command (never blocks on the model).
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<Inner>,
}

impl EngineHandle {
    fn send(&self, command: Command) -> Result<(), EngineError> {
        self.inner
            .commands
            .send(command)
            .map_err(|_| EngineError::Stopped)
    }

    /// Opens a new output stream; its sequences are cancelled when it is dropped.
    pub fn open_stream(&self) -> Result<OutputStream, EngineError> {
        let stream = self.inner.next_stream.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::unbounded_channel();
        self.send(Command::OpenStream { stream, sender })?;
        Ok(OutputStream {
            stream,
            receiver,
            commands: self.inner.commands.clone(),
        })
    }

    pub fn submit(&self, stream: StreamId, requests: Vec<pb::Request>) -> Result<(), EngineError> {
        self.send(Command::Submit { stream, requests })
    }

    pub fn cancel(&self, stream: StreamId, ids: Vec<u64>) -> Result<(), EngineError> {
        self.send(Command::Cancel { stream, ids })
    }

    pub async fn snapshot(&self) -> Result<EngineSnapshot, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Snapshot { reply })?;
        answer.await.map_err(|_| EngineError::Stopped)
    }

    /// Whether the engine thread is still alive.
    pub fn is_running(&self) -> bool {
        match self.inner.thread.lock() {
            Ok(guard) => guard.as_ref().is_some_and(|t| !t.is_finished()),
            Err(_) => false,
        }
    }

    /// Stops the loop and joins the thread. Blocks: call from a blocking context.
    pub fn shutdown(&self) {
        let _ = self.send(Command::Shutdown);
        let thread = match self.inner.thread.lock() {
            Ok(mut guard) => guard.take(),
            Err(_) => None,
        };
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("engine thread panicked");
        }
    }
}

/// The step outputs of one stream. Dropping it cancels the stream's remaining sequences.
pub struct OutputStream {
    stream: StreamId,
    receiver: mpsc::UnboundedReceiver<pb::StepOutput>,
    commands: std_mpsc::Sender<Command>,
}

impl OutputStream {
    pub fn id(&self) -> StreamId {
        self.stream
    }

    /// The next step output; `None` once the engine has stopped.
    pub async fn recv(&mut self) -> Option<pb::StepOutput> {
        self.receiver.recv().await
    }
}

impl Stream for OutputStream {
    type Item = pb::StepOutput;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.receiver.poll_recv(cx)
    }
}

impl Drop for OutputStream {
    fn drop(&mut self) {
        // Wakes the engine so the blocks are freed now, not at the next failed send.
        let _ = self.commands.send(Command::CloseStream {
            stream: self.stream,
        });
    }
}
