//! gRPC side: one long-lived `Serve` stream per shard, demultiplexed to per-sequence
//! channels, with reconnects and cancel-on-drop.

pub mod connection;
pub mod events;
pub mod pool;
pub mod shard;

pub use events::{Finish, SeqEvent, StepTokens};
pub use pool::ShardPool;
pub use shard::{SequenceGuard, SequenceHandle, ShardHandle};
