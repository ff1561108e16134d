//! Housekeeping of the host cache directory: what it holds, how much space
//! that takes, eviction of whole images (least recently used first, never
//! one in use), and the source → image id notes.
//!
//! "In use" is the shared `flock` every attached entry holds on its lock
//! file: eviction takes it exclusively without waiting, so it skips any
//! image a live process has open, and a dead process holds nothing.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};

use super::HostCacheError;
use super::entry::{self, DATA, LOCK, MAP, MAP_HEADER};

/// Fraction of the cache's file system kept free (1/20 = 5%).
const FREE_FLOOR_DIVISOR: u64 = 20;

/// One image in the cache, as `zvimg cache ls` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EntryStatus {
    /// The image's identity (its directory name).
    pub id: String,
    /// Where it was last opened from.
    pub source: String,
    /// Bytes of disk (`orig_size`).
    pub disk_size: u64,
    /// Bytes the entry occupies on the cache's file system.
    pub cached_bytes: u64,
    /// Blocks with data present / blocks with data in the image.
    pub blocks_present: u64,
    /// Blocks with data in the image (zero blocks are never stored).
    pub blocks_total: u64,
    /// Last time a process attached it (JSON: RFC 3339 UTC, seconds).
    #[serde(serialize_with = "rfc3339")]
    pub last_use: SystemTime,
    /// Whether a running process has it attached.
    pub in_use: bool,
    /// Whether its description or block map cannot be read: nothing in it
    /// is used, and `gc` removes it first (when not in use).
    pub damaged: bool,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_seconds(*t))
}

/// How a source is named in the cache: a local path made absolute (without
/// touching the file system), so that `zvimg cache ls` and a daemon started
/// elsewhere name the same image the same way; URLs as they are.
pub fn source_name(location: &str) -> String {
    if location.contains("://") {
        return location.to_owned();
    }
    std::path::absolute(location)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| location.to_owned())
}

/// What one collection did.
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    /// Image ids removed.
    pub removed: Vec<String>,
    /// Bytes they occupied.
    pub freed: u64,
    /// Bytes the cache occupies afterwards.
    pub usage_after: u64,
}

fn images(root: &Path) -> PathBuf {
    root.join("images")
}

