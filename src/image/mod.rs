//! The heart of the daemon: block number → verified, decoded bytes.
//!
//! An [`Image`] maps reads onto blocks. Zero blocks, and the tail between
//! the converted disk's size and a larger reported size, are zeros with no
//! fetch. Other blocks come from the cache, or are fetched (one range GET
//! per record, or one for a run of neighbouring records), checked against
//! the sidecar (CRC32C of the record, BLAKE3 of the block) when there is
//! one, decoded off the async runtime, and cached. However many readers
//! wait for a block, it is fetched and decoded once (single-flight); a
//! failed fetch is not remembered, so the next read tries again.
//!
//! What to prefetch, and when, is decided in [`crate::prefetch`]; the
//! fetching itself happens here, in `fetch`. What every image of one
//! mount shares (cache, counters, prefetch budget, decode slots, the
//! replay share of the cache) is one [`MountContext`].

mod decode;
pub mod disk;
pub mod error;
mod fetch;
pub mod open;
pub mod persist;
pub mod scan;
#[cfg(test)]
mod testing;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::future::{BoxFuture, Shared};

pub use disk::ImageDisk;
pub use error::ImageError;
pub use fetch::BlockFailure;
pub use open::{ImageLayout, SidecarSource};

use crate::cache::{BlockCache, BlockKey};
use crate::metrics::Metrics;
use crate::prefetch::{AccessRecorder, BudgetPermit, PrefetchBudget, ProfileReplay, ReaderStream};
use zvhd2::{BlockLocation, RecordLocation};
use zvstore::ObjectStore;
use zvstore::coalesce::RunLimits;
use zvstore::outage::Escalation;

/// Which size the image reports.
/// Parsed from and shown as `orig` / `curr` (the `--size` flag of both
/// binaries).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SizeMode {
    /// The size of the disk that was converted (`orig_size`): what the user had.
    #[default]
    Orig,
    /// `orig_size` rounded up to a whole GiB (`curr_size`), as Huawei's own
    /// reader reports it; the extra tail reads as zeros.
    Curr,
}

impl std::str::FromStr for SizeMode {
    type Err = String;

    fn from_str(s: &str) -> Result<SizeMode, String> {
        match s.to_ascii_lowercase().as_str() {
            "orig" => Ok(SizeMode::Orig),
            "curr" => Ok(SizeMode::Curr),
            _ => Err(format!("invalid size mode {s:?}: expected orig or curr")),
        }
    }
}

impl fmt::Display for SizeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SizeMode::Orig => "orig",
            SizeMode::Curr => "curr",
        })
    }
}

/// How an [`Image`] reads.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// Which size to report.
    pub size_mode: SizeMode,
    /// Check each record's CRC32C and each block's BLAKE3 against the
    /// sidecar when there is one. The decoded length is always checked.
    pub verify: bool,
    /// Blocks to read ahead of a sequential stream (0 disables readahead).
    pub readahead_blocks: usize,
    /// Bytes that in-flight prefetches may hold (0 disables prefetching).
    /// Mount-wide: read by [`MountLimits::from`]; an image opened into an
    /// existing [`MountContext`] uses the context's budget instead.
    pub prefetch_budget_bytes: u64,
    /// Prefetch requests in flight at once (readahead and profile replay);
    /// mount-wide like `prefetch_budget_bytes`.
    pub prefetch_concurrency: usize,
    /// Neighbouring records closer than this are fetched in one GET (the
    /// gap is read and thrown away).
    pub coalesce_gap: u64,
    /// Upper bound on the bytes of one coalesced GET.
    pub max_coalesce_bytes: u64,
    /// Widen every GET to whole slices of this many bytes of the image,
    /// aligned to multiples of it (0: off), so that hosts behind a caching
    /// tier ask for the same ranges; the records that come along are
    /// decoded and cached too. Costs bytes (the rest of each slice).
    pub fetch_align: u64,
    /// Blocks decoded at once (0: one per CPU); mount-wide like
    /// `prefetch_budget_bytes`.
    pub decode_threads: usize,
    /// Record the first-touch order of demand reads (see [`Image::recorder`]).
    pub record_access: bool,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            size_mode: SizeMode::Orig,
            verify: true,
            readahead_blocks: 4,
            prefetch_budget_bytes: 64 << 20,
            prefetch_concurrency: 4,
            coalesce_gap: 64 << 10,
            max_coalesce_bytes: 8 << 20,
            fetch_align: 0,
            decode_threads: 0,
            record_access: false,
        }
    }
}

