//! Counters of what a mount does, so a benchmark can show where time went.
//! Read through the mount's `.zvmount-stats.json` file.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters, shared by every part of one daemon.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Range GETs sent to the store (after coalescing), and their bytes.
    pub store_requests: AtomicU64,
    pub store_bytes: AtomicU64,
    /// Blocks fetched and decoded (demand + prefetch).
    pub blocks_fetched: AtomicU64,
    pub blocks_prefetched: AtomicU64,
    pub mem_cache_hits: AtomicU64,
    pub disk_cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Reads that waited on a fetch already in flight (single-flight joins).
    pub inflight_joins: AtomicU64,
    pub verify_failures: AtomicU64,
    pub fetch_errors: AtomicU64,
    pub fuse_reads: AtomicU64,
    pub fuse_read_bytes: AtomicU64,
    /// Total nanoseconds FUSE reads spent waiting on a miss.
    pub miss_wait_ns: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            store_requests: g(&self.store_requests),
            store_bytes: g(&self.store_bytes),
            blocks_fetched: g(&self.blocks_fetched),
            blocks_prefetched: g(&self.blocks_prefetched),
            mem_cache_hits: g(&self.mem_cache_hits),
            disk_cache_hits: g(&self.disk_cache_hits),
            cache_misses: g(&self.cache_misses),
            inflight_joins: g(&self.inflight_joins),
            verify_failures: g(&self.verify_failures),
            fetch_errors: g(&self.fetch_errors),
            fuse_reads: g(&self.fuse_reads),
            fuse_read_bytes: g(&self.fuse_read_bytes),
            miss_wait_ns: g(&self.miss_wait_ns),
        }
    }
}

/// A point-in-time copy of [`Metrics`], as JSON in `.zvmount-stats.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MetricsSnapshot {
    pub store_requests: u64,
    pub store_bytes: u64,
    pub blocks_fetched: u64,
    pub blocks_prefetched: u64,
    pub mem_cache_hits: u64,
    pub disk_cache_hits: u64,
    pub cache_misses: u64,
    pub inflight_joins: u64,
    pub verify_failures: u64,
    pub fetch_errors: u64,
    pub fuse_reads: u64,
    pub fuse_read_bytes: u64,
    pub miss_wait_ns: u64,
}
