//! End to end with every real part: the test guest (built by
//! `scripts/build-guest-image.sh`, directory in `ZV_GUEST_DIR`) is converted
//! to ZVHD2 with a sidecar, uploaded to a local S3 server, mounted by the
//! `zvmount` binary, and booted by QEMU from a qcow2 overlay over the
//! mounted raw file — once, then twice at the same time. The guest prints a
//! sha256 of everything it read, which must match the one computed on the
//! host when the image was built.
//!
//! Without `ZV_GUEST_DIR` the test says SKIPPED and passes, unless
//! `ZV_REQUIRE_E2E=1` (as in CI), where that is a failure.
//! `ZV_QEMU_ACCEL=kvm` boots with KVM on hosts where it is real (the nested
//! `/dev/kvm` of cloud VMs crawls; TCG is the default).

mod common;

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::mount::Mounted;
use common::s3::{ACCESS_KEY, S3Server, SECRET_KEY, unique_bucket};
use zvstore::{ObjectStore, open_source};

/// The guest's marker (see `scripts/guest/rootfs-init`).
const MARKER: &str = "ZVMOUNT-BOOT-OK";
/// Generous: a TCG boot takes ~10 s alone, ~20 s with a second one beside it.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const BUCKET: &str = "boot";
const KEY: &str = "guest.zvhd2";

