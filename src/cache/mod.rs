//! Decoded-block caches: one trait, [`BlockCache`], with a memory LRU
//! ([`MemoryCache`]), a persistent disk cache ([`DiskCache`]) and the two
//! composed ([`TieredCache`]). A cache never returns bytes it cannot vouch
//! for: a torn or foreign disk entry is a miss.
//!
//! Caches hold *decoded, verified* blocks keyed by the image's content
//! identity, so two versions of an image never share entries. They know
//! nothing about stores, formats or FUSE.

use std::sync::Arc;

use bytes::Bytes;

pub mod disk;
pub mod memory;
pub mod tiered;

pub use disk::{DiskCache, DiskCacheStats};
pub use memory::{MemoryCache, MemoryCacheStats};
pub use tiered::TieredCache;

/// Cache key: the image's identity (so blocks of different images or
/// versions never mix) and the block number.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// Stable identity of the image's content (`ImageLayout::cache_id`).
    pub image: Arc<str>,
    /// Block number within the image.
    pub block: u64,
}

impl BlockKey {
    /// A key for `block` of the image identified by `image`.
    pub fn new(image: Arc<str>, block: u64) -> BlockKey {
        BlockKey { image, block }
    }
}

/// Which level of a cache answered a lookup (for metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheTier {
    Memory,
    Disk,
}

/// A store of decoded blocks.
///
/// The read path calls [`BlockCache::get_fast`] inline on the async runtime,
/// so it must never do I/O; [`BlockCache::get`] may read a disk and is called
/// from a blocking context when [`BlockCache::may_block`] says so.
/// [`BlockCache::put`] never blocks on I/O (disk writes happen in the
/// background).
pub trait BlockCache: Send + Sync + std::fmt::Debug {
    /// Lookup without I/O (memory levels only); `None` when not there.
    fn get_fast(&self, key: &BlockKey) -> Option<Bytes>;

    /// Full lookup through every level; a lower-level hit is promoted.
    /// May block on disk I/O when [`BlockCache::may_block`] is true.
    fn get(&self, key: &BlockKey) -> Option<(Bytes, CacheTier)>;

    /// Whether [`BlockCache::get`] can do blocking I/O (and so must run off
    /// the async runtime, e.g. in `spawn_blocking`).
    fn may_block(&self) -> bool {
        false
    }

    /// Stores a decoded block. Never blocks on I/O; a cache may drop it.
    fn put(&self, key: &BlockKey, block: Bytes);

    /// Bytes of blocks the cache keeps before it starts evicting, if it
    /// has such a bound. Prefetchers use it not to fetch so much that they
    /// evict what they fetched first.
    fn capacity(&self) -> Option<u64> {
        None
    }
}

/// A cache that holds nothing (every lookup misses). For tests and for
/// running with caching disabled.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCache;

impl BlockCache for NoCache {
    fn get_fast(&self, _key: &BlockKey) -> Option<Bytes> {
        None
    }

    fn get(&self, _key: &BlockKey) -> Option<(Bytes, CacheTier)> {
        None
    }

    fn put(&self, _key: &BlockKey, _block: Bytes) {}

    fn capacity(&self) -> Option<u64> {
        Some(0)
    }
}
