//! Operations view of a real mount (real `zvmount` binary, real FUSE):
//! the Prometheus exporter (`--metrics-addr`, checked by `promtool`), the
//! per-image section of the stats file, JSON logs, and that no credential,
//! signature or presigned query string shows up in anything a run writes.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::HttpServer;
use common::images::{ImageFiles, raw_mixed, write_files};
use common::mount::Mounted;
use common::s3::{ACCESS_KEY, S3Server, SECRET_KEY, unique_bucket};

const MIB: usize = 1 << 20;
const BLOCK: u32 = 2 << 20;

/// A disk of `blocks` mixed blocks (zero, random, compressible) on disk,
/// with its sidecar beside it.
fn image(blocks: usize, seed: u64) -> ImageFiles {
    write_files(raw_mixed(blocks, BLOCK, seed), BLOCK)
}

/// A free TCP port on 127.0.0.1 (bound, then released for the daemon).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

/// `GET /metrics` over any stream, with `extra` header lines; returns
/// (response head, body).
fn get_metrics(mut stream: impl Read + Write, extra: &str) -> (String, String) {
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: zvmount\r\n{extra}Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .expect("send the scrape");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read the scrape");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header end in {raw:?}"));
    (head.to_owned(), body.to_owned())
}

fn scrape_tcp(port: u16) -> String {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to --metrics-addr");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    ok_body(get_metrics(stream, ""))
}

fn scrape_unix(path: &Path) -> String {
    let stream = UnixStream::connect(path).expect("connect to the metrics socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    ok_body(get_metrics(stream, ""))
}

/// The body of a successful scrape in the classic text format.
fn ok_body((head, body): (String, String)) -> String {
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}\n{body}");
    assert!(head.contains("version=0.0.4"), "{head}");
    body
}

/// Samples of an exposition: series (name and labels, as written) → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("sample line");
            (series.to_owned(), value.parse().expect("sample value"))
        })
        .collect()
}

/// The value of `name` for `image` (exactly these labels: mount, image).
fn value(samples: &BTreeMap<String, f64>, name: &str, image: &str) -> f64 {
    samples
        .iter()
        .find(|(series, _)| {
            series.starts_with(&format!("{name}{{"))
                && series.contains(&format!("image=\"{image}\""))
                && !series.contains("tier=")
                && !series.contains("kind=")
        })
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no {name} for {image}"))
}

/// Runs `promtool check metrics` on `text`. Under CI the tool must be there
/// (scripts/install-deps.sh installs it); elsewhere its absence skips this
/// one step, loudly.
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "promtool is missing under CI: scripts/install-deps.sh installs Debian's prometheus package"
            );
            eprintln!(
                "\n*** SKIPPING `promtool check metrics`: promtool is not installed \
                 (apt-get install prometheus, or scripts/install-deps.sh) ***\n"
            );
            return;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- scrape ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn scrape_during_reads_passes_promtool_and_counts_per_image() {
    let a = image(8, 11);
    let b = image(4, 12);
    let port = free_port();
    let m = Mounted::builder()
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .args(["--name", "a.raw", "--name", "b.raw"])
        .arg(&a.image)
        .arg(&b.image)
        .expect_file("a.raw")
        .expect_file("b.raw")
        .start();

    // Read all of a.raw while scraping; b.raw is never read.
    let path = m.path("a.raw");
    let reader = std::thread::spawn(move || {
        let file = std::fs::File::open(path).unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut out = Vec::new();
        let mut off = 0u64;
        loop {
            let n = file.read_at(&mut buf, off).unwrap();
            if n == 0 {
                break out;
            }
            out.extend_from_slice(&buf[..n]);
            off += n as u64;
        }
    });
    for _ in 0..5 {
        promtool_check(&scrape_tcp(port));
    }
    let read = reader.join().unwrap();
    assert!(read == a.raw_bytes, "a.raw read back wrong bytes");

    let text = scrape_tcp(port);
    promtool_check(&text);
    // Prometheus itself asks for OpenMetrics, and gets it.
    let (head, openmetrics) = get_metrics(
        TcpStream::connect(("127.0.0.1", port)).unwrap(),
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
    );
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    assert!(openmetrics.contains("# TYPE zvmount_fuse_reads counter\n"));
    let s = samples(&text);
    let len = a.raw_bytes.len() as f64;
    assert_eq!(value(&s, "zvmount_fuse_read_bytes_total", "a.raw"), len);
    assert!(value(&s, "zvmount_fuse_reads_total", "a.raw") > 0.0);
    assert!(value(&s, "zvmount_store_requests_total", "a.raw") > 0.0);
    assert!(value(&s, "zvmount_store_read_bytes_total", "a.raw") > 0.0);
    assert!(value(&s, "zvmount_store_request_duration_seconds_count", "a.raw") > 0.0);
    assert!(value(&s, "zvmount_blocks_fetched_total", "a.raw") > 0.0);
    // Nothing read b.raw: every one of its series stays at zero.
    let b_series: Vec<_> = s
        .iter()
        .filter(|(k, _)| k.contains("image=\"b.raw\""))
        .collect();
    assert!(b_series.len() > 20, "{b_series:?}");
    for (series, v) in &b_series {
        assert_eq!(**v, 0.0, "{series} moved without a read of b.raw");
    }
    // Cache tiers are per mount.
    let mem_cap = s
        .iter()
        .find(|(k, _)| k.starts_with("zvmount_cache_capacity_bytes{") && k.contains("memory"))
        .map(|(_, v)| *v);
    assert_eq!(mem_cap, Some(512.0 * MIB as f64));

    // The stats file shows the same per-image figures, and top-level totals
    // under their old names.
    let stats = m.stats_json();
    assert_eq!(stats["images"]["a.raw"]["fuse_read_bytes"], len as u64);
    assert_eq!(stats["images"]["b.raw"]["fuse_reads"], 0);
    assert_eq!(
        stats["fuse_reads"].as_u64().unwrap() as f64,
        value(&s, "zvmount_fuse_reads_total", "a.raw")
    );
    assert_eq!(
        stats["store_bytes"].as_u64().unwrap() as f64,
        value(&s, "zvmount_store_read_bytes_total", "a.raw")
    );
    assert!(m.stop().success());
}

