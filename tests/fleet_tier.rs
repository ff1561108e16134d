//! A fleet behind a caching tier, on this machine: a real nginx configured by
//! `examples/nginx-slice-cache.conf` in front of an HTTP origin, several
//! zvmount daemons (each with a cache directory of its own, standing in for
//! hosts) reading the same block set at once, and the origin's traffic
//! counted at the origin (a counting TCP proxy right in front of it).
//!
//! Also: a tier serving a stale copy is caught by pinning, and
//! `HTTP_PROXY`/`NO_PROXY` are honoured by both backends (a real forward
//! proxy, tinyproxy, counting what passes through it).

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::http::HttpServer;
use common::images::mixed_cycle_disk;
use common::mount::{MountBuilder, Mounted};
use common::s3::{ACCESS_KEY, S3Server, SECRET_KEY, unique_bucket};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use zvhd2::{BlockLocation, DEFAULT_BLOCK_SIZE, FOOTER_SIZE, Sidecar};
use zvtest::nginx::{self, Nginx};
use zvtest::proxy::{Shaping, ShapingProxy};

const HOSTS: usize = 4;
const SLICE: u64 = 4 << 20;
const READ: usize = 64 << 10;

/// The "boot set": blocks the hosts read, scattered over the disk.
fn boot_set(blocks: u64) -> Vec<u64> {
    (0..blocks).filter(|b| b % 5 != 2).collect()
}

/// Record byte ranges of `set`'s non-zero blocks.
fn records(sidecar: &Sidecar, set: &[u64]) -> Vec<std::ops::Range<u64>> {
    let index = sidecar.block_index();
    set.iter()
        .filter_map(|&b| match index.lookup(b)? {
            BlockLocation::Record(loc) => Some(loc.offset..loc.offset + u64::from(loc.size)),
            BlockLocation::Zero => None,
        })
        .collect()
}

/// Bytes of the distinct `SLICE`-aligned slices of an `object_len`-byte
/// object that `ranges` touch: what a slicing tier must fetch once.
fn slice_bytes(ranges: &[std::ops::Range<u64>], object_len: u64) -> (u64, usize) {
    let slices: BTreeSet<u64> = ranges
        .iter()
        .flat_map(|r| r.start / SLICE..r.end.div_ceil(SLICE))
        .collect();
    let bytes = slices
        .iter()
        .map(|s| ((s + 1) * SLICE).min(object_len) - s * SLICE)
        .sum();
    (bytes, slices.len())
}

fn cache_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

/// A daemon standing in for one host: its own cache directory, demand
/// reads only (no readahead or profile replay), so what it fetches is
/// what it reads (widened to slices with `align`).
fn host(url: &str, cache: &Path, align: Option<&str>) -> MountBuilder {
    let mut b = Mounted::builder()
        .args(["--timeout", "5s", "--retries", "1", "--io-timeout", "5s"])
        .args(["--readahead", "0", "--prefetch-budget", "0"]);
    if let Some(a) = align {
        b = b.args(["--fetch-align", a]);
    }
    b.arg("--cache-dir")
        .arg(cache)
        .arg(url)
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .expect_file("disk.raw")
}

/// Every host reads `READ` bytes somewhere in each block of `set`, in an
/// order of its own, all starting at once; each read is checked against
/// `raw`. Returns the number of reads that failed (and checks none
/// returned wrong bytes).
fn read_at_once(mounts: &[Mounted], raw: &[u8], set: &[u64]) -> usize {
    let start = Barrier::new(mounts.len());
    let bs = DEFAULT_BLOCK_SIZE as u64;
    std::thread::scope(|s| {
        let handles: Vec<_> = mounts
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let start = &start;
                s.spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(100 + i as u64);
                    let mut order = set.to_vec();
                    order.shuffle(&mut rng);
                    let f = File::open(m.path("disk.raw")).unwrap();
                    let mut buf = vec![0u8; READ];
                    let mut failed = 0;
                    start.wait();
                    for b in order {
                        let at = b * bs + rng.gen_range(0..(bs - READ as u64) / 4096) * 4096;
                        match f.read_exact_at(&mut buf, at) {
                            Ok(()) => assert!(
                                buf[..] == raw[at as usize..at as usize + READ],
                                "host {i}: wrong bytes at {at} (block {b})"
                            ),
                            Err(_) => failed += 1,
                        }
                    }
                    failed
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    })
}

/// The HTTP origin behind a counting proxy: (runtime, origin, counter).
fn origin(image: &[u8], sidecar: &Sidecar) -> (tokio::runtime::Runtime, HttpServer, ShapingProxy) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(HttpServer::start());
    server.put("images/disk.zvhd2", image.to_vec());
    server.put("images/disk.zvhd2.zvidx", sidecar.encode());
    let addr: SocketAddr = server
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let counter = ShapingProxy::start(
        addr,
        Shaping {
            latency: Duration::ZERO,
            bytes_per_sec: 0,
        },
    )
    .unwrap();
    (rt, server, counter)
}

