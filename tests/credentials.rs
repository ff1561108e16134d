//! Expired credentials are refreshed by the AWS provider chain, never
//! turned into I/O errors: a real mount of an image on the local S3 server
//! (s3s-fs), with credentials from a `credential_process` in an AWS config
//! file that hands out keys expiring 15 s later, keeps reading the right
//! bytes across several expiries, and the process is asked again.

mod common;

use std::os::unix::fs::{FileExt, PermissionsExt};

use common::images::{raw_mixed, write_files};
use common::mount::Mounted;
use common::s3::{ACCESS_KEY, S3Server, SECRET_KEY, unique_bucket};

const BLOCK: u32 = 2 << 20;
/// How long each set of credentials the process hands out is valid.
const VALID_SECS: u64 = 15;

#[test]
fn credentials_from_a_process_are_refreshed_across_expiry() {
    let img = write_files(raw_mixed(24, BLOCK, 61), BLOCK);
    let server = S3Server::start();
    let bucket = unique_bucket("creds");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        server.create_bucket(&bucket).await;
        server
            .put_bytes(&bucket, "disk.zvhd2", std::fs::read(&img.image).unwrap())
            .await;
    });

    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls");
    let script = dir.path().join("creds.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             echo call >> '{calls}'\n\
             exp=$(date -u -d '+{VALID_SECS} seconds' +%Y-%m-%dT%H:%M:%SZ)\n\
             printf '{{\"Version\": 1, \"AccessKeyId\": \"%s\", \"SecretAccessKey\": \"%s\", \"Expiration\": \"%s\"}}\\n' \
             '{ACCESS_KEY}' '{SECRET_KEY}' \"$exp\"\n",
            calls = calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("aws-config");
    std::fs::write(
        &config,
        format!(
            "[default]\nregion = us-east-1\ncredential_process = {}\n",
            script.display()
        ),
    )
    .unwrap();
    let no_credentials_file = dir.path().join("no-credentials");

    let m = Mounted::builder()
        .args(["--force-path-style", "--no-sidecar", "--readahead", "0"])
        .args(["--endpoint-url", &server.endpoint()])
        .arg(format!("s3://{bucket}/disk.zvhd2"))
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_SHARED_CREDENTIALS_FILE", &no_credentials_file)
        // Nothing but the config file may supply credentials, and nothing
        // may be asked of a metadata service (traffic stays on 127.0.0.1).
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_REGION")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .expect_file("disk.raw")
        .start();
    let invocations = || {
        std::fs::read_to_string(&calls)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert!(invocations() >= 1, "the mount did not use the process");

    // Blocks with data (kinds cycle zero, random, compressible, zero,
    // sparse, compressible), each read once, 4 KiB from its start, spread
    // over two validity periods: each read is a fresh signed GET.
    let data_blocks: Vec<u64> = (0..24u64).filter(|b| ![0, 3].contains(&(b % 6))).collect();
    let file = std::fs::File::open(m.path("disk.raw")).unwrap();
    let started = std::time::Instant::now();
    let span = std::time::Duration::from_secs(2 * VALID_SECS + 5);
    let pause = span / data_blocks.len() as u32;
    for &block in &data_blocks {
        let at = block * u64::from(BLOCK);
        let mut buf = vec![0u8; 4096];
        file.read_exact_at(&mut buf, at)
            .unwrap_or_else(|e| panic!("block {block} after {:?}: {e}", started.elapsed()));
        assert!(
            buf == img.raw_bytes[at as usize..][..4096],
            "wrong bytes in block {block}"
        );
        std::thread::sleep(pause);
    }
    drop(file);
    let stats = m.stats_json();
    assert_eq!(stats["fuse_read_errors"], 0, "{stats}");
    assert_eq!(stats["fetch_errors"], 0, "{stats}");
    assert!(
        stats["store_requests"].as_u64().unwrap() >= data_blocks.len() as u64,
        "{stats}"
    );
    let n = invocations();
    assert!(
        n >= 2,
        "the credential process ran {n} time(s) over {:?}: credentials were not refreshed",
        started.elapsed()
    );
    assert!(m.stop().success());
}
