//! Resilience, in one place, around any backend: a timeout per attempt,
//! retries on transient failures only (5xx, throttling, timeouts, resets,
//! short bodies — never 403/404/changed) until the call's deadline
//! (`--io-timeout`), a store-wide circuit breaker so that an outage costs a
//! few probes per second however many reads wait ([`crate::outage`]), a cap
//! on concurrent requests, and errors stamped with the attempt that failed.
//!
//! A call that runs out of time during an outage fails with
//! [`StoreError::Unavailable`], naming how long it waited and the last
//! cause; a permanent failure fails at once.
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
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Semaphore;

use super::outage::{
    Breaker, Caller, DeadlinePassed, OutageStats, Priority, ProbePacing, RetryKind,
};
use super::{ObjectMeta, ObjectStore, Progress, StoreError, StoreResult};

/// How hard to try, and how many requests may be in flight.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Limit on one attempt (request and body), after which it is abandoned.
    pub timeout: Duration,
    /// How long one call keeps retrying transient failures (the store is
    /// down, throttling, resets) before it fails with
    /// [`StoreError::Unavailable`]; `None` retries forever, like an NFS hard
    /// mount. Counted from the start of the call, across attempts.
    pub io_timeout: Option<Duration>,
    /// Retries after the first attempt, on top of the deadline; `0` means
    /// try once, `u32::MAX` leaves it to `io_timeout` alone.
    pub max_retries: u32,
    /// While the store fails, probe `n` (1-based) waits between half and all
    /// of `min(max_delay, base_delay * 2^(n-1))`.
    pub base_delay: Duration,
    /// Upper bound on one wait between probes: a long outage costs about
    /// one to two requests per `max_delay`.
    pub max_delay: Duration,
    /// Requests in flight at once through this store.
    pub max_concurrent: usize,
}

/// How long a read rides out an outage by default: iSCSI's
/// `replacement_timeout`.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(120);

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            timeout: Duration::from_secs(30),
            io_timeout: Some(DEFAULT_IO_TIMEOUT),
            max_retries: u32::MAX,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_concurrent: 64,
        }
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

/// Wraps a backend with timeouts, retries, a circuit breaker and a
/// concurrency cap.
#[derive(Debug)]
pub struct ResilientStore<S> {
    inner: S,
    policy: RetryPolicy,
    permits: Arc<Semaphore>,
    stats: Arc<StoreStats>,
    breaker: Breaker,
}

