//! The persistent disk cache of decoded blocks: one file per block under a
//! hashed directory per image, each with a self-checking header, bounded in
//! bytes with least-recently-used eviction.
//!
//! Entry file layout (little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `ZVMCBLK1` |
//! | 8 | 4 | key length *k* |
//! | 12 | 4 | reserved, 0 |
//! | 16 | 8 | block number |
//! | 24 | 8 | data length *n* |
//! | 32 | 32 | BLAKE3 of (key, block, n, data) |
//! | 64 | *k* | key (the image's cache id) |
//! | 64+*k* | *n* | decoded block |
//!
//! Every read checks all of it, so a torn, truncated, corrupted or foreign
//! file is a miss (and is deleted so the next fetch replaces it). Writes go
//! to a temporary file that is fsynced before it is renamed into place:
//! an entry is durable before it is visible. Writes happen on one
//! background thread so a read never waits for the disk cache.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use lru::LruCache;

use super::{BlockCache, BlockKey, CacheTier};

const MAGIC: &[u8; 8] = b"ZVMCBLK1";
const HEADER_LEN: usize = 64;
/// Longest image key accepted in an entry (cache ids are ~50 bytes).
const MAX_KEY_LEN: usize = 4096;
/// Blocks waiting to be written; beyond this, puts are dropped rather than
/// letting a slow disk hold unbounded memory.
const WRITE_QUEUE: usize = 32;
const ENTRY_EXT: &str = "blk";

/// A byte-bounded persistent cache of decoded blocks under one directory.
#[derive(Debug)]
pub struct DiskCache {
    inner: Arc<DiskInner>,
    writer: Option<(SyncSender<WriterMsg>, JoinHandle<()>)>,
}

#[derive(Debug)]
struct DiskInner {
    root: PathBuf,
    capacity: u64,
    /// Entries known to be on disk, least recently used first, with sizes.
    index: Mutex<DiskIndex>,
    hits: AtomicU64,
    misses: AtomicU64,
    invalid: AtomicU64,
    writes: AtomicU64,
    write_errors: AtomicU64,
    dropped_writes: AtomicU64,
    evictions: AtomicU64,
}

#[derive(Debug)]
struct DiskIndex {
    lru: LruCache<PathBuf, u64>,
    bytes: u64,
}

enum WriterMsg {
    Put(BlockKey, Bytes),
    Flush(std::sync::mpsc::Sender<()>),
}

/// Counters and usage of a [`DiskCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskCacheStats {
    pub capacity: u64,
    pub bytes: u64,
    pub entries: u64,
    pub hits: u64,
    pub misses: u64,
    /// Entries found torn, corrupted or foreign (and deleted).
    pub invalid: u64,
    pub writes: u64,
    pub write_errors: u64,
    /// Puts dropped because the write queue was full.
    pub dropped_writes: u64,
    pub evictions: u64,
}

impl DiskCache {
    /// Opens (creating if needed) a cache under `root` holding at most
    /// `capacity` bytes of entry files. Existing entries are indexed (oldest
    /// modification first) and leftover temporary files removed.
    pub fn open(root: impl Into<PathBuf>, capacity: u64) -> io::Result<DiskCache> {
        let root = root.into();
        fs::create_dir_all(&root)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", root.display())))?;
        let mut found = Vec::new();
        for dir in fs::read_dir(&root)? {
            let dir = dir?;
            if !dir.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(dir.path())? {
                let Ok(entry) = entry else { continue };
                let path = entry.path();
                let Ok(md) = entry.metadata() else { continue };
                if !md.is_file() {
                    continue;
                }
                if path.extension().and_then(|e| e.to_str()) == Some(ENTRY_EXT) {
                    let mtime = md.modified().unwrap_or(std::time::UNIX_EPOCH);
                    found.push((mtime, path, md.len()));
                } else if entry.file_name().to_string_lossy().starts_with('.') {
                    // A temporary file of a write that never finished.
                    let _ = fs::remove_file(&path);
                }
            }
        }
        found.sort();
        let mut index = DiskIndex {
            lru: LruCache::unbounded(),
            bytes: 0,
        };
        for (_, path, len) in found {
            index.bytes += len;
            index.lru.put(path, len);
        }
        let inner = Arc::new(DiskInner {
            root,
            capacity,
            index: Mutex::new(index),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            dropped_writes: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        });
        inner.evict_to_capacity();
        let (tx, rx) = std::sync::mpsc::sync_channel(WRITE_QUEUE);
        let worker = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("zvmount-diskcache".into())
            .spawn(move || writer_loop(worker, rx))?;
        Ok(DiskCache {
            inner,
            writer: Some((tx, handle)),
        })
    }

