//! The host-wide image cache: one entry per image (keyed by its identity,
//! never its URL), shared by every zvmount and zvimg process on the host.
//!
//! An entry ([`CacheEntry`], see [`entry`] for its files) is the raw disk
//! as a sparse file plus a durable block-state map. Filling a block is
//! claimed with a byte-range lock on the entry's lock file, so however many
//! processes want a block, one fetches it and the others wait, then find it
//! in the map: each block leaves the store at most once per host. Locks
//! die with their process, so `kill -9` leaves nothing stuck.
//!
//! Writes happen on one background thread, in batches: data, `fdatasync`,
//! then the map bytes and the map's `fdatasync`, and only then are the
//! claims released. A failing or full cache disk never fails a read: the
//! cache stops writing (one warning) and reads go to the store.
//!
//! Start-up reads each attached entry's map (one byte per block), never
//! walks blocks or files. Eviction ([`gc`]) removes whole images, least
//! recently used first, and never one that a process has attached.
//!
//! Layout of the cache directory: `images/<id>/` entries, `sources/<hash>`
//! (the id last seen at a source, to open an image without its store),
//! `tmp/` (entries being created, and entries being deleted).

pub mod entry;
pub mod gc;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;

pub use entry::{CacheEntry, EntrySpec};
pub use gc::{EntryStatus, GcReport};

use super::{BlockCache, BlockKey, CacheTier, FillClaim, Lookup};

/// Fills waiting to be written; beyond this a fill is dropped (its block is
/// fetched again next time) rather than holding memory for a slow disk.
pub const WRITE_QUEUE: usize = 32;
/// Most blocks made durable with one pair of syncs.
const BATCH: usize = 16;
/// Writes between two rescans of the cache's usage (other processes write too).
const RESCAN_EVERY: u64 = 256;
/// Environment variable of a test hook: abort the process after the data
/// of this many blocks is durable, before their map bytes are written.
pub const CRASH_HOOK_ENV: &str = "ZVMOUNT_TEST_CRASH_BEFORE_MAP";

/// Why the host cache could not do something. Reads never see these: a
/// failing cache is a miss.
#[derive(Debug, thiserror::Error)]
pub enum HostCacheError {
    /// A file operation in the cache directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// An entry cannot be used: an unsafe image id, or an entry that keeps
    /// being evicted while this process attaches it.
    #[error("{path}: {detail}")]
    BadEntry {
        /// The entry's file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// `zvimg cache rm` of an image a live process holds.
    #[error("image {id} is in use by a running zvmount or zvimg")]
    InUse {
        /// The image's cache id (as `zvimg cache ls` shows it).
        id: String,
    },
    /// No entry with that id.
    #[error("no image {id} in the cache")]
    NotFound {
        /// The id asked for.
        id: String,
    },
}

/// Counters of one process's use of the host cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostCacheStats {
    /// Lookups answered from the cache with verified data.
    pub hits: u64,
    /// Lookups that found the block absent (it is fetched from the store).
    pub misses: u64,
    /// Lookups that waited for (or found) another process filling the block.
    pub busy: u64,
    /// Cached blocks that failed the sidecar check on first read (dropped, refetched).
    pub bad_blocks: u64,
    /// Blocks written and marked present.
    pub writes: u64,
    /// Block writes that failed (the block stays absent; reads still succeed).
    pub write_errors: u64,
    /// Fills dropped: queue full, cache full or stopped.
    pub dropped: u64,
    /// Whole images evicted by this process.
    pub evictions: u64,
}

/// The host cache under one directory (see the module docs).
#[derive(Debug)]
pub struct HostCache {
    inner: Arc<HostInner>,
    writer: Mutex<Option<(SyncSender<Job>, JoinHandle<()>)>>,
}

#[derive(Debug)]
struct HostInner {
    root: PathBuf,
    capacity: u64,
    entries: Mutex<HashMap<Arc<str>, Arc<CacheEntry>>>,
    /// Set after a write failed: the cache only reads from then on.
    stopped: AtomicBool,
    /// Warned that the cache is full (once).
    full_warned: AtomicBool,
    /// The last fill found no room (cleared when one finds room again).
    full: AtomicBool,
    /// Bytes the cache occupies, as of the last scan plus our writes since.
    usage: AtomicU64,
    crash_after: Option<u64>,
    hits: AtomicU64,
    misses: AtomicU64,
    busy: AtomicU64,
    bad_blocks: AtomicU64,
    writes: AtomicU64,
    write_errors: AtomicU64,
    dropped: AtomicU64,
    evictions: AtomicU64,
    /// Fills queued for the writer and not yet written (or dropped).
    queued: AtomicU64,
}

