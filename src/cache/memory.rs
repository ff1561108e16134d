//! The in-memory LRU of decoded blocks, bounded in bytes.

use std::sync::Mutex;

use bytes::Bytes;
use lru::LruCache;

use super::{BlockCache, BlockKey, CacheTier};

/// An LRU of decoded blocks holding at most `capacity` bytes of block data.
///
/// One mutex guards the LRU; every critical section is a hash lookup or an
/// insert plus evictions (dropping a `Bytes` is a refcount decrement), so
/// readers never wait long. Returned `Bytes` share the cached buffer: a
/// reader slicing 4 KiB out of a 2 MiB block copies nothing.
#[derive(Debug)]
pub struct MemoryCache {
    capacity: u64,
    state: Mutex<MemoryState>,
}

#[derive(Debug)]
struct MemoryState {
    lru: LruCache<BlockKey, Bytes>,
    bytes: u64,
    evictions: u64,
}

/// What a [`MemoryCache`] holds right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryCacheStats {
    /// The byte limit it was built with (`--mem-cache`).
    pub capacity: u64,
    /// Bytes of decoded blocks held.
    pub bytes: u64,
    /// Blocks held.
    pub entries: u64,
    /// Blocks evicted to make room since it was created.
    pub evictions: u64,
}

impl MemoryCache {
    /// A cache holding at most `capacity` bytes of blocks (0 caches nothing).
    pub fn new(capacity: u64) -> MemoryCache {
        MemoryCache {
            capacity,
            state: Mutex::new(MemoryState {
                lru: LruCache::unbounded(),
                bytes: 0,
                evictions: 0,
            }),
        }
    }

    /// Current usage.
    pub fn stats(&self) -> MemoryCacheStats {
        let s = self.lock();
        MemoryCacheStats {
            capacity: self.capacity,
            bytes: s.bytes,
            entries: s.lru.len() as u64,
            evictions: s.evictions,
        }
    }

    /// Whether `key` is cached, without touching its recency.
    pub fn contains(&self, key: &BlockKey) -> bool {
        self.lock().lru.contains(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A panic while holding the lock cannot leave the LRU inconsistent
        // in a way that yields wrong bytes (entries are immutable), so a
        // poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl BlockCache for MemoryCache {
    fn get_fast(&self, key: &BlockKey) -> Option<Bytes> {
        self.lock().lru.get(key).cloned()
    }

    fn get(&self, key: &BlockKey) -> Option<(Bytes, CacheTier)> {
        self.get_fast(key).map(|b| (b, CacheTier::Memory))
    }

    fn capacity(&self) -> Option<u64> {
        Some(self.capacity)
    }

    fn put(&self, key: &BlockKey, block: Bytes) {
        let len = block.len() as u64;
        if len > self.capacity {
            return;
        }
        // Evicted blocks are dropped after the lock is released.
        let mut evicted = Vec::new();
        {
            let mut s = self.lock();
            if let Some(old) = s.lru.put(key.clone(), block) {
                s.bytes -= old.len() as u64;
                evicted.push(old);
            }
            s.bytes += len;
            while s.bytes > self.capacity {
                match s.lru.pop_lru() {
                    Some((_, old)) => {
                        s.bytes -= old.len() as u64;
                        s.evictions += 1;
                        evicted.push(old);
                    }
                    None => break,
                }
            }
        }
        drop(evicted);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn key(b: u64) -> BlockKey {
        BlockKey::new(Arc::from("img"), b)
    }

    #[test]
    fn byte_bound_holds_and_evicts_least_recent() {
        let cache = MemoryCache::new(10_000);
        for b in 0..10 {
            cache.put(&key(b), Bytes::from(vec![b as u8; 3000]));
            assert!(
                cache.stats().bytes <= 10_000,
                "over budget after put {b}: {:?}",
                cache.stats()
            );
        }
        let st = cache.stats();
        assert_eq!(st.entries, 3);
        assert_eq!(st.bytes, 9000);
        assert_eq!(st.evictions, 7);
        assert!(cache.get_fast(&key(0)).is_none());
        // Touch 7 so that 8 is the least recently used, then insert one more.
        assert_eq!(cache.get_fast(&key(7)).unwrap()[0], 7);
        cache.put(&key(10), Bytes::from(vec![10u8; 3000]));
        assert!(cache.get_fast(&key(8)).is_none());
        assert!(cache.get_fast(&key(7)).is_some());
        assert!(cache.get_fast(&key(10)).is_some());
    }

    #[test]
    fn oversized_blocks_are_not_cached_and_replacing_keeps_count() {
        let cache = MemoryCache::new(100);
        cache.put(&key(1), Bytes::from(vec![0u8; 101]));
        assert_eq!(cache.stats().entries, 0);
        cache.put(&key(1), Bytes::from(vec![1u8; 60]));
        cache.put(&key(1), Bytes::from(vec![2u8; 60]));
        assert_eq!(cache.stats().bytes, 60);
        assert_eq!(cache.get(&key(1)).unwrap().0[0], 2);
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let cache = MemoryCache::new(0);
        cache.put(&key(1), Bytes::from_static(b"x"));
        assert!(cache.get_fast(&key(1)).is_none());
    }
}