/// The built guest, or `None` (after saying why) when the test cannot run.
fn guest_dir() -> Option<PathBuf> {
    let required = std::env::var("ZV_REQUIRE_E2E").is_ok_and(|v| v == "1");
    let Some(dir) = std::env::var_os("ZV_GUEST_DIR").map(PathBuf::from) else {
        assert!(
            !required,
            "ZV_REQUIRE_E2E=1 but ZV_GUEST_DIR is not set (run scripts/build-guest-image.sh)"
        );
        eprintln!(
            "SKIPPED boot_e2e: set ZV_GUEST_DIR to the output of scripts/build-guest-image.sh"
        );
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

/// Converts `raw` to `out` (ZVHD2) and its sidecar `out.zvidx`, with the
/// library function `zvimg convert` uses; returns the image's size.
fn convert(raw: &Path, out: &Path) -> u64 {
    let size = std::fs::metadata(raw).expect("guest.raw").len();
    let input = BufReader::with_capacity(1 << 20, File::open(raw).expect("open guest.raw"));
    let mut writer = BufWriter::new(File::create(out).expect("create image"));
    let summary = zvhd2::write_image(input, size, &mut writer, &Default::default(), &mut |_| {})
        .expect("convert guest.raw");
    drop(writer);
    let mut sidecar = out.as_os_str().to_owned();
    sidecar.push(".zvidx");
    std::fs::write(PathBuf::from(sidecar), summary.sidecar.encode()).expect("write sidecar");
    assert!(
        summary.non_zero_blocks > 0 && summary.non_zero_blocks < summary.blocks,
        "{summary:?}"
    );
    summary.image_size
}

/// A QEMU guest booting from a fresh qcow2 overlay over `backing`, serial
/// console to `<stem>.log`. Killed on drop if still running.
struct Guest {
    child: Option<Child>,
    log: PathBuf,
    started: Instant,
}

/// What a finished boot printed.
struct Booted {
    status: ExitStatus,
    /// The marker line, if the guest printed one.
    marker: Option<String>,
    log: PathBuf,
}

impl Guest {
    fn start(backing: &Path, stem: &Path) -> Guest {
        let overlay = stem.with_extension("qcow2");
        let log = stem.with_extension("log");
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(backing)
            .arg(&overlay)
            .stdin(Stdio::null())
            .status()
            .expect("run qemu-img");
        assert!(
            status.success(),
            "qemu-img create over {} failed: {status}",
            backing.display()
        );
        let mut cmd = Command::new("timeout");
        cmd.args([
            "-k",
            "10",
            &BOOT_TIMEOUT.as_secs().to_string(),
            "qemu-system-x86_64",
        ]);
        if std::env::var("ZV_QEMU_ACCEL").is_ok_and(|a| a == "kvm") {
            cmd.args(["-accel", "kvm", "-cpu", "host"]);
        } else {
            cmd.args(["-accel", "tcg"]);
        }
        cmd.args([
            "-m",
            "512",
            "-smp",
            "1",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-drive")
        .arg(format!("file={},format=qcow2,if=virtio", overlay.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(stem.with_extension("stderr")).expect("qemu stderr file"));
        let child = cmd.spawn().expect("start qemu-system-x86_64");
        Guest {
            child: Some(child),
            log,
            started: Instant::now(),
        }
    }

    /// Waits for the guest to power off (the outer `timeout` bounds it).
    fn wait(mut self) -> Booted {
        let status = self
            .child
            .take()
            .expect("running")
            .wait()
            .expect("wait for qemu");
        let text = std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let marker = text
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
            log: self.log.clone(),
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
    /// Asserts a clean boot that read exactly the bytes of the image.
    fn assert_read_right(&self, expected_sha: &str) {
        let tail = || {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        let Some(line) = &self.marker else {
            panic!(
                "guest printed no {MARKER} (qemu {}); serial log {} ends:\n{}",
                self.status,
                self.log.display(),
                tail()
            );
        };
        let sha = line.split_whitespace().nth(1).unwrap_or("");
        assert_eq!(
            sha, expected_sha,
            "the guest read wrong bytes (its sha256 of the payload differs)"
        );
        assert!(
            self.status.success(),
            "qemu exited with {} after the marker",
            self.status
        );
    }
}

#[test]
fn guest_boots_from_s3_through_zvmount() {
    let Some(guest) = guest_dir() else { return };
    let expected_sha =
        std::fs::read_to_string(guest.join("guest.expected")).expect("guest.expected");
    let expected_sha = expected_sha.trim();
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();

    let image = work.join(KEY);
    let stored = convert(&guest.join("guest.raw"), &image);

    let s3 = S3Server::start();
    let bucket = unique_bucket(BUCKET);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        s3.create_bucket(&bucket).await;
        // Through the S3 API (multipart), as users upload.
        let (store, key) = open_source(&format!("s3://{bucket}/{KEY}"), &s3.store_args())
            .await
            .expect("open store");
        store.put_file(&key, &image).await.expect("upload image");
        let mut sidecar = image.as_os_str().to_owned();
        sidecar.push(".zvidx");
        store
            .put_file(&format!("{key}.zvidx"), Path::new(&sidecar))
            .await
            .expect("upload sidecar");
    });

    let builder = Mounted::builder()
        .arg("--force-path-style")
        .env("AWS_ENDPOINT_URL", s3.endpoint())
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1");
    let mount = builder
        .arg(format!("s3://{bucket}/{KEY}"))
        .expect_file("guest.raw")
        .start();
    let disk = mount.path("guest.raw");
    assert_eq!(
        std::fs::metadata(&disk).expect("stat mounted disk").len(),
        std::fs::metadata(guest.join("guest.raw"))
            .expect("stat guest.raw")
            .len(),
        "the mounted disk has the wrong size"
    );

    // One guest, alone.
    Guest::start(&disk, &work.join("first"))
        .wait()
        .assert_read_right(expected_sha);
    let stats = mount.stats();
    eprintln!("after the first boot: {stats:?} (image stores {stored} bytes)");
    assert!(
        stats.store_bytes > 0,
        "the daemon reports no bytes from the store: {stats:?}"
    );
    assert!(
        stats.store_bytes < stored,
        "the store served {} bytes for a boot, not fewer than the whole image ({stored})",
        stats.store_bytes
    );
    assert_eq!(stats.verify_failures, 0, "{stats:?}");
    assert_eq!(stats.fetch_errors, 0, "{stats:?}");

    // Two guests at once from the same mount, each through its own overlay.
    let a = Guest::start(&disk, &work.join("pair-a"));
    let b = Guest::start(&disk, &work.join("pair-b"));
    let (a, b) = (a.wait(), b.wait());
    a.assert_read_right(expected_sha);
    b.assert_read_right(expected_sha);
    let after = mount.stats();
    assert_eq!(after.verify_failures, 0, "{after:?}");
    assert!(after.store_bytes < stored, "{after:?}");

    // Clean shutdown: SIGTERM, exit 0, nothing left mounted (checked by stop()).
    let status = mount.stop();
    assert!(status.success(), "zvmount exited with {status}");
}