#[test]
fn metrics_on_a_unix_socket_and_a_taken_port_refused() {
    let a = image(3, 21);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("metrics.sock");
    // A socket file left by a killed daemon is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let m = Mounted::builder()
        .args(["--metrics-addr"])
        .arg(&sock)
        .arg(&a.image)
        .expect_file("disk.raw")
        .start();
    let mut buf = vec![0u8; 4096];
    std::fs::File::open(m.path("disk.raw"))
        .unwrap()
        .read_exact_at(&mut buf, 0)
        .unwrap();
    let text = scrape_unix(&sock);
    promtool_check(&text);
    // The kernel may read ahead of the 4 KiB asked; the scrape and the
    // stats file agree on what reached the daemon.
    let scraped = value(&samples(&text), "zvmount_fuse_read_bytes_total", "disk.raw");
    assert!(scraped >= 4096.0, "{text}");
    assert_eq!(
        m.stats_json()["images"]["disk.raw"]["fuse_read_bytes"].as_f64(),
        Some(scraped)
    );
    assert!(m.stop().success());
    assert!(!sock.exists(), "the metrics socket outlived the daemon");

    // A port another process holds fails the start, before mounting.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = Mounted::builder()
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .arg(&a.image)
        .expect_file("disk.raw")
        .try_start()
        .unwrap_err();
    assert!(
        err.contains(&format!("cannot listen on http://127.0.0.1:{port}/metrics")),
        "{err}"
    );
}

/// Strings that must never appear in anything a run writes.
const SIGNATURE: &str = "5d41402abc4b2a76b9719d911017c592feedfacecafebeef";
const CREDENTIAL: &str = "AKIAZVLEAKCHECK0001";
const WRONG_SECRET: &str = "zvSecret+DoNotLeak/8c1b5e0f2a";
/// What any signed request or presigned URL is made of, whatever its value.
const SIGNED_MARKERS: &[&str] = &[
    "X-Amz-Signature",
    "X-Amz-Credential",
    "Signature=",
    "Credential=",
    "X-Amz-Security-Token",
];

fn assert_clean(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets.iter().chain(SIGNED_MARKERS) {
        assert!(!text.contains(s), "{what} contains {s:?}:\n{text}");
    }
}

