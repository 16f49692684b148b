//! pagedserve router: OpenAI-compatible HTTP API in front of gRPC shards.

pub mod api;
pub mod args;
pub mod auth;
pub mod balance;
pub mod batching;
pub mod client;
pub mod error;
pub mod generation_defaults;
pub mod listen;
pub mod metrics;
pub mod server;
pub mod state;
pub mod tokenize;
pub mod validation;

pub use api::router;
pub use args::Args;
pub use error::ApiError;
pub use state::AppState;
