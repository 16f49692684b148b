//! The gRPC server: the `Shard` service plus reflection (so grpcurl can list and call it).

use super::ShardService;
use pagedserve_proto::ShardServer;
use std::future::Future;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// A Submit batch carries whole prompts; tonic's 4 MiB default is too tight for big batches.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `service` on `listener` until `shutdown` resolves.
pub async fn serve_grpc(
    listener: TcpListener,
    service: ShardService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServiceError> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pagedserve_proto::FILE_DESCRIPTOR_SET)
    };
    // v1 for current grpcurl; v1alpha too, because grpcurl releases before 1.9 only speak it.
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let shard = ShardServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .add_service(shard)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // TCP_NODELAY: each step's outputs are one small message on a long-lived stream, and
        // Nagle's algorithm would hold a token back until the router's delayed ACK.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}
