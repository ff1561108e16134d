//! FUSE requests → disk reads, and nothing more.
//!
//! The mounted file system is one flat, read-only directory: one regular
//! file per served disk (`<name>.raw`, mode 0444) and `.zvmount-stats.json`,
//! a snapshot of the daemon's counters taken when the file is opened.
//!
//! fuser dispatches requests from one thread, so nothing here may block it:
//! a `read` the daemon's memory cache can answer is answered on the spot
//! ([`DiskFile::try_read_now`]); any other clones nothing heavier than an
//! `Arc`, spawns a task on the tokio runtime that awaits
//! [`DiskFile::read_at`] and answers the kernel from there (fuser's reply
//! objects are `Send`). Reads that miss never wait for
//! one another; the kernel may keep many in flight (`FUSE_ASYNC_READ`,
//! a raised `max_background`).
//!
//! The disks are immutable, so files are opened with `FOPEN_KEEP_CACHE` and
//! attributes are cached for long: a block read once stays in the kernel's
//! page cache. The stats file is the exception (`FOPEN_DIRECT_IO`, TTL 0),
//! since its content changes.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};

use crate::metrics::Metrics;
use crate::prefetch::ReaderStream;

mod raw;

pub use raw::RawFileDisk;

/// Name of the counters file in the mount's root directory.
pub const STATS_FILE_NAME: &str = ".zvmount-stats.json";

/// Largest read the kernel is asked to send in one request (and the
/// readahead window it may use): 1 MiB, the kernel's own ceiling for
/// `max_pages` on most systems.
pub const MAX_READ: u32 = 1 << 20;

/// Background (readahead, async) requests the kernel may keep in flight.
/// The default of 16 would cap concurrency below what the store can serve.
const MAX_BACKGROUND: u16 = 128;
/// Requests in flight before the kernel considers the mount congested.
const CONGESTION_THRESHOLD: u16 = 96;

/// How long the kernel may cache attributes and names of the disks: they
/// never change while mounted.
const IMMUTABLE_TTL: Duration = Duration::from_secs(3600);
/// The stats file changes on every read of the disks: never cache it.
const VOLATILE_TTL: Duration = Duration::ZERO;

const ROOT_INO: u64 = 1;
const STATS_INO: u64 = 2;
/// Inode of the first disk; disk `i` is `FIRST_DISK_INO + i`.
const FIRST_DISK_INO: u64 = 3;

/// Error of a disk read, as the FUSE layer sees it: logged, then EIO.
pub type DiskReadError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Something the mount serves as one read-only file: a decoded image, or a
/// plain raw file (to measure the FUSE path on its own).
#[async_trait]
pub trait DiskFile: Send + Sync + fmt::Debug {
    /// Size of the file in bytes; fixed for the life of the mount.
    fn size(&self) -> u64;

    /// Per-reader state for one open file handle (its own sequential
    /// readahead); `None` when the disk keeps none.
    fn open_stream(&self) -> Option<Arc<ReaderStream>> {
        None
    }

    /// Exactly `len` bytes at `offset`, for the handle whose `stream` this
    /// is (if any); the caller keeps `offset + len` within
    /// [`DiskFile::size`]. A short result is an error, never padded.
    async fn read_at(
        &self,
        offset: u64,
        len: usize,
        stream: Option<&ReaderStream>,
    ) -> Result<Bytes, DiskReadError>;

    /// The same bytes as [`DiskFile::read_at`] when they are at hand without
    /// waiting (in memory); `None` sends the read down the async path. Called
    /// on the FUSE thread inside the runtime's context, so it must not block.
    fn try_read_now(
        &self,
        _offset: u64,
        _len: usize,
        _stream: Option<&ReaderStream>,
    ) -> Option<Bytes> {
        None
    }

    /// A local file holding exactly this disk's bytes (same size), when
    /// there is one: new opens are then served by FUSE passthrough, so
    /// reads never reach the daemon. Called at each open; `None` (the
    /// default) keeps reads in the daemon.
    fn backing_file(&self) -> Option<std::fs::File> {
        None
    }
}

/// One file in the mount's root directory.
#[derive(Clone, Debug)]
pub struct ServedFile {
    /// File name inside the mount (`disk.raw`); no `/`, not `.`/`..`.
    pub name: String,
    /// Where the bytes come from.
    pub disk: Arc<dyn DiskFile>,
    /// Modification time shown by `stat` (the image's).
    pub mtime: SystemTime,
    /// Printable origin for log lines (`s3://bucket/key.zvhd2`).
    pub origin: String,
    /// This file's counters (FUSE reads here; the image layer counts the
    /// rest into the same [`Metrics`]).
    pub metrics: Arc<Metrics>,
}

