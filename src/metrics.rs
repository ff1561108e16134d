//! Counters of what a mount does, so a benchmark can show where time went.
//! Read through the mount's `.zvmount-stats.json` file
//! ([`Metrics::snapshot`] serialized as JSON).
//!
//! The image layer (`crate::image`) counts store traffic, cache outcomes,
//! fetches, prefetches and waits; the FUSE layer counts its own reads.
//!
//! Each served image has its own [`Metrics`]; the mount's totals are their
//! sum ([`crate::telemetry`]).
//!
//! Every counter is listed once, in the `counters!` invocation below:
//! it declares the atomic field of [`Metrics`], the plain field of
//! [`MetricsSnapshot`] (serialized under the same name) and the copy
//! between them. Instruments that are more than one number (a histogram,
//! counts by kind) follow the `;` with their type and snapshot type.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::telemetry::error_kind::{ErrorKindCounts, StoreErrorKind};
pub use crate::telemetry::histogram::{HistogramSnapshot, LatencyHistogram};

/// Declares [`Metrics`] and [`MetricsSnapshot`] from one list of fields.
macro_rules! counters {
    (
        $( $(#[doc = $doc:literal])* $name:ident, )*
        ;
        $( $(#[doc = $idoc:literal])* $iname:ident: $itype:ty => $isnap:ty, )*
    ) => {
        /// Monotonic counters (and two gauges) of one served image.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $( $(#[doc = $doc])* pub $name: AtomicU64, )*
            $( $(#[doc = $idoc])* pub $iname: $itype, )*
            /// Store outages, the time spent in them, the store calls that
            /// waited for the store to come back and the attempts retried
            /// (counted by `zvstore`'s breaker; every store of the daemon
            /// shares this).
            pub outage: std::sync::Arc<zvstore::outage::OutageStats>,
        }

        /// A point-in-time copy of [`Metrics`], as JSON in
        /// `.zvmount-stats.json`. Fields mean what the [`Metrics`] field of
        /// the same name means.
        #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(default)]
        pub struct MetricsSnapshot {
            $( $(#[doc = $doc])* pub $name: u64, )*
            $( $(#[doc = $idoc])* pub $iname: $isnap, )*
            /// Store outages declared (see `zvstore::outage`).
            pub outages: u64,
            /// Whole seconds spent in outages, one in progress included.
            pub outage_seconds: u64,
            /// Store calls that waited for the store to come back.
            pub reads_waited: u64,
            /// Store attempts sent again after a transient failure.
            pub retries: u64,
            /// Of `retries`, by the failure before them (keyed by
            /// `zvstore::outage::RetryKind::label`).
            pub retries_by_kind: BTreeMap<String, u64>,
            /// Whether the store is unreachable right now (an outage in
            /// progress).
            pub outage: bool,
        }

        impl Metrics {
            /// A consistent-enough copy of every counter (each read atomically).
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot {
                    $( $name: self.$name.load(Ordering::Relaxed), )*
                    $( $iname: self.$iname.snapshot(), )*
                    outages: self.outage.outages.load(Ordering::Relaxed),
                    outage_seconds: self.outage.outage_seconds(),
                    reads_waited: self.outage.reads_waited.load(Ordering::Relaxed),
                    retries: self.outage.retries.load(Ordering::Relaxed),
                    retries_by_kind: self.outage.retries_by_kind(),
                    outage: self.outage.in_outage(),
                }
            }
        }
    };
}

counters! {
    /// Range GETs the image layer sent to the store (after coalescing).
    store_requests,
    /// Bytes those GETs returned.
    store_bytes,
    /// Blocks fetched from the store and decoded (demand + prefetch).
    blocks_fetched,
    /// Of `blocks_fetched`, those started by a prefetch (readahead or profile).
    blocks_prefetched,
    /// Block lookups answered by the memory cache.
    mem_cache_hits,
    /// Block lookups answered by the disk cache.
    disk_cache_hits,
    /// Block lookups no cache could answer (a fetch followed).
    cache_misses,
    /// Reads that waited on a fetch already in flight (single-flight joins).
    inflight_joins,
    /// Blocks whose record or decoded bytes failed a check (CRC32C, BLAKE3,
    /// record framing, decoded length).
    verify_failures,
    /// Store GETs that failed (after the store's own retries).
    fetch_errors,
    /// Reads of blocks that are all zeros (answered with no fetch).
    zero_block_reads,
    /// Times a sequential detector started a readahead.
    readahead_triggers,
    /// Prefetch blocks skipped because the prefetch memory budget was spent.
    prefetch_budget_skips,
    /// Bytes of the mount's prefetch budget held right now (a gauge).
    prefetch_bytes_in_flight,
    /// The most bytes of the prefetch budget ever held at once (never more
    /// than the budget).
    prefetch_bytes_peak,
    /// Blocks of the boot profile started by the profile replay.
    profile_blocks,
    /// Blocks of the boot profile the replay left out: it had brought in
    /// its share of the mount's cache.
    profile_capped,
    /// Read requests served by the FUSE layer.
    fuse_reads,
    /// Bytes of those reads.
    fuse_read_bytes,
    /// Total nanoseconds demand reads spent waiting for a block that was not
    /// in memory (disk-cache reads, fetches, joins).
    miss_wait_ns,
    /// Total nanoseconds from handing fetched records to the decode threads
    /// until they were checked and decoded (queueing included).
    decode_ns,
    /// FUSE reads answered with EIO.
    fuse_read_errors,
    /// Blocks with data present in the host cache, of `hydrate_total`
    /// (levels, not counters: moved by hydration, summed over images).
    hydrate_done,
    /// Blocks with data in the images being hydrated.
    hydrate_total,
    /// Hydration GETs dropped mid-transfer to give the link to a demand
    /// read (their blocks are fetched again later).
    hydrate_preempted,
    ;
    /// Of `fetch_errors`, by kind (keyed by [`StoreErrorKind::label`]).
    store_errors: ErrorKindCounts => BTreeMap<String, u64>,
    /// Duration of each store GET as the image layer waits for it (the
    /// store's retries and backoff included).
    store_latency: LatencyHistogram => HistogramSnapshot,
    /// How long each demand read of a block not in memory waited for it
    /// (the distribution behind `miss_wait_ns`).
    miss_wait: LatencyHistogram => HistogramSnapshot,
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
        assert!(json.contains("\"store_bytes\":4096"), "{json}");
        assert!(json.contains("\"fuse_reads\":0"), "{json}");
        assert_eq!(
            serde_json::from_str::<MetricsSnapshot>(&json).unwrap(),
            snap
        );
    }
}
