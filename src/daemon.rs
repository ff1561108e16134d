//! Wiring one mount together and running it until it is told to stop.
//!
//! [`run_mount`] opens every source (store → layout → image), builds the
//! caches and counters, mounts the [`crate::fuse::ZvFs`] file system, waits
//! for SIGINT/SIGTERM (or for someone else to unmount it) and unmounts
//! cleanly. Nothing here reads image bytes: that is [`crate::image`].

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use crate::fuse::{ServedFile, ZvFs};
use crate::metrics::Metrics;
use crate::telemetry::{MetricsAddr, MetricsServer};

pub mod notify;
mod stale;
mod wiring;

pub use crate::image::SizeMode;
pub use stale::{Recovery, StaleMountError, recover as recover_stale_mount};

/// One image (or directory/prefix of images) to serve.
#[derive(Clone, Debug)]
pub struct SourceSpec {
    /// Image location (`path`, `s3://bucket/key`, `https://…`), or a
    /// directory/prefix (ending in `/`, or a local directory) whose
    /// `*.zvhd2` objects are all mounted.
    pub location: String,
    /// File name to serve it under (default `<basename>.raw`); not for a
    /// directory/prefix.
    pub name: Option<String>,
    /// Explicit sidecar location; not for a directory/prefix.
    pub sidecar: Option<String>,
    /// Store settings of its own (a config file's `[[image]]` table);
    /// `None` uses [`MountConfig::store`].
    pub store: Option<zvstore::StoreConfig>,
}

/// Everything a mount needs, from the command line and config file (see
/// [`crate::config`]). Its [`Default`] holds the defaults of the
/// `zvmount` flags.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// What to serve, in order.
    pub sources: Vec<SourceSpec>,
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// How to reach stores (credentials, endpoint, timeouts).
    pub store: zvstore::StoreConfig,
    /// Ignore sidecars even when one lies beside the image.
    pub no_sidecar: bool,
    /// Bytes of decoded blocks kept in memory.
    pub mem_cache: u64,
    /// Host cache directory and its size cap in bytes
    /// ([`MountConfig::DEFAULT_DISK_CACHE`] unless told).
    pub disk_cache: Option<(PathBuf, u64)>,
    /// Hydrate every image into the host cache in the background, at most
    /// this many store bytes per second (0: unlimited); `None`: don't.
    pub hydrate: Option<u64>,
    /// Blocks of sequential readahead (0 = none).
    pub readahead: u32,
    /// Bytes prefetch may hold in flight.
    pub prefetch_budget: u64,
    /// Slice size store GETs are widened to (0: off); see
    /// [`crate::image::ImageOptions::fetch_align`].
    pub fetch_align: u64,
    /// Let other users (and root) read the mount.
    pub allow_other: bool,
    /// Which size the served file has.
    pub size_mode: SizeMode,
    /// Write the blocks read, in first-read order, to this file on unmount.
    pub record_profile: Option<PathBuf>,
    /// Serve the sources as plain raw files, without decoding (to measure
    /// the FUSE path alone). Local files only.
    pub raw_passthrough: bool,
    /// Called once the mount is up and serving (used by `--daemon`).
    pub on_ready: Option<fn()>,
    /// Serve Prometheus metrics here (`--metrics-addr`); off when `None`.
    pub metrics_addr: Option<MetricsAddr>,
}

impl MountConfig {
    /// Size limit of a disk cache when none is given: 10 GiB.
    pub const DEFAULT_DISK_CACHE: u64 = 10 << 30;
}

impl Default for MountConfig {
    fn default() -> Self {
        let image = crate::image::ImageOptions::default();
        MountConfig {
            sources: Vec::new(),
            mountpoint: PathBuf::new(),
            store: zvstore::StoreConfig::default(),
            no_sidecar: false,
            mem_cache: 512 << 20,
            disk_cache: None,
            hydrate: None,
            readahead: u32::try_from(image.readahead_blocks).unwrap_or(u32::MAX),
            prefetch_budget: image.prefetch_budget_bytes,
            fetch_align: image.fetch_align,
            allow_other: false,
            size_mode: image.size_mode,
            record_profile: None,
            raw_passthrough: false,
            on_ready: None,
            metrics_addr: None,
        }
    }
}

/// A running mount: the FUSE session thread and how to stop it.
pub struct Mount {
    mountpoint: PathBuf,
    session: Option<JoinHandle<std::io::Result<()>>>,
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mount")
            .field("mountpoint", &self.mountpoint)
            .finish_non_exhaustive()
    }
}

