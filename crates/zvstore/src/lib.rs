//! Object stores: where image bytes come from.
//!
//! One trait, [`ObjectStore`], with a backend per kind of location
//! (`file`, `s3`, `http`). A store addresses objects by key inside one
//! "container" (a directory, a bucket, an HTTP base). Retries, timeouts and
//! concurrency caps live in [`resilient`], once, around any backend; faults
//! for tests come from `fault` (behind the `testing` feature).
//!
//! Nothing here knows about ZVHD2: a store moves bytes. In the workspace
//! (`docs/ARCHITECTURE.md`) it sits below the `zvmount` read path and
//! beside the pure format crate `zvhd2`; `zvimg` uses it for push/pull and
//! the test kit `zvtest` for its S3 fixture.
// Every public item is documented: a gap fails clippy's `-D warnings` and
// `cargo doc` under `RUSTDOCFLAGS=-D warnings` (both in scripts/test.sh).
#![warn(missing_docs)]

use std::fmt;
use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

pub mod coalesce;
pub mod config;
#[cfg(any(test, feature = "testing"))]
pub mod fault;
pub mod file;
pub mod http;
pub mod outage;
pub mod resilient;
pub mod s3;
pub mod source;
pub mod units;

pub use config::{StaticCredentials, StoreConfig};
pub use source::{is_remote, open_source, parse_source};

/// What a store knows about one object; `etag`/`modified` make up its
/// identity, which reads can be pinned to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Bytes in the object.
    pub size: u64,
    /// Strong validator (S3/HTTP ETag, or a synthetic one for local files).
    pub etag: Option<String>,
    /// Last modification, where the backend reports one.
    pub modified: Option<SystemTime>,
}

/// Why a store operation failed. Every variant names the object.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist (HTTP 404, S3 `NoSuchKey`, no such file).
    #[error("{location}: not found")]
    NotFound {
        /// The object, as [`ObjectStore::location`] prints it.
        location: String,
    },
    /// The store refused the request (HTTP 401/403, a permission error).
    #[error("{location}: access denied ({detail})")]
    Forbidden {
        /// The object.
        location: String,
        /// What the store said.
        detail: String,
    },
    /// A pinned read found the object's identity (ETag, or size and
    /// modification time) different from the one it was opened with.
    #[error("{location}: image changed since it was opened (was {expected}, now {actual})")]
    Changed {
        /// The object.
        location: String,
        /// The identity pinned at open.
        expected: String,
        /// The identity the store reports now.
        actual: String,
    },
    /// A byte range reaching past the end of the object.
    #[error("{location}: range {start}..{end} is outside the object (size {size})")]
    OutOfRange {
        /// The object.
        location: String,
        /// First byte asked for.
        start: u64,
        /// One past the last byte asked for.
        end: u64,
        /// The object's size in bytes.
        size: u64,
    },
    /// One attempt took longer than `--timeout`; retryable.
    #[error("{location}: range {start}..{end}: timed out after {secs:.1}s (attempt {attempt})")]
    Timeout {
        /// The object.
        location: String,
        /// First byte of the range (0 for whole-object operations).
        start: u64,
        /// One past the last byte of the range.
        end: u64,
        /// The limit that passed, in seconds.
        secs: f64,
        /// Which attempt (1-based) timed out.
        attempt: u32,
    },
    /// A failure that may pass: connection refused or reset, HTTP 5xx,
    /// throttling; retryable.
    #[error("{location}: {op} failed (attempt {attempt}): {detail}")]
    Transient {
        /// The object.
        location: String,
        /// The operation (`GET`, `HEAD`, `PUT`, …).
        op: String,
        /// Which attempt (1-based) failed.
        attempt: u32,
        /// What the store or the connection said.
        detail: String,
    },
    /// The store stayed unreachable (transient failures only) until the
    /// caller's deadline (`--io-timeout`) passed, or, once an outage has
    /// outlasted it, until the next probe failed (then `waited_secs` is
    /// shorter than `--io-timeout`).
    #[error(
        "{location}: {op}: store unreachable for longer than --io-timeout, gave up after waiting {waited_secs:.1}s and {attempts} attempts; last error: {cause}"
    )]
    Unavailable {
        /// The object.
        location: String,
        /// The operation that kept failing.
        op: String,
        /// How long the caller waited, in seconds.
        waited_secs: f64,
        /// Attempts made in that time.
        attempts: u32,
        /// The last attempt's error.
        cause: String,
    },
    /// The S3 bucket itself does not exist.
    #[error("{location}: bucket does not exist")]
    BucketNotFound {
        /// The object whose bucket is missing.
        location: String,
    },
    /// Any other permanent failure (bad request, an unsupported operation,
    /// a local I/O error); not retried.
    #[error("{location}: {op} failed: {detail}")]
    Other {
        /// The object.
        location: String,
        /// The operation.
        op: String,
        /// What went wrong.
        detail: String,
    },
}

impl StoreError {
    /// Whether trying the same request again may succeed (5xx, throttling,
    /// timeouts, resets), as opposed to 403/404/changed object.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Timeout { .. } | StoreError::Transient { .. }
        )
    }

    /// Whether the object (or its bucket) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            StoreError::NotFound { .. } | StoreError::BucketNotFound { .. }
        )
    }

    /// The same error, stamped with the attempt (1-based) it happened on.
    pub fn with_attempt(mut self, n: u32) -> Self {
        match &mut self {
            StoreError::Timeout { attempt, .. } | StoreError::Transient { attempt, .. } => {
                *attempt = n
            }
            _ => {}
        }
        self
    }
}

/// Called with the number of bytes just stored, as an upload progresses.
pub type Progress = std::sync::Arc<dyn Fn(u64) + Send + Sync>;

