//! A shard's step output may be as large as the shard sends (64 MiB), not tonic's 4 MiB.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use pagedserve_proto::v1::health_response::Status as HealthStatus;
use pagedserve_proto::v1::{
    FinishReason, GenerateRequest, GenerateResponse, HealthRequest, HealthResponse, InfoRequest,
    InfoResponse, Request as SeqRequest, SequenceOutput, ShardInput, StepOutput, shard_input,
};
use pagedserve_proto::{Shard, ShardServer};
use pagedserve_router::client::{SeqEvent, ShardPool};
use pagedserve_router::metrics::Metrics;
use tokio_stream::Stream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// Answers the first Submit with one step that also cancels 500k other sequences (~5 MB),
/// as a shard does when many clients leave at once.
#[derive(Clone)]
struct BigStepShard;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn big_step(id: u64) -> StepOutput {
    let cancelled = (0..500_000u64).map(|i| SequenceOutput {
        id: 1_000_000 + i,
        finish_reason: FinishReason::Cancelled as i32,
        prompt_tokens: 100,
        generated_tokens: 100,
        ..Default::default()
    });
    let ours = SequenceOutput {
        id,
        token_ids: vec![7],
        finish_reason: FinishReason::Length as i32,
        prompt_tokens: 1,
        generated_tokens: 1,
        ..Default::default()
    };
    StepOutput {
        step: 1,
        outputs: cancelled.chain([ours]).collect(),
        stats: None,
    }
}

#[tonic::async_trait]
impl Shard for BigStepShard {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            max_context: 64,
            block_size: 16,
            total_kv_blocks: 10,
            free_kv_blocks: 10,
            vocab_size: 100,
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
        let mut inputs = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            if let Some(id) = first_submit(&mut inputs).await {
                let _ = tx.send(Ok(big_step(id))).await;
            }
            // Hold the call open until the router hangs up.
            while let Ok(Some(_)) = inputs.message().await {}
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type GenerateStream = BoxStream<GenerateResponse>;

    async fn generate(
        &self,
        _: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        Err(Status::unimplemented("Serve only"))
    }
}

/// The id of the first request of the first Submit.
async fn first_submit(inputs: &mut Streaming<ShardInput>) -> Option<u64> {
    while let Ok(Some(input)) = inputs.message().await {
        if let Some(shard_input::Kind::Submit(submit)) = input.kind {
            return submit.requests.first().map(|r| r.id);
        }
    }
    None
}

#[tokio::test]
async fn a_step_over_four_mib_reaches_its_sequence() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ShardServer::new(BigStepShard).max_encoding_message_size(64 << 20))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let metrics = Arc::new(Metrics::new("m").expect("metrics"));
    let pool = ShardPool::start(&[format!("http://{addr}")], metrics);
    assert!(
        pool.wait_ready(Duration::from_secs(10)).await,
        "shard ready"
    );
    let request = SeqRequest {
        prompt_ids: vec![1],
        ..Default::default()
    };
    let mut handles = pool.submit_group(vec![request]).expect("submitted");
    let event = handles[0].events.recv().await;
    match event {
        Some(SeqEvent::Step(step)) => assert_eq!(step.token_ids, vec![7]),
        other => panic!("the step was lost: {other:?}"),
    }
}
