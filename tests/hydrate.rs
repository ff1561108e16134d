//! Background hydration over a real FUSE mount and a real S3 server:
//! killed with SIGKILL at random moments and restarted on the same cache,
//! it never serves a wrong byte and ends with the whole disk local.

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

/// A random raw disk of `mib` MiB, its image and sidecar uploaded to
/// `server`; the disk and the image's URL.
fn upload(server: &S3Server, mib: usize, seed: u64) -> (Vec<u8>, String) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut raw = vec![0u8; mib * MIB];
    rng.fill(&mut raw[..]);
    // Some zero blocks: hydration must skip them.
    raw[4 * MIB..8 * MIB].fill(0);
    let url = server.upload_raw("hydrate", &raw);
    (raw, url)
}

fn builder(server: &S3Server, url: &str, cache: &Path, extra: &[&str]) -> MountBuilder {
    Mounted::builder()
        .args(extra)
        .args(["--force-path-style", "--region", "us-east-1"])
        .args(["--timeout", "5s", "--retries", "1"])
        .arg("--cache-dir")
        .arg(cache)
        .arg(url)
        .s3_env(server)
        .expect_file("disk.raw")
}

/// A random raw disk of `mib` MiB converted to `dir/disk.zvhd2` (a local
/// image; the raw file is not kept): the disk and the image's path.
fn local_image(dir: &Path, mib: usize, seed: u64) -> (Vec<u8>, std::path::PathBuf) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut raw = vec![0u8; mib * MIB];
    rng.fill(&mut raw[..]);
    let raw_path = dir.join("disk.raw");
    std::fs::write(&raw_path, &raw).unwrap();
    let image = dir.join("disk.zvhd2");
    zvtest::images::convert_file(&raw_path, &image);
    std::fs::remove_file(&raw_path).unwrap();
    (raw, image)
}

fn present(cache: &Path) -> u64 {
    gc::list(cache).first().map_or(0, |s| s.blocks_present)
}

#[test]
fn hydration_killed_at_random_moments_ends_with_the_exact_disk() {
    let server = S3Server::start();
    let (raw, url) = upload(server, 160, 21);
    let cache = zvtest::shm_tempdir();
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let mut checked_reads = 0;
    let mut kills = 0;
    let mut progress = Vec::new();
    // Slow enough (4 MB/s, a block every half second) that every kill
    // lands mid-hydration.
    while kills < 20 {
        let mut m = builder(server, &url, cache.path(), &["--hydrate=4"]).start();
        let f = File::open(m.path("disk.raw")).unwrap();
        // A demand read while hydrating: every byte must be right.
        for _ in 0..1 {
            let len = rng.gen_range(1..=64 << 10);
            let off = rng.gen_range(0..raw.len() - len);
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, off as u64).unwrap();
            assert!(buf[..] == raw[off..off + len], "wrong bytes at {off}+{len}");
            checked_reads += 1;
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..600)));
        drop(f);
        m.crash();
        kills += 1;
        progress.push(present(cache.path()));
    }
    let total = gc::list(cache.path())[0].blocks_total;
    assert_eq!(total, 78, "80 blocks, 2 of them zero");
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "blocks present never go down: {progress:?}"
    );
    assert!(
        *progress.last().unwrap() < total,
        "the kills should land before the end: {progress:?}"
    );

    // Last life: hydrate to the end, then the whole disk.
    let m = builder(
        server,
        &url,
        cache.path(),
        &["--hydrate", "--mem-cache", "0"],
    )
    .start();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = m.stats();
        if s.hydrate_total == total && s.hydrate_done == total {
            break;
        }
        assert!(Instant::now() < deadline, "{s:?}\n{}", m.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    let all = std::fs::read(m.path("disk.raw")).unwrap();
    assert_eq!(Sha256::digest(&all), Sha256::digest(&raw));
    assert!(m.stop().success());
    assert_eq!(present(cache.path()), total);
    // The cache file itself is now the raw disk.
    let id = &gc::list(cache.path())[0].id;
    let data = std::fs::read(cache.path().join("images").join(id).join("data")).unwrap();
    assert_eq!(Sha256::digest(&data), Sha256::digest(&raw));
    eprintln!("{kills} kills, {checked_reads} checked reads, present after each: {progress:?}");
}