    /// The directory the cache lives in.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Blocks until every put queued so far is on disk (or failed).
    pub fn flush(&self) {
        if let Some((tx, _)) = &self.writer {
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            if tx.send(WriterMsg::Flush(done_tx)).is_ok() {
                let _ = done_rx.recv();
            }
        }
    }

    /// Usage and counters.
    pub fn stats(&self) -> DiskCacheStats {
        let i = &self.inner;
        let (bytes, entries) = {
            let idx = i.lock_index();
            (idx.bytes, idx.lru.len() as u64)
        };
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DiskCacheStats {
            capacity: i.capacity,
            bytes,
            entries,
            hits: g(&i.hits),
            misses: g(&i.misses),
            invalid: g(&i.invalid),
            writes: g(&i.writes),
            write_errors: g(&i.write_errors),
            dropped_writes: g(&i.dropped_writes),
            evictions: g(&i.evictions),
        }
    }

    /// The file an entry for `key` lives in (for tests and diagnostics).
    pub fn entry_path(&self, key: &BlockKey) -> PathBuf {
        self.inner.entry_path(key)
    }
}

impl Drop for DiskCache {
    fn drop(&mut self) {
        // Let the writer finish what is queued, so blocks fetched just
        // before unmount are kept.
        if let Some((tx, handle)) = self.writer.take() {
            drop(tx);
            let _ = handle.join();
        }
    }
}