/// The right to fill one block, held from the lookup that missed until the
/// block is durable and marked (or the fetch failed): dropping it releases
/// the block for other processes.
#[derive(Debug)]
struct Claim {
    entry: Arc<CacheEntry>,
    block: u64,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.entry.unlock_block(self.block);
    }
}

enum Job {
    Fill(Claim, Bytes),
    Flush(std::sync::mpsc::Sender<()>),
}

impl HostCache {
    /// Opens (creating if needed) the host cache in `root`, holding at most
    /// `capacity` bytes, and starts its writer thread.
    pub fn open(root: impl Into<PathBuf>, capacity: u64) -> Result<HostCache, HostCacheError> {
        let root = root.into();
        for sub in ["images", "sources", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(|source| HostCacheError::Io { path: p, source })?;
        }
        gc::clean_tmp(&root);
        let usage = gc::usage(&root);
        let crash_after = std::env::var(CRASH_HOOK_ENV)
            .ok()
            .and_then(|v| v.parse().ok());
        let inner = Arc::new(HostInner {
            root,
            capacity,
            entries: Mutex::new(HashMap::new()),
            stopped: AtomicBool::new(false),
            full_warned: AtomicBool::new(false),
            usage: AtomicU64::new(usage),
            crash_after,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            bad_blocks: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            full: AtomicBool::new(false),
            evictions: AtomicU64::new(0),
        });
        let (tx, rx) = std::sync::mpsc::sync_channel(WRITE_QUEUE);
        let worker = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("zvmount-hostcache".into())
            .spawn(move || writer_loop(worker, rx))
            .map_err(|source| HostCacheError::Io {
                path: PathBuf::from("writer thread"),
                source,
            })?;
        Ok(HostCache {
            inner,
            writer: Mutex::new(Some((tx, handle))),
        })
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The size cap in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.inner.capacity
    }

    /// Attaches the image `spec` describes (creating its entry if new) for
    /// the life of this cache: its blocks are then looked up and filled
    /// here, and it cannot be evicted. Also records the id under the
    /// source's name, for [`HostCache::find_by_source`].
    pub fn attach(&self, spec: &EntrySpec) -> Result<Arc<CacheEntry>, HostCacheError> {
        if let Some(e) = self.entry(&spec.id) {
            return Ok(e);
        }
        let i = &self.inner;
        let entry = Arc::new(CacheEntry::attach(
            &i.root.join("images"),
            &i.root.join("tmp"),
            spec,
        )?);
        entry.repair_descriptions(spec);
        gc::remember_source(&i.root, &spec.source, &spec.id);
        i.lock_entries()
            .insert(Arc::clone(entry.id()), Arc::clone(&entry));
        Ok(entry)
    }

    /// The attached entry `id`.
    pub fn entry(&self, id: &str) -> Option<Arc<CacheEntry>> {
        self.inner.lock_entries().get(id).cloned()
    }

    /// The id and stored layout of the image last attached from `source`,
    /// when its entry is still here: what a mount needs to start while the
    /// store is unreachable.
    pub fn find_by_source(&self, source: &str) -> Option<(String, Vec<u8>)> {
        let id = gc::source_id(&self.inner.root, source)?;
        let dir = self.inner.root.join("images").join(&id);
        match entry::read_layout(&dir.join(entry::LAYOUT)) {
            Some(layout) => Some((id, layout)),
            None => {
                if dir.is_dir() {
                    tracing::warn!(
                        entry = %dir.display(),
                        "the host cache entry of {source} has no readable stored layout: it cannot be opened without the store (a mount that reaches the store rewrites it)"
                    );
                }
                None
            }
        }
    }

