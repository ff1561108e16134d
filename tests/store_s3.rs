//! The `s3` backend against a real S3-compatible server (s3s-fs on
//! 127.0.0.1): uploads (single and multipart), exact bytes for random
//! ranges, suffix reads, size/ETag, and the failures a user will meet —
//! missing object or bucket, wrong credentials, an object replaced after
//! open, the server going away mid-read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use zvstore::fault::FaultStore;
use zvstore::resilient::{ResilientStore, RetryPolicy};
use zvstore::s3::S3Store;
use zvstore::{ObjectStore, StaticCredentials, StoreError, open_source};
use zvtest::s3::{S3Server, unique_bucket};

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn write_temp(data: &[u8]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), data).unwrap();
    f
}

#[tokio::test]
async fn put_then_read_exact_ranges_suffix_and_meta() {
    let server = S3Server::start();
    let bucket = unique_bucket("ranges");
    server.create_bucket(&bucket).await;
    let data = random_bytes(3 << 20, 1);
    let file = write_temp(&data);

    let (store, key) = open_source(
        &format!("s3://{bucket}/dir/img.zvhd2"),
        &server.store_config(),
    )
    .await
    .unwrap();
    assert_eq!(key, "dir/img.zvhd2");
    let put = store.put_file(&key, file.path()).await.unwrap();
    assert_eq!(put.size, data.len() as u64);

    let meta = store.head(&key).await.unwrap();
    assert_eq!(meta.size, data.len() as u64);
    assert!(meta.etag.as_deref().is_some_and(|e| !e.is_empty()));
    assert_eq!(meta.etag, put.etag);

    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..40 {
        let start = rng.gen_range(0..data.len() as u64);
        let end = rng.gen_range(start..=(start + 300_000).min(data.len() as u64));
        let got = store
            .get_range(&key, start..end, Some(&meta))
            .await
            .unwrap();
        assert_eq!(
            &got[..],
            &data[start as usize..end as usize],
            "range {start}..{end}"
        );
    }
    // First and last byte, the whole object.
    assert_eq!(
        &store.get_range(&key, 0..1, Some(&meta)).await.unwrap()[..],
        &data[..1]
    );
    let n = data.len() as u64;
    assert_eq!(
        &store.get_range(&key, n - 1..n, Some(&meta)).await.unwrap()[..],
        &data[data.len() - 1..]
    );
    assert_eq!(
        store
            .get_range(&key, 0..n, Some(&meta))
            .await
            .unwrap()
            .len(),
        data.len()
    );

    let (tail, tail_meta) = store.get_suffix(&key, 4096).await.unwrap();
    assert_eq!(&tail[..], &data[data.len() - 4096..]);
    assert_eq!((tail_meta.size, &tail_meta.etag), (meta.size, &meta.etag));

    let err = store
        .get_range(&key, n - 10..n + 10, Some(&meta))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::OutOfRange { .. }), "{err}");
    // Unpinned, the server is asked: a range past the end is an error, not a short read.
    for r in [n - 10..n + 10, n + 5..n + 10] {
        let err = store.get_range(&key, r.clone(), None).await.unwrap_err();
        assert!(matches!(err, StoreError::OutOfRange { .. }), "{r:?}: {err}");
    }

    let listed = store.list("dir/").await.unwrap();
    assert_eq!(
        listed.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        vec!["dir/img.zvhd2"]
    );
    assert_eq!(listed[0].1.size, n);
}

