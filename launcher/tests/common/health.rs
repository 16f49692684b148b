//! A fake shard's gRPC Health, served by the test itself: the fake shard binaries are shell
//! scripts, so a test decides when "shard i" becomes ready by serving SERVING on its port.

use std::net::{SocketAddr, TcpListener};

use futures::Stream;
use pagedserve_proto::v1::health_response::Status as HealthStatus;
use pagedserve_proto::v1::{
    GenerateRequest, GenerateResponse, HealthRequest, HealthResponse, InfoRequest, InfoResponse,
    ShardInput, StepOutput,
};
use pagedserve_proto::{Shard, ShardServer};
use tonic::{Request, Response, Status, Streaming};

type BoxStream<T> = std::pin::Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

struct Serving;

#[tonic::async_trait]
impl Shard for Serving {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Err(Status::unimplemented("fake shard: health only"))
    }

    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            status: HealthStatus::Serving.into(),
        }))
    }

    type ServeStream = BoxStream<StepOutput>;

    async fn serve(
        &self,
        _: Request<Streaming<ShardInput>>,
    ) -> Result<Response<Self::ServeStream>, Status> {
        Err(Status::unimplemented("fake shard: health only"))
    }

    type GenerateStream = BoxStream<GenerateResponse>;

    async fn generate(
        &self,
        _: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        Err(Status::unimplemented("fake shard: health only"))
    }
}

/// Answers Health with SERVING on 127.0.0.1:`port` until the test process ends.
pub fn serve(port: u16) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let served = runtime.block_on(
            tonic::transport::Server::builder()
                .add_service(ShardServer::new(Serving))
                .serve(addr),
        );
        if let Err(e) = served {
            eprintln!("fake health on {addr}: {e}");
        }
    });
}

/// A base port with `count` free ports from it (for `--shard-base-port`).
pub fn free_port_run(count: u16) -> u16 {
    for _ in 0..100 {
        let base = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let free = (0..count).all(|i| {
            base.checked_add(i)
                .is_some_and(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        });
        if free {
            return base;
        }
    }
    panic!("no run of {count} free ports");
}
