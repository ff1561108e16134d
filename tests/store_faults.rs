//! Resilience over the real code path: the fault wrapper around a real
//! file store, under [`ResilientStore`]. Retries happen only for retryable
//! failures, a short body is never data, stalls time out, the concurrency cap
//! holds, and a replaced object is "image changed".

mod common;

use std::sync::Arc;
use std::time::Duration;

use zvstore::fault::{FaultControl, FaultPlan, FaultStore};
use zvstore::file::FileStore;
use zvstore::resilient::{ResilientStore, RetryPolicy};
use zvstore::{ObjectStore, StoreError};

fn policy(retries: u32) -> RetryPolicy {
    RetryPolicy {
        timeout: Duration::from_secs(10),
        max_retries: retries,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        max_concurrent: 16,
        ..RetryPolicy::default()
    }
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 977) as u8).collect()
}

/// A file store over a temp dir holding `obj`, behind faults and retries.
fn setup(
    retries: u32,
) -> (
    tempfile::TempDir,
    ResilientStore<FaultStore<FileStore>>,
    Arc<FaultControl>,
    Vec<u8>,
) {
    setup_with(policy(retries))
}

fn setup_with(
    policy: RetryPolicy,
) -> (
    tempfile::TempDir,
    ResilientStore<FaultStore<FileStore>>,
    Arc<FaultControl>,
    Vec<u8>,
) {
    let dir = tempfile::tempdir().unwrap();
    let data = payload(100_000);
    std::fs::write(dir.path().join("obj"), &data).unwrap();
    let faulty = FaultStore::new(FileStore::new(dir.path()));
    let control = faulty.control();
    (dir, ResilientStore::new(faulty, policy), control, data)
}

#[tokio::test]
async fn transient_failures_are_retried_then_succeed() {
    let (_dir, store, control, data) = setup(4);
    control.set(FaultPlan {
        fail_transient: 3,
        ..FaultPlan::default()
    });
    let got = store.get_range("obj", 10..5000, None).await.unwrap();
    assert_eq!(&got[..], &data[10..5000]);
    assert_eq!(control.requests(), 4, "three failures and one success");
}

#[tokio::test]
async fn retries_are_bounded_and_the_error_names_object_range_attempt() {
    let (_dir, store, control, _) = setup(2);
    control.set(FaultPlan {
        fail_transient: 100,
        ..FaultPlan::default()
    });
    let err = store.get_range("obj", 10..20, None).await.unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(control.requests(), 3, "one attempt plus two retries");
    let msg = err.to_string();
    assert!(
        msg.contains("obj") && msg.contains("10..20") && msg.contains("attempt 3"),
        "{msg}"
    );
}