#[tokio::test]
async fn suffix_longer_than_object_and_empty_ranges() {
    let server = S3Server::start();
    let bucket = unique_bucket("suffix");
    server.create_bucket(&bucket).await;
    server
        .put_bytes(&bucket, "small", b"hello world".to_vec())
        .await;
    let (store, key) = open_source(&format!("s3://{bucket}/small"), &server.store_config())
        .await
        .unwrap();
    let (all, meta) = store.get_suffix(&key, 1 << 20).await.unwrap();
    assert_eq!(&all[..], b"hello world");
    assert_eq!(meta.size, 11);
    assert!(
        store
            .get_range(&key, 11..11, Some(&meta))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn multipart_upload_reports_progress_and_reads_back() {
    let server = S3Server::start();
    let bucket = unique_bucket("multipart");
    server.create_bucket(&bucket).await;
    // Three parts: 16 + 16 + 8 MiB.
    let data = random_bytes(40 << 20, 2);
    let file = write_temp(&data);
    let (store, key) = open_source(&format!("s3://{bucket}/big.zvhd2"), &server.store_config())
        .await
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let seen = done.clone();
    let meta = store
        .put_file_with_progress(
            &key,
            file.path(),
            Arc::new(move |n| {
                seen.fetch_add(n, Ordering::Relaxed);
            }),
        )
        .await
        .unwrap();
    assert_eq!(done.load(Ordering::Relaxed), data.len() as u64);
    assert_eq!(meta.size, data.len() as u64);
    assert!(
        meta.etag.as_deref().unwrap_or("").ends_with("-3\""),
        "multipart ETag, got {:?}",
        meta.etag
    );
    // Ranges across part boundaries.
    for start in [(16u64 << 20) - 100, (32 << 20) - 1, 0, (40 << 20) - 5000] {
        let end = (start + 5000).min(data.len() as u64);
        let got = store
            .get_range(&key, start..end, Some(&meta))
            .await
            .unwrap();
        assert_eq!(&got[..], &data[start as usize..end as usize]);
    }
    let (tail, _) = store.get_suffix(&key, 65536).await.unwrap();
    assert_eq!(&tail[..], &data[data.len() - 65536..]);
}

/// The stack `open_source` builds, with a fault wrapper counting requests.
async fn counted(
    server: &S3Server,
    bucket: &str,
    retries: u32,
) -> (
    ResilientStore<FaultStore<S3Store>>,
    Arc<zvstore::fault::FaultControl>,
) {
    let args = server.store_config();
    let faulty = FaultStore::new(S3Store::connect(bucket, &args).await.unwrap());
    let control = faulty.control();
    let policy = RetryPolicy {
        max_retries: retries,
        base_delay: std::time::Duration::from_millis(10),
        ..args.retry_policy()
    };
    (ResilientStore::new(faulty, policy), control)
}

#[tokio::test]
async fn missing_object_and_bucket_fail_clearly_without_retries() {
    let server = S3Server::start();
    let bucket = unique_bucket("missing");
    server.create_bucket(&bucket).await;
    let (store, control) = counted(server, &bucket, 4).await;

    let err = store.head("nope.zvhd2").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("s3://{bucket}/nope.zvhd2")),
        "{err}"
    );
    let err = store
        .get_range("nope.zvhd2", 0..10, None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    let err = store.get_suffix("nope.zvhd2", 10).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(control.requests(), 3, "no retries for a missing object");

    let (store, control) = counted(server, "no-such-bucket-here", 4).await;
    let err = store.get_range("k", 0..10, None).await.unwrap_err();
    assert!(matches!(err, StoreError::BucketNotFound { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("s3://no-such-bucket-here: bucket does not exist"),
        "{err}"
    );
    let err = store.head("k").await.unwrap_err();
    assert!(matches!(err, StoreError::BucketNotFound { .. }), "{err}");
    assert_eq!(control.requests(), 2);
}

#[tokio::test]
async fn wrong_credentials_are_forbidden_and_never_printed() {
    let server = S3Server::start();
    let bucket = unique_bucket("creds");
    server.create_bucket(&bucket).await;
    server.put_bytes(&bucket, "k", vec![1u8; 100]).await;
    let mut args = server.store_config();
    args.credentials = Some(StaticCredentials {
        access_key_id: "test".into(),
        secret_access_key: "hunter2-very-secret".into(),
        session_token: None,
    });
    let (store, key) = open_source(&format!("s3://{bucket}/k"), &args)
        .await
        .unwrap();
    let err = store.get_range(&key, 0..10, None).await.unwrap_err();
    assert!(matches!(err, StoreError::Forbidden { .. }), "{err}");
    let shown = format!("{err} {err:?} {store:?} {args:?}");
    assert!(!shown.contains("hunter2"), "secret leaked: {shown}");
}

#[tokio::test]
async fn object_replaced_after_open_is_image_changed() {
    let server = S3Server::start();
    let bucket = unique_bucket("changed");
    server.create_bucket(&bucket).await;
    server
        .put_bytes(&bucket, "img", random_bytes(10_000, 3))
        .await;
    let (store, key) = open_source(&format!("s3://{bucket}/img"), &server.store_config())
        .await
        .unwrap();
    let meta = store.head(&key).await.unwrap();
    store.get_range(&key, 0..100, Some(&meta)).await.unwrap();

    // Same size, different bytes: only the identity tells them apart.
    server
        .put_bytes(&bucket, "img", random_bytes(10_000, 4))
        .await;
    let err = store
        .get_range(&key, 0..100, Some(&meta))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Changed { .. }), "{err}");
    assert!(err.to_string().contains("image changed"), "{err}");
}

#[tokio::test]
async fn server_stopped_mid_read_gives_bounded_retries_then_recovers() {
    let server = S3Server::start_private();
    let bucket = unique_bucket("stopped");
    server.create_bucket(&bucket).await;
    let data = random_bytes(200_000, 5);
    server.put_bytes(&bucket, "img", data.clone()).await;
    let (store, control) = counted(&server, &bucket, 2).await;
    let meta = store.head("img").await.unwrap();
    assert_eq!(
        &store.get_range("img", 0..1000, Some(&meta)).await.unwrap()[..],
        &data[..1000]
    );

    server.stop();
    let before = control.requests();
    let err = store
        .get_range("img", 1000..2000, Some(&meta))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("s3://") && msg.contains("1000..2000") && msg.contains("attempt 3"),
        "{msg}"
    );
    assert_eq!(
        control.requests() - before,
        3,
        "one attempt plus two retries"
    );

    server.restart();
    let got = store
        .get_range("img", 1000..2000, Some(&meta))
        .await
        .unwrap();
    assert_eq!(&got[..], &data[1000..2000]);
}

