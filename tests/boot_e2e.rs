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

use std::time::Duration;

use zvtest::images::convert_file;
use zvtest::mount::Mounted;
use zvtest::qemu::{Accel, Guest, GuestImage, QemuOptions};
use zvtest::s3::{S3Server, unique_bucket};

/// Generous: a TCG boot takes ~10 s alone, ~20 s with a second one beside it.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const BUCKET: &str = "boot";
const KEY: &str = "guest.zvhd2";

#[test]
fn guest_boots_from_s3_through_zvmount() {
    let Some(guest) = GuestImage::from_env("boot_e2e") else {
        return;
    };
    let expected_sha = guest.expected_sha.as_deref();
    let qemu = QemuOptions {
        accel: Accel::from_env(),
        timeout: BOOT_TIMEOUT,
        ..QemuOptions::default()
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();

    let image = work.join(KEY);
    let summary = convert_file(&guest.raw, &image);
    assert!(
        summary.non_zero_blocks > 0 && summary.non_zero_blocks < summary.blocks,
        "{summary:?}"
    );
    let stored = summary.image_size;

    let s3 = S3Server::start();
    let bucket = unique_bucket(BUCKET);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        s3.create_bucket(&bucket).await;
        // Through the S3 API (multipart), as users upload.
        s3.put_image_files(&bucket, KEY, &image).await;
    });

    let builder = Mounted::builder().arg("--force-path-style").s3_env(s3);
    let mount = builder
        .arg(format!("s3://{bucket}/{KEY}"))
        .expect_file("guest.raw")
        .start();
    let disk = mount.path("guest.raw");
    assert_eq!(
        std::fs::metadata(&disk).expect("stat mounted disk").len(),
        std::fs::metadata(&guest.raw).expect("stat guest.raw").len(),
        "the mounted disk has the wrong size"
    );

    // One guest, alone.
    let boot = |g: Guest| {
        let b = g.wait().unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "guest {} ran {:.1}s: {}",
            b.log.display(),
            b.ran.as_secs_f64(),
            b.status
        );
        b.check(expected_sha).unwrap_or_else(|e| panic!("{e}"));
    };
    let start =
        |stem: &str| Guest::start(&disk, &work.join(stem), &qemu).unwrap_or_else(|e| panic!("{e}"));
    boot(start("first"));
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
    let (a, b) = (start("pair-a"), start("pair-b"));
    boot(a);
    boot(b);
    let after = mount.stats();
    assert_eq!(after.verify_failures, 0, "{after:?}");
    assert!(after.store_bytes < stored, "{after:?}");

    // Clean shutdown: SIGTERM, exit 0, nothing left mounted (checked by stop()).
    let status = mount.stop();
    assert!(status.success(), "zvmount exited with {status}");
}
