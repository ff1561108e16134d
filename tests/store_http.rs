//! The `http` backend against a real local HTTP server honouring `Range`,
//! `If-Match` and HEAD — and misbehaving on demand: presigned-style HEAD
//! refusal, ignored ranges, stalls, short bodies.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use zvstore::{ObjectStore, StoreConfig, StoreError, open_source};
use zvtest::http::{Behaviour, HttpServer};

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn args(timeout_ms: u64, retries: u32) -> StoreConfig {
    StoreConfig {
        timeout: Duration::from_millis(timeout_ms),
        retries: Some(retries),
        ..StoreConfig::default()
    }
}

#[tokio::test]
async fn ranges_suffix_and_meta() {
    let server = HttpServer::start().await;
    let data = random_bytes(500_000, 1);
    server.put("images/a.zvhd2", data.clone());
    let (store, key) = open_source(&server.url("images/a.zvhd2"), &args(10_000, 2))
        .await
        .unwrap();
    assert_eq!(key, "a.zvhd2");
    let meta = store.head(&key).await.unwrap();
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(meta.etag.as_deref(), Some("\"v1\""));

    let mut rng = StdRng::seed_from_u64(9);
    for _ in 0..30 {
        let start = rng.gen_range(0..data.len() as u64);
        let end = rng.gen_range(start..=data.len() as u64);
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
    let (tail, tail_meta) = store.get_suffix(&key, 4096).await.unwrap();
    assert_eq!(&tail[..], &data[data.len() - 4096..]);
    assert_eq!(tail_meta.size, meta.size);
    assert_eq!(tail_meta.etag, meta.etag);
    let (all, _) = store.get_suffix(&key, 10 << 20).await.unwrap();
    assert_eq!(all.len(), data.len());

    let n = data.len() as u64;
    let err = store
        .get_range(&key, n - 1..n + 1, Some(&meta))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::OutOfRange { .. }), "{err}");
}

