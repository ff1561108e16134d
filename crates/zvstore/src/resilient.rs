//! Resilience, in one place, around any backend: a timeout per attempt,
//! retries with exponential backoff and full jitter on retryable failures
//! only (5xx, throttling, timeouts, resets — never 403/404/changed), a cap on
//! concurrent requests, and errors stamped with the attempt that failed.
//!
//! It also checks what backends promise but a broken network or server may
//! not deliver: a range read returns exactly the bytes asked for (a short
//! body is a retryable failure, never data).
//!
//! Uploads pass through without a whole-call timeout or retry: an upload of a
//! multi-GB image is many requests, and the backend retries its own parts.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::Rng;
use tokio::sync::Semaphore;

use super::{ObjectMeta, ObjectStore, Progress, StoreError, StoreResult};

/// How hard to try, and how many requests may be in flight.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Limit on one attempt (request and body), after which it is abandoned.
    pub timeout: Duration,
    /// Retries after the first attempt; `0` means try once.
    pub max_retries: u32,
    /// Backoff before retry `n` (1-based) is uniform in `0..=min(max_delay, base_delay * 2^(n-1))`.
    pub base_delay: Duration,
    /// Upper bound on one backoff sleep.
    pub max_delay: Duration,
    /// Requests in flight at once through this store.
    pub max_concurrent: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            timeout: Duration::from_secs(30),
            max_retries: 4,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_concurrent: 64,
        }
    }
}

impl RetryPolicy {
    /// The sleep before retry `retry` (1-based): exponential, capped, with
    /// full jitter so many clients failing together don't retry in lockstep.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.backoff_ceiling(retry);
        let nanos =
            rand::thread_rng().gen_range(0..=ceiling.as_nanos().min(u64::MAX as u128) as u64);
        Duration::from_nanos(nanos)
    }

    /// The upper bound of [`RetryPolicy::backoff`] for retry `retry`.
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(30);
        self.base_delay
            .saturating_mul(1u32 << exp)
            .min(self.max_delay)
    }
}

/// Counters of what went through a [`ResilientStore`].
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Attempts sent to the backend (including retries).
    pub requests: AtomicU64,
    /// Attempts that were retried.
    pub retries: AtomicU64,
    /// Bytes returned by successful range reads.
    pub bytes: AtomicU64,
    /// Operations that failed after all attempts.
    pub failures: AtomicU64,
}

/// Wraps a backend with timeouts, retries and a concurrency cap.
#[derive(Debug)]
pub struct ResilientStore<S> {
    inner: S,
    policy: RetryPolicy,
    permits: Arc<Semaphore>,
    stats: Arc<StoreStats>,
}

impl<S: ObjectStore> ResilientStore<S> {
    /// Wraps `inner` with `policy`; the concurrency cap is this wrapper's own.
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        let permits = Arc::new(Semaphore::new(policy.max_concurrent.max(1)));
        ResilientStore {
            inner,
            policy,
            permits,
            stats: Arc::new(StoreStats::default()),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The policy in force.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Counters, shared: they stay readable after the store is moved.
    pub fn stats(&self) -> Arc<StoreStats> {
        self.stats.clone()
    }

    /// Runs `attempt` under the policy. `what` names the operation for a
    /// timeout (`op` text, and the byte range when it is a read).
    async fn run<T, F, Fut>(
        &self,
        key: &str,
        op: &str,
        range: Option<Range<u64>>,
        mut attempt: F,
    ) -> StoreResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let mut n = 1u32;
        loop {
            let result = {
                // The permit covers the request only, not the backoff sleep,
                // so a failing request does not hold a slot while it waits.
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .map_err(|_| StoreError::Other {
                        location: self.inner.location(key),
                        op: op.into(),
                        detail: "store is shut down".into(),
                    })?;
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout(self.policy.timeout, attempt()).await {
                    Ok(r) => r,
                    Err(_) => Err(self.timeout_error(key, op, range.clone())),
                }
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && n <= self.policy.max_retries => {
                    let delay = self.policy.backoff(n);
                    tracing::debug!(error = %e.with_attempt(n), ?delay, "retrying");
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(delay).await;
                    n += 1;
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    return Err(e.with_attempt(n));
                }
            }
        }
    }

