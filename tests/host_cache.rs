//! The host-wide image cache over real FUSE mounts and a real S3 server
//! (s3s-fs on 127.0.0.1): shared by several daemons (each block leaves the
//! store once), crash-safe between data and map, and enough on its own to
//! serve and to mount a fully cached image while the store is down.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::mount::{MountBuilder, Mounted};
use common::s3::S3Server;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use zvmount::cache::host::gc;

const MIB: usize = 1 << 20;
const BLOCK: usize = 2 * MIB;

/// A random raw disk of `mib` MiB, its image and sidecar uploaded to
/// `server`; the disk and the image's URL.
fn upload(server: &S3Server, mib: usize, seed: u64) -> (Vec<u8>, String) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut raw = vec![0u8; mib * MIB];
    rng.fill(&mut raw[..]);
    let url = server.upload_raw("hostcache", &raw);
    (raw, url)
}

/// A mount of `url` from `server` caching in `cache`, with no readahead
/// or prefetch (so blocks fetched = blocks read) and short store timeouts.
fn builder(server: &S3Server, url: &str, cache: &Path) -> MountBuilder {
    builder_with(server, url, cache, &[])
}

fn builder_with(server: &S3Server, url: &str, cache: &Path, extra: &[&str]) -> MountBuilder {
    Mounted::builder()
        .args(extra)
        .args(["--force-path-style", "--region", "us-east-1"])
        .args(["--timeout", "2s", "--retries", "1"])
        .args(["--readahead", "0", "--prefetch-budget", "0"])
        .arg("--cache-dir")
        .arg(cache)
        .arg(url)
        .s3_env(server)
        .expect_file("disk.raw")
}

fn sha(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

/// Waits until `m`'s hydration reports the image complete.
fn wait_hydrated(m: &Mounted) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = m.stats();
        if s.hydrate_total > 0 && s.hydrate_done == s.hydrate_total {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "hydration did not finish: {s:?}\n{}",
            m.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn four_daemons_share_one_cache_and_the_store_serves_each_block_once() {
    let server = S3Server::start();
    let (raw, url) = upload(server, 64, 11);
    let cache = zvtest::shm_tempdir();
    let mounts: Vec<Mounted> = (0..4)
        .map(|_| builder(server, &url, cache.path()).start())
        .collect();
    let want = sha(&raw);
    std::thread::scope(|s| {
        for (i, m) in mounts.iter().enumerate() {
            let want = &want;
            s.spawn(move || {
                let f = File::open(m.path("disk.raw")).unwrap();
                let mut all = vec![0u8; 64 * MIB];
                // Different directions, so the daemons collide on blocks
                // in every order.
                let order: Vec<usize> = if i % 2 == 0 {
                    (0..64).collect()
                } else {
                    (0..64).rev().collect()
                };
                for chunk in order {
                    f.read_exact_at(&mut all[chunk * MIB..][..MIB], (chunk * MIB) as u64)
                        .unwrap();
                }
                assert_eq!(&sha(&all), want, "daemon {i} read wrong bytes");
            });
        }
    });
    let stats: Vec<_> = mounts.iter().map(Mounted::stats).collect();
    let fetched: u64 = stats.iter().map(|s| s.blocks_fetched).sum();
    let from_cache: u64 = stats.iter().map(|s| s.disk_cache_hits).sum();
    assert_eq!(
        fetched,
        (64 * MIB / BLOCK) as u64,
        "the store must serve each of the 32 blocks once for all four daemons: {stats:#?}"
    );
    assert!(from_cache >= 3 * 32, "{stats:#?}");
    for m in mounts {
        assert!(m.stop().success());
    }
    let listed = gc::list(cache.path());
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].blocks_present, 32);
    assert!(!listed[0].in_use);
}

