//! A real FUSE mount made by the real `zvmount` binary: started in the
//! foreground as a child, ready once the mountpoint lists the expected
//! files, stopped with SIGTERM on drop (with a lazy `fusermount3 -uz` as
//! the fallback), and checked to leave no mount behind.
//!
//! Integration tests use [`MountBuilder::start`] (panics with the daemon's
//! stderr) or [`MountBuilder::try_start`] (for tests of refusals); the boot
//! benchmark uses [`MountBuilder::launch`] with its own binary, mountpoint
//! and log, and [`Mounted::try_stop`].

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use zvmount::metrics::MetricsSnapshot;

/// How long a mount may take to come up or go down before it counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How often readiness and exit are polled: short, because the boot
/// benchmark counts the time to mount.
const POLL: Duration = Duration::from_millis(5);
/// The daemon's log filter unless the caller gives `RUST_LOG`.
const DEFAULT_LOG: &str = "warn,zvmount=info,fuser=off";

/// Why a mount could not be started, read or stopped cleanly.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The binary could not be started.
    #[error("could not start {binary}: {source}")]
    Spawn {
        /// The `zvmount` binary that was run.
        binary: PathBuf,
        /// What `spawn` said.
        source: std::io::Error,
    },
    /// The daemon exited before the mount was ready.
    #[error("zvmount exited before mounting ({status}); stderr:\n{stderr}")]
    ExitedEarly {
        /// Its exit status.
        status: ExitStatus,
        /// Everything it wrote on stderr.
        stderr: String,
    },
    /// The mount did not show the expected files in time.
    #[error(
        "zvmount did not mount {mountpoint} with {expected:?} within {waited:?}; stderr:\n{stderr}"
    )]
    NotReady {
        /// The mountpoint.
        mountpoint: PathBuf,
        /// The files that had to appear.
        expected: Vec<String>,
        /// How long we waited.
        waited: Duration,
        /// Everything the daemon wrote on stderr.
        stderr: String,
    },
    /// The daemon was already gone when asked to stop.
    #[error("zvmount was already gone")]
    AlreadyGone,
    /// The daemon did not exit after SIGTERM (it was killed).
    #[error("zvmount did not exit within {waited:?} of SIGTERM; stderr:\n{stderr}")]
    StopTimeout {
        /// How long we waited.
        waited: Duration,
        /// Everything it wrote on stderr.
        stderr: String,
    },
    /// The daemon exited but its mount is still there.
    #[error("{mountpoint} still mounted after zvmount exited; stderr:\n{stderr}")]
    LeftMounted {
        /// The mountpoint.
        mountpoint: PathBuf,
        /// Everything it wrote on stderr.
        stderr: String,
    },
    /// `.zvmount-stats.json` could not be read or parsed.
    #[error("reading {path}: {detail}")]
    Stats {
        /// The stats file.
        path: PathBuf,
        /// What went wrong (I/O error or JSON error and the text).
        detail: String,
    },
    /// Waiting for or signalling the child failed.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The `zvmount` binary beside the running executable: `target/<profile>/`
/// holds it for an integration test (which runs from `target/<profile>/deps/`)
/// and for `zvimg`; else `zvmount` from PATH.
pub fn zvmount_binary() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join("zvmount");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("zvmount")
}

/// How to start a [`Mounted`].
#[derive(Debug)]
pub struct MountBuilder {
    binary: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    env_removes: Vec<OsString>,
    expect: Vec<String>,
    mountpoint: Option<PathBuf>,
    check_on_drop: bool,
}

impl Default for MountBuilder {
    fn default() -> MountBuilder {
        MountBuilder {
            binary: zvmount_binary(),
            args: Vec::new(),
            envs: Vec::new(),
            env_removes: Vec::new(),
            expect: Vec::new(),
            mountpoint: None,
            check_on_drop: true,
        }
    }
}