#[tokio::test]
async fn head_refused_like_a_presigned_url_falls_back_to_a_range_get() {
    let server = HttpServer::start().await;
    server.put("b.img", random_bytes(12_345, 2));
    server.set_behaviour(Behaviour {
        refuse_head: true,
        ..Behaviour::default()
    });
    let url = format!("{}?X-Amz-Signature=topsecretsig", server.url("b.img"));
    let (store, key) = open_source(&url, &args(10_000, 0)).await.unwrap();
    let meta = store.head(&key).await.unwrap();
    assert_eq!(meta.size, 12_345);
    assert!(meta.etag.is_some());
    assert_eq!(
        store.sibling_key(&key, ".zvidx"),
        "b.img.zvidx?X-Amz-Signature=topsecretsig"
    );

    // The signature never shows in a location or an error.
    let err = store
        .get_range("missing?X-Amz-Signature=topsecretsig", 0..1, None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert!(
        !format!("{err} {err:?} {store:?}").contains("topsecretsig"),
        "{err}"
    );
}

#[tokio::test]
async fn missing_object_is_not_found_without_retries() {
    let server = HttpServer::start().await;
    let (store, key) = open_source(&server.url("nothing.img"), &args(10_000, 4))
        .await
        .unwrap();
    let err = store.head(&key).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    let err = store.get_range(&key, 0..10, None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn replaced_object_is_image_changed() {
    let server = HttpServer::start().await;
    server.put("c.img", random_bytes(10_000, 3));
    let (store, key) = open_source(&server.url("c.img"), &args(10_000, 4))
        .await
        .unwrap();
    let meta = store.head(&key).await.unwrap();
    store.get_range(&key, 0..10, Some(&meta)).await.unwrap();
    server.put("c.img", random_bytes(10_000, 4));
    let before = server.requests();
    let err = store.get_range(&key, 0..10, Some(&meta)).await.unwrap_err();
    assert!(matches!(err, StoreError::Changed { .. }), "{err}");
    assert!(err.to_string().contains("image changed"), "{err}");
    assert_eq!(server.requests() - before, 1, "a change is not retried");
}

#[tokio::test]
async fn a_server_ignoring_range_is_refused_not_downloaded() {
    let server = HttpServer::start().await;
    let data = random_bytes(50_000, 5);
    server.put("d.img", data.clone());
    server.set_behaviour(Behaviour {
        ignore_range: true,
        ..Behaviour::default()
    });
    let (store, key) = open_source(&server.url("d.img"), &args(10_000, 0))
        .await
        .unwrap();
    let err = store.get_range(&key, 100..200, None).await.unwrap_err();
    assert!(err.to_string().contains("ignores Range"), "{err}");
    // Asking for the whole object is still fine.
    let got = store.get_range(&key, 0..50_000, None).await.unwrap();
    assert_eq!(&got[..], &data[..]);
}

#[tokio::test]
async fn a_stalled_server_times_out() {
    let server = HttpServer::start().await;
    server.put("e.img", random_bytes(1000, 6));
    server.set_behaviour(Behaviour {
        stall: true,
        ..Behaviour::default()
    });
    let (store, key) = open_source(&server.url("e.img"), &args(300, 1))
        .await
        .unwrap();
    let err = store.get_range(&key, 0..100, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Timeout {
                start: 0,
                end: 100,
                attempt: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn a_short_body_is_an_error_not_data() {
    let server = HttpServer::start().await;
    server.put("f.img", random_bytes(100_000, 7));
    server.set_behaviour(Behaviour {
        truncate: true,
        ..Behaviour::default()
    });
    let (store, key) = open_source(&server.url("f.img"), &args(10_000, 2))
        .await
        .unwrap();
    let err = store.get_range(&key, 0..50_000, None).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("attempt 3"), "{err}");
    assert_eq!(server.requests(), 3);
}

#[tokio::test]
async fn uploads_and_listing_are_refused_clearly() {
    let server = HttpServer::start().await;
    let (store, key) = open_source(&server.url("g.img"), &args(10_000, 4))
        .await
        .unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = store.put_file(&key, file.path()).await.unwrap_err();
    assert!(
        err.to_string().contains("not supported by https sources"),
        "{err}"
    );
    assert!(store.list("").await.is_err());
    assert_eq!(server.requests(), 0);
}

/// `X-Amz-Date` for `t` (UTC, `YYYYMMDDTHHMMSSZ`).
fn amz_date(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Log lines written while `f` runs on this thread.
async fn logs_of<F: std::future::Future>(f: F) -> (F::Output, String) {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let out = {
        let _guard = tracing::subscriber::set_default(subscriber);
        f.await
    };
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

/// A presigned URL that expires within a day is warned about when it is
/// opened (at mount), with its expiry time; one valid for a week is not;
/// both read the same.
#[tokio::test]
async fn a_presigned_url_expiring_within_a_day_is_warned_about_at_open() {
    let server = HttpServer::start().await;
    let data = random_bytes(10_000, 40);
    server.put("images/soon.zvhd2", data.clone());
    let now = std::time::SystemTime::now();
    let presigned = |expires: u64| {
        format!(
            "{}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={}&X-Amz-Expires={expires}\
             &X-Amz-SignedHeaders=host&X-Amz-Signature=00ff",
            server.url("images/soon.zvhd2"),
            amz_date(now)
        )
    };
    let args = args(10_000, 2);

    for (expires, warned) in [(3 * 3600, true), (7 * 24 * 3600, false)] {
        let url = presigned(expires);
        let (opened, log) = logs_of(open_source(&url, &args)).await;
        let (store, key) = opened.unwrap();
        let got = store.get_range(&key, 100..200, None).await.unwrap();
        assert_eq!(&got[..], &data[100..200]);
        let says = log.contains("the presigned URL expires at") && log.contains("WARN");
        assert_eq!(says, warned, "expires in {expires} s; log:\n{log}");
        if warned {
            // The hours left, and never the signature.
            assert!(
                log.contains("(in 3.0 h)") || log.contains("(in 2.9 h)"),
                "{log}"
            );
            assert!(!log.contains("00ff"), "{log}");
        }
    }
}