#[test]
fn a_tier_serves_a_fleet_with_each_slice_fetched_from_the_origin_once() {
    if !nginx::available() {
        panic!("nginx is not installed: run scripts/install-deps.sh");
    }
    let blocks = 24u64;
    let (raw, image, sidecar) = mixed_cycle_disk(blocks as usize, 7);
    let set = boot_set(blocks);
    let wanted = records(&sidecar, &set);
    let record_bytes: u64 = wanted.iter().map(|r| r.end - r.start).sum();
    let len = image.len() as u64;
    // What the tier must fetch once: the slices of the records, of both
    // footers (open), and the whole sidecar (one slice, it is small).
    let mut touched = wanted.clone();
    touched.push(0..FOOTER_SIZE);
    touched.push(len - FOOTER_SIZE..len);
    let (image_slices_bytes, image_slices) = slice_bytes(&touched, len);
    let sidecar_len = sidecar.encode().len() as u64;
    let once = image_slices_bytes + sidecar_len;

    let (_rt, _server, counter) = origin(&image, &sidecar);

    // Without a tier: every host fetches every record from the origin.
    let direct = format!("http://{}/images/disk.zvhd2", counter.addr());
    let caches: Vec<_> = (0..HOSTS).map(|_| cache_tempdir()).collect();
    let mounts: Vec<Mounted> = caches
        .iter()
        .map(|c| host(&direct, c.path(), None).start())
        .collect();
    counter.reset();
    assert_eq!(read_at_once(&mounts, &raw, &set), 0);
    let no_tier = counter.stats();
    drop(mounts);

    // Through the tier, with aligned fetches.
    let tier = Nginx::start(counter.addr(), SLICE);
    let url = tier.url("images/disk.zvhd2");
    let caches: Vec<_> = (0..HOSTS).map(|_| cache_tempdir()).collect();
    counter.reset();
    let mounts: Vec<Mounted> = caches
        .iter()
        .map(|c| host(&url, c.path(), Some("4MiB")).start())
        .collect();
    assert_eq!(read_at_once(&mounts, &raw, &set), 0, "{}", tier.error_log());
    let with_tier = counter.stats();
    let served: u64 = mounts.iter().map(|m| m.stats().store_bytes).sum();
    drop(mounts);

    eprintln!(
        "{HOSTS} hosts, boot set {} blocks, {record_bytes} record bytes, {image_slices} slices \
         ({once} bytes with the sidecar)\n  no tier: origin {} requests, {} bytes ({:.2}x the \
         record bytes)\n  tier:    origin {} requests, {} bytes ({:.2}x the slices once); hosts \
         read {served} bytes from the tier, hit ratio {:.2}",
        set.len(),
        no_tier.requests,
        no_tier.bytes_down,
        no_tier.bytes_down as f64 / record_bytes as f64,
        with_tier.requests,
        with_tier.bytes_down,
        with_tier.bytes_down as f64 / once as f64,
        1.0 - with_tier.bytes_down as f64 / served as f64,
    );
    // Without the tier the origin serves the boot set once per host.
    assert!(
        no_tier.bytes_down >= HOSTS as u64 * record_bytes,
        "no tier: {no_tier:?}, record bytes {record_bytes}"
    );
    // With it, each slice about once (headers and a lock that timed out
    // are the slack), however many hosts.
    assert!(
        with_tier.bytes_down >= image_slices_bytes,
        "the origin served less than the slices read: {with_tier:?}"
    );
    assert!(
        with_tier.bytes_down as f64 <= 1.2 * once as f64,
        "tier: origin served {} bytes for {once} bytes of slices ({with_tier:?})\n{}",
        with_tier.bytes_down,
        tier.error_log()
    );
    assert!(
        with_tier.requests as f64 <= 1.2 * (image_slices + 1) as f64,
        "tier: {} origin requests for {image_slices} slices + the sidecar",
        with_tier.requests
    );
}

#[test]
fn a_stale_copy_in_the_tier_is_an_error_not_mixed_bytes() {
    if !nginx::available() {
        panic!("nginx is not installed: run scripts/install-deps.sh");
    }
    let blocks = 16u64;
    let (raw1, image1, sidecar1) = mixed_cycle_disk(blocks as usize, 21);
    // Same layout (same kinds), other bytes: the records of v2 sit where
    // v1's did, so only the identity can tell them apart.
    let (raw2, image2, sidecar2) = mixed_cycle_disk(blocks as usize, 22);
    assert_ne!(raw1, raw2);
    let (_rt, server, counter) = origin(&image1, &sidecar1);
    let tier = Nginx::start(counter.addr(), SLICE);
    let url = tier.url("images/disk.zvhd2");

    // Host A opens v1 and reads the first half: the tier caches those slices
    // (and the footers and sidecar).
    let cache_a = cache_tempdir();
    let a = host(&url, cache_a.path(), Some("4MiB")).start();
    let first: Vec<u64> = (0..blocks / 2).collect();
    assert_eq!(read_at_once(std::slice::from_ref(&a), &raw1, &first), 0);

    // The origin object is replaced; the tier still holds part of v1.
    server.put("images/disk.zvhd2", image2);
    server.put("images/disk.zvhd2.zvidx", sidecar2.encode());

    // Host B opens through the tier now: it gets v1's footers (cached), so it
    // is pinned to v1, and then meets v2 slices for the second half.
    let cache_b = cache_tempdir();
    let b = host(&url, cache_b.path(), Some("4MiB")).start();
    let all: Vec<u64> = (0..blocks).collect();
    for m in [&a, &b] {
        // Every read either fails or returns v1's bytes (checked inside:
        // v2's bytes would fail the comparison); the second half is v2 at
        // the origin, so some reads must fail, and the daemon says why.
        let failed = read_at_once(std::slice::from_ref(m), &raw1, &all);
        assert!(failed > 0, "stale tier went unnoticed\n{}", m.stderr());
        let log = m.stderr();
        assert!(
            log.contains("changed since it was opened"),
            "the error names the changed object:\n{log}"
        );
    }
}

