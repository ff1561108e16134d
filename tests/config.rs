//! `zvmount --config FILE` end to end: a file with two images — one local,
//! one on the local S3 server reached through that image's own store
//! settings — mounts both; `--print-config` shows the merge; an unknown key
//! is refused with its name and line.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::images::{ImageFiles, raw_mixed, write_files};
use common::mount::Mounted;
use common::s3::{ACCESS_KEY, S3Server, SECRET_KEY, unique_bucket};

const BLOCK: u32 = 2 << 20;

fn read_at(path: &Path, offset: usize, len: usize) -> Vec<u8> {
    let file = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset as u64).unwrap();
    buf
}

fn zvmount(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zvmount"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_config_file_with_two_images_mounts_both() {
    let local: ImageFiles = write_files(raw_mixed(4, BLOCK, 21), BLOCK);
    let remote: ImageFiles = write_files(raw_mixed(3, BLOCK, 22), BLOCK);
    let server = S3Server::start();
    let bucket = unique_bucket("config");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        server.create_bucket(&bucket).await;
        server
            .put_bytes(&bucket, "db.zvhd2", std::fs::read(&remote.image).unwrap())
            .await;
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("web.toml");
    // The S3 endpoint is set for the second image only: were it ignored,
    // the image would be looked for on AWS and the mount would fail.
    std::fs::write(
        &config,
        format!(
            r#"# a mount of two images
mountpoint = "/nonexistent/overridden/by/the/command/line"
mem_cache = "64MiB"
readahead = 0
timeout = "10s"

[[image]]
source = "{local}"
name = "web.raw"

[[image]]
source = "s3://{bucket}/db.zvhd2"
name = "db.raw"
endpoint_url = "{endpoint}"
force_path_style = true
region = "us-east-1"
"#,
            local = local.image.display(),
            endpoint = server.endpoint(),
        ),
    )
    .unwrap();

    let m = Mounted::builder()
        .arg("--config")
        .arg(&config)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .expect_file("web.raw")
        .expect_file("db.raw")
        .start();
    let web = read_at(&m.path("web.raw"), BLOCK as usize + 777, 100_000);
    assert!(web == local.raw_bytes[BLOCK as usize + 777..][..100_000]);
    let db = read_at(&m.path("db.raw"), 2 * BLOCK as usize - 5000, 10_000);
    assert!(db == remote.raw_bytes[2 * BLOCK as usize - 5000..][..10_000]);
    let stats = m.stats_json();
    assert_eq!(stats["images"].as_object().unwrap().len(), 2, "{stats}");
    assert!(stats["store_bytes"].as_u64().unwrap() > 0, "{stats}");
    m.stop();
}

#[test]
fn unknown_keys_are_refused_with_their_name_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "mountpoint = \"/mnt\"\n\n[[image]]\nsource = \"a.zvhd2\"\nsidecarr = \"a.zvidx\"\n",
    )
    .unwrap();
    let out = zvmount(&["--config", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("sidecarr"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:5:1:", config.display())),
        "names file, line and column: {stderr}"
    );
}

#[test]
fn print_config_shows_the_merge_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "mountpoint = \"/run/zvmount/web\"\nmem_cache = \"1GiB\"\nreadahead = 8\n\n\
         [[image]]\nsource = \"s3://images/web.zvhd2\"\nname = \"web.raw\"\n",
    )
    .unwrap();
    let out = zvmount(&[
        "--config",
        config.to_str().unwrap(),
        "--readahead",
        "2",
        "--print-config",
    ]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "mountpoint = \"/run/zvmount/web\"",
        "mem_cache = \"1GiB\"",
        "readahead = 2",
        "prefetch_budget = \"64MiB\"",
        "source = \"s3://images/web.zvhd2\"",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "no {line:?} in:\n{printed}"
        );
    }
    // What it prints is itself a valid config file that means the same.
    let again = dir.path().join("again.toml");
    std::fs::write(&again, printed.as_bytes()).unwrap();
    let out = zvmount(&["--config", again.to_str().unwrap(), "--print-config"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), printed);
}

#[test]
fn every_mount_option_has_a_key_and_flags_still_win() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ops.toml");
    std::fs::write(
        &config,
        "mountpoint = \"/run/zvmount/web\"\nmetrics_addr = \"127.0.0.1:9917\"\n\
         log_format = \"json\"\nverbose = 1\ndaemon = false\n\n\
         [[image]]\nsource = \"s3://images/web.zvhd2\"\n",
    )
    .unwrap();
    let path = config.to_str().unwrap();
    let printed = |extra: &[&str]| {
        let mut args = vec!["--config", path, "--print-config"];
        args.extend_from_slice(extra);
        let out = zvmount(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let has = |text: &str, line: &str| {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}")
    };
    let from_file = printed(&[]);
    has(&from_file, "metrics_addr = \"127.0.0.1:9917\"");
    has(&from_file, "log_format = \"json\"");
    has(&from_file, "verbose = 1");
    let overridden = printed(&[
        "--metrics-addr",
        "/run/zvmount/metrics.sock",
        "--log-format",
        "human",
        "-vv",
    ]);
    has(&overridden, "metrics_addr = \"/run/zvmount/metrics.sock\"");
    has(&overridden, "log_format = \"human\"");
    has(&overridden, "verbose = 2");
    // A bad value names the key's line.
    std::fs::write(
        &config,
        "mountpoint = \"/mnt\"\nlog_format = \"yaml\"\n[[image]]\nsource = \"a.zvhd2\"\n",
    )
    .unwrap();
    let out = zvmount(&["--config", path, "--print-config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(&format!("{path}:2:")), "{stderr}");
}

/// `metrics_addr` and `log_format` from the file take effect on a real
/// mount: the exporter answers on that port and every log line is JSON.
#[test]
fn metrics_addr_and_log_format_from_the_file_are_used() {
    use std::io::{Read, Write};
    let img: ImageFiles = write_files(raw_mixed(3, BLOCK, 23), BLOCK);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ops.toml");
    std::fs::write(
        &config,
        format!(
            "metrics_addr = \"127.0.0.1:{port}\"\nlog_format = \"json\"\n\n\
             [[image]]\nsource = \"{}\"\nname = \"disk.raw\"\n",
            img.image.display()
        ),
    )
    .unwrap();
    let m = Mounted::builder()
        .arg("--config")
        .arg(&config)
        .env("ZVMOUNT_CACHE_DIR", "none")
        .env("RUST_LOG", "info")
        .expect_file("disk.raw")
        .start();
    let got = read_at(&m.path("disk.raw"), 4096, 8192);
    assert!(got == img.raw_bytes[4096..4096 + 8192]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("exporter");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut scrape = String::new();
    stream.read_to_string(&mut scrape).unwrap();
    assert!(scrape.starts_with("HTTP/1.1 200 "), "{scrape}");
    assert!(
        scrape
            .lines()
            .any(|l| l.starts_with("zvmount_fuse_reads_total{") && l.contains("image=\"disk.raw\"")),
        "{scrape}"
    );
    let stderr = m.stderr();
    m.stop();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for line in lines {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}
