//! pagedserve router: OpenAI-compatible HTTP API in front of gRPC shards.

pub mod tokenize;