/// Checks that `mountpoint` can be mounted on, with a message that says
/// what to do when it cannot. A dead FUSE mount left there by a crashed
/// daemon is detached first (see [`recover_stale_mount`]).
pub fn check_mountpoint(mountpoint: &Path) -> anyhow::Result<()> {
    // So that a restart (systemd's Restart=on-failure, or by hand) mounts
    // again instead of failing on what the crash left.
    stale::recover(mountpoint)?;
    match std::fs::metadata(mountpoint) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => bail!("mountpoint {} is not a directory", mountpoint.display()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bail!(
            "mountpoint {} is a stale FUSE mount (\"Transport endpoint is not connected\"), \
             probably left by a crashed zvmount; unmount it with `fusermount3 -uz {}` and retry",
            mountpoint.display(),
            mountpoint.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "mountpoint {} does not exist; create the directory first",
                mountpoint.display()
            )
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot use mountpoint {}", mountpoint.display()));
        }
    }
    let canonical = mountpoint
        .canonicalize()
        .with_context(|| format!("cannot resolve mountpoint {}", mountpoint.display()))?;
    if let Some(fstype) = mounted_fs_type(&canonical) {
        // The kernel may answer `stat` from cached attributes even when the
        // daemon behind the mount is gone; listing it asks the daemon.
        if let Err(e) = std::fs::read_dir(&canonical)
            && e.raw_os_error() == Some(libc::ENOTCONN)
        {
            bail!(
                "mountpoint {} is a stale FUSE mount (\"Transport endpoint is not connected\"), \
                 probably left by a crashed zvmount; unmount it with `fusermount3 -uz {}` and retry",
                canonical.display(),
                canonical.display()
            );
        }
        bail!(
            "{} is already a mount point ({fstype}); unmount it first (`fusermount3 -u {}`) or pick another directory",
            canonical.display(),
            canonical.display()
        );
    }
    Ok(())
}

/// The file-system type mounted exactly at `path`, from /proc/self/mountinfo.
pub fn mounted_fs_type(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let wanted = path.as_os_str().as_bytes();
    info.lines().rev().find_map(|line| {
        // Fields: id parent maj:min root mountpoint options... - fstype source superopts
        let mut fields = line.split(' ');
        let mount_point = fields.nth(4)?;
        if unescape_mountinfo(mount_point).as_bytes() != wanted {
            return None;
        }
        let rest = line.split(" - ").nth(1)?;
        rest.split(' ').next().map(str::to_owned)
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts `mountpoint`. A busy mount (a VM still has the disk open) is
/// detached lazily: it disappears from the namespace now and the session
/// keeps serving open files until they are closed.
pub fn unmount(mountpoint: &Path) -> std::io::Result<()> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    let rc = unsafe { libc::umount2(path.as_ptr(), 0) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EBUSY) => {
            tracing::warn!(
                mountpoint = %mountpoint.display(),
                "mount is busy; detaching it lazily: files already open keep working until closed"
            );
            // SAFETY: as above.
            let rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            if rc == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        }
        // Unprivileged: go through the setuid helper, lazily if busy.
        Some(libc::EPERM) => fusermount_unmount(mountpoint),
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(()), // not mounted (any more)
        _ => Err(err),
    }
}

fn fusermount_unmount(mountpoint: &Path) -> std::io::Result<()> {
    let run = |lazy: bool| {
        let mut cmd = std::process::Command::new("fusermount3");
        cmd.arg("-u").arg("-q");
        if lazy {
            cmd.arg("-z");
        }
        cmd.arg("--")
            .arg(mountpoint)
            .stdin(std::process::Stdio::null());
        cmd.output()
    };
    let out = run(false)?;
    if out.status.success() {
        return Ok(());
    }
    tracing::warn!(
        mountpoint = %mountpoint.display(),
        "fusermount3 -u failed ({}); detaching lazily",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let out = run(true)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "fusermount3 -uz {} failed: {}",
            mountpoint.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Mount {
    /// Mounts `fs` on `mountpoint` and serves it from a background thread.
    pub fn start(fs: ZvFs, mountpoint: &Path, allow_other: bool) -> anyhow::Result<Mount> {
        let options = crate::fuse::mount_options(allow_other);
        let session = fuser::Session::new(fs, mountpoint, &options).map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    " (is fuse3 installed, /dev/fuse accessible, and for --allow-other `user_allow_other` in /etc/fuse.conf?)"
                }
                Some(libc::ENOENT) => " (is /dev/fuse present and fusermount3 on PATH?)",
                _ => "",
            };
            anyhow!("cannot mount on {}: {e}{hint}", mountpoint.display())
        })?;
        let session = std::thread::Builder::new()
            .name("zvmount-fuse".into())
            .spawn(move || session.run())
            .context("cannot start the FUSE session thread")?;
        Ok(Mount {
            mountpoint: mountpoint.to_owned(),
            session: Some(session),
        })
    }

    /// Whether the session has ended (someone unmounted the file system).
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.is_finished())
    }

    /// Unmounts and waits until the session thread has answered its last
    /// request.
    pub fn unmount_and_join(mut self) -> anyhow::Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> anyhow::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        if !session.is_finished() {
            unmount(&self.mountpoint)
                .with_context(|| format!("cannot unmount {}", self.mountpoint.display()))?;
        }
        match session.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow!(
                "FUSE session on {} ended with an error: {e}",
                self.mountpoint.display()
            )),
            Err(_) => Err(anyhow!(
                "FUSE session thread on {} panicked",
                self.mountpoint.display()
            )),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            tracing::error!("{}", crate::util::error_chain(&e));
        }
    }
}

