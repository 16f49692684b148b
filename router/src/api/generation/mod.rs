//! Runs a validated request on the shards: submits n sequences per prompt and turns
//! their step events into per-choice updates. Dropping a `Generation` cancels every
//! unfinished sequence (client disconnect).

pub mod choice;

use std::sync::Arc;
use std::time::Instant;

use futures::stream::{SelectAll, StreamExt};
use pagedserve_proto::v1::Request;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::api::types::Usage;
use crate::batching::WaitingPermit;
use crate::client::{SeqEvent, SequenceGuard};
use crate::error::ApiError;
use crate::metrics::{RequestTimer, SeqOutcome};
use crate::state::AppState;
use crate::validation::GenerationRequest;

pub use crate::metrics::RequestMeta;
pub use choice::{ChoiceState, ChoiceUpdate, TokenDetail, TokenText};

type IndexedEvents = futures::stream::Map<
    UnboundedReceiverStream<SeqEvent>,
    Box<dyn FnMut(SeqEvent) -> (usize, SeqEvent) + Send>,
>;

pub struct Generation {
    state: Arc<AppState>,
    events: SelectAll<IndexedEvents>,
    choices: Vec<ChoiceState>,
    /// Per choice; dropped (cancelling on the shard if still running) when it finishes.
    guards: Vec<Option<SequenceGuard>>,
    /// Released at the first output: the request is no longer waiting.
    permit: Option<WaitingPermit>,
    prompt_tokens: u32,
    /// Metrics and the request's log span; records aborts when dropped early.
    timer: RequestTimer,
}

impl Generation {
    /// Submits every sequence of `request` (choice index = prompt index × n + i).
    pub fn start(
        state: Arc<AppState>,
        request: &GenerationRequest,
        permit: WaitingPermit,
        meta: RequestMeta<'_>,
    ) -> Result<Self, ApiError> {
        let mut sequences = Vec::new();
        let mut choices = Vec::new();
        for (p, prompt) in request.prompts.iter().enumerate() {
            for i in 0..request.n {
                let mut sampling = request.sampling;
                // Distinct but reproducible streams for the n choices.
                sampling.seed = sampling.seed.map(|s| s.wrapping_add(u64::from(i)));
                sequences.push(Request {
                    id: 0,
                    prompt_ids: prompt.clone(),
                    sampling: Some(sampling),
                    stopping: Some(request.stopping(p)),
                    logprobs: request.logprobs.is_some(),
                    top_logprobs: request.logprobs.unwrap_or(0),
                });
                let decoder = state
                    .tokenizer
                    .incremental_decoder(prompt, request.skip_special_tokens);
                let index = choices.len() as u32;
                let want = request.logprobs.is_some();
                choices.push(ChoiceState::new(index, decoder, request.stop.clone(), want));
            }
        }
        let prompt_lens: Vec<u32> = sequences
            .iter()
            .map(|s| s.prompt_ids.len() as u32)
            .collect();
        let handles = state.shards.submit_group(sequences)?;
        let shard = handles.first().map_or(0, |h| h.shard);
        let mut events = SelectAll::new();
        let mut guards = Vec::with_capacity(handles.len());
        for (index, handle) in handles.into_iter().enumerate() {
            let tag: Box<dyn FnMut(SeqEvent) -> (usize, SeqEvent) + Send> =
                Box::new(move |event| (index, event));
            events.push(UnboundedReceiverStream::new(handle.events).map(tag));
            guards.push(Some(handle.guard));
        }
        let prompt_tokens = request.prompts.iter().map(|p| p.len() as u32).sum();
        let metrics = Arc::clone(&state.metrics);
        let timer = RequestTimer::new(metrics, meta, shard, &prompt_lens, prompt_tokens);
        Ok(Self {
            state,
            events,
            choices,
            guards,
            permit: Some(permit),
            prompt_tokens,
            timer,
        })
    }

    pub fn num_choices(&self) -> usize {
        self.choices.len()
    }

    /// Prompt tokens counted once per prompt; completion tokens summed over choices.
    pub fn usage(&self) -> Usage {
        let completion = self.choices.iter().map(|c| c.completion_tokens).sum();
        Usage::new(self.prompt_tokens, completion)
    }

    /// The next update of some choice; None once every choice finished.
    pub async fn next(&mut self) -> Option<Result<ChoiceUpdate, ApiError>> {
        loop {
            if self.choices.iter().all(|c| c.finished) {
                return None;
            }
            let Some((index, event)) = self.events.next().await else {
                return Some(Err(ApiError::Internal(
                    "the shard stopped sending output for this request".into(),
                )));
            };
            self.permit = None;
            let Some(choice) = self.choices.get_mut(index) else {
                continue;
            };
            if choice.finished {
                continue; // output already queued when a stop string ended the choice
            }
            let now = Instant::now();
            let step = match event.into_step() {
                Ok(step) => step,
                Err(error) => {
                    self.timer.on_end(index, SeqOutcome::Error, now);
                    return Some(Err(error));
                }
            };
            let count = step.token_ids.len() as u32;
            self.timer.on_tokens(index, count, now, step.timings);
            let shard_timings = step.finish.and(step.timings);
            let update = choice.apply(step, &self.state.tokenizer);
            match &update {
                Ok(u) => {
                    if let Some(finish) = u.finish {
                        let outcome = SeqOutcome::Finished(finish, shard_timings);
                        self.timer.on_end(index, outcome, now);
                    }
                }
                Err(_) => self.timer.on_end(index, SeqOutcome::Error, now),
            }
            if choice.finished
                && let Some(guard) = self.guards.get_mut(index)
            {
                guard.take();
            }
            return Some(update);
        }
    }
}
