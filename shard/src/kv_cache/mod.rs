//! Paged KV-cache *allocation*: which physical blocks each sequence owns.
//!
//! The model owns the storage (`crate::model::CausalLm`); this module only hands out block ids.
//! A block is returned to the pool when its [`BlockHandle`] is dropped, so no path (finish,
//! cancel, preemption, error) can leak blocks.

mod block_pool;
mod block_table;

pub use block_pool::{BlockHandle, BlockPool};
pub use block_table::{BlockTable, OutOfBlocks, blocks_needed};
