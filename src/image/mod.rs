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
//!
//! Files: this one holds [`Image`] and its read entry points; `demand`
//! the demand path and single-flight registration (`claim`);
//! `background` readahead, profile replay and hydration starts; `fetch`
//! the GETs, `decode` verification and decoding; [`options`] and
//! [`context`] the settings and the mount's shared state; [`open`] and
//! [`persist`] loading and storing an image's layout; [`disk`] the FUSE
//! side; [`scan`] whole-image checks.

mod background;
pub mod context;
mod decode;
mod demand;
pub mod disk;
pub mod error;
mod fetch;
pub mod open;
pub mod options;
pub mod persist;
pub mod scan;
#[cfg(test)]
mod testing;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::future::{BoxFuture, Shared};

pub use context::MountContext;
pub use disk::ImageDisk;
pub use error::ImageError;
pub use fetch::BlockFailure;
pub use open::{ImageLayout, SidecarSource};
pub use options::{ImageOptions, MountLimits, SizeMode};

use crate::cache::{BlockCache, BlockKey};
use crate::metrics::Metrics;
use crate::prefetch::{AccessRecorder, ReaderStream};
use zvhd2::{BlockLocation, RecordLocation};
use zvstore::ObjectStore;
use zvstore::outage::Escalation;

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
}

/// `n` zero bytes, shared when they fit the static buffer.
fn zeros(n: usize) -> Bytes {
    if n <= MAX_STATIC_ZEROS {
        Bytes::from_static(&ZEROS[..n])
    } else {
        BytesMut::zeroed(n).freeze()
    }
}
