//! Decoded-block caches: one trait, [`BlockCache`], with a memory LRU
//! ([`MemoryCache`]), the host-wide image cache on disk ([`HostCache`],
//! shared by every process on the host) and the two composed
//! ([`TieredCache`]). A cache never returns bytes it cannot vouch for: a
//! block not marked durable, or failing the sidecar check, is a miss.
//!
//! Caches hold *decoded, verified* blocks keyed by the image's content
//! identity, so two versions of an image never share entries. They know
//! nothing about stores, formats or FUSE.

use std::sync::Arc;

use bytes::Bytes;

pub mod host;
pub mod memory;
pub mod tiered;

pub use host::{HostCache, HostCacheStats};
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
    /// The process's memory LRU of decoded blocks.
    Memory,
    /// The host-wide disk cache shared by every process.
    Disk,
}

/// The right to fill a block that a [`BlockCache::lookup`] missed, handed
/// back with the block to [`BlockCache::fill`]. While it is held, other
/// processes sharing the cache wait for the block instead of fetching it;
/// dropping it (a failed fetch) lets them go.
pub struct FillClaim(Box<dyn std::any::Any + Send + Sync>);

impl FillClaim {
    /// Wraps a cache's own claim type.
    pub fn new<T: std::any::Any + Send + Sync>(claim: T) -> FillClaim {
        FillClaim(Box::new(claim))
    }

    /// The cache's own claim, if it is a `T`.
    pub fn downcast<T: std::any::Any>(self) -> Option<T> {
        self.0.downcast::<T>().ok().map(|b| *b)
    }
}

impl std::fmt::Debug for FillClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FillClaim")
    }
}

/// What a [`BlockCache::lookup`] found.
#[derive(Debug)]
pub enum Lookup {
    /// The block, and the level that had it.
    Hit(Bytes, CacheTier),
    /// Not cached: fetch it, then [`BlockCache::fill`] with the claim (if any).
    Miss(Option<FillClaim>),
    /// Another process is filling it right now (only when not waiting):
    /// look again with `wait` once there is nothing else to do.
    Busy,
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

    /// A lookup that, on a miss, also claims the block for filling so that
    /// other processes sharing the cache don't fetch it too. With `wait`,
    /// waits for another process's fill to end instead of answering
    /// [`Lookup::Busy`]. May block (see [`BlockCache::may_block`]).
    fn lookup(&self, key: &BlockKey, _wait: bool) -> Lookup {
        match self.get(key) {
            Some((bytes, tier)) => Lookup::Hit(bytes, tier),
            None => Lookup::Miss(None),
        }
    }

    /// Stores a block fetched after a [`BlockCache::lookup`] miss, with its
    /// claim. `to_memory` false keeps it out of memory levels (background
    /// hydration must not evict what readers use). Never blocks on I/O.
    fn fill(&self, key: &BlockKey, block: Bytes, _claim: Option<FillClaim>, to_memory: bool) {
        if to_memory {
            self.put(key, block);
        }
    }

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