#[test]
fn json_logs_parse_and_no_secret_in_any_output() {
    let a = image(4, 31);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // An HTTPS-style presigned URL (served over plain HTTP on 127.0.0.1).
    let http = rt.block_on(HttpServer::start());
    http.put("img/web.zvhd2", std::fs::read(&a.image).unwrap());
    let presigned = format!(
        "{}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={CREDENTIAL}%2F20261130%2Fus-east-1%2Fs3%2Faws4_request\
         &X-Amz-Date=20261130T000000Z&X-Amz-Expires=604800&X-Amz-SignedHeaders=host&X-Amz-Signature={SIGNATURE}",
        http.url("img/web.zvhd2")
    );
    // And an S3 image read with signed requests.
    let server = S3Server::start();
    let bucket = unique_bucket("metrics");
    let b = image(3, 32);
    rt.block_on(async {
        server.create_bucket(&bucket).await;
        server
            .put_bytes(&bucket, "db.zvhd2", std::fs::read(&b.image).unwrap())
            .await;
        server
            .put_bytes(
                &bucket,
                "db.zvhd2.zvidx",
                std::fs::read(&b.sidecar).unwrap(),
            )
            .await;
    });

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("metrics.sock");
    let m = Mounted::builder()
        .args([
            "--log-format",
            "json",
            "-vv",
            "--force-path-style",
            "--no-sidecar",
        ])
        .args(["--name", "web.raw", "--name", "db.raw", "--metrics-addr"])
        .arg(&sock)
        .arg(&presigned)
        .arg(format!("s3://{bucket}/db.zvhd2"))
        .env("AWS_ENDPOINT_URL", server.endpoint())
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        // The daemon's own -vv filter, not the fixture's default.
        .env("RUST_LOG", "debug,zvmount=trace")
        .expect_file("web.raw")
        .expect_file("db.raw")
        .start();
    let mut got = vec![0u8; a.raw_bytes.len()];
    std::fs::File::open(m.path("web.raw"))
        .unwrap()
        .read_exact_at(&mut got, 0)
        .unwrap();
    assert!(got == a.raw_bytes, "web.raw read back wrong bytes");
    let mut got = vec![0u8; b.raw_bytes.len()];
    std::fs::File::open(m.path("db.raw"))
        .unwrap()
        .read_exact_at(&mut got, 0)
        .unwrap();
    assert!(got == b.raw_bytes, "db.raw read back wrong bytes");
    let scrape = scrape_unix(&sock);
    let stats = String::from_utf8(std::fs::read(m.path(".zvmount-stats.json")).unwrap()).unwrap();
    assert!(stats.contains("img/web.zvhd2"), "{stats}");
    let log = {
        let log = m.stderr();
        assert!(m.stop().success());
        log
    };
    assert_clean("the /metrics scrape", &scrape, &[SIGNATURE, CREDENTIAL]);
    assert_clean("the stats file", &stats, &[SIGNATURE, CREDENTIAL]);
    assert_clean("the log", &log, &[SIGNATURE, CREDENTIAL]);
    let mut lines = 0;
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines > 3, "too few log lines to mean anything:\n{log}");
    assert!(
        log.contains("\"message\":\"mounted\""),
        "no mounted line in the JSON log:\n{log}"
    );

    // Refusals print errors naming the source: still without the secrets.
    let refused = Mounted::builder()
        .args([
            "--log-format",
            "json",
            "--force-path-style",
            "--retries",
            "0",
        ])
        .arg(presigned.replace("img/web.zvhd2", "img/missing.zvhd2"))
        .expect_file("missing.raw")
        .try_start()
        .unwrap_err();
    assert!(refused.contains("img/missing.zvhd2"), "{refused}");
    assert_clean(
        "a refused presigned mount",
        &refused,
        &[SIGNATURE, CREDENTIAL],
    );
    let refused = Mounted::builder()
        .args([
            "--force-path-style",
            "--retries",
            "0",
            "--log-format",
            "json",
        ])
        .arg(format!("s3://{bucket}/db.zvhd2"))
        .env("AWS_ENDPOINT_URL", server.endpoint())
        .env("AWS_ACCESS_KEY_ID", CREDENTIAL)
        .env("AWS_SECRET_ACCESS_KEY", WRONG_SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("RUST_LOG", "debug,zvmount=trace")
        .expect_file("db.raw")
        .try_start()
        .unwrap_err();
    assert!(refused.contains("db.zvhd2"), "{refused}");
    assert_clean("a refused S3 mount", &refused, &[WRONG_SECRET]);
    drop(http);
}

/// The value of the mount-level series `name` whose labels include
/// `label` (e.g. `tier="disk"`), or `None`.
fn mount_value(samples: &BTreeMap<String, f64>, name: &str, label: &str) -> Option<f64> {
    samples
        .iter()
        .find(|(series, _)| series.starts_with(&format!("{name}{{")) && series.contains(label))
        .map(|(_, v)| *v)
}

