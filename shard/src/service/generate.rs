//! `Generate`: one request through the same engine, one response per step that produced a token.

use super::BoxStream;
use crate::engine::{EngineError, EngineHandle, OutputStream};
use pagedserve_proto::v1 as pb;
use tonic::Status;

/// The request id used inside a `Generate` call's private stream.
const REQUEST_ID: u64 = 0;

pub(super) fn start(
    engine: &EngineHandle,
    req: pb::GenerateRequest,
) -> Result<BoxStream<pb::GenerateResponse>, EngineError> {
    let outputs = engine.open_stream()?;
    engine.submit(
        outputs.id(),
        vec![pb::Request {
            id: REQUEST_ID,
            prompt_ids: req.prompt_ids,
            sampling: req.sampling,
            stopping: req.stopping,
            logprobs: req.logprobs,
            top_logprobs: req.top_logprobs,
        }],
    )?;
    Ok(Box::pin(futures::stream::unfold(
        Some(outputs),
        next_response,
    )))
}

type State = Option<OutputStream>;

/// Waits for the next step that produced something for the request; ends after it finished.
async fn next_response(state: State) -> Option<(Result<pb::GenerateResponse, Status>, State)> {
    let mut outputs = state?;
    loop {
        let Some(step) = outputs.recv().await else {
            let status = Status::unavailable("the engine stopped");
            return Some((Err(status), None));
        };
        let Some(out) = step.outputs.into_iter().find(|o| o.id == REQUEST_ID) else {
            continue; // a prefill chunk: nothing to say yet
        };
        let finished = out.finish_reason != pb::FinishReason::Unspecified as i32;
        let item = to_response(out);
        return Some((item, if finished { None } else { Some(outputs) }));
    }
}

fn to_response(out: pb::SequenceOutput) -> Result<pb::GenerateResponse, Status> {
    if out.finish_reason == pb::FinishReason::Error as i32 {
        // By the engine's kind, not by "nothing generated yet": a forward pass that fails
        // during the prefill has generated nothing either, and is still the shard's fault.
        return Err(match pb::ErrorKind::try_from(out.error_kind) {
            Ok(pb::ErrorKind::InvalidRequest) => Status::invalid_argument(out.error),
            _ => Status::internal(out.error),
        });
    }
    Ok(pb::GenerateResponse {
        token_ids: out.token_ids,
        logprobs: out.logprobs,
        finish_reason: out.finish_reason,
        prompt_tokens: out.prompt_tokens,
        generated_tokens: out.generated_tokens,
    })
}