#[tokio::test]
async fn a_stalled_endpoint_times_out_with_bounded_retries() {
    // Accepts connections and never answers: the worst kind of outage.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
            held.push(sock);
        }
    });
    let server = S3Server::start();
    let mut args = server.store_config();
    args.endpoint_url = Some(endpoint);
    args.timeout = std::time::Duration::from_millis(300);
    args.retries = Some(1);
    let (store, key) = open_source("s3://stalled/img", &args).await.unwrap();
    let err = store.get_range(&key, 0..4096, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Timeout {
                start: 0,
                end: 4096,
                attempt: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("s3://stalled/img"), "{err}");
    assert!(
        accepted.load(Ordering::Relaxed) <= 2,
        "one connection per attempt at most"
    );
}

#[tokio::test]
async fn a_failed_multipart_upload_is_aborted_and_leaves_nothing() {
    // A private server: its data dir shows every part and upload record.
    let server = S3Server::start_private();
    let bucket = unique_bucket("abort");
    server.create_bucket(&bucket).await;
    // Six 16 MiB parts, four in flight: parts 5 and 6 start only after a
    // part finished. The first finished part truncates the file, so they
    // fail to read and the upload must be aborted.
    let file = write_temp(&random_bytes(96 << 20, 6));
    let path = file.path().to_path_buf();
    let store = S3Store::connect(&bucket, &server.store_config())
        .await
        .unwrap();
    let truncated = Arc::new(std::sync::Once::new());
    let err = store
        .put_file_with_progress(
            "img",
            file.path(),
            Arc::new(move |_| {
                truncated.call_once(|| {
                    std::fs::File::options()
                        .write(true)
                        .open(&path)
                        .unwrap()
                        .set_len(1 << 20)
                        .unwrap()
                });
            }),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("s3://"), "{err}");

    let leftovers: Vec<String> = std::fs::read_dir(server.data_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".upload"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "incomplete upload left behind: {leftovers:?}"
    );
    let err = store.head("img").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
}