    /// Waits until every fill queued so far is durable (or dropped).
    pub fn flush(&self) {
        let tx = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(tx, _)| tx.clone());
        if let Some(tx) = tx {
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            if tx.send(Job::Flush(done_tx)).is_ok() {
                let _ = done_rx.recv();
            }
        }
    }

    /// Whether the cache stopped writing after an error.
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::Relaxed)
    }

    /// Counts `n` cached blocks found not to match the sidecar by a check
    /// of a whole entry ([`CacheEntry::verify_present`]) in `bad_blocks`.
    pub fn note_bad_blocks(&self, n: u64) {
        self.inner.bad_blocks.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether fills are being thrown away: the cache stopped after an
    /// error, or the last fill found no room (size cap or free-space
    /// floor, and nothing left to evict). A bulk filler (hydration) stops.
    pub fn refuses_fills(&self) -> bool {
        self.inner.stopped.load(Ordering::Relaxed) || self.inner.full.load(Ordering::Relaxed)
    }

    /// This process's counters.
    pub fn stats(&self) -> HostCacheStats {
        let i = &self.inner;
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HostCacheStats {
            hits: g(&i.hits),
            misses: g(&i.misses),
            busy: g(&i.busy),
            bad_blocks: g(&i.bad_blocks),
            writes: g(&i.writes),
            write_errors: g(&i.write_errors),
            dropped: g(&i.dropped),
            evictions: g(&i.evictions),
        }
    }

    /// Fills queued for the writer and not yet written: what a bulk
    /// filler (hydration) waits to bring below half of [`WRITE_QUEUE`]
    /// before fetching more, so that its fills are written, not dropped.
    pub fn write_backlog(&self) -> u64 {
        self.inner.queued.load(Ordering::Relaxed)
    }

    fn send(&self, job: Job) {
        let guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Some((tx, _)) = guard.as_ref() else {
            return;
        };
        let fill = matches!(job, Job::Fill(..));
        if fill {
            self.inner.queued.fetch_add(1, Ordering::Relaxed);
        }
        match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                // The claim in the job is dropped here: the block is free
                // for whoever wants it next.
                if fill {
                    self.inner.queued.fetch_sub(1, Ordering::Relaxed);
                }
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for HostCache {
    fn drop(&mut self) {
        // Finish what is queued, so blocks fetched just before unmount stay.
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((tx, handle)) = writer {
            drop(tx);
            let _ = handle.join();
        }
    }
}

impl HostInner {
    fn lock_entries(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<CacheEntry>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads `block` and checks it (sidecar hash on first read).
    fn read_checked(&self, entry: &CacheEntry, block: u64) -> Option<Bytes> {
        match entry.read_block(block) {
            Ok(bytes) if entry.check(block, &bytes) => Some(Bytes::from(bytes)),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(block, "host cache read failed: {e}");
                None
            }
        }
    }

    fn lookup(&self, key: &BlockKey, wait: bool) -> Lookup {
        let Some(entry) = self.lock_entries().get(&key.image).cloned() else {
            return Lookup::Miss(None);
        };
        let block = key.block;
        if !entry.has_record(block) {
            return Lookup::Miss(None);
        }
        // Present blocks are read without a lock: a map byte is only ever
        // set after the data is durable.
        if entry.is_present(block).unwrap_or(false)
            && let Some(bytes) = self.read_checked(&entry, block)
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Lookup::Hit(bytes, CacheTier::Disk);
        }
        match entry.lock_block(block, wait) {
            Ok(true) => {}
            Ok(false) => {
                self.busy.fetch_add(1, Ordering::Relaxed);
                return Lookup::Busy;
            }
            Err(e) => {
                tracing::debug!(block, "host cache lock failed: {e}");
                self.misses.fetch_add(1, Ordering::Relaxed);
                return Lookup::Miss(None);
            }
        }
        let claim = Claim {
            entry: Arc::clone(&entry),
            block,
        };
        // Under the lock: filled by another process while we waited?
        if entry.is_present(block).unwrap_or(false) {
            if let Some(bytes) = self.read_checked(&entry, block) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                if wait {
                    self.busy.fetch_add(1, Ordering::Relaxed);
                }
                return Lookup::Hit(bytes, CacheTier::Disk);
            }
            // Present but wrong (or unreadable): drop it and refetch.
            self.bad_blocks.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                image = %entry.id(),
                block,
                "host cache block does not match the sidecar; dropping it and fetching it again"
            );
            if entry
                .set_map(block, false)
                .and_then(|()| entry.sync_map())
                .is_err()
            {
                return Lookup::Miss(None);
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        if self.stopped.load(Ordering::Relaxed) {
            // Nothing will be written: don't make other processes wait for us.
            return Lookup::Miss(None);
        }
        Lookup::Miss(Some(FillClaim::new(claim)))
    }

    /// Whether there is room for `more` bytes (evicting unused images if
    /// needed); warns once when there is not.
    fn make_room(&self, more: u64) -> bool {
        let fits = |i: &HostInner| {
            i.usage.load(Ordering::Relaxed) + more <= i.capacity && gc::free_ok(&i.root, more)
        };
        if fits(self) {
            self.full.store(false, Ordering::Relaxed);
            return true;
        }
        let report = gc::collect(&self.root, self.capacity.saturating_sub(more), more);
        self.evictions
            .fetch_add(report.removed.len() as u64, Ordering::Relaxed);
        for id in &report.removed {
            tracing::info!(image = %id, "host cache: evicted (least recently used)");
        }
        self.usage.store(report.usage_after, Ordering::Relaxed);
        if fits(self) {
            self.full.store(false, Ordering::Relaxed);
            return true;
        }
        self.full.store(true, Ordering::Relaxed);
        if !self.full_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                cache = %self.root.display(),
                size_cap = self.capacity,
                room = gc::effective_capacity(
                    &self.root,
                    self.capacity,
                    self.usage.load(Ordering::Relaxed)
                ),
                "host cache is full (its size cap, or less than 5% of the file system free) and no image that is not in use is left to evict; not caching more"
            );
        }
        false
    }

    fn fail(&self, what: &str, e: &io::Error) {
        self.write_errors.fetch_add(1, Ordering::Relaxed);
        if !self.stopped.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                cache = %self.root.display(),
                "host cache {what} failed ({e}); serving from the store from now on, caching stopped"
            );
        }
    }

    /// Writes one batch: data, sync, map, sync, then releases the claims.
    fn write_batch(&self, batch: Vec<(Claim, Bytes)>) {
        let mut written = Vec::with_capacity(batch.len());
        for (claim, bytes) in batch {
            if self.stopped.load(Ordering::Relaxed) || !self.make_room(claim.entry.block_size) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match claim.entry.write_block(claim.block, &bytes) {
                Ok(()) => {
                    self.usage
                        .fetch_add(claim.entry.block_size, Ordering::Relaxed);
                    written.push(claim);
                }
                Err(e) => self.fail("write", &e),
            }
        }
        if written.is_empty() {
            return;
        }
        let mut entries: Vec<&Arc<CacheEntry>> = written.iter().map(|c| &c.entry).collect();
        entries.dedup_by(|a, b| Arc::ptr_eq(a, b));
        for e in &entries {
            if let Err(err) = e.sync_data() {
                self.fail("sync", &err);
                return;
            }
        }
        let before = self.writes.load(Ordering::Relaxed);
        if let Some(n) = self.crash_after
            && before + written.len() as u64 >= n
        {
            tracing::error!("test hook {CRASH_HOOK_ENV}={n}: aborting between data and map");
            std::process::abort();
        }
        for c in &written {
            if let Err(err) = c.entry.set_map(c.block, true) {
                self.fail("map write", &err);
                return;
            }
        }
        for e in &entries {
            if let Err(err) = e.sync_map() {
                self.fail("map sync", &err);
                return;
            }
        }
        for c in &written {
            c.entry.note_verified(c.block);
        }
        let after = self
            .writes
            .fetch_add(written.len() as u64, Ordering::Relaxed)
            + written.len() as u64;
        if after / RESCAN_EVERY != before / RESCAN_EVERY {
            self.usage.store(gc::usage(&self.root), Ordering::Relaxed);
        }
        // `written` drops here: claims released after the map is durable.
    }
}