/// tinyproxy, a real forward proxy (absolute-URI requests), on a free port;
/// counts the requests it forwarded from its log.
struct ForwardProxy {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl ForwardProxy {
    fn start() -> ForwardProxy {
        let dir = tempfile::tempdir().unwrap();
        let port = nginx::free_port().unwrap();
        let conf = dir.path().join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 64\nAllow 127.0.0.1\n\
                 LogLevel Info\nLogFile \"{}\"\nPidFile \"{}\"\nDisableViaHeader Yes\n",
                dir.path().join("log").display(),
                dir.path().join("pid").display()
            ),
        )
        .unwrap();
        let child = Command::new(tinyproxy())
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tinyproxy (scripts/install-deps.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tinyproxy did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        ForwardProxy { child, port, dir }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests it has forwarded so far.
    fn requests(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Request (file descriptor"))
            .count()
    }
}

impl Drop for ForwardProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tinyproxy() -> PathBuf {
    ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("tinyproxy"))
}

/// Reads the whole served disk and compares it with `raw`.
fn read_all(m: &Mounted, raw: &[u8]) {
    let got = std::fs::read(m.path("disk.raw")).unwrap();
    assert!(got == raw, "wrong bytes through the proxy");
}

#[test]
fn both_backends_go_through_http_proxy_unless_no_proxy_says_otherwise() {
    let blocks = 6;
    let (raw, image, sidecar) = mixed_cycle_disk(blocks, 31);
    let proxy = ForwardProxy::start();

    // HTTP backend (reqwest).
    let (_rt, _server, counter) = origin(&image, &sidecar);
    let url = format!("http://{}/images/disk.zvhd2", counter.addr());
    let cache = cache_tempdir();
    let m = host(&url, cache.path(), None)
        .env("HTTP_PROXY", proxy.url())
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .start();
    read_all(&m, &raw);
    drop(m);
    let through_http = proxy.requests();
    assert!(
        through_http >= 3,
        "HTTP backend bypassed the proxy ({through_http} requests)"
    );

    let cache = cache_tempdir();
    let m = host(&url, cache.path(), None)
        .env("HTTP_PROXY", proxy.url())
        .env("NO_PROXY", "127.0.0.1")
        .start();
    read_all(&m, &raw);
    drop(m);
    assert_eq!(
        proxy.requests(),
        through_http,
        "NO_PROXY ignored by the HTTP backend"
    );

    // S3 backend (aws-sdk with the proxy connector).
    let s3 = S3Server::start();
    let bucket = unique_bucket("proxy");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        s3.create_bucket(&bucket).await;
        s3.put_bytes(&bucket, "disk.zvhd2", image.clone()).await;
        s3.put_bytes(&bucket, "disk.zvhd2.zvidx", sidecar.encode())
            .await;
    });
    let s3_host = |no_proxy: Option<&str>| {
        let cache = cache_tempdir();
        let mut b = Mounted::builder()
            .arg("--cache-dir")
            .arg(cache.path())
            .args(["--force-path-style", "--region", "us-east-1"])
            .args(["--timeout", "5s", "--retries", "1"])
            .args(["--readahead", "0", "--prefetch-budget", "0"])
            .arg(format!("s3://{bucket}/disk.zvhd2"))
            .env("AWS_ENDPOINT_URL", s3.endpoint())
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env("HTTP_PROXY", proxy.url())
            .env_remove("no_proxy")
            .expect_file("disk.raw");
        b = match no_proxy {
            Some(v) => b.env("NO_PROXY", v),
            None => b.env_remove("NO_PROXY"),
        };
        let m = b.start();
        read_all(&m, &raw);
        drop(m);
        drop(cache);
    };
    let before = proxy.requests();
    s3_host(None);
    let through_s3 = proxy.requests() - before;
    assert!(
        through_s3 >= 3,
        "S3 backend bypassed the proxy ({through_s3} requests)"
    );
    let before = proxy.requests();
    s3_host(Some("127.0.0.1"));
    assert_eq!(
        proxy.requests(),
        before,
        "NO_PROXY ignored by the S3 backend"
    );
}
