//! A real FUSE mount made by the real `zvmount` binary, for integration
//! tests: started in the foreground as a child, ready once the mountpoint
//! lists the expected files, stopped with SIGTERM on drop (with a lazy
//! `fusermount3 -uz` as the fallback), and checked to leave no mount behind.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use zvmount::metrics::MetricsSnapshot;

/// How long a mount may take to come up or go down before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// How to start a [`Mounted`].
#[derive(Debug, Default)]
pub struct MountBuilder {
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    expect: Vec<String>,
}

impl MountBuilder {
    /// One more argument before the mountpoint (a SOURCE or an option).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// More arguments before the mountpoint.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable for the daemon (S3 credentials, RUST_LOG).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// A file the mount must list before it counts as ready.
    pub fn expect_file(mut self, name: &str) -> Self {
        self.expect.push(name.to_owned());
        self
    }

    /// Starts the daemon and waits until the mount is ready; panics with the
    /// daemon's stderr if it exits or does not come up in time.
    pub fn start(self) -> Mounted {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`MountBuilder::start`], but returns the daemon's failure (its
    /// exit status and stderr) instead of panicking, for tests of refusals.
    pub fn try_start(self) -> Result<Mounted, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).expect("create mountpoint");
        self.start_at(dir, mountpoint)
    }

    fn start_at(self, dir: tempfile::TempDir, mountpoint: PathBuf) -> Result<Mounted, String> {
        let stderr_path = dir.path().join("zvmount.stderr");
        let stderr = File::create(&stderr_path).expect("create stderr file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_zvmount"));
        cmd.args(&self.args)
            .arg(&mountpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // As root the daemon caches in /var/cache/zvmount by default: tests
        // share nothing unless they pass --cache-dir.
        cmd.env("ZVMOUNT_CACHE_DIR", "none");
        if !self.envs.iter().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "warn,zvmount=info,fuser=off");
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        let child = cmd.spawn().expect("spawn zvmount");
        let mut mounted = Mounted {
            child: Some(child),
            mountpoint,
            stderr_path,
            crashed: false,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = mounted.child.as_mut().unwrap().try_wait().expect("wait") {
                mounted.child = None;
                return Err(format!(
                    "zvmount exited before mounting ({status}); stderr:\n{}",
                    mounted.stderr()
                ));
            }
            if is_mounted(&mounted.mountpoint) {
                let names: Vec<String> = std::fs::read_dir(&mounted.mountpoint)
                    .map(|rd| {
                        rd.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                if self.expect.iter().all(|want| names.contains(want)) {
                    return Ok(mounted);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "zvmount did not mount {} with {:?} within {START_TIMEOUT:?}; stderr:\n{}",
                    mounted.mountpoint.display(),
                    self.expect,
                    mounted.stderr()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running `zvmount` and its mountpoint (in a temporary directory).
#[derive(Debug)]
pub struct Mounted {
    child: Option<Child>,
    mountpoint: PathBuf,
    stderr_path: PathBuf,
    /// Killed on purpose: a leftover (stale) mount is expected.
    crashed: bool,
    _dir: tempfile::TempDir,
}

impl Mounted {
    /// Starts describing a mount.
    pub fn builder() -> MountBuilder {
        MountBuilder::default()
    }

    /// Mounts `source` with extra `options` and waits for `name` to appear.
    pub fn new(source: impl AsRef<OsStr>, options: &[&str], name: &str) -> Mounted {
        Mounted::builder()
            .args(options)
            .arg(source)
            .expect_file(name)
            .start()
    }

    /// The mountpoint.
    pub fn dir(&self) -> &Path {
        &self.mountpoint
    }

    /// A file inside the mount.
    pub fn path(&self, name: &str) -> PathBuf {
        self.mountpoint.join(name)
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the daemon wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The daemon's counters, from `.zvmount-stats.json`.
    pub fn stats(&self) -> MetricsSnapshot {
        let raw =
            std::fs::read(self.path(".zvmount-stats.json")).expect("read .zvmount-stats.json");
        serde_json::from_slice(&raw).unwrap_or_else(|e| {
            panic!(
                "bad .zvmount-stats.json ({e}): {}",
                String::from_utf8_lossy(&raw)
            )
        })
    }

    /// The stats file as free-form JSON (per-image and cache details).
    pub fn stats_json(&self) -> serde_json::Value {
        let raw =
            std::fs::read(self.path(".zvmount-stats.json")).expect("read .zvmount-stats.json");
        serde_json::from_slice(&raw).expect("stats JSON")
    }

    /// Kills the daemon with SIGKILL, as a crash would, leaving a stale
    /// mount behind (cleaned up lazily on drop).
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.crashed = true;
    }

    /// Sends SIGTERM and waits for the daemon to exit; returns its status.
    /// Panics if it does not exit in time or leaves the mount behind.
    pub fn stop(mut self) -> ExitStatus {
        let status = self.terminate().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !is_mounted(&self.mountpoint),
            "{} still mounted after zvmount exited; stderr:\n{}",
            self.mountpoint.display(),
            self.stderr()
        );
        status
    }

    fn terminate(&mut self) -> Result<ExitStatus, String> {
        let Some(mut child) = self.child.take() else {
            return Err("zvmount was already gone".into());
        };
        // SAFETY: kill(2) on the pid of a child we have not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                lazy_unmount(&self.mountpoint);
                return Err(format!(
                    "zvmount did not exit within {STOP_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                    self.stderr()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let result = if self.child.is_some() {
            self.terminate().map(|_| ())
        } else {
            Ok(())
        };
        let leftover = is_mounted(&self.mountpoint);
        if leftover {
            lazy_unmount(&self.mountpoint);
        }
        if !std::thread::panicking() && !self.crashed {
            if let Err(e) = result {
                panic!("{e}");
            }
            assert!(
                !leftover,
                "zvmount left {} mounted; stderr:\n{}",
                self.mountpoint.display(),
                self.stderr()
            );
        }
    }
}

/// Whether something is mounted exactly at `path` (from /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    zvmount::daemon::mounted_fs_type(&path.canonicalize().unwrap_or_else(|_| path.to_owned()))
        .is_some()
}

fn lazy_unmount(path: &Path) {
    let _ = Command::new("fusermount3")
        .arg("-uz")
        .arg(path)
        .stderr(Stdio::null())
        .status();
}