#[tokio::test]
async fn permanent_failures_and_missing_objects_are_not_retried() {
    let (_dir, store, control, _) = setup(4);
    control.set(FaultPlan {
        fail_permanent: 1,
        ..FaultPlan::default()
    });
    assert!(store.head("obj").await.is_err());
    assert_eq!(control.requests(), 1);

    let err = store.get_range("missing", 0..1, None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert_eq!(control.requests(), 2, "a 404 is not retried");
}

#[tokio::test]
async fn truncated_bodies_are_errors_not_data() {
    let (_dir, store, control, data) = setup(4);
    // One truncated answer: the retry gets the right bytes.
    control.set(FaultPlan {
        truncate: 1,
        ..FaultPlan::default()
    });
    let got = store.get_range("obj", 0..8192, None).await.unwrap();
    assert_eq!(&got[..], &data[..8192]);
    assert_eq!(control.requests(), 2);

    // Always truncated: an error after the retries, never short data.
    control.set(FaultPlan {
        truncate: 100,
        ..FaultPlan::default()
    });
    let err = store.get_range("obj", 0..8192, None).await.unwrap_err();
    assert!(
        err.to_string().contains("4096 bytes, expected 8192"),
        "{err}"
    );

    // The suffix read is checked the same way.
    control.set(FaultPlan {
        truncate: 100,
        ..FaultPlan::default()
    });
    assert!(store.get_suffix("obj", 1000).await.is_err());
}

#[tokio::test]
async fn corruption_really_flips_bytes() {
    // The store layer cannot tell corrupted bytes from good ones: the image
    // layer's CRC32C does. Here: the wrapper corrupts exactly one byte.
    let (_dir, store, control, data) = setup(0);
    control.set(FaultPlan {
        corrupt: 1,
        ..FaultPlan::default()
    });
    let got = store.get_range("obj", 1000..2000, None).await.unwrap();
    let diffs = got
        .iter()
        .zip(&data[1000..2000])
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(diffs, 1);
    assert_eq!(control.injected(), 1);
    let again = store.get_range("obj", 1000..2000, None).await.unwrap();
    assert_eq!(
        &again[..],
        &data[1000..2000],
        "only the planned request is corrupted"
    );
}

#[tokio::test]
async fn a_stall_times_out_and_is_retried() {
    let (_dir, store, control, data) = setup_with(RetryPolicy {
        timeout: Duration::from_millis(200),
        ..policy(2)
    });
    // One stalled request: the attempt is abandoned at the timeout and the retry answers.
    control.set(FaultPlan {
        stall: 1,
        stall_for: Duration::from_secs(3600),
        ..FaultPlan::default()
    });
    let got = store.get_range("obj", 5..10, None).await.unwrap();
    assert_eq!(&got[..], &data[5..10]);
    assert_eq!(control.requests(), 2);

    // Stalled every time: a timeout error naming the range and the last attempt.
    control.set(FaultPlan {
        stall: 100,
        stall_for: Duration::from_secs(3600),
        ..FaultPlan::default()
    });
    let err = store.get_range("obj", 5..10, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Timeout {
                start: 5,
                end: 10,
                attempt: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[tokio::test]
async fn concurrency_is_capped() {
    let (_dir, store, control, _) = setup_with(RetryPolicy {
        max_concurrent: 3,
        ..policy(0)
    });
    control.set(FaultPlan {
        latency: Duration::from_millis(20),
        ..FaultPlan::default()
    });
    let reads = (0..12u64).map(|i| store.get_range("obj", i * 100..i * 100 + 50, None));
    let results = futures::future::join_all(reads).await;
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(control.requests(), 12);
    assert!(
        control.max_in_flight() <= 3,
        "max in flight {}",
        control.max_in_flight()
    );
}

#[tokio::test]
async fn a_replaced_object_is_image_changed_and_not_retried() {
    let (dir, store, control, _) = setup(4);
    let meta = store.head("obj").await.unwrap();
    assert!(store.get_range("obj", 0..10, Some(&meta)).await.is_ok());
    // Replace by rename, as an upload tool would.
    std::fs::write(dir.path().join("obj.new"), payload(100_000)).unwrap();
    std::fs::rename(dir.path().join("obj.new"), dir.path().join("obj")).unwrap();
    let before = control.requests();
    let err = store
        .get_range("obj", 0..10, Some(&meta))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Changed { .. }), "{err}");
    assert!(err.to_string().contains("image changed"), "{err}");
    assert_eq!(control.requests(), before + 1);
}

#[tokio::test]
async fn coalesced_reads_through_the_stack() {
    let (_dir, store, control, data) = setup(0);
    let wanted = vec![0..100, 150..300, 5000..5100, 300..310, 90_000..100_000];
    let got = zvstore::coalesce::get_ranges(
        &store,
        "obj",
        &wanted,
        None,
        &zvstore::coalesce::RunLimits::new(1024, 64 << 20),
    )
    .await
    .unwrap();
    for (r, b) in wanted.iter().zip(&got) {
        assert_eq!(&b[..], &data[r.start as usize..r.end as usize]);
    }
    assert_eq!(
        control.requests(),
        3,
        "0..100, 150..300 and 300..310 share one GET; the others are too far"
    );
}
