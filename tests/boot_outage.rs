//! A real guest boots through a store outage: the test guest is served
//! from a real s3s-fs through a cold `zvmount` mount, and in the middle of
//! its boot the server is killed for 25 s and started again. The guest must
//! finish booting with the right checksum and no I/O error on its console;
//! the daemon must report that reads waited for the store.
//!
//! Skipped (passes, saying SKIPPED) without `ZV_GUEST_DIR`, unless
//! `ZV_REQUIRE_E2E=1`.

use std::time::{Duration, Instant};

use zvtest::images::convert_file;
use zvtest::mount::Mounted;
use zvtest::qemu::{Accel, Guest, GuestImage, QemuOptions};
use zvtest::s3::{S3Server, unique_bucket};

const KEY: &str = "guest.zvhd2";
/// Inside the 20–30 s, and longer than any single request timeout.
const OUTAGE: Duration = Duration::from_secs(25);
/// Blocks fetched before the store is stopped: the kernel and initramfs
/// are in, the guest is reading its root file system.
const STOP_AFTER_BLOCKS: u64 = 12;
/// A TCG boot takes ~10 s alone; this one waits out the outage too, on a
/// machine that may be busy.
const BOOT_LIMIT: Duration = Duration::from_secs(420);

#[test]
fn guest_boots_through_a_store_outage() {
    let Some(guest) = GuestImage::from_env("boot_outage") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join(KEY);
    convert_file(&guest.raw, &image);

    let s3 = S3Server::start_private();
    let bucket = unique_bucket("bootout");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        s3.create_bucket(&bucket).await;
        s3.put_image_files(&bucket, KEY, &image).await;
    });

    // Defaults otherwise: --io-timeout 120s, readahead on.
    let mount = Mounted::builder()
        .args(["--region", "us-east-1", "--timeout", "5s"])
        .arg(format!("s3://{bucket}/{KEY}"))
        .s3_env(&s3)
        .expect_file("guest.raw")
        .start();

    let qemu = QemuOptions {
        accel: Accel::from_env(),
        timeout: BOOT_LIMIT,
        ..QemuOptions::default()
    };
    let mut vm = Guest::start(&mount.path("guest.raw"), &tmp.path().join("vm"), &qemu)
        .unwrap_or_else(|e| panic!("{e}"));
    // Wait for the boot to be under way (polling a counter, not a clock).
    let started = Instant::now();
    while mount.stats().blocks_fetched < STOP_AFTER_BLOCKS {
        assert!(!vm.finished(), "the guest ended before the outage began");
        assert!(started.elapsed() < BOOT_LIMIT, "the boot never got going");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = mount.stats();
    s3.stop();
    eprintln!("store stopped after {} blocks", before.blocks_fetched);
    std::thread::sleep(OUTAGE);
    let during = mount.stats();
    s3.restart();
    eprintln!("store back; stats during the outage: {during:?}");

    let booted = vm.wait().unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "guest {} ran {:.1}s: {}",
        booted.log.display(),
        booted.ran.as_secs_f64(),
        booted.status
    );
    booted
        .check(guest.expected_sha.as_deref())
        .unwrap_or_else(|e| panic!("{e}"));
    let errors = booted.console_errors();
    assert!(
        errors.is_empty(),
        "the console shows {errors:?}:\n{}",
        zvtest::qemu::tail(&booted.log, 30)
    );
    let after = mount.stats();
    eprintln!("after the boot: {after:?}");
    assert!(
        during.reads_waited >= 1,
        "no read waited for the store: the outage missed the boot ({during:?})"
    );
    assert_eq!(after.outages, 1, "{after:?}");
    assert_eq!(after.fetch_errors, 0, "{after:?}");
    assert_eq!(after.verify_failures, 0, "{after:?}");
    let log = mount.stderr();
    assert!(log.contains("store reachable again after"), "{log}");
    assert!(mount.stop().success());
}
