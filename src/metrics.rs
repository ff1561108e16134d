//! Counters of what a mount does, so a benchmark can show where time went.
//! Read through the mount's `.zvmount-stats.json` file
//! ([`Metrics::snapshot`] serialized as JSON).
//!
//! The image layer (`crate::image`) counts store traffic, cache outcomes,
//! fetches, prefetches and waits; the FUSE layer counts its own reads.
//! Each served image has its own [`Metrics`]; the mount's totals are their
//! sum ([`crate::telemetry`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::telemetry::error_kind::{ErrorKindCounts, StoreErrorKind};
pub use crate::telemetry::histogram::{HistogramSnapshot, LatencyHistogram};

/// Monotonic counters of one served image.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Range GETs the image layer sent to the store (after coalescing).
    pub store_requests: AtomicU64,
    /// Bytes those GETs returned.
    pub store_bytes: AtomicU64,
    /// Blocks fetched from the store and decoded (demand + prefetch).
    pub blocks_fetched: AtomicU64,
    /// Of `blocks_fetched`, those started by a prefetch (readahead or profile).
    pub blocks_prefetched: AtomicU64,
    /// Block lookups answered by the memory cache.
    pub mem_cache_hits: AtomicU64,
    /// Block lookups answered by the disk cache.
    pub disk_cache_hits: AtomicU64,
    /// Block lookups no cache could answer (a fetch followed).
    pub cache_misses: AtomicU64,
    /// Reads that waited on a fetch already in flight (single-flight joins).
    pub inflight_joins: AtomicU64,
    /// Blocks whose record or decoded bytes failed a check (CRC32C, BLAKE3,
    /// record framing, decoded length).
    pub verify_failures: AtomicU64,
    /// Store GETs that failed (after the store's own retries).
    pub fetch_errors: AtomicU64,
    /// Reads of blocks that are all zeros (answered with no fetch).
    pub zero_block_reads: AtomicU64,
    /// Times the sequential detector started a readahead.
    pub readahead_triggers: AtomicU64,
    /// Prefetch blocks skipped because the prefetch memory budget was spent.
    pub prefetch_budget_skips: AtomicU64,
    /// Blocks of the boot profile started by the profile replay.
    pub profile_blocks: AtomicU64,
    /// Blocks of the boot profile the replay left out: it had brought in
    /// half of what the cache holds.
    pub profile_capped: AtomicU64,
    /// Read requests served by the FUSE layer, and their bytes.
    pub fuse_reads: AtomicU64,
    pub fuse_read_bytes: AtomicU64,
    /// Total nanoseconds demand reads spent waiting for a block that was not
    /// in memory (disk-cache reads, fetches, joins).
    pub miss_wait_ns: AtomicU64,
    /// Total nanoseconds from handing fetched records to the decode threads
    /// until they were checked and decoded (queueing included).
    pub decode_ns: AtomicU64,
    /// FUSE reads answered with EIO.
    pub fuse_read_errors: AtomicU64,
    /// Of `fetch_errors`, by kind.
    pub store_errors: ErrorKindCounts,
    /// Duration of each store GET as the image layer waits for it (the
    /// store's retries and backoff included).
    pub store_latency: LatencyHistogram,
    /// How long each demand read of a block not in memory waited for it
    /// (the distribution behind `miss_wait_ns`).
    pub miss_wait: LatencyHistogram,
}

impl Metrics {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A consistent-enough copy of every counter (each read atomically).
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
            zero_block_reads: g(&self.zero_block_reads),
            readahead_triggers: g(&self.readahead_triggers),
            prefetch_budget_skips: g(&self.prefetch_budget_skips),
            profile_blocks: g(&self.profile_blocks),
            profile_capped: g(&self.profile_capped),
            fuse_reads: g(&self.fuse_reads),
            fuse_read_bytes: g(&self.fuse_read_bytes),
            miss_wait_ns: g(&self.miss_wait_ns),
            decode_ns: g(&self.decode_ns),
            fuse_read_errors: g(&self.fuse_read_errors),
            store_errors: self.store_errors.snapshot(),
            store_latency: self.store_latency.snapshot(),
            miss_wait: self.miss_wait.snapshot(),
        }
    }
}

/// A point-in-time copy of [`Metrics`], as JSON in `.zvmount-stats.json`.
/// Fields mean what the [`Metrics`] field of the same name means.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
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
    pub zero_block_reads: u64,
    pub readahead_triggers: u64,
    pub prefetch_budget_skips: u64,
    pub profile_blocks: u64,
    pub profile_capped: u64,
    pub fuse_reads: u64,
    pub fuse_read_bytes: u64,
    pub miss_wait_ns: u64,
    pub decode_ns: u64,
    pub fuse_read_errors: u64,
    /// Store failures keyed by [`StoreErrorKind::label`].
    pub store_errors: BTreeMap<String, u64>,
    pub store_latency: HistogramSnapshot,
    pub miss_wait: HistogramSnapshot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trips_as_json() {
        let m = Metrics::default();
        Metrics::add(&m.store_bytes, 4096);
        Metrics::inc(&m.store_requests);
        let snap = m.snapshot();
        assert_eq!(snap.store_requests, 1);
        let json = serde_json::to_string(&snap).unwrap();
        assert_eq!(
            serde_json::from_str::<MetricsSnapshot>(&json).unwrap(),
            snap
        );
    }
}
