//! One sequence's logical -> physical block mapping.

use super::block_pool::{BlockHandle, BlockPool};

/// Blocks of `block_size` tokens needed to hold `num_tokens` tokens.
pub fn blocks_needed(num_tokens: usize, block_size: usize) -> usize {
    num_tokens.div_ceil(block_size.max(1))
}

/// The pool had too few free blocks for a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("out of KV blocks: need {needed} more, {free} free")]
pub struct OutOfBlocks {
    pub needed: usize,
    pub free: usize,
}

/// The blocks of one sequence in logical order. Dropping the table frees them all.
#[derive(Debug)]
pub struct BlockTable {
    block_size: usize,
    blocks: Vec<BlockHandle>,
    /// Mirror of `blocks` ids, so the model can borrow a `&[u32]` without allocating.
    ids: Vec<u32>,
}

impl BlockTable {
    pub fn new(block_size: usize) -> Self {
        Self {
            block_size: block_size.max(1),
            blocks: Vec::new(),
            ids: Vec::new(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Physical block ids in logical order.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Tokens the owned blocks can hold.
    pub fn capacity(&self) -> usize {
        self.blocks.len() * self.block_size
    }

    /// More blocks needed before the table can hold `num_tokens` tokens.
    pub fn extra_blocks_for(&self, num_tokens: usize) -> usize {
        blocks_needed(num_tokens, self.block_size).saturating_sub(self.blocks.len())
    }

    /// Grows the table so it can hold `num_tokens` tokens; all or nothing.
    pub fn reserve(&mut self, pool: &BlockPool, num_tokens: usize) -> Result<(), OutOfBlocks> {
        let needed = self.extra_blocks_for(num_tokens);
        if needed == 0 {
            return Ok(());
        }
        let new_blocks = pool.allocate_many(needed).ok_or(OutOfBlocks {
            needed,
            free: pool.num_free(),
        })?;
        self.ids.extend(new_blocks.iter().map(BlockHandle::id));
        self.blocks.extend(new_blocks);
        Ok(())
    }

    /// The handle of logical block `i`.
    pub fn block(&self, i: usize) -> Option<&BlockHandle> {
        self.blocks.get(i)
    }

    /// Appends a block found in the prefix cache (already full and computed).
    pub fn push_cached(&mut self, block: BlockHandle) {
        self.ids.push(block.id());
        self.blocks.push(block);
    }

    /// Returns every block to the pool (preemption).
    pub fn clear(&mut self) {
        self.ids.clear();
        self.blocks.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_needed_rounds_up() {
        assert_eq!(blocks_needed(0, 16), 0);
        assert_eq!(blocks_needed(1, 16), 1);
        assert_eq!(blocks_needed(16, 16), 1);
        assert_eq!(blocks_needed(17, 16), 2);
    }

    #[test]
    fn reserve_grows_only_when_last_block_is_full() {
        let pool = BlockPool::new(4, true);
        let mut table = BlockTable::new(4);
        assert!(table.reserve(&pool, 3).is_ok());
        assert_eq!(table.num_blocks(), 1);
        assert!(table.reserve(&pool, 4).is_ok());
        assert_eq!(table.num_blocks(), 1, "4 tokens still fit one block of 4");
        assert!(table.reserve(&pool, 5).is_ok());
        assert_eq!(table.ids(), &[0, 1]);
        assert_eq!(table.capacity(), 8);
        assert_eq!(pool.num_free(), 2);
    }

    #[test]
    fn reserve_fails_without_taking_blocks() {
        let pool = BlockPool::new(2, true);
        let mut table = BlockTable::new(2);
        let err = table.reserve(&pool, 7);
        assert_eq!(err, Err(OutOfBlocks { needed: 4, free: 2 }));
        assert_eq!(table.num_blocks(), 0);
        assert_eq!(pool.num_free(), 2);
    }

    #[test]
    fn clear_and_drop_return_blocks() {
        let pool = BlockPool::new(3, true);
        let mut table = BlockTable::new(2);
        assert!(table.reserve(&pool, 5).is_ok());
        assert_eq!(pool.num_free(), 0);
        table.clear();
        assert_eq!(pool.num_free(), 3);
        assert!(table.ids().is_empty());
        assert!(table.reserve(&pool, 2).is_ok());
        drop(table);
        assert_eq!(pool.num_free(), 3);
    }
}