impl MountBuilder {
    /// The `zvmount` binary to run (default: [`zvmount_binary`]).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = path.into();
        self
    }

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

    /// The environment that points the daemon's S3 client at `server`:
    /// its endpoint, its credentials and region `us-east-1`.
    pub fn s3_env(self, server: &crate::s3::S3Server) -> Self {
        self.env("AWS_ENDPOINT_URL", server.endpoint())
            .env("AWS_ACCESS_KEY_ID", crate::s3::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", crate::s3::SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
    }

    /// An environment variable the daemon must not inherit (AWS_PROFILE).
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env_removes.push(key.as_ref().to_owned());
        self
    }

    /// A file the mount must list before it counts as ready.
    pub fn expect_file(mut self, name: &str) -> Self {
        self.expect.push(name.to_owned());
        self
    }

    /// Mount on this existing, caller-owned directory, with the daemon's
    /// stderr in `<mountpoint>.log` (default: a fresh temporary directory
    /// holding both, removed on drop).
    pub fn mountpoint(mut self, dir: impl Into<PathBuf>) -> Self {
        self.mountpoint = Some(dir.into());
        self
    }

    /// Whether dropping the [`Mounted`] panics when the daemon fails to stop
    /// cleanly (default true, for tests; a benchmark reports errors instead).
    pub fn check_on_drop(mut self, check: bool) -> Self {
        self.check_on_drop = check;
        self
    }

    /// Starts the daemon and waits until the mount is ready; panics with the
    /// daemon's stderr if it exits or does not come up in time.
    pub fn start(self) -> Mounted {
        self.launch().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`MountBuilder::start`], but returns the daemon's failure (its
    /// exit status and stderr) as text instead of panicking, for tests of
    /// refusals.
    pub fn try_start(self) -> Result<Mounted, String> {
        self.launch().map_err(|e| e.to_string())
    }

    /// Starts the daemon and waits until the mount is ready.
    pub fn launch(self) -> Result<Mounted, MountError> {
        let (dir, mountpoint, stderr_path) = match &self.mountpoint {
            Some(m) => (None, m.clone(), m.with_extension("log")),
            None => {
                let dir = tempfile::tempdir().map_err(|source| MountError::Io {
                    what: "creating a temporary directory".into(),
                    source,
                })?;
                let mountpoint = dir.path().join("mnt");
                std::fs::create_dir(&mountpoint).map_err(|source| MountError::Io {
                    what: format!("creating {}", mountpoint.display()),
                    source,
                })?;
                let stderr_path = dir.path().join("zvmount.stderr");
                (Some(dir), mountpoint, stderr_path)
            }
        };
        let stderr = File::create(&stderr_path).map_err(|source| MountError::Io {
            what: format!("creating {}", stderr_path.display()),
            source,
        })?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.args)
            .arg(&mountpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if !self.envs.iter().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", DEFAULT_LOG);
        }
        // As root the daemon caches in /var/cache/zvmount by default: mounts
        // share no host cache unless they pass --cache-dir (or set this).
        cmd.env("ZVMOUNT_CACHE_DIR", "none");
        for key in &self.env_removes {
            cmd.env_remove(key);
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        let child = cmd.spawn().map_err(|source| MountError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        let mut mounted = Mounted {
            child: Some(child),
            mountpoint,
            stderr_path,
            crashed: false,
            check_on_drop: self.check_on_drop,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = mounted
                .child
                .as_mut()
                .expect("held until stopped")
                .try_wait()
                .map_err(|source| MountError::Io {
                    what: "waiting for zvmount".into(),
                    source,
                })?;
            if let Some(status) = exited {
                mounted.child = None;
                return Err(MountError::ExitedEarly {
                    status,
                    stderr: mounted.stderr(),
                });
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
                return Err(MountError::NotReady {
                    mountpoint: mounted.mountpoint.clone(),
                    expected: self.expect.clone(),
                    waited: START_TIMEOUT,
                    stderr: mounted.stderr(),
                });
            }
            std::thread::sleep(POLL);
        }
    }
}

/// A running `zvmount` and its mountpoint.
#[derive(Debug)]
pub struct Mounted {
    child: Option<Child>,
    mountpoint: PathBuf,
    stderr_path: PathBuf,
    /// Killed on purpose: a leftover (stale) mount is expected.
    crashed: bool,
    check_on_drop: bool,
    _dir: Option<tempfile::TempDir>,
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

    /// The file holding the daemon's stderr.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Everything the daemon wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The daemon's counters, from `.zvmount-stats.json`; panics if unreadable.
    pub fn stats(&self) -> MetricsSnapshot {
        self.try_stats().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The daemon's counters, from `.zvmount-stats.json`.
    pub fn try_stats(&self) -> Result<MetricsSnapshot, MountError> {
        let path = self.path(".zvmount-stats.json");
        let raw = std::fs::read(&path).map_err(|e| MountError::Stats {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        serde_json::from_slice(&raw).map_err(|e| MountError::Stats {
            path,
            detail: format!("{e}: {}", String::from_utf8_lossy(&raw)),
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
    pub fn stop(self) -> ExitStatus {
        self.try_stop().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Mounted::stop`], returning the failure instead of panicking.
    pub fn try_stop(mut self) -> Result<ExitStatus, MountError> {
        let status = self.terminate()?;
        if is_mounted(&self.mountpoint) {
            lazy_unmount(&self.mountpoint);
            return Err(MountError::LeftMounted {
                mountpoint: self.mountpoint.clone(),
                stderr: self.stderr(),
            });
        }
        Ok(status)
    }

    fn terminate(&mut self) -> Result<ExitStatus, MountError> {
        let Some(mut child) = self.child.take() else {
            return Err(MountError::AlreadyGone);
        };
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| MountError::Io { what, source }
        };
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&child),
            rustix::process::Signal::TERM,
        )
        .map_err(std::io::Error::from)
        .map_err(io("sending SIGTERM to zvmount"))?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().map_err(io("waiting for zvmount"))? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                lazy_unmount(&self.mountpoint);
                return Err(MountError::StopTimeout {
                    waited: STOP_TIMEOUT,
                    stderr: self.stderr(),
                });
            }
            std::thread::sleep(POLL);
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
        if self.check_on_drop && !std::thread::panicking() && !self.crashed {
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

/// `fusermount3 -uz PATH`: detaches a (stale) mount now, whoever holds it.
pub fn lazy_unmount(path: &Path) {
    let _ = Command::new("fusermount3")
        .arg("-uz")
        .arg(path)
        .stderr(Stdio::null())
        .status();
}