fn writer_loop(inner: Arc<HostInner>, rx: Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Fill(claim, bytes) => batch.push((claim, bytes)),
                Job::Flush(done) => flushes.push(done),
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        let fills = batch.len() as u64;
        inner.write_batch(batch);
        inner.queued.fetch_sub(fills, Ordering::Relaxed);
        for done in flushes {
            let _ = done.send(());
        }
    }
}

impl BlockCache for HostCache {
    fn get_fast(&self, _key: &BlockKey) -> Option<Bytes> {
        None
    }

    fn get(&self, key: &BlockKey) -> Option<(Bytes, CacheTier)> {
        let entry = self.inner.lock_entries().get(&key.image).cloned()?;
        if !entry.is_present(key.block).unwrap_or(false) {
            return None;
        }
        let bytes = self.inner.read_checked(&entry, key.block)?;
        self.inner.hits.fetch_add(1, Ordering::Relaxed);
        Some((bytes, CacheTier::Disk))
    }

    fn may_block(&self) -> bool {
        true
    }

    fn capacity(&self) -> Option<u64> {
        Some(self.inner.capacity)
    }

    fn lookup(&self, key: &BlockKey, wait: bool) -> Lookup {
        self.inner.lookup(key, wait)
    }

    fn fill(&self, key: &BlockKey, block: Bytes, claim: Option<FillClaim>, _to_memory: bool) {
        if self.inner.stopped.load(Ordering::Relaxed) {
            return;
        }
        let claim = match claim.and_then(|c| c.downcast::<Claim>()) {
            Some(c) => c,
            // Not claimed through a lookup: claim it now if nobody else is
            // filling it and it is not there yet.
            None => match self.inner.lookup(key, false) {
                Lookup::Miss(Some(c)) => match c.downcast::<Claim>() {
                    Some(c) => c,
                    None => return,
                },
                _ => return,
            },
        };
        self.send(Job::Fill(claim, block));
    }

