//! Demand reads: a block a reader waits for, from memory, a fetch in
//! flight (single-flight: one fetch per block however many wait) or a new
//! fetch, which [`Image::claim`] registers and starts.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{BlockFailure, FetchKind, Image, ImageError, InFlight, fetch};
use crate::metrics::Metrics;
use crate::prefetch::BudgetPermit;
use zvhd2::{BlockLocation, RecordLocation};
use zvstore::outage::Escalation;

impl Image {
    pub(super) async fn demand_block(self: &Arc<Self>, block: u64) -> Result<Bytes, ImageError> {
        let loc = match self.locate(block)? {
            BlockLocation::Zero => {
                Metrics::inc(&self.metrics.zero_block_reads);
                return Ok(self.zero_block.clone());
            }
            BlockLocation::Record(loc) => loc,
        };
        if let Some(hit) = self.cache.get_fast(&self.cache_key(block)) {
            Metrics::inc(&self.metrics.mem_cache_hits);
            return Ok(hit);
        }
        let (mut waits, _) = self.claim(&[(block, loc)], FetchKind::Demand, BudgetPermit::none());
        let wait = waits.pop().expect("one wait per claimed block").1;
        self.finish_demand(block, BlockWait::Fetch(loc, wait)).await
    }

    /// One wait per block of `first..=last`, starting fetches for misses.
    pub(super) fn demand_blocks(
        self: &Arc<Self>,
        first: u64,
        last: u64,
    ) -> Result<Vec<(u64, BlockWait)>, ImageError> {
        let mut out = Vec::with_capacity((last - first + 1) as usize);
        let mut missing = Vec::new();
        for b in first..=last {
            match self.locate(b)? {
                BlockLocation::Zero => {
                    Metrics::inc(&self.metrics.zero_block_reads);
                    out.push((b, BlockWait::Ready(self.zero_block.clone())));
                }
                BlockLocation::Record(loc) => match self.cache.get_fast(&self.cache_key(b)) {
                    Some(hit) => {
                        Metrics::inc(&self.metrics.mem_cache_hits);
                        out.push((b, BlockWait::Ready(hit)));
                    }
                    None => missing.push((b, loc)),
                },
            }
        }
        if !missing.is_empty() {
            let (waits, _) = self.claim(&missing, FetchKind::Demand, BudgetPermit::none());
            for ((b, loc), (_, wait)) in missing.into_iter().zip(waits) {
                out.push((b, BlockWait::Fetch(loc, wait)));
            }
            out.sort_by_key(|(b, _)| *b);
        }
        Ok(out)
    }

    pub(super) async fn finish_demand(
        self: &Arc<Self>,
        block: u64,
        wait: BlockWait,
    ) -> Result<Bytes, ImageError> {
        match wait {
            BlockWait::Ready(bytes) => Ok(bytes),
            BlockWait::Fetch(loc, fut) => {
                let started = Instant::now();
                let _waiting = DemandWaiting::new(&self.demand_waiting);
                let mut result = fut.await;
                // Joined a hydration fetch in the instant it gave way to
                // another demand read: fetch the block again, as a demand
                // read (a preempted fetch never reaches a reader).
                while matches!(&result, Err(f) if matches!(**f, BlockFailure::Preempted)) {
                    let (mut waits, _) =
                        self.claim(&[(block, loc)], FetchKind::Demand, BudgetPermit::none());
                    let again = waits.pop().expect("one wait per claimed block").1;
                    result = again.await;
                }
                let waited = started.elapsed();
                Metrics::add(&self.metrics.miss_wait_ns, waited.as_nanos() as u64);
                self.metrics.miss_wait.observe(waited);
                result.map_err(|failure| self.block_error(block, loc, failure))
            }
        }
    }

    /// Registers a fetch for each of `wanted` that is neither in flight nor
    /// in memory, and starts one background task fetching all of those (in
    /// coalesced runs). Returns a wait per wanted block, in order, and the
    /// number of fetches started.
    pub(crate) fn claim(
        self: &Arc<Self>,
        wanted: &[(u64, RecordLocation)],
        kind: FetchKind,
        permit: BudgetPermit,
    ) -> (Vec<(u64, InFlight)>, usize) {
        use futures::FutureExt;
        let mut waits = Vec::with_capacity(wanted.len());
        let mut started = Vec::new();
        // A background fetch can be raised to a demand read's priority and
        // deadline, should one join it (see `zvstore::outage::Escalation`).
        let escalation = (kind != FetchKind::Demand).then(|| Arc::new(Escalation::default()));
        let asked = Instant::now();
        {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            for &(block, loc) in wanted {
                if let Some((f, raise)) = map.get(&block) {
                    if kind == FetchKind::Demand {
                        Metrics::inc(&self.metrics.inflight_joins);
                        if let Some(raise) = raise {
                            raise.raise(asked);
                        }
                    }
                    waits.push((block, f.clone()));
                    continue;
                }
                // Checked again under the lock: a fetch that completed since
                // the caller looked has put its block in the cache before
                // leaving the map.
                if let Some(hit) = self.cache.get_fast(&self.cache_key(block)) {
                    if kind == FetchKind::Demand {
                        Metrics::inc(&self.metrics.mem_cache_hits);
                    }
                    waits.push((block, futures::future::ready(Ok(hit)).boxed().shared()));
                    continue;
                }
                let (tx, rx) = tokio::sync::oneshot::channel();
                let fut: InFlight = rx
                    .map(|r| {
                        r.unwrap_or_else(|_| {
                            Err(Arc::new(BlockFailure::Aborted("fetch task ended".into())))
                        })
                    })
                    .boxed()
                    .shared();
                map.insert(block, (fut.clone(), escalation.clone()));
                waits.push((block, fut));
                let pending = fetch::Pending::new(Arc::clone(self), block, loc, tx);
                started.push(if kind == FetchKind::Hydrate {
                    pending.cold()
                } else {
                    pending
                });
            }
        }
        let n = started.len();
        if n > 0 {
            let fetch = fetch::run(Arc::clone(self), started, kind, permit);
            match escalation {
                Some(e) => tokio::spawn(Escalation::scope(e, fetch)),
                None => tokio::spawn(fetch),
            };
        }
        (waits, n)
    }

    /// Demand reads waiting for a fetch at this moment.
    pub fn demand_waiting(&self) -> usize {
        self.demand_waiting
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Counts a demand read as waiting while alive.
pub(super) struct DemandWaiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> DemandWaiting<'a> {
    pub(super) fn new(counter: &'a std::sync::atomic::AtomicUsize) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        DemandWaiting(counter)
    }
}

impl Drop for DemandWaiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A block a demand read is waiting for.
pub(super) enum BlockWait {
    Ready(Bytes),
    Fetch(RecordLocation, InFlight),
}
