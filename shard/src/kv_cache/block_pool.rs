//! KV block ids with shared, Drop-returned handles, and the prefix cache.
//!
//! A block is held by one or more [`BlockHandle`]s: one per sequence whose block table names
//! it (full blocks of a common prefix are shared). When its last handle drops, a block that
//! holds a registered prefix (see [`BlockPool::register`]) stays cached, evictable, so a later
//! sequence that starts with the same tokens reuses its K/V instead of recomputing them
//! (vLLM's automatic prefix caching); any other block goes back to the free list. Allocation
//! takes free blocks first, then evicts the least recently released cached block.
//!
//! Cached blocks are keyed by `(parent, tokens)`: the id of the cached block holding the
//! tokens before them ([`ROOT`] for the first block) and this block's own tokens, compared in
//! full. Ids ([`CacheId`]) are never reused, so a key names exactly one token prefix: no hash
//! can collide, and once a block is evicted the blocks cached after it become unreachable
//! (they are evicted in turn when their time comes).
//!
//! The engine is single-threaded, so the pool is shared with its handles through `Rc<RefCell>`:
//! no locks on the hot path, and the type system keeps it on the engine thread.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

/// The identity of one cached block's token prefix.
pub type CacheId = u64;

/// The parent of a sequence's first block.
pub const ROOT: CacheId = 0;

#[derive(Debug)]
struct PoolInner {
    /// Blocks holding nothing reusable.
    free: Vec<u32>,
    total: usize,
    /// Live handles per block.
    refs: Vec<u32>,
    /// What each block holds, when registered: its key and id.
    cached: Vec<Option<(CacheKey, CacheId)>>,
    by_key: HashMap<CacheKey, (u32, CacheId)>,
    /// Cached blocks no handle holds, by release order (oldest evicted first).
    evictable: BTreeMap<u64, u32>,
    /// Each block's place in `evictable` while it is there.
    released_at: Vec<u64>,
    clock: u64,
    next_id: CacheId,
    /// Whether blocks are kept for reuse at all (`--no-enable-prefix-caching` turns it off).
    caching: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    parent: CacheId,
    tokens: Box<[u32]>,
}

impl PoolInner {
    fn take(&mut self) -> Option<u32> {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let (_, id) = self.evictable.pop_first()?;
                if let Some((key, _)) = self.cached[id as usize].take() {
                    self.by_key.remove(&key);
                }
                id
            }
        };
        self.refs[id as usize] = 1;
        Some(id)
    }

    fn release(&mut self, id: u32) {
        let refs = &mut self.refs[id as usize];
        *refs = refs.saturating_sub(1);
        if *refs > 0 {
            return;
        }
        match self.cached[id as usize].is_some() {
            true => {
                self.clock += 1;
                self.released_at[id as usize] = self.clock;
                self.evictable.insert(self.clock, id);
            }
            false => self.free.push(id),
        }
    }

    fn acquire(&mut self, id: u32) {
        if self.refs[id as usize] == 0 {
            let at = self.released_at[id as usize];
            self.evictable.remove(&at);
        }
        self.refs[id as usize] += 1;
    }
}

/// A pool of `0..total` physical KV block ids.
#[derive(Debug, Clone)]
pub struct BlockPool {
    inner: Rc<RefCell<PoolInner>>,
}

impl BlockPool {
    /// A pool with every block of `0..total` free; `caching` keeps released prefix blocks for
    /// reuse.
    pub fn new(total: usize, caching: bool) -> Self {
        // Reverse so that `pop` hands out low ids first (easier to read in logs and tests).
        let free = (0..total as u32).rev().collect();
        Self {
            inner: Rc::new(RefCell::new(PoolInner {
                free,
                total,
                refs: vec![0; total],
                cached: vec![None; total],
                by_key: HashMap::new(),
                evictable: BTreeMap::new(),
                released_at: vec![0; total],
                clock: 0,
                next_id: ROOT + 1,
                caching,
            })),
        }
    }

    /// Whether released prefix blocks are kept for reuse.
    pub fn caching(&self) -> bool {
        self.inner.borrow().caching
    }

