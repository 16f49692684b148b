//! OpenAI wire types: requests (lenient, unknown fields ignored) and responses.

pub mod chunk;
pub mod request;
pub mod response;

pub use chunk::*;
pub use request::*;
pub use response::*;
