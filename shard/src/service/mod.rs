//! The tonic `Shard` service: thin, every call is forwarded to the engine thread.
//!
//! The server starts before the model is loaded, so the engine is set later
//! ([`ShardService::set_engine`]); until then `Health` answers NOT_SERVING and the other calls
//! UNAVAILABLE.

mod generate;
mod server;
#[cfg(test)]
mod tests;

pub use server::{ServiceError, serve_grpc};

use crate::engine::{EngineError, EngineHandle, OutputStream};
use pagedserve_proto::Shard;
use pagedserve_proto::v1 as pb;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};

type BoxStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

struct Shared {
    shard_id: u32,
    engine: OnceLock<EngineHandle>,
    /// Set on shutdown: Health turns NOT_SERVING and new calls are refused.
    draining: AtomicBool,
}

/// Cheap to clone; all clones share one engine slot.
#[derive(Clone)]
pub struct ShardService {
    shared: Arc<Shared>,
}

impl ShardService {
    pub fn new(shard_id: u32) -> Self {
        Self {
            shared: Arc::new(Shared {
                shard_id,
                engine: OnceLock::new(),
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// Makes the service serve through `engine`; false if an engine was already set.
    pub fn set_engine(&self, engine: EngineHandle) -> bool {
        self.shared.engine.set(engine).is_ok()
    }

    /// Stops taking new work (Health NOT_SERVING); running streams continue.
    pub fn start_draining(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
    }

    fn engine(&self) -> Result<&EngineHandle, Status> {
        if self.shared.draining.load(Ordering::SeqCst) {
            return Err(Status::unavailable("shard is shutting down"));
        }
        match self.shared.engine.get() {
            Some(engine) if engine.is_running() => Ok(engine),
            Some(_) => Err(Status::unavailable("the engine has stopped")),
            None => Err(Status::unavailable("model is still loading")),
        }
    }
}

fn engine_status(e: EngineError) -> Status {
    Status::unavailable(e.to_string())
}

#[tonic::async_trait]
impl Shard for ShardService {
    async fn info(
        &self,
        _request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        // Info stays available while draining: the launcher watches blocks drain.
        let engine = self
            .shared
            .engine
            .get()
            .ok_or_else(|| Status::unavailable("model is still loading"))?;
        let s = engine.snapshot().await.map_err(engine_status)?;
        Ok(Response::new(pb::InfoResponse {
            model: s.model.name,
            dtype: s.model.dtype,
            max_context: s.max_seq_len as u32,
            block_size: s.block_size as u32,
            total_kv_blocks: s.total_kv_blocks as u32,
            free_kv_blocks: s.free_kv_blocks as u32,
            device: s.model.device,
            vocab_size: s.model.vocab_size as u32,
            shard_id: self.shared.shard_id,
            running: s.running as u32,
            waiting: s.waiting as u32,
            eos_token_ids: s.model.eos_token_ids,
            max_batch_tokens: s.max_batch_tokens as u32,
        }))
    }

    async fn health(
        &self,
        _request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        let status = match self.engine() {
            Ok(_) => pb::health_response::Status::Serving,
            Err(_) => pb::health_response::Status::NotServing,
        };
        Ok(Response::new(pb::HealthResponse {
            status: status as i32,
        }))
    }

    type ServeStream = BoxStream<pb::StepOutput>;

    async fn serve(
        &self,
        request: Request<Streaming<pb::ShardInput>>,
    ) -> Result<Response<Self::ServeStream>, Status> {
        let engine = self.engine()?.clone();
        let outputs = engine.open_stream().map_err(engine_status)?;
        let stream = outputs.id();
        let inputs = request.into_inner();
        let (broken, input_error) = oneshot::channel();
        tokio::spawn(forward_inputs(engine, stream, inputs, broken));
        // Dropping the response (router gone) drops `outputs`, which cancels the stream.
        let state = Some((outputs, Some(input_error)));
        Ok(Response::new(Box::pin(futures::stream::unfold(
            state,
            next_serve_output,
        ))))
    }

    type GenerateStream = BoxStream<pb::GenerateResponse>;

    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let engine = self.engine()?;
        let stream = generate::start(engine, request.into_inner()).map_err(engine_status)?;
        Ok(Response::new(stream))
    }
}

/// The stream's outputs and, until the input ends, where a broken input is reported.
type ServeState = Option<(OutputStream, Option<oneshot::Receiver<Status>>)>;

/// The next step output of a `Serve` call, or the error that broke its input, which ends it:
/// the router cannot know which submits were lost, so it must hear of it (it then fails its
/// sequences and reconnects) rather than wait forever for outputs that never come.
async fn next_serve_output(
    state: ServeState,
) -> Option<(Result<pb::StepOutput, Status>, ServeState)> {
    let (mut outputs, mut input_error) = state?;
    loop {
        let Some(error) = input_error.as_mut() else {
            let step = outputs.recv().await?;
            return Some((Ok(step), Some((outputs, None))));
        };
        tokio::select! {
            step = outputs.recv() => {
                return step.map(|step| (Ok(step), Some((outputs, input_error))));
            }
            status = error => match status {
                // Dropping `outputs` here cancels the stream's sequences.
                Ok(status) => return Some((Err(status), None)),
                // The input ended cleanly (half-close): outputs keep flowing.
                Err(_) => input_error = None,
            },
        }
    }
}

/// Feeds one `Serve` call's submits and cancels to the engine until the router stops sending;
/// an input that cannot be read (e.g. a message over the size limit) is sent to `broken`.
async fn forward_inputs(
    engine: EngineHandle,
    stream: crate::engine::StreamId,
    mut inputs: Streaming<pb::ShardInput>,
    broken: oneshot::Sender<Status>,
) {
    use pb::shard_input::Kind;
    loop {
        let sent = match inputs.message().await {
            Ok(Some(pb::ShardInput {
                kind: Some(Kind::Submit(submit)),
            })) => engine.submit(stream, submit.requests),
            Ok(Some(pb::ShardInput {
                kind: Some(Kind::Cancel(cancel)),
            })) => engine.cancel(stream, cancel.ids),
            Ok(Some(pb::ShardInput { kind: None })) => Ok(()),
            // Half-close: outputs keep flowing until the router drops the response stream.
            Ok(None) => return,
            Err(status) => {
                tracing::warn!(stream, %status, "serve input stream broke");
                let _ = broken.send(Status::new(
                    status.code(),
                    format!(
                        "the shard could not read the Serve input: {}",
                        status.message()
                    ),
                ));
                return;
            }
        };
        if sent.is_err() {
            return;
        }
    }
}