    fn put(&self, key: &BlockKey, block: Bytes) {
        self.fill(key, block, None, false);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const BS: u64 = 64 << 10;

    /// A directory on a file system with room: the cache keeps 5% free,
    /// and a build machine's disk may be fuller than that.
    pub(crate) fn test_dir() -> tempfile::TempDir {
        match std::path::Path::new("/dev/shm").is_dir() {
            true => tempfile::tempdir_in("/dev/shm").unwrap(),
            false => tempfile::tempdir().unwrap(),
        }
    }

    fn spec(id: &str, blocks: u64, hashes: Option<Vec<[u8; 32]>>) -> EntrySpec {
        EntrySpec {
            id: id.into(),
            source: format!("test://{id}"),
            block_size: BS,
            block_count: blocks,
            data_len: blocks * BS - 1000,
            records: (0..blocks).map(|b| b != 1).collect(),
            hashes,
            layout: b"layout bytes".to_vec(),
        }
    }

    fn block(seed: u8) -> Bytes {
        Bytes::from(
            (0..BS as usize)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect::<Vec<u8>>(),
        )
    }

    fn key(id: &str, b: u64) -> BlockKey {
        BlockKey::new(Arc::from(id), b)
    }

    /// Claims, fills and waits until durable.
    fn fill(cache: &HostCache, k: &BlockKey, data: Bytes) {
        let Lookup::Miss(Some(claim)) = cache.lookup(k, false) else {
            panic!("expected a claimable miss for {k:?}")
        };
        cache.fill(k, data, Some(claim), false);
        cache.flush();
    }

    #[test]
    fn filled_blocks_survive_reopen_and_the_last_block_is_cut() {
        survive_reopen(test_dir().path(), false);
    }

    /// The same on a disk file system, where whole blocks are written with
    /// `O_DIRECT` (the cut last block through the page cache).
    #[test]
    fn direct_writes_on_a_disk_file_system_survive_reopen() {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        survive_reopen(dir.path(), true);
    }

    fn survive_reopen(dir: &std::path::Path, want_direct: bool) {
        let s = spec("img", 4, None);
        {
            let c = HostCache::open(dir, 1 << 30).unwrap();
            let e = c.attach(&s).unwrap();
            if want_direct {
                assert!(e.writes_direct(), "O_DIRECT refused on {}", dir.display());
            }
            fill(&c, &key("img", 0), block(1));
            fill(&c, &key("img", 3), block(3));
            assert_eq!(e.present_blocks(), 2);
            assert!(!e.is_complete());
            assert_eq!(c.stats().writes, 2);
        }
        let c = HostCache::open(dir, 1 << 30).unwrap();
        let e = c.attach(&s).unwrap();
        assert_eq!(e.present_blocks(), 2, "counted from the map at attach");
        assert_eq!(e.missing_blocks().unwrap(), vec![2]);
        let Lookup::Hit(got, CacheTier::Disk) = c.lookup(&key("img", 0), false) else {
            panic!("hit expected")
        };
        assert_eq!(got, block(1));
        // The last block holds data only up to data_len; the rest reads 0.
        let Lookup::Hit(last, _) = c.lookup(&key("img", 3), false) else {
            panic!("hit expected")
        };
        let cut = (BS - 1000) as usize;
        assert_eq!(last[..cut], block(3)[..cut]);
        assert!(last[cut..].iter().all(|b| *b == 0));
        assert_eq!(
            std::fs::metadata(e.data_path()).unwrap().len(),
            4 * BS - 1000
        );
        // Zero blocks are never cached; unknown images are plain misses.
        assert!(matches!(
            c.lookup(&key("img", 1), false),
            Lookup::Miss(None)
        ));
        assert!(matches!(
            c.lookup(&key("other", 0), false),
            Lookup::Miss(None)
        ));
    }

    /// Passthrough hands the data file to readers, zero blocks included:
    /// data found where the image has a zero block is punched out before
    /// the file counts as the disk.
    #[test]
    fn junk_in_a_zero_block_is_punched_out_before_the_file_is_handed_out() {
        let dir = test_dir();
        let s = spec("img", 4, None);
        let c = HostCache::open(dir.path(), 1 << 30).unwrap();
        let e = c.attach(&s).unwrap();
        for b in [0, 2, 3] {
            fill(&c, &key("img", b), block(b as u8));
        }
        assert!(e.is_complete());
        let data = e.data_path();
        drop(e);
        drop(c);
        // Block 1 is a zero block of the image: someone writes there.
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
            f.write_all_at(&vec![0xAA; 4096], BS + 100).unwrap();
            f.sync_all().unwrap();
        }
        let c = HostCache::open(dir.path(), 1 << 30).unwrap();
        let e = c.attach(&s).unwrap();
        let local = e.is_local();
        let bytes = std::fs::read(&data).unwrap();
        let zero_block = &bytes[BS as usize..2 * BS as usize];
        assert!(
            !local || zero_block.iter().all(|b| *b == 0),
            "handed out with junk in a zero block"
        );
        // On this file system (tmpfs or ext4) the hole is restored.
        assert!(local, "punching the hole failed here");
        assert_eq!(&bytes[..BS as usize], &block(0)[..]);
    }