impl DiskInner {
    fn lock_index(&self) -> std::sync::MutexGuard<'_, DiskIndex> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry_path(&self, key: &BlockKey) -> PathBuf {
        // Hash the image id: it is not ours to trust as a path component.
        let h = blake3::hash(key.image.as_bytes());
        let dir: String = h.as_bytes()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.root
            .join(dir)
            .join(format!("{:016x}.{ENTRY_EXT}", key.block))
    }

    fn forget(&self, path: &Path) {
        let mut idx = self.lock_index();
        if let Some(len) = idx.lru.pop(path) {
            idx.bytes -= len;
        }
    }

    fn read(&self, key: &BlockKey) -> Option<Bytes> {
        let path = self.entry_path(key);
        if !self.lock_index().lru.contains(&path) {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let raw = match fs::read(&path) {
            Ok(raw) => raw,
            Err(_) => {
                self.forget(&path);
                self.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        match check_entry(&raw, key) {
            Ok(range) => {
                self.lock_index().lru.promote(&path);
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(Bytes::from(raw).slice(range))
            }
            Err(why) => {
                tracing::warn!(path = %path.display(), "disk cache entry rejected ({why}); deleting it");
                let _ = fs::remove_file(&path);
                self.forget(&path);
                self.invalid.fetch_add(1, Ordering::Relaxed);
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    fn write(&self, key: &BlockKey, data: &[u8]) {
        let path = self.entry_path(key);
        let len = (HEADER_LEN + key.image.len() + data.len()) as u64;
        if len > self.capacity || self.lock_index().lru.contains(&path) {
            return;
        }
        match write_entry(&path, key, data) {
            Ok(()) => {
                self.writes.fetch_add(1, Ordering::Relaxed);
                let mut idx = self.lock_index();
                if let Some(old) = idx.lru.put(path, len) {
                    idx.bytes -= old;
                }
                idx.bytes += len;
                drop(idx);
                self.evict_to_capacity();
            }
            Err(e) => {
                // Only the first failure is a warning: a full or read-only
                // disk would otherwise log on every block.
                if self.write_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(path = %path.display(), "disk cache write failed: {e}");
                } else {
                    tracing::debug!(path = %path.display(), "disk cache write failed: {e}");
                }
            }
        }
    }

    fn evict_to_capacity(&self) {
        loop {
            let victim = {
                let mut idx = self.lock_index();
                if idx.bytes <= self.capacity {
                    return;
                }
                match idx.lru.pop_lru() {
                    Some((path, len)) => {
                        idx.bytes -= len;
                        path
                    }
                    None => return,
                }
            };
            let _ = fs::remove_file(&victim);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn writer_loop(inner: Arc<DiskInner>, rx: Receiver<WriterMsg>) {
    for msg in rx {
        match msg {
            WriterMsg::Put(key, data) => inner.write(&key, &data),
            WriterMsg::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

fn entry_hash(key: &BlockKey, data_len: u64, data: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(&(key.image.len() as u64).to_le_bytes());
    h.update(key.image.as_bytes());
    h.update(&key.block.to_le_bytes());
    h.update(&data_len.to_le_bytes());
    h.update(data);
    h.finalize()
}

/// Checks a whole entry file against `key`; returns where the data is.
fn check_entry(raw: &[u8], key: &BlockKey) -> Result<std::ops::Range<usize>, &'static str> {
    if raw.len() < HEADER_LEN {
        return Err("shorter than its header");
    }
    if &raw[0..8] != MAGIC {
        return Err("bad magic");
    }
    let u32_at = |o: usize| u32::from_le_bytes(raw[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(raw[o..o + 8].try_into().expect("8 bytes"));
    let key_len = u32_at(8) as usize;
    let block = u64_at(16);
    let data_len = u64_at(24);
    if key_len > MAX_KEY_LEN {
        return Err("key length out of range");
    }
    let data_start = HEADER_LEN + key_len;
    if u64::try_from(raw.len() - HEADER_LEN).ok()
        != Some(key_len as u64).and_then(|k| k.checked_add(data_len))
        || raw.len() < data_start
    {
        return Err("length does not match the file (torn write?)");
    }
    if &raw[HEADER_LEN..data_start] != key.image.as_bytes() || block != key.block {
        return Err("entry belongs to another block or image");
    }
    let data = &raw[data_start..];
    if entry_hash(key, data_len, data).as_bytes() != &raw[32..64] {
        return Err("checksum mismatch");
    }
    Ok(data_start..raw.len())
}

fn write_entry(path: &Path, key: &BlockKey, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().expect("entry paths have a parent");
    fs::create_dir_all(dir)?;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .expect("entry paths have a name")
        .to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.{}-{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut header = [0u8; HEADER_LEN];
    header[0..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&(key.image.len() as u32).to_le_bytes());
    header[16..24].copy_from_slice(&key.block.to_le_bytes());
    header[24..32].copy_from_slice(&(data.len() as u64).to_le_bytes());
    header[32..64].copy_from_slice(entry_hash(key, data.len() as u64, data).as_bytes());
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&header)?;
        f.write_all(key.image.as_bytes())?;
        f.write_all(data)?;
        // Durable before visible: a crash leaves either no entry or a whole one.
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl BlockCache for DiskCache {
    fn get_fast(&self, _key: &BlockKey) -> Option<Bytes> {
        None
    }

    fn capacity(&self) -> Option<u64> {
        Some(self.inner.capacity)
    }

    fn get(&self, key: &BlockKey) -> Option<(Bytes, CacheTier)> {
        self.inner.read(key).map(|b| (b, CacheTier::Disk))
    }

    fn may_block(&self) -> bool {
        true
    }

    fn put(&self, key: &BlockKey, block: Bytes) {
        if key.image.len() > MAX_KEY_LEN {
            return;
        }
        if let Some((tx, _)) = &self.writer {
            match tx.try_send(WriterMsg::Put(key.clone(), block)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.inner.dropped_writes.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(img: &str, b: u64) -> BlockKey {
        BlockKey::new(Arc::from(img), b)
    }

    fn block(seed: u8, len: usize) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect::<Vec<u8>>(),
        )
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let data = block(1, 100_000);
        {
            let c = DiskCache::open(dir.path(), 10 << 20).unwrap();
            c.put(&key("img", 3), data.clone());
            c.flush();
            assert_eq!(c.get(&key("img", 3)).unwrap().0, data);
        }
        let c = DiskCache::open(dir.path(), 10 << 20).unwrap();
        let (got, tier) = c.get(&key("img", 3)).unwrap();
        assert_eq!(tier, CacheTier::Disk);
        assert_eq!(got, data);
        assert!(c.get(&key("img", 4)).is_none());
        assert!(c.get(&key("other", 3)).is_none());
    }

    #[test]
    fn torn_or_corrupted_entry_is_a_miss_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let data = block(2, 50_000);
        let k = key("img", 7);
        let c = DiskCache::open(dir.path(), 10 << 20).unwrap();
        c.put(&k, data.clone());
        c.flush();
        let path = c.entry_path(&k);
        drop(c);

        // Flip one data byte.
        let mut raw = fs::read(&path).unwrap();
        let n = raw.len();
        raw[n - 10] ^= 0x40;
        fs::write(&path, &raw).unwrap();
        let c = DiskCache::open(dir.path(), 10 << 20).unwrap();
        assert!(c.get(&k).is_none());
        assert_eq!(c.stats().invalid, 1);
        assert!(!path.exists(), "a rejected entry is deleted");
        c.put(&k, data.clone());
        c.flush();
        assert_eq!(c.get(&k).unwrap().0, data);
        drop(c);

        // Truncate it (a torn write that somehow became visible).
        let raw = fs::read(&path).unwrap();
        fs::write(&path, &raw[..raw.len() / 2]).unwrap();
        let c = DiskCache::open(dir.path(), 10 << 20).unwrap();
        assert!(c.get(&k).is_none());
        assert_eq!(c.stats().invalid, 1);
    }

    #[test]
    fn foreign_entry_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), 10 << 20).unwrap();
        let a = key("img", 1);
        let b = key("img", 2);
        c.put(&a, block(3, 4096));
        c.put(&b, block(4, 4096));
        c.flush();
        let (pa, pb) = (c.entry_path(&a), c.entry_path(&b));
        drop(c);
        // Block 1's file copied over block 2's: a valid entry, for the wrong key.
        fs::copy(&pa, &pb).unwrap();
        let c = DiskCache::open(dir.path(), 10 << 20).unwrap();
        assert!(c.get(&b).is_none());
        assert_eq!(c.get(&a).unwrap().0, block(3, 4096));
        assert_eq!(c.stats().invalid, 1);
    }

    #[test]
    fn byte_bound_evicts_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let per = (HEADER_LEN + 3 + 10_000) as u64;
        let c = DiskCache::open(dir.path(), per * 3).unwrap();
        for b in 0..3 {
            c.put(&key("img", b), block(b as u8, 10_000));
        }
        c.flush();
        // Touch 0 so 1 is the oldest.
        assert!(c.get(&key("img", 0)).is_some());
        c.put(&key("img", 3), block(3, 10_000));
        c.flush();
        let st = c.stats();
        assert_eq!(st.entries, 3);
        assert!(st.bytes <= per * 3);
        assert!(c.get(&key("img", 1)).is_none());
        assert!(c.get(&key("img", 0)).is_some());
        assert!(!c.entry_path(&key("img", 1)).exists());
        drop(c);
        // Reopening with a smaller budget evicts down to it.
        let c = DiskCache::open(dir.path(), per).unwrap();
        assert_eq!(c.stats().entries, 1);
    }

    #[test]
    fn leftover_temp_files_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), 1 << 20).unwrap();
        let k = key("img", 1);
        c.put(&k, block(1, 100));
        c.flush();
        let p = c.entry_path(&k);
        drop(c);
        let tmp = p.parent().unwrap().join(".0000000000000009.blk.1-1.tmp");
        fs::write(&tmp, b"partial").unwrap();
        let _c = DiskCache::open(dir.path(), 1 << 20).unwrap();
        assert!(!tmp.exists());
    }
}