    fn timeout_error(&self, key: &str, op: &str, range: Option<Range<u64>>) -> StoreError {
        let location = self.inner.location(key);
        let secs = self.policy.timeout.as_secs_f64();
        match range {
            Some(r) => StoreError::Timeout {
                location,
                start: r.start,
                end: r.end,
                secs,
                attempt: 0,
            },
            None => StoreError::Transient {
                location,
                op: op.into(),
                attempt: 0,
                detail: format!("timed out after {secs:.1}s"),
            },
        }
    }
}

/// A read must return exactly the bytes asked for; a short or long body is a
/// broken transfer (retryable), never data.
fn check_len(location: impl FnOnce() -> String, range: &Range<u64>, got: usize) -> StoreResult<()> {
    let want = range.end - range.start;
    if got as u64 == want {
        return Ok(());
    }
    Err(StoreError::Transient {
        location: location(),
        op: format!("GET {}..{}", range.start, range.end),
        attempt: 0,
        detail: format!("body has {got} bytes, expected {want}"),
    })
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for ResilientStore<S> {
    fn location(&self, key: &str) -> String {
        self.inner.location(key)
    }

    async fn head(&self, key: &str) -> StoreResult<ObjectMeta> {
        self.run(key, "HEAD", None, || self.inner.head(key)).await
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        pin: Option<&ObjectMeta>,
    ) -> StoreResult<Bytes> {
        if range.start > range.end {
            return Err(StoreError::OutOfRange {
                location: self.location(key),
                start: range.start,
                end: range.end,
                size: pin.map_or(0, |m| m.size),
            });
        }
        let op = format!("GET {}..{}", range.start, range.end);
        let bytes = self
            .run(key, &op, Some(range.clone()), || async {
                let b = self.inner.get_range(key, range.clone(), pin).await?;
                check_len(|| self.inner.location(key), &range, b.len())?;
                Ok(b)
            })
            .await?;
        self.stats
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }

    async fn get_suffix(&self, key: &str, len: u64) -> StoreResult<(Bytes, ObjectMeta)> {
        let (bytes, meta) = self
            .run(key, &format!("GET last {len} bytes"), None, || async {
                let (b, meta) = self.inner.get_suffix(key, len).await?;
                let start = meta.size.saturating_sub(len);
                check_len(|| self.inner.location(key), &(start..meta.size), b.len())?;
                Ok((b, meta))
            })
            .await?;
        self.stats
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok((bytes, meta))
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<(String, ObjectMeta)>> {
        self.run(prefix, "LIST", None, || self.inner.list(prefix))
            .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_and_is_capped() {
        let p = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff_ceiling(1), Duration::from_millis(100));
        assert_eq!(p.backoff_ceiling(2), Duration::from_millis(200));
        assert_eq!(p.backoff_ceiling(4), Duration::from_millis(800));
        assert_eq!(p.backoff_ceiling(5), Duration::from_secs(1));
        assert_eq!(p.backoff_ceiling(1000), Duration::from_secs(1));
        for n in 1..10 {
            assert!(p.backoff(n) <= p.backoff_ceiling(n));
        }
    }

    #[test]
    fn attempt_is_stamped_on_retryable_errors_only() {
        let t = StoreError::Transient {
            location: "x".into(),
            op: "GET".into(),
            attempt: 0,
            detail: "reset".into(),
        };
        assert!(t.with_attempt(3).to_string().contains("attempt 3"));
        let nf = StoreError::NotFound {
            location: "x".into(),
        };
        assert!(!nf.with_attempt(3).is_retryable());
    }
}
