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
