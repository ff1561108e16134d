//! One image in the host cache: a directory holding
//!
//! | file | what |
//! |---|---|
//! | `data` | the raw disk, sparse: block *n* at byte *n* × block size, `data_len` bytes long |
//! | `map` | block-state map: a 4096-byte header, then one byte per block (1 = present) |
//! | `lock` | lock file: a shared `flock` while a process uses the entry, and an OFD byte-range lock on byte *n* while someone fills block *n* |
//! | `info.json` | what `zvimg cache ls` shows: source, sizes, blocks with data |
//! | `layout` | the image's layout as the image layer encoded it (checksummed), so a mount can start without the store |
//!
//! A map byte is set only after the block's data is durable, and cleared
//! only under the block's lock, so a crash can lose the last blocks written
//! but never expose one that was not. One byte per block (rather than a
//! bit) lets processes set neighbouring blocks without a read-modify-write
//! race. Locks are released by the kernel when a process dies, `kill -9`
//! included.
//!
//! Map header (little-endian): magic `ZVMCMAP1` (0), block size u32 (8),
//! reserved u32 (12), block count u64 (16), data length u64 (24).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};

use super::HostCacheError;

const MAP_MAGIC: &[u8; 8] = b"ZVMCMAP1";
/// Where the first block's byte is in `map`.
pub(super) const MAP_HEADER: u64 = 4096;
const LAYOUT_MAGIC: &[u8; 8] = b"ZVMCLAY1";
/// Files of an entry directory.
pub(super) const DATA: &str = "data";
pub(super) const MAP: &str = "map";
pub(super) const LOCK: &str = "lock";
pub(super) const INFO: &str = "info.json";
pub(super) const LAYOUT: &str = "layout";

/// What the image layer tells the cache about an image when it attaches it.
#[derive(Clone, Debug)]
pub struct EntrySpec {
    /// The image's identity (`ImageLayout::cache_id`): `[0-9a-z-]`, at most 128 bytes.
    pub id: String,
    /// Printable location the image was opened from.
    pub source: String,
    /// Bytes per block.
    pub block_size: u64,
    /// Blocks of the disk.
    pub block_count: u64,
    /// Bytes of disk the data file holds (`orig_size`); the last block is
    /// cut there.
    pub data_len: u64,
    /// Which blocks have a record (the others read as zeros, never cached).
    pub records: Vec<bool>,
    /// BLAKE3 of each decoded block, from the sidecar, when there is one:
    /// a cached block is checked against it on its first read by a process.
    pub hashes: Option<Vec<[u8; 32]>>,
    /// The image's layout, encoded by the image layer, kept to open the
    /// image without its store.
    pub layout: Vec<u8>,
}

/// What `info.json` holds.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct EntryInfo {
    pub id: String,
    pub source: String,
    pub block_size: u64,
    pub block_count: u64,
    pub data_len: u64,
    /// Blocks with a record (what a complete entry holds).
    pub record_blocks: u64,
}

/// An attached entry: open files, the shared "in use" lock, and this
/// process's view (which blocks it has checked against the sidecar).
#[derive(Debug)]
pub struct CacheEntry {
    id: Arc<str>,
    dir: PathBuf,
    pub(super) block_size: u64,
    block_count: u64,
    data_len: u64,
    data: File,
    /// The data file opened with `O_DIRECT`, for whole-block writes: they
    /// go from one reused buffer to the disk without allocating (and
    /// copying into) page-cache pages the daemon will not read back soon.
    /// `None` where the file system refuses `O_DIRECT` (then `data`).
    direct: Option<File>,
    /// The reused, page-aligned staging buffer of `direct` writes
    /// (`block_size` + one page, aligned inside; allocated on first use).
    staging: std::sync::Mutex<Vec<u8>>,
    map: File,
    /// Held shared for as long as the entry is attached: eviction takes it
    /// exclusively and so never removes an entry in use.
    lock: Flock<File>,
    records: Vec<bool>,
    record_blocks: u64,
    hashes: Option<Vec<[u8; 32]>>,
    /// Blocks this process has read and checked against `hashes`.
    verified: Box<[AtomicU64]>,
    /// Record blocks known present (from the map at attach, plus this
    /// process's writes; other processes' writes show at the next
    /// [`CacheEntry::refresh_present`]).
    present: AtomicU64,
    /// Whether the data file holds nothing but holes where the image has
    /// zero blocks (checked once, the first time the whole image is local;
    /// junk found there is punched out).
    zeros_are_holes: std::sync::OnceLock<bool>,
}

