//! A guest boots from a fully hydrated image with the S3 server stopped:
//! the test guest (`scripts/build-guest-image.sh`, directory in
//! `ZV_GUEST_DIR`) is converted, uploaded to a local s3s-fs, hydrated into
//! a host cache by a `--hydrate` mount, and then — with the server killed —
//! a new mount of the same image starts from the cache alone and QEMU
//! boots from it. The guest's checksum of what it read must match the
//! host's, and the new daemon must not have asked the store for anything.
//!
//! Without `ZV_GUEST_DIR` the test says SKIPPED and passes, unless
//! `ZV_REQUIRE_E2E=1` (as in CI), where that is a failure.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::time::{Duration, Instant};

use zvtest::mount::{MountBuilder, Mounted};
use zvtest::qemu::{Accel, GuestImage, QemuOptions, boot_once};
use zvtest::s3::{ACCESS_KEY, S3Server, SECRET_KEY, unique_bucket};

/// A TCG boot takes ~10 s; generous for a loaded machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// The test image stores a few hundred MB; s3s-fs serves ~150 MB/s.
const HYDRATE_TIMEOUT: Duration = Duration::from_secs(300);
const KEY: &str = "guest.zvhd2";

/// Converts `raw` to ZVHD2 in memory-sized pieces; returns the image and
/// its sidecar, both as files in `dir`.
fn convert(raw: &Path, dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let size = std::fs::metadata(raw).expect("stat guest.raw").len();
    let input = BufReader::with_capacity(1 << 20, File::open(raw).expect("open guest.raw"));
    let image = dir.join(KEY);
    let mut writer = BufWriter::new(File::create(&image).expect("create image"));
    let summary = zvhd2::write_image(input, size, &mut writer, &Default::default(), &mut |_| {})
        .expect("convert guest.raw");
    drop(writer);
    let sidecar = dir.join(format!("{KEY}.zvidx"));
    std::fs::write(&sidecar, summary.sidecar.encode()).expect("write sidecar");
    (image, sidecar)
}

/// A directory for the host cache in /dev/shm when there is one (so the
/// cache's 5% free-space floor does not depend on the build disk).
fn cache_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).expect("tempdir in /dev/shm")
    } else {
        tempfile::tempdir().expect("tempdir")
    }
}

fn builder(server: &S3Server, url: &str, cache: &Path, extra: &[&str]) -> MountBuilder {
    Mounted::builder()
        .args(extra)
        .args(["--force-path-style", "--region", "us-east-1"])
        .args(["--timeout", "2s", "--retries", "1"])
        .arg("--cache-dir")
        .arg(cache)
        .arg(url)
        .env("AWS_ENDPOINT_URL", server.endpoint())
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .expect_file("guest.raw")
}

#[test]
fn guest_boots_from_a_hydrated_image_with_the_store_stopped() {
    let Some(guest) = GuestImage::from_env("boot_hydrated") else {
        return;
    };
    let qemu = QemuOptions {
        accel: Accel::from_env(),
        timeout: BOOT_TIMEOUT,
        ..QemuOptions::default()
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path();
    let (image, sidecar) = convert(&guest.raw, work);

    let server = S3Server::start_private();
    let bucket = unique_bucket("boothydrated");
    let url = format!("s3://{bucket}/{KEY}");
    tokio::runtime::Runtime::new()
        .expect("tokio runtime")
        .block_on(async {
            server.create_bucket(&bucket).await;
            let (store, key) = zvstore::open_source(&url, &server.store_config())
                .await
                .expect("open store");
            store.put_file(&key, &image).await.expect("upload image");
            store
                .put_file(&format!("{key}.zvidx"), &sidecar)
                .await
                .expect("upload sidecar");
        });
    std::fs::remove_file(&image).expect("remove local image");

    // Hydrate with a mount that nothing reads from.
    let cache = cache_tempdir();
    let hydrating = builder(&server, &url, cache.path(), &["--hydrate"]).start();
    let deadline = Instant::now() + HYDRATE_TIMEOUT;
    let hydrated = loop {
        let s = hydrating.stats();
        if s.hydrate_total > 0 && s.hydrate_done == s.hydrate_total {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "hydration did not finish: {s:?}\n{}",
            hydrating.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(hydrated.store_bytes > 0, "{hydrated:?}");
    assert_eq!(hydrated.verify_failures, 0, "{hydrated:?}");
    assert!(hydrating.stop().success());

    // The store goes away; a new daemon mounts from the cache alone.
    server.stop();
    let mount = builder(&server, &url, cache.path(), &[]).start();
    assert!(
        mount.stderr().contains("without rechecking its identity"),
        "the new mount should say it could not reach the store:\n{}",
        mount.stderr()
    );
    let disk = mount.path("guest.raw");
    assert_eq!(
        std::fs::metadata(&disk).expect("stat mounted disk").len(),
        std::fs::metadata(&guest.raw).expect("stat guest.raw").len(),
        "the mounted disk has the wrong size"
    );
    let ran = boot_once(
        &disk,
        &work.join("boot"),
        &qemu,
        guest.expected_sha.as_deref(),
    )
    .unwrap_or_else(|e| panic!("{e}\ndaemon log:\n{}", mount.stderr()));
    let stats = mount.stats();
    eprintln!(
        "booted in {:.1}s with the store stopped; daemon: {stats:?}",
        ran.as_secs_f64()
    );
    assert_eq!(
        (
            stats.store_requests,
            stats.blocks_fetched,
            stats.fetch_errors
        ),
        (0, 0, 0),
        "a fully hydrated image must not need the store: {stats:?}"
    );
    assert_eq!(stats.verify_failures, 0, "{stats:?}");
    assert!(mount.stop().success());
}