/// Bytes a file occupies on disk (sparse holes not counted).
fn allocated(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

fn entry_bytes(dir: &Path) -> u64 {
    allocated(&dir.join(DATA)) + allocated(&dir.join(MAP))
}

/// Bytes every entry occupies.
pub fn usage(root: &Path) -> u64 {
    entry_dirs(root).iter().map(|d| entry_bytes(d)).sum()
}

fn entry_dirs(root: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(images(root)) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// Removes leftovers in `tmp/` (entries half created or half deleted by a
/// process that died).
pub(super) fn clean_tmp(root: &Path) {
    let tmp = root.join("tmp");
    let Ok(rd) = fs::read_dir(&tmp) else { return };
    for e in rd.flatten() {
        // A creation in progress in a live process is younger than a minute.
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 60);
        if old {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Whether the cache's file system keeps 5% free after `more` bytes.
pub(super) fn free_ok(root: &Path, more: u64) -> bool {
    match nix::sys::statvfs::statvfs(root) {
        Ok(st) => {
            let frsize = st.fragment_size();
            let total = st.blocks() * frsize;
            let avail = st.blocks_available() * frsize;
            avail.saturating_sub(more) >= total / FREE_FLOOR_DIVISOR
        }
        // Cannot tell: let the write try (and fail cleanly if full).
        Err(_) => true,
    }
}

/// What the cache in `root`, holding `usage` bytes now, can hold at most:
/// its size cap, or less when the file system has less room (the usage
/// plus the free space above the 5% floor).
pub fn effective_capacity(root: &Path, cap: u64, usage: u64) -> u64 {
    match nix::sys::statvfs::statvfs(root) {
        Ok(st) => {
            let frsize = st.fragment_size();
            let total = st.blocks() * frsize;
            let avail = st.blocks_available() * frsize;
            cap.min(usage + avail.saturating_sub(total / FREE_FLOOR_DIVISOR))
        }
        Err(_) => cap,
    }
}

fn source_note(root: &Path, source: &str) -> PathBuf {
    let h = blake3::hash(source_name(source).as_bytes());
    root.join("sources").join(zvhd2::hex(&h.as_bytes()[..16]))
}

/// Notes that `source` held image `id` (best effort).
pub(super) fn remember_source(root: &Path, source: &str, id: &str) {
    let path = source_note(root, source);
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    if fs::write(&tmp, id)
        .and_then(|()| fs::rename(&tmp, &path))
        .is_err()
    {
        let _ = fs::remove_file(&tmp);
    }
}

/// The image id last seen at `source`.
pub(super) fn source_id(root: &Path, source: &str) -> Option<String> {
    let id = fs::read_to_string(source_note(root, source)).ok()?;
    let id = id.trim().to_owned();
    entry::valid_id(&id).then_some(id)
}

/// Tries to take an entry's lock exclusively (nobody has it attached).
/// `Ok(None)` when a process holds it; `Err` when the lock file cannot be
/// opened at all (permissions: not a sign of use).
fn try_exclusive(dir: &Path) -> std::io::Result<Option<Flock<File>>> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(LOCK))?;
    Ok(Flock::lock(f, FlockArg::LockExclusiveNonblock).ok())
}

fn is_in_use(dir: &Path) -> bool {
    dir.join(LOCK).exists() && matches!(try_exclusive(dir), Ok(None))
}

/// Every image in the cache at `root`, least recently used first.
pub fn list(root: &Path) -> Vec<EntryStatus> {
    let mut out: Vec<EntryStatus> = entry_dirs(root)
        .into_iter()
        .filter_map(|dir| status(&dir))
        .collect();
    out.sort_by_key(|s| s.last_use);
    out
}

fn status(dir: &Path) -> Option<EntryStatus> {
    let last_use = fs::metadata(dir.join(LOCK))
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let info = entry::read_info(dir);
    let map = fs::read(dir.join(MAP)).ok();
    // The map must be what the entry says: magic and one byte per block.
    let map = map.filter(|m| {
        info.as_ref().is_some_and(|i| {
            m.len() as u64 == MAP_HEADER + i.block_count && entry::map_header_ok(m, i.block_count)
        })
    });
    let (Some(info), Some(map)) = (info, map) else {
        // Listed (it takes space) and marked, not hidden.
        let id = dir.file_name()?.to_string_lossy().into_owned();
        return Some(EntryStatus {
            id,
            source: "(damaged: its info.json or map cannot be read)".into(),
            disk_size: 0,
            cached_bytes: entry_bytes(dir),
            blocks_present: 0,
            blocks_total: 0,
            last_use: SystemTime::UNIX_EPOCH,
            in_use: is_in_use(dir),
            damaged: true,
        });
    };
    let present = map
        .get(MAP_HEADER as usize..)
        .map_or(0, |m| m.iter().filter(|b| **b == 1).count() as u64);
    Some(EntryStatus {
        id: info.id,
        source: info.source,
        disk_size: info.data_len,
        cached_bytes: entry_bytes(dir),
        blocks_present: present,
        blocks_total: info.record_blocks,
        last_use,
        in_use: is_in_use(dir),
        damaged: false,
    })
}

/// Removes image `id` unless a process has it attached.
pub fn remove(root: &Path, id: &str) -> Result<u64, HostCacheError> {
    if !entry::valid_id(id) {
        return Err(HostCacheError::NotFound { id: id.to_owned() });
    }
    let dir = images(root).join(id);
    if !dir.is_dir() {
        return Err(HostCacheError::NotFound { id: id.to_owned() });
    }
    let lock = match try_exclusive(&dir) {
        Ok(Some(lock)) => lock,
        Ok(None) => return Err(HostCacheError::InUse { id: id.to_owned() }),
        Err(source) => {
            return Err(HostCacheError::Io {
                path: dir.join(LOCK),
                source,
            });
        }
    };
    let bytes = entry_bytes(&dir);
    // Out of `images/` while we hold the lock: a process attaching now
    // creates a fresh entry instead of finding a half-deleted one.
    let trash = root
        .join("tmp")
        .join(format!("{id}.deleted-{}", std::process::id()));
    fs::rename(&dir, &trash).map_err(|source| HostCacheError::Io {
        path: dir.clone(),
        source,
    })?;
    drop(lock);
    fs::remove_dir_all(&trash).map_err(|source| HostCacheError::Io {
        path: trash,
        source,
    })?;
    Ok(bytes)
}

/// Evicts images not in use, least recently used first, until the cache
/// holds at most `cap` bytes and its file system keeps 5% free after
/// `more` bytes.
pub fn collect(root: &Path, cap: u64, more: u64) -> GcReport {
    let mut report = GcReport {
        usage_after: usage(root),
        ..GcReport::default()
    };
    for st in list(root) {
        // Damaged entries go whatever the room: nothing in them is used.
        if !st.damaged && report.usage_after <= cap && free_ok(root, more) {
            break;
        }
        if st.in_use {
            continue;
        }
        if let Ok(freed) = remove(root, &st.id) {
            report.freed += freed;
            report.usage_after = report.usage_after.saturating_sub(freed);
            report.removed.push(st.id);
        }
    }
    report
}
