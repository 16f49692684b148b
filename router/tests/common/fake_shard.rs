//! An in-process fake shard: a real tonic server speaking shard.proto that "generates"
//! a scripted token sequence, and records every ShardInput it receives.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pagedserve_proto::v1::health_response::Status as HealthStatus;
use pagedserve_proto::v1::{
    ErrorKind, FinishReason, GenerateRequest, GenerateResponse, HealthRequest, HealthResponse,
    InfoRequest, InfoResponse, Logprobs, SequenceOutput, ShardInput, ShardStats, StepOutput,
    TokenLogprob, shard_input,
};
use pagedserve_proto::{Shard, ShardServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone)]
pub struct FakeConfig {
    /// Tokens generated in order; the seed shifts the start so n choices differ.
    pub script: Vec<u32>,
    /// Emitted with FINISH_REASON_STOP after the script (unless `cycle`).
    pub eos: u32,
    /// Repeat the script forever (runs to max_tokens).
    pub cycle: bool,
    pub step: Duration,
    pub max_context: u32,
    /// The model's vocabulary (embedding rows) reported by `Info`.
    pub vocab_size: u32,
    /// Break every Serve stream with an error when it reaches this step.
    pub fail_at_step: Option<u64>,
    /// Finish every sequence with FINISH_REASON_ERROR and this message once it has
    /// generated this many tokens (as the engine does when a forward pass fails).
    pub fail_sequence_at: Option<(u32, &'static str)>,
    /// The `error_kind` of those ERROR finishes: INTERNAL for a forward pass that failed,
    /// INVALID_REQUEST for a request the shard rejects.
    pub fail_sequence_kind: ErrorKind,
}

#[derive(Clone)]
pub struct FakeShard {
    config: FakeConfig,
    pub inputs: Arc<Mutex<Vec<ShardInput>>>,
}

struct FakeSeq {
    id: u64,
    prompt_tokens: u32,
    max_tokens: u32,
    offset: usize,
    generated: u32,
    logprobs: bool,
    top: u32,
}

impl FakeShard {
    /// Starts the server on a free port; returns its URL and the shard (for its log).
    pub async fn start(config: FakeConfig) -> (String, FakeShard) {
        let shard = FakeShard {
            config,
            inputs: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake shard");
        let addr = listener.local_addr().expect("local addr");
        let service = ShardServer::new(shard.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        (format!("http://{addr}"), shard)
    }

    pub fn submits(&self) -> Vec<Vec<pagedserve_proto::v1::Request>> {
        let inputs = self.inputs.lock().expect("log lock");
        inputs
            .iter()
            .filter_map(|i| match &i.kind {
                Some(shard_input::Kind::Submit(s)) => Some(s.requests.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn cancelled_ids(&self) -> Vec<u64> {
        let inputs = self.inputs.lock().expect("log lock");
        inputs
            .iter()
            .filter_map(|i| match &i.kind {
                Some(shard_input::Kind::Cancel(c)) => Some(c.ids.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn output(&self, seq: &mut FakeSeq) -> SequenceOutput {
        if let Some((at, error)) = self.config.fail_sequence_at
            && seq.generated >= at
        {
            return SequenceOutput {
                id: seq.id,
                finish_reason: FinishReason::Error as i32,
                prompt_tokens: seq.prompt_tokens,
                generated_tokens: seq.generated,
                error: error.into(),
                error_kind: self.config.fail_sequence_kind as i32,
                ..Default::default()
            };
        }
        let script = &self.config.script;
        let position = seq.offset + seq.generated as usize;
        let (token, mut finish) = match script.get(position) {
            Some(&t) => (t, FinishReason::Unspecified),
            None if self.config.cycle => {
                (script[position % script.len()], FinishReason::Unspecified)
            }
            None => (self.config.eos, FinishReason::Stop),
        };
        seq.generated += 1;
        if finish == FinishReason::Unspecified && seq.generated >= seq.max_tokens {
            finish = FinishReason::Length;
        }
        let logprobs = if seq.logprobs {
            let top = [(token, -0.5), (token.wrapping_add(1), -1.5), (3, -4.0)];
            vec![Logprobs {
                logprob: -0.5,
                top: top
                    .iter()
                    .take(seq.top as usize)
                    .map(|&(token_id, logprob)| TokenLogprob { token_id, logprob })
                    .collect(),
            }]
        } else {
            Vec::new()
        };
        SequenceOutput {
            id: seq.id,
            token_ids: vec![token],
            logprobs,
            finish_reason: finish as i32,
            prompt_tokens: seq.prompt_tokens,
            generated_tokens: seq.generated,
            error: String::new(),
            timings: None,
            error_kind: ErrorKind::Internal as i32,
        }
    }

    fn admit(&self, input: &ShardInput, running: &mut Vec<FakeSeq>) {
        self.inputs.lock().expect("log lock").push(input.clone());
        match &input.kind {
            Some(shard_input::Kind::Submit(submit)) => {
                for r in &submit.requests {
                    let seed = r.sampling.and_then(|s| s.seed).unwrap_or(0);
                    running.push(FakeSeq {
                        id: r.id,
                        prompt_tokens: r.prompt_ids.len() as u32,
                        max_tokens: r.stopping.as_ref().map_or(16, |s| s.max_tokens),
                        offset: (seed % 3) as usize,
                        generated: 0,
                        logprobs: r.logprobs,
                        top: r.top_logprobs,
                    });
                }
            }
            Some(shard_input::Kind::Cancel(cancel)) => {
                running.retain(|s| !cancel.ids.contains(&s.id));
            }
            None => {}
        }
    }

    async fn engine(
        self,
        mut inbound: Streaming<ShardInput>,
        tx: mpsc::Sender<Result<StepOutput, Status>>,
    ) {
        let mut running = Vec::new();
        let mut ticker = tokio::time::interval(self.config.step);
        let mut step = 0;
        loop {
            tokio::select! {
                input = inbound.next() => match input {
                    Some(Ok(input)) => self.admit(&input, &mut running),
                    _ => return,
                },
                _ = ticker.tick(), if !running.is_empty() => {
                    step += 1;
                    let outputs: Vec<_> = running.iter_mut().map(|s| self.output(s)).collect();
                    running.retain(|s| {
                        outputs.iter().any(|o| o.id == s.id && o.finish_reason == 0)
                    });
                    let stats = ShardStats {
                        free_kv_blocks: 90,
                        total_kv_blocks: 100,
                        running: running.len() as u32,
                        ..Default::default()
                    };
                    if self.config.fail_at_step == Some(step) {
                        let _ = tx.send(Err(Status::internal("fake engine crashed"))).await;
                        return;
                    }
                    let out = StepOutput { step, outputs, stats: Some(stats) };
                    if tx.send(Ok(out)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Shard for FakeShard {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            model: "fake".into(),
            dtype: "f32".into(),
            max_context: self.config.max_context,
            block_size: 16,
            total_kv_blocks: 100,
            free_kv_blocks: 100,
            device: "cpu".into(),
            vocab_size: self.config.vocab_size,
            eos_token_ids: vec![self.config.eos],
            max_batch_tokens: 512,
            ..Default::default()
        }))
    }

    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            status: HealthStatus::Serving as i32,
        }))
    }

    type ServeStream = BoxStream<StepOutput>;

    async fn serve(
        &self,
        request: Request<Streaming<ShardInput>>,
    ) -> Result<Response<Self::ServeStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(self.clone().engine(request.into_inner(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type GenerateStream = BoxStream<GenerateResponse>;

    async fn generate(
        &self,
        _: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        Err(Status::unimplemented("the fake shard only serves Serve"))
    }
}