/// Open flags of a passthrough handle: the kernel refuses any but
/// `FOPEN_DIRECT_IO`/`NOFLUSH`/`PARALLEL_DIRECT_WRITES` with passthrough
/// (the page cache is the backing file's own then).
const PASSTHROUGH_FLAGS: FopenFlags = FopenFlags::empty();

/// How the open handles of one disk inode are served.
#[derive(Default)]
struct OpenModes {
    /// Handles whose reads the daemon serves.
    cached: u64,
    /// The backing file of the passthrough handles, and their count.
    backing: Option<(BackingId, u64)>,
}

/// Produces the content of the stats file each time it is opened.
pub type StatsSource = Arc<dyn Fn() -> Vec<u8> + Send + Sync>;

/// The `fuser::Filesystem` of a zvmount mount.
pub struct ZvFs {
    files: Vec<ServedFile>,
    by_name: HashMap<String, u64>,
    runtime: tokio::runtime::Handle,
    stats: StatsSource,
    /// Stats snapshots of open handles, so reads at any offset of one open
    /// see one consistent document.
    stats_handles: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
    /// Reader streams of open disk handles (one sequential detector each).
    disk_handles: Mutex<HashMap<u64, Arc<ReaderStream>>>,
    next_fh: AtomicU64,
    /// Whether the kernel accepted FUSE passthrough at init.
    passthrough: bool,
    /// Per disk inode: open handles served by the daemon, and the backing
    /// file shared by its passthrough handles with their count (the kernel
    /// refuses mixing the two modes on one inode, and wants one backing id
    /// per inode).
    modes: Mutex<HashMap<u64, OpenModes>>,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
}

impl fmt::Debug for ZvFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZvFs")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// Why a set of files cannot be served together.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A name that cannot be a file in the mount's root (empty, `.`,
    /// `..`, a `/` or NUL, over 255 bytes, or the stats file's name).
    #[error("invalid file name {name:?} for {origin}: {why}")]
    BadName {
        /// The name asked for.
        name: String,
        /// The source it was to serve.
        origin: String,
        /// Which rule it breaks.
        why: &'static str,
    },
    /// Two sources would appear under one name.
    #[error(
        "two images would be served as {name:?} ({first} and {second}); pick distinct names with --name"
    )]
    DuplicateName {
        /// The shared name.
        name: String,
        /// The first source with it.
        first: String,
        /// The second source with it.
        second: String,
    },
    /// No files at all (a mount needs at least one image).
    #[error("nothing to serve")]
    Empty,
}