/// The default file name for an image at `key`: its basename with
/// `.zvhd2` (or `.zvhd`) replaced by `.raw`.
pub fn default_name(key: &str) -> String {
    let base = key.trim_end_matches('/').rsplit('/').next().unwrap_or(key);
    let base = base.split(['?', '#']).next().unwrap_or(base);
    let stem = base
        .strip_suffix(".zvhd2")
        .or_else(|| base.strip_suffix(".zvhd"))
        .or_else(|| base.strip_suffix(".raw"))
        .unwrap_or(base);
    if stem.is_empty() {
        "disk.raw".to_owned()
    } else {
        format!("{stem}.raw")
    }
}

/// Mounts per `config` and serves until SIGINT/SIGTERM or an external
/// unmount, then unmounts cleanly. Blocks the calling thread.
pub fn run_mount(mut config: MountConfig) -> anyhow::Result<()> {
    check_mountpoint(&config.mountpoint)?;
    if let Some(path) = &config.record_profile {
        check_profile_destination(path)?;
    }
    // Unmounting later must not depend on the working directory.
    config.mountpoint = config.mountpoint.canonicalize()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("zvmount-io")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Listen before the mount appears: a SIGTERM racing start-up (systemd
    // stopping a unit that is still starting, a test stopping a mount it
    // just saw) must unmount, not kill the process and leave a dead mount.
    let mut stop_signals = {
        let _runtime = runtime.enter();
        StopSignals::listen()?
    };

    // The mount's own counters (its prefetch budget, its stores' outages);
    // each image counts its reads apart.
    let mount_metrics = Arc::new(Metrics::default());
    // Opening a disk cache walks its directory: done here, on the calling
    // thread, rather than inside the runtime.
    let (cache, caches) = wiring::build_cache(&config)?;
    let opened = runtime.block_on(async {
        tokio::select! {
            opened = wiring::open_all(&config, cache, Arc::clone(&mount_metrics)) => opened,
            () = stop_signals.recv() => Err(anyhow!("stopped by a signal before mounting")),
        }
    })?;
    let files: Vec<ServedFile> = opened.iter().map(|o| o.served.clone()).collect();
    for f in &files {
        tracing::info!(name = %f.name, origin = %f.origin, size = f.disk.size(), "serving");
    }

    let served = files.len();
    let telemetry = Arc::new(wiring::telemetry(
        &config.mountpoint,
        &opened,
        mount_metrics,
        caches,
    ));
    // Bound before mounting: a taken port fails the start, not a later scrape.
    let _exporter = match &config.metrics_addr {
        Some(addr) => {
            let server = MetricsServer::start(addr, Arc::clone(&telemetry), runtime.handle())?;
            tracing::info!(addr = %server.addr(), "serving Prometheus metrics");
            Some(server)
        }
        None => None,
    };
    let stats = wiring::stats_source(telemetry);
    let fs = ZvFs::new(files, runtime.handle().clone(), stats)?;
    let mount = Mount::start(fs, &config.mountpoint, config.allow_other)?;
    raise_kernel_readahead(&config.mountpoint);
    notify::probe_mount(&config.mountpoint).with_context(|| {
        format!(
            "the mount on {} does not answer",
            config.mountpoint.display()
        )
    })?;
    tracing::info!(mountpoint = %config.mountpoint.display(), "mounted");
    notify::ready(&format!(
        "serving {served} image(s) on {}",
        config.mountpoint.display()
    ));
    if let Some(ready) = config.on_ready {
        ready();
    }

    if let Some(rate) = config.hydrate {
        wiring::start_hydration(&runtime, &opened, rate);
    }

    let stopped_by_signal = runtime.block_on(wait_for_stop(&mount, stop_signals));
    notify::stopping(if stopped_by_signal {
        "unmounting"
    } else {
        "unmounted externally"
    });
    let result = if stopped_by_signal {
        tracing::info!(mountpoint = %config.mountpoint.display(), "unmounting");
        // A busy mount is detached lazily and keeps serving open files; a
        // second signal gives up waiting for them.
        let mountpoint = config.mountpoint.clone();
        let unmounted = runtime.spawn_blocking(move || mount.unmount_and_join());
        runtime.block_on(async {
            tokio::select! {
                r = unmounted => r.map_err(|e| anyhow!("unmount task failed: {e}"))?,
                _ = next_signal() => {
                    tracing::warn!(mountpoint = %mountpoint.display(), "second signal: exiting without waiting for open files");
                    Ok(())
                }
            }
        })
    } else {
        tracing::info!(mountpoint = %config.mountpoint.display(), "unmounted externally");
        mount.unmount_and_join()
    };

    if let Some(path) = &config.record_profile {
        for o in &opened {
            if let Err(e) = o.write_profile(path, opened.len() > 1) {
                tracing::error!(
                    "cannot write the boot profile: {}",
                    crate::util::error_chain(&e)
                );
            }
        }
    }
    // Don't wait for stragglers (a read stuck on a dead store): the
    // mount is gone, nobody can receive their answers.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Refuses a `--record-profile` path the profile could not be written to at
/// unmount (its folder missing or read-only): found at start, not after a
/// whole boot was recorded.
fn check_profile_destination(path: &Path) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "--record-profile {}: folder {} does not exist",
            path.display(),
            dir.display()
        );
    }
    rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).map_err(|e| {
        anyhow!(
            "--record-profile {}: cannot write in {}: {e}",
            path.display(),
            dir.display()
        )
    })?;
    Ok(())
}

