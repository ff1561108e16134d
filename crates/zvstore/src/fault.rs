//! A fault-injecting wrapper around any store, for tests and benchmarks:
//! added latency, failures (transient or permanent), truncated bodies,
//! flipped bytes and stalls, steered by a [`FaultPlan`] that can be changed
//! while the store is in use. It also counts the requests it sees, so a test
//! can tell a retry storm from a single failure.
//!
//! Faults apply to reads (`head`, `get_range`, `get_suffix`, `list`);
//! uploads pass through untouched.

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use rand::Rng;

use super::{ObjectMeta, ObjectStore, Progress, StoreError, StoreResult};

/// What to do to the next requests. "Next N" counters count down as faults
/// are applied; `0` means off.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    /// Added before every request.
    pub latency: Duration,
    /// Fail the next N requests with a retryable error.
    pub fail_transient: u32,
    /// Fail the next N requests with a non-retryable error.
    pub fail_permanent: u32,
    /// Fail each request with a retryable error with this probability (0..=1).
    pub fail_rate: f64,
    /// Return only the first half of the body of the next N reads.
    pub truncate: u32,
    /// Flip one byte of the body of the next N reads.
    pub corrupt: u32,
    /// Make the next N requests hang for `stall_for` before answering.
    pub stall: u32,
    /// How long each of those `stall` requests hangs.
    pub stall_for: Duration,
}

/// A shared, runtime-changeable plan plus request counters.
#[derive(Debug, Default)]
pub struct FaultControl {
    plan: Mutex<FaultPlan>,
    requests: AtomicU64,
    injected: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

impl FaultControl {
    /// Replaces the plan.
    pub fn set(&self, plan: FaultPlan) {
        *self.plan.lock().unwrap_or_else(|e| e.into_inner()) = plan;
    }

    /// Changes the plan in place.
    pub fn update(&self, f: impl FnOnce(&mut FaultPlan)) {
        f(&mut self.plan.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Requests seen so far (faulted or not).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// The most requests that were in flight at once.
    pub fn max_in_flight(&self) -> u64 {
        self.max_in_flight.load(Ordering::Relaxed)
    }

    fn enter(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(self)
    }

    /// Decides this request's faults, counting down the plan.
    fn draw(&self) -> Draw {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut p = self.plan.lock().unwrap_or_else(|e| e.into_inner());
        let mut d = Draw {
            latency: p.latency,
            ..Draw::default()
        };
        let take = |n: &mut u32| {
            let hit = *n > 0;
            *n = n.saturating_sub(1);
            hit
        };
        if take(&mut p.stall) {
            d.stall = Some(p.stall_for);
        }
        if take(&mut p.fail_permanent) {
            d.fail = Some(false);
        } else if take(&mut p.fail_transient)
            || (p.fail_rate > 0.0 && rand::thread_rng().gen_bool(p.fail_rate.min(1.0)))
        {
            d.fail = Some(true);
        }
        d.truncate = take(&mut p.truncate);
        d.corrupt = take(&mut p.corrupt);
        if d.stall.is_some() || d.fail.is_some() || d.truncate || d.corrupt {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        d
    }
}

/// Counts a request as in flight until dropped.
struct InFlight<'a>(&'a FaultControl);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Draw {
    latency: Duration,
    stall: Option<Duration>,
    /// `Some(true)`: transient failure; `Some(false)`: permanent.
    fail: Option<bool>,
    truncate: bool,
    corrupt: bool,
}

/// Wraps `inner`, applying the faults of a shared [`FaultControl`].
#[derive(Debug)]
pub struct FaultStore<S> {
    inner: S,
    control: Arc<FaultControl>,
}

impl<S: ObjectStore> FaultStore<S> {
    /// Wraps `inner` with no faults planned; change them through [`FaultStore::control`].
    pub fn new(inner: S) -> Self {
        FaultStore {
            inner,
            control: Arc::new(FaultControl::default()),
        }
    }

    /// The plan and counters, shareable with the test driving the faults.
    pub fn control(&self) -> Arc<FaultControl> {
        self.control.clone()
    }

    /// Applies latency, stall and failure; returns whether to truncate/corrupt the body.
    async fn before(&self, key: &str, op: &str) -> StoreResult<(bool, bool)> {
        let d = self.control.draw();
        if !d.latency.is_zero() {
            tokio::time::sleep(d.latency).await;
        }
        if let Some(stall) = d.stall {
            tokio::time::sleep(stall).await;
        }
        match d.fail {
            Some(true) => Err(StoreError::Transient {
                location: self.inner.location(key),
                op: op.into(),
                attempt: 0,
                detail: "injected transient fault".into(),
            }),
            Some(false) => Err(StoreError::Other {
                location: self.inner.location(key),
                op: op.into(),
                detail: "injected permanent fault".into(),
            }),
            None => Ok((d.truncate, d.corrupt)),
        }
    }
}

/// Damages `body` as drawn: keeps only the first half, and/or flips the bits
/// of its middle byte.
fn damage(body: Bytes, truncate: bool, corrupt: bool) -> Bytes {
    let mut body = if truncate {
        body.slice(..body.len() / 2)
    } else {
        body
    };
    if corrupt && !body.is_empty() {
        let mut m = BytesMut::from(&body[..]);
        let mid = m.len() / 2;
        m[mid] ^= 0xff;
        body = m.freeze();
    }
    body
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for FaultStore<S> {
    fn location(&self, key: &str) -> String {
        self.inner.location(key)
    }

    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        let _in_flight = self.control.enter();
        self.before(key, "HEAD").await?;
        self.inner.head(key).await
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        pin: Option<&ObjectMeta>,
    ) -> StoreResult<Bytes> {
        let _in_flight = self.control.enter();
        let (truncate, corrupt) = self
            .before(key, &format!("GET {}..{}", range.start, range.end))
            .await?;
        let body = self.inner.get_range(key, range, pin).await?;
        Ok(damage(body, truncate, corrupt))
    }

    async fn get_suffix(&self, key: &str, len: u64) -> StoreResult<(Bytes, ObjectMeta)> {
        let _in_flight = self.control.enter();
        let (truncate, corrupt) = self.before(key, &format!("GET last {len} bytes")).await?;
        let (body, meta) = self.inner.get_suffix(key, len).await?;
        Ok((damage(body, truncate, corrupt), meta))
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<(String, ObjectMeta)>> {
        let _in_flight = self.control.enter();
        self.before(prefix, "LIST").await?;
        self.inner.list(prefix).await
    }

    async fn put_file(&self, key: &str, path: &Path) -> StoreResult<ObjectMeta> {
        self.inner.put_file(key, path).await
    }

    async fn put_file_with_progress(
        &self,
        key: &str,
        path: &Path,
        progress: Progress,
    ) -> StoreResult<ObjectMeta> {
        self.inner.put_file_with_progress(key, path, progress).await
    }

    fn sibling_key(&self, key: &str, suffix: &str) -> String {
        self.inner.sibling_key(key, suffix)
    }
}