impl ZvFs {
    /// A file system serving `files`; reads run on `runtime`, counters go to
    /// each file's [`ServedFile::metrics`], and `stats` renders the stats file.
    pub fn new(
        files: Vec<ServedFile>,
        runtime: tokio::runtime::Handle,
        stats: StatsSource,
    ) -> Result<ZvFs, FsError> {
        if files.is_empty() {
            return Err(FsError::Empty);
        }
        let mut by_name: HashMap<String, u64> = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            check_name(&file.name).map_err(|why| FsError::BadName {
                name: file.name.clone(),
                origin: file.origin.clone(),
                why,
            })?;
            if let Some(&other) = by_name.get(&file.name) {
                return Err(FsError::DuplicateName {
                    name: file.name.clone(),
                    first: files[(other - FIRST_DISK_INO) as usize].origin.clone(),
                    second: file.origin.clone(),
                });
            }
            by_name.insert(file.name.clone(), FIRST_DISK_INO + i as u64);
        }
        // SAFETY: getuid/getgid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Ok(ZvFs {
            files,
            by_name,
            runtime,
            stats,
            stats_handles: Mutex::new(HashMap::new()),
            disk_handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            passthrough: false,
            modes: Mutex::new(HashMap::new()),
            uid,
            gid,
            mounted_at: SystemTime::now(),
        })
    }

    fn file(&self, ino: u64) -> Option<&ServedFile> {
        ino.checked_sub(FIRST_DISK_INO)
            .and_then(|i| self.files.get(i as usize))
    }

    fn attr(&self, ino: u64) -> Option<(FileAttr, Duration)> {
        let base = FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: FileType::RegularFile,
            perm: 0o444,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            // Preferred I/O size: tools that size their buffers by it
            // (cp, cat, dd without bs) then send requests as large as the
            // kernel allows.
            blksize: MAX_READ,
            flags: 0,
        };
        match ino {
            ROOT_INO => Some((
                FileAttr {
                    kind: FileType::Directory,
                    perm: 0o555,
                    nlink: 2,
                    size: 0,
                    ..base
                },
                IMMUTABLE_TTL,
            )),
            STATS_INO => {
                let size = (self.stats)().len() as u64;
                Some((
                    FileAttr {
                        size,
                        blocks: size.div_ceil(512),
                        ..base
                    },
                    VOLATILE_TTL,
                ))
            }
            _ => {
                let file = self.file(ino)?;
                let size = file.disk.size();
                let t = file.mtime;
                Some((
                    FileAttr {
                        size,
                        blocks: size.div_ceil(512),
                        atime: t,
                        mtime: t,
                        ctime: t,
                        crtime: t,
                        ..base
                    },
                    IMMUTABLE_TTL,
                ))
            }
        }
    }

    /// Opens a disk: by passthrough to its backing file when there is one
    /// and no handle of the inode is served by the daemon, else through
    /// the daemon.
    fn open_disk(&self, ino: u64, fh: u64, file: &ServedFile, reply: ReplyOpen) {
        let mut modes = self.modes.lock().unwrap_or_else(|e| e.into_inner());
        let m = modes.entry(ino).or_default();
        if self.passthrough && m.cached == 0 {
            if let Some((id, n)) = &mut m.backing {
                *n += 1;
                reply.opened_passthrough(FileHandle(fh), PASSTHROUGH_FLAGS, id);
                return;
            }
            if let Some(backing) = file.disk.backing_file() {
                match reply.open_backing(&backing) {
                    Ok(id) => {
                        tracing::info!(file = %file.name, "serving by FUSE passthrough to the local copy");
                        reply.opened_passthrough(FileHandle(fh), PASSTHROUGH_FLAGS, &id);
                        m.backing = Some((id, 1));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(file = %file.name, "FUSE passthrough refused ({e}); serving reads from the daemon");
                    }
                }
            }
        }
        if let Some((id, n)) = &mut m.backing {
            // Passthrough handles are open: the kernel would refuse a
            // daemon-served one, so this open shares their backing file.
            *n += 1;
            reply.opened_passthrough(FileHandle(fh), PASSTHROUGH_FLAGS, id);
            return;
        }
        m.cached += 1;
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn release_disk(&self, ino: u64) {
        let mut modes = self.modes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(m) = modes.get_mut(&ino) else { return };
        match &mut m.backing {
            Some((_, n)) if *n > 1 => *n -= 1,
            // The last passthrough handle: close the backing id.
            Some(_) => m.backing = None,
            None => m.cached = m.cached.saturating_sub(1),
        }
    }

    fn read_stats(&self, fh: u64, offset: u64, size: u32, reply: ReplyData) {
        let doc = self
            .stats_handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh)
            .cloned();
        // A handle we do not know (cannot happen with a sane kernel) gets a
        // fresh snapshot rather than an error.
        let doc = doc.unwrap_or_else(|| Arc::new((self.stats)()));
        let start = (offset as usize).min(doc.len());
        let end = start.saturating_add(size as usize).min(doc.len());
        reply.data(&doc[start..end]);
    }
}

/// Mount options of a zvmount mount: read-only, kernel permission checks,
/// no devices or setuid; other users (`allow_other`, and then
/// `auto_unmount`, which fusermount3 only accepts together with it) only
/// when asked.
pub fn mount_options(allow_other: bool) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::FSName("zvmount".into()),
        MountOption::Subtype("zvmount".into()),
    ];
    if allow_other {
        config.acl = fuser::SessionACL::All;
        config.mount_options.push(MountOption::AutoUnmount);
    }
    config
}

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name == "." || name == ".." {
        return Err("empty, `.` or `..`");
    }
    if name.contains('/') || name.contains('\0') {
        return Err("contains `/` or NUL");
    }
    if name == STATS_FILE_NAME {
        return Err("reserved for the stats file");
    }
    if name.len() > 255 {
        return Err("longer than 255 bytes");
    }
    Ok(())
}

