//! Fetches nobody waits for yet: sequential readahead, boot-profile
//! replay and background hydration start here, within the mount's prefetch
//! budget (hydration outside it, at the lowest priority).

use std::sync::Arc;

use super::{FetchKind, Image, ImageError, MAX_RUN_BLOCKS};
use crate::metrics::Metrics;
use crate::prefetch::{BudgetPermit, ProfileReplay, ReaderStream};
use zvhd2::{BlockLocation, RecordLocation};
use zvstore::coalesce::RunLimits;

impl Image {
    /// Starts background fetches of `blocks` (skipping zero, cached and
    /// in-flight ones) within the prefetch budget; blocks that do not fit
    /// the budget are skipped. Returns how many fetches were started.
    pub fn prefetch(self: &Arc<Self>, blocks: impl IntoIterator<Item = u64>) -> usize {
        self.readahead(blocks, &self.stream)
    }

    /// Starts replaying the sidecar's boot profile, if it has one: its
    /// blocks are fetched in order, [`ImageOptions::prefetch_concurrency`](super::ImageOptions::prefetch_concurrency)
    /// requests at a time, within the prefetch budget. The task ends when
    /// every block is ready (or failed); its result says how it went.
    ///
    /// The replay fetches at most its share of the mount's cache
    /// ([`MountContext::replay_cap`](super::MountContext::replay_cap)): a profile larger than the cache would
    /// otherwise evict its own first blocks, or another image's (the ones
    /// the guests need first), before the guests read them. The rest of the
    /// profile is left to demand reads and readahead.
    pub fn start_profile_prefetch(
        self: &Arc<Self>,
    ) -> Option<tokio::task::JoinHandle<ProfileReplay>> {
        let profile = self
            .layout
            .sidecar
            .as_ref()
            .map(|s| s.boot_profile.clone())
            .unwrap_or_default();
        if profile.is_empty() || self.mount.budget.capacity() == 0 {
            return None;
        }
        Some(self.prefetch_profile(profile))
    }

    /// Replays an explicit profile (block numbers in the order to fetch
    /// them), as [`Image::start_profile_prefetch`] does for the sidecar's.
    pub fn prefetch_profile(
        self: &Arc<Self>,
        profile: Vec<u64>,
    ) -> tokio::task::JoinHandle<ProfileReplay> {
        let image = Arc::clone(self);
        let cap = self.mount.replay_cap();
        tokio::spawn(crate::prefetch::replay::run(image, profile, cap))
    }

    /// Fetches `blocks` into the lower cache levels (not memory: a
    /// background fill must not evict what readers use) and waits for
    /// them; zero blocks are skipped. For [`crate::hydrate`]. The first
    /// failure is returned once every block has finished.
    pub async fn hydrate_blocks(self: &Arc<Self>, blocks: &[u64]) -> Result<(), ImageError> {
        let wanted: Vec<(u64, RecordLocation)> = blocks
            .iter()
            .filter_map(|&b| match self.layout.index.lookup(b)? {
                BlockLocation::Record(loc) => Some((b, loc)),
                BlockLocation::Zero => None,
            })
            .collect();
        let (waits, _) = self.claim(&wanted, FetchKind::Hydrate, BudgetPermit::none());
        let results = futures::future::join_all(waits.into_iter().map(|(_, w)| w)).await;
        for ((b, loc), r) in wanted.into_iter().zip(results) {
            r.map_err(|f| self.block_error(b, loc, f))?;
        }
        Ok(())
    }

    /// Whether `block` is in memory or being fetched (no recency update
    /// matters here: the caller is about to fetch it otherwise).
    pub(crate) fn is_present(&self, block: u64) -> bool {
        if self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&block)
        {
            return true;
        }
        self.cache.get_fast(&self.cache_key(block)).is_some()
    }

    /// Blocks of `blocks` that have a record and are not present, grouped
    /// into runs of records neighbouring in the file (kept in given order),
    /// each small enough to fit half the prefetch budget.
    pub(crate) fn prefetch_runs(
        &self,
        blocks: impl IntoIterator<Item = u64>,
    ) -> Vec<Vec<(u64, RecordLocation)>> {
        let candidates = blocks
            .into_iter()
            .filter_map(|b| match self.layout.index.lookup(b) {
                Some(BlockLocation::Record(loc)) if !self.is_present(b) => Some((b, loc)),
                _ => None,
            });
        crate::prefetch::planner::plan(candidates, &self.prefetch_limits())
    }

    /// The planner's limits for prefetch runs of this image.
    pub(super) fn prefetch_limits(&self) -> RunLimits {
        RunLimits {
            max_gap: self.options.coalesce_gap,
            max_bytes: self.options.max_coalesce_bytes,
            max_ranges: MAX_RUN_BLOCKS,
            // Highly compressible records are small, but each decodes to a block.
            cost_per_range: self.block_size,
            max_cost: self.mount.budget.capacity() / 2,
        }
    }

    /// Memory a prefetch of `run` holds while in flight: records + blocks.
    pub(crate) fn run_cost(&self, run: &[(u64, RecordLocation)]) -> u64 {
        run.iter()
            .map(|(_, loc)| u64::from(loc.size) + self.block_size)
            .sum()
    }

    /// Starts readahead of `blocks` for `stream` within the mount's
    /// budget. A run that does not fit now is skipped, except when
    /// `stream` holds no budget at all: then its first run waits for room
    /// in the background (a stream's first reservation is always granted,
    /// so no reader starves behind another). Returns the fetches started
    /// now.
    pub(super) fn readahead(
        self: &Arc<Self>,
        blocks: impl IntoIterator<Item = u64>,
        stream: &ReaderStream,
    ) -> usize {
        let budget = &self.mount.budget;
        if budget.capacity() == 0 {
            return 0;
        }
        let mut started = 0;
        for run in self.prefetch_runs(blocks) {
            let cost = self.run_cost(&run);
            if let Some(permit) = budget.try_acquire(cost, stream.budget()) {
                started += self.claim(&run, FetchKind::Readahead, permit).1;
            } else if let Some(waiting) = stream.budget().start_waiting() {
                let image = Arc::clone(self);
                let account = stream.budget().clone();
                tokio::spawn(async move {
                    let _waiting = waiting;
                    let Some(permit) = image.mount.budget.acquire(cost, &account).await else {
                        return;
                    };
                    // Read by a reader since the run was planned?
                    let run: Vec<_> = run
                        .into_iter()
                        .filter(|(b, _)| !image.is_present(*b))
                        .collect();
                    if !run.is_empty() {
                        image.claim(&run, FetchKind::Readahead, permit);
                    }
                });
            } else {
                Metrics::add(&self.metrics.prefetch_budget_skips, run.len() as u64);
            }
        }
        started
    }

    /// Profile recording and readahead, once per block a demand read of
    /// `stream` touches.
    pub(super) fn note_access(self: &Arc<Self>, block: u64, stream: &ReaderStream) {
        if let Some(r) = &self.recorder {
            r.record(block);
        }
        if self.options.readahead_blocks == 0 || self.mount.budget.capacity() == 0 {
            return;
        }
        if let Some(range) = stream.access(block) {
            Metrics::inc(&self.metrics.readahead_triggers);
            let range = range.start..range.end.min(self.block_count);
            self.readahead(range, stream);
        }
    }
}
