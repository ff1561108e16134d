//! The QEMU guest runner: boots a raw disk (a local file or a file on a
//! zvmount mount) through a fresh qcow2 overlay, serial console to a log,
//! and times the run to the guest's marker line.
//!
//! The test guest (`scripts/build-guest-image.sh`, guest in
//! `scripts/guest/`) prints `ZVMOUNT-BOOT-OK <sha256>` — the checksum of the
//! payload it read — and powers off; [`Boot::check`] compares that checksum
//! with the one the build script computed on the host, so a boot proves the
//! bytes as well as the timing. TCG is the default accelerator: the nested
//! `/dev/kvm` of cloud VMs starts but crawls (see `docs/` and the testing
//! notes); [`Accel::Kvm`] is for hosts where KVM is real.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The test guest's marker (see `scripts/guest/rootfs-init`).
pub const MARKER: &str = "ZVMOUNT-BOOT-OK";

/// Lines of the serial log quoted in errors.
const TAIL_LINES: usize = 20;

/// Why a guest could not be found, built or booted, or booted wrong.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// A program the runner needs is not installed.
    #[error("{tool} not found: {hint}")]
    MissingTool {
        /// The program.
        tool: String,
        /// How to install it.
        hint: &'static str,
    },
    /// A directory is not a `build-guest-image.sh` output.
    #[error("{}: not a build-guest-image.sh output ({detail})", dir.display())]
    NotAGuestDir {
        /// The directory.
        dir: PathBuf,
        /// What is missing or malformed.
        detail: String,
    },
    /// The guest build script failed.
    #[error("{}: {detail}", script.display())]
    Build {
        /// The script.
        script: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// `qemu-img create` of the overlay failed.
    #[error("qemu-img create over {} failed: {detail}", backing.display())]
    Overlay {
        /// The raw disk the overlay was to sit on.
        backing: PathBuf,
        /// Exit status or spawn error.
        detail: String,
    },
    /// QEMU exited without printing the marker.
    #[error(
        "guest did not print {marker:?} (qemu {status}, exit seen {ran:?} after start; {stderr}); serial log {} ({log_bytes} bytes) ends:\n{tail}",
        log.display()
    )]
    NoMarker {
        /// The marker looked for.
        marker: String,
        /// QEMU's (or `timeout`'s) exit status.
        status: ExitStatus,
        /// When the exit was seen, from QEMU's start.
        ran: Duration,
        /// Size of the serial log.
        log_bytes: u64,
        /// QEMU's stderr.
        stderr: String,
        /// The serial log.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// The guest printed the marker but QEMU then failed.
    #[error("qemu exited with {status} after the marker: {stderr}")]
    FailedAfterMarker {
        /// QEMU's exit status.
        status: ExitStatus,
        /// QEMU's stderr.
        stderr: String,
    },
    /// The guest neither printed the marker nor stopped in time.
    #[error("guest did not boot within {waited:?}; serial log {} ends:\n{tail}", log.display())]
    Timeout {
        /// The time allowed.
        waited: Duration,
        /// The serial log.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// The guest's checksum of what it read differs from the host's.
    #[error(
        "guest booted from {} read wrong bytes: printed sha256 {got:?}, expected {want}",
        disk.display()
    )]
    WrongBytes {
        /// The raw disk it booted from.
        disk: PathBuf,
        /// The checksum it printed.
        got: String,
        /// The checksum of the payload as built.
        want: String,
    },
    /// Spawning or waiting for a process, or a file operation, failed.
    #[error("{what}: {source}")]
    Io {
        /// The step and path.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A bootable raw disk and, for the test guest, the checksum it must print.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// The raw disk.
    pub raw: PathBuf,
    /// The sha256 (hex) the guest prints after the marker; `None` for a
    /// user's own image, whose checksum is unknown.
    pub expected_sha: Option<String>,
    /// MiB of incompressible, unread data the build script added (0 for
    /// the plain test guest and for a user's image).
    pub data_mib: u64,
}

impl GuestImage {
    /// The guest in a `build-guest-image.sh` output directory
    /// (`guest.raw`, `guest.expected`, optionally `guest.data-mib`).
    pub fn from_dir(dir: &Path) -> Result<GuestImage, QemuError> {
        let bad = |detail: String| QemuError::NotAGuestDir {
            dir: dir.to_owned(),
            detail,
        };
        let raw = dir.join("guest.raw");
        let sha = std::fs::read_to_string(dir.join("guest.expected"))
            .map_err(|e| bad(format!("guest.expected: {e}")))?;
        if !raw.is_file() {
            return Err(bad("no guest.raw".into()));
        }
        let data_mib = match std::fs::read_to_string(dir.join("guest.data-mib")) {
            Ok(text) => text
                .trim()
                .parse()
                .map_err(|e| bad(format!("guest.data-mib {:?}: {e}", text.trim())))?,
            Err(_) => 0,
        };
        Ok(GuestImage {
            raw,
            expected_sha: Some(sha.trim().to_string()),
            data_mib,
        })
    }

