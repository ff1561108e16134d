//! Background hydration: fetch every block of an image that the host cache
//! does not hold yet, behind the guest, until the image is local.
//!
//! It runs at the lowest priority: it holds back whenever a demand read is
//! waiting for a fetch, and its GETs in flight are dropped mid-transfer
//! (and sent again later) the moment a demand read sends one, so the
//! demand read has the link to itself. It keeps at most a few runs in
//! flight, no more than the host cache writes, may be capped in bytes per
//! second, and keeps its blocks out of the memory cache. A
//! failing store pauses it (with growing back-off) instead of spinning.
//! The host cache's map is its only state, so after a restart it resumes
//! with what is still missing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::cache::HostCache;
use crate::cache::host::CacheEntry;
use crate::image::{Image, ImageError};
use crate::metrics::Metrics;
use zvhd2::BlockLocation;

/// How hydration runs.
#[derive(Clone, Debug)]
pub struct HydrateOptions {
    /// Store bytes per second at most (`None`: as fast as the store goes).
    pub rate: Option<u64>,
    /// Blocks per fetch (neighbouring records come in one GET).
    pub run_blocks: usize,
    /// Fetches in flight at once.
    pub concurrency: usize,
    /// How often progress is logged.
    pub log_every: Duration,
    /// Give up once the store has failed for this long (`None`: pause
    /// for as long as it takes, as a mount does).
    pub give_up_after: Option<Duration>,
}

impl Default for HydrateOptions {
    fn default() -> Self {
        HydrateOptions {
            rate: None,
            run_blocks: 4,
            concurrency: 3,
            log_every: Duration::from_secs(10),
            give_up_after: None,
        }
    }
}

/// Where hydration stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HydrateProgress {
    /// Blocks with data present in the host cache.
    pub done: u64,
    /// Blocks with data in the image.
    pub total: u64,
    /// Store bytes this run fetched.
    pub bytes: u64,
}

/// Why hydration stopped before the image was complete: a failure that
/// waiting does not mend (a record that fails its checks, the object
/// replaced or gone, access denied). A store outage never ends hydration;
/// it pauses it.
#[derive(Debug)]
pub struct HydrateStopped {
    /// Where hydration stood.
    pub progress: HydrateProgress,
    /// Blocks left out because their records failed their checks (every
    /// other block was hydrated); empty when a failure of the whole image
    /// (the object replaced or gone, access denied) stopped it.
    pub failed_blocks: Vec<u64>,
    /// The failure, naming image, block and record offset.
    pub error: ImageError,
}

impl std::fmt::Display for HydrateStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (done, total) = (self.progress.done, self.progress.total);
        match self.failed_blocks.len() {
            0 => write!(
                f,
                "hydration stopped at {done}/{total} blocks: {}",
                self.error
            ),
            n => write!(
                f,
                "hydration left out {n} block(s) whose records fail their checks ({done}/{total} blocks local); first: {}",
                self.error
            ),
        }
    }
}

impl std::error::Error for HydrateStopped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Whether `e` is worth waiting out (a store outage, a short body) rather
/// than a failure that will not mend: corrupt bytes, the object replaced or
/// missing, access denied.
fn is_permanent(e: &ImageError) -> bool {
    use crate::image::BlockFailure;
    use zvstore::StoreError;
    let store_permanent = |e: &StoreError| {
        matches!(
            e,
            StoreError::Forbidden { .. }
                | StoreError::Changed { .. }
                | StoreError::OutOfRange { .. }
                | StoreError::BucketNotFound { .. }
        )
    };
    match e {
        ImageError::Block { source, .. } => match source.as_ref() {
            BlockFailure::Verify(_) => true,
            BlockFailure::Fetch(e) => store_permanent(e),
            _ => false,
        },
        ImageError::Store(e) => store_permanent(e),
        ImageError::Format { .. } | ImageError::Verify { .. } | ImageError::Check { .. } => true,
        _ => false,
    }
}