impl<S: ObjectStore> ResilientStore<S> {
    /// Wraps `inner` with `policy`; the concurrency cap and the breaker are
    /// this wrapper's own.
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        Self::with_outage_stats(inner, policy, Arc::default())
    }

    /// [`ResilientStore::new`], counting outages into `outage_stats` (shared
    /// with the other stores of a daemon, for its stats file).
    pub fn with_outage_stats(
        inner: S,
        policy: RetryPolicy,
        outage_stats: Arc<OutageStats>,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(policy.max_concurrent.max(1)));
        let pacing = ProbePacing {
            base: policy.base_delay,
            max: policy.max_delay,
        };
        // The container's location ("s3://bucket/", a directory, a URL
        // base): an outage is of the store, not of one object.
        let breaker = Breaker::new(inner.location(""), pacing, outage_stats);
        ResilientStore {
            inner,
            policy,
            permits,
            stats: Arc::new(StoreStats::default()),
            breaker,
        }
    }

    /// Whether the store is believed reachable right now (no transient
    /// failure since its last answer).
    pub fn is_available(&self) -> bool {
        self.breaker.is_available()
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

    /// Runs `attempt` under the policy: admitted by the breaker, capped in
    /// concurrency and time, retried on transient failures until the
    /// deadline. `range` names the bytes for a timeout error.
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
        let started = Instant::now();
        // A prefetch a demand read joins is raised to that read's priority
        // and deadline (see `outage::Escalation`): both are read afresh.
        let caller = Caller::current(started, self.policy.io_timeout);
        let mut n = 0u32;
        let mut last: Option<StoreError> = None;
        let mut waited = false;
        loop {
            let admission = match self.breaker.admit_caller(&caller, &mut waited).await {
                Ok(a) => a,
                Err(DeadlinePassed) => {
                    return Err(self.give_up(&caller, key, op, started, n, last));
                }
            };
            let deadline = caller.deadline();
            // The permit covers the request only, not the wait for the
            // store, so a failing request does not hold a slot.
            let permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| StoreError::Other {
                    location: self.inner.location(key),
                    op: op.into(),
                    detail: "store is shut down".into(),
                })?;
            // The store may have failed while this call queued for a slot
            // (hundreds of reads queue behind the cap): queued calls must
            // not all try it, only the probe.
            if !admission.is_probe() && !self.breaker.is_available() {
                continue;
            }
            // Out of time while queued for a slot: an attempt cut to zero
            // would fail and count against the store, which did nothing.
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(self.give_up(&caller, key, op, started, n, last));
            }
            if n > 0 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                let kind = last.as_ref().map_or(RetryKind::Connection, RetryKind::of);
                self.breaker.stats().count_retry(kind);
            }
            n += 1;
            // An attempt never outlives the call's deadline.
            let limit = match deadline {
                Some(d) => self
                    .policy
                    .timeout
                    .min(d.saturating_duration_since(Instant::now())),
                None => self.policy.timeout,
            };
            let result = {
                let _permit = permit;
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout(limit, attempt()).await {
                    Ok(r) => r,
                    Err(_) => Err(self.timeout_error(key, op, range.clone(), limit)),
                }
            };
            match result {
                Ok(v) => {
                    admission.reachable();
                    return Ok(v);
                }
                Err(e) if e.is_retryable() => {
                    let e = e.with_attempt(n);
                    admission.unreachable(&e);
                    if n > self.policy.max_retries {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        return Err(e);
                    }
                    if self.breaker.has_expired() {
                        return Err(self.give_up(&caller, key, op, started, n, Some(e)));
                    }
                    tracing::debug!(error = %e, "transient store failure; will retry");
                    last = Some(e);
                }
                Err(e) => {
                    // Any answer means the store is up, even "not found".
                    admission.reachable();
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    return Err(e.with_attempt(n));
                }
            }
        }
    }

    /// Ends a call whose deadline passed (or that met an outage already
    /// past --io-timeout): counted, and the outage marked so later calls
    /// wait for one probe only.
    ///
    /// Only a demand call marks the outage: a prefetch's deadline ran from
    /// when the prefetch started, and a reader arriving later is owed a
    /// full `--io-timeout` of its own.
    fn give_up(
        &self,
        caller: &Caller,
        key: &str,
        op: &str,
        started: Instant,
        attempts: u32,
        last: Option<StoreError>,
    ) -> StoreError {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        if caller.priority() == Priority::Demand {
            self.breaker.expire(started.elapsed());
        }
        self.gave_up(key, op, started, attempts, last)
    }

    /// The error of a call whose deadline passed while the store failed.
    fn gave_up(
        &self,
        key: &str,
        op: &str,
        started: Instant,
        attempts: u32,
        last: Option<StoreError>,
    ) -> StoreError {
        StoreError::Unavailable {
            location: self.inner.location(key),
            op: op.into(),
            waited_secs: started.elapsed().as_secs_f64(),
            attempts,
            cause: last.map_or_else(
                || "the store has been unreachable for longer than --io-timeout; reads fail after the next probe until it answers again".into(),
                |e| e.to_string(),
            ),
        }
    }

    fn timeout_error(
        &self,
        key: &str,
        op: &str,
        range: Option<Range<u64>>,
        limit: Duration,
    ) -> StoreError {
        let location = self.inner.location(key);
        let secs = limit.as_secs_f64();
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

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.run(key, "DELETE", None, || self.inner.delete(key))
            .await
    }

    fn sibling_key(&self, key: &str, suffix: &str) -> String {
        self.inner.sibling_key(key, suffix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault::{FaultPlan, FaultStore};
    use crate::file::FileStore;
    use crate::outage::Escalation;

    /// A prefetch that a demand read joined keeps going until the reader's
    /// own deadline, not its own earlier one; one nobody joined gives up
    /// at its own (without cutting short the raised one: only demand calls
    /// mark an outage as past --io-timeout). The store is down from the
    /// start and comes back between the two deadlines, a second or more
    /// from either.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_raised_prefetch_gets_the_demand_reads_deadline() {
        let dir = std::env::temp_dir().join(format!("zvstore-raise-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k"), vec![7u8; 100]).unwrap();
        let fault = FaultStore::new(FileStore::new(&dir));
        let control = fault.control();
        control.set(FaultPlan {
            fail_rate: 1.0,
            ..FaultPlan::default()
        });
        let store = Arc::new(ResilientStore::new(
            fault,
            RetryPolicy {
                io_timeout: Some(Duration::from_secs(4)),
                base_delay: Duration::from_millis(20),
                max_delay: Duration::from_millis(200),
                ..RetryPolicy::default()
            },
        ));
        let prefetch = |escalation: Arc<Escalation>| {
            let store = Arc::clone(&store);
            tokio::spawn(Escalation::scope(
                escalation,
                Priority::Prefetch.scope(async move { store.get_range("k", 0..10, None).await }),
            ))
        };
        let joined = Arc::new(Escalation::default());
        let raised = prefetch(Arc::clone(&joined));
        let alone = prefetch(Arc::new(Escalation::default()));
        tokio::time::sleep(Duration::from_secs(3)).await;
        // A demand read asks now: its deadline is 7 s after the start.
        joined.raise(Instant::now());
        let alone = alone.await.unwrap();
        assert!(
            matches!(alone, Err(StoreError::Unavailable { .. })),
            "{alone:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        // 5 s in: past the prefetch's own deadline, 2 s before the reader's.
        let before = control.requests();
        control.set(FaultPlan::default());
        let got = raised.await.unwrap();
        assert_eq!(got.unwrap(), Bytes::from(vec![7u8; 10]));
        assert!(
            control.requests() > before,
            "it was answered by a fresh request"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn raising_makes_a_prefetch_a_demand_with_the_readers_deadline() {
        use crate::outage::Caller;
        let started = Instant::now();
        let escalation = Arc::new(Escalation::default());
        let caller = Caller {
            priority: Priority::Prefetch,
            deadline: Some(started + Duration::from_secs(10)),
            escalation: Some((Arc::clone(&escalation), Some(Duration::from_secs(10)))),
        };
        assert_eq!(caller.priority(), Priority::Prefetch);
        assert_eq!(caller.deadline(), Some(started + Duration::from_secs(10)));
        let asked = started + Duration::from_secs(4);
        escalation.raise(asked);
        // A later reader shares the first one's deadline.
        escalation.raise(started + Duration::from_secs(6));
        assert_eq!(caller.priority(), Priority::Demand);
        assert_eq!(caller.deadline(), Some(asked + Duration::from_secs(10)));
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