/// Scrapes until `pred` holds on the samples (bounded, so a gauge that
/// never moves fails the test instead of hanging it); returns them.
fn scrape_until(
    port: u16,
    what: &str,
    pred: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape_tcp(port);
        let s = samples(&text);
        if pred(&s) {
            promtool_check(&text);
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} never happened; last scrape:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The gauges an operator watches move as they should on a real mount
/// over a real S3 server: the host (disk) cache fills with what was read,
/// the outage gauge is 1 while the server is stopped and 0 once it is back,
/// and the retries are counted by kind (a stopped server refuses
/// connections).
#[test]
fn outage_retry_kinds_and_disk_cache_gauges_move() {
    let a = image(8, 41);
    let server = S3Server::start_private();
    let bucket = unique_bucket("gauges");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        server.create_bucket(&bucket).await;
        server
            .put_bytes(&bucket, "disk.zvhd2", std::fs::read(&a.image).unwrap())
            .await;
    });
    let cache = tempfile::tempdir().unwrap();
    let port = free_port();
    let m = Mounted::builder()
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .args(["--force-path-style", "--readahead", "0", "--no-sidecar"])
        .args(["--disk-cache", "1GiB", "--cache-dir"])
        .arg(cache.path())
        .arg(format!("s3://{bucket}/disk.zvhd2"))
        .env("AWS_ENDPOINT_URL", server.endpoint())
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .expect_file("disk.raw")
        .start();
    let read = |block: usize| {
        let mut buf = vec![0u8; 4096];
        std::fs::File::open(m.path("disk.raw"))
            .unwrap()
            .read_exact_at(&mut buf, (block * BLOCK as usize) as u64)
            .unwrap();
        assert!(
            buf == a.raw_bytes[block * BLOCK as usize..][..4096],
            "wrong bytes in block {block}"
        );
    };

    let before = samples(&scrape_tcp(port));
    let disk_before =
        mount_value(&before, "zvmount_cache_bytes", "tier=\"disk\"").expect("a disk tier gauge");
    assert_eq!(
        mount_value(&before, "zvmount_cache_capacity_bytes", "tier=\"disk\""),
        Some(1024.0 * MIB as f64)
    );
    assert_eq!(
        mount_value(&before, "zvmount_store_outage", "mount="),
        Some(0.0)
    );
    // Block 1 is random data: 2 MiB stored, kept by the host cache.
    read(1);
    scrape_until(port, "the disk cache gauge moving", |s| {
        mount_value(s, "zvmount_cache_bytes", "tier=\"disk\"")
            .is_some_and(|v| v >= disk_before + BLOCK as f64)
    });

    server.stop();
    // Block 7 (random data, never read) waits for the store.
    let path = m.path("disk.raw");
    let expected = a.raw_bytes[7 * BLOCK as usize..][..4096].to_vec();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        std::fs::File::open(path)
            .unwrap()
            .read_exact_at(&mut buf, 7 * BLOCK as u64)
            .map(|()| buf == expected)
    });
    let during = scrape_until(port, "the outage gauge rising", |s| {
        mount_value(s, "zvmount_store_outage", "mount=") == Some(1.0)
    });
    assert!(!reader.is_finished(), "the read did not wait for the store");
    server.restart();
    assert!(
        reader
            .join()
            .unwrap()
            .expect("the read rode out the outage"),
        "wrong bytes after the outage"
    );
    let after = scrape_until(port, "the outage gauge falling", |s| {
        mount_value(s, "zvmount_store_outage", "mount=") == Some(0.0)
    });
    assert!(mount_value(&after, "zvmount_store_outages_total", "mount=").unwrap() >= 1.0);
    let connection = mount_value(&after, "zvmount_store_retries_total", "kind=\"connection\"")
        .expect("retries by kind");
    assert!(connection >= 1.0, "{after:?}");
    assert!(
        connection
            >= mount_value(
                &during,
                "zvmount_store_retries_total",
                "kind=\"connection\""
            )
            .unwrap_or(0.0)
    );
    // Every kind is listed, zeros included, so dashboards need no absent().
    for kind in [
        "timeout",
        "throttled",
        "server_error",
        "short_body",
        "credentials",
    ] {
        assert!(
            mount_value(
                &after,
                "zvmount_store_retries_total",
                &format!("kind=\"{kind}\"")
            )
            .is_some(),
            "no {kind} series"
        );
    }
    let stats = m.stats_json();
    assert_eq!(stats["outage"], false, "{stats}");
    assert!(stats["retries_by_kind"]["connection"].as_u64().unwrap() >= 1);
    assert!(stats["cache"]["disk"]["bytes"].as_u64().unwrap() >= BLOCK as u64);
    assert!(m.stop().success());
}