/// The block whose record failed its checks, when that is what `e` says: a
/// failure of that block alone, not of the image.
fn failed_block(e: &ImageError) -> Option<u64> {
    match e {
        ImageError::Block { block, source, .. }
            if matches!(source.as_ref(), crate::image::BlockFailure::Verify(_)) =>
        {
            Some(*block)
        }
        _ => None,
    }
}

/// Whether `e` is a fetch that gave way to a demand read (not a failure).
fn is_preempted(e: &ImageError) -> bool {
    matches!(e, ImageError::Block { source, .. }
        if matches!(source.as_ref(), crate::image::BlockFailure::Preempted))
}

/// Unused rate allowance kept at most (after a pause): no burst above the
/// cap beyond this much time's worth.
const MAX_RATE_CREDIT: Duration = Duration::from_secs(1);
/// Longest pause after failed fetches (a store outage).
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long after its last preemption hydration fetches one block at a
/// time (demand reads are active); then full runs again.
const CALM: Duration = Duration::from_secs(1);
/// How often to look again whether demand reads are still waiting.
const YIELD_POLL: Duration = Duration::from_millis(2);

/// Fills `entry` (the host-cache entry of `image`) with every block it
/// lacks and returns once the image is complete. Updates
/// `hydrate_done`/`hydrate_total` in the image's metrics and calls
/// `progress` after each fetch. A store outage pauses it; a failure that
/// waiting does not mend (a corrupt record, the object replaced or gone)
/// ends it with [`HydrateStopped`], logged once, naming the block; the
/// blocks fetched so far stay cached. `Ok` also when the host cache stopped
/// taking blocks (full, failing disk): the progress says how far it got.
pub async fn hydrate(
    image: Arc<Image>,
    host: Arc<HostCache>,
    entry: Arc<CacheEntry>,
    options: HydrateOptions,
    progress: impl Fn(HydrateProgress),
) -> Result<HydrateProgress, HydrateStopped> {
    let started = Instant::now();
    let metrics = Arc::clone(image.metrics());
    let total = entry.record_blocks();
    let mut state = HydrateProgress {
        done: 0,
        total,
        bytes: 0,
    };
    Metrics::add(&metrics.hydrate_total, total);
    let mut backoff = Duration::ZERO;
    let mut last_log = Instant::now();
    let mut paused = false;
    // Since when the store has been failing (no fetch succeeded since).
    let mut failing_since: Option<Instant> = None;
    // The rate cap: bytes started since `pace_from`.
    let mut launched = 0u64;
    let mut pace_from = Instant::now();
    let mut last_preempted: Option<Instant> = None;
    // Blocks whose record fails its checks: left out (they can never be
    // cached), reported when everything else is local.
    let mut failed: std::collections::BTreeSet<u64> = Default::default();
    let mut first_failure: Option<ImageError> = None;
    loop {
        let e = Arc::clone(&entry);
        let missing = match tokio::task::spawn_blocking(move || e.missing_blocks()).await {
            Ok(Ok(m)) => m,
            other => {
                tracing::warn!(image = %image.name(), "hydration cannot read the cache map ({other:?}); stopping");
                return Ok(state);
            }
        };
        let done = total - missing.len() as u64;
        publish(&metrics, &mut state, done, total);
        progress(state);
        let missing: Vec<u64> = missing
            .into_iter()
            .filter(|b| !failed.contains(b))
            .collect();
        if missing.is_empty() && !failed.is_empty() {
            flush(&host).await;
            let error = first_failure
                .take()
                .expect("a failure for each failed block");
            tracing::error!(
                image = %image.name(),
                "hydration ended with {} of {total} blocks local: {} failed their checks (first: {error})",
                state.done,
                failed.len()
            );
            return Err(HydrateStopped {
                progress: state,
                failed_blocks: failed.into_iter().collect(),
                error,
            });
        }
        if missing.is_empty() {
            // Blocks cached by earlier runs are checked against the sidecar
            // before the image counts as local; any that fail go back to
            // the list.
            let e = Arc::clone(&entry);
            if let Ok(Ok(n)) = tokio::task::spawn_blocking(move || e.verify_present()).await
                && n > 0
            {
                host.note_bad_blocks(n);
                continue;
            }
            tracing::info!(
                image = %image.name(),
                blocks = total,
                fetched_bytes = state.bytes,
                secs = started.elapsed().as_secs_f64(),
                "hydration complete: the image is local"
            );
            return Ok(state);
        }
        let before = done;
        let mut runs: std::collections::VecDeque<Vec<u64>> = missing
            .chunks(options.run_blocks.max(1))
            .map(<[u64]>::to_vec)
            .collect();
        let mut preempted = false;
        let mut inflight = FuturesUnordered::new();
        loop {
            loop {
                // While demand reads come and go, one block at a time, so
                // that the link is rarely taken when the next one comes and
                // little is thrown away when it is.
                let calm = last_preempted.is_none_or(|t| t.elapsed() >= CALM);
                let limit = if calm { options.concurrency.max(1) } else { 1 };
                if inflight.len() >= limit {
                    break;
                }
                let Some(mut run) = runs.pop_front() else {
                    break;
                };
                // Filled since the pass began (demand reads, another
                // daemon sharing the cache): not fetched, not paced.
                run.retain(|&b| !entry.is_present(b).unwrap_or(false));
                if run.is_empty() {
                    continue;
                }
                if !calm && run.len() > 1 {
                    runs.push_front(run.split_off(1));
                }
                if host.refuses_fills() {
                    // Full (size cap or free-space floor, nothing left to
                    // evict) or failing: what is fetched now is thrown away.
                    tracing::warn!(
                        image = %image.name(),
                        "hydration stopped at {}/{total} blocks: the host cache takes no more blocks (full, or its disk failed); restart the mount or run `zvimg hydrate` once there is room",
                        entry.present_blocks()
                    );
                    flush(&host).await;
                    let present = entry.present_blocks();
                    publish(&metrics, &mut state, present, total);
                    return Ok(state);
                }
                if !backoff.is_zero() {
                    tokio::time::sleep(backoff).await;
                }
                // Demand reads first: hold back while any waits on a fetch.
                // And no faster than the host cache writes: a fill that
                // finds its queue full is dropped and would be fetched
                // again.
                while image.demand_waiting() > 0
                    || host.write_backlog() > (crate::cache::host::WRITE_QUEUE / 2) as u64
                {
                    tokio::time::sleep(YIELD_POLL).await;
                }
                let bytes = store_bytes(&image, &run);
                if let Some(rate) = options.rate.filter(|r| *r > 0) {
                    // Paced by bytes started, so the cap holds from the
                    // first fetch on; time not used (a pause, an outage)
                    // is not saved up beyond a second's worth, so no burst
                    // above the cap follows it.
                    let due = Duration::from_secs_f64(launched as f64 / rate as f64);
                    let elapsed = pace_from.elapsed();
                    if elapsed > due + MAX_RATE_CREDIT {
                        pace_from = Instant::now() - MAX_RATE_CREDIT;
                        launched = 0;
                    } else if let Some(wait) = due.checked_sub(elapsed) {
                        tokio::time::sleep(wait).await;
                    }
                }
                launched += bytes;
                let img = Arc::clone(&image);
                inflight.push(async move {
                    let result = img.hydrate_blocks(&run).await;
                    (result, run, bytes)
                });
            }
            let Some((result, run, bytes)) = inflight.next().await else {
                break;
            };
            match result {
                Ok(()) => {
                    if paused {
                        tracing::info!(image = %image.name(), "store reachable again; hydration resumed");
                        paused = false;
                    }
                    failing_since = None;
                    backoff = Duration::ZERO;
                    state.bytes += bytes;
                    // Blocks count once the host cache has them on disk
                    // and in its map, not when fetched.
                    let done = entry.present_blocks();
                    publish(&metrics, &mut state, done, total);
                    progress(state);
                }
                Err(e) if is_preempted(&e) => {
                    // Gave the link to a demand read: again, next in line.
                    launched = launched.saturating_sub(bytes);
                    preempted = true;
                    last_preempted = Some(Instant::now());
                    runs.push_front(run);
                }
                Err(e) if failed_block(&e).is_some() => {
                    // This record is bad; the rest of the image may not be.
                    let block = failed_block(&e).expect("checked");
                    tracing::error!(image = %image.name(), "hydration leaves out block {block}: {e}");
                    failed.insert(block);
                    first_failure.get_or_insert(e);
                    // The other blocks of the run come again next pass.
                }
                Err(e) if is_permanent(&e) => {
                    tracing::error!(image = %image.name(), "hydration stopped: {e}");
                    flush(&host).await;
                    return Err(HydrateStopped {
                        progress: state,
                        failed_blocks: Vec::new(),
                        error: e,
                    });
                }
                Err(e) => {
                    if !paused {
                        tracing::warn!(image = %image.name(), "hydration paused, the store failed: {e}");
                        paused = true;
                    }
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if options.give_up_after.is_some_and(|d| since.elapsed() >= d) {
                        // A one-shot fill (`zvimg hydrate`) does not wait
                        // for ever: what is cached stays.
                        flush(&host).await;
                        let present = entry.present_blocks();
                        publish(&metrics, &mut state, present, total);
                        return Err(HydrateStopped {
                            progress: state,
                            failed_blocks: Vec::new(),
                            error: e,
                        });
                    }
                    backoff = (backoff * 2).clamp(Duration::from_millis(250), MAX_BACKOFF);
                }
            }
            if last_log.elapsed() >= options.log_every {
                last_log = Instant::now();
                log_progress(&image, &state, started.elapsed());
            }
        }
        // What was fetched is durable (and in the map) before we look again.
        flush(&host).await;
        let e = Arc::clone(&entry);
        let _ = tokio::task::spawn_blocking(move || e.refresh_present()).await;
        if entry.present_blocks() <= before && backoff.is_zero() && !preempted && failed.is_empty()
        {
            let present = entry.present_blocks();
            publish(&metrics, &mut state, present, total);
            // No progress without a store error: the cache is not keeping
            // blocks (full or stopped). Nothing more to gain.
            tracing::warn!(image = %image.name(), "hydration stopped: the host cache is not keeping blocks (full, or its disk failed)");
            return Ok(state);
        }
    }
}