/// The error with its causes, `: `-separated, for one log line.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Errors that embed their source's text would repeat it.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl Filesystem for ZvFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each setter answers with the nearest accepted value when the kernel
        // refuses ours; retrying with that value is always right.
        if let Err(nearest) = config.set_max_readahead(MAX_READ) {
            let _ = config.set_max_readahead(nearest);
        }
        // max_write also sizes `max_pages`, the cap on one read request.
        if let Err(nearest) = config.set_max_write(MAX_READ) {
            let _ = config.set_max_write(nearest);
        }
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(CONGESTION_THRESHOLD);
        // Passthrough (Linux >= 6.9, root): a fully local disk is then read
        // by the kernel straight from the cache file. One level of stacking
        // lets the cache live on an overlay-free file system only.
        self.passthrough = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        tracing::debug!(
            ?config,
            passthrough = self.passthrough,
            "FUSE session initialised"
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != ROOT_INO {
            return reply.error(Errno::ENOENT);
        }
        let ino = match name.to_str() {
            Some(STATS_FILE_NAME) => STATS_INO,
            Some(n) => match self.by_name.get(n) {
                Some(&ino) => ino,
                None => return reply.error(Errno::ENOENT),
            },
            None => return reply.error(Errno::ENOENT),
        };
        match self.attr(ino) {
            Some((attr, ttl)) => reply.entry(&ttl, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some((attr, ttl)) => reply.attr(&ttl, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let flags = flags.0;
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        let ino = ino.0;
        match ino {
            ROOT_INO => reply.error(Errno::EISDIR),
            STATS_INO => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                let doc = Arc::new((self.stats)());
                self.stats_handles
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(fh, doc);
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
            }
            _ => match self.file(ino) {
                Some(file) => {
                    let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                    if let Some(stream) = file.disk.open_stream() {
                        self.disk_handles
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(fh, stream);
                    }
                    self.open_disk(ino, fh, file, reply)
                }
                None => reply.error(Errno::ENOENT),
            },
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino.0 == STATS_INO {
            return self.read_stats(fh.0, offset, size, reply);
        }
        let Some(file) = self.file(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let disk_size = file.disk.size();
        if offset >= disk_size || size == 0 {
            return reply.data(&[]);
        }
        let len = u64::from(size).min(disk_size - offset) as usize;
        let stream = self
            .disk_handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned();
        // A read the memory cache can answer is answered here: handing it
        // to a runtime worker (spawn, wake-up, reply from another thread)
        // would cost more than the lookup itself. The runtime context is
        // entered because a hit may start readahead.
        {
            let _runtime = self.runtime.enter();
            if let Some(bytes) = file.disk.try_read_now(offset, len, stream.as_deref())
                && bytes.len() == len
            {
                Metrics::add(&file.metrics.fuse_reads, 1);
                Metrics::add(&file.metrics.fuse_read_bytes, len as u64);
                return reply.data(&bytes);
            }
        }
        let disk = Arc::clone(&file.disk);
        let name = file.name.clone();
        let metrics = Arc::clone(&file.metrics);
        self.runtime.spawn(async move {
            let started = Instant::now();
            let result = disk.read_at(offset, len, stream.as_deref()).await;
            Metrics::add(&metrics.fuse_reads, 1);
            match result {
                Ok(bytes) if bytes.len() == len => {
                    Metrics::add(&metrics.fuse_read_bytes, len as u64);
                    reply.data(&bytes);
                }
                Ok(bytes) => {
                    // The kernel would zero-fill a short reply: wrong bytes.
                    tracing::error!(
                        file = %name,
                        offset,
                        len,
                        got = bytes.len(),
                        "read returned a short buffer; answering EIO"
                    );
                    Metrics::inc(&metrics.fuse_read_errors);
                    reply.error(Errno::EIO);
                }
                Err(err) => {
                    tracing::error!(
                        file = %name,
                        offset,
                        len,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "read failed (EIO): {}",
                        error_chain(err.as_ref())
                    );
                    Metrics::inc(&metrics.fuse_read_errors);
                    reply.error(Errno::EIO);
                }
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if ino.0 == STATS_INO {
            self.stats_handles
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&fh.0);
        } else if self.file(ino.0).is_some() {
            self.disk_handles
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&fh.0);
            self.release_disk(ino.0);
        }
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Read-only: nothing to flush.
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 != ROOT_INO {
            return reply.error(Errno::ENOTDIR);
        }
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != ROOT_INO {
            return reply.error(Errno::ENOTDIR);
        }
        let fixed = [
            (ROOT_INO, FileType::Directory, "."),
            (ROOT_INO, FileType::Directory, ".."),
            (STATS_INO, FileType::RegularFile, STATS_FILE_NAME),
        ];
        let entries = fixed
            .into_iter()
            .chain(self.files.iter().enumerate().map(|(i, f)| {
                (
                    FIRST_DISK_INO + i as u64,
                    FileType::RegularFile,
                    f.name.as_str(),
                )
            }));
        // An entry's offset is the cookie of the entry after it.
        for (i, (ino, kind, name)) in entries.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        const BSIZE: u64 = 4096;
        let blocks: u64 = self
            .files
            .iter()
            .map(|f| f.disk.size().div_ceil(BSIZE))
            .sum();
        let files = self.files.len() as u64 + 2;
        reply.statfs(blocks, 0, 0, files, 0, BSIZE as u32, 255, BSIZE as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("disk.raw").is_ok());
        for bad in ["", ".", "..", "a/b", STATS_FILE_NAME, "a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn allow_other_brings_auto_unmount() {
        let own = mount_options(false);
        assert_eq!(own.acl, fuser::SessionACL::Owner);
        assert!(!own.mount_options.contains(&MountOption::AutoUnmount));
        assert!(own.mount_options.contains(&MountOption::RO));
        let all = mount_options(true);
        assert_eq!(all.acl, fuser::SessionACL::All);
        assert!(all.mount_options.contains(&MountOption::AutoUnmount));
    }

    #[test]
    fn error_chain_skips_repeats() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
    }
}
