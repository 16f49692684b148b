//! Paged KV-cache *allocation*: which physical blocks each sequence owns.
//!
//! The model owns the storage (`crate::model::CausalLm`); this module only hands out block ids
//! and remembers which full blocks hold which token prefixes (the prefix cache). A block is
//! released when its last [`BlockHandle`] is dropped, so no path (finish, cancel, preemption,
//! error) can leak blocks.

mod block_pool;
mod block_table;

pub use block_pool::{BlockHandle, BlockPool, CacheId, ROOT};
pub use block_table::{BlockTable, OutOfBlocks, blocks_needed};