#[test]
fn a_crash_between_data_and_map_loses_the_block_never_the_bytes() {
    let server = S3Server::start();
    let (raw, url) = upload(server, 8, 12);
    let cache = zvtest::shm_tempdir();
    let mut m = builder(server, &url, cache.path())
        .env("ZVMOUNT_TEST_CRASH_BEFORE_MAP", "1")
        .start();
    let f = File::open(m.path("disk.raw")).unwrap();
    let mut buf = vec![0u8; 4096];
    // The daemon fetches block 1, makes its data durable and aborts
    // before the map says so. The read may or may not have been answered.
    let _ = f.read_exact_at(&mut buf, BLOCK as u64);
    let deadline = Instant::now() + Duration::from_secs(30);
    while m
        .pid()
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}/stat")).exists() && !is_zombie(pid))
    {
        assert!(
            Instant::now() < deadline,
            "the crash hook did not fire:\n{}",
            m.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        m.stderr().contains("aborting between data and map"),
        "{}",
        m.stderr()
    );
    drop(f);
    m.crash();
    drop(m);
    let listed = gc::list(cache.path());
    assert_eq!(listed[0].blocks_present, 0, "map must not claim the block");
    let data = std::fs::read(cache.path().join("images").join(&listed[0].id).join("data")).unwrap();
    assert!(
        data[BLOCK..2 * BLOCK] == raw[BLOCK..2 * BLOCK],
        "data was written before the crash"
    );

    // A new daemon fetches block 1 again and serves the right bytes.
    let m = builder(server, &url, cache.path()).start();
    let all = std::fs::read(m.path("disk.raw")).unwrap();
    assert_eq!(sha(&all), sha(&raw));
    assert_eq!(
        m.stats().blocks_fetched,
        4,
        "block 1 is fetched again, not trusted"
    );
    assert!(m.stop().success());
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

#[test]
fn a_fully_cached_image_serves_and_mounts_with_the_store_down() {
    let server = S3Server::start_private();
    let (raw, url) = upload(&server, 16, 13);
    let cache = zvtest::shm_tempdir();
    let running = builder_with(
        &server,
        &url,
        cache.path(),
        &["--hydrate", "--mem-cache", "0"],
    )
    .start();
    wait_hydrated(&running);
    assert_eq!(running.stats().hydrate_total, 8);

    server.stop();
    // The running mount: every byte from the cache.
    let all = std::fs::read(running.path("disk.raw")).unwrap();
    assert_eq!(sha(&all), sha(&raw));
    let s = running.stats();
    assert_eq!(s.fetch_errors, 0, "{s:?}");

    // A new mount starts without the store and serves the same bytes:
    // even one told to wait for the store forever (--io-timeout 0, retries
    // unlimited), since every block is local.
    let fresh = Mounted::builder()
        .args(["--force-path-style", "--region", "us-east-1"])
        .args(["--timeout", "2s", "--io-timeout", "0"])
        .args(["--readahead", "0", "--prefetch-budget", "0"])
        .arg("--cache-dir")
        .arg(cache.path())
        .arg(&url)
        .s3_env(&server)
        .expect_file("disk.raw")
        .start();
    assert!(
        fresh.stderr().contains("without rechecking its identity"),
        "{}",
        fresh.stderr()
    );
    let all = std::fs::read(fresh.path("disk.raw")).unwrap();
    assert_eq!(sha(&all), sha(&raw));
    let s = fresh.stats();
    assert_eq!((s.store_requests, s.blocks_fetched), (0, 0), "{s:?}");
    assert!(fresh.stop().success());
    assert!(running.stop().success());

    // An image not (fully) cached still refuses to mount without its store.
    let other = zvtest::shm_tempdir();
    let err = builder(&server, &url, other.path())
        .try_start()
        .unwrap_err();
    assert!(err.contains("cannot open image"), "{err}");
    server.restart();
}

#[test]
fn a_new_open_of_a_local_image_is_served_by_passthrough() {
    let server = S3Server::start();
    let (raw, url) = upload(server, 16, 14);
    let cache = zvtest::shm_tempdir();
    let m = builder_with(server, &url, cache.path(), &["--hydrate"]).start();
    wait_hydrated(&m);
    let before = m.stats();
    // Opened after the image became local: the kernel reads the cache file
    // itself, the daemon sees no read.
    let all = std::fs::read(m.path("disk.raw")).unwrap();
    assert_eq!(sha(&all), sha(&raw));
    let f = File::open(m.path("disk.raw")).unwrap();
    let mut buf = vec![0u8; 4096];
    for off in [0usize, 5 * MIB + 123, 16 * MIB - 4096] {
        f.read_exact_at(&mut buf, off as u64).unwrap();
        assert!(buf[..] == raw[off..off + 4096]);
    }
    let after = m.stats();
    assert_eq!(
        (after.fuse_reads, after.fuse_read_bytes),
        (before.fuse_reads, before.fuse_read_bytes),
        "reads through a passthrough handle must not reach the daemon\n{}",
        m.stderr()
    );
    assert!(m.stderr().contains("FUSE passthrough"), "{}", m.stderr());
    drop(f);
    assert!(m.stop().success());
}
