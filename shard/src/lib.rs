//! pagedserve shard: one model replica on one device.
//!
//! `model` + `backend` compute; `kv_cache` allocates paged KV blocks; `engine` runs the
//! continuous-batching step loop; `sampling` turns logits into tokens; `service` exposes it all
//! over gRPC (`proto/shard.proto`).

pub mod args;
pub mod backend;
pub mod engine;
pub mod kv_cache;
pub mod model;
pub mod sampling;
pub mod service;