    /// A damaged entry (here a map with a bad header) is started afresh
    /// when no process uses it, instead of being skipped for ever.
    #[test]
    fn a_damaged_entry_is_started_afresh() {
        let dir = test_dir();
        let s = spec("img", 4, None);
        let map = {
            let c = HostCache::open(dir.path(), 1 << 30).unwrap();
            let e = c.attach(&s).unwrap();
            fill(&c, &key("img", 0), block(1));
            e.data_path().with_file_name("map")
        };
        std::fs::write(&map, b"garbage").unwrap();
        let c = HostCache::open(dir.path(), 1 << 30).unwrap();
        let e = c.attach(&s).expect("a fresh entry");
        assert_eq!(e.present_blocks(), 0, "nothing of the damaged entry kept");
        fill(&c, &key("img", 2), block(2));
        assert_eq!(e.present_blocks(), 1);
        // In use by another process (a shared lock held): left alone.
        drop(e);
        drop(c);
        std::fs::write(&map, b"garbage").unwrap();
        let lock = std::fs::File::open(map.with_file_name("lock")).unwrap();
        let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockSharedNonblock).unwrap();
        let c = HostCache::open(dir.path(), 1 << 30).unwrap();
        assert!(c.attach(&s).is_err(), "removed while in use");
        drop(held);
    }

    /// An entry whose description cannot be read is listed as damaged (its
    /// bytes counted, not hidden) and `gc` removes it whatever the room.
    #[test]
    fn gc_lists_and_removes_a_damaged_entry() {
        let dir = test_dir();
        let info = {
            let c = HostCache::open(dir.path(), 1 << 30).unwrap();
            let e = c.attach(&spec("img", 4, None)).unwrap();
            fill(&c, &key("img", 0), block(1));
            e.data_path().with_file_name("info.json")
        };
        std::fs::write(&info, b"{bad").unwrap();
        let listed = gc::list(dir.path());
        assert_eq!(listed.len(), 1);
        assert!(listed[0].damaged && !listed[0].in_use, "{listed:?}");
        assert!(listed[0].cached_bytes >= BS, "{listed:?}");
        let report = gc::collect(dir.path(), 1 << 30, 0);
        assert_eq!(report.removed, vec!["img".to_string()]);
        assert!(gc::list(dir.path()).is_empty());
    }

    /// `info.json` and the stored layout are rewritten by the next attach
    /// when damaged (they are what `cache ls` shows and what an offline
    /// mount opens from); a map saying another block count is listed as
    /// damaged.
    #[test]
    fn damaged_descriptions_are_rewritten_and_a_wrong_map_is_listed() {
        let dir = test_dir();
        let s = spec("img", 4, None);
        let (info, layout, map) = {
            let c = HostCache::open(dir.path(), 1 << 30).unwrap();
            let e = c.attach(&s).unwrap();
            fill(&c, &key("img", 0), block(1));
            let d = e.data_path();
            (
                d.with_file_name("info.json"),
                d.with_file_name("layout"),
                d.with_file_name("map"),
            )
        };
        std::fs::write(&info, b"{bad").unwrap();
        std::fs::write(&layout, b"bad layout").unwrap();
        assert!(
            c_find(dir.path()).is_none(),
            "a damaged layout is not offered"
        );
        {
            let c = HostCache::open(dir.path(), 1 << 30).unwrap();
            let e = c.attach(&s).unwrap();
            assert_eq!(e.present_blocks(), 1, "the blocks are kept");
        }
        assert_eq!(gc::list(dir.path())[0].source, "test://img");
        assert!(!gc::list(dir.path())[0].damaged);
        let (id, bytes) = c_find(dir.path()).expect("offered again");
        assert_eq!((id.as_str(), &bytes[..]), ("img", &b"layout bytes"[..]));
        // A map whose block count was overwritten.
        let mut m = std::fs::read(&map).unwrap();
        m[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&map, &m).unwrap();
        assert!(gc::list(dir.path())[0].damaged);
    }

    fn c_find(dir: &std::path::Path) -> Option<(String, Vec<u8>)> {
        HostCache::open(dir, 1 << 30)
            .unwrap()
            .find_by_source("test://img")
    }

    #[test]
    fn data_without_its_map_byte_is_not_a_block() {
        // What a crash between the data write and the map update leaves.
        let dir = test_dir();
        let s = spec("img", 4, None);
        let c = HostCache::open(dir.path(), 1 << 30).unwrap();
        let e = c.attach(&s).unwrap();
        e.write_block(2, &block(9)).unwrap();
        e.sync_data().unwrap();
        drop(c);
        let c = HostCache::open(dir.path(), 1 << 30).unwrap();
        c.attach(&s).unwrap();
        assert!(matches!(
            c.lookup(&key("img", 2), false),
            Lookup::Miss(Some(_))
        ));
    }

    #[test]
    fn a_block_failing_the_sidecar_check_is_dropped_and_refetched() {
        let dir = test_dir();
        let hashes: Vec<[u8; 32]> = (0..4u8)
            .map(|b| *blake3::hash(&block(b)).as_bytes())
            .collect();
        let s = spec("img", 4, Some(hashes));
        {
            let c = HostCache::open(dir.path(), 1 << 30).unwrap();
            c.attach(&s).unwrap();
            fill(&c, &key("img", 2), block(2));
        }
        // Flip a byte of block 2 on disk.
        let data = dir.path().join("images/img/data");
        let f = OpenOptionsExt::rw(&data);
        std::os::unix::fs::FileExt::write_all_at(&f, &[0xAA], 2 * BS + 5).unwrap();
        let c = HostCache::open(dir.path(), 1 << 30).unwrap();
        let e = c.attach(&s).unwrap();
        let Lookup::Miss(Some(claim)) = c.lookup(&key("img", 2), false) else {
            panic!("a corrupted block must be a claimable miss")
        };
        assert_eq!(c.stats().bad_blocks, 1);
        assert_eq!(e.missing_blocks().unwrap(), vec![0, 2, 3]);
        c.fill(&key("img", 2), block(2), Some(claim), false);
        c.flush();
        assert!(matches!(c.lookup(&key("img", 2), false), Lookup::Hit(b, _) if b == block(2)));
    }

    struct OpenOptionsExt;
    impl OpenOptionsExt {
        fn rw(p: &Path) -> std::fs::File {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .unwrap()
        }
    }

    #[test]
    fn a_block_being_filled_elsewhere_is_busy_then_a_hit() {
        // Two caches on one directory: separate open files, so their locks
        // conflict exactly as two processes' do.
        let dir = test_dir();
        let s = spec("img", 4, None);
        let a = HostCache::open(dir.path(), 1 << 30).unwrap();
        let b = Arc::new(HostCache::open(dir.path(), 1 << 30).unwrap());
        a.attach(&s).unwrap();
        b.attach(&s).unwrap();
        let Lookup::Miss(Some(claim)) = a.lookup(&key("img", 0), false) else {
            panic!("first claim")
        };
        assert!(matches!(b.lookup(&key("img", 0), false), Lookup::Busy));
        let waiter = {
            let b = Arc::clone(&b);
            std::thread::spawn(move || b.lookup(&key("img", 0), true))
        };
        a.fill(&key("img", 0), block(7), Some(claim), false);
        a.flush();
        let got = waiter.join().unwrap();
        assert!(matches!(got, Lookup::Hit(bytes, _) if bytes == block(7)));
        // A claim dropped unfilled (a failed fetch) frees the block.
        let Lookup::Miss(Some(claim)) = a.lookup(&key("img", 1 + 1), false) else {
            panic!("claim")
        };
        drop(claim);
        assert!(matches!(
            b.lookup(&key("img", 2), false),
            Lookup::Miss(Some(_))
        ));
    }

    #[test]
    fn eviction_takes_whole_images_lru_and_never_one_in_use() {
        let dir = test_dir();
        {
            let c = HostCache::open(dir.path(), 1 << 30).unwrap();
            for id in ["old", "mid"] {
                c.attach(&spec(id, 4, None)).unwrap();
                fill(&c, &key(id, 0), block(1));
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let c = HostCache::open(dir.path(), 1 << 30).unwrap();
        c.attach(&spec("new", 4, None)).unwrap();
        fill(&c, &key("new", 0), block(1));
        let listed = gc::list(dir.path());
        assert_eq!(listed.len(), 3);
        assert!(
            listed
                .iter()
                .any(|s| s.id == "new" && s.in_use && s.blocks_present == 1 && s.blocks_total == 3)
        );
        assert_eq!(
            gc::remove(dir.path(), "new").unwrap_err().to_string(),
            "image new is in use by a running zvmount or zvimg"
        );
        // A cap of one block: both unused images go, oldest first; "new" stays.
        let report = gc::collect(dir.path(), BS, 0);
        assert_eq!(report.removed, vec!["old".to_string(), "mid".to_string()]);
        let left: Vec<_> = gc::list(dir.path()).into_iter().map(|s| s.id).collect();
        assert_eq!(left, vec!["new".to_string()]);
        // The source note and stored layout allow an offline open.
        let (id, layout) = c.find_by_source("test://new").unwrap();
        assert_eq!((id.as_str(), &layout[..]), ("new", &b"layout bytes"[..]));
    }

    #[test]
    fn a_full_cache_stops_growing_but_lookups_still_work() {
        let dir = test_dir();
        let c = HostCache::open(dir.path(), BS + BS / 2).unwrap();
        c.attach(&spec("img", 4, None)).unwrap();
        fill(&c, &key("img", 0), block(1));
        fill(&c, &key("img", 2), block(2));
        let st = c.stats();
        assert_eq!((st.writes, st.dropped), (1, 1), "{st:?}");
        assert!(matches!(c.lookup(&key("img", 0), false), Lookup::Hit(..)));
        assert!(matches!(
            c.lookup(&key("img", 2), false),
            Lookup::Miss(Some(_))
        ));
    }
}
