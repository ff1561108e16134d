//! The test guest of `scripts/build-guest-image.sh` (directory in
//! `ZV_GUEST_DIR`), converted to ZVHD2 and booted by QEMU from a qcow2
//! overlay over a served raw file; used by the boot-through-outage test.
//! (The same helpers as tests/boot_e2e.rs, which may move onto this module.)

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The guest's marker (see `scripts/guest/rootfs-init`).
pub const MARKER: &str = "ZVMOUNT-BOOT-OK";

/// The built guest, or `None` (after saying why) when a test cannot run:
/// without `ZV_GUEST_DIR` it is skipped, unless `ZV_REQUIRE_E2E=1`.
pub fn guest_dir(test: &str) -> Option<PathBuf> {
    let required = std::env::var("ZV_REQUIRE_E2E").is_ok_and(|v| v == "1");
    let Some(dir) = std::env::var_os("ZV_GUEST_DIR").map(PathBuf::from) else {
        assert!(
            !required,
            "ZV_REQUIRE_E2E=1 but ZV_GUEST_DIR is not set (run scripts/build-guest-image.sh)"
        );
        eprintln!("SKIPPED {test}: set ZV_GUEST_DIR to the output of scripts/build-guest-image.sh");
        return None;
    };
    for f in ["guest.raw", "guest.expected"] {
        assert!(
            dir.join(f).is_file(),
            "{}: no {f}; rebuild with scripts/build-guest-image.sh",
            dir.display()
        );
    }
    for tool in ["qemu-system-x86_64", "qemu-img", "timeout"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(found, "{tool} not found; run scripts/install-deps.sh");
    }
    Some(dir)
}

/// Converts `raw` to `out` (ZVHD2) and its sidecar `out.zvidx`; returns
/// the image's size.
pub fn convert(raw: &Path, out: &Path) -> u64 {
    let size = std::fs::metadata(raw).expect("guest.raw").len();
    let input = BufReader::with_capacity(1 << 20, File::open(raw).expect("open guest.raw"));
    let mut writer = BufWriter::new(File::create(out).expect("create image"));
    let summary = zvhd2::write_image(input, size, &mut writer, &Default::default(), &mut |_| {})
        .expect("convert guest.raw");
    drop(writer);
    let mut sidecar = out.as_os_str().to_owned();
    sidecar.push(".zvidx");
    std::fs::write(PathBuf::from(sidecar), summary.sidecar.encode()).expect("write sidecar");
    summary.image_size
}

/// A QEMU guest booting from a fresh qcow2 overlay over `backing`, serial
/// console to `<stem>.log`. Killed on drop if still running.
pub struct Guest {
    child: Option<Child>,
    log: PathBuf,
    started: Instant,
}

/// What a finished boot printed.
pub struct Booted {
    pub status: ExitStatus,
    /// The marker line, if the guest printed one.
    pub marker: Option<String>,
    /// The whole serial console.
    pub console: String,
}

impl Guest {
    /// Starts the guest; the outer `timeout` ends QEMU after `limit`.
    pub fn start(backing: &Path, stem: &Path, limit: Duration) -> Guest {
        let overlay = stem.with_extension("qcow2");
        let log = stem.with_extension("log");
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(backing)
            .arg(&overlay)
            .stdin(Stdio::null())
            .status()
            .expect("run qemu-img");
        assert!(status.success(), "qemu-img create failed: {status}");
        let mut cmd = Command::new("timeout");
        cmd.args([
            "-k",
            "10",
            &limit.as_secs().to_string(),
            "qemu-system-x86_64",
        ]);
        if std::env::var("ZV_QEMU_ACCEL").is_ok_and(|a| a == "kvm") {
            cmd.args(["-accel", "kvm", "-cpu", "host"]);
        } else {
            cmd.args(["-accel", "tcg"]);
        }
        cmd.args(["-m", "512", "-smp", "1", "-nodefaults", "-no-user-config"])
            .args(["-display", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .arg("-drive")
            .arg(format!("file={},format=qcow2,if=virtio", overlay.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(stem.with_extension("stderr")).expect("qemu stderr file"));
        Guest {
            child: Some(cmd.spawn().expect("start qemu-system-x86_64")),
            log,
            started: Instant::now(),
        }
    }

    /// Whether QEMU has exited.
    pub fn finished(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Waits for the guest to power off (the outer `timeout` bounds it).
    pub fn wait(mut self) -> Booted {
        let status = self
            .child
            .take()
            .expect("running")
            .wait()
            .expect("wait for qemu");
        let console = std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let marker = console
            .lines()
            .find_map(|l| l.find(MARKER).map(|at| l[at..].trim_end().to_string()));
        eprintln!(
            "guest {} finished in {:.1}s: {status}",
            self.log.display(),
            self.started.elapsed().as_secs_f64()
        );
        Booted {
            status,
            marker,
            console,
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Booted {
    /// The console's last lines, for failure messages.
    pub fn tail(&self) -> String {
        let lines: Vec<&str> = self.console.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Asserts a clean boot that read exactly the bytes of the image and
    /// saw no I/O error.
    pub fn assert_read_right(&self, expected_sha: &str) {
        let Some(line) = &self.marker else {
            panic!(
                "guest printed no {MARKER} (qemu {}); console ends:\n{}",
                self.status,
                self.tail()
            );
        };
        let sha = line.split_whitespace().nth(1).unwrap_or("");
        assert_eq!(
            sha,
            expected_sha,
            "the guest read wrong bytes; console:\n{}",
            self.tail()
        );
        for bad in [
            "I/O error",
            "EXT4-fs error",
            "Remounting filesystem read-only",
            "Input/output error",
        ] {
            assert!(
                !self.console.contains(bad),
                "the console shows {bad:?}:\n{}",
                self.tail()
            );
        }
        assert!(
            self.status.success(),
            "qemu exited with {} after the marker",
            self.status
        );
    }
}