/// Waits, off the async threads, until every block fetched so far is on
/// disk and in the host cache's map (or dropped).
async fn flush(host: &Arc<HostCache>) {
    let h = Arc::clone(host);
    let _ = tokio::task::spawn_blocking(move || h.flush()).await;
}

/// Moves `hydrate_done` by this image's change (several images add up).
fn publish(metrics: &Metrics, state: &mut HydrateProgress, done: u64, total: u64) {
    use std::sync::atomic::Ordering;
    let done = done.min(total);
    if done >= state.done {
        metrics
            .hydrate_done
            .fetch_add(done - state.done, Ordering::Relaxed);
    } else {
        metrics
            .hydrate_done
            .fetch_sub(state.done - done, Ordering::Relaxed);
    }
    state.done = done;
}

fn log_progress(image: &Image, state: &HydrateProgress, elapsed: Duration) {
    let rate = state.bytes as f64 / elapsed.as_secs_f64().max(1e-3);
    let left = state.total.saturating_sub(state.done);
    let per_block = if state.done > 0 {
        state.bytes as f64 / state.done.max(1) as f64
    } else {
        image.block_size() as f64
    };
    let eta = if rate > 0.0 {
        left as f64 * per_block / rate
    } else {
        f64::INFINITY
    };
    tracing::info!(
        image = %image.name(),
        done = state.done,
        total = state.total,
        fetched_mb = state.bytes as f64 / 1e6,
        mb_per_s = rate / 1e6,
        eta_s = eta.round(),
        "hydrating"
    );
}

/// Store bytes the records of `run` take.
fn store_bytes(image: &Image, run: &[u64]) -> u64 {
    run.iter()
        .filter_map(|&b| match image.layout().index.lookup(b)? {
            BlockLocation::Record(loc) => Some(u64::from(loc.size)),
            BlockLocation::Zero => None,
        })
        .sum()
}