    /// The guest named by `ZV_GUEST_DIR`, for an end-to-end test; `None`
    /// (after printing `SKIPPED <test>`) when it is unset, unless
    /// `ZV_REQUIRE_E2E=1` (as in CI), where that panics. Also panics when
    /// the directory is not a guest or QEMU is missing: a test that was
    /// asked to run must not pass silently.
    pub fn from_env(test: &str) -> Option<GuestImage> {
        let required = std::env::var("ZV_REQUIRE_E2E").is_ok_and(|v| v == "1");
        let Some(dir) = std::env::var_os("ZV_GUEST_DIR").map(PathBuf::from) else {
            assert!(
                !required,
                "ZV_REQUIRE_E2E=1 but ZV_GUEST_DIR is not set (run scripts/build-guest-image.sh)"
            );
            eprintln!(
                "SKIPPED {test}: set ZV_GUEST_DIR to the output of scripts/build-guest-image.sh"
            );
            return None;
        };
        let guest = GuestImage::from_dir(&dir)
            .unwrap_or_else(|e| panic!("{e}; rebuild with scripts/build-guest-image.sh"));
        require_tools().unwrap_or_else(|e| panic!("{e}"));
        Some(guest)
    }
}

/// Runs the guest build script (which caches its output) and returns the
/// directory it prints on its last line; `data_mib` asks for that much
/// incompressible data added to the image.
pub fn build_guest(script: &Path, data_mib: Option<u64>) -> Result<PathBuf, QemuError> {
    let fail = |detail: String| QemuError::Build {
        script: script.to_owned(),
        detail,
    };
    let mut cmd = Command::new(script);
    if let Some(mib) = data_mib {
        cmd.args(["--data-mib", &mib.to_string()]);
    }
    eprintln!("building (or reusing) the test guest: {cmd:?}");
    let out = cmd.stderr(Stdio::inherit()).output().map_err(|e| {
        fail(format!(
            "cannot run it ({e}); run from the repository root or pass --build-script"
        ))
    })?;
    if !out.status.success() {
        return Err(fail(format!("failed ({})", out.status)));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout.lines().last().unwrap_or("").trim();
    if dir.is_empty() {
        return Err(fail("printed no output directory".into()));
    }
    Ok(PathBuf::from(dir))
}

/// Whether `program` is runnable: a path to a file, or a name found on PATH.
pub fn on_path(program: &Path) -> bool {
    if program.components().count() > 1 {
        return program.is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Checks that QEMU, `qemu-img` and `timeout` are installed.
pub fn require_tools() -> Result<(), QemuError> {
    for (tool, hint) in [
        (
            "qemu-system-x86_64",
            "apt-get install qemu-system-x86 (scripts/install-deps.sh)",
        ),
        (
            "qemu-img",
            "apt-get install qemu-utils (scripts/install-deps.sh)",
        ),
        ("timeout", "coreutils"),
    ] {
        if !on_path(Path::new(tool)) {
            return Err(QemuError::MissingTool {
                tool: tool.into(),
                hint,
            });
        }
    }
    Ok(())
}

/// The accelerator QEMU runs the guest with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: slow but the same everywhere.
    #[default]
    Tcg,
    /// `-accel kvm -cpu host`, for hosts with a real (not nested) KVM.
    Kvm,
}

impl Accel {
    /// `kvm` if `ZV_QEMU_ACCEL=kvm`, else TCG.
    pub fn from_env() -> Accel {
        if std::env::var("ZV_QEMU_ACCEL").is_ok_and(|a| a == "kvm") {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    /// `tcg` or `kvm`.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// How a [`Guest`] runs.
#[derive(Clone, Debug)]
pub struct QemuOptions {
    /// The accelerator.
    pub accel: Accel,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Longest the guest may run; QEMU is killed (by `timeout`) after it.
    pub timeout: Duration,
    /// Text on the serial console that marks the end of boot.
    pub marker: String,
}

impl Default for QemuOptions {
    fn default() -> QemuOptions {
        QemuOptions {
            accel: Accel::Tcg,
            memory_mib: 512,
            timeout: Duration::from_secs(300),
            marker: MARKER.into(),
        }
    }
}

/// A running QEMU guest booting from a fresh qcow2 overlay over a raw disk;
/// killed, and its overlay removed, on drop.
#[derive(Debug)]
pub struct Guest {
    child: Option<Child>,
    backing: PathBuf,
    overlay: PathBuf,
    log: PathBuf,
    stderr: PathBuf,
    started: Instant,
    options: QemuOptions,
}

impl Guest {
    /// Creates `<stem>.qcow2` over `backing` and starts QEMU on it, serial
    /// console to `<stem>.log`, QEMU's stderr to `<stem>.stderr`. The clock
    /// of [`Boot::to_marker`] starts as QEMU is spawned.
    pub fn start(backing: &Path, stem: &Path, options: &QemuOptions) -> Result<Guest, QemuError> {
        let overlay = stem.with_extension("qcow2");
        let log = stem.with_extension("log");
        let stderr = stem.with_extension("stderr");
        let _ = std::fs::remove_file(&overlay);
        let _ = std::fs::remove_file(&log);
        let overlay_err = |detail: String| QemuError::Overlay {
            backing: backing.to_owned(),
            detail,
        };
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(backing)
            .arg(&overlay)
            .stdin(Stdio::null())
            .status()
            .map_err(|e| overlay_err(format!("running qemu-img: {e}")))?;
        if !status.success() {
            return Err(overlay_err(status.to_string()));
        }
        let stderr_file = File::create(&stderr).map_err(|source| QemuError::Io {
            what: format!("creating {}", stderr.display()),
            source,
        })?;
        let secs = options.timeout.as_secs().max(1).to_string();
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "10", &secs, "qemu-system-x86_64"]);
        match options.accel {
            Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => cmd.args(["-accel", "tcg"]),
        };
        // One vCPU leaves the other core to the daemon serving the disk.
        cmd.args([
            "-m",
            &options.memory_mib.to_string(),
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-display", "none", "-no-reboot", "-serial"])
        .arg(format!("file:{}", log.display()))
        .arg("-drive")
        .arg(format!("file={},format=qcow2,if=virtio", overlay.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr_file);
        let started = Instant::now();
        let child = cmd.spawn().map_err(|source| QemuError::Io {
            what: "starting qemu-system-x86_64".into(),
            source,
        })?;
        Ok(Guest {
            child: Some(child),
            backing: backing.to_owned(),
            overlay,
            log,
            stderr,
            started,
            options: options.clone(),
        })
    }

    /// Whether QEMU has exited (a test polling for a boot to get under way
    /// checks it did not end early); [`Guest::wait`] still reports the run.
    pub fn finished(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Waits for the guest to power off, noting when the marker appeared.
    /// An error only if it outlives [`QemuOptions::timeout`] or cannot be
    /// waited for; a boot without the marker is a [`Boot`] that
    /// [`Boot::check`] rejects.
    pub fn wait(mut self) -> Result<Boot, QemuError> {
        let deadline = self.started + self.options.timeout;
        let marker = self.options.marker.clone();
        let mut found: Option<(Duration, String)> = None;
        loop {
            if found.is_none() {
                found = find_marker(&self.log, &marker, false)
                    .map(|line| (self.started.elapsed(), line));
            }
            let child = self.child.as_mut().expect("held until reaped");
            let exited = child.try_wait().map_err(|source| QemuError::Io {
                what: "waiting for qemu".into(),
                source,
            })?;
            if let Some(status) = exited {
                self.child = None;
                if found.is_none() {
                    // Written just before the exit; nothing more is coming,
                    // so a last line without its newline counts too.
                    found = find_marker(&self.log, &marker, true)
                        .map(|line| (self.started.elapsed(), line));
                }
                let (to_marker, marker_line) = found.unzip();
                return Ok(Boot {
                    status,
                    to_marker,
                    marker_line,
                    marker,
                    backing: self.backing.clone(),
                    log: self.log.clone(),
                    stderr: std::fs::read_to_string(&self.stderr)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                    ran: self.started.elapsed(),
                });
            }
            if Instant::now() > deadline {
                return Err(QemuError::Timeout {
                    waited: self.options.timeout,
                    log: self.log.clone(),
                    tail: tail(&self.log, TAIL_LINES),
                });
            }
            std::thread::sleep(Duration::from_millis(if found.is_some() { 50 } else { 10 }));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.overlay);
    }
}

/// A finished guest run.
#[derive(Debug)]
pub struct Boot {
    /// QEMU's exit status (through `timeout`).
    pub status: ExitStatus,
    /// Time from QEMU's start to the marker, if it was printed.
    pub to_marker: Option<Duration>,
    /// The marker line from the marker on, if it was printed.
    pub marker_line: Option<String>,
    /// Time from QEMU's start to its exit.
    pub ran: Duration,
    /// The serial log.
    pub log: PathBuf,
    marker: String,
    backing: PathBuf,
    stderr: String,
}

impl Boot {
    /// The time to the marker of a clean boot that, when `expected_sha` is
    /// given, read exactly the bytes of the image (the guest's checksum).
    pub fn check(&self, expected_sha: Option<&str>) -> Result<Duration, QemuError> {
        let (Some(at), Some(line)) = (self.to_marker, &self.marker_line) else {
            return Err(QemuError::NoMarker {
                marker: self.marker.clone(),
                status: self.status,
                ran: self.ran,
                log_bytes: std::fs::metadata(&self.log).map_or(0, |m| m.len()),
                stderr: self.stderr.clone(),
                log: self.log.clone(),
                tail: tail(&self.log, TAIL_LINES),
            });
        };
        if !self.status.success() {
            return Err(QemuError::FailedAfterMarker {
                status: self.status,
                stderr: self.stderr.clone(),
            });
        }
        if let Some(want) = expected_sha {
            let got = line.split_whitespace().nth(1).unwrap_or("");
            if got != want {
                return Err(QemuError::WrongBytes {
                    disk: self.backing.clone(),
                    got: got.into(),
                    want: want.into(),
                });
            }
        }
        Ok(at)
    }
}

/// What a guest kernel prints when a read of its disk failed.
const CONSOLE_ERRORS: [&str; 4] = [
    "I/O error",
    "EXT4-fs error",
    "Remounting filesystem read-only",
    "Input/output error",
];

impl Boot {
    /// The disk-error messages (`I/O error`, `EXT4-fs error`, …) the serial
    /// console shows; empty for a boot whose every read succeeded. A guest
    /// may retry a failed read and still print the marker, so a test of
    /// reads that wait (an outage) checks this as well as [`Boot::check`].
    pub fn console_errors(&self) -> Vec<&'static str> {
        let console = std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        CONSOLE_ERRORS
            .into_iter()
            .filter(|e| console.contains(e))
            .collect()
    }
}

/// Boots `disk` once (overlay at `<stem>.qcow2`) and checks the run; the
/// time from QEMU's start to the marker.
pub fn boot_once(
    disk: &Path,
    stem: &Path,
    options: &QemuOptions,
    expected_sha: Option<&str>,
) -> Result<Duration, QemuError> {
    Guest::start(disk, stem, options)?
        .wait()?
        .check(expected_sha)
}

/// The first line of `log` that contains `marker`, from the marker on.
/// Unless `partial_ok`, a line still being written (no newline yet) does
/// not count: QEMU may be halfway through the checksum after the marker.
pub fn find_marker(log: &Path, marker: &str, partial_ok: bool) -> Option<String> {
    let bytes = std::fs::read(log).ok()?;
    let text = if partial_ok {
        &bytes[..]
    } else {
        &bytes[..bytes.iter().rposition(|&b| b == b'\n')? + 1]
    };
    String::from_utf8_lossy(text)
        .lines()
        .find_map(|l| l.find(marker).map(|at| l[at..].trim_end().to_string()))
}

/// The last `lines` lines of a text file (empty if unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_is_found_mid_line_and_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        std::fs::write(&log, b"[ 1.0] noise\r\nsh: ZVMOUNT-BOOT-OK ab").unwrap();
        assert_eq!(
            find_marker(&log, MARKER, false),
            None,
            "a half-written line must not count"
        );
        assert_eq!(
            find_marker(&log, MARKER, true).as_deref(),
            Some("ZVMOUNT-BOOT-OK ab"),
            "after QEMU's exit the last line counts as written"
        );
        std::fs::write(&log, b"[ 1.0] noise\r\nsh: ZVMOUNT-BOOT-OK abc123\r\n").unwrap();
        assert_eq!(
            find_marker(&log, MARKER, false).as_deref(),
            Some("ZVMOUNT-BOOT-OK abc123")
        );
        assert_eq!(find_marker(&log, "NOPE", false), None);
        assert_eq!(find_marker(&dir.path().join("missing"), MARKER, true), None);
    }

    #[test]
    fn a_guest_dir_needs_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let err = GuestImage::from_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("guest.expected"), "{err}");
        std::fs::write(dir.path().join("guest.expected"), "abc\n").unwrap();
        let err = GuestImage::from_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no guest.raw"), "{err}");
        std::fs::write(dir.path().join("guest.raw"), b"").unwrap();
        std::fs::write(dir.path().join("guest.data-mib"), "1024\n").unwrap();
        let g = GuestImage::from_dir(dir.path()).unwrap();
        assert_eq!((g.expected_sha.as_deref(), g.data_mib), (Some("abc"), 1024));
        std::fs::write(dir.path().join("guest.data-mib"), "lots").unwrap();
        let err = GuestImage::from_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("guest.data-mib"), "{err}");
    }
}