/// The result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// A place objects are read from (and, for some backends, written to).
///
/// Keys are relative to the store's container (`bucket`, directory, URL base).
/// `pin`, when given, makes a read conditional on the object still having
/// that identity; a mismatch is [`StoreError::Changed`].
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// A printable location for `key`, never containing credentials.
    fn location(&self, key: &str) -> String;

    /// Size and identity of an object.
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta>;

    /// Bytes `range` of an object; the result is exactly `range` long or an error.
    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        pin: Option<&ObjectMeta>,
    ) -> StoreResult<Bytes>;

    /// The last `len` bytes of an object (fewer if it is shorter), and its meta,
    /// in one request where the backend can.
    async fn get_suffix(&self, key: &str, len: u64) -> StoreResult<(Bytes, ObjectMeta)> {
        let meta = self.head(key).await?;
        let start = meta.size.saturating_sub(len);
        let bytes = self.get_range(key, start..meta.size, Some(&meta)).await?;
        Ok((bytes, meta))
    }

    /// Keys (and metas) under `prefix`.
    async fn list(&self, prefix: &str) -> StoreResult<Vec<(String, ObjectMeta)>>;

    /// Stores a local file as `key`, returning its meta as the store reports it.
    async fn put_file(&self, key: &str, path: &std::path::Path) -> StoreResult<ObjectMeta>;

    /// [`ObjectStore::put_file`], reporting stored bytes to `progress` as it goes
    /// (backends that upload in one piece report once, at the end).
    async fn put_file_with_progress(
        &self,
        key: &str,
        path: &std::path::Path,
        progress: Progress,
    ) -> StoreResult<ObjectMeta> {
        let meta = self.put_file(key, path).await?;
        progress(meta.size);
        Ok(meta)
    }

    /// Removes an object; removing one that does not exist succeeds.
    /// Backends that cannot write (HTTP) say so.
    async fn delete(&self, key: &str) -> StoreResult<()> {
        Err(StoreError::Other {
            location: self.location(key),
            op: "DELETE".into(),
            detail: "not supported by this kind of store".into(),
        })
    }

    /// The key of an object stored beside `key` with `suffix` appended to its
    /// name (the sidecar `IMAGE.zvidx`). Backends whose keys carry more than a
    /// name (an HTTP query string) override this.
    fn sibling_key(&self, key: &str, suffix: &str) -> String {
        format!("{key}{suffix}")
    }
}

/// The answer to an empty or inverted `range` without a GET: no bytes when
/// it lies within the object (size from `pin`, or a HEAD), else
/// [`StoreError::OutOfRange`]. Backends whose protocol cannot express an
/// empty range (HTTP `Range`) call this first.
pub(crate) async fn empty_range<S: ObjectStore + ?Sized>(
    store: &S,
    key: &str,
    range: Range<u64>,
    pin: Option<&ObjectMeta>,
) -> StoreResult<Bytes> {
    let size = match pin {
        Some(p) => p.size,
        None => store.head(key).await?.size,
    };
    if range.start > range.end || range.end > size {
        return Err(StoreError::OutOfRange {
            location: store.location(key),
            start: range.start,
            end: range.end,
            size,
        });
    }
    Ok(Bytes::new())
}

/// `bytes START-END/SIZE` (a `Content-Range` value) as
/// `(start, end_exclusive, size)`; `None` unless well-formed and inside SIZE.
pub(crate) fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let (span, size) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    let (a, b, size): (u64, u64, u64) = (
        a.trim().parse().ok()?,
        b.trim().parse().ok()?,
        size.trim().parse().ok()?,
    );
    (a <= b && b < size).then_some((a, b + 1, size))
}

/// A shared store is a store: lets wrappers like
/// [`resilient::ResilientStore`] hold an `Arc<dyn ObjectStore>`.
#[async_trait]
impl<T: ObjectStore + ?Sized> ObjectStore for std::sync::Arc<T> {
    fn location(&self, key: &str) -> String {
        (**self).location(key)
    }
    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        (**self).head(key).await
    }
    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        pin: Option<&ObjectMeta>,
    ) -> StoreResult<Bytes> {
        (**self).get_range(key, range, pin).await
    }
    async fn get_suffix(&self, key: &str, len: u64) -> StoreResult<(Bytes, ObjectMeta)> {
        (**self).get_suffix(key, len).await
    }
    async fn list(&self, prefix: &str) -> StoreResult<Vec<(String, ObjectMeta)>> {
        (**self).list(prefix).await
    }
    async fn put_file(&self, key: &str, path: &std::path::Path) -> StoreResult<ObjectMeta> {
        (**self).put_file(key, path).await
    }
    async fn put_file_with_progress(
        &self,
        key: &str,
        path: &std::path::Path,
        progress: Progress,
    ) -> StoreResult<ObjectMeta> {
        (**self).put_file_with_progress(key, path, progress).await
    }
    async fn delete(&self, key: &str) -> StoreResult<()> {
        (**self).delete(key).await
    }
    fn sibling_key(&self, key: &str, suffix: &str) -> String {
        (**self).sibling_key(key, suffix)
    }
}

/// `url` without its query string and user info, which may hold credentials
/// (presigned signatures, `user:password@`).
pub fn redact_url(url: &str) -> String {
    let (base, had_query) = match url.split_once('?') {
        Some((b, _)) => (b, true),
        None => (url, false),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((authority, path)) => format!("{scheme}://{}/{path}", strip_userinfo(authority)),
            None => format!("{scheme}://{}", strip_userinfo(rest)),
        },
        None => base.to_string(),
    };
    if had_query {
        format!("{base}?…")
    } else {
        base
    }
}

fn strip_userinfo(authority: &str) -> &str {
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}