/// SIGINT and SIGTERM, caught from the moment this is made.
struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers; needs a runtime context.
    fn listen() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        })
    }

    /// Waits for either signal.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// Waits for SIGINT/SIGTERM (true) or the session ending on its own (false).
async fn wait_for_stop(mount: &Mount, mut signals: StopSignals) -> bool {
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            () = signals.recv() => return true,
            _ = poll.tick() => if mount.is_finished() { return false },
        }
    }
}

async fn next_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// The kernel caps FUSE readahead at 128 KiB whatever `init` asks for; the
/// per-mount knob in sysfs lifts that, which sequential reads (a VM
/// copying its disk, `sha256sum`) need to reach store throughput. Best
/// effort: only root may write it.
fn raise_kernel_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    let kb = crate::fuse::MAX_READ / 1024;
    match std::fs::write(&knob, kb.to_string()) {
        Ok(()) => tracing::debug!(%knob, kb, "raised kernel readahead"),
        Err(e) => tracing::debug!(%knob, "cannot raise kernel readahead: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names() {
        assert_eq!(default_name("images/ubuntu.zvhd2"), "ubuntu.raw");
        assert_eq!(default_name("ubuntu.zvhd"), "ubuntu.raw");
        assert_eq!(default_name("a/b/disk"), "disk.raw");
        assert_eq!(default_name("https://h/x/win.zvhd2?sig=1"), "win.raw");
        assert_eq!(default_name(".zvhd2"), "disk.raw");
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\04"), r"/end\04");
    }

    #[test]
    fn missing_and_file_mountpoints_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = check_mountpoint(&missing).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let err = check_mountpoint(&file).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        check_mountpoint(dir.path()).unwrap();
    }

    #[test]
    fn root_is_a_mount_point() {
        assert!(mounted_fs_type(Path::new("/")).is_some());
        assert!(check_mountpoint(Path::new("/")).is_err());
    }
}
