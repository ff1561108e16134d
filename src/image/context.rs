//! [`MountContext`]: what every image of one mount shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cache::BlockCache;
use crate::metrics::Metrics;
use crate::prefetch::PrefetchBudget;

use super::MountLimits;

/// What every image of one mount shares: the block cache, the counters,
/// one prefetch budget, the decode slots, and the cache share profile
/// replays may fill. Create one per mount and open every image into it
/// with [`Image::in_mount`](super::Image::in_mount).
#[derive(Debug)]
pub struct MountContext {
    pub(super) cache: Arc<dyn BlockCache>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) budget: PrefetchBudget,
    pub(super) decode_limit: Arc<tokio::sync::Semaphore>,
    /// Images opened into this mount (the replay share is split among them).
    pub(super) images: AtomicU64,
    /// Woken each time a demand read sends a GET: background hydration
    /// GETs in flight give way to it.
    pub(super) demand_fetches: tokio::sync::Notify,
}

impl MountContext {
    /// A context over `cache` and `metrics` with `limits`.
    pub fn new(
        cache: Arc<dyn BlockCache>,
        metrics: Arc<Metrics>,
        limits: MountLimits,
    ) -> Arc<MountContext> {
        let decode_threads = match limits.decode_threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            n => n,
        };
        Arc::new(MountContext {
            budget: PrefetchBudget::new(
                limits.prefetch_budget_bytes,
                limits.prefetch_concurrency,
                Arc::clone(&metrics),
            ),
            cache,
            metrics,
            decode_limit: Arc::new(tokio::sync::Semaphore::new(decode_threads)),
            images: AtomicU64::new(0),
            demand_fetches: tokio::sync::Notify::new(),
        })
    }

    /// The mount's prefetch budget.
    pub fn budget(&self) -> &PrefetchBudget {
        &self.budget
    }

    /// The mount's block cache.
    pub fn cache(&self) -> &Arc<dyn BlockCache> {
        &self.cache
    }

    /// The mount's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Bytes of blocks one image's boot-profile replay may bring in: half
    /// of what the mount's cache holds, split evenly between the images
    /// opened into the mount. More would evict blocks the guests need
    /// first (a replay's own head, or another image's) before they read
    /// them.
    pub fn replay_cap(&self) -> u64 {
        let images = self.images.load(Ordering::Relaxed).max(1);
        self.cache.capacity().map_or(u64::MAX, |c| c / 2 / images)
    }
}
