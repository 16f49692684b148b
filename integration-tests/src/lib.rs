//! Helpers for the end-to-end tests: start the real `pagedserve` binary, talk raw HTTP to it,
//! run the `openai` Python client against it.
//!
//! Every test file starts its own server (one per file, shared by its tests), so files
//! don't disturb each other's KV-cache measurements.

pub mod http;
pub mod prometheus;
pub mod python;
pub mod server;

pub use server::{Server, ServerOptions};
