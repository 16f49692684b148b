//! Free list of KV block ids with Drop-returned handles.
//!
//! The engine is single-threaded, so the pool is shared with its handles through `Rc<RefCell>`:
//! no locks on the hot path, and the type system keeps it on the engine thread.

use std::cell::RefCell;
use std::rc::Rc;

#[derive(Debug)]
struct PoolInner {
    free: Vec<u32>,
    total: usize,
}

/// A pool of `0..total` physical KV block ids.
#[derive(Debug, Clone)]
pub struct BlockPool {
    inner: Rc<RefCell<PoolInner>>,
}

impl BlockPool {
    /// A pool with every block of `0..total` free.
    pub fn new(total: usize) -> Self {
        // Reverse so that `pop` hands out low ids first (easier to read in logs and tests).
        let free = (0..total as u32).rev().collect();
        Self {
            inner: Rc::new(RefCell::new(PoolInner { free, total })),
        }
    }

    /// Takes one free block, or `None` when the pool is exhausted.
    pub fn allocate(&self) -> Option<BlockHandle> {
        let id = self.inner.borrow_mut().free.pop()?;
        Some(BlockHandle {
            id,
            pool: Rc::clone(&self.inner),
        })
    }

    /// Takes `n` blocks, all or nothing.
    pub fn allocate_many(&self, n: usize) -> Option<Vec<BlockHandle>> {
        if self.num_free() < n {
            return None;
        }
        (0..n).map(|_| self.allocate()).collect()
    }

    pub fn num_free(&self) -> usize {
        self.inner.borrow().free.len()
    }

    pub fn num_total(&self) -> usize {
        self.inner.borrow().total
    }
}

/// Ownership of one physical KV block; dropping it returns the block to its pool.
#[derive(Debug)]
pub struct BlockHandle {
    id: u32,
    pool: Rc<RefCell<PoolInner>>,
}

impl BlockHandle {
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for BlockHandle {
    fn drop(&mut self) {
        self.pool.borrow_mut().free.push(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_distinct_ids_until_exhausted() {
        let pool = BlockPool::new(3);
        let a = pool.allocate();
        let b = pool.allocate();
        let c = pool.allocate();
        let ids: Vec<u32> = [&a, &b, &c]
            .iter()
            .filter_map(|h| h.as_ref().map(BlockHandle::id))
            .collect();
        assert_eq!(ids, vec![0, 1, 2]);
        assert_eq!(pool.num_free(), 0);
        assert!(pool.allocate().is_none());
    }

    #[test]
    fn drop_returns_block() {
        let pool = BlockPool::new(2);
        let a = pool.allocate();
        assert_eq!(pool.num_free(), 1);
        drop(a);
        assert_eq!(pool.num_free(), 2);
        assert_eq!(pool.num_total(), 2);
    }

    #[test]
    fn allocate_many_is_all_or_nothing() {
        let pool = BlockPool::new(4);
        let held = pool.allocate_many(3);
        assert_eq!(held.as_ref().map(Vec::len), Some(3));
        assert!(pool.allocate_many(2).is_none());
        assert_eq!(
            pool.num_free(),
            1,
            "a failed allocate_many must not take blocks"
        );
        drop(held);
        assert_eq!(pool.num_free(), 4);
    }
}
