//! `zvimg push`, `info`, `check`, `index` and `pull` against a real
//! S3-compatible server (s3s-fs on 127.0.0.1).

use std::path::Path;
use std::process::{Command, Output};

use rand::{RngCore, SeedableRng};
use zvtest::s3::{self, S3Server};

mod common;

fn zvimg(server: &S3Server, args: &[&str]) -> Output {
    let endpoint = server.endpoint();
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--endpoint-url",
        &endpoint,
        "--region",
        "us-east-1",
        "--retries",
        "1",
    ]);
    Command::new(env!("CARGO_BIN_EXE_zvimg"))
        .args(&all)
        .env("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY)
        .env_remove("AWS_PROFILE")
        .output()
        .expect("run zvimg")
}

fn ok(server: &S3Server, args: &[&str]) -> String {
    let out = zvimg(server, args);
    assert!(
        out.status.success(),
        "zvimg {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn convert_sample(dir: &Path) -> Vec<u8> {
    let mut raw = vec![0u8; 7 << 20];
    for (i, b) in raw.iter_mut().enumerate().skip(3 << 20) {
        *b = (i.wrapping_mul(2654435761) >> 13) as u8;
    }
    std::fs::write(dir.join("disk.raw"), &raw).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zvimg"))
        .args(["convert", "--sidecar"])
        .arg(dir.join("disk.raw"))
        .arg(dir.join("disk.zvhd2"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    raw
}

#[test]
fn push_then_read_everything_back_over_s3() {
    let server = S3Server::start();
    let bucket = s3::unique_bucket("zvimg");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(server.create_bucket(&bucket));
    let dir = tempfile::tempdir().unwrap();
    let raw = convert_sample(dir.path());
    let image = dir.path().join("disk.zvhd2");
    let url = format!("s3://{bucket}/images/disk.zvhd2");

    let out = ok(server, &["push", image.to_str().unwrap(), &url]);
    assert!(out.contains("sidecar uploaded"), "{out}");

    let info: serde_json::Value =
        serde_json::from_str(&ok(server, &["info", "--json", &url])).unwrap();
    assert_eq!(info["image_size"], std::fs::metadata(&image).unwrap().len());
    assert!(
        info["sidecar"].as_str().unwrap().contains("matches"),
        "{}",
        info["sidecar"]
    );

    assert!(ok(server, &["check", &url]).contains("verified against the sidecar"));

    // An index built remotely lands beside the image and equals the local one.
    let remote_sc = format!("{url}.zvidx");
    ok(server, &["index", &url]);
    let pulled = dir.path().join("pulled.zvhd2");
    ok(server, &["pull", &url, pulled.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(&pulled).unwrap(),
        std::fs::read(&image).unwrap()
    );
    assert_eq!(
        std::fs::read(dir.path().join("pulled.zvhd2.zvidx")).unwrap(),
        std::fs::read(dir.path().join("disk.zvhd2.zvidx")).unwrap(),
        "sidecar rebuilt at {remote_sc} differs from the one convert wrote"
    );

    let back = dir.path().join("back.raw");
    ok(server, &["convert", &url, back.to_str().unwrap()]);
    assert_eq!(std::fs::read(&back).unwrap(), raw);
}

/// No credentials anywhere in the chain is a setup error named at once,
/// not a store outage waited out for --io-timeout.
#[test]
fn missing_credentials_are_named_not_waited_for() {
    let server = S3Server::start();
    let endpoint = server.endpoint();
    let out = Command::new(env!("CARGO_BIN_EXE_zvimg"))
        .args([
            "info",
            "s3://any-bucket/disk.zvhd2",
            "--endpoint-url",
            &endpoint,
        ])
        .args(["--region", "us-east-1", "--io-timeout", "60s"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/nonexistent/zvmount-test/config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/zvmount-test/credentials",
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no usable AWS credentials") && err.contains("AWS_ACCESS_KEY_ID"),
        "{err}"
    );
    assert!(
        !err.contains("gave up after waiting"),
        "waited as for an outage: {err}"
    );
}

#[test]
fn missing_objects_and_buckets_are_named() {
    let server = S3Server::start();
    let out = zvimg(server, &["info", "s3://no-such-bucket-zv/disk.zvhd2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-bucket-zv"), "{err}");

    let bucket = s3::unique_bucket("zvimg-missing");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(server.create_bucket(&bucket));
    let out = zvimg(server, &["check", &format!("s3://{bucket}/nothing.zvhd2")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nothing.zvhd2") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn push_without_a_sidecar_removes_the_stale_remote_one() {
    let server = S3Server::start();
    let bucket = s3::unique_bucket("zvimg-stale");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(server.create_bucket(&bucket));
    let dir = tempfile::tempdir().unwrap();
    convert_sample(dir.path());
    let url = format!("s3://{bucket}/disk.zvhd2");
    ok(
        server,
        &[
            "push",
            dir.path().join("disk.zvhd2").to_str().unwrap(),
            &url,
        ],
    );

    // Another image, with no sidecar, pushed over the first.
    std::fs::write(dir.path().join("other.raw"), vec![7u8; 5 << 20]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zvimg"))
        .arg("convert")
        .arg(dir.path().join("other.raw"))
        .arg(dir.path().join("other.zvhd2"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("other.zvhd2.zvidx").exists());
    ok(
        server,
        &[
            "push",
            dir.path().join("other.zvhd2").to_str().unwrap(),
            &url,
        ],
    );

    let head = rt.block_on(async {
        server
            .client()
            .await
            .head_object()
            .bucket(&bucket)
            .key("disk.zvhd2.zvidx")
            .send()
            .await
    });
    assert!(head.is_err(), "the old image's sidecar is still there");
    let info: serde_json::Value =
        serde_json::from_str(&ok(server, &["info", "--json", &url])).unwrap();
    assert_eq!(info["disk_size"], 5 << 20, "{info}");
}

/// `zvimg hydrate` is a command, not a daemon: with the store gone for
/// longer than --io-timeout it gives up, non-zero, naming the outage, and
/// keeps what it cached (it used to pause for ever).
#[test]
fn hydrate_gives_up_on_a_store_that_stays_down() {
    let server = S3Server::start_private();
    let mut raw = vec![0u8; 32 << 20];
    rand::rngs::StdRng::seed_from_u64(5).fill_bytes(&mut raw);
    let url = server.upload_raw("gone", &raw);
    let cache = tempfile::tempdir().unwrap();
    let endpoint = server.endpoint();
    let child = Command::new(env!("CARGO_BIN_EXE_zvimg"))
        .args(["hydrate", "--cache-dir"])
        .arg(cache.path())
        .args(["--rate", "4", "--io-timeout", "2s", "--timeout", "1s"])
        .args(["--endpoint-url", &endpoint, "--region", "us-east-1", &url])
        .env("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY)
        .env_remove("AWS_PROFILE")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    server.stop();
    let out = common::wait_bounded(
        child,
        std::time::Duration::from_secs(120),
        "zvimg hydrate two minutes into the outage",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("hydration stopped") && err.contains("unreachable"),
        "{err}"
    );
}