/// The limits one mount shares between all its images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountLimits {
    /// Bytes that in-flight prefetches of all images may hold together
    /// (0 disables prefetching).
    pub prefetch_budget_bytes: u64,
    /// Prefetch requests in flight at once, all images together.
    pub prefetch_concurrency: usize,
    /// Blocks decoded at once, all images together (0: one per CPU).
    pub decode_threads: usize,
}

impl Default for MountLimits {
    fn default() -> Self {
        MountLimits::from(&ImageOptions::default())
    }
}

impl From<&ImageOptions> for MountLimits {
    fn from(o: &ImageOptions) -> Self {
        MountLimits {
            prefetch_budget_bytes: o.prefetch_budget_bytes,
            prefetch_concurrency: o.prefetch_concurrency,
            decode_threads: o.decode_threads,
        }
    }
}

/// What every image of one mount shares: the block cache, the counters,
/// one prefetch budget, the decode slots, and the cache share profile
/// replays may fill. Create one per mount and open every image into it
/// with [`Image::in_mount`].
#[derive(Debug)]
pub struct MountContext {
    cache: Arc<dyn BlockCache>,
    metrics: Arc<Metrics>,
    budget: PrefetchBudget,
    decode_limit: Arc<tokio::sync::Semaphore>,
    /// Images opened into this mount (the replay share is split among them).
    images: AtomicU64,
    /// Woken each time a demand read sends a GET: background hydration
    /// GETs in flight give way to it.
    demand_fetches: tokio::sync::Notify,
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

/// A fetch of one block in flight; every reader of the block awaits a clone.
type InFlight = Shared<BoxFuture<'static, Result<Bytes, Arc<BlockFailure>>>>;

/// A block being fetched: the shared result, and for a background fetch
/// what raises it to a demand read's priority and deadline.
type InFlightEntry = (InFlight, Option<Arc<Escalation>>);

/// Why a block is being fetched (decides metrics and budget).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FetchKind {
    Demand,
    Readahead,
    Profile,
    /// Background hydration: lower cache levels only, lowest priority.
    Hydrate,
}

/// Most blocks fetched in one coalesced GET.
const MAX_RUN_BLOCKS: usize = 8;
/// Largest block size served from the shared static zero buffer.
const MAX_STATIC_ZEROS: usize = 32 << 20;
/// Zeros for zero blocks and the tail: in `.bss`, so untouched pages cost
/// nothing and every reader shares them.
static ZEROS: [u8; MAX_STATIC_ZEROS] = [0; MAX_STATIC_ZEROS];

/// An open image: reads by offset or block, with caching, single-flight and
/// prefetch. Create with [`Image::new`]; all methods take `&Arc<Image>` or
/// `&Image` and may be called from many tasks at once. The async methods and
/// the prefetch starters must run inside a tokio runtime.
pub struct Image {
    store: Arc<dyn ObjectStore>,
    layout: ImageLayout,
    mount: Arc<MountContext>,
    cache: Arc<dyn BlockCache>,
    metrics: Arc<Metrics>,
    options: ImageOptions,
    cache_id: Arc<str>,
    block_size: u64,
    block_count: u64,
    /// Bytes backed by blocks (`orig_size`, capped by the block table).
    data_size: u64,
    /// Reported size.
    size: u64,
    zero_block: Bytes,
    /// Blocks being fetched: the shared result, and for a background
    /// fetch what raises it when a demand read joins.
    inflight: Mutex<HashMap<u64, InFlightEntry>>,
    decode_limit: Arc<tokio::sync::Semaphore>,
    /// The reader stream of reads that come without one of their own.
    stream: ReaderStream,
    recorder: Option<Arc<AccessRecorder>>,
    /// Demand reads waiting for a fetch right now (background hydration
    /// holds back while any are).
    demand_waiting: std::sync::atomic::AtomicUsize,
    /// Records by offset, for aligned fetches (see `fetch`).
    record_order: std::sync::OnceLock<Vec<(u64, u32, u64)>>,
}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Image")
            .field("location", &self.layout.location)
            .field("size", &self.size)
            .field("block_size", &self.block_size)
            .field("block_count", &self.block_count)
            .finish_non_exhaustive()
    }
}