/// Whether `e` says the entry's files are damaged (bad header, wrong size,
/// short or missing file), as opposed to the host refusing access.
fn is_damage(e: &HostCacheError) -> bool {
    match e {
        HostCacheError::BadEntry { .. } => true,
        HostCacheError::Io { source, .. } => matches!(
            source.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::NotFound | io::ErrorKind::InvalidData
        ),
        _ => false,
    }
}

/// Alignment of `O_DIRECT` writes (buffer, offset and length): one page,
/// which covers every logical block size in use.
const DIRECT_ALIGN: usize = 4096;

/// The data file at `path` opened for `O_DIRECT` writes, or `None` where
/// the file system does not support it (tmpfs before Linux 6.6, some
/// network file systems).
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(path)
        .ok()
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> HostCacheError + '_ {
    move |source| HostCacheError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Whether `id` is safe as a directory name.
pub(super) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-')
}

impl CacheEntry {
    /// Opens the entry `spec.id` under `images`, creating it (in `tmp`,
    /// then renamed into place) when it does not exist, and takes the
    /// shared in-use lock.
    pub(super) fn attach(
        images: &Path,
        tmp: &Path,
        spec: &EntrySpec,
    ) -> Result<CacheEntry, HostCacheError> {
        if !valid_id(&spec.id) {
            return Err(HostCacheError::BadEntry {
                path: images.join(&spec.id),
                detail: "image id is not a safe directory name".into(),
            });
        }
        let dir = images.join(&spec.id);
        // An eviction may remove the directory between our open and our
        // lock: retry until the lock we hold is the directory's.
        for _ in 0..8 {
            if !dir.exists() {
                create(tmp, &dir, spec)?;
            }
            let lock_path = dir.join(LOCK);
            let lock_file = match OpenOptions::new().read(true).write(true).open(&lock_path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&lock_path)(e)),
            };
            let lock = Flock::lock(lock_file, FlockArg::LockShared)
                .map_err(|(_, e)| io_err(&lock_path)(e.into()))?;
            let same = match fs::metadata(&lock_path) {
                Ok(m) => m.ino() == lock.metadata().map(|l| l.ino()).unwrap_or(0),
                Err(_) => false,
            };
            if !same {
                continue;
            }
            match Self::open_locked(dir.clone(), lock, spec) {
                Err(e) if is_damage(&e) => {
                    // A torn or damaged entry (a crash while it was
                    // created, a bad disk, a hand edit): nothing in it can
                    // be trusted. Start it afresh unless a process uses it.
                    let root = images.parent().unwrap_or(images);
                    match super::gc::remove(root, &spec.id) {
                        Ok(_) => {
                            tracing::warn!(entry = %dir.display(), "host cache entry is damaged ({e}); removed it, starting afresh");
                            continue;
                        }
                        Err(_) => return Err(e),
                    }
                }
                other => return other,
            }
        }
        Err(HostCacheError::BadEntry {
            path: dir,
            detail: "the entry keeps disappearing (evicted while attaching)".into(),
        })
    }

    fn open_locked(
        dir: PathBuf,
        lock: Flock<File>,
        spec: &EntrySpec,
    ) -> Result<CacheEntry, HostCacheError> {
        let open = |name: &str| {
            let p = dir.join(name);
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .map_err(io_err(&p))
        };
        let data = open(DATA)?;
        let direct = open_direct(&dir.join(DATA));
        let map = open(MAP)?;
        let map_path = dir.join(MAP);
        let mut header = [0u8; 32];
        map.read_exact_at(&mut header, 0)
            .map_err(io_err(&map_path))?;
        let bad = |detail: String| HostCacheError::BadEntry {
            path: map_path.clone(),
            detail,
        };
        if &header[0..8] != MAP_MAGIC {
            return Err(bad("bad magic".into()));
        }
        let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().expect("8 bytes"));
        let bs = u64::from(u32::from_le_bytes(header[8..12].try_into().expect("4")));
        if bs != spec.block_size || u64_at(16) != spec.block_count || u64_at(24) != spec.data_len {
            return Err(bad(format!(
                "map describes {} blocks of {bs} bytes ({} bytes), the image {} blocks of {} ({} bytes)",
                u64_at(16),
                u64_at(24),
                spec.block_count,
                spec.block_size,
                spec.data_len
            )));
        }
        let words = spec.block_count.div_ceil(64) as usize;
        let entry = CacheEntry {
            id: Arc::from(spec.id.as_str()),
            block_size: spec.block_size,
            block_count: spec.block_count,
            data_len: spec.data_len,
            data,
            direct,
            staging: std::sync::Mutex::new(Vec::new()),
            map,
            lock,
            record_blocks: spec.records.iter().filter(|r| **r).count() as u64,
            records: spec.records.clone(),
            hashes: spec.hashes.clone(),
            verified: (0..words).map(|_| AtomicU64::new(0)).collect(),
            present: AtomicU64::new(0),
            zeros_are_holes: std::sync::OnceLock::new(),
            dir,
        };
        // Last use, for eviction: the lock file's mtime.
        let _ = entry.lock.set_modified(std::time::SystemTime::now());
        entry.refresh_present()?;
        Ok(entry)
    }

    /// The image id.
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// The entry's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sparse data file (the raw disk once complete).
    pub fn data_path(&self) -> PathBuf {
        self.dir.join(DATA)
    }

    /// Length of the data file: the disk's `orig_size`.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Blocks with a record: what a complete entry holds.
    pub fn record_blocks(&self) -> u64 {
        self.record_blocks
    }

    /// Record blocks present (see [`CacheEntry::refresh_present`]).
    pub fn present_blocks(&self) -> u64 {
        self.present.load(Ordering::Relaxed)
    }

    /// Whether every record block is present (as last seen).
    pub fn is_complete(&self) -> bool {
        self.present_blocks() >= self.record_blocks
    }

    /// Whether `block` has a record.
    pub fn has_record(&self, block: u64) -> bool {
        self.records.get(block as usize).copied().unwrap_or(false)
    }

    /// The map as on disk: one byte per block, 1 = present.
    pub fn read_map(&self) -> io::Result<Vec<u8>> {
        let mut map = vec![0u8; self.block_count as usize];
        self.map.read_exact_at(&mut map, MAP_HEADER)?;
        Ok(map)
    }

    /// Recounts the record blocks present from the map on disk (other
    /// processes' fills included) and returns the count.
    pub fn refresh_present(&self) -> Result<u64, HostCacheError> {
        let map = self.read_map().map_err(io_err(&self.dir.join(MAP)))?;
        let n = map
            .iter()
            .zip(&self.records)
            .filter(|(m, r)| **m == 1 && **r)
            .count() as u64;
        self.present.store(n, Ordering::Relaxed);
        Ok(n)
    }

    /// Record blocks not present in the map on disk, in block order.
    pub fn missing_blocks(&self) -> Result<Vec<u64>, HostCacheError> {
        let map = self.read_map().map_err(io_err(&self.dir.join(MAP)))?;
        Ok(map
            .iter()
            .zip(&self.records)
            .enumerate()
            .filter(|(_, (m, r))| **m != 1 && **r)
            .map(|(b, _)| b as u64)
            .collect())
    }

    /// Rewrites the entry's descriptions (`info.json`, the stored layout)
    /// when they do not read back as `spec`'s: damaged, or left by an older
    /// version. They are what `zvimg cache ls` shows and what a mount opens
    /// the image from while the store is unreachable. Best effort: a
    /// failure is logged, the entry still works.
    pub(super) fn repair_descriptions(&self, spec: &EntrySpec) {
        let info_ok =
            read_info(&self.dir).is_some_and(|i| i.id == spec.id && i.source == spec.source);
        if !info_ok {
            let path = self.dir.join(INFO);
            match replace_file(&path, &info_bytes(spec)) {
                Ok(()) => {
                    tracing::info!(entry = %self.dir.display(), "rewrote the host cache entry's info.json")
                }
                Err(e) => {
                    tracing::warn!(entry = %self.dir.display(), "cannot rewrite info.json: {e}")
                }
            }
        }
        let path = self.dir.join(LAYOUT);
        if read_layout(&path).as_deref() != Some(&spec.layout[..]) {
            match write_layout(&path, &spec.layout) {
                Ok(()) => {
                    tracing::info!(entry = %self.dir.display(), "rewrote the host cache entry's stored layout")
                }
                Err(e) => {
                    tracing::warn!(entry = %self.dir.display(), "cannot rewrite the stored layout: {e}")
                }
            }
        }
    }

    /// Whether the map on disk says `block` is present.
    pub fn is_present(&self, block: u64) -> io::Result<bool> {
        let mut b = [0u8; 1];
        self.map.read_exact_at(&mut b, MAP_HEADER + block)?;
        Ok(b[0] == 1)
    }

    /// Bytes of `block` held in the data file (the last block is cut at
    /// `data_len`).
    fn stored_len(&self, block: u64) -> u64 {
        let start = block * self.block_size;
        self.data_len.saturating_sub(start).min(self.block_size)
    }

    /// Reads `block` (zero-padded to the block size).
    pub(super) fn read_block(&self, block: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; self.block_size as usize];
        let n = self.stored_len(block) as usize;
        self.data
            .read_exact_at(&mut buf[..n], block * self.block_size)?;
        Ok(buf)
    }

    /// Whether `bytes` may be handed out as `block`: checked against the
    /// sidecar's hash the first time this process reads it.
    pub(super) fn check(&self, block: u64, bytes: &[u8]) -> bool {
        let Some(hashes) = &self.hashes else {
            return true;
        };
        let (w, bit) = ((block / 64) as usize, 1u64 << (block % 64));
        if self.verified[w].load(Ordering::Relaxed) & bit != 0 {
            return true;
        }
        let ok = hashes
            .get(block as usize)
            .is_some_and(|h| blake3::hash(bytes).as_bytes() == h);
        if ok {
            self.verified[w].fetch_or(bit, Ordering::Relaxed);
        }
        ok
    }

    /// Notes that this process wrote `block` from verified bytes (no
    /// re-check needed).
    pub(super) fn note_verified(&self, block: u64) {
        let (w, bit) = ((block / 64) as usize, 1u64 << (block % 64));
        self.verified[w].fetch_or(bit, Ordering::Relaxed);
    }

    /// Whether every record block is present and, when there are sidecar
    /// hashes, has been checked by this process: the data file may then be
    /// handed out as the disk itself.
    ///
    /// The daemon never reads zero blocks from the data file, but a reader
    /// handed the file (FUSE passthrough) does: so the zero blocks must be
    /// holes there too, which is checked (and restored) once.
    pub fn is_local(&self) -> bool {
        if !self.is_complete() {
            return false;
        }
        let checked = self.hashes.is_none()
            || self.records.iter().enumerate().all(|(b, r)| {
                !*r || self.verified[b / 64].load(Ordering::Relaxed) & (1u64 << (b % 64)) != 0
            });
        checked
            && *self
                .zeros_are_holes
                .get_or_init(|| self.check_zero_blocks())
    }

    /// Looks for data in the ranges of the image's zero blocks (the writer
    /// never writes there; something else did) and punches it out. `false`
    /// when that cannot be done or known (a file system without
    /// `SEEK_DATA` or hole punching): the file is then not handed out.
    fn check_zero_blocks(&self) -> bool {
        use rustix::fs::{FallocateFlags, SeekFrom, fallocate, seek};
        let mut b = 0u64;
        while b < self.block_count {
            if self.has_record(b) {
                b += 1;
                continue;
            }
            let start = b;
            while b < self.block_count && !self.has_record(b) {
                b += 1;
            }
            let (from, to) = (
                start * self.block_size,
                (b * self.block_size).min(self.data_len),
            );
            if from >= to {
                continue;
            }
            let data_at = match seek(&self.data, SeekFrom::Data(from)) {
                Ok(at) => at,
                // No data from `from` to the end of the file.
                Err(rustix::io::Errno::NXIO) => continue,
                Err(e) => {
                    tracing::info!(image = %self.id, "cannot look for holes in the cache file ({e}); serving it through the daemon");
                    return false;
                }
            };
            if data_at >= to {
                continue;
            }
            tracing::warn!(
                image = %self.id,
                blocks = ?(start..b),
                "host cache file has data where the image has zero blocks; punching it out"
            );
            let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            if let Err(e) = fallocate(&self.data, flags, from, to - from) {
                tracing::warn!(image = %self.id, "cannot punch the zero blocks of the cache file ({e}); serving it through the daemon");
                return false;
            }
        }
        true
    }

    /// Checks every present, not yet checked block against the sidecar
    /// (reading it from the data file); a block that fails is dropped from
    /// the map (under its fill lock) to be fetched again. Returns how many
    /// were dropped. Without sidecar hashes there is nothing to check.
    pub fn verify_present(&self) -> io::Result<u64> {
        if self.hashes.is_none() {
            return Ok(0);
        }
        let map = self.read_map()?;
        let mut dropped = 0;
        for (b, (m, r)) in map.iter().zip(&self.records).enumerate() {
            let b = b as u64;
            let (w, bit) = ((b / 64) as usize, 1u64 << (b % 64));
            if *m != 1 || !*r || self.verified[w].load(Ordering::Relaxed) & bit != 0 {
                continue;
            }
            let bytes = self.read_block(b)?;
            if self.check(b, &bytes) {
                continue;
            }
            self.lock_block(b, true)?;
            let result = (|| {
                // Refilled (and so rechecked) while we waited for the lock?
                if self.is_present(b)? && self.check(b, &self.read_block(b)?) {
                    return Ok(());
                }
                tracing::warn!(image = %self.id, block = b, "host cache block does not match the sidecar; dropping it");
                dropped += 1;
                self.set_map(b, false)?;
                self.sync_map()
            })();
            self.unlock_block(b);
            result?;
        }
        Ok(dropped)
    }

    /// Writes `block` to the data file (not yet durable, not yet marked).
    /// Whole blocks of a page-multiple size go through `O_DIRECT` when the
    /// file system allows it; a cut last block, or any write `O_DIRECT`
    /// refuses, through the page cache.
    pub(super) fn write_block(&self, block: u64, bytes: &[u8]) -> io::Result<()> {
        let n = (self.stored_len(block) as usize).min(bytes.len());
        let offset = block * self.block_size;
        if let Some(direct) = &self.direct
            && n > 0
            && n.is_multiple_of(DIRECT_ALIGN)
            && offset.is_multiple_of(DIRECT_ALIGN as u64)
        {
            let mut staging = self.staging.lock().unwrap_or_else(|p| p.into_inner());
            if staging.len() < n + DIRECT_ALIGN {
                *staging = vec![0u8; n + DIRECT_ALIGN];
            }
            let start = staging.as_ptr().align_offset(DIRECT_ALIGN);
            let aligned = &mut staging[start..start + n];
            aligned.copy_from_slice(&bytes[..n]);
            match direct.write_all_at(aligned, offset) {
                Ok(()) => return Ok(()),
                // Refused after all (alignment rules of this device):
                // the page cache will do.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        self.data.write_all_at(&bytes[..n], offset)
    }

    /// Whether whole blocks are written with `O_DIRECT`.
    #[cfg(test)]
    pub(super) fn writes_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Makes the data written so far durable.
    pub(super) fn sync_data(&self) -> io::Result<()> {
        self.data.sync_data()
    }

    /// Sets the map byte of `block` (1 present, 0 absent); durable after
    /// [`CacheEntry::sync_map`].
    pub(super) fn set_map(&self, block: u64, present: bool) -> io::Result<()> {
        self.map
            .write_all_at(&[u8::from(present)], MAP_HEADER + block)?;
        if self.has_record(block) {
            if present {
                self.present.fetch_add(1, Ordering::Relaxed);
            } else {
                let _ = self
                    .present
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                        Some(n.saturating_sub(1))
                    });
            }
        }
        Ok(())
    }

    /// Makes the map durable.
    pub(super) fn sync_map(&self) -> io::Result<()> {
        self.map.sync_data()
    }

    /// Takes the fill lock of `block`: without waiting (`Ok(false)` when
    /// another process holds it), or waiting for it.
    pub(super) fn lock_block(&self, block: u64, wait: bool) -> io::Result<bool> {
        self.range_lock(block, libc::F_WRLCK as libc::c_short, wait)
    }

    /// Releases the fill lock of `block`.
    pub(super) fn unlock_block(&self, block: u64) {
        let _ = self.range_lock(block, libc::F_UNLCK as libc::c_short, false);
    }

    fn range_lock(&self, block: u64, kind: libc::c_short, wait: bool) -> io::Result<bool> {
        use nix::fcntl::{FcntlArg, fcntl};
        // SAFETY: `flock` is a plain C struct; all-zero is a valid value.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = kind;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = block as libc::off_t;
        fl.l_len = 1;
        loop {
            let arg = if wait {
                FcntlArg::F_OFD_SETLKW(&fl)
            } else {
                FcntlArg::F_OFD_SETLK(&fl)
            };
            match fcntl(self.lock.as_raw_fd(), arg) {
                Ok(_) => return Ok(true),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EACCES) if !wait => {
                    return Ok(false);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The layout the image layer stored, if intact.
    pub fn stored_layout(&self) -> Option<Vec<u8>> {
        read_layout(&self.dir.join(LAYOUT))
    }
}

/// Builds a new entry in `tmp` and renames it to `dir`; losing the race to
/// another process creating the same entry is fine (theirs is used).
fn create(tmp: &Path, dir: &Path, spec: &EntrySpec) -> Result<(), HostCacheError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let work = tmp.join(format!(
        "{}.{}-{}",
        spec.id,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        fs::create_dir_all(&work).map_err(io_err(&work))?;
        let data = work.join(DATA);
        File::create(&data)
            .and_then(|f| f.set_len(spec.data_len))
            .map_err(io_err(&data))?;
        let map = work.join(MAP);
        let mut header = vec![0u8; MAP_HEADER as usize];
        header[0..8].copy_from_slice(MAP_MAGIC);
        header[8..12].copy_from_slice(&(spec.block_size as u32).to_le_bytes());
        header[16..24].copy_from_slice(&spec.block_count.to_le_bytes());
        header[24..32].copy_from_slice(&spec.data_len.to_le_bytes());
        File::create(&map)
            .and_then(|f| {
                f.write_all_at(&header, 0)?;
                f.set_len(MAP_HEADER + spec.block_count)?;
                f.sync_all()
            })
            .map_err(io_err(&map))?;
        let lock = work.join(LOCK);
        File::create(&lock).map_err(io_err(&lock))?;
        let info_path = work.join(INFO);
        fs::write(&info_path, info_bytes(spec)).map_err(io_err(&info_path))?;
        write_layout(&work.join(LAYOUT), &spec.layout)?;
        match fs::rename(&work, dir) {
            Ok(()) => Ok(()),
            // Someone else created it first.
            Err(_) if dir.exists() => Ok(()),
            Err(e) => Err(io_err(dir)(e)),
        }
    })();
    let _ = fs::remove_dir_all(&work);
    result
}

/// Writes `layout` with a magic, its length and its BLAKE3, durably.
/// Whether `map` (a whole map file) starts with the map magic and says
/// `block_count` blocks.
pub(super) fn map_header_ok(map: &[u8], block_count: u64) -> bool {
    map.len() >= 24
        && &map[0..8] == MAP_MAGIC
        && map[16..24].try_into().ok().map(u64::from_le_bytes) == Some(block_count)
}

/// `info.json` of the entry of `spec`.
fn info_bytes(spec: &EntrySpec) -> Vec<u8> {
    let info = EntryInfo {
        id: spec.id.clone(),
        source: spec.source.clone(),
        block_size: spec.block_size,
        block_count: spec.block_count,
        data_len: spec.data_len,
        record_blocks: spec.records.iter().filter(|r| **r).count() as u64,
    };
    serde_json::to_vec_pretty(&info).expect("plain struct")
}

/// Writes `bytes` to `path` by a rename, so a reader sees the old file or
/// the new one, never a part.
fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!("new-{}", std::process::id()));
    let result = File::create(&tmp)
        .and_then(|f| {
            f.write_all_at(bytes, 0)?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Stores `layout` at `path` (magic, length, BLAKE3, bytes), replacing
/// whatever was there in one rename.
pub(super) fn write_layout(path: &Path, layout: &[u8]) -> Result<(), HostCacheError> {
    let mut out = Vec::with_capacity(48 + layout.len());
    out.extend_from_slice(LAYOUT_MAGIC);
    out.extend_from_slice(&(layout.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(layout).as_bytes());
    out.extend_from_slice(layout);
    replace_file(path, &out).map_err(io_err(path))
}

/// The layout stored at `path`, if whole and unchanged.
pub(super) fn read_layout(path: &Path) -> Option<Vec<u8>> {
    let raw = fs::read(path).ok()?;
    if raw.len() < 48 || &raw[0..8] != LAYOUT_MAGIC {
        return None;
    }
    let len = u64::from_le_bytes(raw[8..16].try_into().ok()?);
    let body = &raw[48..];
    if body.len() as u64 != len || blake3::hash(body).as_bytes()[..] != raw[16..48] {
        return None;
    }
    Some(body.to_vec())
}

/// The entry's `info.json`.
pub(super) fn read_info(dir: &Path) -> Option<EntryInfo> {
    serde_json::from_slice(&fs::read(dir.join(INFO)).ok()?).ok()
}