    /// Takes one block (a free one, else the least recently released cached one), or `None`
    /// when every block is held.
    pub fn allocate(&self) -> Option<BlockHandle> {
        let id = self.inner.borrow_mut().take()?;
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

    /// The cached block holding `tokens` right after the prefix `parent`, shared, with its
    /// id (the `parent` of the block after it).
    pub fn lookup(&self, parent: CacheId, tokens: &[u32]) -> Option<(BlockHandle, CacheId)> {
        let mut inner = self.inner.borrow_mut();
        let key = CacheKey {
            parent,
            tokens: tokens.into(),
        };
        let (block, id) = *inner.by_key.get(&key)?;
        inner.acquire(block);
        Some((
            BlockHandle {
                id: block,
                pool: Rc::clone(&self.inner),
            },
            id,
        ))
    }

    /// Records that `block` (held, full, its K/V computed) holds `tokens` after the prefix
    /// `parent`, and returns the id of that prefix + `tokens`. When another block already
    /// holds the same, that block's id comes back and `block` stays uncached.
    pub fn register(&self, block: &BlockHandle, parent: CacheId, tokens: &[u32]) -> CacheId {
        let mut inner = self.inner.borrow_mut();
        if !inner.caching {
            return ROOT;
        }
        if let Some((_, id)) = inner.cached[block.id as usize] {
            return id; // it came from the cache
        }
        let key = CacheKey {
            parent,
            tokens: tokens.into(),
        };
        if let Some(&(_, id)) = inner.by_key.get(&key) {
            return id;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.by_key.insert(key.clone(), (block.id, id));
        inner.cached[block.id as usize] = Some((key, id));
        id
    }

    /// Blocks an allocation can take now: free ones and cached ones no sequence holds.
    pub fn num_free(&self) -> usize {
        let inner = self.inner.borrow();
        inner.free.len() + inner.evictable.len()
    }

    /// Cached blocks no sequence holds (reusable, or evicted when blocks run short).
    pub fn num_evictable(&self) -> usize {
        self.inner.borrow().evictable.len()
    }

    pub fn num_total(&self) -> usize {
        self.inner.borrow().total
    }
}

/// One sequence's share of a physical KV block; dropping the last share releases the block.
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
        self.pool.borrow_mut().release(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_distinct_ids_until_exhausted() {
        let pool = BlockPool::new(3, true);
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
        let pool = BlockPool::new(2, true);
        let a = pool.allocate();
        assert_eq!(pool.num_free(), 1);
        drop(a);
        assert_eq!(pool.num_free(), 2);
        assert_eq!(pool.num_total(), 2);
    }

    #[test]
    fn allocate_many_is_all_or_nothing() {
        let pool = BlockPool::new(4, true);
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

    #[test]
    fn a_released_prefix_block_is_found_again_and_shared() {
        let pool = BlockPool::new(4, true);
        let a = pool.allocate().expect("block");
        let first = pool.register(&a, ROOT, &[1, 2]);
        let b = pool.allocate().expect("block");
        let second = pool.register(&b, first, &[3, 4]);
        drop((a, b));
        assert_eq!((pool.num_free(), pool.num_evictable()), (4, 2));
        let (a2, id) = pool.lookup(ROOT, &[1, 2]).expect("cached");
        assert_eq!((a2.id(), id), (0, first));
        let (a3, _) = pool.lookup(ROOT, &[1, 2]).expect("shared");
        assert_eq!(a3.id(), 0);
        assert!(pool.lookup(ROOT, &[1, 9]).is_none());
        assert!(
            pool.lookup(ROOT, &[3, 4]).is_none(),
            "the parent is part of the key"
        );
        assert_eq!(
            pool.lookup(first, &[3, 4]).map(|(h, i)| (h.id(), i)),
            Some((1, second))
        );
        assert_eq!(pool.num_evictable(), 1, "held blocks are not evictable");
        drop((a2, a3));
        assert_eq!(pool.num_evictable(), 2);
    }

    #[test]
    fn eviction_takes_free_blocks_first_then_the_oldest_release() {
        let pool = BlockPool::new(3, true);
        let a = pool.allocate().expect("block");
        let b = pool.allocate().expect("block");
        let ia = pool.register(&a, ROOT, &[1]);
        let ib = pool.register(&b, ROOT, &[2]);
        drop(a); // released first: evicted first
        drop(b);
        let c = pool.allocate().expect("the free block");
        assert_eq!(c.id(), 2);
        let d = pool.allocate().expect("evicts a");
        assert_eq!(d.id(), 0);
        assert!(pool.lookup(ROOT, &[1]).is_none(), "evicted");
        assert_eq!(
            pool.lookup(ROOT, &[2]).map(|(h, i)| (h.id(), i)),
            Some((1, ib))
        );
        assert_ne!(ia, ib);
        // A new registration of the evicted tokens gets a new id: children of the old one
        // are unreachable.
        let e = pool.register(&d, ROOT, &[1]);
        assert_ne!(e, ia);
    }

    #[test]
    fn registering_a_duplicate_returns_the_cached_id_and_keeps_the_block_plain() {
        let pool = BlockPool::new(2, true);
        let a = pool.allocate().expect("block");
        let b = pool.allocate().expect("block");
        let ia = pool.register(&a, ROOT, &[7]);
        assert_eq!(pool.register(&b, ROOT, &[7]), ia);
        drop(b);
        assert_eq!(
            pool.num_evictable(),
            0,
            "the duplicate went back to the free list"
        );
        drop(a);
        assert_eq!(pool.num_evictable(), 1);
    }

    #[test]
    fn without_caching_nothing_is_kept() {
        let pool = BlockPool::new(2, false);
        let a = pool.allocate().expect("block");
        assert_eq!(pool.register(&a, ROOT, &[1]), ROOT);
        drop(a);
        assert_eq!(pool.num_evictable(), 0);
        assert!(pool.lookup(ROOT, &[1]).is_none());
    }
}
