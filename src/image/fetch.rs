//! Fetching blocks: lower cache levels first, then coalesced range GETs of
//! the records, verification and decoding on the decode threads
//! ([`super::decode`]), and completion of every waiter (success cached,
//! failure not).
//!
//! With [`super::ImageOptions::fetch_align`], each GET is widened to whole
//! aligned slices of the image (so a caching tier sees the same ranges from
//! every host), and the other records that came along wholly inside the
//! slices are decoded and cached too rather than thrown away.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{FetchKind, Image};
use crate::cache::{FillClaim, Lookup};
use crate::metrics::{Metrics, StoreErrorKind};
use crate::prefetch::BudgetPermit;
use zvhd2::verify::{self, VerifyError, VerifyFailure};
use zvhd2::{BlockLocation, RecordLocation, SidecarEntry};
use zvstore::coalesce::{RunLimits, align_runs, plan_runs};
use zvstore::outage::Priority;
use zvstore::{StoreError, StoreResult};

/// Why one block could not be produced. Shared by every reader that waited
/// for the block; turned into an [`super::ImageError`] naming image, block
/// and record offset.
#[derive(Debug, thiserror::Error)]
pub enum BlockFailure {
    /// The range GET failed (after the store's retries).
    #[error("fetch failed: {0}")]
    Fetch(#[source] StoreError),
    /// The store returned a different number of bytes than asked for.
    #[error("fetch returned {actual} bytes for a {expected}-byte range")]
    ShortRead {
        /// The range's length in bytes.
        expected: u64,
        /// Bytes the store returned.
        actual: u64,
    },
    /// The record or the decoded block failed a check of
    /// [`zvhd2::verify`] (framing, length, CRC32C, BLAKE3, placement).
    #[error("{0}")]
    Verify(#[source] VerifyError),
    /// The fetch task stopped before finishing (panic or shutdown).
    #[error("fetch abandoned: {0}")]
    Aborted(String),
    /// A background hydration GET gave way to a demand read's GET (it was
    /// dropped mid-transfer so the demand read has the link to itself).
    /// Nobody waiting for the block sees this: a demand read that joined
    /// the fetch keeps it from being preempted, and one that raced in
    /// fetches the block again.
    #[error("hydration fetch gave way to a demand read")]
    Preempted,
}

impl BlockFailure {
    /// Whether the bytes were wrong (rather than not delivered).
    pub fn is_corruption(&self) -> bool {
        matches!(self, BlockFailure::Verify(_))
    }
}

/// A block this task promised to produce. Dropping it unfinished (a panic,
/// a cancelled runtime) releases its waiters with [`BlockFailure::Aborted`]
/// and unregisters it, so the block is not stuck.
pub(super) struct Pending {
    image: Arc<Image>,
    pub(super) block: u64,
    pub(super) loc: RecordLocation,
    tx: Option<oneshot::Sender<Result<Bytes, Arc<BlockFailure>>>>,
    /// The cache's claim to fill this block, from a missed lookup; handed
    /// back with the block, or dropped (released) if the fetch fails.
    claim: Option<FillClaim>,
    /// Whether the block goes to memory levels too (not for hydration).
    to_memory: bool,
}

impl Pending {
    pub(super) fn new(
        image: Arc<Image>,
        block: u64,
        loc: RecordLocation,
        tx: oneshot::Sender<Result<Bytes, Arc<BlockFailure>>>,
    ) -> Pending {
        Pending {
            image,
            block,
            loc,
            tx: Some(tx),
            claim: None,
            to_memory: true,
        }
    }

    /// Keeps the block out of memory caches (background hydration).
    pub(super) fn cold(mut self) -> Pending {
        self.to_memory = false;
        self
    }

    /// Hands `result` to every waiter. A fetched block is cached first and
    /// unregistered second, so a reader arriving in between finds it in one
    /// of the two places (see `Image::claim`).
    fn complete(mut self, result: Result<Bytes, Arc<BlockFailure>>, cache_it: bool) {
        if let (Ok(bytes), true) = (&result, cache_it) {
            self.image.cache.fill(
                &self.image.cache_key(self.block),
                bytes.clone(),
                self.claim.take(),
                self.to_memory,
            );
        }
        self.finish(result);
    }

    fn finish(&mut self, result: Result<Bytes, Arc<BlockFailure>>) {
        if let Some(tx) = self.tx.take() {
            self.image
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.block);
            let _ = tx.send(result);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(Err(Arc::new(BlockFailure::Aborted(
            "fetch task ended early".into(),
        ))));
    }
}

/// Produces every block of `pending`: from the lower cache levels when they
/// have it, else from the store in coalesced runs. Holds `permit` (the
/// prefetch budget) until all are done.
///
/// A block another process sharing the cache is filling right now is
/// waited for only after this task's own fetches are under way, one block
/// at a time, so that two processes never wait on each other.
pub(super) async fn run(
    image: Arc<Image>,
    pending: Vec<Pending>,
    kind: FetchKind,
    permit: BudgetPermit,
) {
    let _permit = permit;
    if !image.cache.may_block() {
        fetch_all(&image, pending, kind).await;
        return;
    }
    let (remaining, busy) = lookup_all(&image, pending, kind, false).await;
    let own = fetch_all(&image, remaining, kind);
    let others = async {
        for p in busy {
            let (remaining, _) = lookup_all(&image, vec![p], kind, true).await;
            fetch_all(&image, remaining, kind).await;
        }
    };
    futures::future::join(own, others).await;
}

/// Looks `pending` up in the cache (claiming misses for filling): hits are
/// completed, misses returned to fetch, and blocks another process is
/// filling returned apart (never with `wait`).
async fn lookup_all(
    image: &Arc<Image>,
    pending: Vec<Pending>,
    kind: FetchKind,
    wait: bool,
) -> (Vec<Pending>, Vec<Pending>) {
    let demand = kind == FetchKind::Demand;
    let cache = Arc::clone(&image.cache);
    let keys: Vec<_> = pending.iter().map(|p| image.cache_key(p.block)).collect();
    let looked = tokio::task::spawn_blocking(move || {
        keys.iter()
            .map(|k| cache.lookup(k, wait))
            .collect::<Vec<_>>()
    })
    .await;
    let Ok(found) = looked else {
        // A panicking cache lookup is a miss, not a failed read.
        return (pending, Vec::new());
    };
    let mut remaining = Vec::with_capacity(pending.len());
    let mut busy = Vec::new();
    for (mut p, lookup) in pending.into_iter().zip(found) {
        match lookup {
            Lookup::Hit(bytes, _) if bytes.len() as u64 == image.block_size => {
                if demand {
                    Metrics::inc(&image.metrics.disk_cache_hits);
                }
                // The cache has it already (and promoted it).
                p.complete(Ok(bytes), false);
            }
            // An entry of the wrong length is never handed out: fetch it again.
            Lookup::Hit(..) => remaining.push(p),
            Lookup::Miss(claim) => {
                p.claim = claim;
                remaining.push(p);
            }
            Lookup::Busy => busy.push(p),
        }
    }
    (remaining, busy)
}

/// Fetches `pending` from the store in coalesced runs.
async fn fetch_all(image: &Arc<Image>, pending: Vec<Pending>, kind: FetchKind) {
    if pending.is_empty() {
        return;
    }
    if kind == FetchKind::Demand {
        Metrics::add(&image.metrics.cache_misses, pending.len() as u64);
    }
    let groups = coalesce(
        pending,
        image.options.coalesce_gap,
        image.options.max_coalesce_bytes,
        image.options.fetch_align,
        image.layout.meta.size,
    );
    futures::future::join_all(
        groups
            .into_iter()
            .map(|(g, span)| fetch_group(image, g, span, kind)),
    )
    .await;
}

/// Groups pending blocks into runs of neighbouring records (sorted by
/// offset), each fetched with one GET of the span given with it, by the one
/// coalescing planner (spans widened to `align`-byte slices of the
/// `object_len`-byte image when `align` is not 0).
fn coalesce(
    mut pending: Vec<Pending>,
    gap: u64,
    max_bytes: u64,
    align: u64,
    object_len: u64,
) -> Vec<(Vec<Pending>, Range<u64>)> {
    pending.sort_by_key(|p| p.loc.offset);
    let ranges: Vec<_> = pending
        .iter()
        .map(|p| p.loc.offset..p.loc.offset + u64::from(p.loc.size))
        .collect();
    let limits = RunLimits {
        max_ranges: super::MAX_RUN_BLOCKS,
        ..RunLimits::new(gap, max_bytes)
    };
    let runs = align_runs(&ranges, plan_runs(&ranges, &limits), align, object_len);
    let mut pending = pending.into_iter();
    runs.into_iter()
        .map(|(run, span)| (pending.by_ref().take(run.len()).collect(), span))
        .collect()
}

/// One GET of `span` (which holds every record of `group`), then every
/// record of it decoded: the group's, and, when the span was widened to
/// aligned slices, the ones that came along.
async fn fetch_group(
    image: &Arc<Image>,
    mut group: Vec<Pending>,
    span: Range<u64>,
    kind: FetchKind,
) {
    let (start, end) = (span.start, span.end);
    let m = &image.metrics;
    Metrics::inc(&m.store_requests);
    let sent = Instant::now();
    let fetched = match kind {
        FetchKind::Hydrate => match preemptible_get(image, start..end).await {
            Some(fetched) => fetched,
            None => {
                Metrics::inc(&m.hydrate_preempted);
                for p in group {
                    p.complete(Err(Arc::new(BlockFailure::Preempted)), false);
                }
                return;
            }
        },
        FetchKind::Demand => {
            // Hydration GETs in flight give way (see `preemptible_get`).
            image.mount.demand_fetches.notify_waiters();
            get(image, start..end, kind).await
        }
        FetchKind::Readahead | FetchKind::Profile => get(image, start..end, kind).await,
    };
    m.store_latency.observe(sent.elapsed());
    let bytes = match fetched {
        Ok(bytes) if bytes.len() as u64 == end - start => bytes,
        Ok(bytes) => {
            Metrics::inc(&m.fetch_errors);
            m.store_errors.inc(StoreErrorKind::ShortRead);
            let failure = Arc::new(BlockFailure::ShortRead {
                expected: end - start,
                actual: bytes.len() as u64,
            });
            fail_group(image, group, failure);
            return;
        }
        Err(e) => {
            Metrics::inc(&m.fetch_errors);
            m.store_errors.inc(StoreErrorKind::of(&e));
            fail_group(image, group, Arc::new(BlockFailure::Fetch(e)));
            return;
        }
    };
    Metrics::add(&m.store_bytes, bytes.len() as u64);
    if image.options.fetch_align > 0 {
        let cold = group.iter().all(|p| !p.to_memory);
        let extra = image.came_along(&span, &group, cold);
        group.extend(extra);
    }
    let decodes = group.into_iter().map(|p| {
        let from = (p.loc.offset - start) as usize;
        let record = bytes.slice(from..from + p.loc.size as usize);
        async move {
            let mut result = decode(image, p.block, p.loc, record).await;
            // Bytes can be damaged in transit: fetch a record that fails a
            // check once more before the reader gets EIO (never the bytes).
            // A sidecar that does not describe the record stays wrong.
            if let Err(failure) = &result
                && failure.is_corruption()
                && !matches!(
                    &**failure,
                    BlockFailure::Verify(VerifyError {
                        failure: VerifyFailure::Placement { .. } | VerifyFailure::SidecarHasData,
                        ..
                    })
                )
            {
                tracing::warn!(
                    "{}; fetching the record once more",
                    image.block_error(p.block, p.loc, Arc::clone(failure))
                );
                result = refetch(image, p.block, p.loc, kind).await;
            }
            match &result {
                Ok(_) => {
                    Metrics::inc(&m.blocks_fetched);
                    if kind != FetchKind::Demand {
                        Metrics::inc(&m.blocks_prefetched);
                    }
                }
                Err(failure) => {
                    tracing::warn!("{}", image.block_error(p.block, p.loc, Arc::clone(failure)));
                }
            }
            p.complete(result, true);
        }
    });
    futures::future::join_all(decodes).await;
}

/// One range GET of the image. Prefetches go to the store at
/// [`Priority::Prefetch`]: during an outage they pause behind demand reads.
async fn get(image: &Image, range: std::ops::Range<u64>, kind: FetchKind) -> StoreResult<Bytes> {
    let fut = image
        .store
        .get_range(&image.layout.key, range, Some(&image.layout.meta));
    match kind {
        FetchKind::Demand => fut.await,
        FetchKind::Readahead | FetchKind::Profile | FetchKind::Hydrate => {
            Priority::Prefetch.scope(fut).await
        }
    }
}

/// A hydration GET that gives way when a demand read starts a GET of its
/// own: `None` when it was dropped for that (the connection is closed
/// mid-body, so the demand read has the link to itself rather than a share
/// of it beside up to a few 8 MiB hydration transfers). A fetch that a
/// demand read joined is not dropped: it runs on at demand priority.
async fn preemptible_get(image: &Image, range: Range<u64>) -> Option<StoreResult<Bytes>> {
    let preempt = image.mount.demand_fetches.notified();
    let joined = zvstore::outage::Escalation::current();
    let fetch = get(image, range, FetchKind::Hydrate);
    tokio::pin!(preempt, fetch);
    tokio::select! {
        fetched = &mut fetch => Some(fetched),
        () = &mut preempt => {
            if joined.is_some_and(|e| e.raised_at().is_some()) {
                Some(fetch.await)
            } else {
                None
            }
        }
    }
}

/// The second (and last) try at a record that failed a check.
async fn refetch(
    image: &Arc<Image>,
    block: u64,
    loc: RecordLocation,
    kind: FetchKind,
) -> Result<Bytes, Arc<BlockFailure>> {
    let m = &image.metrics;
    Metrics::inc(&m.store_requests);
    let range = loc.offset..loc.offset + u64::from(loc.size);
    match get(image, range, kind).await {
        Ok(record) if record.len() == loc.size as usize => {
            Metrics::add(&m.store_bytes, record.len() as u64);
            decode(image, block, loc, record).await
        }
        Ok(record) => {
            Metrics::inc(&m.fetch_errors);
            Err(Arc::new(BlockFailure::ShortRead {
                expected: u64::from(loc.size),
                actual: record.len() as u64,
            }))
        }
        Err(e) => {
            Metrics::inc(&m.fetch_errors);
            Err(Arc::new(BlockFailure::Fetch(e)))
        }
    }
}

fn fail_group(image: &Image, group: Vec<Pending>, failure: Arc<BlockFailure>) {
    let first = &group[0];
    tracing::warn!(
        blocks = group.len(),
        "{}",
        image.block_error(first.block, first.loc, Arc::clone(&failure))
    );
    for p in group {
        p.complete(Err(Arc::clone(&failure)), false);
    }
}

/// Verifies and decodes one record on the decode threads, at most
/// `decode_threads` records at a time, by the rules of [`zvhd2::verify`].
/// With a sidecar, the record's CRC32C is computed on one thread while
/// another decodes it (the block is handed out only when both passed, and a
/// CRC mismatch is what is reported when both failed: the stored bytes are
/// not the sidecar's, whatever their decode said).
async fn decode(
    image: &Arc<Image>,
    block: u64,
    loc: RecordLocation,
    record: Bytes,
) -> Result<Bytes, Arc<BlockFailure>> {
    let _slot = image
        .decode_limit
        .acquire()
        .await
        .map_err(|_| Arc::new(BlockFailure::Aborted("decoder closed".into())))?;
    let failed = |e: VerifyError| {
        Metrics::inc(&image.metrics.verify_failures);
        Arc::new(BlockFailure::Verify(e))
    };
    let started = Instant::now();
    let entry = image.sidecar_entry(block);
    if let Some(e) = &entry {
        verify::check_placement(
            block,
            BlockLocation::Record(loc),
            e,
            image.block_size as u32,
        )
        .map_err(failed)?;
    }
    let warm = image.block_size as usize;
    let crc = entry.map(|e| {
        let record = record.clone();
        (e, super::decode::run(warm, move || crc32c::crc32c(&record)))
    });
    let img = Arc::clone(image);
    let decoded = super::decode::run(warm, move || img.decode_checked(block, loc, &record, entry));
    let abandoned = || Arc::new(BlockFailure::Aborted("decoder thread gave up".into()));
    let decoded = match crc {
        Some((e, crc)) => {
            let (actual, decoded) = futures::future::join(crc, decoded).await;
            let actual = actual.ok_or_else(abandoned)?;
            verify::check_record_crc(block, loc.offset, actual, &e).map_err(failed)?;
            decoded
        }
        None => decoded.await,
    };
    let bytes = decoded.ok_or_else(abandoned)?.map_err(failed)?;
    Metrics::add(
        &image.metrics.decode_ns,
        started.elapsed().as_nanos() as u64,
    );
    Ok(bytes)
}

impl Image {
    /// The records lying wholly inside `span` that are neither in `group`,
    /// nor in memory, nor being fetched: registered as in flight (a reader
    /// arriving now waits for them rather than fetching them again) and
    /// returned to be decoded from the bytes already fetched. `cold` keeps
    /// them out of memory levels.
    fn came_along(
        self: &Arc<Self>,
        span: &Range<u64>,
        group: &[Pending],
        cold: bool,
    ) -> Vec<Pending> {
        use futures::FutureExt;
        let records = self.records_by_offset();
        let from = records.partition_point(|&(offset, _, _)| offset < span.start);
        let mut out = Vec::new();
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        for &(offset, size, block) in &records[from..] {
            if offset >= span.end {
                break;
            }
            if offset + u64::from(size) > span.end
                || group.iter().any(|p| p.block == block)
                || map.contains_key(&block)
                || self.cache.get_fast(&self.cache_key(block)).is_some()
            {
                continue;
            }
            let (tx, rx) = oneshot::channel();
            let fut: super::InFlight = rx
                .map(|r| {
                    r.unwrap_or_else(|_| {
                        Err(Arc::new(BlockFailure::Aborted("fetch task ended".into())))
                    })
                })
                .boxed()
                .shared();
            // A reader that joins this block raises the fetch it rides on.
            map.insert(block, (fut, zvstore::outage::Escalation::current()));
            let loc = RecordLocation { offset, size };
            let p = Pending::new(Arc::clone(self), block, loc, tx);
            out.push(if cold { p.cold() } else { p });
        }
        out
    }

    /// Every record of the image as (offset, size, block), by offset; built
    /// once, on the first aligned fetch.
    fn records_by_offset(&self) -> &[(u64, u32, u64)] {
        self.record_order.get_or_init(|| {
            let mut v: Vec<(u64, u32, u64)> = (0..self.block_count)
                .filter_map(|b| match self.layout.index.lookup(b)? {
                    BlockLocation::Record(loc) => Some((loc.offset, loc.size, b)),
                    BlockLocation::Zero => None,
                })
                .collect();
            v.sort_unstable();
            v
        })
    }

    /// The sidecar's entry for `block` when records are verified.
    fn sidecar_entry(&self, block: u64) -> Option<SidecarEntry> {
        let sidecar = self
            .layout
            .sidecar
            .as_ref()
            .filter(|_| self.options.verify)?;
        // The sidecar was checked against the image at open: one entry a block.
        sidecar.entries.get(block as usize).copied()
    }

    /// [`verify::decode_checked`] into a buffer whose pages are already
    /// resident when the pool has one (see `super::decode`): it goes to the
    /// cache on success and back to the pool on failure.
    fn decode_checked(
        &self,
        block: u64,
        loc: RecordLocation,
        record: &[u8],
        entry: Option<SidecarEntry>,
    ) -> Result<Bytes, VerifyError> {
        let mut decoded = super::decode::take_buffer(self.block_size as usize);
        let checked = verify::decode_checked(
            record,
            block,
            loc,
            entry.as_ref(),
            self.block_size as u32,
            self.layout.header.compression(),
            &mut decoded,
        );
        if let Err(e) = checked {
            super::decode::give_back(decoded);
            return Err(e);
        }
        Ok(Bytes::from(decoded))
    }
}
