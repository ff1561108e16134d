//! Recovering a mountpoint left behind by a daemon that died without
//! unmounting (kill -9, OOM, a panic in the FUSE thread).
//!
//! The kernel keeps such a FUSE mount in the namespace with no one to answer
//! it: every access fails with `ENOTCONN` ("Transport endpoint is not
//! connected"), so nothing can be mounted there until it is detached. A
//! restarted service (systemd's `Restart=on-failure`) must get past this on
//! its own, so [`recover`] detaches it lazily — open files of the dead mount
//! keep failing as they already do, nothing else is touched — and the mount
//! proceeds. Only dead FUSE mounts are detached; a live mount of anything is
//! left for `check_mountpoint` to refuse.

use std::path::{Path, PathBuf};

use super::mounted_fs_type;

/// Why a stale mount could not be cleaned.
#[derive(Debug, thiserror::Error)]
pub enum StaleMountError {
    /// The lazy unmount failed both directly and through `fusermount3 -uz`.
    #[error(
        "mountpoint {path} is a stale FUSE mount (\"Transport endpoint is not connected\"), \
         probably left by a crashed zvmount, and detaching it failed ({detail}); \
         unmount it with `fusermount3 -uz {path}` and retry"
    )]
    Detach {
        /// The mountpoint.
        path: String,
        /// What umount2 and fusermount3 said.
        detail: String,
    },
    /// It is still stale after detaching (mounts stacked deeper than we
    /// are willing to peel).
    #[error("mountpoint {path} is still a stale FUSE mount after {attempts} lazy unmounts")]
    StillStale {
        /// The mountpoint.
        path: String,
        /// How many detaches were tried.
        attempts: u32,
    },
}

/// What [`recover`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing stale at the mountpoint.
    Clean,
    /// This many dead FUSE mounts (of type `fstype`) were detached.
    Detached {
        /// Dead mounts removed (stacked mounts are peeled one by one).
        count: u32,
        /// Their file-system type from mountinfo, e.g. `fuse.zvmount`.
        fstype: String,
    },
}

/// Stacked dead mounts are rare (a crash loop without this recovery); a
/// bound keeps a mountpoint we cannot fix from looping forever.
const MAX_DETACHES: u32 = 8;

/// Detaches every dead FUSE mount stacked on `mountpoint`, logging one line
/// when it did. Returns what it did; errors only when a dead mount is there
/// and cannot be removed.
pub fn recover(mountpoint: &Path) -> Result<Recovery, StaleMountError> {
    let path = absolute(mountpoint);
    let mut count = 0;
    let mut fstype = String::new();
    while let Some(kind) = stale_fuse_type(&path) {
        if count == MAX_DETACHES {
            return Err(StaleMountError::StillStale {
                path: path.display().to_string(),
                attempts: count,
            });
        }
        detach(&path)?;
        count += 1;
        fstype = kind;
    }
    if count == 0 {
        return Ok(Recovery::Clean);
    }
    tracing::warn!(
        mountpoint = %path.display(),
        fstype = %fstype,
        count,
        "found a stale FUSE mount left by a crashed daemon (\"Transport endpoint is not connected\"); detached it lazily and mounting again"
    );
    Ok(Recovery::Detached { count, fstype })
}

/// The mount type at `path` when a FUSE mount is there and its daemon is
/// gone; `None` when nothing is mounted, it is not FUSE, or it answers.
pub fn stale_fuse_type(path: &Path) -> Option<String> {
    let fstype = mounted_fs_type(path)?;
    if !fstype.starts_with("fuse") {
        return None;
    }
    // `stat` may be answered from attributes the kernel cached while the
    // daemon lived; listing the directory always asks the daemon.
    let dead = |e: std::io::Error| e.raw_os_error() == Some(libc::ENOTCONN);
    let stale = match std::fs::metadata(path) {
        Err(e) => dead(e),
        Ok(_) => std::fs::read_dir(path).is_err_and(dead),
    };
    stale.then_some(fstype)
}

/// `path` made absolute without touching it: canonicalize would stat the
/// dead mount and fail. mountinfo lists resolved paths, so resolve the
/// parent (which is alive) and keep the last component.
fn absolute(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => parent.canonicalize().map(|p| p.join(name)).unwrap_or(abs),
        _ => abs,
    }
}

/// Lazily unmounts `path`: umount2(MNT_DETACH) as root, else the setuid
/// `fusermount3 -uz` (which allows it for the user who mounted).
fn detach(path: &Path) -> Result<(), StaleMountError> {
    let direct = match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) => return Ok(()),
        Err(e) => e.to_string(),
    };
    let helper = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg("-q")
        .arg("--")
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output();
    match helper {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(StaleMountError::Detach {
            path: path.display().to_string(),
            detail: format!(
                "umount2: {direct}; fusermount3 -uz: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }),
        Err(e) => Err(StaleMountError::Detach {
            path: path.display().to_string(),
            detail: format!("umount2: {direct}; fusermount3: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_needs_no_recovery() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(recover(dir.path()).unwrap(), Recovery::Clean);
        assert_eq!(stale_fuse_type(dir.path()), None);
    }

    #[test]
    fn a_live_mount_is_not_stale() {
        // `/` is mounted and answers: not ours to detach.
        assert_eq!(stale_fuse_type(Path::new("/")), None);
        assert_eq!(recover(Path::new("/")).unwrap(), Recovery::Clean);
    }

    #[test]
    fn relative_paths_resolve_like_mountinfo() {
        let dir = tempfile::tempdir().unwrap();
        let canonical = dir.path().canonicalize().unwrap();
        let inner = canonical.join("mnt");
        assert_eq!(absolute(&inner), inner);
        assert_eq!(
            absolute(&dir.path().join("x/../mnt")).file_name().unwrap(),
            "mnt"
        );
    }
}