/// Waits until the mount has hydrated every block, or fails naming where
/// it stood.
fn wait_hydrated(m: &Mounted, within: Duration) -> zvmount::metrics::MetricsSnapshot {
    let deadline = Instant::now() + within;
    loop {
        let s = m.stats();
        if s.hydrate_total > 0 && s.hydrate_done == s.hydrate_total {
            return s;
        }
        assert!(Instant::now() < deadline, "{s:?}\n{}", m.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A demand read that misses while hydration GETs are in flight drops
/// them (the demand read has the link alone); the dropped blocks are
/// fetched again, and the disk still ends whole and exact.
#[test]
fn a_demand_miss_preempts_hydration_gets_in_flight() {
    use zvtest::proxy::{Shaping, ShapingProxy};
    let server = S3Server::start();
    let (raw, url) = upload(server, 64, 31);
    // A slow link: each 8 MiB hydration GET takes ~0.4 s, so the demand
    // reads below always find some in flight.
    let proxy = ShapingProxy::start(
        server.addr(),
        Shaping {
            latency: Duration::from_millis(5),
            bytes_per_sec: 20_000_000,
        },
    )
    .unwrap();
    let cache = zvtest::shm_tempdir();
    let m = builder(
        server,
        &url,
        cache.path(),
        &["--hydrate", "--readahead", "0", "--prefetch-budget", "0"],
    )
    .env("AWS_ENDPOINT_URL", format!("http://{}", proxy.addr()))
    .start();
    let f = File::open(m.path("disk.raw")).unwrap();
    // Hydration walks from block 0; read near the end, one at a time.
    let mut buf = vec![0u8; 4096];
    for block in [31u64, 29, 27] {
        while m.stats().store_requests == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        let off = block as usize * 2 * MIB;
        f.read_exact_at(&mut buf, off as u64).unwrap();
        assert!(
            buf[..] == raw[off..off + 4096],
            "wrong bytes in block {block}"
        );
    }
    let during = m.stats();
    assert!(
        during.hydrate_preempted >= 1,
        "no hydration GET gave way to the demand misses: {during:?}"
    );
    let s = wait_hydrated(&m, Duration::from_secs(60));
    let all = std::fs::read(m.path("disk.raw")).unwrap();
    assert_eq!(Sha256::digest(&all), Sha256::digest(&raw));
    drop(f);
    assert!(m.stop().success());
    eprintln!(
        "preempted {} hydration GETs; {} store requests, {} store bytes for {} blocks",
        s.hydrate_preempted, s.store_requests, s.store_bytes, s.hydrate_total
    );
}

/// Hydrating from a store faster than the cache disk: hydration waits for
/// the host cache's writer instead of having its fills dropped, so every
/// block is fetched once.
#[test]
fn hydration_from_a_fast_store_fetches_each_block_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_, image) = local_image(dir.path(), 256, 41);
    // The cache on the real disk (not tmpfs): its writes and syncs are
    // slower than reading and decoding the local image.
    let cache = tempfile::tempdir_in(dir.path()).unwrap();
    let m = Mounted::builder()
        .args(["--hydrate", "--readahead", "0"])
        .arg("--cache-dir")
        .arg(cache.path())
        .arg(&image)
        .expect_file("disk.raw")
        .start();
    let s = wait_hydrated(&m, Duration::from_secs(120));
    // The last fills may still be on their way to the disk.
    let deadline = Instant::now() + Duration::from_secs(30);
    let doc = loop {
        let doc = m.stats_json();
        let c = &doc["cache"]["disk"]["counters"];
        if c["writes"].as_u64().unwrap_or(0) + c["dropped"].as_u64().unwrap_or(0) >= 128
            || Instant::now() > deadline
        {
            break doc;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(m.stop().success());
    let disk = &doc["cache"]["disk"]["counters"];
    assert_eq!(s.hydrate_total, 128);
    assert_eq!(
        s.blocks_fetched, s.hydrate_total,
        "each block fetched once (host cache: {disk})"
    );
    assert_eq!(disk["dropped"], 0, "no fill dropped: {disk}");
    assert_eq!(disk["writes"], 128, "{disk}");
    assert_eq!(present(cache.path()), 128);
}

/// A host cache too small for the image: hydration stops once the cache
/// takes no more blocks, instead of fetching the whole image to throw it
/// away; reads still work.
#[test]
fn hydration_stops_when_the_host_cache_is_full() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, image) = local_image(dir.path(), 128, 43);
    let cache = zvtest::shm_tempdir();
    let m = Mounted::builder()
        .args(["--hydrate", "--readahead", "0", "--disk-cache", "4MiB"])
        .arg("--cache-dir")
        .arg(cache.path())
        .arg(&image)
        .expect_file("disk.raw")
        .start();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !m.stderr().contains("takes no more blocks") {
        assert!(Instant::now() < deadline, "{}", m.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = m.stats();
    // 64 blocks in the image, 2 fit: hydration stopped long before the end.
    assert!(
        s.blocks_fetched <= 32,
        "fetched {} of 64 blocks for a cache holding 2: {s:?}",
        s.blocks_fetched
    );
    let mut buf = vec![0u8; 4096];
    File::open(m.path("disk.raw"))
        .unwrap()
        .read_exact_at(&mut buf, 100 * MIB as u64)
        .unwrap();
    assert!(buf[..] == raw[100 * MIB..100 * MIB + 4096]);
    assert!(m.stop().success());
}

/// `--hydrate=RATE` holds after a store outage: the time hydration spent
/// paused is not made up in a burst above the cap when the store returns.
#[test]
fn the_hydration_rate_holds_after_an_outage() {
    let server = S3Server::start_private();
    let (_, url) = upload(&server, 96, 51);
    let cache = zvtest::shm_tempdir();
    let m = builder(&server, &url, cache.path(), &["--hydrate=4"]).start();
    while m.stats().store_bytes < 4_000_000 {
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop();
    std::thread::sleep(Duration::from_secs(10));
    server.restart();
    let at_restart = m.stats().store_bytes;
    std::thread::sleep(Duration::from_secs(4));
    let after = m.stats().store_bytes;
    assert!(m.stop().success());
    // 4 s at 4 MB/s, one second of saved allowance, and a 2 MiB block
    // that may finish just in the window: 24.2 MB at most. Without the
    // cap on saved allowance the 10 s paused were 40 MB to make up.
    let burst = after - at_restart;
    eprintln!("{burst} bytes in the 4 s after the store came back");
    assert!(burst <= 24_200_000, "{burst} bytes in 4 s at a 4 MB/s cap");
}