impl Image {
    /// An image reading blocks of `layout` from `store` through `cache`,
    /// alone in a mount of its own (its prefetch budget and decode slots
    /// are its own; see [`Image::in_mount`] to share them).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        layout: ImageLayout,
        cache: Arc<dyn BlockCache>,
        metrics: Arc<Metrics>,
        options: ImageOptions,
    ) -> Arc<Image> {
        let mount = MountContext::new(cache, metrics, MountLimits::from(&options));
        Image::in_mount(store, layout, &mount, options)
    }

    /// An image reading blocks of `layout` from `store`, sharing `mount`'s
    /// cache, counters, prefetch budget and decode slots with the other
    /// images of the mount. The mount-wide fields of `options` are ignored.
    pub fn in_mount(
        store: Arc<dyn ObjectStore>,
        layout: ImageLayout,
        mount: &Arc<MountContext>,
        options: ImageOptions,
    ) -> Arc<Image> {
        let metrics = Arc::clone(&mount.metrics);
        Image::in_mount_counting(store, layout, mount, options, metrics)
    }

    /// Like [`Image::in_mount`], but the image counts its reads, fetches
    /// and waits into `metrics` of its own (the mount's counters keep what
    /// is the mount's: its prefetch budget).
    pub fn in_mount_counting(
        store: Arc<dyn ObjectStore>,
        layout: ImageLayout,
        mount: &Arc<MountContext>,
        options: ImageOptions,
        metrics: Arc<Metrics>,
    ) -> Arc<Image> {
        mount.images.fetch_add(1, Ordering::Relaxed);
        let block_size = u64::from(layout.index.block_size());
        let block_count = layout.index.block_count();
        let data_size = layout
            .header
            .disk_size()
            .min(block_count.saturating_mul(block_size));
        let size = match options.size_mode {
            SizeMode::Orig => layout.header.disk_size(),
            // A curr_size below orig_size would hide data: never report less.
            SizeMode::Curr => layout.header.curr_size().max(layout.header.disk_size()),
        };
        let zero_block = if block_size as usize <= MAX_STATIC_ZEROS {
            Bytes::from_static(&ZEROS[..block_size as usize])
        } else {
            Bytes::from(vec![0u8; block_size as usize])
        };
        let recorder = options
            .record_access
            .then(|| Arc::new(AccessRecorder::new(block_count)));
        Arc::new(Image {
            cache_id: Arc::from(layout.cache_id()),
            store,
            cache: Arc::clone(&mount.cache),
            metrics,
            decode_limit: Arc::clone(&mount.decode_limit),
            mount: Arc::clone(mount),
            block_size,
            block_count,
            data_size,
            size,
            zero_block,
            inflight: Mutex::new(HashMap::new()),
            stream: ReaderStream::new(options.readahead_blocks),
            recorder,
            demand_waiting: std::sync::atomic::AtomicUsize::new(0),
            record_order: std::sync::OnceLock::new(),
            layout,
            options,
        })
    }

    /// The size the image reports (per [`ImageOptions::size_mode`]).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.block_size as u32
    }

    /// Number of blocks of the disk.
    pub fn block_count(&self) -> u64 {
        self.block_count
    }

    /// What was learnt at open.
    pub fn layout(&self) -> &ImageLayout {
        &self.layout
    }

    /// The image's printable location, for logs.
    pub fn name(&self) -> &str {
        &self.layout.location
    }

    /// The counters this image updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The options the image was opened with.
    pub fn options(&self) -> &ImageOptions {
        &self.options
    }

    /// The mount this image belongs to.
    pub fn mount(&self) -> &Arc<MountContext> {
        &self.mount
    }

    /// A new reader stream (one per open file handle): its own sequential
    /// detector and its own account of the mount's prefetch budget.
    pub fn new_stream(&self) -> ReaderStream {
        ReaderStream::new(self.options.readahead_blocks)
    }

    /// The first-touch recorder, when [`ImageOptions::record_access`] is set.
    pub fn recorder(&self) -> Option<&Arc<AccessRecorder>> {
        self.recorder.as_ref()
    }

    /// The key of `block` in the cache.
    pub fn cache_key(&self, block: u64) -> BlockKey {
        BlockKey::new(Arc::clone(&self.cache_id), block)
    }

    /// The whole decoded block `block` (`block_size` bytes), verified.
    pub async fn read_block(self: &Arc<Self>, block: u64) -> Result<Bytes, ImageError> {
        self.note_access(block, &self.stream);
        let bytes = self.demand_block(block).await?;
        self.check_block_len(block, &bytes)?;
        Ok(bytes)
    }

    /// Up to `len` bytes at `offset`: short at the end of the image, empty
    /// past it. A read within one block returns a slice of the cached block
    /// (no copy). Readahead follows the image's own reader stream; a
    /// reader with a handle of its own uses [`Image::read_at_in`].
    pub async fn read_at(self: &Arc<Self>, offset: u64, len: u32) -> Result<Bytes, ImageError> {
        self.read_at_in(offset, len, &self.stream).await
    }

    /// [`Image::read_at`] for the reader `stream` (an open file handle):
    /// its accesses drive its own readahead.
    pub async fn read_at_in(
        self: &Arc<Self>,
        offset: u64,
        len: u32,
        stream: &ReaderStream,
    ) -> Result<Bytes, ImageError> {
        let end = offset.saturating_add(u64::from(len)).min(self.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let data_end = end.min(self.data_size);
        if offset >= data_end {
            return Ok(zeros((end - offset) as usize));
        }
        let bs = self.block_size;
        let first = offset / bs;
        let last = (data_end - 1) / bs;
        if first == last && end == data_end {
            self.note_access(first, stream);
            let block = self.demand_block(first).await?;
            let start = (offset - first * bs) as usize;
            let stop = start + (end - offset) as usize;
            self.check_block_len(first, &block)?;
            return Ok(block.slice(start..stop));
        }
        for b in first..=last {
            self.note_access(b, stream);
        }
        // Start every missing block before waiting on any, so neighbouring
        // misses share one GET and the rest are fetched in parallel.
        let waits = self.demand_blocks(first, last)?;
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for (b, wait) in waits {
            let block = self.finish_demand(b, wait).await?;
            let block_start = b * bs;
            let from = offset.max(block_start) - block_start;
            let to = data_end.min(block_start + bs) - block_start;
            self.check_block_len(b, &block)?;
            out.extend_from_slice(&block[from as usize..to as usize]);
        }
        out.resize((end - offset) as usize, 0);
        Ok(out.freeze())
    }

    /// The bytes [`Image::read_at`] would return, when they can be had
    /// without waiting: the read lies within one block that is a zero block
    /// or in the memory cache (or wholly in the zero tail). `None` means
    /// "ask [`Image::read_at`]", never an error; nothing is fetched then.
    ///
    /// This lets the FUSE thread answer a cached read itself instead of
    /// handing it to the runtime (a task spawn and a thread wake-up cost
    /// more than the lookup). A hit counts and feeds readahead and the
    /// access recorder exactly as `read_at` does; readahead may start
    /// fetches, so the caller must be inside the tokio runtime's context
    /// (`Handle::enter`).
    pub fn try_read_cached(self: &Arc<Self>, offset: u64, len: u32) -> Option<Bytes> {
        self.try_read_cached_in(offset, len, &self.stream)
    }

    /// [`Image::try_read_cached`] for the reader `stream`.
    pub fn try_read_cached_in(
        self: &Arc<Self>,
        offset: u64,
        len: u32,
        stream: &ReaderStream,
    ) -> Option<Bytes> {
        let end = offset.saturating_add(u64::from(len)).min(self.size);
        if offset >= end {
            return Some(Bytes::new());
        }
        let data_end = end.min(self.data_size);
        if offset >= data_end {
            return Some(zeros((end - offset) as usize));
        }
        let bs = self.block_size;
        let block = offset / bs;
        if end != data_end || (data_end - 1) / bs != block {
            return None;
        }
        let bytes = match self.layout.index.lookup(block)? {
            BlockLocation::Zero => {
                Metrics::inc(&self.metrics.zero_block_reads);
                self.zero_block.clone()
            }
            BlockLocation::Record(_) => {
                let hit = self.cache.get_fast(&self.cache_key(block))?;
                if hit.len() as u64 != bs {
                    // Let the async path report it.
                    return None;
                }
                Metrics::inc(&self.metrics.mem_cache_hits);
                hit
            }
        };
        self.note_access(block, stream);
        let start = (offset - block * bs) as usize;
        Some(bytes.slice(start..start + (end - offset) as usize))
    }

    /// Starts background fetches of `blocks` (skipping zero, cached and
    /// in-flight ones) within the prefetch budget; blocks that do not fit
    /// the budget are skipped. Returns how many fetches were started.
    pub fn prefetch(self: &Arc<Self>, blocks: impl IntoIterator<Item = u64>) -> usize {
        self.readahead(blocks, &self.stream)
    }

    /// Starts replaying the sidecar's boot profile, if it has one: its
    /// blocks are fetched in order, [`ImageOptions::prefetch_concurrency`]
    /// requests at a time, within the prefetch budget. The task ends when
    /// every block is ready (or failed); its result says how it went.
    ///
    /// The replay fetches at most its share of the mount's cache
    /// ([`MountContext::replay_cap`]): a profile larger than the cache would
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

    /// Demand reads waiting for a fetch at this moment.
    pub fn demand_waiting(&self) -> usize {
        self.demand_waiting
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    // ---- internals -------------------------------------------------------

    fn locate(&self, block: u64) -> Result<BlockLocation, ImageError> {
        self.layout
            .index
            .lookup(block)
            .ok_or_else(|| ImageError::OutOfRange {
                location: self.layout.location.clone(),
                offset: block.saturating_mul(self.block_size),
                len: self.block_size,
                size: self.block_count.saturating_mul(self.block_size),
            })
    }

    /// Profile recording and readahead, once per block a demand read of
    /// `stream` touches.
    fn note_access(self: &Arc<Self>, block: u64, stream: &ReaderStream) {
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

    async fn demand_block(self: &Arc<Self>, block: u64) -> Result<Bytes, ImageError> {
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
    fn demand_blocks(
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

    async fn finish_demand(
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

    /// Every block handed out is exactly `block_size` long (decoding checks
    /// it; this guards against a cache that somehow holds something else),
    /// so slicing it can never go out of bounds.
    fn check_block_len(&self, block: u64, bytes: &Bytes) -> Result<(), ImageError> {
        if bytes.len() as u64 == self.block_size {
            return Ok(());
        }
        let offset = match self.layout.index.lookup(block) {
            Some(BlockLocation::Record(loc)) => loc.offset,
            _ => 0,
        };
        Err(ImageError::Verify {
            location: self.layout.location.clone(),
            block,
            offset,
            detail: format!(
                "cached block is {} bytes, expected {}",
                bytes.len(),
                self.block_size
            ),
        })
    }

    fn block_error(
        &self,
        block: u64,
        loc: RecordLocation,
        failure: Arc<BlockFailure>,
    ) -> ImageError {
        ImageError::Block {
            location: self.layout.location.clone(),
            block,
            offset: loc.offset,
            source: failure,
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
    fn prefetch_limits(&self) -> RunLimits {
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
    fn readahead(
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
}

/// Counts a demand read as waiting while alive.
struct DemandWaiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> DemandWaiting<'a> {
    fn new(counter: &'a std::sync::atomic::AtomicUsize) -> Self {
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
enum BlockWait {
    Ready(Bytes),
    Fetch(RecordLocation, InFlight),
}

/// `n` zero bytes, shared when they fit the static buffer.
fn zeros(n: usize) -> Bytes {
    if n <= MAX_STATIC_ZEROS {
        Bytes::from_static(&ZEROS[..n])
    } else {
        BytesMut::zeroed(n).freeze()
    }
}
