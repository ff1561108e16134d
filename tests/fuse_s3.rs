//! A real FUSE mount of an image served by the local S3 server.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;

use common::mount::Mounted;
use common::s3::{ACCESS_KEY, S3Server, SECRET_KEY, unique_bucket};
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use zvhd2::{WriteOptions, write_image};

const MIB: usize = 1 << 20;

#[test]
fn mount_from_s3_survives_the_store_going_away() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut raw = vec![0u8; 5 * 2 * MIB];
    rng.fill(&mut raw[..]);
    let mut image = Vec::new();
    let summary = write_image(
        &raw[..],
        raw.len() as u64,
        &mut image,
        &WriteOptions::default(),
        &mut |_| {},
    )
    .unwrap();

    let server = S3Server::start_private();
    let bucket = unique_bucket("fuse");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        server.create_bucket(&bucket).await;
        server.put_bytes(&bucket, "img/disk.zvhd2", image).await;
        server
            .put_bytes(&bucket, "img/disk.zvhd2.zvidx", summary.sidecar.encode())
            .await;
    });

    let m = Mounted::builder()
        .args([
            "--force-path-style",
            "--region",
            "us-east-1",
            "--timeout",
            "2s",
            // An outage fails reads once this has passed (it would
            // wait 120 s by default; tests/fuse_outage.rs covers waiting).
            "--io-timeout",
            "1s",
            "--readahead",
            "0",
        ])
        .args(["--prefetch-budget", "0"])
        .arg(format!("s3://{bucket}/img/disk.zvhd2"))
        .env("AWS_ENDPOINT_URL", server.endpoint())
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .expect_file("disk.raw")
        .start();
    assert_eq!(m.stats_json()["images"]["disk.raw"]["sidecar"], true);
    let file = File::open(m.path("disk.raw")).unwrap();
    let mut buf = vec![0u8; 4096];
    // Blocks 0..3 through the mount; block 4 stays unfetched.
    for block in 0..4 {
        let off = block * 2 * MIB;
        file.read_exact_at(&mut buf, off as u64).unwrap();
        assert!(buf[..] == raw[off..off + 4096], "block {block}");
    }
    assert_eq!(m.stats().blocks_fetched, 4);

    server.stop();
    let err = file
        .read_exact_at(&mut buf, (4 * 2 * MIB) as u64)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    server.restart();
    // Past --io-timeout the mount fails reads fast: each read waits for the
    // outcome of one probe only, until a probe is answered. A read right
    // after the restart probes at once rather than wait out the probes'
    // back-off into its own deadline, but that probe can still fail (a
    // pooled connection to the old server, a busy machine); the mount must
    // recover within a few reads, each bounded by --io-timeout.
    let mut failed_after_restart = 0;
    while let Err(e) = file.read_exact_at(&mut buf, (4 * 2 * MIB) as u64) {
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        failed_after_restart += 1;
        assert!(
            failed_after_restart < 10,
            "still EIO after the store came back"
        );
    }
    assert!(buf[..] == raw[4 * 2 * MIB..4 * 2 * MIB + 4096]);
    eprintln!("{failed_after_restart} reads failed after the restart");

    // And the whole file, end to end.
    let all = std::fs::read(m.path("disk.raw")).unwrap();
    assert_eq!(Sha256::digest(&all), Sha256::digest(&raw));
    drop(file);
    assert!(m.stop().success());
}
