//! Memory in front of disk: lookups try memory, then disk (promoting a disk
//! hit to memory); puts go to both.

use std::sync::Arc;

use bytes::Bytes;

use super::{BlockCache, BlockKey, CacheTier, FillClaim, Lookup};

/// Two caches composed: `front` (fast, e.g. [`super::MemoryCache`]) and
/// `back` (large, e.g. [`super::HostCache`]).
#[derive(Debug)]
pub struct TieredCache {
    front: Arc<dyn BlockCache>,
    back: Arc<dyn BlockCache>,
}

impl TieredCache {
    /// `front` is consulted first; a `back` hit is copied into `front`.
    pub fn new(front: Arc<dyn BlockCache>, back: Arc<dyn BlockCache>) -> TieredCache {
        TieredCache { front, back }
    }
}

impl BlockCache for TieredCache {
    fn get_fast(&self, key: &BlockKey) -> Option<Bytes> {
        self.front.get_fast(key).or_else(|| self.back.get_fast(key))
    }

    fn get(&self, key: &BlockKey) -> Option<(Bytes, CacheTier)> {
        if let Some(hit) = self.front.get(key) {
            return Some(hit);
        }
        let (bytes, tier) = self.back.get(key)?;
        self.front.put(key, bytes.clone());
        Some((bytes, tier))
    }

    fn may_block(&self) -> bool {
        self.front.may_block() || self.back.may_block()
    }

    /// What the larger level holds: a block evicted from memory is still
    /// on disk, a disk read away rather than a fetch.
    fn capacity(&self) -> Option<u64> {
        match (self.front.capacity(), self.back.capacity()) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        }
    }

    fn put(&self, key: &BlockKey, block: Bytes) {
        self.front.put(key, block.clone());
        self.back.put(key, block);
    }

    fn lookup(&self, key: &BlockKey, wait: bool) -> Lookup {
        if let Some(hit) = self.front.get(key) {
            return Lookup::Hit(hit.0, hit.1);
        }
        let found = self.back.lookup(key, wait);
        if let Lookup::Hit(bytes, _) = &found {
            self.front.put(key, bytes.clone());
        }
        found
    }

    fn fill(&self, key: &BlockKey, block: Bytes, claim: Option<FillClaim>, to_memory: bool) {
        self.front.fill(key, block.clone(), None, to_memory);
        self.back.fill(key, block, claim, to_memory);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::host::EntrySpec;
    use crate::cache::{HostCache, MemoryCache};

    #[test]
    fn host_hit_is_promoted_to_memory() {
        let dir = crate::cache::host::tests::test_dir();
        let spec = EntrySpec {
            id: "img".into(),
            source: "test".into(),
            block_size: 8192,
            block_count: 8,
            data_len: 8 * 8192,
            records: vec![true; 8],
            hashes: None,
            layout: Vec::new(),
        };
        let key = BlockKey::new(Arc::from("img"), 5);
        let data = Bytes::from(vec![9u8; 8192]);
        {
            let host = HostCache::open(dir.path(), 1 << 20).unwrap();
            host.attach(&spec).unwrap();
            let Lookup::Miss(Some(claim)) = host.lookup(&key, false) else {
                panic!("a claimable miss")
            };
            host.fill(&key, data.clone(), Some(claim), true);
            host.flush();
        }
        let mem = Arc::new(MemoryCache::new(1 << 20));
        let host = Arc::new(HostCache::open(dir.path(), 1 << 20).unwrap());
        host.attach(&spec).unwrap();
        let tiered = TieredCache::new(mem.clone(), host);
        assert!(tiered.may_block());
        assert!(tiered.get_fast(&key).is_none());
        assert!(matches!(tiered.lookup(&key, false), Lookup::Hit(b, CacheTier::Disk) if b == data));
        assert_eq!(tiered.get_fast(&key).unwrap(), data);
        assert_eq!(tiered.get(&key).unwrap().1, CacheTier::Memory);
        assert!(mem.contains(&key));
    }
}
