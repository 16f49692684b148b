//! Generated gRPC types for the router <-> shard protocol (`shard.proto`).

#![allow(clippy::all, clippy::unwrap_used)]

pub mod kv_cache_dtype;

/// `pagedserve.shard.v1`: messages, client and server.
pub mod v1 {
    tonic::include_proto!("pagedserve.shard.v1");
}

/// Encoded file descriptor set, for tonic-reflection (grpcurl).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("shard_descriptor");

pub use v1::shard_client::ShardClient;
pub use v1::shard_server::{Shard, ShardServer};
